"""Fused coordinate-RoPE attention, backward (FlashAttention-2 style, scores recomputed from the LSE).

Three kernels, as in Triton's fused-attention tutorial:

1. ``_bwd_delta``: ``delta = rowsum(dO * O) - dLSE`` per query row (fp32);
2. ``_bwd_dkdv``: one program per key tile and head, looping over query tiles: ``dV += P^T dO``,
   ``dK += dS^T Q``;
3. ``_bwd_dq``: one program per query tile, looping over key tiles: ``dQ += dS K``.

Output split (the ``split`` entry of a configuration; sm_90 at D = 256): the dK/dV kernel is launched twice, one
launch computing only ``dV`` (``DV``), the other only ``dK`` (``DK``), so each program holds one fp32 accumulator
and the wgmma tiles fit in registers; and both gradient kernels apply the layout-mask tile skip to the loads only
(``SKIP_PRODUCTS`` off), which keeps their loops software-pipelined.

The kernels never rotate: the sides the forward rotated are rotated once by the pre-pass kernel
(``kernels/rope_norm.py``, exactly as the forward rotates them: fp32, rounded to the input dtype), so ``P`` is
recomputed bit-for-bit the same way, and the gradients of the rotated tensors are turned into gradients of
the inputs by the transpose rotation ``R(phi)^T = R(-phi)`` (the same kernel with negated frequencies, fp32)
in one elementwise pass.  Plain tiles, fewer registers: every shipped configuration compiles spill-free.

Block sparsity (a :class:`~baton_fast.block_mask.BlockMask`): the dQ kernel walks each query block's visit
lists, the dK/dV kernel the transposed lists (the query blocks that visit each key block,
``BlockMask.query_lists``); partial blocks apply their token tile, full blocks only the key-length bound.  Tiles
may be smaller than the mask's blocks: each mask block is walked in whole tiles.

Grouped-query heads: dK and dV sum over each group's query heads, added into zeroed fp32 buffers.  The fast
mode runs one dK/dV program per *query* head, all in one launch (the order of the additions varies from run to
run); the deterministic mode launches the kernel once per member of the group, in order, one program per *key*
head, so each output row gets one addition per launch, always in the same order.  (A program looping over its
group's heads spilled on sm_90 at D = 128 and 256 when walking a BlockMask's lists: docs/training.md.)
All base offsets (batch, head, tile start) are computed in 64 bits.

Interpreter work-around: under ``TRITON_INTERPRET=1`` the CPU emulation of ``tl.dot`` multiplies the raw
bit patterns of bf16 operands, so with ``UPCAST_DOTS`` the forward's :func:`dot` widens the dot operands to fp32 first (set
only when interpreting bf16; compiled kernels never take that branch).  The interpreter also truncates (rather
than rounds) fp32 -> bf16 conversions, so there P and dS are rounded to nearest-even by hand
(:func:`_dot_operand`) and the gradients are written to fp32 buffers and rounded by PyTorch.
"""
import math

import torch
import triton
import triton.language as tl

