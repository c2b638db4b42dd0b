"""Tonal bins grouped by a common fundamental: one harmonic source's partials are one group as its pitch moves.

Per analysis frame the tonal bins' spectral peaks (:func:`.grouping.tonal_bins`, local maxima of the
channel-mean level) vote for fundamentals by harmonic summation: a candidate ``f0`` (a log grid,
``MIN_F0_HZ`` .. ``MAX_F0_HZ``, 2 % steps) collects ``weight / h`` of every peak within ``tolerance`` of its
``h``-th multiple, ``h <= max_harmonic``. The ``1 / h`` keeps a common subharmonic of two sources (190 and
290 Hz: 96 Hz) and a source's own subharmonics below its fundamental; the frame's pitch is the highest
candidate within ``0.9`` of the best sum (the neighbours of the true ``f0`` on the grid score alike),
refined off the grid as the weighted mean of its peaks' ``frequency / h``. Its peaks are removed and a
second pitch is taken the same way where what is left carries at least ``second_share`` of the frame's
peak weight (two harmonic sources heard at once).

The frames' pitches are linked into contours: a pitch continues the contour whose last pitch is
nearest, within ``max_step`` (relative) per frame, or within ``max_jump`` after a gap of up to
``max_gap_seconds``. A contour heard for ``min_seconds`` (a sustained harmonic source: a hum, a held or
gliding tone; not the short syllables of speech or barks, whose pitch restarts after every pause and
whose reverberant tails read as second pitches, so their bins stay with the other tonal bins) is a
group: its bins are the tonal bins within ``tolerance / 4 * h * f0`` and 1.5 bins (a partial's main
lobe) of its pitch's multiples in its frames. Groups are one source each
(:meth:`.tracking.Tracker.sources` never merges tracks of two groups heard at the same time, and the
planner gives a group's bins to the one source holding it), so two harmonic sources at different
pitches stay two even close together, and a gliding tone stays one.
"""
from __future__ import annotations

import numpy as np

from .cues import SpatialCues, to_db

MIN_F0_HZ, MAX_F0_HZ = 80.0, 1600.0


def candidates(step: float = 0.02) -> np.ndarray:
    """The fundamental grid, Hz, float64 ``[C]``."""
    return MIN_F0_HZ * (1 + step) ** np.arange(int(np.log(MAX_F0_HZ / MIN_F0_HZ) / np.log1p(step)) + 1)


def _near_harmonic(freqs: np.ndarray, f0: np.ndarray, tolerance: float, half_bin: float, max_harmonic: int
                   ) -> np.ndarray:
    """Whether ``freqs`` lie within ``tolerance * h * f0 + half_bin`` of a multiple ``h <= max_harmonic`` of
    ``f0`` (broadcast shapes)."""
    harmonic = np.rint(freqs / f0)
    return (harmonic >= 1) & (harmonic <= max_harmonic) & (
        np.abs(freqs - harmonic * f0) <= tolerance * harmonic * f0 + half_bin)


