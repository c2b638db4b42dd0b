"""The source tracker on synthetic peak lists, bin grouping (tonal bins), and the boxes PNG's label placement."""
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from baton_fast.spatial import VSL, spatial_cues
from baton_fast.spatial.draw import vsl_figure
from baton_fast.spatial.grouping import tonal_bins
from baton_fast.spatial.tracking import Tracker

HOP = 0.032
FRAMES = 125  # 4 s


def test_two_sources_crossing_each_other_keep_their_tracks():
    a, b = np.linspace(0.1, 0.9, FRAMES), np.linspace(0.85, 0.15, FRAMES)
    peaks = [sorted([(a[f], 1.0), (b[f], 0.7)], key=lambda p: -p[1]) for f in range(FRAMES)]
    tracks = Tracker().tracks(peaks, HOP)
    assert len(tracks) == 2
    first, second = tracks
    np.testing.assert_allclose(first.x[[0, -1]], [0.1, 0.9], atol=0.03)   # through the crossing
    np.testing.assert_allclose(second.x[[0, -1]], [0.85, 0.15], atol=0.03)
    assert np.all(np.diff(first.x) > 0) and np.all(np.diff(second.x) < 0)


def test_a_source_heard_in_bursts_is_one_track_and_weak_followers_are_dropped():
    rng = np.random.default_rng(0)
    peaks = []
    for f in range(FRAMES):
        on = (f // 15) % 2 == 0  # 0.5 s on, 0.5 s off
        frame = [(0.3 + 0.04 * rng.standard_normal(), 1.0)] if on else []
        if on:
            frame.append((0.75, 0.12))  # a reflection: weak, never the highest peak
        peaks.append(frame)
    tracks = Tracker().tracks(peaks, HOP)
    assert len(tracks) == 1
    assert abs(np.median(tracks[0].x[tracks[0].detected]) - 0.3) < 0.03


def test_no_peaks_no_tracks():
    assert Tracker().tracks([[] for _ in range(FRAMES)], HOP) == []


def test_a_weak_source_of_its_own_group_survives_and_one_source_seen_by_two_groups_is_one():
    """Stream 0 (noise-like bins): a strong source at 0.8; stream 1 (tonal bins): a source at 0.2 with a
    fifth of that strength, and the strong one's partials at 0.79 (half the weak source's strength). Tracked as one stream the weak
    source never leads and is pruned as a reflection would be; tracked per group it is a source."""
    noise_like = [[(0.8, 10.0)] for _ in range(FRAMES)]
    tonal = [[(0.2, 2.0), (0.79, 1.0)] for _ in range(FRAMES)]
    tracks = Tracker().sources([noise_like, tonal], HOP)
    assert len(tracks) == 2
    np.testing.assert_allclose([np.median(t.x) for t in tracks], [0.8, 0.2], atol=0.015)
    assert tracks[0].support == pytest.approx(11.0 * FRAMES)  # the 0.79 partials joined the 0.8 source
    one_stream = [sorted(a + b, key=lambda p: -p[1]) for a, b in zip(noise_like, tonal)]
    assert [round(float(np.median(t.x)), 1) for t in Tracker().tracks(one_stream, HOP)] == [0.8]


def test_tonal_bins_are_the_partials_and_few_noise_bins():
    rate, seconds = 16000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(1)
    hum = sum(0.1 / k * np.sin(2 * np.pi * 200.0 * k * t) for k in range(1, 6)) + 1e-3 * rng.standard_normal(len(t))
    cues = spatial_cues(np.stack([hum, hum]), rate)
    tonal = tonal_bins(cues)
    partials = [int(np.argmin(np.abs(cues.freqs - 200.0 * k))) for k in range(1, 6)]
    assert tonal[:, partials].mean() > 0.95
    assert tonal[:, cues.freqs > 1200].mean() < 0.02  # above the partials: the noise floor only
    noise = rng.standard_normal((2, len(t)))
    share = tonal_bins(spatial_cues(noise, rate)).mean()
    assert share < 0.005, share  # 10 dB above the neighbourhood's mean level: rare in noise (0.03 % here)


def boxes_vsl(objects):
    return VSL.from_dict({"caption": "labels", "frames": [
        {"time": 0.0, "objects": [{"id": i, "name": name, "box": box} for i, (name, box) in enumerate(objects)]}]})


@pytest.mark.parametrize("objects", [
    [("a very long object name", [0.85, 0.2, 1.0, 0.6])],                        # at the right edge
    [("dog", [0.3, 0.3, 0.6, 0.8]), ("car", [0.31, 0.31, 0.62, 0.8]),           # overlapping boxes
     ("bus", [0.32, 0.3, 0.7, 0.9])],
    [("x", [0.0, 0.9, 0.05, 1.0]), ("y", [0.01, 0.9, 0.06, 1.0])],              # in the bottom-left corner
])
def test_labels_stay_inside_their_panel_and_do_not_cover_each_other(objects):
    figure = vsl_figure(boxes_vsl(objects))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    panel = figure.axes[0]
    inside = panel.get_window_extent(renderer)
    labels = [text.get_bbox_patch().get_window_extent(renderer) for text in panel.texts]
    assert len(labels) == len(objects)
    for box in labels:
        assert inside.x0 - 0.5 <= box.x0 and box.x1 <= inside.x1 + 0.5, (box, inside)
        assert inside.y0 - 0.5 <= box.y0 and box.y1 <= inside.y1 + 0.5, (box, inside)
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            overlap_x = min(labels[i].x1, labels[j].x1) - max(labels[i].x0, labels[j].x0)
            overlap_y = min(labels[i].y1, labels[j].y1) - max(labels[i].y0, labels[j].y0)
            assert overlap_x <= 0.5 or overlap_y <= 0.5, (labels[i], labels[j])
