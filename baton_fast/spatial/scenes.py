"""The room benchmark's scenes: what is simulated for each category and condition, and how a plan is scored.

A scene is drawn from ``numpy.random.default_rng([category index, condition index, number])``, so the
same (category, condition, number) always gives the same recording. Categories:

=============  ================================================================  ==========================
category       scene                                                             scored right when
=============  ================================================================  ==========================
static         one source (tone, barks, noise or speech) at +-20..75 deg, 1-3 m  loudest box on its side
crossing       one source on a straight line 1.5-2.0 m ahead, from +60 to -60    its motion label
               deg or back (left-crossing / right-crossing)
approach       one source at -30..30 deg moving 4 -> 0.8 m (approaching) or      its motion label
               back (receding)
two sources    two different sources, one at +30..70 deg, one at -30..70 deg     two sources found, one box
                                                                                 on each side
speech         one speech-like source at -75..75 deg, 1-3 m                      counted as one source
=============  ================================================================  ==========================

Conditions: anechoic; RT60 0.4 s; RT60 0.9 s; RT60 0.4 s with independent noise at 10 dB SNR. Clips
last 4 s at 16 kHz; the pair is 0.2 m wide.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rooms import Room, add_noise, render
from .signals import GENERATORS

CATEGORIES = ("static", "crossing", "approach", "two sources", "speech")
CONDITIONS = {"anechoic": (None, None), "RT60 0.4 s": (0.4, None), "RT60 0.9 s": (0.9, None),
              "RT60 0.4 s, 10 dB SNR": (0.4, 10.0)}
SAMPLE_RATE = 16000
SECONDS = 4.0
MIC_SPACING = 0.2


@dataclass(frozen=True)
class Truth:
    """What a scene holds: per source its azimuth at the start and end (deg, positive left) and motion."""
    azimuths: tuple[tuple[float, float], ...]
    motions: tuple[str, ...]
    kinds: tuple[str, ...]

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple("left" if (a + b) / 2 > 0 else "right" for a, b in self.azimuths)


def scene(category: str, condition: str, number: int) -> tuple[np.ndarray, Truth]:
    """The recording (float64 ``[2, samples]`` at :data:`SAMPLE_RATE`, peak 0.5) and its :class:`Truth`."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {tuple(CONDITIONS)}, got {condition!r}")
    rng = np.random.default_rng([CATEGORIES.index(category), list(CONDITIONS).index(condition), number])
    rt60, snr_db = CONDITIONS[condition]
    room = Room(rt60=rt60, mic_spacing=MIC_SPACING)
    sign = 1.0 if number % 2 == 0 else -1.0  # alternate sides / directions
    kinds = list(GENERATORS)
    if category == "static":
        kind, azimuth = kinds[number // 2 % len(kinds)], sign * rng.uniform(20, 75)
        sources = [(kind, [room.position(azimuth, rng.uniform(1, 3))], (azimuth, azimuth), "stationary")]
    elif category == "speech":
        azimuth = sign * rng.uniform(0, 75)
        sources = [("speech", [room.position(azimuth, rng.uniform(1, 3))], (azimuth, azimuth), "stationary")]
    elif category == "crossing":
        reach, kind = rng.uniform(1.5, 2.0) / np.cos(np.radians(60)), kinds[number // 2 % len(kinds)]
        start, end = sign * 60.0, -sign * 60.0
        path = [room.position(start, reach), room.position(end, reach)]
        sources = [(kind, path, (start, end), "left-crossing" if sign > 0 else "right-crossing")]
    elif category == "approach":
        azimuth, kind = rng.uniform(-30, 30), kinds[number // 2 % len(kinds)]
        near, far = room.position(azimuth, 0.8), room.position(azimuth, 4.0)
        path = [far, near] if sign > 0 else [near, far]
        sources = [(kind, path, (azimuth, azimuth), "approaching" if sign > 0 else "receding")]
    else:
        pair = rng.choice(len(kinds), size=2, replace=False)
        left, right = rng.uniform(30, 70), -rng.uniform(30, 70)
        sources = [(kinds[pair[0]], [room.position(left, rng.uniform(1, 2.5))], (left, left), "stationary"),
                   (kinds[pair[1]], [room.position(right, rng.uniform(1, 2.5))], (right, right), "stationary")]
    stereo = np.zeros((2, round(SECONDS * SAMPLE_RATE)))
    for kind, path, _, _ in sources:
        signal = GENERATORS[kind](rng, SECONDS, SAMPLE_RATE)
        stereo += render(room, signal, np.array(path), SAMPLE_RATE, rng)
    if snr_db is not None:
        stereo = add_noise(stereo, snr_db, rng)
    stereo *= 0.5 / max(np.abs(stereo).max(), 1e-12)
    return stereo, Truth(tuple(a for _, _, a, _ in sources), tuple(m for *_, m in sources),
                         tuple(k for k, *_ in sources))


def box_centres(vsl) -> dict[int, float]:
    """Mean horizontal box centre of every object of ``vsl`` over the keyframes that hold it."""
    centres: dict[int, list[float]] = {}
    for frame in vsl.frames:
        for obj in frame.objects:
            centres.setdefault(obj.id, []).append((obj.box[0] + obj.box[2]) / 2)
    return {obj_id: float(np.mean(x)) for obj_id, x in centres.items()}


def score(category: str, truth: Truth, motions: list[str], vsl) -> dict[str, bool]:
    """The checks of one plan: ``motions`` are the planner's source motions, loudest first; object ``i`` of
    ``vsl`` is source ``i``. Returns ``{"right": the category's criterion, "count": source count right}``."""
    centres = box_centres(vsl)
    count = len(motions) == len(truth.motions)
    side_of = {obj_id: "left" if x < 0.5 else "right" for obj_id, x in centres.items()}
    if category == "static":
        right = side_of.get(0) == truth.sides[0]
    elif category in ("crossing", "approach"):
        right = bool(motions) and motions[0] == truth.motions[0]
    elif category == "two sources":
        right = len(motions) >= 2 and {side_of.get(0), side_of.get(1)} == {"left", "right"}
    else:
        right = count
    return {"right": bool(right), "count": bool(count)}
