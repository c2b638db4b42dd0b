"""Value checks of the ops (they read tensor data): finite coordinates, rotation angles in the kernels' sin/cos
range, key lengths in range.

A direct op call runs them before its op (``check_values=True``): in eager mode here, with one read-back per call;
under ``torch.compile`` inside the op ``baton_fast::check_values``, whose outputs (copies of the checked coordinates
and key lengths) feed the op, so that the compiled graph keeps it.  Values fixed for a run are checked once with
:func:`check_coords` / :func:`check_key_lengths` (the model's ``prepare``, the diffusers rope modules); the calls
then pass ``check_values=False`` and read nothing back from the device.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .rope import RopeTable
from .validation import _check_coords, _check_tensor, _table_tensors

# Angles the kernels' sin/cos reduce exactly (kernels/rope_math.py: |phi| < 2**16 * pi/2).
MAX_ANGLE = 2 ** 16 * math.pi / 2


def _check_values(rotations, k_lens, n_k):
    """Value checks (they read tensor data, one transfer), before any launch.

    ``rotations``: ``{coords name: (coords, freqs, axes)}`` for every side that is rotated: coordinates
    must be finite and the angles ``|c[axis] * f|`` below :data:`MAX_ANGLE`.  Skipped while a CUDA graph
    is being captured: reading values synchronises, which capture forbids (the eager warm-up calls
    before the capture ran the checks on the same buffers)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return
    # every statistic is reduced on the device and read back in one transfer (one sync per call)
    names = [name for name, (c, _, _) in rotations.items() if c.numel()]
    stats = []
    for name in names:
        c, freqs, axes = rotations[name]
        stats += [torch.isfinite(c).all().double(), (c.abs().amax(dim=(0, 1))[axes.long()] * freqs).max().double()]
    if k_lens is not None and k_lens.numel():
        stats += [k_lens.min().double(), k_lens.max().double()]
    if not stats or stats[0].is_meta:  # meta tensors (shape-only runs: FLOP counts) hold no values
        return
    values = torch.stack(stats).tolist()
    for i, name in enumerate(names):
        finite, reach = values[2 * i], values[2 * i + 1]
        if not finite:
            raise ValueError(f"{name}: expected finite coordinates, found NaN or inf")
        if reach >= MAX_ANGLE:
            raise ValueError(f"{name}: rotation angles reach {reach:.4g} rad; the kernels' sin/cos are exact below "
                             f"{MAX_ANGLE:.4g} rad (2^16 pi/2): map the coordinates affinely (e.g. 2c/max - 1) "
                             f"or lower the table's frequencies")
    if len(values) > 2 * len(names):
        lo, hi = int(values[-2]), int(values[-1])
        if lo < 0 or hi > n_k:
            raise ValueError(f"k_lens: expected values in [0, {n_k}] (number of keys), got range [{lo}, {hi}]")


@torch.library.custom_op("baton_fast::check_values", mutates_args=())
def _check_values_op(coords: list[torch.Tensor], freqs: list[torch.Tensor], axes: list[torch.Tensor], names: str,
                     k_lens: Optional[torch.Tensor], n_k: int) -> list[torch.Tensor]:
    """:func:`_check_values` as an op, for ``torch.compile``: returns copies of ``coords`` (then of ``k_lens``),
    which the caller passes on to the checked op, so that the graph cannot drop the check."""
    _check_values(dict(zip(names.split(",") if names else [], zip(coords, freqs, axes))), k_lens, n_k)
    return [c.clone() for c in coords] + ([k_lens.clone()] if k_lens is not None else [])


@_check_values_op.register_fake
def _(coords, freqs, axes, names, k_lens, n_k):
    return [torch.empty_like(c) for c in coords] + ([torch.empty_like(k_lens)] if k_lens is not None else [])


def _values_checked(rotations: dict, k_lens, n_k):
    """Check the values of one call before its op; returns ``(coords by name, k_lens)`` to pass to the op (under
    torch.compile, the check op's copies; else the inputs themselves)."""
    coords = {name: side[0] for name, side in rotations.items()}
    if not torch.compiler.is_compiling():
        _check_values(rotations, k_lens, n_k)
        return coords, k_lens
    if not rotations and k_lens is None:
        return coords, k_lens
    sides = list(rotations.values())
    checked = _check_values_op([c for c, _, _ in sides], [f for _, f, _ in sides], [a for _, _, a in sides],
                               ",".join(rotations), k_lens, n_k)
    return dict(zip(rotations, checked)), (checked[-1] if k_lens is not None else None)


def check_coords(coords: torch.Tensor, table: RopeTable, name: str = "coords") -> torch.Tensor:
    """The value checks of a rotated side, once: ``coords`` float32 ``[B or 1, N, A]`` must be finite and their
    angles under ``table`` below :data:`MAX_ANGLE`.  Reads one value pair back from the device.  Run it where a
    run is prepared, then call the ops with ``check_values=False`` on these coordinates.  Returns the
    coordinates to use (under torch.compile a copy made by the check op, which keeps the check in the graph)."""
    _check_coords(name, coords, coords.shape[0], coords.shape[1], table)
    freqs, axes = _table_tensors("table", table, coords.device)
    checked, _ = _values_checked({name: (coords, freqs, axes)}, None, 0)
    return checked[name]


def check_key_lengths(k_lens: torch.Tensor, n_keys: int) -> None:
    """The value check of key lengths, once: integer ``[B]`` values in ``[0, n_keys]`` (one read-back)."""
    _check_tensor("k_lens", k_lens, 1, "[B]")
    if k_lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"k_lens: expected int32/int64 key lengths, got {k_lens.dtype}")
    _check_values({}, k_lens, n_keys)
