"""Sources as tracks: peaks of the fused position map followed over time.

Per analysis frame the map (:func:`.tfcues.position_map`, averaged over ``smooth_seconds`` and weighted
by the frames' energy) has a peak per audible source. An alpha-beta tracker (position and velocity)
follows them: a peak joins the track whose predicted position is nearest within ``gate``, strongest
peaks first; others start a track; a track unseen for ``max_gap_seconds`` ends. A source that crosses
the frame is one track (the velocity carries it through the map's centre), and two sources that cross
each other keep their ids while both are seen. Tracks are then pruned (too short, or weaker than ``clear_support`` of
the strongest without being the frame's highest peak for ``min_leading_seconds``: reflections and side
lobes of a louder source) and merged (fragments of one source: one ends where the
next begins; two tracks that run side by side, or sit at the same median place, within
``merge_distance``: reverberant speech scatters its peaks by about +-0.15). The number of sources is the
number of tracks left; two sources closer than ``merge_distance`` (about 35 degrees at the centre) are one.

With bins grouped by what they are (:mod:`.grouping`: tonal partials, noise-like bins), each group's map
gives its own peak stream, tracked and pruned on its own before the groups' tracks are merged: a hum
next to a louder noise keeps its track although its peak in the all-bins map is a side lobe of the noise's.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage


@dataclass
class Track:
    """One source's trajectory over the ``F`` frames.

    x         float64 [F]  position in [0, 1]; interpolated over gaps, held before/after the track
    detected  bool    [F]  frames with a peak of this source
    strength  float64 [F]  its peak's height times the frame's weight (0 where not detected)
    leading   bool    [F]  frames where its peak is the frame's highest
    pitch_groups  the harmonic groups (:mod:`.harmonicity`) whose peaks it holds (empty: none)
    """
    x: np.ndarray
    detected: np.ndarray
    strength: np.ndarray
    leading: np.ndarray
    pitch_groups: frozenset[int] = frozenset()

    @property
    def support(self) -> float:
        return float(self.strength.sum())

    @functools.cached_property
    def median_x(self) -> float:
        """Median position over the detected frames (a track's arrays are never changed once made)."""
        return float(np.median(self.x[self.detected]))

    @functools.cached_property
    def span(self) -> tuple[int, int]:
        """First and last detected frame."""
        seen = np.flatnonzero(self.detected)
        return int(seen[0]), int(seen[-1])


@dataclass(frozen=True)
class Tracker:
    """Peak picking and tracking parameters (positions in frame widths, times in seconds)."""
    smooth_seconds: float = 0.25
    relative_height: float = 0.25  # a peak must reach this share of the frame's highest
    min_height: float = 0.12       # and this share of the frame's weight (a bin-consistent direction)
    gate: float = 0.12
    max_gap_seconds: float = 0.6
    alpha: float = 0.35
    beta: float = 0.05
    min_seconds: float = 0.3
    clear_support: float = 0.3     # share of the strongest track's support that makes a source
    min_support: float = 0.12      # a weaker one must also lead for min_leading_seconds
    min_leading_seconds: float = 0.3  # frames where a source has the highest peak: reflections never do
    merge_distance: float = 0.3    # tracks whose positions stay this close are one source

    def peaks(self, fused: np.ndarray, frame_weight: np.ndarray, active: np.ndarray, hop_seconds: float
              ) -> list[list[tuple[float, float]]]:
        """Per frame, ``(x, strength)`` of each map peak, strongest first (none in inactive frames)."""
        size = max(1, round(self.smooth_seconds / hop_seconds))
        weighted = scipy.ndimage.uniform_filter1d(fused * frame_weight[:, None], size, axis=0, mode="nearest")
        weight = scipy.ndimage.uniform_filter1d(frame_weight, size, mode="nearest")
        smoothed = weighted / np.maximum(weight, 1e-30)[:, None]
        points = fused.shape[1]
        padded = np.pad(smoothed, ((0, 0), (1, 1)), constant_values=-np.inf)
        threshold = np.maximum(self.min_height, self.relative_height * smoothed.max(axis=1))[:, None]
        is_peak = (smoothed > padded[:, :-2]) & (smoothed >= padded[:, 2:]) & (smoothed >= threshold) & active[:, None]
        frames, cells = np.nonzero(is_peak)
        order = np.lexsort((-smoothed[frames, cells], frames))  # by frame, strongest first within a frame
        frames, cells = frames[order], cells[order]
        xs, strengths = (cells / (points - 1)).tolist(), (smoothed[frames, cells] * frame_weight[frames]).tolist()
        bounds = np.searchsorted(frames, np.arange(len(fused) + 1)).tolist()
        return [list(zip(xs[bounds[f]:bounds[f + 1]], strengths[bounds[f]:bounds[f + 1]])) for f in range(len(fused))]

    def tracks(self, peaks: list[list[tuple[float, float]]], hop_seconds: float) -> list[Track]:
        """Follow ``peaks`` over the frames, prune and merge: the sources, strongest support first."""
        return self.sources([peaks], hop_seconds)

    def sources(self, streams: Sequence[list[list[tuple[float, float]]]], hop_seconds: float,
                pitch_groups: Sequence[int | None] | None = None) -> list[Track]:
        """The sources of several peak streams (one per bin group, :mod:`.grouping`): each stream is followed,
        merged and pruned on its own (a group's reflections are weak against that group's source, not
        against another group's louder one), then the tracks of all streams are merged where they are one
        source and pruned against the strongest of all. ``pitch_groups``: per stream, the harmonic group
        it is (None: not one); tracks of two harmonic groups heard at the same time are never merged.
        Strongest support first."""
        max_gap = max(1, round(self.max_gap_seconds / hop_seconds))
        found = []
        for peaks, group in zip(streams, pitch_groups or [None] * len(streams)):
            labels = frozenset() if group is None else frozenset([group])
            found += [dataclasses.replace(t, pitch_groups=labels) for t in
                      self._prune(self._merge(self._follow(peaks, max_gap), max_gap), hop_seconds)]
        return sorted(self._prune(self._merge(found, max_gap), hop_seconds), key=lambda t: -t.support)

    def _follow(self, peaks: list[list[tuple[float, float]]], max_gap: int) -> list[Track]:
        """The alpha-beta tracker over the frames' peaks: every track it started, unpruned."""
        live: list[dict] = []
        done: list[dict] = []
        for f, frame_peaks in enumerate(peaks):
            for state in live:
                state["predicted"] = state["x"] + state["v"] * (f - state["last"])
            taken = set()
            for rank, (x, strength) in enumerate(frame_peaks):
                free = [s for s in live if id(s) not in taken and abs(s["predicted"] - x) <= self.gate]
                if free:
                    state = min(free, key=lambda s: abs(s["predicted"] - x))
                    residual = x - state["predicted"]
                    steps = f - state["last"]
                    state["x"] = state["predicted"] + self.alpha * residual
                    state["v"] += self.beta * residual / steps
                    state["last"] = f
                else:
                    state = {"x": x, "v": 0.0, "last": f, "points": []}
                    live.append(state)
                taken.add(id(state))
                state["points"].append((f, state["x"], strength, rank == 0))
            ended = [s for s in live if f - s["last"] > max_gap]
            done += ended
            live = [s for s in live if f - s["last"] <= max_gap]
        return [self._track(s["points"], len(peaks)) for s in done + live]

    def _prune(self, tracks: list[Track], hop_seconds: float) -> list[Track]:
        """Drop tracks too short, or too weak without leading (see the module docstring)."""
        if not tracks:
            return []
        strongest = max(t.support for t in tracks)
        min_frames, min_leading = self.min_seconds / hop_seconds, self.min_leading_seconds / hop_seconds
        return [t for t in tracks if t.detected.sum() >= min_frames and (
            t.support >= self.clear_support * strongest
            or (t.support >= self.min_support * strongest and t.leading.sum() >= min_leading))]

    @staticmethod
    def _track(points: list[tuple[int, float, float, bool]], frames: int) -> Track:
        f, x, strength, lead = (np.array(v) for v in zip(*points))
        f = f.astype(int)
        detected, leading, power = np.zeros(frames, dtype=bool), np.zeros(frames, dtype=bool), np.zeros(frames)
        detected[f], leading[f], power[f] = True, lead, strength
        return Track(np.interp(np.arange(frames), f, x), detected, power, leading)

    def _merge(self, tracks: list[Track], max_gap: int) -> list[Track]:
        """Join fragments of one source until nothing changes (see the module docstring)."""
        tracks = sorted(tracks, key=lambda t: -t.support)
        made = list(tracks)  # every track made here stays referenced, so ids in `apart` are never reused
        apart: set[tuple[int, int]] = set()  # pairs already found to be two sources (tracks never change)
        merged = True
        while merged:
            merged = False
            for i in range(len(tracks)):
                for j in range(i + 1, len(tracks)):
                    pair = (id(tracks[i]), id(tracks[j]))
                    if pair in apart:
                        continue
                    if not self._same_source(tracks[i], tracks[j], max_gap):
                        apart.add(pair)
                    else:
                        tracks[i] = _joined(tracks[i], tracks[j])
                        made.append(tracks[i])
                        del tracks[j]
                        merged = True
                        break
                if merged:
                    break
        return tracks

    def _same_source(self, a: Track, b: Track, max_gap: int) -> bool:
        both = a.detected & b.detected
        if both.sum() > 0.2 * min(a.detected.sum(), b.detected.sum()):  # side by side
            if a.pitch_groups and b.pitch_groups and a.pitch_groups.isdisjoint(b.pitch_groups):
                return False  # two harmonic sources heard at once
            return float(np.median(np.abs(a.x[both] - b.x[both]))) <= self.merge_distance
        first, second = (a, b) if a.span[0] <= b.span[0] else (b, a)
        end, start = first.span[1], second.span[0]
        if start - end <= 2 * max_gap and abs(first.x[end] - second.x[start]) <= self.gate:
            return True  # one continues the other
        # a source heard in bursts (speech, barks) at one place: the same median position
        return abs(a.median_x - b.median_x) <= self.merge_distance


def _joined(a: Track, b: Track) -> Track:
    """One track of two fragments: where both were seen, the stronger one's position."""
    detected = a.detected | b.detected
    take_b = b.detected & (~a.detected | (b.strength > a.strength))
    frames = np.flatnonzero(detected)
    x_at = np.where(take_b, b.x, a.x)[frames]
    return Track(np.interp(np.arange(len(detected)), frames, x_at), detected, a.strength + b.strength,
                 a.leading | b.leading, a.pitch_groups | b.pitch_groups)
