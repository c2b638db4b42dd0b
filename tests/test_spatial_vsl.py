"""Video Scene Layout: JSON round trip, validation errors, interpolation."""
import copy
import json

import numpy as np
import pytest

from baton_fast.spatial import VSL, LayoutFrame, LayoutObject

LAYOUT = {
    "caption": "a dog runs from the left to the right while a bird sits on the right",
    "frames": [
        {"time": 0.0, "caption": "dog on the left",
         "objects": [{"id": 0, "name": "dog", "box": [0.0, 0.5, 0.2, 0.9]},
                     {"id": 3, "name": "bird", "box": [0.8, 0.1, 0.9, 0.2]}]},
        {"time": 1.0, "caption": "dog in the centre",
         "objects": [{"id": 0, "name": "dog", "box": [0.4, 0.4, 0.6, 0.8]}]},
        {"time": 2.0, "caption": "dog on the right",
         "objects": [{"id": 0, "name": "dog", "box": [0.8, 0.5, 1.0, 0.9]},
                     {"id": 3, "name": "bird", "box": [0.7, 0.2, 0.9, 0.3]}]},
    ],
}


def test_json_round_trip(tmp_path):
    vsl = VSL.from_dict(LAYOUT)
    assert vsl.to_dict() == LAYOUT
    vsl.save(tmp_path / "vsl.json")
    assert VSL.load(tmp_path / "vsl.json") == vsl
    assert json.loads((tmp_path / "vsl.json").read_text()) == LAYOUT
    assert vsl.object_ids() == [0, 3] and vsl.object_names() == {0: "dog", 3: "bird"}
    np.testing.assert_array_equal(vsl.times, [0.0, 1.0, 2.0])


def test_dataclasses_accept_lists():
    vsl = VSL("c", [LayoutFrame(0.5, "f", [LayoutObject(1, "cat", [0.1, 0.2, 0.3, 0.4])])])
    assert vsl.frames[0].objects[0].box == (0.1, 0.2, 0.3, 0.4)
    assert isinstance(vsl.frames, tuple) and isinstance(vsl.frames[0].objects, tuple)


def _broken(edit):
    data = copy.deepcopy(LAYOUT)
    edit(data)
    return data


BOX = r"frames\[0\]\.objects\[0\]\.box: "


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["frames"][0]["objects"][0].update(box=[0.0, 0.5, 1.2, 0.9]), BOX + r".*\[0, 1\]"),
    (lambda d: d["frames"][1]["objects"][0].update(box=[-0.1, 0.5, 0.2, 0.9]), r"frames\[1\].* \[0, 1\]"),
    (lambda d: d["frames"][0]["objects"][0].update(box=[0.3, 0.5, 0.3, 0.9]), r"x1 \(0\.3\) must be < x2"),
    (lambda d: d["frames"][0]["objects"][0].update(box=[0.4, 0.5, 0.3, 0.9]), r"x1 \(0\.4\) must be < x2"),
    (lambda d: d["frames"][0]["objects"][1].update(box=[0.8, 0.3, 0.9, 0.2]), r"\[1\]\.box: y1 \(0\.3\) must be < y2"),
    (lambda d: d["frames"][0]["objects"][0].update(box=[0.1, float("nan"), 0.2, 0.9]), r"\[0, 1\]"),
    (lambda d: d["frames"][0]["objects"][0].update(box=[0.1, 0.2, 0.9]), "four numbers"),
    (lambda d: d["frames"][0]["objects"][0].update(box=[0.1, "a", 0.2, 0.9]), "four numbers"),
    (lambda d: d["frames"][2]["objects"][1].update(id=0), r"frames\[2\]\.objects\[1\]\.id: duplicate id 0"),
    (lambda d: d["frames"][1].update(time=0.0), r"frames\[1\]\.time: times must increase"),
    (lambda d: d["frames"][2].update(time=0.5), r"frames\[2\]\.time: times must increase"),
    (lambda d: d["frames"][0].update(time=-1.0), r"frames\[0\]\.time: expected finite seconds >= 0"),
    (lambda d: d["frames"][0].pop("time"), r"frames\[0\]: missing key 'time'"),
    (lambda d: d["frames"][0]["objects"][0].pop("box"), r"objects\[0\]: missing key 'box'"),
    (lambda d: d["frames"][0]["objects"][0].update(id="0"), r"objects\[0\]\.id: expected an integer"),
    (lambda d: d["frames"][0]["objects"][0].update(id=True), r"objects\[0\]\.id: expected an integer"),
    (lambda d: d["frames"][0]["objects"][0].update(id=-2), r"objects\[0\]\.id: expected an integer >= 0"),
    (lambda d: d["frames"][0]["objects"][0].update(name=" "), r"objects\[0\]\.name: expected a non-empty"),
    (lambda d: d.update(frames=[]), "at least one keyframe"),
    (lambda d: d.update(frames={}), "frames: expected a list"),
    (lambda d: d.update(caption=3), "caption: expected a string"),
])
def test_validation_errors_name_the_location(edit, match):
    with pytest.raises(ValueError, match=match):
        VSL.from_dict(_broken(edit))


