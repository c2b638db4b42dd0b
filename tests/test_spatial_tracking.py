"""The source tracker on synthetic peak lists, and the boxes PNG's label placement."""
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from baton_fast.spatial import VSL
from baton_fast.spatial.draw import vsl_figure
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
