"""BlockMask: builders against brute-force token masks; the CPU block-sparse path and the fused kernel walking the
visit lists against the float64 dense reference under the same token mask."""
import itertools
import math

import pytest
import torch

import baton_fast as bf
from baton_fast import reference
from baton_fast.block_mask import BlockMask, tile_order
from baton_fast.block_sparse import block_sparse_attention, masked_attention
from baton_fast.numerics import check


def brute_tile_mask(grid, tile, window):
    """bool [N, N] in tile-major order, from explicit loops over the tokens (independent of the builder)."""
    T, H, W = grid
    tokens = sorted(itertools.product(range(T), range(H), range(W)),
                    key=lambda c: (c[0] // tile[0], c[1] // tile[1], c[2] // tile[2]))  # sorted() is stable
    tiles = torch.tensor([[c[i] // tile[i] for i in range(3)] for c in tokens])
    reach = torch.tensor([w // 2 for w in window])
    return ((tiles[:, None] - tiles[None]).abs() <= reach).all(-1), tokens


def test_tile_order_is_tile_major_and_invertible():
    grid, tile = (3, 5, 7), (2, 2, 3)  # no size divides
    to_tiles, to_raster = tile_order(grid, tile)
    _, tokens = brute_tile_mask(grid, tile, (1, 1, 1))
    raster = list(itertools.product(*(range(g) for g in grid)))
    assert [raster[i] for i in to_tiles.tolist()] == tokens
    x = torch.randn(1, 105, 4)
    assert torch.equal(x[:, to_tiles][:, to_raster], x)
    coords = bf.video_grid_coords(*grid)[None]
    assert torch.equal(coords[:, to_tiles][0].long(), torch.tensor(tokens))  # coordinates travel with tokens


@pytest.mark.parametrize("grid,tile,window,blocks", [
    ((3, 5, 7), (2, 2, 3), (1, 3, 3), (16, 16)),
    ((4, 6, 6), (2, 3, 3), (3, 1, 3), (32, 16)),
    ((2, 8, 8), (1, 4, 4), (1, 3, 1), (16, 16)),  # blocks are whole tiles: every visited block full
])
def test_sliding_tile_matches_brute_force(grid, tile, window, blocks):
    mask = BlockMask.sliding_tile(grid, tile, window, *blocks)
    expected, _ = brute_tile_mask(grid, tile, window)
    assert torch.equal(mask.to_dense()[0, 0], expected)
    if tile == (1, 4, 4):
        assert mask.partial_masks.shape[0] == 0 and int(mask.kv_num_blocks.sum()) == 0
    _check_lists(mask)


def _check_lists(mask):
    """Invariants of the lists: ascending, disjoint, full blocks all True and complete, partial blocks mixed."""
    dense = mask.to_dense()
    Bm, Hm, Mq = mask.shape
    bq, bk = mask.block_q, mask.block_k
    for b, h, m in itertools.product(range(Bm), range(Hm), range(Mq)):
        part = mask.kv_indices[b, h, m, :mask.kv_num_blocks[b, h, m]].tolist()
        full = mask.full_kv_indices[b, h, m, :mask.full_kv_num_blocks[b, h, m]].tolist()
        assert part == sorted(set(part)) and full == sorted(set(full)) and not set(part) & set(full)
        rows = dense[b, h, m * bq:(m + 1) * bq]
        for kb in range(mask.num_k_blocks):
            tile = rows[:, kb * bk:(kb + 1) * bk]
            if kb in full:
                assert tile.all() and tile.shape[1] == bk
            elif kb in part:
                assert tile.any() and not (tile.all() and tile.shape[1] == bk)
            else:
                assert not tile.any()


def test_from_dense_round_trip_and_lists():
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(2, 3, 37, 45, generator=g) < 0.3
    dense[:, :, 20:32, :] = True  # full blocks next to partial ones
    dense[0, 1, 5] = False  # a query with no key
    mask = BlockMask.from_dense(dense, 16, 16)
    assert mask.shape == (2, 3, 3) and torch.equal(mask.to_dense(), dense)
    _check_lists(mask)
    assert BlockMask.from_dense(dense[0, 0], 16, 32).shape == (1, 1, 3)


def test_from_groups_matches_bitmask_rule():
    g = torch.Generator().manual_seed(1)
    q_groups = torch.randint(0, 8, (2, 53), generator=g)
    k_groups = torch.randint(1, 8, (1, 61), generator=g).to(torch.int32)
    mask = BlockMask.from_groups(q_groups, k_groups, 16, 32)
    expected = (q_groups[:, :, None] & k_groups.long()[:, None, :]) != 0
    assert mask.shape == (2, 1, 4) and torch.equal(mask.to_dense()[:, 0], expected)
    _check_lists(mask)


def test_radial_matches_brute_force():
    grid, band = (6, 5, 7), 1
    mask = BlockMask.radial(grid, band, 16, 32)
    coords = list(itertools.product(*(range(g) for g in grid)))
    expected = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for i, (t, y, x) in enumerate(coords):
        for j, (t2, y2, x2) in enumerate(coords):
            d = abs(t - t2)
            radius = 7 if d <= band else 7 >> (int(math.floor(math.log2(d / band))) + 1)
            expected[i, j] = max(abs(y - y2), abs(x - x2)) <= radius
    assert torch.equal(mask.to_dense()[0, 0], expected)
    assert mask.block_density() < 1.0


@pytest.mark.parametrize("call,message", [
    (lambda: BlockMask.sliding_tile((4, 4, 4), (2, 2, 2), (2, 3, 3)), "window: expected three odd integers"),
    (lambda: BlockMask.sliding_tile((4, 0, 4), (2, 2, 2), (1, 3, 3)), "grid: expected three integers >= 1"),
    (lambda: BlockMask.from_dense(torch.ones(4, 4), 16, 16), "mask: expected a bool tensor"),
    (lambda: BlockMask.from_dense(torch.ones(4, 4, dtype=torch.bool), 24, 16), "block_q: expected a power of two"),
    (lambda: BlockMask.from_groups(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long)),
     "q_groups, k_groups: expected batch rows"),
])
def test_builder_errors_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------- attention
def _qkv(B, Nq, Nk, H, Hk, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Nq, H, D, generator=g).to(dtype), torch.randn(B, Nk, Hk, D, generator=g).to(dtype),
            torch.randn(B, Nk, Hk, D, generator=g).to(dtype))


@pytest.mark.parametrize("return_lse", [False, True])
def test_cpu_block_sparse_path_matches_float64_reference(return_lse):
    grid = (3, 5, 7)
    mask = BlockMask.sliding_tile(grid, (2, 2, 3), (1, 3, 3), 16, 32)
    q, k, v = _qkv(2, 105, 105, 4, 2, 32, torch.float32, seed=2)
    k_lens = torch.tensor([105, 40])
    out = block_sparse_attention(q, k, v, mask, k_lens=k_lens, return_lse=return_lse)
    ref = masked_attention(q.double(), k.double(), v.double(), mask.to_dense(), k_lens=k_lens, return_lse=True)
    plain = masked_attention(q, k, v, mask.to_dense(), k_lens=k_lens, return_lse=True)
    results = out if return_lse else (out,)
    for name, x, p, r in zip(("out", "lse"), results, plain, ref):
        c = check(x, p, r, torch.float32)
        assert c.ok, f"{name}: {c}"


def test_cpu_path_per_head_masks_and_empty_rows():
    g = torch.Generator().manual_seed(3)
    dense = torch.rand(1, 2, 33, 50, generator=g) < 0.2
    dense[0, 0, :16] = False  # a whole query block with nothing to visit
    mask = BlockMask.from_dense(dense, 16, 16)
    q, k, v = _qkv(2, 33, 50, 2, 1, 16, torch.float32, seed=4)
    out, lse = block_sparse_attention(q, k, v, mask, return_lse=True)
    ref, ref_lse = masked_attention(q.double(), k.double(), v.double(), dense, return_lse=True)
    assert torch.allclose(out.double(), ref, atol=1e-5) and torch.equal(out[0, :16, 0], torch.zeros(16, 16))
    assert torch.isneginf(lse[:, 0, :16]).all() and torch.allclose(lse.double(), ref_lse.double(), atol=1e-5)
    assert torch.allclose(block_sparse_attention(q, k, v, mask).double(), ref, atol=1e-5)



def test_op_refuses_a_mask_of_other_sizes():
    q, k, v = _qkv(1, 40, 40, 2, 2, 16, torch.float32, seed=5)
    mask = BlockMask.from_dense(torch.ones(40, 41, dtype=torch.bool), 16, 16)
    with pytest.raises(ValueError, match="block_mask: built for"):
        bf.rope_attention(q, k, v, rotate_q=False, rotate_k=False, block_mask=mask)


@pytest.mark.parametrize("family", ["wan", "ovi", "ltx2"])
def test_public_op_reference_backend_rotates_and_visits_the_lists(family, monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    grid = (3, 5, 7)
    to_tiles, _ = tile_order(grid, (2, 2, 3))
    coords = bf.video_grid_coords(*grid)[None][:, to_tiles]
    table = {"wan": bf.RopeTable.wan(32), "ovi": bf.RopeTable.ovi_temporal(32),
             "ltx2": bf.RopeTable.ltx2(4 * 32, 4)}[family]
    mask = BlockMask.sliding_tile(grid, (2, 2, 3), (1, 3, 3), 16, 16)
    q, k, v = _qkv(1, 105, 105, 4, 4, 32, torch.float32, seed=6)
    coords = coords / 8 if family == "ltx2" else coords
    out, lse = bf.rope_attention(q, k, v, coords, coords, table, block_mask=mask, return_lse=True)
    q64, k64 = reference._rotated(q.double(), k.double(), coords, coords, table, table, True, True)
    ref, ref_lse = masked_attention(q64, k64, v.double(), mask.to_dense(), return_lse=True)
    q32, k32 = reference._rotated(q, k, coords, coords, table, table, True, True)
    plain, plain_lse = masked_attention(q32, k32, v, mask.to_dense(), return_lse=True)
    for name, x, p, r in (("out", out, plain, ref), ("lse", lse, plain_lse, ref_lse)):
        c = check(x, p, r, torch.float32)
        assert c.ok, f"{name}: {c}"


def test_block_counts_without_lists_match_the_mask():
    from baton_fast.block_mask import sliding_tile_block_counts

    grid, tile, window = (5, 7, 9), (2, 3, 4), (3, 1, 3)
    mask = BlockMask.sliding_tile(grid, tile, window, 32, 16)
    counts = sliding_tile_block_counts(grid, tile, window, 32, 16)
    assert counts == {"visited": mask.visited_blocks(), "full": int(mask.full_kv_num_blocks.sum()),
                      "total": mask.shape[2] * mask.num_k_blocks}


# ---------------------------------------------------------------------- the fused kernel on the visit lists
@pytest.mark.parametrize("dtype,family", [(torch.float32, "wan"), (torch.float16, "ovi"), (torch.bfloat16, "ltx2")])
def test_kernel_walks_the_lists_exactly(dtype, family, monkeypatch):
    """Triton kernel under the interpreter: sliding tiles with partial blocks (tiles do not divide the grid), GQA,
    key lengths, LSE, K rotated in the loop, against float64 under the same token mask."""
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")
    grid, tile = (3, 4, 5), (2, 2, 3)
    to_tiles, _ = tile_order(grid, tile)
    coords = bf.video_grid_coords(*grid)[None][:, to_tiles]
    coords = coords / 8 if family == "ltx2" else coords
    table = {"wan": bf.RopeTable.wan(32), "ovi": bf.RopeTable.ovi_temporal(32),
             "ltx2": bf.RopeTable.ltx2(2 * 32, 2)}[family]
    mask = BlockMask.sliding_tile(grid, tile, (1, 3, 3), 16, 16)
    assert mask.partial_masks.shape[0] and int(mask.full_kv_num_blocks.sum())
    batch = 1 if dtype == torch.float16 else 2  # one row once: the interpreter is slow
    q, k, v = _qkv(batch, 60, 60, 2, 1 if family != "ltx2" else 2, 32, dtype, seed=7)
    k_lens = torch.tensor([60, 41])[:batch]
    out, lse = bf.rope_attention(q, k, v, coords, coords, table, k_lens=k_lens, block_mask=mask, return_lse=True)
    q64, k64 = reference._rotated(q.double(), k.double(), coords, coords, table, table, True, True)
    ref = masked_attention(q64, k64, v.double(), mask.to_dense(), k_lens=k_lens, return_lse=True)
    qx, kx = reference._rotated(q, k, coords, coords, table, table, True, True)
    plain = masked_attention(qx, kx, v, mask.to_dense(), k_lens=k_lens, return_lse=True)
    for name, x, p, r in zip(("out", "lse"), (out, lse), plain, ref):
        c = check(x, p, r, dtype)
        assert c.ok, f"{name}: {c}"


def test_kernel_pre_rotated_tiles_and_empty_rows(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")
    g = torch.Generator().manual_seed(8)
    dense = torch.rand(1, 2, 40, 50, generator=g) < 0.3
    dense[:, :, 16:32, 16:48] = True  # full blocks
    dense[0, 1, 3] = False  # one query with no key
    dense[0, 0, 32:] = False  # a whole query block with no key
    mask = BlockMask.from_dense(dense, 16, 16)
    q, k, v = _qkv(1, 40, 50, 2, 2, 48, torch.float32, seed=9)
    out, lse = bf.rope_attention(q, k, v, rotate_q=False, rotate_k=False, block_mask=mask, return_lse=True)
    ref, ref_lse = masked_attention(q.double(), k.double(), v.double(), dense, return_lse=True)
    plain, plain_lse = masked_attention(q, k, v, dense, return_lse=True)
    assert check(out, plain, ref, torch.float32).ok and check(lse, plain_lse, ref_lse, torch.float32).ok
    assert torch.equal(out[0, 32:, 0], torch.zeros(8, 48)) and torch.isneginf(lse[0, 0, 32:]).all()
    assert torch.equal(out[0, 3, 1], torch.zeros(48)) and torch.isneginf(lse[0, 1, 3])
