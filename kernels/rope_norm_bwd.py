"""Backward of RoPE from coordinates, optionally fused with RMSNorm (``kernels/rope_norm.py``).

Forward, per token: ``n = x * inv`` with ``inv = 1/sqrt(mean(x^2) + eps)`` over one head (``NORM`` 1) or
the whole inner dim (``NORM`` 2), ``y = n * w`` (optional weight), ``out = R(phi) y``.  Backward:
``dy = R(-phi) dout`` (the transpose rotation: :func:`rotate_pairs` with negated frequencies),
``dn = dy * w``, ``dx = inv * (dn - n * mean(dn * n))`` over the same group, and
``dw = sum over tokens of dy * n``.

Each program handles ``TOKENS_PER_PROGRAM`` consecutive tokens and writes its partial ``dw`` to its own
row of an fp32 buffer; the host sums the rows (a fixed-order reduction, so ``dw`` is bit-identical from
run to run: no atomics).  Under the interpreter, bf16 gradients are written to fp32 buffers and rounded
by PyTorch (the interpreter truncates fp32 -> bf16 conversions; see ``kernels/rope_attention_bwd.py``).
"""
import torch
import triton
import triton.language as tl

from .rope_attention import _interpreting
from .rope_math import pair_offsets, rotate_pairs
from .rope_norm import heads_pad, num_warps_for, pairs_pad

TOKENS_PER_PROGRAM = 16


