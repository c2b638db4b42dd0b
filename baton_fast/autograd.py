"""Backward formulas of the public ops, registered with ``torch.library.register_autograd``.

A backward runs the Triton kernels (``kernels/rope_attention_bwd.py``, ``kernels/rope_norm_bwd.py``)
exactly when the forward ran them, through the custom ops ``baton_fast::rope_attention_backward`` and
``baton_fast::rmsnorm_rope_backward`` (fake implementations included, so ``torch.compile`` traces forward
and backward without graph breaks and ``torch.library.opcheck`` checks them).  Otherwise (the reference
backend: CPU tensors by default) it differentiates the reference math (:mod:`baton_fast.reference`) in
the inputs' dtype with ``torch.func.vjp``, which AOT autograd traces like any PyTorch code.

Differentiable: q, k, v of ``rope_attention`` (and its returned LSE), x / q / k and the RMSNorm weights
of ``apply_rope``, ``rmsnorm_rope`` and ``qk_rmsnorm_rope``.  Coordinates, RoPE tables, key lengths and
layout bitmasks are not: asking for their gradient raises a ``ValueError`` when the op is called.

Deterministic mode: with grouped-query heads the fast dK/dV kernel adds each query head's share with
atomics (the order, hence the fp32 rounding, varies between runs).  Inside ``with deterministic():`` (or
with ``torch.use_deterministic_algorithms(True)``) backward passes launch the dK/dV kernel once per query
head of the group, in order, one program per key head: each gradient element gets its group's shares in a
fixed order, and two runs give bit-identical gradients.  The mode is read when the backward
runs (under ``torch.compile``: when the backward graph is traced).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from . import ops, reference
from .rope import RopeTable

__all__ = ["deterministic", "deterministic_enabled", "triton_backward"]

_DETERMINISTIC = [False]


@contextlib.contextmanager
def deterministic(enabled: bool = True):
    """Context manager: backward passes inside it accumulate dK/dV without atomics (bit-identical runs)."""
    previous = _DETERMINISTIC[0]
    _DETERMINISTIC[0] = bool(enabled)
    try:
        yield
    finally:
        _DETERMINISTIC[0] = previous


def deterministic_enabled() -> bool:
    """Whether backward passes now run deterministically (:func:`deterministic` or PyTorch's own switch)."""
    return _DETERMINISTIC[0] or torch.are_deterministic_algorithms_enabled()


def _refuse_gradients(**tensors):
    """Raise a clear error when a non-differentiable input (coordinates, tables, ...) requires grad."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise ValueError(f"{name}: not differentiable (coordinates, RoPE tables, key lengths and layout "
                             f"masks carry no gradient); pass it detached (.detach()) or with requires_grad=False")


def _zeros_like_each(*tensors):
    return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in tensors)


# --------------------------------------------------------------------------- rope_attention
def _attention_on_triton(q, k) -> bool:
    """Whether ``baton_fast::rope_attention`` ran the Triton kernel for these inputs (its own dispatch rule)."""
    return bool(ops._attention_on_triton(q) and q.numel() and k.shape[1])


@torch.library.custom_op("baton_fast::rope_attention_backward", mutates_args=())
def _rope_attention_backward_op(
        dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        out: torch.Tensor, lse: torch.Tensor, q_coords: torch.Tensor, k_coords: torch.Tensor, q_freqs: torch.Tensor,
        q_axes: torch.Tensor, k_freqs: torch.Tensor, k_axes: torch.Tensor, interleaved: bool, rotate_q: bool,
        rotate_k: bool, k_lens: Optional[torch.Tensor], scale: float, q_groups: Optional[torch.Tensor],
        k_groups: Optional[torch.Tensor], deterministic: bool, mask: list[torch.Tensor], block_q: int,
        block_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of ``baton_fast::rope_attention`` (or, with ``mask``, of
    ``baton_fast::block_sparse_rope_attention``: a BlockMask's six tensors and block sizes; ``[]``, 0, 0 without) by the Triton backward
    kernels (CUDA, or the interpreter): the forward's arguments, its outputs ``out, lse`` (an empty ``lse`` is
    recomputed) and their gradients ``dout``, ``dlse`` (None when the LSE was not returned).  Contiguous, in q's
    dtype."""
    from .block_mask import BlockMask
    from .kernels.rope_attention import rope_attention_fwd
    from .kernels.rope_attention_bwd import rope_attention_bwd
    block_mask = None if not mask else BlockMask(*mask, q_len=q.shape[1], k_len=k.shape[1], block_q=block_q,
                                                     block_k=block_k)
    rope = dict(rotate_q=rotate_q, rotate_k=rotate_k, k_lens=k_lens, scale=scale, q_groups=q_groups,
                k_groups=k_groups, block_mask=block_mask)
    if lse.numel() == 0:  # forward called without its LSE
        out, lse = rope_attention_fwd(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved,
                                      return_lse=True, **rope)
    return rope_attention_bwd(dout, q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes,
                              interleaved, dlse=dlse, deterministic=deterministic, **rope)


@_rope_attention_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q,
      rotate_k, k_lens, scale, q_groups, k_groups, deterministic, mask, block_q, block_k):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def triton_backward(dout, dlse, q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved,
                    rotate_q, rotate_k, k_lens, scale, *, q_groups=None, k_groups=None, mask=(), block_q=0,
                    block_k=0):
    """``(dq, dk, dv)`` by the Triton backward kernels in the current :func:`deterministic` mode, for a forward that
    ran them: arguments as ``baton_fast::rope_attention_backward``'s (``mask``: a BlockMask's six tensors)."""
    return _rope_attention_backward_op(dout, dlse, q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs,
                                       k_axes, interleaved, rotate_q, rotate_k, k_lens, scale, q_groups, k_groups,
                                       deterministic_enabled(), list(mask), block_q, block_k)


