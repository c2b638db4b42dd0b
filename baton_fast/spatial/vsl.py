"""Video Scene Layout (VSL): SpA2V's keyframe boxes, with JSON load/save, validation and interpolation.

JSON format (SpA2V's)::

    {"caption": str,
     "frames": [{"time": seconds, "caption": str,
                 "objects": [{"id": int, "name": str, "box": [x1, y1, x2, y2]}]}]}

Boxes are normalised to the frame: ``x`` from the left edge (0) to the right edge (1), ``y`` from the
top (0) to the bottom (1); ``x1 < x2``, ``y1 < y2``. An object keeps its ``id`` across frames; an object
missing from a keyframe is absent (off screen, or silent) at that time.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LayoutObject:
    """One sounding object in one keyframe."""
    id: int
    name: str
    box: Box

    def __post_init__(self):
        if isinstance(self.box, (list, np.ndarray)):
            object.__setattr__(self, "box", tuple(self.box))


@dataclass(frozen=True)
class LayoutFrame:
    """One keyframe: its time (seconds), a caption and the objects visible at that time."""
    time: float
    caption: str
    objects: tuple[LayoutObject, ...]

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))

    def boxes(self) -> dict[int, Box]:
        return {obj.id: obj.box for obj in self.objects}


@dataclass(frozen=True)
class VSL:
    """A validated video scene layout (construct with lists or tuples; stored as tuples)."""
    caption: str
    frames: tuple[LayoutFrame, ...]

    def __post_init__(self):
        object.__setattr__(self, "frames", tuple(self.frames))
        _validate(self)

    # ---- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"caption": self.caption,
                "frames": [{"time": float(f.time), "caption": f.caption,
                            "objects": [{"id": int(o.id), "name": o.name, "box": [float(v) for v in o.box]}
                                        for o in f.objects]}
                           for f in self.frames]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data) -> VSL:
        """Build from parsed JSON; missing keys or wrong types raise ValueError naming the location."""
        _expect(data, dict, "vsl")
        frames = []
        for i, frame in enumerate(_key(data, "frames", list, "vsl")):
            where = f"frames[{i}]"
            _expect(frame, dict, where)
            objects = []
            for j, obj in enumerate(_key(frame, "objects", list, where)):
                owhere = f"{where}.objects[{j}]"
                _expect(obj, dict, owhere)
                box = _key(obj, "box", list, owhere)
                objects.append(LayoutObject(id=_key(obj, "id", Integral, owhere),
                                            name=_key(obj, "name", str, owhere), box=tuple(box)))
            frames.append(LayoutFrame(time=_key(frame, "time", Real, where), caption=frame.get("caption", ""),
                                      objects=tuple(objects)))
        return cls(caption=data.get("caption", ""), frames=tuple(frames))

    @classmethod
    def from_json(cls, text: str) -> VSL:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"VSL JSON does not parse: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VSL:
        with open(path, encoding="utf-8") as file:
            return cls.from_json(file.read())

    # ---- queries ----------------------------------------------------------------------------------------
    @property
    def times(self) -> np.ndarray:
        """Keyframe times, float64 ``[frames]``."""
        return np.array([f.time for f in self.frames], dtype=np.float64)

    def object_ids(self) -> list[int]:
        """Every object id that appears in some keyframe, ascending (object ``i`` of the layout is ``[i]``)."""
        return sorted({obj.id for frame in self.frames for obj in frame.objects})

    def object_names(self) -> dict[int, str]:
        """``id -> name`` (the name in the first keyframe where the object appears)."""
        names: dict[int, str] = {}
        for frame in self.frames:
            for obj in frame.objects:
                names.setdefault(obj.id, obj.name)
        return names

    def boxes_at(self, times) -> list[dict[int, Box]]:
        """Boxes at arbitrary ``times`` (seconds, any order): one ``{id: box}`` per time.

        An object is present at ``t`` when it is present in the keyframe nearest to ``t`` (the earlier
        one on a tie), so an object absent in a keyframe stays absent at that keyframe's time. A present
        object's box is interpolated linearly between the two keyframes around ``t`` when it is in both,
        and held from the keyframe that has it otherwise. Before the first / after the last keyframe the
        layout is held.
        """
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(times)):
            raise ValueError("times must be finite seconds")
        key_times = self.times
        key_boxes = [frame.boxes() for frame in self.frames]
        result = []
        for t in times:
            after = int(np.searchsorted(key_times, t, side="left"))
            if after == 0 or after == len(key_times):
                result.append(dict(key_boxes[min(after, len(key_times) - 1)]))
                continue
            before = after - 1
            t0, t1 = key_times[before], key_times[after]
            nearest = before if t - t0 <= t1 - t else after
            alpha = (t - t0) / (t1 - t0)
            boxes = {}
            for obj_id, box in key_boxes[nearest].items():
                if obj_id in key_boxes[before] and obj_id in key_boxes[after]:
                    start, end = np.array(key_boxes[before][obj_id]), np.array(key_boxes[after][obj_id])
                    box = tuple(float(v) for v in (1 - alpha) * start + alpha * end)
                boxes[obj_id] = box
            result.append(boxes)
        return result

    def interpolate(self, times) -> VSL:
        """The layout at strictly increasing ``times``; each frame takes the caption of its nearest keyframe."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if len(times) == 0 or np.any(np.diff(times) <= 0):
            raise ValueError("times must be a non-empty, strictly increasing sequence of seconds")
        names = self.object_names()
        key_times = self.times
        frames = []
        for t, boxes in zip(times, self.boxes_at(times)):
            caption = self.frames[int(np.argmin(np.abs(key_times - t)))].caption
            objects = tuple(LayoutObject(obj_id, names[obj_id], box) for obj_id, box in sorted(boxes.items()))
            frames.append(LayoutFrame(float(t), caption, objects))
        return VSL(self.caption, tuple(frames))


