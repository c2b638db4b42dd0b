"""The RMSNorm + RoPE op family: ``apply_rope``, ``rmsnorm_rope`` and ``qk_rmsnorm_rope`` (argument checks, the
``baton_fast::rmsnorm_rope`` / ``baton_fast::qk_rmsnorm_rope`` custom ops with the Triton kernel or the reference
path beside it, and their fake implementations).  The backward is registered on the ops by
:mod:`baton_fast.autograd`; ``rmsnorm_rope(..., quant=...)`` and ``qk_rmsnorm_rope(..., quant=...)`` hand over to
:mod:`baton_fast.quant`."""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .op_cache import _ROTATIONS, _identity_table, _is_identity, _zero_coords
from .rope import RopeTable
from .validation import (_check_coords, _check_devices, _check_eps, _check_float, _check_head_dim, _check_table,
                         _check_tensor, _table_tensors, backend_for, runs_directly)
from .value_checks import _values_checked

__all__ = ["apply_rope", "rmsnorm_rope", "qk_rmsnorm_rope"]

NORM_MODES = {"none": 0, "head": 1, "across_heads": 2}


def _rmsnorm_rope_run(sides, norm, eps):
    """RMSNorm (mode ``norm``) then RoPE of each checked side ``(x, coords, freqs, axes, interleaved, weight)``, on
    the selected backend.  The PyTorch path (torch's fused RMSNorm, then the reference rotation) takes the rotation
    factors from :data:`_ROTATIONS` and skips the rotation by the cached identity table (RMSNorm alone)."""
    outs = []
    for x, coords, freqs, axes, interleaved, weight in sides:
        if backend_for(x.device) == "triton" and x.numel():
            from .kernels.rope_norm import rmsnorm_rope_fwd
            outs.append(rmsnorm_rope_fwd(x, coords, freqs, axes, interleaved, norm=norm, weight=weight, eps=eps))
            continue
        if norm:
            x = reference.fused_rms_norm(x, weight, eps, across_heads=norm == 2)
        if not _is_identity(freqs):
            x = reference.rotate(x, _ROTATIONS.get(coords, freqs, axes, interleaved, x.dtype), interleaved)
        outs.append(x.contiguous())
    return outs


@torch.library.custom_op("baton_fast::rmsnorm_rope", mutates_args=())
def _rmsnorm_rope_op(x: torch.Tensor, coords: torch.Tensor, freqs: torch.Tensor, axes: torch.Tensor,
                     interleaved: bool, weight: Optional[torch.Tensor], norm: int, eps: float) -> torch.Tensor:
    return _rmsnorm_rope_run([(x, coords, freqs, axes, interleaved, weight)], norm, eps)[0]


