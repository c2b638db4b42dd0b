"""Draw a VSL: one panel per keyframe with its boxes, plus a panel of every object's horizontal extent over time."""
from __future__ import annotations

import os
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .vsl import VSL


def draw_vsl(vsl: VSL, path: str | os.PathLike, *, max_panels: int = 7, frame_aspect: float = 16 / 9,
             columns: int = 4) -> None:
    """Write a PNG of ``vsl`` to ``path`` (the figure of :func:`vsl_figure`)."""
    vsl_figure(vsl, max_panels=max_panels, frame_aspect=frame_aspect, columns=columns).savefig(os.fspath(path), dpi=110)


def vsl_figure(vsl: VSL, *, max_panels: int = 7, frame_aspect: float = 16 / 9, columns: int = 4) -> Figure:
    """The figure of ``vsl``: one panel per keyframe with its boxes and labels, and a track panel.

    At most ``max_panels`` keyframes are drawn (evenly spaced, first and last included); the last panel
    shows every object's horizontal extent and centre at every keyframe, time running downwards.
    Colours follow object ids.
    """
    if max_panels < 1:
        raise ValueError(f"max_panels must be >= 1, got {max_panels}")
    shown = np.unique(np.round(np.linspace(0, len(vsl.frames) - 1, min(max_panels, len(vsl.frames))))).astype(int)
    panels = len(shown) + 1
    columns = min(columns, panels)
    rows = -(-panels // columns)
    panel_width = 3.2
    figure = Figure(figsize=(panel_width * columns, panel_width / frame_aspect * rows + 0.9 + 0.35 * rows))
    colours = {obj_id: f"C{i % 10}" for i, obj_id in enumerate(vsl.object_ids())}
    for slot, index in enumerate(shown):
        frame = vsl.frames[index]
        axes = figure.add_subplot(rows, columns, slot + 1)
        _frame_axes(axes, frame_aspect, f"t = {frame.time:.2f} s")
        placed: list[tuple[float, float, float]] = []  # (left, right, top) of the labels drawn so far
        for obj in frame.objects:
            x1, y1, x2, y2 = obj.box
            axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=2, edgecolor=colours[obj.id]))
            text = f"{obj.name} #{obj.id}"
            left, top = _label_place(text, x1, y1, placed)
            axes.text(left, top, text, color="white", fontsize=8, va="top", ha="left", clip_on=True,
                      bbox={"facecolor": colours[obj.id], "edgecolor": "none", "pad": 1.5})
    axes = figure.add_subplot(rows, columns, panels)
    _track_axes(axes, vsl, colours)
    figure.suptitle(textwrap.fill(vsl.caption, 110), fontsize=10)
    figure.tight_layout()
    return figure


LABEL_HEIGHT = 0.11  # of the frame height at 8 pt in a 3.2-inch panel
LABEL_CHAR_WIDTH = 0.028  # of the frame width per character, same size


def _label_place(text: str, x1: float, y1: float, placed: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Top-left corner of a box's label: inside the box's top-left corner, moved left so that it ends
    inside the panel; if that covers a label already placed, the nearest free spot just below or above
    one of them (inside the panel; the corner itself when none is free). Appended to ``placed``."""
    width = LABEL_CHAR_WIDTH * len(text) + 0.02
    left = max(0.0, min(x1 + 0.01, 1.0 - width))
    start = min(y1 + 0.02, 1.0 - LABEL_HEIGHT)
    beside = [(l, r, t) for l, r, t in placed if left < r and l < left + width]  # labels in the same columns

    def free(top):
        return 0.0 <= top <= 1.0 - LABEL_HEIGHT and all(abs(top - t) >= LABEL_HEIGHT - 1e-9 for _, _, t in beside)

    candidates = [start] + [t + step for _, _, t in beside for step in (LABEL_HEIGHT, -LABEL_HEIGHT)]
    top = min((c for c in candidates if free(c)), key=lambda c: abs(c - start), default=start)
    placed.append((left, left + width, top))
    return left, top


def _track_axes(axes, vsl: VSL, colours: dict[int, str]) -> None:
    """Horizontal extent (x1..x2, shaded) and centre (line) of every object against time (downwards)."""
    names = vsl.object_names()
    for obj_id in vsl.object_ids():
        rows = [(f.time, *o.box) for f in vsl.frames for o in f.objects if o.id == obj_id]
        t, x1, _, x2, _ = np.array(rows).T
        axes.fill_betweenx(t, x1, x2, color=colours[obj_id], alpha=0.25, linewidth=0)
        axes.plot((x1 + x2) / 2, t, "o-", color=colours[obj_id], markersize=3, label=f"{names[obj_id]} #{obj_id}")
    times = vsl.times
    axes.set_xlim(0, 1)
    axes.set_ylim(times[-1] + 1e-6, times[0])
    axes.set_xticks([0, 1 / 3, 2 / 3, 1], ["0", "1/3", "2/3", "1"], fontsize=7)
    axes.tick_params(axis="y", labelsize=7)
    axes.set_ylabel("time (s)", fontsize=7)
    axes.grid(True, axis="x", linestyle=":", color="grey")
    axes.set_title("horizontal extent over time", fontsize=9)
    if vsl.object_ids():
        axes.legend(fontsize=7, loc="best")


def _frame_axes(axes, frame_aspect: float, title: str) -> None:
    """Normalised frame coordinates, y down (image convention), drawn at the frame's aspect ratio."""
    axes.set_xlim(0, 1)
    axes.set_ylim(1, 0)
    axes.set_aspect(1 / frame_aspect)
    axes.set_facecolor("#e8e8e8")
    axes.set_xticks([0, 1 / 3, 2 / 3, 1], ["0", "1/3", "2/3", "1"], fontsize=7)
    axes.set_yticks([0, 0.5, 1], ["0", "0.5", "1"], fontsize=7)
    axes.grid(True, axis="x", linestyle=":", color="grey")
    axes.set_title(title, fontsize=9)