from .rope_attention import _bit_or, _block_mask_args, _interpreting, dot, half_pad, upcast_dots
from .rope_math import key_length
from .rope_norm import rmsnorm_rope_fwd

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
def _program_heads(pid_bh, num_heads, group, member, PER_KEY_HEAD: tl.constexpr):
    """``(b, query head, key head)`` of program row ``pid_bh`` (int64): one query head per row, or with
    ``PER_KEY_HEAD`` one key head per row and its group's query head number ``member`` (the deterministic mode
    launches the dK/dV kernel once per member, in order)."""
    pid_bh = pid_bh.to(tl.int64)
    if PER_KEY_HEAD:
        b = pid_bh // (num_heads // group)
        hk = pid_bh % (num_heads // group)
        h = hk * group + member
    else:
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        hk = h // group
    return b, h, hk


@triton.jit
def _load_rows(base, start, offs, n, stride_n, offs_d, mask_d, stride_d):
    """The ``[BLOCK, D_PAD]`` tile of rows ``start + offs`` (int64 ``start``; zeros from row ``n`` and past the
    head dim); ``base`` points at row 0 of the (batch, head)."""
    ptrs = base + start * stride_n + offs[:, None] * stride_n + offs_d[None, :] * stride_d
    return tl.load(ptrs, mask=((start + offs) < n)[:, None] & mask_d[None, :], other=0.0)


@triton.jit
def _row_stats(Lse, Delta, row, offs, n):
    """``(lse in base 2, delta)``, fp32, of query rows ``row + offs`` (``row``: the tile's first row); rows past
    ``n`` and rows with no key (``lse = -inf``) get ``+inf``, so that their ``P`` is 0."""
    mask = offs < n
    lse = tl.load(Lse + row + offs, mask=mask, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    return lse, tl.load(Delta + row + offs, mask=mask, other=0.0)


@triton.jit
def _tile_rows(x_base, y_base, start, offs, n, stride_xn, stride_xd, stride_yn, stride_yd, offs_d, mask_d):
    """The ``[BLOCK, D_PAD]`` tiles of rows ``start + offs`` of two tensors (Q and dO, or K and V); rows from
    ``n`` are zeros (not read)."""
    return (_load_rows(x_base, start, offs, n, stride_xn, offs_d, mask_d, stride_xd),
            _load_rows(y_base, start, offs, n, stride_yn, offs_d, mask_d, stride_yd))


@triton.jit
def _query_tile(q_base, do_base, Lse, Delta, stats_row, start_m, offs_m, n, stride_qn, stride_qd, stride_don,
                stride_dod, offs_d, mask_d):
    """``(q, do, lse, delta)`` of query rows ``start_m + offs_m`` (:func:`_tile_rows`, :func:`_row_stats`): rows
    from ``n`` are zeros, not read, and get ``P = 0``."""
    q, do = _tile_rows(q_base, do_base, start_m, offs_m, n, stride_qn, stride_qd, stride_don, stride_dod, offs_d,
                       mask_d)
    lse, delta = _row_stats(Lse, Delta, stats_row + start_m, offs_m, n - start_m)
    return q, do, lse, delta


@triton.jit
def _dkdv_tile(dk, dv, k, v, q, do, lse, delta, allowed, qk_scale, DOT_PRECISION: tl.constexpr,
               UPCAST_DOTS: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr):
    """One query tile's share of a key tile's gradients: ``dk`` (with ``DK``), ``dv`` (with ``DV``) fp32
    ``[BLOCK_N, D_PAD]`` updated from the key tile ``k``, ``v`` and the query tile ``q``, ``do`` ``[BLOCK_M,
    D_PAD]`` with its row statistics (:func:`_row_stats`); ``allowed`` bool ``[BLOCK_N, BLOCK_M]``.  The gradient
    not asked for is returned unchanged and its products are not computed (``dv`` needs ``P`` alone, ``dk`` ``P``
    and ``dP = dO V^T``)."""
    qk_t = dot(k, tl.trans(q), None, DOT_PRECISION, UPCAST_DOTS)
    p_t = tl.where(allowed, tl.math.exp2(qk_t * qk_scale - lse[None, :]), 0.0)
    if DV:
        dv = dot(_dot_operand(p_t, q.dtype, UPCAST_DOTS), do, dv, DOT_PRECISION, UPCAST_DOTS)
    if DK:
        dp_t = dot(v, tl.trans(do), None, DOT_PRECISION, UPCAST_DOTS)
        ds_t = _dot_operand(p_t * (dp_t - delta[None, :]), q.dtype, UPCAST_DOTS)
        dk = dot(ds_t, q, dk, DOT_PRECISION, UPCAST_DOTS)
    return dk, dv


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k, v, allowed, qk_scale, DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    """One key tile's share of a query tile's ``dq`` (fp32 ``[BLOCK_M, D_PAD]``): the key tile ``k``, ``v``
    ``[BLOCK_N, D_PAD]``, ``allowed`` bool ``[BLOCK_M, BLOCK_N]``."""
    qk = dot(q, tl.trans(k), None, DOT_PRECISION, UPCAST_DOTS)
    p = tl.where(allowed, tl.math.exp2(qk * qk_scale - lse[:, None]), 0.0)
    dp = dot(do, tl.trans(v), None, DOT_PRECISION, UPCAST_DOTS)
    ds = _dot_operand(p * (dp - delta[:, None]), k.dtype, UPCAST_DOTS)
    return dot(ds, k, dq, DOT_PRECISION, UPCAST_DOTS)


@triton.jit
def _layout_tile(G, start, offs, n, stride_n, resident, resident_any, allowed, SKIP_PRODUCTS: tl.constexpr):
    """The layout-mask tile skip of a streamed tile (rows ``start + offs`` below ``n``; ``G`` the group bits of its
    batch item, int64 bitmasks) against the program's resident tile (its bits ``resident`` ``[BLOCK]`` and their
    OR ``resident_any``): ``(allowed & the pairs sharing a group, visit, rows_end)``.  With ``SKIP_PRODUCTS``
    ``visit`` says whether any pair shares a group and ``rows_end`` is ``n``; without, ``visit`` is a compile-time
    True (no branch, so the loop stays software-pipelined) and ``rows_end`` is 0 for a tile with no shared group:
    its rows are not read and its products add exact zeros (P = 0)."""
    streamed = tl.load(G + (start + offs) * stride_n, mask=start + offs < n, other=0).to(tl.int64)
    shared = (resident_any & tl.reduce(streamed, 0, _bit_or)) != 0
    allowed = allowed & ((resident[:, None] & streamed[None, :]) != 0)
    if SKIP_PRODUCTS:
        return allowed, shared, n
    else:
        return allowed, True, tl.where(shared, n, 0)


@triton.jit
def _list_rows(b, h, block, stride_bm_b, stride_bm_h, stride_bmp_b, stride_bmp_h, stride_bmp_m, stride_bmf_b,
               stride_bmf_h, stride_bmf_m):
    """Offsets of one visit-list row (a block of one batch item and head) in the count, partial and full lists."""
    return (b * stride_bm_b + h * stride_bm_h + block,
            b * stride_bmp_b + h * stride_bmp_h + block * stride_bmp_m,
            b * stride_bmf_b + h * stride_bmf_h + block * stride_bmf_m)


@triton.jit
def _write_gradient(ptrs, x, mask, ACCUMULATE: tl.constexpr):
    """A key tile's gradient ``x`` (fp32) written to ``ptrs``, rounded to the output's dtype; with ``ACCUMULATE``
    added to the fp32 output (zeroed by the launcher) by an atomic add."""
    if ACCUMULATE:
        tl.atomic_add(ptrs, x, mask=mask, sem="relaxed")
    else:
        tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)


# The two gradient kernels share their arguments up to the outputs: inputs, statistics, key lengths, layout
# masks, the visit lists (dQ: per query block; dK/dV: per key block, BlockMask.query_lists), then their
# strides, then the outputs' strides.
@triton.jit(do_not_specialize=["member"])
def _bwd_dkdv(
    Q, K, V, dO, Lse, Delta, KLens, QG, KG, Num, Idx, MaskId, FullNum, FullIdx, MaskPool, dK, dV,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_qg_b, stride_qg_n, stride_kg_b, stride_kg_n,
    stride_bm_b, stride_bm_h, stride_bmp_b, stride_bmp_h, stride_bmp_m, stride_bmf_b, stride_bmf_h, stride_bmf_m,
    stride_dkb, stride_dkn, stride_dkh, stride_dkd,
    stride_dvb, stride_dvn, stride_dvh, stride_dvd,
    n_q, n_k, num_heads, group, qk_scale, sm_scale, member,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, HAS_KLENS: tl.constexpr, HAS_GROUPS: tl.constexpr,
    HAS_BLOCK_MASK: tl.constexpr, MASK_BQ: tl.constexpr, MASK_BK: tl.constexpr, ATOMIC: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SKIP_PRODUCTS: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
):
    """One program per key tile and query head (``ATOMIC``), or per key tile and key head, for the group's query
    head ``member``: ``dV = sum P^T dO`` (with ``DV``), ``dK = scale * sum dS^T Q`` (with ``DK``) over the query
    tiles that see it.  With ``ACCUMULATE`` (grouped-query heads) each program adds its head's share into the fp32
    outputs: concurrently with ``ATOMIC``, else one program per output row per launch, the launches (one per
    member) in order.  The output split launches the kernel once per gradient, each holding one fp32
    accumulator."""
    b, h, hk = _program_heads(tl.program_id(1), num_heads, group, member, not ATOMIC)
    start_n = tl.program_id(0).to(tl.int64) * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < HEAD_DIM
    k_len = key_length(KLens, b, n_k, HAS_KLENS)
    keys = start_n + offs_n < k_len
    k, v = _tile_rows(K + b * stride_kb + hk * stride_kh, V + b * stride_vb + hk * stride_vh, start_n, offs_n, k_len,
                      stride_kn, stride_kd, stride_vn, stride_vd, offs_d, mask_d)
    if HAS_GROUPS:
        k_groups = tl.load(KG + b * stride_kg_b + (start_n + offs_n) * stride_kg_n, mask=keys, other=0).to(tl.int64)
        k_groups_any = tl.reduce(k_groups, 0, _bit_or)
    if HAS_BLOCK_MASK:  # the transposed lists of the mask's key block holding this tile (BLOCK_N divides block_k)
        key_block = start_n // MASK_BK
        tile_offsets = offs_m[None, :] * MASK_BK + ((tl.program_id(0) * BLOCK_N) % MASK_BK + offs_n)[:, None]

    dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = dO + b * stride_dob + h * stride_doh
    stats_row = (b * num_heads + h) * n_q
    if HAS_BLOCK_MASK:  # partial query blocks with their token tile (read transposed), then full ones
        row, partial_row, full_row = _list_rows(b, h, key_block, stride_bm_b, stride_bm_h, stride_bmp_b,
                                                stride_bmp_h, stride_bmp_m, stride_bmf_b, stride_bmf_h, stride_bmf_m)
        for i in range(0, tl.load(Num + row)):
            q_block = tl.load(Idx + partial_row + i).to(tl.int64)
            tile = MaskPool + tl.load(MaskId + partial_row + i).to(tl.int64) * (MASK_BQ * MASK_BK) + tile_offsets
            for sub in range(0, MASK_BQ, BLOCK_M):
                allowed = keys[:, None] & (tl.load(tile + sub * MASK_BK) != 0)
                q, do, lse, delta = _query_tile(q_base, do_base, Lse, Delta, stats_row, q_block * MASK_BQ + sub,
                                                offs_m, n_q, stride_qn, stride_qd, stride_don, stride_dod, offs_d,
                                                mask_d)
                dk, dv = _dkdv_tile(dk, dv, k, v, q, do, lse, delta, allowed, qk_scale, DOT_PRECISION,
                                    UPCAST_DOTS, DK, DV)
        for i in range(0, tl.load(FullNum + row)):
            q_block = tl.load(FullIdx + full_row + i).to(tl.int64)
            for sub in range(0, MASK_BQ, BLOCK_M):
                q, do, lse, delta = _query_tile(q_base, do_base, Lse, Delta, stats_row, q_block * MASK_BQ + sub,
                                                offs_m, n_q, stride_qn, stride_qd, stride_don, stride_dod, offs_d,
                                                mask_d)
                dk, dv = _dkdv_tile(dk, dv, k, v, q, do, lse, delta, keys[:, None], qk_scale, DOT_PRECISION,
                                    UPCAST_DOTS, DK, DV)
    else:
        q_end = tl.where(start_n < k_len, n_q, 0)  # a key tile wholly past k_len: its gradients are zero
        for tile_m in range(0, q_end, BLOCK_M):
            start_m = tl.cast(tile_m, tl.int64)
            allowed = keys[:, None]
            visit = True
            rows_end = n_q
            if HAS_GROUPS:
                allowed, visit, rows_end = _layout_tile(QG + b * stride_qg_b, start_m, offs_m, n_q, stride_qg_n,
                                                        k_groups, k_groups_any, allowed, SKIP_PRODUCTS)
            if visit:
                q, do, lse, delta = _query_tile(q_base, do_base, Lse, Delta, stats_row, start_m, offs_m, rows_end,
                                                stride_qn, stride_qd, stride_don, stride_dod, offs_d, mask_d)
                dk, dv = _dkdv_tile(dk, dv, k, v, q, do, lse, delta, allowed, qk_scale, DOT_PRECISION,
                                    UPCAST_DOTS, DK, DV)

    # keys past k_len get a zero gradient (stored: without grouped-query heads the buffers are not pre-zeroed)
    mask = (start_n + offs_n < n_k)[:, None] & mask_d[None, :]
    rows = start_n * stride_dkn + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    dk_ptrs = dK + b * stride_dkb + hk * stride_dkh + rows
    dv_ptrs = dV + b * stride_dvb + hk * stride_dvh + start_n * stride_dvn + offs_n[:, None] * stride_dvn \
        + offs_d[None, :] * stride_dvd
    if DK:
        _write_gradient(dk_ptrs, dk * sm_scale, mask, ACCUMULATE)
    if DV:
        _write_gradient(dv_ptrs, dv, mask, ACCUMULATE)


# ``group`` not specialised: Triton would compile group 1 (plain multi-head attention) apart, though the kernel
# reads it once per program (``h // group``); one dQ kernel serves every group (the one the static check compiles).
@triton.jit(do_not_specialize=["group"])
def _bwd_dq(
    Q, K, V, dO, Lse, Delta, KLens, QG, KG, Num, Idx, MaskId, FullNum, FullIdx, MaskPool, dQ,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_dob, stride_don, stride_doh, stride_dod,
    stride_qg_b, stride_qg_n, stride_kg_b, stride_kg_n,
    stride_bm_b, stride_bm_h, stride_bmp_b, stride_bmp_h, stride_bmp_m, stride_bmf_b, stride_bmf_h, stride_bmf_m,
    stride_dqb, stride_dqn, stride_dqh, stride_dqd,
    n_q, n_k, num_heads, group, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, HAS_KLENS: tl.constexpr, HAS_GROUPS: tl.constexpr,
    HAS_BLOCK_MASK: tl.constexpr, MASK_BQ: tl.constexpr, MASK_BK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SKIP_PRODUCTS: tl.constexpr,
):
    """One program per query tile and head: ``dQ = scale * sum dS K`` over the key tiles it sees."""
    b, h, hk = _program_heads(tl.program_id(1), num_heads, group, 0, False)
    start_m = tl.program_id(0).to(tl.int64) * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    mask_d = offs_d < HEAD_DIM
    k_len = key_length(KLens, b, n_k, HAS_KLENS)
    q, do, lse, delta = _query_tile(Q + b * stride_qb + h * stride_qh, dO + b * stride_dob + h * stride_doh, Lse, Delta,
                                    (b * num_heads + h) * n_q, start_m, offs_m, n_q, stride_qn, stride_qd, stride_don,
                                    stride_dod, offs_d, mask_d)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh

    dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    if HAS_BLOCK_MASK:
        # the visit lists of the mask's query block holding this tile (BLOCK_M divides block_q): partial key
        # blocks with their token tile, then full ones, each in BLOCK_N-wide sub-tiles
        row, partial_row, full_row = _list_rows(b, h, start_m // MASK_BQ, stride_bm_b, stride_bm_h, stride_bmp_b,
                                                stride_bmp_h, stride_bmp_m, stride_bmf_b, stride_bmf_h, stride_bmf_m)
        tile_offsets = ((tl.program_id(0) * BLOCK_M) % MASK_BQ + offs_m)[:, None] * MASK_BK + offs_n[None, :]
        for i in range(0, tl.load(Num + row)):
            key_block = tl.load(Idx + partial_row + i).to(tl.int64)
            tile = MaskPool + tl.load(MaskId + partial_row + i).to(tl.int64) * (MASK_BQ * MASK_BK) + tile_offsets
            for sub in range(0, MASK_BK, BLOCK_N):
                start_n = key_block * MASK_BK + sub
                allowed = (start_n + offs_n < k_len)[None, :] & (tl.load(tile + sub) != 0)
                k, v = _tile_rows(k_base, v_base, start_n, offs_n, k_len, stride_kn, stride_kd, stride_vn, stride_vd,
                                  offs_d, mask_d)
                dq = _dq_tile(dq, q, do, lse, delta, k, v, allowed, qk_scale, DOT_PRECISION, UPCAST_DOTS)
        for i in range(0, tl.load(FullNum + row)):
            key_block = tl.load(FullIdx + full_row + i).to(tl.int64)
            for sub in range(0, MASK_BK, BLOCK_N):
                start_n = key_block * MASK_BK + sub
                k, v = _tile_rows(k_base, v_base, start_n, offs_n, k_len, stride_kn, stride_kd, stride_vn, stride_vd,
                                  offs_d, mask_d)
                dq = _dq_tile(dq, q, do, lse, delta, k, v, (start_n + offs_n < k_len)[None, :], qk_scale,
                              DOT_PRECISION, UPCAST_DOTS)
    else:
        if HAS_GROUPS:
            q_groups = tl.load(QG + b * stride_qg_b + (start_m + offs_m) * stride_qg_n, mask=start_m + offs_m < n_q,
                               other=0).to(tl.int64)
            q_groups_any = tl.reduce(q_groups, 0, _bit_or)
        for tile_n in range(0, k_len, BLOCK_N):
            start_n = tl.cast(tile_n, tl.int64)
            allowed = (start_n + offs_n < k_len)[None, :]
            visit = True
            rows_end = k_len
            if HAS_GROUPS:
                allowed, visit, rows_end = _layout_tile(KG + b * stride_kg_b, start_n, offs_n, k_len, stride_kg_n,
                                                        q_groups, q_groups_any, allowed, SKIP_PRODUCTS)
            if visit:
                k, v = _tile_rows(k_base, v_base, start_n, offs_n, rows_end, stride_kn, stride_kd, stride_vn,
                                  stride_vd, offs_d, mask_d)
                dq = _dq_tile(dq, q, do, lse, delta, k, v, allowed, qk_scale, DOT_PRECISION, UPCAST_DOTS)

    dq_ptrs = dQ + b * stride_dqb + h * stride_dqh + start_m * stride_dqn + offs_m[:, None] * stride_dqn \
        + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, (dq * sm_scale).to(dQ.dtype.element_ty), mask=(start_m + offs_m < n_q)[:, None] & mask_d[None, :])

