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


def layout_self_attention_reference(module, x, coords, table, groups):
    """:class:`SelfAttention` as it ran before the block mask: reference ops in raster order, the layout as
    ``q_groups = k_groups`` bitmasks."""
    from baton_fast.model.attention import split_heads

    q, k, v = (split_heads(proj(x), module.num_heads) for proj in (module.q, module.k, module.v))
    q, k = reference.qk_rmsnorm_rope(q, k, coords, coords, table, q_weight=module.norm_q.weight,
                                     k_weight=module.norm_k.weight, eps=module.eps)
    out = reference.rope_attention(q, k, v, rotate_q=False, rotate_k=False, q_groups=groups, k_groups=groups)
    return module.o(out.flatten(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_self_attention_in_group_order_on_its_block_mask_matches_float64(dtype, monkeypatch):
    """The DiT's layout self-attention: tokens and coordinates moved once into the layout's group order, the kernel
    on its BlockMask (built with the LayoutGuidance), moved back: equal to the float64 raster-order attention with
    the bitmasks (DESIGN §5).  Odd sizes (3 x 5 x 7 tokens, 32 x 16 blocks), two overlapping boxes and background,
    whole blocks skipped that raster order could not skip."""
    import copy

    from baton_fast.model import layout as layout_module
    from baton_fast.model.attention import SelfAttention

    monkeypatch.setattr(layout_module, "LAYOUT_BLOCK", (32, 16))
    grid = bf.video_grid_coords(3, 5, 7)
    box_a = (grid[:, 1] < 3) & (grid[:, 2] < 4)
    box_b = (grid[:, 1] >= 2) & (grid[:, 2] >= 3)
    groups = (torch.where(box_a | box_b, 0, 1) + 2 * box_a + 4 * box_b)[None].long()
    assert set(groups.unique().tolist()) == {1, 2, 4, 6}
    guidance = layout_module.LayoutGuidance(groups, torch.full((1, 3), -1, dtype=torch.int64))
    order, n = guidance.order, grid.shape[0]
    raster = bf.BlockMask.from_groups(groups, groups, 32, 16)
    assert order.mask.visited_blocks() < raster.visited_blocks() == raster.shape[2] * raster.num_k_blocks
    report = guidance.block_report(masked_evaluations=3, layers=2)  # what a run's report says the layout visited
    assert report["key_blocks_visited_in_run"] == 6 * order.mask.visited_blocks()
    assert report["key_blocks_dense_in_run"] == 6 * raster.visited_blocks() and report["blocks"] == [32, 16]
    torch.manual_seed(9)
    module = SelfAttention(64, 2, 1e-6)
    coords, table = grid[None].float(), bf.RopeTable.wan(32)
    x = torch.randn(1, n, 64)
    with torch.no_grad():
        truth = layout_self_attention_reference(copy.deepcopy(module).double(), x.double(), coords, table, groups)
        module = module.to(dtype)
        plain = layout_self_attention_reference(module, x.to(dtype), coords, table, groups)
        out = module(x.to(dtype)[:, order.to_groups], coords[:, order.to_groups], table,
                     block_mask=order.mask)[:, order.to_raster]
    c = check(out, plain, truth, dtype)
    assert c.ok, c
