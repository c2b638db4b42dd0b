"""VSL -> per-latent-token group bitmasks for layout attention (MIGC-style, SpA2V stage 2).

Token ``(f, r, c)`` of a ``frames x latent_height x latent_width`` latent (row-major, the order of
:func:`baton_fast.video_grid_coords`) covers the cell whose centre is ``((c + 0.5) / W, (r + 0.5) / H)``
in normalised frame coordinates. Its mask has bit ``i + 1`` set when object ``i`` of the layout (the
``i``-th of ``vsl.object_ids()``, ascending) is present at ``frame_times[f]`` and its interpolated box
(:meth:`VSL.boxes_at`) contains the cell centre (``x1 <= x < x2``, ``y1 <= y < y2``); a box that contains
no cell centre still claims the cell under its own centre, so a present object never vanishes at a coarse
grid. Bit 0 (background) is set where no object is. A query may attend to a key when their masks share
a bit.
"""
from __future__ import annotations

import numpy as np
import torch

from .vsl import VSL

MAX_OBJECTS = 62  # bits 1..62 of an int64; bit 63 is the sign bit


def vsl_group_masks(vsl: VSL, frame_times, latent_height: int, latent_width: int) -> torch.Tensor:
    """Group bitmasks of every latent token: int64 ``[frames * latent_height * latent_width]``.

    ``frame_times``: seconds of each latent frame, ``[frames]`` (sequence, numpy array or tensor).
    """
    if not isinstance(vsl, VSL):
        raise TypeError(f"vsl must be a VSL, got {type(vsl).__name__}")
    for name, size in (("latent_height", latent_height), ("latent_width", latent_width)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    if isinstance(frame_times, torch.Tensor):
        frame_times = frame_times.detach().cpu().double().numpy()
    times = np.asarray(frame_times, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"frame_times must be a non-empty 1-D sequence of seconds, got shape {times.shape}")
    object_ids = vsl.object_ids()
    if len(object_ids) > MAX_OBJECTS:
        raise ValueError(f"vsl has {len(object_ids)} objects; int64 group masks hold at most {MAX_OBJECTS}")
    bit_of = {obj_id: np.int64(1) << np.int64(i + 1) for i, obj_id in enumerate(object_ids)}
    rows = (np.arange(latent_height) + 0.5) / latent_height  # cell centres, [H]
    cols = (np.arange(latent_width) + 0.5) / latent_width    # [W]
    masks = np.zeros((len(times), latent_height, latent_width), dtype=np.int64)
    for frame, boxes in enumerate(vsl.boxes_at(times)):
        for obj_id, (x1, y1, x2, y2) in boxes.items():
            inside = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
            if not inside.any():
                centre_row = min(int((y1 + y2) / 2 * latent_height), latent_height - 1)
                centre_col = min(int((x1 + x2) / 2 * latent_width), latent_width - 1)
                inside[centre_row, centre_col] = True
            masks[frame][inside] |= bit_of[obj_id]
    masks[masks == 0] = 1
    return torch.from_numpy(masks.reshape(-1))
