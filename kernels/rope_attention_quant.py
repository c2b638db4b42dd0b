"""Quantised attention (SageAttention-style): int8 or fp8 Q and K, fp8 or fp16 P.V, and its pre-passes.

Schemes (``quant_formats.SCHEMES``):
- ``"fp8"`` (sm_90): Q and K in fp8 e4m3 with one scale per (token, head); S = Q.K^T on the fp8 tensor cores
  (QGMMA) with fp32 accumulation; P.V in fp8 too: P (in [0, 1]) is multiplied by 448 and cast to e4m3, V is
  e4m3 with one scale per (key block of ``V_BLOCK`` tokens, channel).  Two-level accumulation (as
  SageAttention2): each key tile's ``P.V`` is a fresh fp32 dot, scaled by its block's channel scales and only
  then added to the fp32 running accumulator.
- ``"int8"`` (sm_80): Q and K in int8 with one scale per (token, head) (int32 accumulation, IMMA), P.V in fp16
  with an fp32 accumulator.
- ``"int8+fp8"`` (sm_90, SageAttention2's "qk_int8_pv_fp8"): int8 Q.K as ``"int8"``, fp8 P.V as ``"fp8"``.  On
  Gaussian inputs fp8 e4m3 Q.K alone costs about 7e-4 of cosine similarity (3 mantissa bits), int8 Q.K about
  5e-5: this scheme keeps the fp8 P.V and the int8 accuracy at the same tensor-core rate.

Per-token scales are finer than SageAttention's per-block ones and need no reduction across tokens, so the
norm + RoPE + quantise pre-pass (:func:`quantize_rows`) stays one program per token.  K is smoothed first:
its per-head mean over tokens (in the rotated frame) is subtracted, which shifts every score of a query row
by the same ``q . mean`` and leaves the softmax unchanged, but takes the channel outliers that K's scale
would otherwise be sized to.  The mean is one extra read of K (``MEAN_PASS``: per-chunk partial sums,
summed on the host in a fixed order, so the result is deterministic).

Addresses: batch, head and tile-start offsets are 64-bit (program ids and tile starts cast to int64); offsets
inside a tile stay 32-bit (at most ``BLOCK * stride``).
Under the interpreter fp8 and int8 ``tl.dot`` are exact; the int8 scheme's fp16 P.V is exact there too.
"""
import math

import torch
import triton
import triton.language as tl

from .quant_formats import FP8_PV, P_SCALE, QK_FORMAT, QMAX, STORAGE, V_BLOCK
from .rope_attention import _interpreting
from .rope_math import key_length
from .rope_norm import (heads_pad, num_warps_for, pairs_pad, rmsnorm_rope_pairs, token_pairs,
                        tokens_per_program)

MEAN_CHUNK = 16  # tokens summed per program of K's mean pass


# ----------------------------------------------------------------------------- pre-pass
@triton.jit
def to_fp8(y, EXACT_CAST: tl.constexpr):
    """fp32 ``y`` (``|y| <= 448``) to fp8 e4m3, rounded to nearest even.  With ``EXACT_CAST`` (interpreter only, see
    :func:`exact_fp8_cast`) ``y`` is first rounded onto the e4m3 grid in fp32 -- adding and subtracting
    ``2^(ulp + 23)`` rounds at the ulp ``2^(max(e, -6) - 3)`` -- so the interpreter's cast has nothing to round:
    its own rounding loses the carry into the exponent (31.5 becomes 16, not 32)."""
    if EXACT_CAST:
        a = tl.abs(y)
        exponent = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        magic = ((tl.maximum(exponent, -6) - 3 + 23 + 127) << 23).to(tl.float32, bitcast=True)
        r = (a + magic) - magic
        y = tl.where(y < 0, -r, r)
    return y.to(tl.float8e4nv)


@triton.jit
def _quantize(x, inv_scale, INT8: tl.constexpr, EXACT_CAST: tl.constexpr):
    """``x * inv_scale`` rounded to int8 (half away from zero) or to fp8 e4m3 (:func:`to_fp8`)."""
    y = x * inv_scale
    if INT8:
        return tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)
    else:
        return to_fp8(y, EXACT_CAST)


