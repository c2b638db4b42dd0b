"""RoPE from coordinates, optionally fused with RMSNorm: one program per token.

``NORM`` selects the normalisation applied before the rotation: 0 none (standalone
``apply_rope``), 1 RMSNorm per head (weight ``[D]``), 2 RMSNorm across the whole inner
dim ``H*D`` (Wan, LTX-2; weight ``[H*D]``).  This is the pre-pass that lets long
self-attention rotate K once instead of once per query block.  The pass itself is the jit helper
:func:`rmsnorm_rope_pairs`, which the quantising pre-pass (``rope_attention_quant._quantize_rows``) shares.
"""
import torch
import triton
import triton.language as tl

from .rope_attention import _interpreting
from .rope_math import pair_offsets, rotate_pairs


@triton.jit
def token_pairs(n, n_tokens, num_heads, HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_PAD: tl.constexpr,
                INTERLEAVED: tl.constexpr):
    """Offsets of a ``[TOKENS, HEADS_PAD, HALF_PAD]`` tile of rotary-pair halves of tokens ``n`` (int64
    ``[TOKENS]``), all heads: ``(heads int64 [1, HEADS_PAD, 1], j1, j2 [1, 1, HALF_PAD]`` (element offsets of the
    pair halves, in units of the dim stride), ``mask_hj [1, HEADS_PAD, HALF_PAD]`` (real heads and pairs),
    ``mask [TOKENS, HEADS_PAD, HALF_PAD]`` (and real tokens)``)``."""
    offs_h = tl.arange(0, HEADS_PAD)
    offs_j = tl.arange(0, HALF_PAD)
    p1, p2 = pair_offsets(offs_j, HALF, INTERLEAVED)
    mask_hj = ((offs_h[:, None] < num_heads) & (offs_j[None, :] < HALF))[None]
    return (offs_h.to(tl.int64)[None, :, None], p1[None, None, :], p2[None, None, :], mask_hj,
            mask_hj & (n < n_tokens)[:, None, None])


@triton.jit
def rmsnorm_rope_pairs(
    X, W, C, F, Ax, b, n,
    stride_xb, stride_xn, stride_xh, stride_xd, stride_cb, stride_cn, stride_ca, stride_fh,
    n_tokens, num_heads, eps,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, ROTATE: tl.constexpr,
):
    """The norm + RoPE pass on tokens ``n`` (int64 ``[TOKENS]``) of batch item ``b``, all heads: the pair halves
    ``(x1, x2)``, float32 ``[TOKENS, HEADS_PAD, HALF_PAD]`` (zeros outside the tile's :func:`token_pairs` mask),
    loaded from ``X``, RMS-normalised (``NORM``: 0 none, 1 per head with weight ``[D]``, 2 across the inner dim
    with weight ``[H*D]``; ``W`` read with ``HAS_WEIGHT``) and rotated by the table ``F``/``Ax`` at the
    coordinates ``C`` (``ROTATE``).  The one copy of this pass: ``_rmsnorm_rope`` stores its result,
    ``kernels/rope_attention_quant.py``'s ``_quantize_rows`` quantises it."""
    heads, j1, j2, mask_hj, mask = token_pairs(n, n_tokens, num_heads, HALF, HALF_PAD, HEADS_PAD, INTERLEAVED)
    x_row = X + b * stride_xb + n[:, None, None] * stride_xn + heads * stride_xh
    x1 = tl.load(x_row + j1 * stride_xd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + j2 * stride_xd, mask=mask, other=0.0).to(tl.float32)
    if NORM == 1:
        inv = (1.0 / tl.sqrt(tl.sum(x1 * x1 + x2 * x2, 2) / (2 * HALF) + eps))[:, :, None]
    elif NORM == 2:
        inv = (1.0 / tl.sqrt(tl.sum(tl.sum(x1 * x1 + x2 * x2, 2), 1) / (2 * HALF * num_heads) + eps))[:, None, None]
    if NORM != 0:
        x1 = x1 * inv
        x2 = x2 * inv
        if HAS_WEIGHT:
            # per-head weight [D] is broadcast over heads; inner-dim weight [H*D] is indexed per head
            w_row = W + (heads * (2 * HALF) if NORM == 2 else 0 * heads)
            x1 = x1 * tl.load(w_row + j1, mask=mask_hj, other=0.0).to(tl.float32)
            x2 = x2 * tl.load(w_row + j2, mask=mask_hj, other=0.0).to(tl.float32)
    if ROTATE:
        table = heads * stride_fh + tl.arange(0, HALF_PAD)[None, None, :]
        freq = tl.load(F + table, mask=mask_hj, other=0.0)
        axis = tl.load(Ax + table, mask=mask_hj, other=0)
        x1, x2 = rotate_pairs(x1, x2, C + b * stride_cb + n[:, None, None] * stride_cn, axis * stride_ca, freq, mask)
    return x1, x2