@_rmsnorm_rope_op.register_fake
def _(x, coords, freqs, axes, interleaved, weight, norm, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# q and k in one op: one dispatch, and the reference path shares the rotation factors between them
@torch.library.custom_op("baton_fast::qk_rmsnorm_rope", mutates_args=())
def _qk_rmsnorm_rope_op(q: torch.Tensor, q_coords: torch.Tensor, q_freqs: torch.Tensor, q_axes: torch.Tensor,
                        q_interleaved: bool, q_weight: Optional[torch.Tensor], k: torch.Tensor, k_coords: torch.Tensor,
                        k_freqs: torch.Tensor, k_axes: torch.Tensor, k_interleaved: bool,
                        k_weight: Optional[torch.Tensor], norm: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = _rmsnorm_rope_run([(q, q_coords, q_freqs, q_axes, q_interleaved, q_weight),
                              (k, k_coords, k_freqs, k_axes, k_interleaved, k_weight)], norm, eps)
    return q, k


@_qk_rmsnorm_rope_op.register_fake
def _(q, q_coords, q_freqs, q_axes, q_interleaved, q_weight, k, k_coords, k_freqs, k_axes, k_interleaved, k_weight,
      norm, eps):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _run(sides: list, norm: int, eps: float) -> tuple:
    """The checked sides through ``baton_fast::rmsnorm_rope`` (one side) or ``baton_fast::qk_rmsnorm_rope`` (q and
    k), or through their implementation called directly (:func:`runs_directly`); returns one output per side."""
    if runs_directly(*(t for side in sides for t in side if isinstance(t, torch.Tensor))):
        return tuple(_rmsnorm_rope_run(sides, norm, eps))
    if len(sides) == 1:
        return (_rmsnorm_rope_op(*sides[0], norm, eps),)
    return _qk_rmsnorm_rope_op(*sides[0], *sides[1], norm, eps)


def _rmsnorm_rope_args(name, x, coords, table, norm, weight, coords_name, weight_name, table_name):
    """Check one side's arguments; return ``(x, coords, freqs, axes, interleaved, weight)`` for the ops."""
    _check_tensor(name, x, 4, "[B, N, H, D]")
    _check_float(name, x)
    B, N, H, D = x.shape
    _check_head_dim(name, D)
    _check_coords(coords_name, coords, B, N, table if isinstance(table, RopeTable) else None)
    _check_table(table_name, table, H, D, coords)
    if weight is not None:
        _check_tensor(weight_name, weight, 1, "[D] or [H*D]")
        expected = H * D if norm == 2 else D
        if weight.shape[0] != expected:
            raise ValueError(f"{weight_name}: expected shape [{expected}], got {tuple(weight.shape)}")
        _check_float(weight_name, weight)
        weight = weight.contiguous()  # the kernel indexes the weight at unit stride
    _check_devices(**{name: x, coords_name: coords, weight_name: weight})
    freqs, axes = _table_tensors(table_name, table, x.device)
    return x, coords, freqs, axes, table.interleaved, weight


def _norm_only_placeholders(name, x, coords, table):
    """``(coords, table)`` of a side: the given ones, or, when neither is given (RMSNorm alone), a zero coordinate
    and the identity table; the third value says whether the side is rotated."""
    if coords is not None or table is not None:
        return coords, table, True
    _check_tensor(name, x, 4, "[B, N, H, D]")
    _check_head_dim(name, x.shape[3])
    return _zero_coords(x.shape[1], x.device), _identity_table(x.shape[3], x.device), False


def _prepass_scheme(quant, sides):
    """None without ``quant``, else its scheme for the checked ``sides`` (:func:`baton_fast.quant.prepass_scheme`:
    a bad scheme or a gradient refused before the value checks and any launch)."""
    if quant is None:
        return None
    from . import quant as _quant
    return _quant.prepass_scheme(quant, sides)


def _sides_values_checked(named_sides, check_values):
    """The value checks of the rotated sides of a norm/rope call; returns the sides with their checked coords.
    ``named_sides``: ``(coords name, side args, rotated)`` per side."""
    if not check_values:
        return [side for _, side, _ in named_sides]
    rotations = {name: (side[1], side[2], side[3]) for name, side, rotated in named_sides if rotated}
    coords, _ = _values_checked(rotations, None, 0)
    return [side[:1] + (coords.get(name, side[1]),) + side[2:] for name, side, _ in named_sides]


def apply_rope(x: torch.Tensor, coords: torch.Tensor, table: RopeTable, *, check_values: bool = True
               ) -> torch.Tensor:
    """Rotate ``x [B, N, H, D]`` (fp16/bf16/fp32) by float32 coordinates ``[B or 1, N, A]``.

    Returns a contiguous tensor of x's shape and dtype.  ``check_values`` as in :func:`rope_attention`."""
    args = _rmsnorm_rope_args("x", x, coords, table, 0, None, "coords", "weight", "table")
    (args,) = _sides_values_checked([("coords", args, True)], check_values)
    return _run([args], NORM_MODES["none"], 0.0)[0]


def rmsnorm_rope(x: torch.Tensor, coords: Optional[torch.Tensor] = None, table: Optional[RopeTable] = None, *,
                 weight: Optional[torch.Tensor] = None, eps: float = 1e-6, across_heads: bool = True,
                 check_values: bool = True, quant: Optional[str] = None, smooth: bool = False):
    """RMSNorm then RoPE of one tensor ``x [B, N, H, D]`` (fp16/bf16/fp32) in one pass (a query whose keys were
    rotated once and cached, e.g. the plan cross-attention).  ``weight``: ``[H*D]`` (``across_heads``) or ``[D]``;
    coordinates and table as :func:`apply_rope`, or neither (RMSNorm alone).  Returns a contiguous tensor of x's
    shape and dtype.

    ``quant="fp8"`` / ``"int8"`` / ``"int8+fp8"``: the same pass also quantises, as the query side of
    :func:`qk_rmsnorm_rope` does, and returns a :class:`~baton_fast.quant.QuantizedTensor` (int8 / fp8 e4m3 data
    ``[B, N, H, D]``, float32 scales ``[B, H, N]``) for ``rope_attention(..., rotate_q=False, rotate_k=False)``;
    ``smooth=True`` quantises it as a key side instead (minus its per-head token mean, float32 ``[B, H, D]``, kept
    as the tensor's ``mean``; one more read of x).  Inference only: a gradient through x or the weight is refused,
    naming ``quant``."""
    norm = NORM_MODES["across_heads" if across_heads else "head"]
    eps = _check_eps(eps)
    if smooth and quant is None:
        raise ValueError("smooth: only with quant= (the smoothing mean is part of the quantised key side)")
    coords, table, rotated = _norm_only_placeholders("x", x, coords, table)
    args = _rmsnorm_rope_args("x", x, coords, table, norm, weight, "coords", "weight", "table")
    scheme = _prepass_scheme(quant, [args])
    (args,) = _sides_values_checked([("coords", args, rotated)], check_values)
    if scheme is not None:
        from . import quant as _quant
        return _quant.quantize_prepass([(args, smooth)], norm, eps, scheme, rotate=rotated)[0]
    return _run([args], norm, eps)[0]


def qk_rmsnorm_rope(q, k, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *, q_weight=None,
                    k_weight=None, k_table: Optional[RopeTable] = None, eps: float = 1e-6, across_heads: bool = True,
                    check_values: bool = True, quant: Optional[str] = None):
    """RMSNorm then RoPE for q ``[B, N, H, D]`` and k ``[B, Nk, Hk, D]``, one pass each.

    ``across_heads=True`` normalises over the whole inner dim ``H*D`` (Wan, LTX-2; weights ``[H*D]``),
    ``False`` per head (weights ``[D]``).  Returns ``(q_rot, k_rot)``, contiguous, in the inputs' dtypes;
    pass ``k_rot`` to :func:`rope_attention` with ``rotate_k=False``.  With no table (and no coordinates)
    it is the RMSNorm alone (text cross-attention).  ``check_values`` as in :func:`rope_attention`.
    ``quant="fp8"`` / ``"int8"`` / ``"int8+fp8"``: the same pass also quantises (K smoothed by its token mean first)
    and returns two :class:`~baton_fast.quant.QuantizedTensor` for ``rope_attention`` (:mod:`baton_fast.quant`;
    inference only: a gradient through the inputs or weights is refused, naming ``quant``).
    """
    norm = NORM_MODES["across_heads" if across_heads else "head"]
    eps = _check_eps(eps)
    rotated = True
    if table is None and k_table is None and q_coords is None and k_coords is None:
        q_coords, table, rotated = _norm_only_placeholders("q", q, None, None)
        _check_tensor("k", k, 4, "[B, Nk, Hk, D]")
        if k.shape[3] != q.shape[3]:
            raise ValueError(f"k: expected head dim {q.shape[3]} (q's), got {k.shape[3]}")
        k_coords = _zero_coords(k.shape[1], k.device)
    k_table_name = "k_table" if k_table is not None else "table (used as k_table)"
    k_table = table if k_table is None else k_table
    q_args = _rmsnorm_rope_args("q", q, q_coords, table, norm, q_weight, "q_coords", "q_weight", "table")
    k_args = _rmsnorm_rope_args("k", k, k_coords, k_table, norm, k_weight, "k_coords", "k_weight", k_table_name)
    _check_devices(q=q, k=k)
    scheme = _prepass_scheme(quant, [q_args, k_args])
    q_args, k_args = _sides_values_checked([("q_coords", q_args, rotated), ("k_coords", k_args, rotated)],
                                           check_values)
    if scheme is not None:
        from . import quant as _quant
        return _quant.quantize_qk(q_args, k_args, norm, eps, scheme, rotate=rotated)
    return _run([q_args, k_args], norm, eps)
