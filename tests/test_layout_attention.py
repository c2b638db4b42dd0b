"""SpA2V layout attention inside the fused kernel: group bitmasks, skipped tiles, fully masked rows."""
import pytest
import torch

import baton_fast as bf
from baton_fast import reference
from baton_fast.numerics import check


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")


def inputs(dtype, B, Nq, Nk, H, D, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, n, H, D, generator=g).to(dtype) for n in (Nq, Nk, Nk))
    qc, kc = (torch.rand(B, n, 3, generator=g) * 10 for n in (Nq, Nk))
    return q, k, v, qc, kc, bf.RopeTable.wan(D)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group_dtype", [torch.int32, torch.int64])
def test_dense_random_masks_match_float64(dtype, group_dtype):
    B, Nq, Nk, H, D = 2, 37, 61, 2, 64
    q, k, v, qc, kc, table = inputs(dtype, B, Nq, Nk, H, D, seed=1)
    g = torch.Generator().manual_seed(2)
    q_groups = torch.randint(0, 16, (B, Nq), generator=g).to(group_dtype)  # 0 = attends to nothing
    k_groups = torch.randint(1, 16, (B, Nk), generator=g).to(group_dtype)
    kw = dict(q_groups=q_groups, k_groups=k_groups, return_lse=True)
    out, lse = bf.rope_attention(q, k, v, qc, kc, table, **kw)
    ref, ref_lse = reference.rope_attention(q.double(), k.double(), v.double(), qc, kc, table, **kw)
    plain, plain_lse = reference.rope_attention(q, k, v, qc, kc, table, **kw)
    for name, x, p, r in (("out", out, plain, ref), ("lse", lse, plain_lse, ref_lse)):
        c = check(x, p, r, dtype)
        assert c.ok, f"{name}: {c}"
    empty = q_groups == 0
    assert empty.any() and torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert torch.isneginf(lse.transpose(1, 2)[empty]).all()


def block_layout(n, blocks):
    """Token i belongs to object ``i * blocks // n`` (bit 1 << object): contiguous runs of tokens."""
    return (1 << (torch.arange(n) * blocks // n)).to(torch.int64)[None]


def test_tiles_without_shared_group_are_skipped():
    B, N, H, D = 1, 128, 2, 64
    q, k, v, qc, kc, table = inputs(torch.float32, B, N, N, H, D, seed=3)
    groups = block_layout(N, 4)  # 4 objects of 32 tokens: block-diagonal layout
    stats = bf.layout_tile_stats(q, k, v, qc, kc, table, q_groups=groups, k_groups=groups)
    bm, bn = stats["block_m"], stats["block_n"]
    # independent count: a (query tile, key tile) pair is needed iff some pair of tokens shares a bit
    needed = 0
    for i in range(0, N, bm):
        for j in range(0, N, bn):
            needed += bool(((groups[0, i:i + bm, None] & groups[0, None, j:j + bn]) != 0).any())
    total = H * (N // bm) * (N // bn)
    assert stats["visited"] == H * needed and stats["skipped"] == total - H * needed
    assert stats["skipped"] == 3 * total // 4  # block-diagonal with tiles inside objects
    out = bf.rope_attention(q, k, v, qc, kc, table, q_groups=groups, k_groups=groups)
    ref = reference.rope_attention(q.double(), k.double(), v.double(), qc, kc, table, q_groups=groups,
                                   k_groups=groups)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)


def test_all_ones_masks_equal_unmasked():
    q, k, v, qc, kc, table = inputs(torch.float32, 1, 20, 33, 2, 64, seed=4)
    ones_q, ones_k = torch.ones(1, 20, dtype=torch.int64), torch.ones(1, 33, dtype=torch.int64)
    a = bf.rope_attention(q, k, v, qc, kc, table, q_groups=ones_q, k_groups=ones_k)
    torch.testing.assert_close(a, bf.rope_attention(q, k, v, qc, kc, table), atol=1e-6, rtol=0)


def test_group_arguments_are_checked():
    q, k, v, qc, kc, table = inputs(torch.float32, 1, 4, 5, 1, 32, seed=5)
    with pytest.raises(ValueError, match="q_groups, k_groups"):
        bf.rope_attention(q, k, v, qc, kc, table, q_groups=torch.ones(1, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="k_groups"):
        bf.rope_attention(q, k, v, qc, kc, table, q_groups=torch.ones(1, 4, dtype=torch.int64),
                          k_groups=torch.ones(1, 5))
    with pytest.raises(ValueError, match="k_groups"):
        bf.rope_attention(q, k, v, qc, kc, table, q_groups=torch.ones(1, 4, dtype=torch.int64),
                          k_groups=torch.ones(1, 6, dtype=torch.int64))


def test_row_with_allowed_keys_only_in_a_later_tile_keeps_very_negative_scores():
    """The running max stays -inf until the first allowed key: scores far below 0 must not underflow."""
    B, Nq, Nk, H, D = 1, 8, 40, 1, 64
    g = torch.Generator().manual_seed(6)
    q = torch.full((B, Nq, H, D), -5.0)
    k = torch.full((B, Nk, H, D), 5.0) + torch.randn(B, Nk, H, D, generator=g) * 0.01
    v = torch.randn(B, Nk, H, D, generator=g)
    coords = torch.zeros(1, max(Nq, Nk), 3)
    table = bf.RopeTable.wan(D)
    q_groups = torch.full((1, Nq), 2, dtype=torch.int64)
    k_groups = torch.where(torch.arange(Nk) < 20, 1, 2)[None].long()  # first tile(s): no shared bit
    out = bf.rope_attention(q, k, v, coords[:, :Nq], coords[:, :Nk], table, q_groups=q_groups, k_groups=k_groups)
    args = (coords[:, :Nq], coords[:, :Nk], table)
    kw = dict(q_groups=q_groups, k_groups=k_groups)
    ref = reference.rope_attention(q.double(), k.double(), v.double(), *args, **kw)
    plain = reference.rope_attention(q, k, v, *args, **kw)
    assert ref.abs().max() > 0.01
    c = check(out, plain, ref, torch.float32)
    assert c.ok, c


def test_sorting_tokens_by_group_skips_tiles_and_keeps_the_result():
    """A box in a row-major latent grid mixes groups in every tile; sorted by group, whole tiles skip."""
    from baton_fast.model.attention import attention_in_group_order

    T, Hl, Wl, H, D = 2, 8, 8, 2, 32
    grid = bf.video_grid_coords(T, Hl, Wl)
    inside = (grid[:, 1] >= 2) & (grid[:, 1] < 6) & (grid[:, 2] >= 4)  # one object's box
    groups = torch.where(inside, 2, 1)[None].long()
    q, k, v, *_ = inputs(torch.float32, 1, len(grid), len(grid), H, D, seed=8)
    kw = dict(rotate_q=False, rotate_k=False)
    raster = bf.layout_tile_stats(q, k, v, q_groups=groups, k_groups=groups, **kw)
    order = torch.argsort(groups[0], stable=True)
    by_group = bf.layout_tile_stats(q[:, order], k[:, order], v[:, order], q_groups=groups[:, order],
                                    k_groups=groups[:, order], **kw)
    assert raster["skipped"] == 0 and by_group["skipped"] > 0
    expected = bf.rope_attention(q, k, v, q_groups=groups, k_groups=groups, **kw)
    torch.testing.assert_close(attention_in_group_order(q, k, v, groups, groups), expected, atol=1e-6, rtol=0)
