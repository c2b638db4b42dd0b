"""Layout planners: spatial auditory cues -> Video Scene Layout.

``CuePlanner`` is deterministic signal processing; ``MLLMPlanner`` builds SpA2V's prompt (a "video
director" instruction, ``k`` retrieved in-context examples, the cue report) and hands it to any callable.

Conventions (the camera stands where the listener is):

- horizontal position: the fused time/level-difference map of :mod:`.tfcues` (``x = 0`` hard left,
  ``0.5`` ahead, ``1`` hard right; ``sin(azimuth) = 1 - 2x``).
- sources: the tracks (:mod:`.tracking`) of the maps of each bin group (:mod:`.grouping`: each
  harmonic source's partials (:mod:`.harmonicity`), other tonal bins, noise-like bins), merged where they
  are one source (never two harmonic groups heard at once); a pitch group's bins belong to the one
  source holding its track, every other bin to the source whose position it agrees with best. Sources
  are ranked by their bins' energy, loudest first; rank ``i`` gets object id ``i`` and ``names[i]`` (or
  "sound source"). ``partials_hz`` (the prominent peaks of
  a source's long-term spectrum) is reported, not used for grouping.
- size: louder = nearer = larger; the height follows ``amplitude ** size_exponent`` of the direct
  level around a reference set by the source's median direct level (``size_exponent = 1`` is the
  pinhole law, size ~ 1/distance ~ amplitude; the default 0.5 keeps a 24 dB swing inside the frame).
  Nearer boxes also sit lower.
- motion, from straight-line fits over the frames where the source is audible:
  ``left-crossing`` = enters from the left and moves to the right (x grows by >= ``crossing_threshold``),
  ``right-crossing`` = from the right towards the left, ``approaching`` / ``receding`` = the distance
  evidence (mean of the direct-level trend and the direct-to-reverberant-ratio trend, both -20 log10
  of the distance's change; the direct level alone for mono) rises / falls by >= ``distance_threshold_db``,
  else ``stationary``; when both a crossing and a distance trend pass their threshold, the one that
  passes it by the larger factor wins.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.signal

from .cues import SpatialCues, cue_report, load_audio, spatial_cues, to_db
from .grouping import group_maps
from .tfcues import MIN_FREQUENCY_HZ, bin_agreement
from .tracking import Track, Tracker
from .vsl import VSL, LayoutFrame, LayoutObject

MOTIONS = ("stationary", "left-crossing", "right-crossing", "approaching", "receding")
DEFAULT_NAME = "sound source"


@dataclass(frozen=True)
class SourceTrack:
    """One sound source over the ``F`` analysis frames of a :class:`SpatialCues`.

    partials_hz  frequencies of its spectral peaks (empty: a broadband source)
    level_db     float64 [F]  loudness of the source's bins, dBFS (channel mean)
    x            float64 [F]  horizontal position in [0, 1] (0 = left edge)
    active       bool    [F]  frames where the source is audible
    direct_level_db float64 [F] level of its direct sound: ``level_db + 10 log10(CDR / (1 + CDR))``
    drr_db       float64 [F]  its direct-to-reverberant ratio, dB: the median CDR of its audible bins (NaN
                              where none has one); None for mono
    x_start, x_end, level_change_db, drr_change_db: the straight-line fits (of x, of the direct level and
    of the DRR) at the first and last audible frame (``drr_change_db`` 0 for mono); the direct level's fit
    weighs each frame by its direct power (gaps and reverberant tails of bursts read it poorly)
    distance_change_db: what the motion label reads: the mean of ``level_change_db`` and
    ``drr_change_db`` (``level_change_db`` for mono); > 0 when the source comes nearer
    """
    index: int
    partials_hz: tuple[float, ...]
    level_db: np.ndarray
    x: np.ndarray
    active: np.ndarray
    x_start: float
    x_end: float
    level_change_db: float
    motion: str
    direct_level_db: np.ndarray
    drr_db: np.ndarray | None = None
    drr_change_db: float = 0.0
    distance_change_db: float = 0.0


@dataclass(frozen=True)
class CuePlanner:
    """Deterministic cues -> VSL planner (see the module docstring for the conventions)."""
    fps: float = 6.0
    max_sources: int = 4
    peak_prominence_db: float = 10.0
    dynamic_range_db: float = 30.0
    crossing_threshold: float = 0.25
    distance_threshold_db: float = 3.5
    size_exponent: float = 0.5
    box_aspect: float = 1.0
    min_height: float = 0.08
    max_height: float = 0.9
    tracker: Tracker = Tracker()

    def __post_init__(self):
        if not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ValueError(f"fps must be a positive number of keyframes per second, got {self.fps!r}")
        if not (isinstance(self.max_sources, int) and self.max_sources >= 1):
            raise ValueError(f"max_sources must be a positive integer, got {self.max_sources!r}")

    # ---- sources ----------------------------------------------------------------------------------------
    def tracks(self, cues: SpatialCues) -> list[SourceTrack]:
        """Find the sources in ``cues`` and follow each one: loudest first, at most ``max_sources``."""
        active = cues.active
        if not active.any():
            return []
        level = to_db(cues.mono_power.sum(axis=1))
        loud = active & (level >= level[active].max() - self.dynamic_range_db)
        hop = float(cues.times[1] - cues.times[0]) if len(cues.times) > 1 else 1.0
        share = (1.0, 0.0)
        found: list[Track] = []
        pitch_bins: list[np.ndarray] = []
        if cues.is_stereo:
            groups, pitch_bins, share = group_maps(cues)
            streams = [self.tracker.peaks(fused, frame_weight, loud, hop) for fused, frame_weight, _ in groups]
            found = self.tracker.sources(streams, hop, [label for _, _, label in groups])[:self.max_sources]
        if not found:  # mono, or no consistent direction anywhere: one source in the centre
            found = [Track(np.full(len(level), 0.5), loud.copy(), np.where(loud, 1.0, 0.0), loud.copy())]
        owner = self._owners(cues, found, share)
        for group, bins in enumerate(pitch_bins):  # a pitch group's bins belong to the one source holding it
            holders = [j for j, track in enumerate(found) if group in track.pitch_groups]
            if len(holders) == 1:
                owner[bins] = holders[0]
        energy = [cues.mono_power[loud].sum(where=owner[loud] == j) for j in range(len(found))]
        max_gap = max(1, round(self.tracker.max_gap_seconds / hop))
        return [self._follow(rank, found[j], owner == j, cues, max_gap)
                for rank, j in enumerate(np.argsort(np.negative(energy), kind="stable"))]

    @staticmethod
    def _owners(cues: SpatialCues, found: list[Track], share: tuple[float, float]) -> np.ndarray:
        """Index of the source each bin belongs to, int ``[F, K]``: the one whose position it agrees with best."""
        if len(found) == 1:
            return np.zeros(cues.power.shape[:2], dtype=np.int64)
        agreement = bin_agreement(cues, np.stack([track.x for track in found]), share)
        owner, best = np.zeros(agreement.shape[1:], dtype=np.int64), agreement[0]
        for j in range(1, len(found)):  # argmax over sources, without a strided reduction over axis 0
            better = agreement[j] > best
            owner[better], best = j, np.where(better, agreement[j], best)
        return owner

    @staticmethod
    def _direct_share(cues: SpatialCues, bins: np.ndarray) -> np.ndarray:
        """Direct share of a source's power per frame: ``precedence weight * CDR / (1 + CDR)`` (new and
        coherent), power-weighted over its bins where the CDR is defined; 1 for mono or where no bin of the
        source has a CDR: ``[F]``."""
        if cues.cdr is None:
            return np.ones(len(cues.times))
        defined = bins & np.isfinite(cues.cdr)
        power = np.where(defined, cues.mono_power, 0.0)
        direct = (power * cues.direct_weight * np.nan_to_num(cues.cdr / (1.0 + cues.cdr))).sum(axis=1)
        total = power.sum(axis=1)
        return np.where(total > 0, direct / np.maximum(total, 1e-30), 1.0)

    def _partials(self, cues: SpatialCues, power: np.ndarray) -> tuple[float, ...]:
        """Frequencies of the prominent peaks (>= ``peak_prominence_db``, within ``dynamic_range_db`` of
        the highest) of a source's long-term spectrum ``[K]``, parabolically refined; () if broadband."""
        spectrum_db = to_db(power)
        usable = cues.freqs >= cues.band_edges_hz[0]
        peaks, _ = scipy.signal.find_peaks(spectrum_db, prominence=self.peak_prominence_db)
        peaks = peaks[usable[peaks] & (spectrum_db[peaks] >= spectrum_db[usable].max() - self.dynamic_range_db)]
        peaks = peaks[(peaks > 0) & (peaks < len(cues.freqs) - 1)]
        left, centre, right = spectrum_db[peaks - 1], spectrum_db[peaks], spectrum_db[peaks + 1]
        shift = 0.5 * (left - right) / np.minimum(left - 2 * centre + right, -1e-9)
        bin_width = cues.freqs[1] - cues.freqs[0]
        return tuple(float(f) for f in cues.freqs[peaks] + np.clip(shift, -0.5, 0.5) * bin_width)

    def _follow(self, rank: int, track: Track, bins: np.ndarray, cues: SpatialCues, max_gap: int) -> SourceTrack:
        """The source made of ``bins`` (bool ``[F, K]``) along ``track``: levels, activity, fits, motion."""
        own_power = np.where(bins, cues.mono_power, 0.0)
        level = to_db(own_power.sum(axis=1))
        direct = level + to_db(np.maximum(self._direct_share(cues, bins), 1e-6))
        seen = np.flatnonzero(track.detected)
        near_seen = np.zeros(len(level), dtype=bool)
        near_seen[max(0, seen[0] - max_gap):seen[-1] + max_gap + 1] = True
        active = (level > cues.silence_db) & (level >= level.max() - self.dynamic_range_db) & near_seen
        if not active.any():
            active = track.detected
        x = track.x if cues.is_stereo else np.full(len(level), 0.5)
        drr = None if cues.cdr is None else self._drr_db(cues, own_power)
        x_start, x_end = _line_ends(cues.times, x, active)
        level_change = _line_change(cues.times, direct, active, weights=10.0 ** (direct / 10.0))
        if drr is None:
            drr_change, distance_change = 0.0, level_change
        else:
            drr_change = _line_change(cues.times, drr, active & np.isfinite(drr))
            distance_change = (level_change + drr_change) / 2
        return SourceTrack(index=rank, partials_hz=self._partials(cues, own_power[active].mean(axis=0)),
                           level_db=level, x=x,
                           active=active, x_start=float(np.clip(x_start, 0, 1)), x_end=float(np.clip(x_end, 0, 1)),
                           level_change_db=level_change, motion=self._motion(x_end - x_start, distance_change),
                           direct_level_db=direct, drr_db=drr, drr_change_db=drr_change,
                           distance_change_db=distance_change)

    @staticmethod
    def _drr_db(cues: SpatialCues, own_power: np.ndarray, dynamic_range_db: float = 40.0) -> np.ndarray:
        """Direct-to-reverberant ratio of a source per frame, dB ``[F]``: the median CDR of its bins within
        ``dynamic_range_db`` of its frame's strongest bin, from 80 Hz (NaN where no such bin has a CDR).
        A median over bins, not a power-weighted mean: the source's own spectral changes (vowels, pitch)
        do not move it, only its distance does (a 4 -> 0.8 m approach raises it as much as the direct level)."""
        strongest = own_power.max(axis=1, keepdims=True)
        used = ((own_power > 0) & (own_power >= strongest * 10.0 ** (-dynamic_range_db / 10.0))
                & np.isfinite(cues.cdr) & (cues.freqs >= MIN_FREQUENCY_HZ)[None, :])
        count = used.sum(axis=1)
        ordered = np.sort(np.where(used, cues.cdr, np.inf), axis=1)  # the used bins first, ascending
        rows = np.arange(len(ordered))
        median = 0.5 * (ordered[rows, np.maximum(count - 1, 0) // 2] + ordered[rows, count // 2])
        return np.where(count > 0, to_db(np.where(count > 0, median, 1.0)), np.nan)

    def _motion(self, x_change: float, distance_change_db: float) -> str:
        crossing = abs(x_change) / self.crossing_threshold
        distance = abs(distance_change_db) / self.distance_threshold_db
        if max(crossing, distance) < 1.0:
            return "stationary"
        if crossing >= distance:
            return "left-crossing" if x_change > 0 else "right-crossing"
        return "approaching" if distance_change_db > 0 else "receding"

    # ---- layout -----------------------------------------------------------------------------------------
    def keyframe_times(self, duration: float) -> np.ndarray:
        """``0, 1/fps, 2/fps, ...`` up to ``duration`` seconds: float64 ``[keyframes]``."""
        return np.arange(int(math.floor(duration * self.fps + 1e-9)) + 1) / self.fps

    def plan(self, cues: SpatialCues, names: Sequence[str] | None = None) -> VSL:
        """The VSL of ``cues`` with one keyframe every ``1 / fps`` seconds."""
        names = list(names or [])
        if any(not isinstance(n, str) or not n.strip() for n in names):
            raise ValueError(f"names must be non-empty strings, got {names!r}")
        tracks = self.tracks(cues)
        references = [float(np.median(t.direct_level_db[t.active])) for t in tracks]
        labels = {track.index: names[track.index] if track.index < len(names) else DEFAULT_NAME for track in tracks}
        frames = []
        for t in self.keyframe_times(cues.duration):
            window = np.abs(cues.times - t) <= 0.5 / self.fps
            if not window.any():
                window = np.abs(cues.times - t) == np.abs(cues.times - t).min()
            objects = []
            for track, reference in zip(tracks, references):
                box = self._box(track, window, reference)
                if box is not None:
                    objects.append(LayoutObject(track.index, labels[track.index], box))
            caption = ", ".join(f"{labels[o.id]} {_region((o.box[0] + o.box[2]) / 2)}" for o in objects)
            frames.append(LayoutFrame(float(round(t, 4)), caption or "no visible sound source", tuple(objects)))
        return VSL(_global_caption(tracks, labels, cues.is_stereo), tuple(frames))

    def _box(self, track: SourceTrack, window: np.ndarray, reference: float
             ) -> tuple[float, float, float, float] | None:
        """The box of ``track`` averaged over the analysis frames in ``window``; None when it is silent there.
        ``reference``: the track's median direct level over its audible frames (the size at ``h_ref``)."""
        frames = window & track.active
        if not frames.any():
            return None
        weights = 10.0 ** (track.level_db[frames] / 10.0)
        x = float(np.sum(weights * track.x[frames]) / weights.sum())
        level = float(to_db((10.0 ** (track.direct_level_db[frames] / 10.0)).mean()))
        reference_height = float(np.interp(reference, [-60.0, 0.0], [0.15, 0.5]))
        height = reference_height * 10.0 ** (self.size_exponent * (level - reference) / 20.0)
        height = min(max(height, self.min_height), self.max_height)
        width = height * self.box_aspect
        bottom = 0.6 + 0.4 * height  # nearer (larger) objects stand lower in the frame
        x1, x2 = max(0.0, x - width / 2), min(1.0, x + width / 2)
        return (round(x1, 4), round(bottom - height, 4), round(x2, 4), round(bottom, 4))


def _line_ends(times: np.ndarray, values: np.ndarray, frames: np.ndarray, weights: np.ndarray | None = None
               ) -> tuple[float, float]:
    """The straight-line fit of ``values`` over ``frames`` (bool ``[F]``) at its first and last frame (the
    mean twice when fewer than two frames); ``weights`` ``[F]`` weigh the squared residuals."""
    t = times[frames]
    if len(t) < 2 or t[-1] <= t[0]:
        mean = float(np.mean(values[frames])) if len(t) else float(np.mean(values))
        return mean, mean
    w = None if weights is None else np.sqrt(weights[frames] / weights[frames].max())
    slope, middle = np.polyfit(t - t.mean(), values[frames], 1, w=w)
    half_span = (t[-1] - t[0]) / 2
    return float(middle - slope * half_span), float(middle + slope * half_span)


def _line_change(times: np.ndarray, values: np.ndarray, frames: np.ndarray, weights: np.ndarray | None = None
                 ) -> float:
    """How much the straight-line fit of ``values`` over ``frames`` changes from their first to last frame."""
    start, end = _line_ends(times, values, frames, weights)
    return end - start


def _region(x: float) -> str:
    return "on the left" if x < 1 / 3 else "on the right" if x > 2 / 3 else "in the centre"


_MOTION_PHRASES = {"stationary": "staying {start}", "left-crossing": "moving from the left to the right",
                   "right-crossing": "moving from the right to the left",
                   "approaching": "approaching the camera {start}", "receding": "moving away from the camera {start}"}


def _global_caption(tracks: Sequence[SourceTrack], labels: dict[int, str], stereo: bool) -> str:
    if not tracks:
        return "Silence: no sound source is audible."
    parts = []
    for track in tracks:
        name = labels[track.index]
        article = "an" if name[0].lower() in "aeiou" else "a"
        phrase = _MOTION_PHRASES[track.motion].format(start=_region(track.x_start))
        parts.append(f"{article} {name} {phrase} ({track.motion})")
    caption = "; ".join(parts)
    caption = caption[0].upper() + caption[1:] + "."
    if not stereo:
        caption += " Mono recording: no spatial cue, sources are placed in the centre."
    return caption


def track_report(tracks: Sequence[SourceTrack]) -> str:
    """One line per source found by :class:`CuePlanner` (part of the MLLM cue report)."""
    if not tracks:
        return "sources: none audible"
    lines = []
    for track in tracks:
        pitch = ", ".join(f"{f:.0f}" for f in track.partials_hz) + " Hz" if track.partials_hz else "broadband"
        lines.append(f"source {track.index}: {pitch}; position x {track.x_start:.2f} -> {track.x_end:.2f} "
                     f"(0 left, 1 right); direct level change {track.level_change_db:+.1f} dB, "
                     f"direct-to-reverberant ratio change {track.drr_change_db:+.1f} dB; motion {track.motion}")
    return "\n".join(lines)


# ---- MLLM planner -----------------------------------------------------------------------------------------

DIRECTOR_INSTRUCTION = """\
You are a video director. From the soundtrack of a video and a report of its spatial auditory cues, \
plan the video's scene layout: which objects make the sounds, where each one is in the frame at every \
keyframe, and how it moves.
Rules:
- The camera stands where the listener is. A source that is louder in the left channel (ILD > 0) or \
reaches the left channel first (ITD > 0) is in the left part of the frame; equal channels mean the centre.
- Louder means nearer, and nearer objects are larger and lower in the frame. Rising loudness means the \
object approaches, falling loudness that it recedes.
- A source whose position moves from left to right is "left-crossing" (it enters from the left); from \
right to left it is "right-crossing".
- Keep an object's id in every keyframe where it is visible; leave it out of a keyframe where it is not.
- Boxes are [x1, y1, x2, y2] normalised to [0, 1], origin at the top-left corner, x1 < x2, y1 < y2.
Answer with JSON only, in this format:
{"caption": "...", "frames": [{"time": 0.0, "caption": "...", "objects": [{"id": 0, "name": "...", \
"box": [x1, y1, x2, y2]}]}]}"""


@dataclass(frozen=True)
class LayoutExample:
    """An in-context example: a cue description, its retrieval features (see :func:`cue_features`), its VSL."""
    description: str
    features: tuple[float, float, float, float]
    vsl: VSL


def cue_features(tracks: Sequence[SourceTrack]) -> np.ndarray:
    """Retrieval key of a recording: (number of sources, start x, end x, direct level change / 24 dB) of its
    loudest source; float64 ``[4]``."""
    if not tracks:
        return np.array([0.0, 0.5, 0.5, 0.0])
    loudest = tracks[0]
    return np.array([len(tracks), loudest.x_start, loudest.x_end, loudest.level_change_db / 24.0])


def _example(description, features, caption, objects_by_time) -> LayoutExample:
    frames = [{"time": t, "caption": frame_caption,
               "objects": [{"id": i, "name": name, "box": box} for i, name, box in objects]}
              for t, frame_caption, objects in objects_by_time]
    return LayoutExample(description, features, VSL.from_dict({"caption": caption, "frames": frames}))


DEFAULT_EXAMPLES = (
    _example("one source; heard on the left at first, then in the centre, then on the right; steady loudness",
             (1, 0.15, 0.85, 0.0), "A car driving from the left to the right (left-crossing).",
             [(0.0, "car on the left", [(0, "car", [0.0, 0.55, 0.3, 0.8])]),
              (2.5, "car in the centre", [(0, "car", [0.35, 0.55, 0.65, 0.8])]),
              (5.0, "car on the right", [(0, "car", [0.7, 0.55, 1.0, 0.8])])]),
    _example("one source; louder in the right channel the whole time; steady loudness",
             (1, 0.8, 0.8, 0.0), "A dog barking on the right (stationary).",
             [(0.0, "dog on the right", [(0, "dog", [0.65, 0.45, 0.95, 0.85])]),
              (5.0, "dog on the right", [(0, "dog", [0.65, 0.45, 0.95, 0.85])])]),
    _example("one source; equal in both channels; loudness rises by 18 dB",
             (1, 0.5, 0.5, 0.75), "A train approaching the camera in the centre (approaching).",
             [(0.0, "train in the centre", [(0, "train", [0.45, 0.5, 0.55, 0.6])]),
              (2.5, "train in the centre", [(0, "train", [0.35, 0.45, 0.65, 0.75])]),
              (5.0, "train in the centre", [(0, "train", [0.15, 0.3, 0.85, 0.95])])]),
    _example("two sources; a low voice louder on the left, a high melody louder on the right; steady",
             (2, 0.2, 0.2, 0.0), "A man talking on the left and a piano playing on the right (stationary).",
             [(0.0, "man on the left, piano on the right",
               [(0, "man", [0.05, 0.2, 0.4, 0.95]), (1, "piano", [0.6, 0.4, 0.95, 0.9])]),
              (5.0, "man on the left, piano on the right",
               [(0, "man", [0.05, 0.2, 0.4, 0.95]), (1, "piano", [0.6, 0.4, 0.95, 0.9])])]),
    _example("one source; heard on the right at first, then on the left; loudness falls by 9 dB",
             (1, 0.85, 0.15, -0.375), "A motorbike riding from the right to the left (right-crossing).",
             [(0.0, "motorbike on the right", [(0, "motorbike", [0.65, 0.4, 1.0, 0.9])]),
              (5.0, "motorbike on the left", [(0, "motorbike", [0.0, 0.55, 0.2, 0.8])])]),
)


class MLLMPlanner:
    """SpA2V-style planning with a multimodal language model behind any callable.

    ``generate(prompt_text, audio_path) -> VSL JSON text`` is supplied by the caller (a local model, an
    API client, a test double); nothing here opens a network connection. The prompt is the director
    instruction, the ``k`` examples nearest to the recording's :func:`cue_features`, and the cue report
    (:func:`cue_report` plus the :class:`CuePlanner` source summary).
    """

    def __init__(self, generate: Callable[[str, str | None], str], *,
                 examples: Sequence[LayoutExample] = DEFAULT_EXAMPLES, k: int = 2,
                 cue_planner: CuePlanner | None = None, instruction: str = DIRECTOR_INSTRUCTION):
        if not callable(generate):
            raise TypeError(f"generate must be a callable (prompt, audio_path) -> str, got {generate!r}")
        if not (isinstance(k, int) and 0 <= k <= len(examples)):
            raise ValueError(f"k must be an integer in [0, {len(examples)}] (the number of examples), got {k!r}")
        self.generate = generate
        self.examples = tuple(examples)
        self.k = k
        self.cue_planner = cue_planner or CuePlanner()
        self.instruction = instruction

    def retrieve(self, features: np.ndarray) -> list[LayoutExample]:
        """The ``k`` examples whose features are nearest (Euclidean) to ``features``, nearest first."""
        distances = [float(np.linalg.norm(np.asarray(e.features) - features)) for e in self.examples]
        return [self.examples[i] for i in np.argsort(distances, kind="stable")[:self.k]]

    def prompt(self, cues: SpatialCues, names: Sequence[str] | None = None, audio_path: str | None = None) -> str:
        tracks = self.cue_planner.tracks(cues)
        parts = [self.instruction]
        for number, example in enumerate(self.retrieve(cue_features(tracks)), 1):
            parts.append(f"### Example {number}\nAudio cues: {example.description}\n"
                         f"Video scene layout:\n{json.dumps(example.vsl.to_dict())}")
        times = ", ".join(f"{t:g}" for t in np.round(self.cue_planner.keyframe_times(cues.duration), 4))
        task = ["### Your recording"]
        if audio_path is not None:
            task.append(f"Audio file: {os.path.basename(audio_path)}")
        if names:
            task.append("Sounding objects, loudest first: " + ", ".join(names))
        task += ["Cue report:", cue_report(cues), track_report(tracks), f"Keyframe times (s): {times}",
                 "Video scene layout:"]
        parts.append("\n".join(task))
        return "\n\n".join(parts)

    def plan(self, audio_path: str | os.PathLike, names: Sequence[str] | None = None) -> VSL:
        """Read ``audio_path``, prompt the model, parse and validate its answer."""
        audio_path = os.fspath(audio_path)
        cues = spatial_cues(*load_audio(audio_path))
        answer = self.generate(self.prompt(cues, names, audio_path), audio_path)
        return parse_vsl_answer(answer)


def parse_vsl_answer(answer: str) -> VSL:
    """The VSL in a model's answer (JSON, possibly inside a Markdown code fence or surrounded by text)."""
    if not isinstance(answer, str):
        raise TypeError(f"the model must return text, got {type(answer).__name__}")
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"model answer holds no JSON object: {answer[:200]!r}")
    try:
        return VSL.from_json(answer[start:end + 1])
    except ValueError as err:
        raise ValueError(f"model answer is not a valid VSL ({err}): {answer[:200]!r}") from err