# Shipped configurations per GPU arch (SM major) and padded half head dim: (dK/dV BLOCK_M, BLOCK_N, dQ BLOCK_M,
# BLOCK_N, num_warps, num_stages, split).  As in the tutorial, the dK/dV kernel keeps a tall key tile resident and
# streams narrow query tiles; the dQ kernel the reverse.  The kernels never rotate (Q and K are rotated by the
# pre-pass kernel first), so one list serves every RoPE family; each entry is compiled by `baton-fast selftest
# --static` (spill-free, HGMMA on sm_90 / HMMA on sm_80, 64-bit addresses; docs/training.md has the table).
# ``split`` (sm_90 at D = 256): a 64-key wgmma tile cannot hold K, V and both fp32 accumulators (every such tile
# spilled 108-4128 B), so the dK/dV kernel is launched twice, once per gradient (dV: S, P, P^T dO; dK: S, dP, dS,
# dS^T Q: 5 products instead of 4), each program holding one fp32 64 x 256 accumulator; and the layout-mask tile
# skip applies to the loads only (a skipped tile's products run on zeros), since the skip branch turns off software
# pipelining and the unpipelined loops spilled 52-132 B at these tiles.  sm_8x at D = 32 / 64: the former (16 or 32,
# 64, 64, ..., 4, 2) tiles spilled 8 B in one loop variant.
BWD_CONFIGS = {
    (9, 16): (32, 64, 64, 32, 4, 2, False),
    (9, 32): (32, 64, 64, 32, 8, 2, False),
    (9, 64): (32, 64, 64, 32, 8, 2, False),
    (9, 128): (16, 64, 64, 16, 8, 2, True),
    (8, 16): (32, 64, 64, 32, 4, 3, False),
    (8, 32): (16, 64, 64, 16, 8, 2, False),
    (8, 64): (16, 32, 32, 16, 4, 1, False),
    (8, 128): (16, 32, 32, 16, 8, 1, False),
}
# Pinned under the interpreter (and by tests): few tile iterations keep CPU emulation fast, and the test
# sizes (1, 17, 33, 130, 257) still end in partial tiles.
INTERPRETER_BWD_CONFIG = (16, 32, 32, 16, 1, 1, False)


