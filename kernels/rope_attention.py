"""Fused coordinate-RoPE attention, forward (flash-attention style online softmax).

Q is split into the two halves of its rotary pairs, ``q1 [BLOCK_M, D/2]`` and
``q2 [BLOCK_M, D/2]``, rotated once in the prologue from the tokens' coordinates, and
kept that way: ``q . k = q1 . k1 + q2 . k2``, so the score is two dots over the
half-width and rotated Q never has to be re-interleaved.  K is rotated in the loop
(``ROTATE_K``) or read already rotated (cached plan K, or the QK-norm pre-pass).
Softmax runs in base 2 with fp32 statistics and accumulator.

Addresses: batch offsets are computed in 64 bits (the batch index cast to int64, as Triton's
fused-attention tutorial does): ``b * stride_b`` passes 2^31 elements at real sizes (K of Wan-14B at 720p
from batch 6), and a 32-bit product would wrap.  Head and row offsets (``h * stride_h``, ``n * stride_n``)
stay 32-bit, which is exact while every tensor's offsets within one batch item stay below 2^31 elements;
when one reaches it the launcher sets ``WIDE_ROWS`` (:func:`wide_rows`) and they are 64-bit too.  Not by
default: 64-bit row vectors in the key loop cost registers (the heaviest shipped tile would spill).

Interpreter work-around: under ``TRITON_INTERPRET=1`` the CPU emulation of ``tl.dot`` multiplies the raw
bit patterns of bf16 operands, so with ``UPCAST_DOTS`` (set only when interpreting bf16, see
:func:`upcast_dots`) the dot operands are widened to fp32 first: exact, since every bf16 value is an fp32
value and bf16 x bf16 products fit fp32's mantissa; the accumulation is fp32 either way.  Compiled
kernels never take that branch.
"""
import math

import torch
import triton
import triton.language as tl

from .rope_math import key_length, pair_offsets, rope_table, rotate_pairs


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _in_batch(offs, WIDE_ROWS: tl.constexpr):
    """Head or row indices as used in offsets within one batch item: int64 with ``WIDE_ROWS`` (module
    docstring)."""
    if WIDE_ROWS:
        return offs.to(tl.int64)
    else:
        return offs


@triton.jit
def dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    """``acc + a @ b`` with an fp32 accumulator (``acc`` None: ``a @ b``); see the module docstring for
    ``UPCAST_DOTS``."""
    if UPCAST_DOTS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _attend_tile(q1, q2, m_i, l_i, acc, K, V, KC, k_base, v_base, rows_n, mask_n, mask_j, offs_d, mask_d,
                 j1, j2, k_freq, k_axis, b, stride_kn, stride_kd, stride_vn, stride_vd, stride_kc_b, stride_kc_n,
                 stride_kc_a, qk_scale, allowed, ROTATE_K: tl.constexpr, MASK_SCORES: tl.constexpr,
                 MAY_BE_EMPTY: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOTS: tl.constexpr):
    """One online-softmax step over a key tile: returns the updated ``(m_i, l_i, acc)``.  ``k_base`` /
    ``v_base`` point at key row 0 of the (batch, head), ``rows_n`` are the tile's key indices.  With
    ``MASK_SCORES`` the scores outside ``allowed`` (bool ``[BLOCK_M, BLOCK_N]``) are dropped; ``MAY_BE_EMPTY``:
    a row may have no allowed key in this tile and none before it."""
    # K as pair halves, transposed: [HALF_PAD, BLOCK_N]
    k_cols = k_base + rows_n[None, :] * stride_kn
    mask_k = mask_j[:, None] & mask_n[None, :]
    k1 = tl.load(k_cols + j1[:, None] * stride_kd, mask=mask_k, other=0.0)
    k2 = tl.load(k_cols + j2[:, None] * stride_kd, mask=mask_k, other=0.0)
    if ROTATE_K:
        k_coords = KC + b * stride_kc_b + rows_n[None, :] * stride_kc_n
        # not r1/r2: a name bound before the loop would become loop-carried with the Q tile's shape
        k1, k2 = rotate_pairs(k1.to(tl.float32), k2.to(tl.float32), k_coords,
                              k_axis[:, None] * stride_kc_a, k_freq[:, None], mask_k)
        k1 = k1.to(K.dtype.element_ty)
        k2 = k2.to(K.dtype.element_ty)
    qk = dot(q1, k1, None, DOT_PRECISION, UPCAST_DOTS)
    qk = dot(q2, k2, qk, DOT_PRECISION, UPCAST_DOTS)
    if MASK_SCORES:
        qk = tl.where(allowed, qk * qk_scale, float("-inf"))
    else:  # a full block: every pair allowed, no per-token mask
        qk = qk * qk_scale

    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_shift = m_new
    if MAY_BE_EMPTY:  # keep exp2 away from (-inf) - (-inf)
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    acc = acc * alpha[:, None]
    acc = dot(p.to(V.dtype.element_ty), v, acc, DOT_PRECISION, UPCAST_DOTS)
    return m_new, l_i, acc