def test_bad_json_text():
    with pytest.raises(ValueError, match="does not parse"):
        VSL.from_json("{not json")
    with pytest.raises(ValueError, match="vsl: expected an object"):
        VSL.from_json("[1, 2]")


def test_interpolation_is_linear_between_keyframes_that_both_hold_the_object():
    vsl = VSL.from_dict(LAYOUT)
    dog_0, dog_1 = (np.array(LAYOUT["frames"][i]["objects"][0]["box"]) for i in (0, 1))
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        np.testing.assert_allclose(vsl.boxes_at([t])[0][0], (1 - t) * dog_0 + t * dog_1, atol=1e-12)


def test_interpolation_keeps_absent_objects_absent():
    vsl = VSL.from_dict(LAYOUT)
    bird_0, bird_2 = tuple(LAYOUT["frames"][0]["objects"][1]["box"]), tuple(LAYOUT["frames"][2]["objects"][1]["box"])
    boxes = vsl.boxes_at([0.0, 0.4, 0.5, 0.6, 1.0, 1.5, 1.6, 2.0])
    present = [3 in b for b in boxes]
    # the bird is absent in keyframe 1 (t = 1): present only nearer to keyframes 0 and 2 (ties go to the earlier)
    assert present == [True, True, True, False, False, False, True, True]
    assert boxes[1][3] == bird_0 and boxes[6][3] == bird_2  # held, not interpolated towards an absence


def test_interpolation_holds_the_ends_and_accepts_any_order():
    vsl = VSL.from_dict(LAYOUT)
    before, after, middle = vsl.boxes_at([-1.0, 5.0, 1.0])
    assert before == vsl.frames[0].boxes() and after == vsl.frames[2].boxes() and middle == vsl.frames[1].boxes()


def test_interpolate_to_new_frame_times():
    vsl = VSL.from_dict(LAYOUT)
    times = np.linspace(0.0, 2.0, 9)
    dense = vsl.interpolate(times)
    np.testing.assert_allclose(dense.times, times)
    expected = ["dog on the left"] * 3 + ["dog in the centre"] * 4 + ["dog on the right"] * 2
    assert [f.caption for f in dense.frames] == expected
    assert all(o.name == {0: "dog", 3: "bird"}[o.id] for f in dense.frames for o in f.objects)
    assert dense.interpolate(vsl.times) == VSL(vsl.caption, [
        LayoutFrame(f.time, f.caption, tuple(sorted(f.objects, key=lambda o: o.id))) for f in vsl.frames])
    with pytest.raises(ValueError, match="strictly increasing"):
        vsl.interpolate([0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        vsl.boxes_at([float("nan")])