@triton.jit
def _rmsnorm_rope(
    X, Out, W, C, F, Ax,
    stride_xb, stride_xn, stride_xh, stride_xd,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_cb, stride_cn, stride_ca, stride_fh,
    n_tokens, num_heads, eps,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, TOKENS: tl.constexpr,
):
    """One program per ``TOKENS`` tokens (:func:`tokens_per_program`): :func:`rmsnorm_rope_pairs`, stored in
    ``Out``'s dtype."""
    # 64-bit token and head offsets: b * stride_xb passes 2^31 elements at real sizes (and h * stride_xh can,
    # in a [B, H, N, D] layout)
    pid = tl.program_id(0).to(tl.int64)
    n_chunks = tl.cdiv(n_tokens, TOKENS)
    b = pid // n_chunks
    n = pid % n_chunks * TOKENS + tl.arange(0, TOKENS)  # [TOKENS]
    r1, r2 = rmsnorm_rope_pairs(X, W, C, F, Ax, b, n, stride_xb, stride_xn, stride_xh, stride_xd,
                                stride_cb, stride_cn, stride_ca, stride_fh, n_tokens, num_heads, eps,
                                HALF, HALF_PAD, HEADS_PAD, INTERLEAVED, NORM, HAS_WEIGHT, True)
    heads, j1, j2, mask_hj, mask = token_pairs(n, n_tokens, num_heads, HALF, HALF_PAD, HEADS_PAD, INTERLEAVED)
    o_row = Out + b * stride_ob + n[:, None, None] * stride_on + heads * stride_oh
    tl.store(o_row + j1 * stride_od, r1.to(Out.dtype.element_ty), mask=mask)
    tl.store(o_row + j2 * stride_od, r2.to(Out.dtype.element_ty), mask=mask)


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


def tokens_per_program(interpreting: bool) -> int:
    """Tokens per program of the norm + RoPE passes: one on a GPU (a token's ``H*D`` values fill the program);
    16 under the interpreter, whose cost is per operation, not per element."""
    return 16 if interpreting else 1


def rmsnorm_rope_fwd(x, coords, freqs, axes, interleaved: bool, *, norm: int = NORM_NONE, weight=None,
                     eps: float = 1e-6):
    """Launch on validated inputs: x ``[B, N, H, D]`` (any strides), coords float32 ``[B or 1, N, A]``,
    freqs/axes ``[1 or H, D/2]`` contiguous, weight ``[D]`` (per head) / ``[H*D]`` (across heads) or None.
    Returns the rotated (normalised) tensor ``[B, N, H, D]`` in x's dtype."""
    B, N, H, D = x.shape
    out = torch.empty((B, N, H, D), device=x.device, dtype=x.dtype)
    if B * N == 0:
        return out
    tokens = tokens_per_program(_interpreting())
    _rmsnorm_rope[(B * triton.cdiv(N, tokens),)](
        x, out, weight if weight is not None else freqs, coords, freqs, axes,
        *x.stride(), *out.stride(),
        coords.stride(0) if coords.shape[0] > 1 else 0, coords.stride(1), coords.stride(2),
        freqs.stride(0) if freqs.shape[0] > 1 else 0,
        N, H, eps,
        HALF=D // 2, HALF_PAD=pairs_pad(D), HEADS_PAD=heads_pad(H), INTERLEAVED=interleaved,
        NORM=norm, HAS_WEIGHT=weight is not None, TOKENS=tokens, num_warps=num_warps_for(H, D))
    return out
