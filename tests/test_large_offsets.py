"""64-bit addressing: tensors whose later batches start beyond 2^31 elements (interpreter on CPU).

The big tensors are ``torch.empty`` allocations that stay mostly untouched (only the rows the kernels
read are filled), so they cost address space, not memory.  Their strides fit 32 bits (Triton passes them
as i32), so only a product (``b * stride_b``, ``n * stride_n``, ``h * stride_h``) crosses 2^31: before the
kernels cast their program ids to int64, ``b * stride_b`` wrapped and the interpreter crashed reading the
wrong address.  Row offsets are 64-bit only when a batch item spans 2^31 elements (``WIDE_ROWS``).
"""
import pytest
import torch

import baton_fast as bf
from baton_fast import reference
from baton_fast.kernels.rope_attention import wide_rows
from baton_fast.numerics import check

ROWS = 2 ** 24 + 1           # tokens per batch: K [3, ROWS, 1, 64] puts batch 2 at 2^31 + 128 elements
BATCH_STRIDE = ROWS * 64     # 2^30 + 64 < 2^31
MAX_RSS_GROWTH = 1 << 30     # the fp16 buffers span 6.4 GB and 4.3 GB of address space; pages touched: KBs


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_attention_reads_keys_beyond_2_31_elements():
    """K/V ``[3, 2^24 + 1, 1, 64]`` fp16 with k_lens 17 (batch 2 starts at element 2^31 + 128), GQA 2:1."""
    B, n_q, H, D, n_used = 3, 17, 2, 64, 17
    g = torch.Generator().manual_seed(0)
    before = resident_bytes()
    # one allocation holds K and V: V starts n_used rows after K, so each view has K's shape and strides
    storage = torch.empty(B * BATCH_STRIDE + n_used * D, dtype=torch.float16)
    k = storage[:B * BATCH_STRIDE].view(B, ROWS, 1, D)
    v = storage[n_used * D:].view(B, ROWS, 1, D)
    assert k.stride(0) == BATCH_STRIDE < 2 ** 31 <= (B - 1) * BATCH_STRIDE and not wide_rows(k, v)
    for b in range(B):  # rows 0..33 of each batch: K rows 0..16 and V rows 0..16
        k[b, :2 * n_used] = torch.randn(2 * n_used, 1, D, generator=g).half()
    q = torch.randn(B, n_q, H, D, generator=g).half()
    table = bf.RopeTable.wan(D)
    q_coords = (torch.rand(B, n_q, 3, generator=g) * 2 - 1) * 20
    k_lens = torch.full((B,), n_used)

    # Q rotated in the kernel; K read as given (pre-rotated), as the plan cross-attention does
    out, lse = bf.rope_attention(q, k, v, q_coords, None, table, rotate_k=False, k_lens=k_lens, return_lse=True)
    assert resident_bytes() - before < MAX_RSS_GROWTH

    k_used, v_used = k[:, :n_used].clone(), v[:, :n_used].clone()
    kw = dict(k_table=table, rotate_k=False, return_lse=True)
    k_coords = torch.zeros(1, n_used, 3)
    ref_out, ref_lse = reference.rope_attention(q.double(), k_used.double(), v_used.double(), q_coords, k_coords,
                                                table, **kw)
    plain_out, plain_lse = reference.rope_attention(q, k_used, v_used, q_coords, k_coords, table, **kw)
    for name, result, plain, ref in (("out", out, plain_out, ref_out), ("lse", lse, plain_lse, ref_lse)):
        c = check(result, plain, ref, torch.float16)
        assert c.ok, f"{name}: {c}"