def _attention_reference_backward(dout, dlse, q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes,
                                  interleaved, rotate_q, rotate_k, k_lens, scale, q_groups, k_groups):
    """``(dq, dk, dv)`` by ``torch.func.vjp`` of :func:`baton_fast.reference.rope_attention` in q's dtype."""
    if k.shape[1] == 0:  # no key: the output (zeros) depends on nothing
        return _zeros_like_each(q, k, v)
    qt = RopeTable.trusted(q_freqs, q_axes, interleaved, q_coords.shape[2])
    kt = RopeTable.trusted(k_freqs, k_axes, interleaved, k_coords.shape[2])

    def forward(q, k, v):
        out, lse = reference.rope_attention(q, k, v, q_coords, k_coords, qt, k_table=kt, rotate_q=rotate_q,
                                            rotate_k=rotate_k, k_lens=k_lens, scale=scale, return_lse=True,
                                            q_groups=q_groups, k_groups=k_groups)
        if dlse is None:
            return out.to(q.dtype)
        # a row with no key has lse = log(0) = -inf and no gradient: keep 0 * inf out of it
        return out.to(q.dtype), torch.where(torch.isfinite(lse), lse, 0.0)

    _, vjp = torch.func.vjp(forward, q, k, v)
    return vjp(dout.to(q.dtype) if dlse is None else (dout.to(q.dtype), dlse))


def _attention_setup_context(ctx, inputs, output):
    (q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q, rotate_k, k_lens, scale,
     return_lse, q_groups, k_groups) = inputs
    _refuse_gradients(q_coords=q_coords, k_coords=k_coords, table=q_freqs, k_table=k_freqs)
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, k_lens, q_groups,
                          k_groups)
    ctx.flags = (interleaved, rotate_q, rotate_k, scale, return_lse, _attention_on_triton(q, k))


def _attention_backward(ctx, dout, dlse):
    q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, k_lens, q_groups, k_groups = \
        ctx.saved_tensors
    interleaved, rotate_q, rotate_k, scale, return_lse, on_triton = ctx.flags
    dlse = dlse if return_lse else None
    rope = (q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q, rotate_k, k_lens, scale,
            q_groups, k_groups)
    if on_triton:
        grads = triton_backward(dout, dlse, q, k, v, out, lse, *rope[:-2], q_groups=q_groups, k_groups=k_groups)
    else:
        grads = _attention_reference_backward(dout, dlse, q, k, v, *rope)
    return tuple(grads) + (None,) * 14


torch.library.register_autograd("baton_fast::rope_attention", _attention_backward,
                                setup_context=_attention_setup_context)


# --------------------------------------------------------------------------- rmsnorm + rope
def _norm_on_triton(x) -> bool:
    """Whether ``baton_fast::rmsnorm_rope`` ran the Triton kernel on ``x`` (its own dispatch rule)."""
    return bool(ops.backend_for(x.device) == "triton" and x.numel())


