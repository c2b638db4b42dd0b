"""Where each time-frequency bin comes from: DUET-style position evidence on a grid of frame positions.

Horizontal position ``x`` in [0, 1] (0 = left edge) maps to the azimuth ``theta`` of a source seen by the
pair through ``sin(theta) = 1 - 2 x`` (hard left, +90 deg, at ``x = 0``), and so to the time difference
``tau(x) = d sin(theta) / c`` (left leads: ``tau > 0``) and to a level difference: ``head_shadow_db *
sin(theta)`` with a head or baffle, or, for a free-field pair, the constant-power pan law of an
amplitude-panned mix, ``ILD(x) = 20 log10(cot(pi x / 2))``.

Two maps over ``G`` grid positions, per analysis frame ``[F, G]``, both from the bins' precedence-weighted
magnitudes ``w = direct_weight * sqrt(power)``:

- time: the steered response of the whitened cross-spectrum, ``sum_k w Re(X_k / |X_k| exp(-2 pi i f_k tau(x)))``
  (SRP-PHAT); above the pair's aliasing frequency ``c / 2d`` one bin alone is ambiguous, the sum over
  bins is not;
- level: a histogram of the bins' pan-law (or head-shadow) positions, smoothed over 1.5 grid cells
  (scaled so that a frame whose bins all fall in one cell reads its weight sum there, as the time map does).

They are fused by their reliability over the clip (:func:`cue_weights`): each cue weighs by how far off
centre its per-frame peaks lie, strength-weighted. An amplitude-panned mix has time differences of
exactly 0, a spaced pair level differences near 0, a head both: the cue that carries the position gets
the weight, whatever the spectrum looks like.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.ndimage

from .cues import SPEED_OF_SOUND, SpatialCues, level_difference_db

GRID = 61  # positions 0, 1/60, ..., 1
MIN_FREQUENCY_HZ = 80.0


def grid(points: int = GRID) -> np.ndarray:
    """Grid positions ``x``, float64 ``[G]``."""
    return np.linspace(0.0, 1.0, points)


def bin_weights(cues: SpatialCues) -> np.ndarray:
    """``direct_weight * sqrt(power)`` of the channel mean, zero below 80 Hz and in silent bins: ``[F, K]``."""
    power = cues.mono_power
    audible = (power > 10.0 ** (cues.silence_db / 10.0)) & (cues.freqs >= MIN_FREQUENCY_HZ)[None, :]
    return np.where(audible, cues.direct_weight * np.sqrt(power), 0.0)


def bin_ild(cues: SpatialCues) -> np.ndarray:
    """Left-over-right level of every bin, dB ``[F, K]``."""
    return level_difference_db(cues.power[..., 0], cues.power[..., 1], cues.silence_db)


def ild_to_x(cues: SpatialCues, ild_db: np.ndarray) -> np.ndarray:
    """Position of a level difference: head-shadow model or inverted pan law."""
    if cues.head_shadow_db is not None:
        return 0.5 - 0.5 * np.clip(ild_db / cues.head_shadow_db, -1.0, 1.0)
    return np.arctan(10.0 ** (-ild_db / 20.0)) / (np.pi / 2)


def x_to_ild(cues: SpatialCues, x: np.ndarray) -> np.ndarray:
    """Level difference (dB) of a source at ``x`` (the inverse of :func:`ild_to_x`; +-60 dB at the edges)."""
    if cues.head_shadow_db is not None:
        return cues.head_shadow_db * (1 - 2 * x)
    angle = np.clip(x, 1e-3, 1 - 1e-3) * np.pi / 2
    return 20.0 * np.log10(np.cos(angle) / np.sin(angle))


def x_to_delay(cues: SpatialCues, x: np.ndarray) -> np.ndarray:
    """Time difference (s, > 0 when the left channel leads) of a source at ``x``."""
    return cues.mic_spacing * (1 - 2 * np.asarray(x)) / SPEED_OF_SOUND


def time_map(cues: SpatialCues, weights: np.ndarray, points: int = GRID) -> np.ndarray:
    """SRP-PHAT over the grid, float64 ``[..., F, G]`` for ``weights`` ``[..., F, K]`` (several weightings of the
    bins at once), in units of ``weights`` (a source whose every bin agrees reads the frame's weight sum at
    its position)."""
    unit = cues.cross / np.maximum(np.abs(cues.cross), 1e-30)  # complex64 [F, K]
    angle = 2 * np.pi * cues.freqs[:, None] * x_to_delay(cues, grid(points))[None, :]  # [K, G]
    # Re(w X/|X| exp(-i angle)) = w Re(X/|X|) cos(angle) + w Im(X/|X|) sin(angle): two real products
    weights = weights.astype(np.float32)
    return ((weights * unit.real) @ np.cos(angle).astype(np.float32)
            + (weights * unit.imag) @ np.sin(angle).astype(np.float32)).astype(np.float64)


def level_map(cues: SpatialCues, weights: np.ndarray, points: int = GRID) -> np.ndarray:
    """Weighted histogram of the bins' level-difference positions, smoothed: float64 ``[..., F, G]`` for
    ``weights`` ``[..., F, K]``."""
    cell = np.rint(ild_to_x(cues, bin_ild(cues)) * (points - 1)).astype(np.int64)  # [F, K]
    rows = weights.shape[:-1]  # one histogram row per frame of every weighting
    row = np.arange(math.prod(rows)).reshape(*rows, 1)
    histogram = np.bincount((row * points + cell).ravel(), weights=weights.ravel(),
                            minlength=row.size * points).reshape(*rows, points)
    width = 1.5  # cells; scaled so that bins all in one cell read their weight sum, as in the time map
    return math.sqrt(2 * math.pi) * width * scipy.ndimage.gaussian_filter1d(histogram, width, axis=-1, mode="nearest")


def cue_weights(time: np.ndarray, level: np.ndarray, frame_weight: np.ndarray) -> tuple[float, float]:
    """Reliability weights ``(a_time, a_level)`` summing to 1: each cue's strength-weighted mean distance
    of its per-frame peak from the centre, squared (both near 0: equal weights)."""
    x = grid(time.shape[1])
    evidence = []
    for cue_map in (time, level):
        peak = cue_map.argmax(axis=1)
        height = np.maximum(cue_map.max(axis=1), 0.0) / np.maximum(frame_weight, 1e-30)
        share = frame_weight * height
        evidence.append(float(np.sum(share * np.abs(x[peak] - 0.5)) / max(share.sum(), 1e-30)))
    squares = np.square(evidence)
    if squares.sum() < 1e-6:
        return 0.5, 0.5
    return float(squares[0] / squares.sum()), float(squares[1] / squares.sum())


def position_map(cues: SpatialCues, points: int = GRID) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """``(fused map [F, G], bin weights [F, K], (a_time, a_level))``; each map normalised per frame by the
    frame's weight sum before fusing, so 1 means every bin of the frame points at that position."""
    weights = bin_weights(cues)
    frame_weight = weights.sum(axis=1)
    time, level = time_map(cues, weights, points), level_map(cues, weights, points)
    share = cue_weights(time, level, frame_weight)
    return fused_map(time, level, share, frame_weight), weights, share