def _expect(value, kind, where: str) -> None:
    if not isinstance(value, kind) or (kind in (Integral, Real) and isinstance(value, bool)):
        expected = {dict: "an object", list: "a list", Integral: "an integer", str: "a string",
                    Real: "a number", LayoutFrame: "a LayoutFrame", LayoutObject: "a LayoutObject"}[kind]
        raise ValueError(f"{where}: expected {expected}, got {value!r}")


def _key(data: dict, key: str, kind, where: str):
    if key not in data:
        raise ValueError(f"{where}: missing key {key!r}")
    _expect(data[key], kind, f"{where}.{key}")
    return data[key]


def _validate(vsl: VSL) -> None:
    _expect(vsl.caption, str, "caption")
    if not vsl.frames:
        raise ValueError("frames: a VSL needs at least one keyframe")
    previous = -math.inf
    for i, frame in enumerate(vsl.frames):
        where = f"frames[{i}]"
        _expect(frame, LayoutFrame, where)
        _expect(frame.time, Real, f"{where}.time")
        if not math.isfinite(frame.time) or frame.time < 0:
            raise ValueError(f"{where}.time: expected finite seconds >= 0, got {frame.time}")
        if frame.time <= previous:
            raise ValueError(f"{where}.time: times must increase strictly ({frame.time} after {previous})")
        previous = frame.time
        _expect(frame.caption, str, f"{where}.caption")
        seen = set()
        for j, obj in enumerate(frame.objects):
            owhere = f"{where}.objects[{j}]"
            _expect(obj, LayoutObject, owhere)
            _expect(obj.id, Integral, f"{owhere}.id")
            if obj.id < 0:
                raise ValueError(f"{owhere}.id: expected an integer >= 0, got {obj.id}")
            if obj.id in seen:
                raise ValueError(f"{owhere}.id: duplicate id {obj.id} in one frame")
            seen.add(obj.id)
            if not isinstance(obj.name, str) or not obj.name.strip():
                raise ValueError(f"{owhere}.name: expected a non-empty string, got {obj.name!r}")
            _validate_box(obj.box, f"{owhere}.box")


def _validate_box(box, where: str) -> None:
    numbers = isinstance(box, tuple) and all(isinstance(v, Real) and not isinstance(v, bool) for v in box)
    if not numbers or len(box) != 4:
        raise ValueError(f"{where}: expected four numbers [x1, y1, x2, y2], got {box!r}")
    x1, y1, x2, y2 = box
    if not all(0.0 <= v <= 1.0 for v in box):  # also rejects NaN
        raise ValueError(f"{where}: coordinates must be normalised to [0, 1], got {list(box)}")
    if x1 >= x2:
        raise ValueError(f"{where}: x1 ({x1}) must be < x2 ({x2})")
    if y1 >= y2:
        raise ValueError(f"{where}: y1 ({y1}) must be < y2 ({y2})")