@torch.library.custom_op("baton_fast::rmsnorm_rope_backward", mutates_args=())
def _rmsnorm_rope_backward_op(dout: torch.Tensor, x: torch.Tensor, coords: torch.Tensor, freqs: torch.Tensor,
                              axes: torch.Tensor, interleaved: bool, weight: Optional[torch.Tensor], norm: int,
                              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dweight)`` of ``baton_fast::rmsnorm_rope`` by the Triton backward kernel: dx contiguous in x's
    dtype; dweight in weight's dtype (empty ``[0]`` when there is no weight or no norm)."""
    from .kernels.rope_norm_bwd import rmsnorm_rope_bwd
    dx, dweight = rmsnorm_rope_bwd(dout, x, coords, freqs, axes, interleaved, norm=norm, weight=weight, eps=eps)
    return dx, (dweight if dweight is not None else x.new_empty((0,)))


@_rmsnorm_rope_backward_op.register_fake
def _(dout, x, coords, freqs, axes, interleaved, weight, norm, eps):
    has_weight = weight is not None and norm != 0
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(weight) if has_weight else x.new_empty((0,)))


def _side_backward(dout, x, coords, freqs, axes, interleaved, weight, norm, eps):
    """``(dx, dweight or None)`` of one side of a norm/rope op, on the backend its forward ran on."""
    has_weight = weight is not None and norm != 0
    if _norm_on_triton(x):
        dx, dweight = _rmsnorm_rope_backward_op(dout, x, coords, freqs, axes, interleaved, weight, norm, eps)
        return dx, (dweight if has_weight else None)
    table = RopeTable.trusted(freqs, axes, interleaved, coords.shape[2])

    def forward(x, *weight):
        y = reference.rms_norm(x, weight[0] if weight else None, eps, norm == 2) if norm else x
        return reference.apply_rope(y, coords, table)

    _, vjp = torch.func.vjp(forward, x, *([weight] if has_weight else []))
    dx, *dweight = vjp(dout.to(x.dtype))
    return dx, (dweight[0] if has_weight else None)


def _rmsnorm_setup_context(ctx, inputs, output):
    x, coords, freqs, axes, interleaved, weight, norm, eps = inputs
    _refuse_gradients(coords=coords, table=freqs)
    ctx.save_for_backward(x, coords, freqs, axes, weight)
    ctx.flags = (interleaved, norm, eps)


def _rmsnorm_backward(ctx, dout):
    x, coords, freqs, axes, weight = ctx.saved_tensors
    interleaved, norm, eps = ctx.flags
    dx, dweight = _side_backward(dout, x, coords, freqs, axes, interleaved, weight, norm, eps)
    return dx, None, None, None, None, dweight, None, None


torch.library.register_autograd("baton_fast::rmsnorm_rope", _rmsnorm_backward, setup_context=_rmsnorm_setup_context)


def _qk_setup_context(ctx, inputs, output):
    (q, q_coords, q_freqs, q_axes, q_interleaved, q_weight, k, k_coords, k_freqs, k_axes, k_interleaved, k_weight,
     norm, eps) = inputs
    _refuse_gradients(q_coords=q_coords, k_coords=k_coords, table=q_freqs, k_table=k_freqs)
    ctx.save_for_backward(q, q_coords, q_freqs, q_axes, q_weight, k, k_coords, k_freqs, k_axes, k_weight)
    ctx.flags = (q_interleaved, k_interleaved, norm, eps)


def _qk_backward(ctx, dq_out, dk_out):
    q, q_coords, q_freqs, q_axes, q_weight, k, k_coords, k_freqs, k_axes, k_weight = ctx.saved_tensors
    q_interleaved, k_interleaved, norm, eps = ctx.flags
    dq, dq_weight = _side_backward(dq_out, q, q_coords, q_freqs, q_axes, q_interleaved, q_weight, norm, eps)
    dk, dk_weight = _side_backward(dk_out, k, k_coords, k_freqs, k_axes, k_interleaved, k_weight, norm, eps)
    return dq, None, None, None, None, dq_weight, dk, None, None, None, None, dk_weight, None, None


torch.library.register_autograd("baton_fast::qk_rmsnorm_rope", _qk_backward, setup_context=_qk_setup_context)