def fused_map(time: np.ndarray, level: np.ndarray, share: tuple[float, float], frame_weight: np.ndarray
              ) -> np.ndarray:
    """``(a_time * time + a_level * level) / frame_weight``: float64 ``[F, G]``, 1 where every bin agrees."""
    return (share[0] * time + share[1] * level) / np.maximum(frame_weight, 1e-30)[:, None]


def bin_agreement(cues: SpatialCues, x: np.ndarray, cue_share: tuple[float, float]) -> np.ndarray:
    """How well each bin agrees with a source at ``x`` (float64 ``[..., F]``, one position per frame, for any
    number of sources): ``a_time cos(phase error) + a_level exp(-(ILD error / 6 dB)^2 / 2)``, float32 ``[..., F, K]``."""
    a_time, a_level = cue_share
    x = np.asarray(x)
    agreement = np.zeros(x.shape + cues.freqs.shape, dtype=np.float32)
    if a_time > 0:
        expected = (2 * np.pi * cues.freqs * x_to_delay(cues, x)[..., None]).astype(np.float32)
        agreement += a_time * np.cos(np.angle(cues.cross) - expected)
    if a_level > 0:
        agreement += a_level * np.exp(-0.5 * ((bin_ild(cues) - x_to_ild(cues, x)[..., None]) / 6.0) ** 2)
    return agreement