def frame_pitches(cues: SpatialCues, tonal: np.ndarray, weights: np.ndarray, *, max_harmonic: int = 12,
                  tolerance: float = 0.02, second_share: float = 0.25) -> np.ndarray:
    """Up to two fundamentals per frame, Hz, float64 ``[F, 2]`` (NaN where none), from the peaks of the tonal
    bins ``tonal`` (bool ``[F, K]``) weighted by ``weights`` (``[F, K]``, :func:`.tfcues.bin_weights`)."""
    level = to_db(cues.mono_power)
    padded = np.pad(level, ((0, 0), (1, 1)), constant_values=-np.inf)
    is_peak = tonal & (weights > 0) & (level > padded[:, :-2]) & (level >= padded[:, 2:])
    is_peak[:, [0, -1]] = False
    frames, bins = np.nonzero(is_peak)  # sorted by frame
    pitches = np.full((len(level), 2), np.nan)
    if not len(frames):
        return pitches
    left, centre, right = level[frames, bins - 1], level[frames, bins], level[frames, bins + 1]
    shift = np.clip(0.5 * (left - right) / np.minimum(left - 2 * centre + right, -1e-9), -0.5, 0.5)
    bin_width = float(cues.freqs[1] - cues.freqs[0])
    freqs = cues.freqs[bins] + shift * bin_width  # parabolically refined
    f0 = candidates()
    near = _near_harmonic(freqs[:, None], f0[None, :], tolerance, 0.1 * bin_width, max_harmonic)  # [P, C]
    votes = np.where(near, 1.0 / np.maximum(np.rint(freqs[:, None] / f0[None, :]), 1.0), 0.0)  # 1/h
    weight = weights[frames, bins]
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    heard_frames = frames[starts]
    total = np.add.reduceat(weight, starts)
    per_peak = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(frames)]))
    remaining = np.ones(len(frames), dtype=bool)
    for slot in range(2):
        salience = np.add.reduceat(votes * np.where(remaining, weight, 0.0)[:, None], starts, axis=0)  # [F', C]
        best = salience.max(axis=1)
        chosen = len(f0) - 1 - np.argmax((salience >= 0.9 * best[:, None])[:, ::-1], axis=1)  # highest such f0
        explained = remaining & near[np.arange(len(frames)), chosen[per_peak]]
        share = np.add.reduceat(np.where(explained, weight, 0.0), starts) / total
        heard = (best > 0) & (share >= (0.0 if slot == 0 else second_share))
        # refined off the grid: the weighted mean of the explained peaks' frequency / harmonic number
        harmonic = np.maximum(np.rint(freqs / f0[chosen[per_peak]]), 1.0)
        used = np.where(explained, weight, 0.0)
        refined = np.add.reduceat(used * freqs / harmonic, starts) / np.maximum(np.add.reduceat(used, starts), 1e-30)
        pitches[heard_frames[heard], slot] = refined[heard]
        remaining &= ~(explained & heard[per_peak])
    return pitches


def contours(pitches: np.ndarray, hop_seconds: float, *, max_step: float = 0.06, max_jump: float = 0.15,
             max_gap_seconds: float = 0.1) -> list[np.ndarray]:
    """The frames' pitches (``[F, 2]``, NaN: none) linked into contours: each a float64 ``[F]`` pitch, NaN
    where the contour is not heard."""
    max_gap = max(1, round(max_gap_seconds / hop_seconds))
    live: list[dict] = []
    made: list[dict] = []
    for f, frame in enumerate(pitches):
        live = [c for c in live if f - c["last"] <= max_gap]
        taken = set()
        for pitch in frame[np.isfinite(frame)]:
            def distance(c):
                return abs(np.log(pitch / c["pitch"]))
            free = [c for c in live if id(c) not in taken
                    and distance(c) <= np.log1p(max_step if f - c["last"] == 1 else max_jump)]
            if free:
                contour = min(free, key=distance)
            else:
                contour = {"points": []}
                live.append(contour)
                made.append(contour)
            contour["pitch"], contour["last"] = pitch, f
            contour["points"].append((f, pitch))
            taken.add(id(contour))
    out = []
    for contour in made:
        line = np.full(len(pitches), np.nan)
        f, pitch = zip(*contour["points"])
        line[list(f)] = pitch
        out.append(line)
    return out


def pitch_groups(cues: SpatialCues, tonal: np.ndarray, weights: np.ndarray, *, min_seconds: float = 1.0,
                 max_groups: int = 4, max_harmonic: int = 12, tolerance: float = 0.02) -> list[np.ndarray]:
    """The bins of each harmonic source: bool ``[F, K]`` per contour heard for ``min_seconds`` (longest
    first, at most ``max_groups``); tonal bins near its pitch's multiples in its frames."""
    hop = float(cues.times[1] - cues.times[0]) if len(cues.times) > 1 else 1.0
    pitches = frame_pitches(cues, tonal, weights, max_harmonic=max_harmonic, tolerance=tolerance)
    lines = [line for line in contours(pitches, hop) if np.isfinite(line).sum() * hop >= min_seconds]
    lines = sorted(lines, key=lambda line: -np.isfinite(line).sum())[:max_groups]
    half_bin = 0.5 * float(cues.freqs[1] - cues.freqs[0])
    groups = []
    for line in lines:
        heard = np.isfinite(line)
        near = _near_harmonic(cues.freqs[None, :], np.where(heard, line, 1e9)[:, None], tolerance / 4,
                              3 * half_bin, max_harmonic)  # a partial and its main-lobe neighbours
        groups.append(tonal & near & heard[:, None])
    return groups
