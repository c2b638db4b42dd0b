"""Argument checks shared by the ops: host metadata only (types, ranks, shapes, dtypes, devices, scalars).

They read no tensor value (traceable by ``torch.compile``, no device sync); every error names the argument and
what was expected.  The checks that read values are :mod:`baton_fast.value_checks`.  Also here: the backend
rule (:func:`backend_for`) that every op dispatches on.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Optional

import torch

from .rope import RopeTable

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def backend_for(device: torch.device) -> str:
    """``"triton"`` or ``"reference"`` for tensors on ``device`` (see module docstring)."""
    choice = os.environ.get("BATON_FAST_BACKEND", "auto")
    if choice not in ("auto", "triton", "reference"):
        raise ValueError(f"BATON_FAST_BACKEND: expected 'auto', 'triton' or 'reference', got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "reference"
    return choice


def runs_directly(*tensors) -> bool:
    """Whether an op call may run the op's implementation as a plain function, skipping the dispatcher (its
    ``torch.library`` layers cost 30-60 us per call, a visible share of a small CPU layer): an eager call (not
    traced by ``torch.compile``, no dispatch or function mode, no functorch transform) on plain CPU tensors, none of
    which needs a gradient (the backward is registered on the op).  The result is the one the op returns.
    ``tensors``: the call's tensor arguments (None entries are skipped)."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:  # a loop: this runs on every call
        if t is not None and (type(t) not in _PLAIN_TENSORS or not t.is_cpu or (grad and t.requires_grad)):
            return False
    return True


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


# --------------------------------------------------------------------------- checks
def _check_tensor(name, x, rank, shape_doc):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {shape_doc}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name}: expected {shape_doc} ({rank} dims), got shape {tuple(x.shape)}")


def _check_float(name, x):
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected float16, bfloat16 or float32, got {x.dtype}")


def _check_head_dim(name, d):
    if d % 2 or d < 2 or d > MAX_HEAD_DIM:
        raise ValueError(f"{name}: expected an even head dim between 2 and {MAX_HEAD_DIM}, got {d}")


def _check_coords(name, coords, batch, tokens, table: Optional[RopeTable]):
    _check_tensor(name, coords, 3, "[B or 1, N, A]")
    if coords.dtype != torch.float32:
        raise TypeError(f"{name}: expected float32 coordinates, got {coords.dtype}")
    if coords.shape[0] not in (1, batch) or coords.shape[1] != tokens:
        raise ValueError(f"{name}: expected shape [1 or {batch}, {tokens}, A], got {tuple(coords.shape)}")
    if table is not None and coords.shape[2] < table.num_axes:
        raise ValueError(f"{name}: the table reads axis {table.num_axes - 1}, but coordinates have "
                         f"{coords.shape[2]} axes")


def _check_table(name, table, heads, head_dim, coords):
    if not isinstance(table, RopeTable):
        raise TypeError(f"{name}: expected a RopeTable, got {type(table).__name__}")
    table.check(name, heads, head_dim, coords.shape[2])


def _check_number(name, value, doc):
    """Raise TypeError unless ``value`` is a real number (bool and tensors refused: their conversion would read
    a device value or hide a mistake), ValueError unless it is finite.  Returns it as a float.  Under
    torch.compile the number may be symbolic: its type is checked, its value in eager runs."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (pass float(x) for a one-element tensor)" if isinstance(value, torch.Tensor) else ""
        raise TypeError(f"{name}: expected a number ({doc}), got {type(value).__name__}{hint}")
    if torch.compiler.is_compiling():
        return value
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number ({doc}), got {value}")
    return value


def _check_scale(scale, head_dim):
    """The softmax scale to use: ``1/sqrt(D)`` for None, else a checked number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)  # a SymFloat under torch.compile(dynamic=True)
    return _check_number("scale", scale, "the softmax scale")


def _check_eps(eps):
    eps = _check_number("eps", eps, "the RMSNorm epsilon, >= 0")
    if not torch.compiler.is_compiling() and eps < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    return eps


def _check_devices(**tensors):
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"expected all tensors on one device, got {listing}")


def _check_groups(name, groups, batch, tokens):
    _check_tensor(name, groups, 2, f"[1 or {batch}, {tokens}]")
    if groups.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: expected int32 or int64 bitmasks, got {groups.dtype}")
    if groups.shape[0] not in (1, batch) or groups.shape[1] != tokens:
        raise ValueError(f"{name}: expected shape [1 or {batch}, {tokens}], got {tuple(groups.shape)}")


def _table_tensors(name, table: RopeTable, device):
    """``(freqs, axes)`` of a checked table on ``device`` (no copy when it is there already: move tables once)."""
    if table.freqs.device.type == "meta" and device.type != "meta":
        raise ValueError(f"{name}: the RopeTable is on the meta device (shapes only, no values); build it on "
                         f"{device} or move it there with .to(device)")
    freqs, axes = table.freqs, table.axes
    if freqs.device != device or axes.device != device:
        freqs, axes = freqs.to(device), axes.to(device)
    return freqs.contiguous(), axes.contiguous()