def test_attention_rows_beyond_2_31_elements():
    """Q, K and V ``[1, 17, 1, 64]`` fp16 with a row stride of 2^27 elements: row 16 lies at 2^31 (64-bit
    rows, ``WIDE_ROWS``), both sides rotated in the kernel."""
    n, D, row_stride = 17, 64, 2 ** 27
    g = torch.Generator().manual_seed(2)
    before = resident_bytes()
    storage = torch.empty((n - 1) * row_stride + 3 * D, dtype=torch.float16)
    k, v, q = (storage.as_strided((1, n, 1, D), (0, row_stride, D, 1), offset * D) for offset in range(3))
    assert wide_rows(k)
    for row in range(n):  # K, V and Q rows side by side
        storage[row * row_stride:row * row_stride + 3 * D] = torch.randn(3 * D, generator=g).half()
    table = bf.RopeTable.wan(D)
    q_coords, k_coords = ((torch.rand(1, n, 3, generator=g) * 2 - 1) * 20 for _ in range(2))

    out, lse = bf.rope_attention(q, k, v, q_coords, k_coords, table, return_lse=True)
    assert resident_bytes() - before < MAX_RSS_GROWTH

    small = [x.contiguous() for x in (q, k, v)]
    ref_out, ref_lse = reference.rope_attention(*(x.double() for x in small), q_coords, k_coords, table,
                                                return_lse=True)
    plain_out, plain_lse = reference.rope_attention(*small, q_coords, k_coords, table, return_lse=True)
    for name, result, plain, ref in (("out", out, plain_out, ref_out), ("lse", lse, plain_lse, ref_lse)):
        c = check(result, plain, ref, torch.float16)
        assert c.ok, f"{name}: {c}"


def test_prepass_reads_and_writes_tokens_beyond_2_31_elements():
    """apply_rope and qk_rmsnorm_rope on x ``[3, 5, 2, 64]`` fp16 whose batch stride is 2^30 + 64 elements."""
    B, N, H, D = 3, 5, 2, 64
    g = torch.Generator().manual_seed(1)
    before = resident_bytes()
    storage = torch.empty((B - 1) * BATCH_STRIDE + N * H * D, dtype=torch.float16)
    x = storage.as_strided((B, N, H, D), (BATCH_STRIDE, H * D, D, 1))
    for b in range(B):
        x[b] = torch.randn(N, H, D, generator=g).half()
    table = bf.RopeTable.wan(D)
    coords = (torch.rand(B, N, 3, generator=g) * 2 - 1) * 20
    weight = (torch.rand(H * D, generator=g) + 0.5).half()

    rotated = bf.apply_rope(x, coords, table)
    q_rot, k_rot = bf.qk_rmsnorm_rope(x, x, coords, coords, table, q_weight=weight, k_weight=weight)
    assert resident_bytes() - before < MAX_RSS_GROWTH

    small = x.contiguous()
    c = check(rotated, reference.apply_rope(small, coords, table), reference.apply_rope(small.double(), coords, table),
              torch.float16)
    assert c.ok, f"apply_rope: {c}"
    plain = reference.qk_rmsnorm_rope(small, small, coords, coords, table, q_weight=weight, k_weight=weight)
    ref = reference.qk_rmsnorm_rope(small.double(), small.double(), coords, coords, table, q_weight=weight.double(),
                                    k_weight=weight.double())
    for name, result, p, r in (("q", q_rot, plain[0], ref[0]), ("k", k_rot, plain[1], ref[1])):
        c = check(result, p, r, torch.float16)
        assert c.ok, f"qk_rmsnorm_rope {name}: {c}"


def test_prepass_heads_beyond_2_31_elements():
    """x ``[1, 4, 3, 64]`` in a [B, H, N, D] layout with a head stride of 2^30 + 64: head 2 lies beyond 2^31."""
    B, N, H, D = 1, 4, 3, 64
    g = torch.Generator().manual_seed(3)
    storage = torch.empty((H - 1) * BATCH_STRIDE + N * D, dtype=torch.float16)
    x = storage.as_strided((B, N, H, D), (0, D, BATCH_STRIDE, 1))
    for h in range(H):
        x[0, :, h] = torch.randn(N, D, generator=g).half()
    table = bf.RopeTable.wan(D)
    coords = (torch.rand(B, N, 3, generator=g) * 2 - 1) * 20
    small = x.contiguous()
    c = check(bf.apply_rope(x, coords, table), reference.apply_rope(small, coords, table),
              reference.apply_rope(small.double(), coords, table), torch.float16)
    assert c.ok, c
