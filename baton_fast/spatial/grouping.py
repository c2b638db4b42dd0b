"""Time-frequency bins grouped by what they are: tonal partials and noise-like bins.

A harmonic source (a hum, barks, a voice) puts its power into narrow partials; a noise spreads it over
every bin. In a bin where a partial stands well above the spectrum around it, the partial dominates
whatever noise is mixed in, so that bin's phase and level point at the harmonic source. Per analysis
frame a bin is *tonal* when its channel-mean level is at least ``prominence_db`` above the mean level
of the ``neighbourhood_hz`` around it (the local noise floor: the mean of its dB levels, which partials
raise less than they raise a mean of powers), and so are its two neighbours (the Hann window's main lobe).
The test looks at one frame at a time, so a partial stays tonal however its pitch moves (a voice or a
gliding tone stays one group). In white noise about 0.03 % of bins pass (tests/test_spatial_tracking.py).

Each group gets its own fused position map (:func:`.tfcues.fused_map` of the group's bin weights), and
the tracker (:meth:`.tracking.Tracker.sources`) follows each group's peaks before merging groups that
are one source (same place).
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage

from .cues import SpatialCues, to_db
from .harmonicity import pitch_groups
from .tfcues import GRID, bin_weights, cue_weights, fused_map, level_map, time_map


def tonal_bins(cues: SpatialCues, prominence_db: float = 10.0, neighbourhood_hz: float = 250.0) -> np.ndarray:
    """Bins of partials standing ``prominence_db`` above their neighbourhood's mean dB level, and their two
    neighbours: bool ``[F, K]``."""
    level = to_db(cues.mono_power)
    width = 2 * max(1, round(neighbourhood_hz / 2 / (cues.freqs[1] - cues.freqs[0]))) + 1
    floor = scipy.ndimage.uniform_filter1d(level, width, axis=1, mode="nearest")
    return scipy.ndimage.binary_dilation(level >= floor + prominence_db, structure=np.ones((1, 3), dtype=bool))


def group_maps(cues: SpatialCues, points: int = GRID
               ) -> tuple[list[tuple[np.ndarray, np.ndarray, int | None]], list[np.ndarray], tuple[float, float]]:
    """``([(fused map [F, G], frame weight [F], pitch group or None) of each harmonic source's bins
    (:func:`.harmonicity.pitch_groups`: group 0, 1, ...), of the other tonal bins and of the noise-like
    bins], [bins of pitch group 0, 1, ...: bool [F, K]], (a_time, a_level))``; the cue weights come from all
    bins together (both maps are linear in the weights, so the all-bins maps are the sums of the groups')."""
    weights = bin_weights(cues)
    tonal = tonal_bins(cues)
    masks = pitch_groups(cues, tonal, weights)
    if len(masks) > 1:  # a bin near two pitches' multiples (unresolved partials) is neither's
        shared = np.sum(masks, axis=0) > 1
        masks = [group & ~shared for group in masks]
    masks += [tonal & ~np.any(masks, axis=0) if masks else tonal, ~tonal]
    parts = np.where(np.stack(masks), weights, 0.0)  # [groups, F, K]
    times, levels = time_map(cues, parts, points), level_map(cues, parts, points)
    share = cue_weights(times.sum(axis=0), levels.sum(axis=0), weights.sum(axis=1))
    labels = list(range(len(masks) - 2)) + [None, None]
    groups = [(fused_map(time, level, share, part.sum(axis=1)), part.sum(axis=1), label)
              for time, level, part, label in zip(times, levels, parts, labels)]
    return groups, masks[:-2], share