def bwd_config(q, block_mask=None) -> tuple:
    """The configuration for q's device: pinned under the interpreter, else the shipped one per arch; with a
    block mask, tiles no larger than its blocks (the kernels walk each mask block in whole tiles)."""
    if _interpreting() or q.device.type != "cuda":
        config = INTERPRETER_BWD_CONFIG
    else:
        major = torch.cuda.get_device_capability(q.device)[0]
        config = BWD_CONFIGS[(9 if major >= 9 else 8, half_pad(q.shape[3]))]
    if block_mask is None:
        return config
    bq, bk = block_mask.block_q, block_mask.block_k
    return (min(config[0], bq), min(config[1], bk), min(config[2], bq), min(config[3], bk), *config[4:])


def _rotated(x, coords, freqs, axes, interleaved: bool, inverse: bool = False):
    """x rotated by its RoPE table (the pre-pass kernel, in x's dtype); ``inverse``: by the transpose rotation
    ``R(phi)^T = R(-phi)``, the rotation by negated angles."""
    return rmsnorm_rope_fwd(x, coords, -freqs if inverse else freqs, axes, interleaved)


def rope_attention_bwd(dout, q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes,
                       interleaved: bool, *, rotate_q: bool, rotate_k: bool, k_lens, scale: float,
                       q_groups=None, k_groups=None, block_mask=None, dlse=None, deterministic: bool = False,
                       config=None):
    """Gradients of :func:`rope_attention_fwd` w.r.t. the *unrotated* q, k, v, from its saved output and LSE.

    dout, out ``[B, Nq, H, D]``; q ``[B, Nq, H, D]``, k/v ``[B, Nk, Hk, D]`` (any strides, one dtype);
    lse float32 ``[B, H, Nq]`` (natural log, ``-inf`` for rows with no key); dlse optional float32
    ``[B, H, Nq]`` (gradient of a returned LSE); block_mask optional
    :class:`~baton_fast.block_mask.BlockMask` (checked; its transposed lists are built once per mask).  Other
    arguments as the forward's.  ``deterministic``: bit-identical runs for grouped-query heads (the
    group's query heads added in a fixed order, one launch each).

    The sides the forward rotated are rotated once by the pre-pass kernel (exactly as the forward rotated them:
    fp32, rounded to the input dtype), the gradient kernels run on the rotated tensors, and the gradients of the
    rotated sides are rotated back by ``R(-phi)`` in fp32.  Returns ``(dq, dk, dv)`` in q's dtype and shapes,
    contiguous.
    """
    if rotate_q:
        q = _rotated(q, q_coords, q_freqs, q_axes, interleaved)
    if rotate_k:
        k = _rotated(k, k_coords, k_freqs, k_axes, interleaved)
    dq, dk, dv = attention_bwd(dout, q, k, v, out, lse, k_lens=k_lens, scale=scale, q_groups=q_groups, k_groups=k_groups,
                               block_mask=block_mask, dlse=dlse, deterministic=deterministic, config=config,
                               fp32_grads=(rotate_q, rotate_k))
    if rotate_q:
        dq = _rotated(dq, q_coords, q_freqs, q_axes, interleaved, inverse=True)
    if rotate_k:
        dk = _rotated(dk, k_coords, k_freqs, k_axes, interleaved, inverse=True)
    return dq.to(q.dtype), dk.to(q.dtype), dv.to(q.dtype)


