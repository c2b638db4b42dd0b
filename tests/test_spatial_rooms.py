"""The planner on physically simulated rooms (pyroomacoustics): the simulator's physics, and a fast subset
of the room benchmark (the full table: ``python -m baton_fast.bench.spatial_rooms``, docs/spatial.md)."""
import numpy as np
import pyroomacoustics  # noqa: F401  (a test requirement, setup.py [test]: missing, the file errors rather than skips)
import pytest

from baton_fast.spatial import CuePlanner, spatial_cues
from baton_fast.spatial.rooms import SPEED_OF_SOUND, Room, impulse_responses, render
from baton_fast.spatial.scenes import MIC_SPACING, SAMPLE_RATE, scene, score
from baton_fast.spatial.signals import band_noise


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


def test_a_nearer_source_reads_a_higher_direct_level_and_direct_to_reverberant_ratio():
    """Band noise at 1 m and at 4 m (RT60 0.4 s): 12 dB less direct sound at 4 m, the same reverberation.
    The estimates are compressed (measured: DRR 5.8 dB, direct level 7.0 dB, raw level 5.2 dB apart) but
    both separate the distances, and the direct level more than the raw loudness does."""
    room = Room(rt60=0.4)
    medians = {}
    for distance in (1.0, 4.0):
        rng = np.random.default_rng(5)
        stereo = render(room, band_noise(rng, 2.0, SAMPLE_RATE), room.position(20.0, distance)[None], SAMPLE_RATE, rng)
        track = CuePlanner().tracks(spatial_cues(stereo, SAMPLE_RATE))[0]
        medians[distance] = [np.nanmedian(values[track.active])
                             for values in (track.drr_db, track.direct_level_db, track.level_db)]
    drr, direct, level = np.subtract(medians[1.0], medians[4.0])
    assert drr >= 3.0 and direct >= 4.0 and direct > level, (drr, direct, level)


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


@pytest.mark.parametrize("category, floor", [("approach", 3), ("speech", 4), ("two sources", 4)])
def test_benchmark_subset_holds_its_floor_at_rt60_0_4(category, floor):
    """The first 4 scenes of the other categories (docs/spatial.md has the full table): approach/recede,
    whose goal (80 %) is met on the tuning scenes but not on every held-out set, at least 3 right;
    speech and two sources all 4."""
    right = [plan_scene(category, n)[2]["right"] for n in range(4)]
    assert sum(right) >= floor, right
