"""RoPE from coordinates, optionally fused with RMSNorm: one program per token.

``NORM`` selects the normalisation applied before the rotation: 0 none (standalone
``apply_rope``), 1 RMSNorm per head (weight ``[D]``), 2 RMSNorm across the whole inner
dim ``H*D`` (Wan, LTX-2; weight ``[H*D]``).  This is the pre-pass that lets long
self-attention rotate K once instead of once per query block.
"""
import torch
import triton
import triton.language as tl

from .rope_math import pair_offsets, rotate_pairs


@triton.jit
def _rmsnorm_rope(
    X, Out, W, C, F, Ax,
    stride_xb, stride_xn, stride_xh, stride_xd,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_cb, stride_cn, stride_ca, stride_fh,
    n_tokens, num_heads, eps,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):
    # 64-bit token and head offsets: b * stride_xb passes 2^31 elements at real sizes (and h * stride_xh can,
    # in a [B, H, N, D] layout)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_tokens
    n = pid % n_tokens
    offs_h = tl.arange(0, HEADS_PAD)
    heads = offs_h.to(tl.int64)
    offs_j = tl.arange(0, HALF_PAD)
    mask = (offs_h[:, None] < num_heads) & (offs_j[None, :] < HALF)
    j1, j2 = pair_offsets(offs_j, HALF, INTERLEAVED)

    x_row = X + b * stride_xb + n * stride_xn + heads[:, None] * stride_xh
    x1 = tl.load(x_row + j1[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + j2[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)

    if NORM == 1:
        ms = tl.sum(x1 * x1 + x2 * x2, 1) / (2 * HALF)
        inv = (1.0 / tl.sqrt(ms + eps))[:, None]
    elif NORM == 2:
        ms = tl.sum(tl.sum(x1 * x1 + x2 * x2, 1), 0) / (2 * HALF * num_heads)
        inv = 1.0 / tl.sqrt(ms + eps)
    if NORM != 0:
        x1 = x1 * inv
        x2 = x2 * inv
        if HAS_WEIGHT:
            # per-head weight [D] is broadcast over heads; inner-dim weight [H*D] is indexed per head
            w_row = W + (offs_h[:, None] * (2 * HALF) if NORM == 2 else 0 * offs_h[:, None])
            x1 = x1 * tl.load(w_row + j1[None, :], mask=mask, other=0.0).to(tl.float32)
            x2 = x2 * tl.load(w_row + j2[None, :], mask=mask, other=0.0).to(tl.float32)

    freq = tl.load(F + offs_h[:, None] * stride_fh + offs_j[None, :], mask=mask, other=0.0)
    axis = tl.load(Ax + offs_h[:, None] * stride_fh + offs_j[None, :], mask=mask, other=0)
    r1, r2 = rotate_pairs(x1, x2, C + b * stride_cb + n * stride_cn, axis * stride_ca, freq, mask)

    o_row = Out + b * stride_ob + n * stride_on + heads[:, None] * stride_oh
    tl.store(o_row + j1[None, :] * stride_od, r1.to(Out.dtype.element_ty), mask=mask)
    tl.store(o_row + j2[None, :] * stride_od, r2.to(Out.dtype.element_ty), mask=mask)


NORM_NONE, NORM_PER_HEAD, NORM_ACROSS_HEADS = 0, 1, 2


def heads_pad(num_heads: int) -> int:
    return triton.next_power_of_2(num_heads)


def pairs_pad(head_dim: int) -> int:
    """Rotary pairs padded to a power of two (no ``tl.dot`` here, so no minimum of 16 as in the attention
    kernel's ``half_pad``)."""
    return triton.next_power_of_2(head_dim // 2)


def num_warps_for(num_heads: int, head_dim: int) -> int:
    """Warps per token program: enough lanes for ``H*D`` elements without spilling."""
    elems = heads_pad(num_heads) * 2 * pairs_pad(head_dim)
    return min(16, max(1, elems // 256))


def rmsnorm_rope_fwd(x, coords, freqs, axes, interleaved: bool, *, norm: int = NORM_NONE, weight=None,
                     eps: float = 1e-6):
    """Launch on validated inputs: x ``[B, N, H, D]`` (any strides), coords float32 ``[B or 1, N, A]``,
    freqs/axes ``[1 or H, D/2]`` contiguous, weight ``[D]`` (per head) / ``[H*D]`` (across heads) or None.
    Returns the rotated (normalised) tensor ``[B, N, H, D]`` in x's dtype."""
    B, N, H, D = x.shape
    out = torch.empty((B, N, H, D), device=x.device, dtype=x.dtype)
    if B * N == 0:
        return out
    _rmsnorm_rope[(B * N,)](
        x, out, weight if weight is not None else freqs, coords, freqs, axes,
        *x.stride(), *out.stride(),
        coords.stride(0) if coords.shape[0] > 1 else 0, coords.stride(1), coords.stride(2),
        freqs.stride(0) if freqs.shape[0] > 1 else 0,
        N, H, eps,
        HALF=D // 2, HALF_PAD=pairs_pad(D), HEADS_PAD=heads_pad(H), INTERLEAVED=interleaved,
        NORM=norm, HAS_WEIGHT=weight is not None, num_warps=num_warps_for(H, D))
    return out