def attention_bwd(dout, q, k, v, out, lse, *, k_lens, scale: float, q_groups=None, k_groups=None, block_mask=None,
                  dlse=None, deterministic: bool = False, config=None, fp32_grads=(False, False)):
    """``(dq, dk, dv)`` of softmax attention on already rotated q, k (the gradient kernels; arguments as
    :func:`rope_attention_bwd`'s).  ``dq``, ``dk`` are float32 where ``fp32_grads`` says so (they are rotated
    back next), and wherever grouped-query sums or the interpreter's bf16 work-around need it; else in q's dtype."""
    B, n_q, H, D = q.shape
    n_k, Hk = k.shape[1], k.shape[2]
    group = H // Hk
    block_m1, block_n1, block_m2, block_n2, num_warps, num_stages, split = config or bwd_config(q, block_mask)
    upcast = upcast_dots(q.dtype)
    common = dict(HEAD_DIM=D, D_PAD=2 * half_pad(D), HAS_KLENS=k_lens is not None, HAS_GROUPS=q_groups is not None,
                  HAS_BLOCK_MASK=block_mask is not None,
                  MASK_BQ=block_mask.block_q if block_mask is not None else 16,
                  MASK_BK=block_mask.block_k if block_mask is not None else 16,
                  DOT_PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32", UPCAST_DOTS=upcast,
                  SKIP_PRODUCTS=not split, num_warps=num_warps, num_stages=num_stages)

    lse = lse.contiguous()  # rows are addressed as (b * H + h) * Nq + i
    dlse = dlse.float().contiguous() if dlse is not None else None
    delta = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    _bwd_delta[(triton.cdiv(n_q, block_m2), B * H)](
        out, dout, dlse if dlse is not None else lse, delta, *out.stride(), *dout.stride(), n_q, H,
        HEAD_DIM=D, D_PAD=2 * half_pad(D), HAS_DLSE=dlse is not None, BLOCK_M=block_m2)

    def batch_stride(x):  # broadcast a batch of 1 with stride 0
        return x.stride(0) if x.shape[0] > 1 else 0

    has_groups = q_groups is not None
    inputs = (q, k, v, dout, lse, delta, k_lens if k_lens is not None else lse,
              q_groups if has_groups else lse, k_groups if has_groups else lse)
    strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(),
               batch_stride(q_groups) if has_groups else 0, q_groups.stride(1) if has_groups else 0,
               batch_stride(k_groups) if has_groups else 0, k_groups.stride(1) if has_groups else 0)
    scalars = (n_q, n_k, H, group, scale * LOG2E, scale)

    # grouped-query heads: dK, dV are sums over each group's query heads, added into zeroed fp32 buffers, by
    # atomics (one program per query head) or in deterministic mode by one launch per group member, in order
    atomic = group > 1 and not deterministic
    accumulate = group > 1
    fp32_q, fp32_k = (flag or upcast for flag in fp32_grads)
    k_dtype = torch.float32 if accumulate or fp32_k else q.dtype
    dk = (torch.zeros if accumulate else torch.empty)((B, n_k, Hk, D), device=q.device, dtype=k_dtype)
    dv = (torch.zeros if accumulate else torch.empty)((B, n_k, Hk, D), device=q.device,
                                                      dtype=torch.float32 if accumulate or upcast else q.dtype)
    lists, list_strides = _block_mask_args(block_mask, lse, by_key_block=True)
    for grads in ((False, True), (True, False)) if split else ((True, True),):  # (DK, DV) of each launch
        for member in range(1 if atomic else group):
            _bwd_dkdv[(triton.cdiv(n_k, block_n1), B * (H if atomic else Hk))](
                *inputs, *lists, dk, dv, *strides, *list_strides, *dk.stride(), *dv.stride(), *scalars, member,
                ATOMIC=atomic, ACCUMULATE=accumulate, BLOCK_M=block_m1, BLOCK_N=block_n1, DK=grads[0], DV=grads[1],
                **common)

    dq = torch.empty((B, n_q, H, D), device=q.device, dtype=torch.float32 if fp32_q else q.dtype)
    lists, list_strides = _block_mask_args(block_mask, lse)
    _bwd_dq[(triton.cdiv(n_q, block_m2), B * H)](
        *inputs, *lists, dq, *strides, *list_strides, *dq.stride(), *scalars,
        BLOCK_M=block_m2, BLOCK_N=block_n2, **common)
    return dq, dk, dv