@triton.jit
def _quantize_rows(
    X, Out, Scale, Mean, W, C, F, Ax,
    stride_xb, stride_xn, stride_xh, stride_xd,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_sb, stride_sh, stride_mb, stride_mc, stride_mh,
    stride_cb, stride_cn, stride_ca, stride_fh,
    n_tokens, n_chunks, num_heads, eps, qmax,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr, ROTATE: tl.constexpr, MEAN_PASS: tl.constexpr,
    HAS_MEAN: tl.constexpr, INT8: tl.constexpr, EXACT_CAST: tl.constexpr, CHUNK: tl.constexpr,
    TOKENS: tl.constexpr,
):
    """One program per chunk of ``CHUNK`` tokens, all heads, ``TOKENS`` tokens at a time: rope_norm.py's norm +
    RoPE pass (:func:`~kernels.rope_norm.rmsnorm_rope_pairs`), then an epilogue: either (``MEAN_PASS``) the
    chunk's sum of the result into ``Mean[b, chunk]``, or the tokens minus ``Mean[b]`` (``HAS_MEAN``) quantised
    into ``Out`` with one scale per (token, head) into ``Scale[b, h, n]``."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_chunks
    chunk = pid % n_chunks
    offs_h = tl.arange(0, HEADS_PAD)
    first = chunk * CHUNK + tl.arange(0, TOKENS).to(tl.int64)  # [TOKENS]
    heads, j1, j2, mask_hj, _ = token_pairs(first, n_tokens, num_heads, HALF, HALF_PAD, HEADS_PAD, INTERLEAVED)
    mean_row = Mean + b * stride_mb + chunk * stride_mc + heads * stride_mh
    if HAS_MEAN:
        mean1 = tl.load(mean_row + j1, mask=mask_hj, other=0.0)
        mean2 = tl.load(mean_row + j2, mask=mask_hj, other=0.0)
    sum1 = tl.zeros([1, HEADS_PAD, HALF_PAD], tl.float32)
    sum2 = tl.zeros([1, HEADS_PAD, HALF_PAD], tl.float32)
    for start in range(0, CHUNK, TOKENS):
        n = first + start
        x1, x2 = rmsnorm_rope_pairs(X, W, C, F, Ax, b, n, stride_xb, stride_xn, stride_xh, stride_xd,
                                    stride_cb, stride_cn, stride_ca, stride_fh, n_tokens, num_heads, eps,
                                    HALF, HALF_PAD, HEADS_PAD, INTERLEAVED, NORM, HAS_WEIGHT, ROTATE)
        if MEAN_PASS:
            sum1 += tl.sum(x1, 0)[None]
            sum2 += tl.sum(x2, 0)[None]
        else:
            mask = mask_hj & (n < n_tokens)[:, None, None]
            if HAS_MEAN:
                x1 = tl.where(mask, x1 - mean1, 0.0)
                x2 = tl.where(mask, x2 - mean2, 0.0)
            amax = tl.maximum(tl.max(tl.abs(x1), 2), tl.max(tl.abs(x2), 2))  # [TOKENS, HEADS_PAD]
            has_range = amax > 0.0
            inv_scale = tl.where(has_range, qmax / tl.where(has_range, amax, 1.0), 1.0)[:, :, None]
            o_row = Out + b * stride_ob + n[:, None, None] * stride_on + heads * stride_oh
            tl.store(o_row + j1 * stride_od, _quantize(x1, inv_scale, INT8, EXACT_CAST), mask=mask)
            tl.store(o_row + j2 * stride_od, _quantize(x2, inv_scale, INT8, EXACT_CAST), mask=mask)
            tl.store(Scale + b * stride_sb + offs_h.to(tl.int64)[None, :] * stride_sh + n[:, None],
                     tl.where(has_range, amax / qmax, 1.0),
                     mask=(offs_h[None, :] < num_heads) & (n < n_tokens)[:, None])
    if MEAN_PASS:
        tl.store(mean_row + j1, sum1, mask=mask_hj)
        tl.store(mean_row + j2, sum2, mask=mask_hj)


@triton.jit
def _quantize_v(
    V, Out, Scale,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_sb, stride_sh, stride_sk,
    n_tokens, num_heads, qmax,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, EXACT_CAST: tl.constexpr,
):
    """V to fp8 e4m3 with one scale per (key block of ``BLOCK`` tokens, channel): ``Scale[b, h, block, d]``."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    start = (pid_n * BLOCK).to(tl.int64)
    rows = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D_PAD)
    mask = (start + rows[:, None] < n_tokens) & (offs_d[None, :] < HEAD_DIM)
    v_tile = V + b * stride_vb + h * stride_vh + start * stride_vn
    v = tl.load(v_tile + rows[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(v), 0)
    has_range = amax > 0.0
    inv_scale = tl.where(has_range, qmax / tl.where(has_range, amax, 1.0), 1.0)
    o_tile = Out + b * stride_ob + h * stride_oh + start * stride_on
    tl.store(o_tile + rows[:, None] * stride_on + offs_d[None, :] * stride_od,
             _quantize(v, inv_scale[None, :], False, EXACT_CAST), mask=mask)
    tl.store(Scale + b * stride_sb + h * stride_sh + pid_n * stride_sk + offs_d, tl.where(has_range, amax / qmax, 1.0),
             mask=offs_d < HEAD_DIM)


# ----------------------------------------------------------------------------- attention
@triton.jit
def _quant_attention_fwd(
    Q, QS, K, KS, V, VS, Out, KLens, Lse, KMean,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_qs_b, stride_qs_h, stride_ks_b, stride_ks_h, stride_vs_b, stride_vs_h, stride_vs_k,
    stride_lse_b, stride_lse_h, stride_km_b, stride_km_h,
    n_q, n_k, num_heads, group, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, FP8_PV: tl.constexpr, HAS_KLENS: tl.constexpr,
    RETURN_LSE: tl.constexpr,
    V_BLOCK: tl.constexpr, P_SCALE: tl.constexpr, EXACT_CAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    hk = h // group

    start_m = (pid_m * BLOCK_M).to(tl.int64)
    rows_m = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows_m
    offs_d = tl.arange(0, D_PAD)
    mask_m = offs_m < n_q
    mask_d = offs_d < HEAD_DIM
    q_tile = Q + b * stride_qb + h * stride_qh + start_m * stride_qn
    q = tl.load(q_tile + rows_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    # the softmax scale (base 2) folded into the query scales
    q_scale = tl.load(QS + b * stride_qs_b + h * stride_qs_h + offs_m, mask=mask_m, other=0.0) * qk_scale

    k_len = key_length(KLens, b, n_k, HAS_KLENS)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    ks_base = KS + b * stride_ks_b + hk * stride_ks_h
    vs_base = VS + b * stride_vs_b + hk * stride_vs_h
    rows_n = tl.arange(0, BLOCK_N)
    for start_n in range(0, k_len, BLOCK_N):
        offs_n = start_n + rows_n
        mask_n = offs_n < k_len
        k_tile = k_base + tl.cast(start_n, tl.int64) * stride_kn
        k = tl.load(k_tile + rows_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        k_scale = tl.load(ks_base + offs_n, mask=mask_n, other=0.0)
        s = tl.dot(q, k).to(tl.float32)  # int8: exact int32; fp8: fp32 accumulation
        s = tl.where(mask_n[None, :], s * q_scale[:, None] * k_scale[None, :], float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_tile = v_base + tl.cast(start_n, tl.int64) * stride_vn
        v = tl.load(v_tile + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        if FP8_PV:
            # two-level accumulation: the tile's P.V in a fresh fp32 accumulator, scaled, then added
            pv = tl.dot(to_fp8(p * P_SCALE, EXACT_CAST), v)
            v_scale = tl.load(vs_base + (start_n // V_BLOCK) * stride_vs_k + offs_d, mask=mask_d, other=0.0)
            acc = acc * alpha[:, None] + pv * (v_scale * (1.0 / P_SCALE))[None, :]
        else:
            acc = tl.dot(p.to(V.dtype.element_ty), v, acc * alpha[:, None])
        m_i = m_new

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    o_tile = Out + b * stride_ob + h * stride_oh + start_m * stride_on
    tl.store(o_tile + rows_m[:, None] * stride_on + offs_d[None, :] * stride_od, out.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    if RETURN_LSE:
        # K was smoothed (minus its token mean): the softmax ignores the shift q . mean of a row's scores, its
        # log-sum-exp does not, so it is added back (fp32, from the same quantised q; base 2 as m_i)
        k_mean = tl.load(KMean + b * stride_km_b + hk * stride_km_h + offs_d, mask=mask_d, other=0.0)
        shift = tl.sum(q.to(tl.float32) * k_mean[None, :], 1) * q_scale
        lse = tl.where(has_keys, (m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)) + shift) * 0.6931471805599453,
                       float("-inf"))
        tl.store(Lse + b * stride_lse_b + h * stride_lse_h + offs_m, lse, mask=mask_m)


# Shipped configurations (BLOCK_M, BLOCK_N, num_warps, num_stages) per scheme and padded head dim; compiled by
# `baton-fast selftest --static` (fp8 for sm_90, int8 for sm_80): spill-free, QGMMA / IMMA.  BLOCK_N divides
# V_BLOCK, so that a key tile lies in one V scale block.  Head dims up to 128 (every model of the family):
# D = 32..64 uses the 64 list, 66..128 the 128 list.
SHIPPED_CONFIGS = {
    ("fp8", 64): [(128, 64, 4, 3), (128, 64, 8, 2)],
    ("fp8", 128): [(128, 64, 8, 2), (64, 64, 4, 2)],
    ("int8", 64): [(128, 64, 4, 3), (128, 64, 8, 3)],
    ("int8", 128): [(64, 64, 4, 2), (128, 64, 8, 2)],
    ("int8+fp8", 64): [(128, 64, 4, 3), (128, 64, 8, 2)],
    ("int8+fp8", 128): [(128, 64, 8, 2), (64, 64, 4, 2)],
}
INTERPRETER_CONFIG = (32, 32, 1, 1)  # pinned under the interpreter (whose cost is per operation)


def exact_fp8_cast() -> bool:
    """The ``EXACT_CAST`` constexpr of :func:`to_fp8`: on under the interpreter, never when compiled (the
    hardware's ``cvt.rn.satfinite.e4m3x2.f32`` rounds correctly)."""
    return _interpreting()


def d_pad(head_dim: int) -> int:
    """Padded head dim: a power of two >= 32 (8-bit ``tl.dot`` needs K >= 32)."""
    return max(32, triton.next_power_of_2(head_dim))


def shipped_configs(scheme: str, head_dim: int):
    """Configurations shipped for a scheme and head dim (``<= MAX_HEAD_DIM``)."""
    return SHIPPED_CONFIGS[(scheme, max(64, d_pad(head_dim)))]


def quantize_rows_fwd(x, coords, freqs, axes, interleaved: bool, *, scheme: str, norm: int = 0, weight=None,
                      eps: float = 1e-6, rotate: bool = True, smooth: bool = False):
    """Launch on validated inputs: RMSNorm (``norm`` as in rope_norm.py), RoPE (``rotate``), optional smoothing by
    the per-head token mean, quantisation of x ``[B, N, H, D]`` with one scale per (token, head).

    Returns ``(data [B, N, H, D] int8 / float8_e4m3fn, scale float32 [B, H, N], mean float32 [B, H, D] or None)``.
    """
    B, N, H, D = x.shape
    fmt = QK_FORMAT[scheme]
    data = torch.empty((B, N, H, D), device=x.device, dtype=STORAGE[fmt])
    scale = torch.empty((B, H, N), device=x.device, dtype=torch.float32)
    common = dict(HALF=D // 2, HALF_PAD=pairs_pad(D), HEADS_PAD=heads_pad(H), INTERLEAVED=interleaved, NORM=norm,
                  HAS_WEIGHT=weight is not None, ROTATE=rotate, INT8=fmt == "int8", EXACT_CAST=exact_fp8_cast(),
                  num_warps=num_warps_for(H, D))
    tensors = (weight if weight is not None else freqs, coords, freqs, axes)
    coord_strides = (coords.stride(0) if coords.shape[0] > 1 else 0, coords.stride(1), coords.stride(2),
                     freqs.stride(0) if freqs.shape[0] > 1 else 0)
    tokens = tokens_per_program(_interpreting())
    mean = None
    if smooth:
        chunks = triton.cdiv(N, MEAN_CHUNK)
        partial = torch.empty((B, chunks, H, D), device=x.device, dtype=torch.float32)
        _quantize_rows[(B * chunks,)](
            x, data, scale, partial, *tensors, *x.stride(), *data.stride(), 0, 0, *partial.stride()[:3],
            *coord_strides, N, chunks, H, eps, 1.0, MEAN_PASS=True, HAS_MEAN=False, CHUNK=MEAN_CHUNK,
            TOKENS=min(tokens, MEAN_CHUNK), **common)
        mean = partial.sum(1) / N  # fixed order: deterministic
    chunks = triton.cdiv(N, tokens)
    _quantize_rows[(B * chunks,)](
        x, data, scale, mean if smooth else scale, *tensors, *x.stride(), *data.stride(), *scale.stride()[:2],
        mean.stride(0) if smooth else 0, 0, mean.stride(1) if smooth else 0,
        *coord_strides, N, chunks, H, eps, QMAX[fmt], MEAN_PASS=False, HAS_MEAN=smooth, CHUNK=tokens, TOKENS=tokens,
        **common)
    return data, scale, mean


def quantize_v_fwd(v):
    """V ``[B, N, H, D]`` to fp8 e4m3 with scales float32 ``[B, H, cdiv(N, V_BLOCK), D]``."""
    B, N, H, D = v.shape
    blocks = triton.cdiv(N, V_BLOCK)
    data = torch.empty((B, N, H, D), device=v.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((B, H, blocks, D), device=v.device, dtype=torch.float32)
    _quantize_v[(blocks, B * H)](v, data, scale, *v.stride(), *data.stride(), *scale.stride()[:3], N, H, QMAX["fp8"],
                                 HEAD_DIM=D, D_PAD=triton.next_power_of_2(D), BLOCK=V_BLOCK, EXACT_CAST=exact_fp8_cast(), num_warps=4)
    return data, scale


def quant_attention_fwd(q, q_scale, k, k_scale, v, v_scale, *, scheme: str, k_lens, scale: float, out_dtype,
                        config=None, return_lse: bool = False, k_mean=None):
    """Launch the quantised attention on validated inputs.

    q ``[B, Nq, H, D]`` and k ``[B, Nk, Hk, D]`` in the scheme's :data:`QK_FORMAT` (int8 / float8_e4m3fn) with
    scales float32 ``[B, H, Nq]`` / ``[B, Hk, Nk]``; v float8_e4m3fn with ``v_scale [B, Hk, cdiv(Nk, V_BLOCK), D]``
    (:data:`FP8_PV` schemes) or float16 with ``v_scale`` None (``"int8"``); k_lens int ``[B]`` or None.  Returns ``[B, Nq, H, D]`` in
    ``out_dtype``.  ``config``: ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``.  With ``return_lse`` returns
    ``(out, lse)``, ``lse`` float32 ``[B, H, Nq]`` (natural log; ``-inf`` for a row without keys), which needs
    ``k_mean`` float32 ``[B, Hk, D]``, the mean K was smoothed by (zeros if none).
    """
    B, n_q, H, D = q.shape
    n_k, Hk = k.shape[1], k.shape[2]
    out = torch.empty((B, n_q, H, D), device=q.device, dtype=out_dtype)
    fp8 = FP8_PV[scheme]
    vs = v_scale if fp8 else q_scale  # placeholder pointer when V is not scaled
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32) if return_lse else None
    lse_ptrs = (lse, k_mean) if lse is not None else (q_scale, q_scale)
    lse_strides = (*lse.stride()[:2], *k_mean.stride()[:2]) if lse is not None else (0, 0, 0, 0)

    def launch(cfg):
        block_m, block_n, num_warps, num_stages = cfg
        if V_BLOCK % block_n:
            raise ValueError(f"config: BLOCK_N={block_n} must divide the V scale block {V_BLOCK}")
        _quant_attention_fwd[(triton.cdiv(n_q, block_m), B * H)](
            q, q_scale, k, k_scale, v, vs, out, k_lens if k_lens is not None else q_scale, *lse_ptrs,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            q_scale.stride(0), q_scale.stride(1), k_scale.stride(0), k_scale.stride(1),
            vs.stride(0), vs.stride(1), vs.stride(2) if fp8 else 0, *lse_strides,
            n_q, n_k, H, H // Hk, scale * math.log2(math.e),
            HEAD_DIM=D, D_PAD=d_pad(D), FP8_PV=fp8, HAS_KLENS=k_lens is not None, RETURN_LSE=lse is not None,
            V_BLOCK=V_BLOCK, P_SCALE=P_SCALE, EXACT_CAST=exact_fp8_cast(),
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)

    launch(config or _pick_config(q, k, scheme, launch, lse is not None))
    return out if lse is None else (out, lse)


def _pick_config(q, k, scheme: str, launch, return_lse: bool):
    """The pinned config under the interpreter; on a GPU the tuned choice among the shipped configs."""
    if _interpreting() or q.device.type != "cuda":
        return INTERPRETER_CONFIG
    from .. import tuning

    B, n_q, H, D = q.shape
    n_k, Hk = k.shape[1], k.shape[2]
    major, minor = torch.cuda.get_device_capability(q.device)
    key = tuning.attention_key(f"sm_{major}{minor}", n_q, n_k, D, q.dtype, {"QUANT_" + scheme.upper(): True, **({"RETURN_LSE": True} if return_lse else {})},
                               B * H, H // Hk)
    return tuning.choose(key, shipped_configs(scheme, D), lambda cfg: tuning.benchmark(lambda: launch(cfg)))
