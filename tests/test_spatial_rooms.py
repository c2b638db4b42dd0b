"""The planner on physically simulated rooms (pyroomacoustics): the simulator's physics, and a fast subset
of the room benchmark (the full table: ``python -m baton_fast.bench.spatial_rooms``, docs/spatial.md)."""
import numpy as np
import pytest

pytest.importorskip("pyroomacoustics")

from baton_fast.spatial import CuePlanner, spatial_cues  # noqa: E402
from baton_fast.spatial.rooms import SPEED_OF_SOUND, Room, impulse_responses  # noqa: E402
from baton_fast.spatial.scenes import MIC_SPACING, SAMPLE_RATE, scene, score  # noqa: E402


@pytest.mark.parametrize("azimuth", [-60.0, 0.0, 35.0])
def test_anechoic_direct_path_has_the_geometric_time_difference(azimuth):
    room = Room(rt60=None)
    h = impulse_responses(room, room.position(azimuth, 2.0), SAMPLE_RATE)[0]
    lag = np.argmax(np.correlate(np.pad(h[1], 64), h[0], mode="valid")) - 64  # right lags left by this
    expected = MIC_SPACING * np.sin(np.radians(azimuth)) / SPEED_OF_SOUND * SAMPLE_RATE
    assert abs(lag - expected) <= 1.0  # within a sample (the far-field formula at 2 m)


@pytest.mark.parametrize("rt60", [0.4, 0.9])
def test_reverberation_time_of_a_simulated_room(rt60):
    room = Room(rt60=rt60)
    h = impulse_responses(room, room.position(20.0, 2.0), SAMPLE_RATE)[0, 0]
    decay = 10 * np.log10(np.cumsum(h[::-1] ** 2)[::-1] / np.sum(h ** 2))  # Schroeder backward integral
    t = np.arange(len(h)) / SAMPLE_RATE
    span = (decay <= -5) & (decay >= -25)  # T20, extrapolated to 60 dB
    slope = np.polyfit(t[span], decay[span], 1)[0]
    assert abs(-60 / slope - rt60) <= 0.25 * rt60


def plan_scene(category, number):
    stereo, truth = scene(category, "RT60 0.4 s", number)
    planner = CuePlanner()
    cues = spatial_cues(stereo, SAMPLE_RATE, mic_spacing=MIC_SPACING)
    tracks = planner.tracks(cues)
    return truth, tracks, score(category, truth, [t.motion for t in tracks], planner.plan(cues))


@pytest.mark.parametrize("category, number", [("static", n) for n in range(4)] + [("crossing", n) for n in range(4)])
def test_benchmark_subset_side_and_crossing_at_rt60_0_4(category, number):
    """The first scenes of the two categories that meet their goal in the full table: each one right."""
    truth, tracks, result = plan_scene(category, number)
    assert result["right"], (truth, [t.motion for t in tracks])


@pytest.mark.parametrize("category", ["approach", "speech", "two sources"])
def test_benchmark_subset_holds_its_floor_at_rt60_0_4(category):
    """Categories under or near their goal on the full table (docs/spatial.md): a floor of 2 of 4."""
    right = [plan_scene(category, n)[2]["right"] for n in range(4)]
    assert sum(right) >= 2, right