@triton.jit
def _rmsnorm_rope_bwd(
    X, dOut, dX, W, dWPartial, C, F, Ax,
    stride_xb, stride_xn, stride_xh, stride_xd,
    stride_gb, stride_gn, stride_gh, stride_gd,
    stride_dxb, stride_dxn, stride_dxh, stride_dxd,
    stride_cb, stride_cn, stride_ca, stride_fh, stride_dw_p,
    n_tokens, total_tokens, num_heads, eps,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, TOKENS_PER_PROGRAM: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, HEADS_PAD)
    offs_j = tl.arange(0, HALF_PAD)
    mask_hj = (offs_h[:, None] < num_heads) & (offs_j[None, :] < HALF)
    j1, j2 = pair_offsets(offs_j, HALF, INTERLEAVED)
    freq = tl.load(F + offs_h[:, None] * stride_fh + offs_j[None, :], mask=mask_hj, other=0.0)
    axis = tl.load(Ax + offs_h[:, None] * stride_fh + offs_j[None, :], mask=mask_hj, other=0)
    if HAS_WEIGHT:
        # per-head weight [D] is broadcast over heads; inner-dim weight [H*D] is indexed per head
        w_row = W + (offs_h[:, None] * (2 * HALF) if NORM == 2 else 0 * offs_h[:, None])
        w1 = tl.load(w_row + j1[None, :], mask=mask_hj, other=0.0).to(tl.float32)
        w2 = tl.load(w_row + j2[None, :], mask=mask_hj, other=0.0).to(tl.float32)
    dw1 = tl.zeros([HEADS_PAD, HALF_PAD], tl.float32)
    dw2 = tl.zeros([HEADS_PAD, HALF_PAD], tl.float32)

    for t in range(TOKENS_PER_PROGRAM):
        token = pid * TOKENS_PER_PROGRAM + t
        mask = mask_hj & (token < total_tokens)
        b = token // n_tokens
        n = token % n_tokens
        g_row = dOut + b * stride_gb + n * stride_gn + offs_h[:, None] * stride_gh
        g1 = tl.load(g_row + j1[None, :] * stride_gd, mask=mask, other=0.0).to(tl.float32)
        g2 = tl.load(g_row + j2[None, :] * stride_gd, mask=mask, other=0.0).to(tl.float32)
        dy1, dy2 = rotate_pairs(g1, g2, C + b * stride_cb + n * stride_cn, axis * stride_ca, -freq, mask)
        if NORM != 0:
            x_row = X + b * stride_xb + n * stride_xn + offs_h[:, None] * stride_xh
            x1 = tl.load(x_row + j1[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(x_row + j2[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
            if NORM == 1:
                inv = (1.0 / tl.sqrt(tl.sum(x1 * x1 + x2 * x2, 1) / (2 * HALF) + eps))[:, None]
            else:
                inv = 1.0 / tl.sqrt(tl.sum(tl.sum(x1 * x1 + x2 * x2, 1), 0) / (2 * HALF * num_heads) + eps)
            n1 = x1 * inv
            n2 = x2 * inv
            if HAS_WEIGHT:
                dw1 += dy1 * n1
                dw2 += dy2 * n2
                dy1 = dy1 * w1
                dy2 = dy2 * w2
            if NORM == 1:
                c = (tl.sum(dy1 * n1 + dy2 * n2, 1) / (2 * HALF))[:, None]
            else:
                c = tl.sum(tl.sum(dy1 * n1 + dy2 * n2, 1), 0) / (2 * HALF * num_heads)
            dy1 = inv * (dy1 - n1 * c)
            dy2 = inv * (dy2 - n2 * c)
        dx_row = dX + b * stride_dxb + n * stride_dxn + offs_h[:, None] * stride_dxh
        tl.store(dx_row + j1[None, :] * stride_dxd, dy1.to(dX.dtype.element_ty), mask=mask)
        tl.store(dx_row + j2[None, :] * stride_dxd, dy2.to(dX.dtype.element_ty), mask=mask)

    if HAS_WEIGHT:
        dw_row = dWPartial + pid * stride_dw_p
        if NORM == 2:  # [H*D]: one row of weight per head
            dw_ptrs = dw_row + offs_h[:, None] * (2 * HALF)
            tl.store(dw_ptrs + j1[None, :], dw1, mask=mask_hj)
            tl.store(dw_ptrs + j2[None, :], dw2, mask=mask_hj)
        else:  # [D], shared by the heads: their contributions summed here
            mask_j = offs_j < HALF
            tl.store(dw_row + j1, tl.sum(dw1, 0), mask=mask_j)
            tl.store(dw_row + j2, tl.sum(dw2, 0), mask=mask_j)


def rmsnorm_rope_bwd(dout, x, coords, freqs, axes, interleaved: bool, *, norm: int, weight=None, eps: float = 1e-6):
    """Gradients of :func:`~kernels.rope_norm.rmsnorm_rope_fwd` on validated inputs.

    dout, x ``[B, N, H, D]`` (any strides; x is read only when ``norm != 0``); coords, freqs, axes, weight as
    the forward's.  Returns ``(dx [B, N, H, D] in x's dtype, dweight in weight's dtype or None)``.
    """
    B, N, H, D = x.shape
    total = B * N
    upcast = _interpreting() and x.dtype == torch.bfloat16
    dx = torch.empty((B, N, H, D), device=x.device, dtype=torch.float32 if upcast else x.dtype)
    programs = triton.cdiv(total, TOKENS_PER_PROGRAM)
    has_weight = weight is not None and norm != 0
    dw_partial = (torch.zeros((programs, weight.shape[0]), device=x.device, dtype=torch.float32)
                  if has_weight else freqs)
    if total:
        _rmsnorm_rope_bwd[(programs,)](
            x, dout, dx, weight if has_weight else freqs, dw_partial, coords, freqs, axes,
            *x.stride(), *dout.stride(), *dx.stride(),
            coords.stride(0) if coords.shape[0] > 1 else 0, coords.stride(1), coords.stride(2),
            freqs.stride(0) if freqs.shape[0] > 1 else 0, dw_partial.stride(0) if has_weight else 0,
            N, total, H, eps,
            HALF=D // 2, HALF_PAD=pairs_pad(D), HEADS_PAD=heads_pad(H), INTERLEAVED=interleaved,
            NORM=norm, HAS_WEIGHT=has_weight, TOKENS_PER_PROGRAM=TOKENS_PER_PROGRAM,
            num_warps=num_warps_for(H, D))
    dweight = dw_partial.sum(0).to(weight.dtype) if has_weight else None
    return dx.to(x.dtype), dweight
