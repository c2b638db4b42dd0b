"""Per-latent-token group bitmasks from a VSL."""
import numpy as np
import pytest
import torch

from baton_fast import video_grid_coords
from baton_fast.spatial import VSL, vsl_group_masks

LAYOUT = VSL.from_dict({
    "caption": "a car crosses in front of a parked van; a bird appears at the end",
    "frames": [
        {"time": 0.0, "caption": "", "objects": [{"id": 4, "name": "car", "box": [0.0, 0.5, 0.4, 0.9]},
                                                 {"id": 9, "name": "van", "box": [0.3, 0.3, 0.7, 0.8]}]},
        {"time": 1.0, "caption": "", "objects": [{"id": 4, "name": "car", "box": [0.6, 0.5, 1.0, 0.9]},
                                                 {"id": 9, "name": "van", "box": [0.3, 0.3, 0.7, 0.8]},
                                                 {"id": 2, "name": "bird", "box": [0.8, 0.0, 1.0, 0.2]}]},
    ]})


def brute_force_masks(vsl, times, height, width):
    """Token by token, in video_grid_coords order, straight from the definition."""
    bit = {obj_id: 1 << (i + 1) for i, obj_id in enumerate(vsl.object_ids())}
    boxes = vsl.boxes_at(times)
    cells = {}
    for t, frame_boxes in enumerate(boxes):
        for obj_id, (x1, y1, x2, y2) in frame_boxes.items():
            covered = {(r, c) for r in range(height) for c in range(width)
                       if x1 <= (c + 0.5) / width < x2 and y1 <= (r + 0.5) / height < y2}
            # a box that covers no cell centre claims the cell under its own centre
            cells[t, obj_id] = covered or {(int((y1 + y2) / 2 * height), int((x1 + x2) / 2 * width))}
    out = []
    for t, row, col in video_grid_coords(len(times), height, width).long().tolist():
        mask = sum(bit[obj_id] for obj_id in boxes[t] if (row, col) in cells[t, obj_id])
        out.append(mask or 1)
    return torch.tensor(out, dtype=torch.int64)


@pytest.mark.parametrize("height, width", [(5, 7), (8, 8), (1, 3)])
def test_masks_match_the_definition(height, width):
    times = np.linspace(-0.2, 1.3, 7)
    masks = vsl_group_masks(LAYOUT, times, height, width)
    assert masks.dtype == torch.int64 and masks.shape == (7 * height * width,)
    torch.testing.assert_close(masks, brute_force_masks(LAYOUT, times, height, width), rtol=0, atol=0)


def test_bits_by_hand():
    # object order is by id: bird (2) -> bit 1, car (4) -> bit 2, van (9) -> bit 3
    masks = vsl_group_masks(LAYOUT, [0.0, 0.5, 1.0], 10, 10).reshape(3, 10, 10)
    car, van, bird, background = 1 << 2, 1 << 3, 1 << 1, 1
    first = masks[0]
    assert first[7, 1] == car and first[4, 5] == van and first[0, 0] == background
    assert first[6, 3] == car | van  # overlap: both bits, no background bit
    assert not (masks[:2] & bird).any()  # bird absent at t = 0 and at t = 0.5 (nearest keyframe: t = 0)
    assert masks[2, 0, 9] == bird
    # at t = 0.5 the car's box is halfway: [0.3, 0.5, 0.7, 0.9]
    middle = masks[1]
    assert middle[7, 2] == background and middle[7, 3] == car | van and middle[7, 7] == background
    assert ((masks & 1) != 0).eq(masks == 1).all()  # the background bit only where no object is


def test_tiny_box_claims_the_cell_under_its_centre():
    vsl = VSL.from_dict({"caption": "", "frames": [
        {"time": 0.0, "caption": "", "objects": [{"id": 0, "name": "fly", "box": [0.52, 0.26, 0.53, 0.27]}]}]})
    masks = vsl_group_masks(vsl, torch.tensor([0.0]), 4, 4).reshape(4, 4)
    expected = torch.ones(4, 4, dtype=torch.int64)
    expected[1, 2] = 2
    torch.testing.assert_close(masks, expected, rtol=0, atol=0)


def test_empty_layout_is_all_background():
    vsl = VSL.from_dict({"caption": "", "frames": [{"time": 0.0, "caption": "", "objects": []}]})
    assert (vsl_group_masks(vsl, [0.0, 1.0], 3, 2) == 1).all()


def test_argument_errors():
    with pytest.raises(ValueError, match="latent_height must be a positive integer"):
        vsl_group_masks(LAYOUT, [0.0], 0, 4)
    with pytest.raises(ValueError, match="latent_width must be a positive integer"):
        vsl_group_masks(LAYOUT, [0.0], 4, 2.5)
    with pytest.raises(ValueError, match="frame_times must be a non-empty"):
        vsl_group_masks(LAYOUT, [], 4, 4)
    with pytest.raises(TypeError, match="vsl must be a VSL"):
        vsl_group_masks({"caption": ""}, [0.0], 4, 4)
    crowded = VSL.from_dict({"caption": "", "frames": [{"time": 0.0, "caption": "", "objects": [
        {"id": i, "name": "ant", "box": [0.0, 0.0, 1.0, 1.0]} for i in range(63)]}]})
    with pytest.raises(ValueError, match="63 objects; int64 group masks hold at most 62"):
        vsl_group_masks(crowded, [0.0], 2, 2)
