"""Fused coordinate-RoPE attention, backward (FlashAttention-2 style, scores recomputed from the LSE).

Three kernels, as in Triton's fused-attention tutorial:

1. ``_bwd_delta``: ``delta = rowsum(dO * O) - dLSE`` per query row (fp32);
2. ``_bwd_dkdv``: one program per key tile, looping over query tiles (and, in deterministic mode, over
   the query heads of its grouped-query group): ``dV += P^T dO``, ``dK += dS^T Q``;
3. ``_bwd_dq``: one program per query tile, looping over key tiles: ``dQ += dS K``.

Q and K are loaded as pair halves and rotated exactly as in the forward (rotated, then rounded to the
input dtype), so ``P`` is recomputed bit-for-bit the same way.  The gradients of the rotated tensors are
turned into gradients of the inputs by the transpose rotation, ``R(phi)^T = R(-phi)``: the same
:func:`rotate_pairs` with the frequencies negated, angles from the coordinates in registers.

Grouped-query heads: the fast mode runs one dK/dV program per *query* head and adds its share into fp32
buffers with atomics (more programs, but the order of the additions varies from run to run); the
deterministic mode runs one program per *key* head that loops over the group in a fixed order.
All base offsets (batch, head, tile start) are computed in 64 bits.

Interpreter work-around: under ``TRITON_INTERPRET=1`` the CPU emulation of ``tl.dot`` multiplies the raw
bit patterns of bf16 operands, so with ``UPCAST_DOTS`` the forward's :func:`dot` widens the dot operands to fp32 first (set
only when interpreting bf16; compiled kernels never take that branch).  The interpreter also truncates (rather
than rounds) fp32 -> bf16 conversions, so there P and dS are rounded to nearest-even by hand
(:func:`_dot_operand`) and the gradients are written to fp32 buffers and rounded by PyTorch.  Rotated Q
and K keep the forward kernel's conversion, so that P is recomputed exactly as the forward computed it.
"""
import math

import torch
import triton
import triton.language as tl

from .rope_attention import _bit_or, _interpreting, dot, half_pad, upcast_dots
from .rope_math import pair_offsets, rotate_pairs

LOG2E = math.log2(math.e)


