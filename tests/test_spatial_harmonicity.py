"""Harmonicity grouping: fundamentals per frame, contours over frames, and the planner keeping two harmonic
sources apart (and one gliding tone one source)."""
import numpy as np
import pytest

from baton_fast.spatial import CuePlanner, spatial_cues
from baton_fast.spatial.grouping import tonal_bins
from baton_fast.spatial.harmonicity import contours, frame_pitches, pitch_groups
from baton_fast.spatial.tfcues import bin_weights
from baton_fast.spatial.tracking import Tracker

FS = 16000
T = np.arange(4 * FS) / FS
RNG = np.random.default_rng(11)


def harmonic(f0, partials=5, amplitude=0.1):
    """``partials`` harmonics (amplitude 1/k) of ``f0`` (Hz, scalar or per sample: a glide), random phases."""
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(f0, T.shape)) / FS
    return sum(amplitude / k * np.sin(k * phase + RNG.uniform(0, 2 * np.pi)) for k in range(1, partials + 1))


def pan(signal, position):
    """Constant-power pan: 0 = left only, 1 = right only."""
    angle = position * np.pi / 2
    return np.stack([np.cos(angle) * signal, np.sin(angle) * signal])


def cues_of(stereo):
    return spatial_cues(stereo + 1e-3 * RNG.standard_normal(stereo.shape), FS)


def test_two_harmonic_tones_give_their_two_fundamentals_every_frame():
    f0s = RNG.uniform([150, 330], [210, 420])  # fresh, apart by more than a third
    cues = cues_of(pan(harmonic(f0s[0]), 0.3) + pan(harmonic(f0s[1], amplitude=0.08), 0.7))
    pitches = frame_pitches(cues, tonal_bins(cues), bin_weights(cues))
    inner = pitches[5:-5]  # the clip's edges are half frames
    found = np.sort(inner, axis=1)
    assert np.isfinite(found).all()
    np.testing.assert_allclose(np.median(found, axis=0), f0s, rtol=0.025)
    assert np.mean(np.abs(found / f0s - 1) <= 0.025) > 0.95


def test_a_gliding_harmonic_tone_is_one_contour_and_one_source():
    glide = np.geomspace(140.0, 260.0, len(T))  # almost an octave in 4 s
    cues = cues_of(pan(harmonic(glide), 0.25))
    hop = float(cues.times[1] - cues.times[0])
    lines = contours(frame_pitches(cues, tonal_bins(cues), bin_weights(cues)), hop)
    longest = max(lines, key=lambda line: np.isfinite(line).sum())
    assert np.isfinite(longest).mean() > 0.9
    heard = np.isfinite(longest)
    expected = np.interp(cues.times[heard], T, glide)
    assert np.median(np.abs(longest[heard] / expected - 1)) < 0.02
    assert len(pitch_groups(cues, tonal_bins(cues), bin_weights(cues))) == 1
    tracks = CuePlanner().tracks(cues)
    assert len(tracks) == 1 and tracks[0].motion == "stationary"
    assert abs(np.median(tracks[0].x[tracks[0].active]) - 0.25) < 0.1


def test_two_harmonic_tones_close_together_are_two_sources():
    """0.2 apart (closer than the tracker's merge distance, 0.3): by place alone they are one source
    (the tracker merges side-by-side tracks that close); their fundamentals keep them two."""
    left, right = 0.4, 0.6
    cues = cues_of(pan(harmonic(190.0), left) + pan(harmonic(290.0, amplitude=0.08), right))
    tracks = CuePlanner().tracks(cues)
    assert len(tracks) == 2
    places = sorted(float(np.median(t.x[t.active])) for t in tracks)
    np.testing.assert_allclose(places, [left, right], atol=0.07)
    low, high = sorted(tracks, key=lambda t: t.partials_hz[0])
    def has(track, freqs):
        return [any(abs(p - f) < 10 for p in track.partials_hz) for f in freqs]
    # each source holds its own resolved partials and none of the other's (6 x 190 and 4 x 290 are one
    # bin apart, 3 x 190 and 2 x 290 too: those go by place)
    assert has(low, [190, 380, 760, 950]) == [True] * 4 and has(low, [290, 870, 1450]) == [False] * 3
    assert has(high, [290, 870, 1450]) == [True] * 3 and has(high, [190, 380, 760, 950]) == [False] * 4


def test_tracks_of_two_pitch_groups_heard_at_once_are_not_merged():
    frames = 125
    a = [[(0.45, 1.0)] for _ in range(frames)]
    b = [[(0.6, 0.8)] for _ in range(frames)]
    assert len(Tracker().sources([a, b], 0.032)) == 1  # by place: one source
    assert len(Tracker().sources([a, b], 0.032, [0, 1])) == 2
    assert len(Tracker().sources([a, b], 0.032, [0, None])) == 1  # a group and the other bins: one source
    later = [[] for _ in range(frames)] + [[(0.45, 1.0)] for _ in range(frames)]
    first = a + [[] for _ in range(frames)]
    assert len(Tracker().sources([first, later], 0.032, [0, 1])) == 1  # one after the other: fragments


def test_the_docs_dog_and_car_are_two_sources():
    """docs/spatial.md's example: a 450 Hz bark panned left -> right passing a 130 Hz hum held at 0.8 whose
    level rises 23 dB. By place alone the car's track merged into the dog's."""
    t = np.arange(5 * FS) / FS
    bark = 0.25 * sum(np.sin(2 * np.pi * 450 * k * t) / k for k in (1, 2, 3)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)
    hum = np.geomspace(0.02, 0.3, len(t)) * sum(np.sin(2 * np.pi * 130 * k * t) / k for k in (1, 2))
    stereo = pan(bark, np.linspace(0.08, 0.92, len(t))) + pan(hum, 0.8)
    stereo += 0.002 * np.random.default_rng(0).standard_normal(stereo.shape)
    tracks = CuePlanner().tracks(spatial_cues(0.9 * stereo / np.abs(stereo).max(), FS))
    assert [t.motion for t in tracks] == ["left-crossing", "approaching"]
    dog, car = tracks
    assert dog.x_start < 0.2 and dog.x_end > 0.8
    assert abs(np.median(car.x[car.active]) - 0.8) < 0.05