@triton.jit
def _rope_attention_fwd(
    Q, K, V, Out, Lse, QC, KC, QF, QA, KF, KA, KLens, QG, KG, Skipped,
    KVNum, KVIdx, KVMaskId, FullNum, FullIdx, MaskPool,
    stride_qb, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vn, stride_vh, stride_vd,
    stride_ob, stride_on, stride_oh, stride_od,
    stride_lse_b, stride_lse_h,
    stride_qc_b, stride_qc_n, stride_qc_a,
    stride_kc_b, stride_kc_n, stride_kc_a,
    stride_qf_h, stride_kf_h,
    stride_qg_b, stride_qg_n, stride_kg_b, stride_kg_n,
    stride_bm_b, stride_bm_h, stride_bmp_b, stride_bmp_h, stride_bmp_m, stride_bmf_b, stride_bmf_h, stride_bmf_m,
    n_q, n_k, num_heads, group, qk_scale,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, INTERLEAVED: tl.constexpr,
    ROTATE_Q: tl.constexpr, ROTATE_K: tl.constexpr, HAS_KLENS: tl.constexpr, RETURN_LSE: tl.constexpr,
    HAS_GROUPS: tl.constexpr, COUNT_SKIPPED: tl.constexpr, HAS_BLOCK_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOTS: tl.constexpr, WIDE_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)  # 64-bit batch offsets; within a batch item see WIDE_ROWS
    h = _in_batch(pid_bh % num_heads, WIDE_ROWS)
    hk = _in_batch(pid_bh % num_heads // group, WIDE_ROWS)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_m = _in_batch(offs_m, WIDE_ROWS)
    offs_j = tl.arange(0, HALF_PAD)
    offs_d = tl.arange(0, 2 * HALF_PAD)
    mask_m = offs_m < n_q
    mask_j = offs_j < HALF
    mask_d = offs_d < 2 * HALF
    j1, j2 = pair_offsets(offs_j, HALF, INTERLEAVED)

    # ---- prologue: load Q as pair halves and rotate once
    q_rows = Q + b * stride_qb + h * stride_qh + rows_m[:, None] * stride_qn
    mask_q = mask_m[:, None] & mask_j[None, :]
    q1 = tl.load(q_rows + j1[None, :] * stride_qd, mask=mask_q, other=0.0)
    q2 = tl.load(q_rows + j2[None, :] * stride_qd, mask=mask_q, other=0.0)
    if ROTATE_Q:
        q_freq, q_axis = rope_table(QF, QA, h, stride_qf_h, offs_j, mask_j, True)
        q_coords = QC + b * stride_qc_b + rows_m[:, None] * stride_qc_n
        r1, r2 = rotate_pairs(q1.to(tl.float32), q2.to(tl.float32), q_coords,
                              q_axis[None, :] * stride_qc_a, q_freq[None, :], mask_q)
        q1 = r1.to(Q.dtype.element_ty)
        q2 = r2.to(Q.dtype.element_ty)

    k_freq, k_axis = rope_table(KF, KA, hk, stride_kf_h, offs_j, mask_j, ROTATE_K)
    k_len = key_length(KLens, b, n_k, HAS_KLENS)

    q_groups = tl.zeros([BLOCK_M], tl.int64)
    if HAS_GROUPS:  # layout masks: q attends to k only where their group bitmasks share a bit
        q_groups = tl.load(QG + b * stride_qg_b + rows_m * stride_qg_n, mask=mask_m, other=0).to(tl.int64)
        q_groups_any = tl.reduce(q_groups, 0, _bit_or)
    n_skipped = 0

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, 2 * HALF_PAD], tl.float32)

    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    if HAS_BLOCK_MASK:
        # the visit lists (baton_fast.block_mask): no tile is tested in the loop; partial blocks first, with their
        # per-token mask tile, then full blocks without one (key lengths still bound both)
        row = b * stride_bm_b + h * stride_bm_h + pid_m
        partial_row = b * stride_bmp_b + h * stride_bmp_h + pid_m * stride_bmp_m
        full_row = b * stride_bmf_b + h * stride_bmf_h + pid_m * stride_bmf_m
        tile_offsets = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        for i in range(0, tl.load(KVNum + row)):
            offs_n = tl.load(KVIdx + partial_row + i) * BLOCK_N + tl.arange(0, BLOCK_N)
            rows_n = _in_batch(offs_n, WIDE_ROWS)
            mask_n = offs_n < k_len
            tile = tl.load(MaskPool + tl.load(KVMaskId + partial_row + i).to(tl.int64) * (BLOCK_M * BLOCK_N)
                           + tile_offsets)
            m_i, l_i, acc = _attend_tile(
                q1, q2, m_i, l_i, acc, K, V, KC, k_base, v_base, rows_n, mask_n, mask_j, offs_d, mask_d,
                j1, j2, k_freq, k_axis, b, stride_kn, stride_kd, stride_vn, stride_vd, stride_kc_b, stride_kc_n,
                stride_kc_a, qk_scale, (tile != 0) & mask_n[None, :], ROTATE_K, True, True, DOT_PRECISION,
                UPCAST_DOTS)
        for i in range(0, tl.load(FullNum + row)):
            offs_n = tl.load(FullIdx + full_row + i) * BLOCK_N + tl.arange(0, BLOCK_N)
            rows_n = _in_batch(offs_n, WIDE_ROWS)
            mask_n = offs_n < k_len
            m_i, l_i, acc = _attend_tile(
                q1, q2, m_i, l_i, acc, K, V, KC, k_base, v_base, rows_n, mask_n, mask_j, offs_d, mask_d,
                j1, j2, k_freq, k_axis, b, stride_kn, stride_kd, stride_vn, stride_vd, stride_kc_b, stride_kc_n,
                stride_kc_a, qk_scale, mask_n[None, :], ROTATE_K, HAS_KLENS, HAS_KLENS, DOT_PRECISION, UPCAST_DOTS)
    else:
        for start_n in range(0, k_len, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            rows_n = _in_batch(offs_n, WIDE_ROWS)
            mask_n = offs_n < k_len
            visit = True
            allowed = mask_n[None, :]
            if HAS_GROUPS:
                k_groups = tl.load(KG + b * stride_kg_b + rows_n * stride_kg_n, mask=mask_n, other=0).to(tl.int64)
                visit = (q_groups_any & tl.reduce(k_groups, 0, _bit_or)) != 0  # skip tiles with no allowed pair
                n_skipped += 1 - visit.to(tl.int32)
                allowed = allowed & ((q_groups[:, None] & k_groups[None, :]) != 0)
            if visit:
                m_i, l_i, acc = _attend_tile(
                    q1, q2, m_i, l_i, acc, K, V, KC, k_base, v_base, rows_n, mask_n, mask_j, offs_d, mask_d,
                    j1, j2, k_freq, k_axis, b, stride_kn, stride_kd, stride_vn, stride_vd, stride_kc_b, stride_kc_n,
                    stride_kc_a, qk_scale, allowed, ROTATE_K, True, HAS_GROUPS, DOT_PRECISION, UPCAST_DOTS)

    # ---- epilogue: rows with no key (k_len == 0) give zeros and lse = -inf
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + rows_m[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    if COUNT_SKIPPED:
        tl.store(Skipped + pid_bh * tl.num_programs(0) + pid_m, n_skipped)
    if RETURN_LSE:
        lse = tl.where(has_keys, (m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(Lse + b * stride_lse_b + h * stride_lse_h + offs_m, lse, mask=mask_m)


# Shipped configurations: (BLOCK_M, BLOCK_N, num_warps, num_stages) per GPU arch (SM major), padded
# half head dim and kernel family.  Each is compiled by `baton-fast selftest --static` and must be
# spill-free with tensor-core instructions (HGMMA on sm_90, HMMA on sm_80), fit 99 KiB of shared
# memory on sm_8x (sm_86/sm_89) and draw no ptxas performance warning (docs/selftest.md has the
# measured table).
#
# "plain": nothing rotated in the kernel and no layout masks -- the long self-attention after the
# QK-norm + RoPE pre-pass, text attention, cached-plan attention with pre-rotated Q: flash-attention
# tiles and pipelining.
# "fused": Q and/or K rotated in the kernel, or layout masks.  sm_90 at D = 64 and 256 uses one stage:
# with two or more, ptxas serialises the wgmma when Q (D = 64) or Q and K (D = 256) are rotated in the
# kernel (Triton re-reads the rotated Q from shared memory into registers inside the loop).  sm_8x at
# D = 256 needs BLOCK_M = 16 once K is rotated in the loop.  sm_8x plain at D = 32: 128x128x8 with two
# stages sat at ptxas's 128-register choice and spilled 4 B once batch offsets became 64-bit; three
# stages compile clean (161-165 registers).
SHIPPED_CONFIGS = {
    (9, 16, "plain"): [(128, 64, 4, 3), (128, 128, 8, 3)],
    (9, 32, "plain"): [(128, 64, 4, 3), (128, 128, 8, 3)],
    (9, 64, "plain"): [(128, 64, 8, 3), (128, 128, 8, 2)],
    (9, 128, "plain"): [(128, 64, 8, 2), (64, 64, 4, 2)],
    (8, 16, "plain"): [(128, 64, 4, 3), (128, 128, 8, 3)],
    (8, 32, "plain"): [(128, 64, 4, 3), (128, 64, 8, 3)],
    (8, 64, "plain"): [(128, 64, 8, 2), (128, 64, 8, 3)],
    (8, 128, "plain"): [(64, 64, 8, 1), (64, 32, 8, 2)],
    (9, 16, "fused"): [(128, 64, 4, 3), (128, 128, 8, 3)],
    (9, 32, "fused"): [(128, 64, 8, 1), (64, 64, 4, 1)],
    (9, 64, "fused"): [(128, 32, 8, 3), (64, 64, 8, 3)],
    (9, 128, "fused"): [(64, 32, 8, 1), (64, 16, 8, 1)],
    (8, 16, "fused"): [(64, 64, 4, 3), (128, 64, 8, 3)],
    (8, 32, "fused"): [(128, 32, 8, 3), (64, 32, 8, 3)],
    (8, 64, "fused"): [(64, 64, 8, 2), (64, 32, 8, 3)],
    (8, 128, "fused"): [(16, 32, 4, 2), (16, 32, 8, 2)],
}
# Pinned under the interpreter (and by tests): small tiles keep CPU emulation fast.
INTERPRETER_CONFIG = (16, 16, 1, 1)


def half_pad(head_dim: int) -> int:
    """Padded half head dim: a power of two >= 16 (``tl.dot`` needs K >= 16)."""
    return max(16, triton.next_power_of_2(head_dim // 2))


def kernel_family(rotate_q: bool, rotate_k: bool, has_groups: bool) -> str:
    """``"fused"`` when the kernel rotates or masks (more registers), else ``"plain"``."""
    return "fused" if rotate_q or rotate_k or has_groups else "plain"


def shipped_configs(arch_major: int, head_dim: int, family: str):
    """Configurations shipped for an SM major version (>= 9 uses the sm_90 list) and kernel family."""
    return SHIPPED_CONFIGS[(9 if arch_major >= 9 else 8, half_pad(head_dim), family)]


def _interpreting() -> bool:
    return triton.knobs.runtime.interpret if hasattr(triton, "knobs") else False


def wide_rows(*tensors) -> bool:
    """The ``WIDE_ROWS`` constexpr: whether some tensor's element offsets within one batch item reach
    2^31, so that row offsets need 64 bits (batch and head offsets always have them)."""
    return any(sum((n - 1) * abs(s) for n, s in zip(x.shape[1:], x.stride()[1:])) >= 2 ** 31 for x in tensors)


def upcast_dots(dtype: torch.dtype) -> bool:
    """The ``UPCAST_DOTS`` constexpr: bf16 under the interpreter (module docstring), never when compiled."""
    return _interpreting() and dtype == torch.bfloat16


# kernel flags that change the best tile (the tuning key); COUNT_SKIPPED only instruments a launch
TUNED_FLAGS = ("INTERLEAVED", "ROTATE_Q", "ROTATE_K", "HAS_KLENS", "RETURN_LSE", "HAS_GROUPS", "HAS_BLOCK_MASK")


def _launcher(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved: bool, *,
              rotate_q: bool, rotate_k: bool, k_lens, scale: float, return_lse: bool,
              q_groups=None, k_groups=None, skipped=None, block_mask=None):
    """``(out, lse, flags, launch)``: the outputs, the kernel's flags and ``launch(config)`` for
    :func:`rope_attention_fwd`'s arguments."""
    B, n_q, H, D = q.shape
    n_k, Hk = k.shape[1], k.shape[2]
    out = torch.empty((B, n_q, H, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32) if return_lse else out
    has_groups = q_groups is not None
    flags = dict(HALF=D // 2, HALF_PAD=half_pad(D), INTERLEAVED=interleaved, ROTATE_Q=rotate_q, ROTATE_K=rotate_k,
                 HAS_KLENS=k_lens is not None, RETURN_LSE=return_lse, HAS_GROUPS=has_groups,
                 COUNT_SKIPPED=skipped is not None, HAS_BLOCK_MASK=block_mask is not None,
                 # fp32 inputs: three TF32 products per dot (~fp32 accuracy on tensor cores; plain TF32 would not meet §5)
                 DOT_PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32", UPCAST_DOTS=upcast_dots(q.dtype),
                 WIDE_ROWS=wide_rows(q, k, v, out, q_coords, k_coords, *((q_groups, k_groups) if has_groups else ())))

    def batch_stride(x):  # broadcast a batch of 1 with stride 0
        return x.stride(0) if x.shape[0] > 1 else 0

    lists, list_strides = _block_mask_args(block_mask, q_axes)

    def launch(cfg):
        block_m, block_n, num_warps, num_stages = cfg
        grid = (triton.cdiv(n_q, block_m), B * H)
        _rope_attention_fwd[grid](
            q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes,
            k_lens if k_lens is not None else q_freqs,
            q_groups if has_groups else q_axes, k_groups if has_groups else q_axes,
            skipped if skipped is not None else q_axes, *lists,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            lse.stride(0) if return_lse else 0, lse.stride(1) if return_lse else 0,
            batch_stride(q_coords), q_coords.stride(1), q_coords.stride(2),
            batch_stride(k_coords), k_coords.stride(1), k_coords.stride(2),
            batch_stride(q_freqs), batch_stride(k_freqs),
            batch_stride(q_groups) if has_groups else 0, q_groups.stride(1) if has_groups else 0,
            batch_stride(k_groups) if has_groups else 0, k_groups.stride(1) if has_groups else 0, *list_strides,
            n_q, n_k, H, H // Hk, scale * math.log2(math.e),
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages, **flags)

    return out, lse, flags, launch


def _block_mask_args(block_mask, placeholder, by_key_block: bool = False):
    """The kernel's six list pointers and eight list strides for a :class:`~baton_fast.block_mask.BlockMask`
    (rows of 1 broadcast with stride 0), or placeholders without one: its visit lists per query block, or with
    ``by_key_block`` the transposed ones (:meth:`~baton_fast.block_mask.BlockMask.query_lists`, per key block)."""
    if block_mask is None:
        return (placeholder,) * 6, (0,) * 8
    lists = block_mask.query_lists if by_key_block else (
        block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.kv_mask_ids, block_mask.full_kv_num_blocks,
        block_mask.full_kv_indices)
    num, indices, mask_ids, full_num, full_indices = (x.contiguous() for x in lists)
    pool = block_mask.partial_masks.contiguous().view(torch.uint8)
    if pool.numel() == 0:
        pool = placeholder
    Bm, Hm, _ = block_mask.shape

    def rows(x):  # (batch, head[, query block]) strides, 0 where the mask has one row
        return (x.stride(0) if Bm > 1 else 0, x.stride(1) if Hm > 1 else 0) + tuple(x.stride()[2:3] * (x.dim() == 4))

    return (num, indices, mask_ids, full_num, full_indices, pool), rows(num) + rows(indices) + rows(full_indices)


def check_block_mask_tile(block_mask, config) -> None:
    """Raise ValueError unless the kernel tile ``config[:2]`` is the mask's ``(block_q, block_k)``: the kernel walks
    the lists one mask block per tile."""
    if tuple(config[:2]) != (block_mask.block_q, block_mask.block_k):
        raise ValueError(f"block_mask: blocks ({block_mask.block_q}, {block_mask.block_k}) do not match the kernel "
                         f"tile {tuple(config[:2])}")


def rope_attention_fwd(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved: bool, *,
                       rotate_q: bool, rotate_k: bool, k_lens, scale: float, return_lse: bool,
                       q_groups=None, k_groups=None, skipped=None, block_mask=None, config=None):
    """Launch the fused kernel on validated inputs.

    q ``[B, Nq, H, D]``, k/v ``[B, Nk, Hk, D]`` (any strides); coords float32 ``[B or 1, N, A]``;
    freqs float32 / axes int32 ``[1 or H(k), D/2]`` contiguous; k_lens int ``[B]`` or None;
    q_groups / k_groups int32/int64 ``[B or 1, N]`` layout bitmasks (both or neither).
    ``skipped``: optional int32 tensor with one slot per program (``B*H*cdiv(Nq, BLOCK_M)``) that
    receives the number of key tiles each program skipped because no pair shared a group bit.
    ``block_mask``: optional :class:`~baton_fast.block_mask.BlockMask` (checked against the shapes, on q's device):
    the kernel visits only its listed key blocks, with tiles of its block sizes.
    ``config``: ``(BLOCK_M, BLOCK_N, num_warps, num_stages)``, default :func:`launch_config`'s choice.
    Returns ``(out [B, Nq, H, D] like q, lse float32 [B, H, Nq] or None)``.
    """
    out, lse, flags, launch = _launcher(
        q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q=rotate_q,
        rotate_k=rotate_k, k_lens=k_lens, scale=scale, return_lse=return_lse, q_groups=q_groups,
        k_groups=k_groups, skipped=skipped, block_mask=block_mask)
    config = config or _pick_config(q, k, flags, launch, block_mask)
    if block_mask is not None:
        check_block_mask_tile(block_mask, config)
    launch(config)
    return out, (lse if return_lse else None)


def launch_config(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved: bool, *,
                  rotate_q: bool, rotate_k: bool, k_lens, scale: float, return_lse: bool,
                  q_groups=None, k_groups=None, block_mask=None) -> tuple:
    """The ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` that :func:`rope_attention_fwd` launches for these
    arguments: :data:`INTERPRETER_CONFIG` under the interpreter; on a GPU the tuned choice
    (:mod:`baton_fast.tuning`: timed on first use outside CUDA-graph capture, cached)."""
    _, _, flags, launch = _launcher(
        q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q=rotate_q,
        rotate_k=rotate_k, k_lens=k_lens, scale=scale, return_lse=return_lse, q_groups=q_groups,
        k_groups=k_groups, block_mask=block_mask)
    return _pick_config(q, k, flags, launch, block_mask)


def block_mask_configs(arch_major: int, head_dim: int, family: str, block_q: int, block_k: int) -> list:
    """The shipped configurations whose tile is a block mask's ``(block_q, block_k)``."""
    return [cfg for cfg in shipped_configs(arch_major, head_dim, family) if cfg[:2] == (block_q, block_k)]


def _pick_config(q, k, flags, launch, block_mask=None):
    """The pinned config under the interpreter (with a block mask: its block sizes, one warp, one stage); on a GPU,
    the tuned choice among the shipped configs (with a block mask: those with its tile)."""
    if _interpreting() or q.device.type != "cuda":
        return INTERPRETER_CONFIG if block_mask is None else (block_mask.block_q, block_mask.block_k, 1, 1)
    from .. import tuning

    B, n_q, H, D = q.shape
    n_k, Hk = k.shape[1], k.shape[2]
    major, minor = torch.cuda.get_device_capability(q.device)
    key = tuning.attention_key(f"sm_{major}{minor}", n_q, n_k, D, q.dtype, {n: flags[n] for n in TUNED_FLAGS},
                               B * H, H // Hk)
    family = kernel_family(flags["ROTATE_Q"], flags["ROTATE_K"], flags["HAS_GROUPS"])
    candidates = shipped_configs(major, D, family)
    if block_mask is not None:
        candidates = block_mask_configs(major, D, family, block_mask.block_q, block_mask.block_k)
        if not candidates:
            tiles = sorted({cfg[:2] for cfg in shipped_configs(major, D, family)})
            raise ValueError(f"block_mask: blocks ({block_mask.block_q}, {block_mask.block_k}) are no shipped tile of "
                             f"the {family!r} kernel at D={D} on sm_{major}x; build the mask with one of {tiles}")
    return tuning.choose(key, candidates, lambda cfg: tuning.benchmark(lambda: launch(cfg)))