@triton.jit
def _dot_operand(x, dtype: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    """fp32 ``x`` (probabilities, score gradients) rounded to the dot's input ``dtype``.  With ``UPCAST_DOTS``
    (interpreting bf16) the value is rounded to nearest-even bf16 by hand and kept in fp32, as the compiled
    conversion rounds (the interpreter's conversion truncates)."""
    if UPCAST_DOTS:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _load_pair_halves(rows, n, mask_rows, stride_n, j1, j2, mask_j, stride_d, coords, stride_c_n, stride_c_a,
                      freq, axis, ROTATE: tl.constexpr):
    """A ``[BLOCK, HALF_PAD]`` tile as its two pair halves, rotated when ``ROTATE`` (then rounded to the
    tensor's dtype, as the forward does).  ``rows`` and ``coords`` point at the tile's first row, ``n`` are
    the in-tile row indices."""
    mask = mask_rows[:, None] & mask_j[None, :]
    x1 = tl.load(rows + n[:, None] * stride_n + j1[None, :] * stride_d, mask=mask, other=0.0)
    x2 = tl.load(rows + n[:, None] * stride_n + j2[None, :] * stride_d, mask=mask, other=0.0)
    if ROTATE:
        r1, r2 = rotate_pairs(x1.to(tl.float32), x2.to(tl.float32), coords + n[:, None] * stride_c_n,
                              axis[None, :] * stride_c_a, freq[None, :], mask)
        x1 = r1.to(rows.dtype.element_ty)
        x2 = r2.to(rows.dtype.element_ty)
    return x1, x2


@triton.jit
def _store_pair_halves(rows, n, mask_rows, stride_n, j1, j2, mask_j, stride_d, g1, g2, coords, stride_c_n,
                       stride_c_a, freq, axis, ROTATE: tl.constexpr, ATOMIC: tl.constexpr):
    """Store the gradient halves ``(g1, g2)`` (fp32) of a rotated tile as the gradient of the unrotated
    input: rotated back by ``R(-phi)`` when ``ROTATE``; added with atomics into fp32 when ``ATOMIC``."""
    mask = mask_rows[:, None] & mask_j[None, :]
    if ROTATE:
        g1, g2 = rotate_pairs(g1, g2, coords + n[:, None] * stride_c_n, axis[None, :] * stride_c_a,
                              -freq[None, :], mask)
    p1 = rows + n[:, None] * stride_n + j1[None, :] * stride_d
    p2 = rows + n[:, None] * stride_n + j2[None, :] * stride_d
    if ATOMIC:
        tl.atomic_add(p1, g1, mask=mask, sem="relaxed")
        tl.atomic_add(p2, g2, mask=mask, sem="relaxed")
    else:
        tl.store(p1, g1.to(rows.dtype.element_ty), mask=mask)
        tl.store(p2, g2.to(rows.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_delta(
    Out, dOut, dLse, Delta,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_dob, stride_don, stride_doh, stride_dod,
    n_q, num_heads,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """``Delta[b, h, i] = sum_d dO * O - dLse`` (fp32, ``[B, H, Nq]`` contiguous, as ``dLse``)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    start_m = pid_m.to(tl.int64) * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask_m = start_m + offs_m < n_q
    mask = mask_m[:, None] & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(Out + b * stride_ob + h * stride_oh + start_m * stride_on
                + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(dOut + b * stride_dob + h * stride_doh + start_m * stride_don
                 + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row = pid_bh * n_q + start_m
    if HAS_DLSE:
        delta -= tl.load(dLse + row + offs_m, mask=mask_m, other=0.0)
    tl.store(Delta + row + offs_m, delta, mask=mask_m)


@triton.jit
def _bwd_dkdv(
    Q, K, V, dO, dK, dV, Lse, Delta, QC, KC, QF, QA, KF, KA, KLens, QG, KG,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_dkb, stride_dkn, stride_dkh, stride_dkd,
    stride_dvb, stride_dvn, stride_dvh, stride_dvd,
    stride_qc_b, stride_qc_n, stride_qc_a,
    stride_kc_b, stride_kc_n, stride_kc_a,
    stride_qf_h, stride_kf_h,
    stride_qg_b, stride_qg_n, stride_kg_b, stride_kg_n,
    n_q, n_k, num_heads, group, qk_scale, sm_scale,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    ROTATE_Q: tl.constexpr, ROTATE_K: tl.constexpr, HAS_KLENS: tl.constexpr, HAS_GROUPS: tl.constexpr,
    ATOMIC: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    if ATOMIC:  # one query head per program
        b = pid_bh // num_heads
        h_first = pid_bh % num_heads
        heads_here = 1
    else:  # one key head per program, looping over its group of query heads in a fixed order
        b = pid_bh // (num_heads // group)
        h_first = (pid_bh % (num_heads // group)) * group
        heads_here = group
    hk = h_first // group

    start_n = pid_n.to(tl.int64) * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, HALF_PAD)
    offs_d = tl.arange(0, 2 * HALF_PAD)
    mask_j = offs_j < HALF
    mask_d = offs_d < 2 * HALF
    j1, j2 = pair_offsets(offs_j, HALF, INTERLEAVED)
    k_len = n_k
    if HAS_KLENS:
        k_len = tl.minimum(tl.load(KLens + b).to(tl.int32), n_k)
    mask_n = start_n + offs_n < k_len

    k_freq = tl.load(KF + hk * stride_kf_h + offs_j, mask=mask_j & ROTATE_K, other=0.0)
    k_axis = tl.load(KA + hk * stride_kf_h + offs_j, mask=mask_j & ROTATE_K, other=0)
    k_coords = KC + b * stride_kc_b + start_n * stride_kc_n
    k_rows = K + b * stride_kb + hk * stride_kh + start_n * stride_kn
    k1, k2 = _load_pair_halves(k_rows, offs_n, mask_n, stride_kn, j1, j2, mask_j, stride_kd, k_coords,
                               stride_kc_n, stride_kc_a, k_freq, k_axis, ROTATE_K)
    v = tl.load(V + b * stride_vb + hk * stride_vh + start_n * stride_vn
                + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=mask_n[:, None] & mask_d[None, :], other=0.0)

    k_groups = tl.zeros([BLOCK_N], tl.int64)
    q_groups = tl.zeros([BLOCK_M], tl.int64)
    visit = True
    if HAS_GROUPS:
        k_groups = tl.load(KG + b * stride_kg_b + (start_n + offs_n) * stride_kg_n, mask=mask_n, other=0).to(tl.int64)
        k_groups_any = tl.reduce(k_groups, 0, _bit_or)

    dk1 = tl.zeros([BLOCK_N, HALF_PAD], tl.float32)
    dk2 = tl.zeros([BLOCK_N, HALF_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, 2 * HALF_PAD], tl.float32)
    q_end = tl.where(start_n < k_len, n_q, 0)  # key tile wholly past k_len: gradients are zero
    for g in range(0, heads_here):
        h = h_first + g
        q_freq = tl.load(QF + h * stride_qf_h + offs_j, mask=mask_j & ROTATE_Q, other=0.0)
        q_axis = tl.load(QA + h * stride_qf_h + offs_j, mask=mask_j & ROTATE_Q, other=0)
        row0 = (b * num_heads + h) * n_q
        for tile_m in range(0, q_end, BLOCK_M):
            start_m = tl.cast(tile_m, tl.int64)
            mask_m = start_m + offs_m < n_q
            if HAS_GROUPS:
                q_groups = tl.load(QG + b * stride_qg_b + (start_m + offs_m) * stride_qg_n, mask=mask_m,
                                   other=0).to(tl.int64)
                visit = (k_groups_any & tl.reduce(q_groups, 0, _bit_or)) != 0
            if visit:
                q_rows = Q + b * stride_qb + h * stride_qh + start_m * stride_qn
                q1, q2 = _load_pair_halves(q_rows, offs_m, mask_m, stride_qn, j1, j2, mask_j, stride_qd,
                                           QC + b * stride_qc_b + start_m * stride_qc_n, stride_qc_n,
                                           stride_qc_a, q_freq, q_axis, ROTATE_Q)
                do = tl.load(dO + b * stride_dob + h * stride_doh + start_m * stride_don
                             + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                             mask=mask_m[:, None] & mask_d[None, :], other=0.0)
                lse = tl.load(Lse + row0 + start_m + offs_m, mask=mask_m, other=float("inf"))
                lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634  # no key: P = 0
                delta = tl.load(Delta + row0 + start_m + offs_m, mask=mask_m, other=0.0)

                qk_t = dot(k1, tl.trans(q1), None, DOT_PRECISION, UPCAST_DOTS)
                qk_t = dot(k2, tl.trans(q2), qk_t, DOT_PRECISION, UPCAST_DOTS)
                allowed = mask_n[:, None]
                if HAS_GROUPS:
                    allowed = allowed & ((k_groups[:, None] & q_groups[None, :]) != 0)
                p_t = tl.where(allowed, tl.math.exp2(qk_t * qk_scale - lse[None, :]), 0.0)
                dv = dot(_dot_operand(p_t, V.dtype.element_ty, UPCAST_DOTS), do, dv, DOT_PRECISION, UPCAST_DOTS)
                dp_t = dot(v, tl.trans(do), None, DOT_PRECISION, UPCAST_DOTS)
                ds_t = _dot_operand(p_t * (dp_t - delta[None, :]), Q.dtype.element_ty, UPCAST_DOTS)
                dk1 = dot(ds_t, q1, dk1, DOT_PRECISION, UPCAST_DOTS)
                dk2 = dot(ds_t, q2, dk2, DOT_PRECISION, UPCAST_DOTS)

    dk_rows = dK + b * stride_dkb + hk * stride_dkh + start_n * stride_dkn
    # keys past k_len get a zero gradient (stored: the buffer is not pre-zeroed in deterministic mode)
    mask_keys = start_n + offs_n < n_k
    _store_pair_halves(dk_rows, offs_n, mask_keys, stride_dkn, j1, j2, mask_j, stride_dkd, dk1 * sm_scale,
                       dk2 * sm_scale, k_coords, stride_kc_n, stride_kc_a, k_freq, k_axis, ROTATE_K, ATOMIC)
    dv_ptrs = (dV + b * stride_dvb + hk * stride_dvh + start_n * stride_dvn
               + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd)
    mask_dv = mask_keys[:, None] & mask_d[None, :]
    if ATOMIC:
        tl.atomic_add(dv_ptrs, dv, mask=mask_dv, sem="relaxed")
    else:
        tl.store(dv_ptrs, dv.to(dV.dtype.element_ty), mask=mask_dv)


@triton.jit
def _bwd_dq(
    Q, K, V, dO, dQ, Lse, Delta, QC, KC, QF, QA, KF, KA, KLens, QG, KG,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_dqb, stride_dqn, stride_dqh, stride_dqd,
    stride_qc_b, stride_qc_n, stride_qc_a,
    stride_kc_b, stride_kc_n, stride_kc_a,
    stride_qf_h, stride_kf_h,
    stride_qg_b, stride_qg_n, stride_kg_b, stride_kg_n,
    n_q, n_k, num_heads, group, qk_scale, sm_scale,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    ROTATE_Q: tl.constexpr, ROTATE_K: tl.constexpr, HAS_KLENS: tl.constexpr, HAS_GROUPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    hk = h // group

    start_m = pid_m.to(tl.int64) * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, HALF_PAD)
    offs_d = tl.arange(0, 2 * HALF_PAD)
    mask_m = start_m + offs_m < n_q
    mask_j = offs_j < HALF
    mask_d = offs_d < 2 * HALF
    j1, j2 = pair_offsets(offs_j, HALF, INTERLEAVED)

    q_freq = tl.load(QF + h * stride_qf_h + offs_j, mask=mask_j & ROTATE_Q, other=0.0)
    q_axis = tl.load(QA + h * stride_qf_h + offs_j, mask=mask_j & ROTATE_Q, other=0)
    q_coords = QC + b * stride_qc_b + start_m * stride_qc_n
    q_rows = Q + b * stride_qb + h * stride_qh + start_m * stride_qn
    q1, q2 = _load_pair_halves(q_rows, offs_m, mask_m, stride_qn, j1, j2, mask_j, stride_qd, q_coords,
                               stride_qc_n, stride_qc_a, q_freq, q_axis, ROTATE_Q)
    do = tl.load(dO + b * stride_dob + h * stride_doh + start_m * stride_don
                 + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod,
                 mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    row0 = pid_bh * n_q + start_m
    lse = tl.load(Lse + row0 + offs_m, mask=mask_m, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(Delta + row0 + offs_m, mask=mask_m, other=0.0)

    k_freq = tl.load(KF + hk * stride_kf_h + offs_j, mask=mask_j & ROTATE_K, other=0.0)
    k_axis = tl.load(KA + hk * stride_kf_h + offs_j, mask=mask_j & ROTATE_K, other=0)
    k_len = n_k
    if HAS_KLENS:
        k_len = tl.minimum(tl.load(KLens + b).to(tl.int32), n_k)
    q_groups = tl.zeros([BLOCK_M], tl.int64)
    k_groups = tl.zeros([BLOCK_N], tl.int64)
    visit = True
    if HAS_GROUPS:
        q_groups = tl.load(QG + b * stride_qg_b + (start_m + offs_m) * stride_qg_n, mask=mask_m, other=0).to(tl.int64)
        q_groups_any = tl.reduce(q_groups, 0, _bit_or)

    dq1 = tl.zeros([BLOCK_M, HALF_PAD], tl.float32)
    dq2 = tl.zeros([BLOCK_M, HALF_PAD], tl.float32)
    for tile_n in range(0, k_len, BLOCK_N):
        start_n = tl.cast(tile_n, tl.int64)
        mask_n = start_n + offs_n < k_len
        if HAS_GROUPS:
            k_groups = tl.load(KG + b * stride_kg_b + (start_n + offs_n) * stride_kg_n, mask=mask_n,
                               other=0).to(tl.int64)
            visit = (q_groups_any & tl.reduce(k_groups, 0, _bit_or)) != 0
        if visit:
            k_rows = K + b * stride_kb + hk * stride_kh + start_n * stride_kn
            k1, k2 = _load_pair_halves(k_rows, offs_n, mask_n, stride_kn, j1, j2, mask_j, stride_kd,
                                       KC + b * stride_kc_b + start_n * stride_kc_n, stride_kc_n, stride_kc_a,
                                       k_freq, k_axis, ROTATE_K)
            v = tl.load(V + b * stride_vb + hk * stride_vh + start_n * stride_vn
                        + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            qk = dot(q1, tl.trans(k1), None, DOT_PRECISION, UPCAST_DOTS)
            qk = dot(q2, tl.trans(k2), qk, DOT_PRECISION, UPCAST_DOTS)
            allowed = mask_n[None, :]
            if HAS_GROUPS:
                allowed = allowed & ((q_groups[:, None] & k_groups[None, :]) != 0)
            p = tl.where(allowed, tl.math.exp2(qk * qk_scale - lse[:, None]), 0.0)
            dp = dot(do, tl.trans(v), None, DOT_PRECISION, UPCAST_DOTS)
            ds = _dot_operand(p * (dp - delta[:, None]), K.dtype.element_ty, UPCAST_DOTS)
            dq1 = dot(ds, k1, dq1, DOT_PRECISION, UPCAST_DOTS)
            dq2 = dot(ds, k2, dq2, DOT_PRECISION, UPCAST_DOTS)

    dq_rows = dQ + b * stride_dqb + h * stride_dqh + start_m * stride_dqn
    _store_pair_halves(dq_rows, offs_m, mask_m, stride_dqn, j1, j2, mask_j, stride_dqd, dq1 * sm_scale,
                       dq2 * sm_scale, q_coords, stride_qc_n, stride_qc_a, q_freq, q_axis, ROTATE_Q, False)


# Shipped configurations per GPU arch (SM major) and padded half head dim:
# (dK/dV BLOCK_M, BLOCK_N, dQ BLOCK_M, BLOCK_N, num_warps, num_stages).  As in the tutorial, the dK/dV
# kernel keeps a tall key tile resident and streams narrow query tiles; the dQ kernel the reverse.
# Compiled ahead of time (bf16, GQA group 2, key lengths; triton 3.8 ptxas; docs/training.md has the table):
# sm_90 D = 32 and 64 spill-free with HGMMA, Q and K rotated in the kernel; D = 128 spill-free with HGMMA for
# pre-rotated Q/K (the QK-norm pre-pass path), ~100 B spilled when the kernel rotates; D = 256 spill-free
# for pre-rotated Q/K but HMMA (16-row tiles).  sm_80 D = 128 spill-free for pre-rotated Q/K; rotating in
# the kernel spills at every head dim tried (48-500 B).  Not yet in `selftest --static`.
BWD_CONFIGS = {
    (9, 16): (32, 64, 64, 32, 4, 2),
    (9, 32): (32, 64, 64, 32, 8, 2),
    (9, 64): (32, 64, 64, 32, 8, 2),
    (9, 128): (16, 32, 32, 16, 8, 1),
    (8, 16): (32, 64, 64, 32, 4, 2),
    (8, 32): (16, 64, 64, 16, 4, 2),
    (8, 64): (16, 32, 32, 16, 4, 1),
    (8, 128): (16, 32, 32, 16, 8, 1),
}
# Pinned under the interpreter (and by tests): few tile iterations keep CPU emulation fast, and the test
# sizes (1, 17, 33, 130, 257) still end in partial tiles.
INTERPRETER_BWD_CONFIG = (32, 32, 32, 32, 1, 1)


def bwd_config(q) -> tuple:
    """The configuration for q's device: pinned under the interpreter, else the shipped one per arch."""
    if _interpreting() or q.device.type != "cuda":
        return INTERPRETER_BWD_CONFIG
    major = torch.cuda.get_device_capability(q.device)[0]
    return BWD_CONFIGS[(9 if major >= 9 else 8, half_pad(q.shape[3]))]


def rope_attention_bwd(dout, q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes,
                       interleaved: bool, *, rotate_q: bool, rotate_k: bool, k_lens, scale: float,
                       q_groups=None, k_groups=None, dlse=None, deterministic: bool = False, config=None):
    """Gradients of :func:`rope_attention_fwd` w.r.t. the *unrotated* q, k, v, from its saved output and LSE.

    dout, out ``[B, Nq, H, D]``; q ``[B, Nq, H, D]``, k/v ``[B, Nk, Hk, D]`` (any strides, one dtype);
    lse float32 ``[B, H, Nq]`` (natural log, ``-inf`` for rows with no key); dlse optional float32
    ``[B, H, Nq]`` (gradient of a returned LSE).  Other arguments as the forward's.  ``deterministic``:
    no atomics (bit-identical runs) for grouped-query heads.  Returns ``(dq, dk, dv)`` in q's dtype and
    shapes, contiguous.
    """
    B, n_q, H, D = q.shape
    n_k, Hk = k.shape[1], k.shape[2]
    group = H // Hk
    block_m1, block_n1, block_m2, block_n2, num_warps, num_stages = config or bwd_config(q)
    upcast = upcast_dots(q.dtype)
    common = dict(HALF=D // 2, HALF_PAD=half_pad(D), INTERLEAVED=interleaved, ROTATE_Q=rotate_q, ROTATE_K=rotate_k,
                  HAS_KLENS=k_lens is not None, HAS_GROUPS=q_groups is not None,
                  DOT_PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32", UPCAST_DOTS=upcast,
                  num_warps=num_warps, num_stages=num_stages)

    lse = lse.contiguous()  # rows are addressed as (b * H + h) * Nq + i
    dlse = dlse.float().contiguous() if dlse is not None else None
    delta = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    _bwd_delta[(triton.cdiv(n_q, block_m2), B * H)](
        out, dout, dlse if dlse is not None else lse, delta, *out.stride(), *dout.stride(), n_q, H,
        HEAD_DIM=D, D_PAD=2 * half_pad(D), HAS_DLSE=dlse is not None, BLOCK_M=block_m2)

    def batch_stride(x):  # broadcast a batch (or head) of 1 with stride 0
        return x.stride(0) if x.shape[0] > 1 else 0

    has_groups = q_groups is not None
    tables = (q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, k_lens if k_lens is not None else q_freqs,
              q_groups if has_groups else q_axes, k_groups if has_groups else q_axes)
    side_strides = (batch_stride(q_coords), q_coords.stride(1), q_coords.stride(2),
                    batch_stride(k_coords), k_coords.stride(1), k_coords.stride(2),
                    batch_stride(q_freqs), batch_stride(k_freqs),
                    batch_stride(q_groups) if has_groups else 0, q_groups.stride(1) if has_groups else 0,
                    batch_stride(k_groups) if has_groups else 0, k_groups.stride(1) if has_groups else 0,
                    n_q, n_k, H, group, scale * LOG2E, scale)

    atomic = group > 1 and not deterministic
    grad_dtype = torch.float32 if atomic or upcast else q.dtype
    dk = (torch.zeros if atomic else torch.empty)((B, n_k, Hk, D), device=q.device, dtype=grad_dtype)
    dv = (torch.zeros if atomic else torch.empty)((B, n_k, Hk, D), device=q.device, dtype=grad_dtype)
    _bwd_dkdv[(triton.cdiv(n_k, block_n1), B * (H if atomic else Hk))](
        q, k, v, dout, dk, dv, lse, delta, *tables,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(), *side_strides,
        ATOMIC=atomic, BLOCK_M=block_m1, BLOCK_N=block_n1, **common)

    dq = torch.empty((B, n_q, H, D), device=q.device, dtype=torch.float32 if upcast else q.dtype)
    _bwd_dq[(triton.cdiv(n_q, block_m2), B * H)](
        q, k, v, dout, dq, lse, delta, *tables,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(), *side_strides,
        BLOCK_M=block_m2, BLOCK_N=block_n2, **common)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)
