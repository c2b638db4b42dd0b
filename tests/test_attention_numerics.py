"""Fused rope_attention (Triton, interpreter on CPU) against the float64 reference (DESIGN.md §5)."""
import pytest
import torch

import baton_fast as bf
from baton_fast import reference
from baton_fast.kernels.rope_attention import SHIPPED_CONFIGS, rope_attention_fwd
from baton_fast.numerics import check
from baton_fast.static_check import ATTENTION_HEAD_DIMS


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")


def per_head(table: bf.RopeTable, heads: int) -> bf.RopeTable:
    return bf.RopeTable(table.freqs[:heads].contiguous(), table.axes[:heads].contiguous(), table.interleaved)


def tables(family: str, D: int, H: int, Hk: int):
    """(q table, k table, number of coordinate axes, coordinate range) of a RoPE family."""
    if family == "wan":
        return bf.RopeTable.wan(D), None, 3, 20.0
    if family == "ovi_av":  # audio queries (scaled temporal) against video keys (frame index)
        return bf.RopeTable.ovi_temporal(D, scale=0.19676), bf.RopeTable.ovi_temporal(D), 3, 150.0
    if family in ("ltx2_interleaved", "ltx2_split"):
        t = bf.RopeTable.ltx2(H * D, H, 3, interleaved=family == "ltx2_interleaved")
        return t, per_head(t, Hk), 3, 1.0
    raise AssertionError(family)


# (family, dtype, B, Nq, Nk, H, Hk, D)
CASES = [
    ("wan", torch.float32, 2, 17, 130, 4, 4, 64),
    ("wan", torch.float16, 2, 17, 130, 4, 4, 64),
    ("wan", torch.float32, 1, 257, 257, 2, 1, 128),
    ("wan", torch.float16, 1, 130, 17, 4, 2, 80),
    ("wan", torch.float32, 1, 1, 257, 2, 2, 96),
    ("wan", torch.float16, 1, 257, 1, 2, 2, 32),
    ("wan", torch.float32, 1, 17, 33, 2, 1, 256),
    ("ovi_av", torch.float32, 2, 130, 17, 4, 2, 128),
    ("ovi_av", torch.float16, 2, 17, 130, 2, 2, 64),
    ("ltx2_interleaved", torch.float32, 2, 17, 130, 4, 2, 64),
    ("ltx2_interleaved", torch.float16, 1, 130, 17, 4, 4, 64),
    ("ltx2_split", torch.float32, 1, 130, 17, 4, 4, 64),
    ("ltx2_split", torch.float16, 2, 17, 130, 4, 2, 96),
    ("wan", torch.bfloat16, 2, 17, 33, 2, 1, 64),
    ("ovi_av", torch.bfloat16, 1, 33, 17, 2, 2, 128),
    ("ltx2_split", torch.bfloat16, 1, 19, 37, 2, 2, 80),
]


def make_inputs(family, dtype, B, Nq, Nk, H, Hk, D, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, H, D, generator=g).to(dtype)
    k = torch.randn(B, Nk, Hk, D, generator=g).to(dtype)
    v = torch.randn(B, Nk, Hk, D, generator=g).to(dtype)
    table, k_table, A, span = tables(family, D, H, Hk)
    q_coords = ((torch.rand(B, Nq, A, generator=g) * 2 - 1) * span).float()
    k_coords = ((torch.rand(B, Nk, A, generator=g) * 2 - 1) * span).float()
    return q, k, v, q_coords, k_coords, table, k_table


def assert_within_budget(name, result, plain, ref64, dtype):
    c = check(result, plain, ref64, dtype)
    assert c.ok, f"{name}: {c}"


@pytest.mark.parametrize("family,dtype,B,Nq,Nk,H,Hk,D", CASES)
def test_rope_attention_matches_float64(family, dtype, B, Nq, Nk, H, Hk, D):
    q, k, v, qc, kc, table, k_table = make_inputs(family, dtype, B, Nq, Nk, H, Hk, D, seed=Nq * 7 + Nk)
    # seeded like the inputs (the global generator made the key lengths depend on the tests run before)
    k_lens = torch.randint(1, Nk + 1, (B,), generator=torch.Generator().manual_seed(Nq * 7 + Nk)) if B > 1 else None
    kw = dict(k_table=k_table, k_lens=k_lens, return_lse=True)
    out, lse = bf.rope_attention(q, k, v, qc, kc, table, **kw)
    ref_out, ref_lse = reference.rope_attention(q.double(), k.double(), v.double(), qc, kc, table, **kw)
    plain_out, plain_lse = reference.rope_attention(q, k, v, qc, kc, table, **kw)
    assert out.dtype == dtype and out.shape == q.shape and lse.shape == (B, H, Nq)
    assert_within_budget("out", out, plain_out, ref_out, dtype)
    assert_within_budget("lse", lse, plain_lse, ref_lse, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("interleaved", [True, False])
def test_prerotated_keys_and_unrotated_queries(dtype, interleaved):
    """rotate_k=False reads K as given (cached plan K); rotate_q=False leaves Q as given (text queries)."""
    B, Nq, Nk, H, D = 2, 33, 70, 2, 64
    q, k, v, qc, kc, _, _ = make_inputs("wan", dtype, B, Nq, Nk, H, H, D, seed=3)
    table = bf.RopeTable.ltx2(H * D, H, 3, interleaved=interleaved)
    qc, kc = qc / 20, kc / 20  # LTX-2 coordinates live in [-1, 1]
    k_rot = reference.apply_rope(k.double(), kc, table)
    for rotate_q in (True, False):
        out = bf.rope_attention(q, k_rot.to(dtype), v, qc, kc, table, rotate_q=rotate_q, rotate_k=False)
        ref = reference.rope_attention(q.double(), k_rot, v.double(), qc, kc, table, rotate_q=rotate_q, rotate_k=False)
        plain = reference.rope_attention(q, k_rot.to(dtype), v, qc, kc, table, rotate_q=rotate_q, rotate_k=False)
        assert_within_budget(f"rotate_q={rotate_q}", out, plain, ref, dtype)


def test_fully_masked_rows_are_zero_with_minus_inf_lse():
    q, k, v, qc, kc, table, _ = make_inputs("wan", torch.float16, 3, 17, 40, 2, 1, 64, seed=5)
    out, lse = bf.rope_attention(q, k, v, qc, kc, table, k_lens=torch.tensor([0, 40, 1]), return_lse=True)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isneginf(lse[0]).all() and torch.isfinite(lse[1:]).all()
    # a single valid key: softmax weight 1 on it, output = (rotation-free) v of key 0
    torch.testing.assert_close(out[2].float(), v[2, :1].float().expand(17, 2, 64), atol=1e-3, rtol=0)


def test_lse_merges_split_keys():
    """Two partial attentions over disjoint key halves, merged with their LSEs, equal attention over all keys."""
    q, k, v, qc, kc, table, _ = make_inputs("wan", torch.float32, 1, 40, 90, 2, 2, 64, seed=11)
    full = bf.rope_attention(q, k, v, qc, kc, table)
    o1, l1 = bf.rope_attention(q, k[:, :50], v[:, :50], qc, kc[:, :50], table, return_lse=True)
    o2, l2 = bf.rope_attention(q, k[:, 50:], v[:, 50:], qc, kc[:, 50:], table, return_lse=True)
    l = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - l).transpose(1, 2)[..., None]  # [B, Nq, H, 1]
    w2 = torch.exp(l2 - l).transpose(1, 2)[..., None]
    torch.testing.assert_close(o1 * w1 + o2 * w2, full, atol=2e-6, rtol=1e-5)


def test_strided_inputs_match_contiguous():
    q, k, v, qc, kc, table, _ = make_inputs("wan", torch.float32, 2, 30, 45, 4, 2, 64, seed=2)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, [B, H, N, D] memory
    kv = torch.stack([k, v], 0).transpose(0, 3).contiguous().transpose(0, 3)  # interleaved k/v storage
    qc_wide = torch.cat([qc, torch.zeros_like(qc)], -1)[..., :3]
    out = bf.rope_attention(q_t, kv[0], kv[1], qc_wide, kc, table)
    torch.testing.assert_close(out, bf.rope_attention(q, k, v, qc, kc, table), atol=0, rtol=0)


def test_broadcast_coordinates_equal_expanded():
    q, k, v, _, _, table, _ = make_inputs("wan", torch.float32, 2, 24, 24, 2, 2, 64, seed=4)
    grid = bf.video_grid_coords(2, 3, 4)[None]
    a = bf.rope_attention(q, k, v, grid, grid, table)
    b = bf.rope_attention(q, k, v, grid.expand(2, -1, -1).contiguous(), grid.expand(2, -1, -1).contiguous(), table)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_plain_attention_needs_no_table_or_coordinates(monkeypatch, backend):
    """Text cross-attention: neither side rotated, no table, no coordinates; equals SDPA."""
    monkeypatch.setenv("BATON_FAST_BACKEND", backend)
    q, k, v, *_ = make_inputs("wan", torch.float32, 2, 17, 30, 4, 2, 64, seed=9)
    out = bf.rope_attention(q, k, v, rotate_q=False, rotate_k=False)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, sdpa, atol=2e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="table"):
        bf.rope_attention(q, k, v, rotate_k=False)


def test_angles_beyond_the_sin_cos_range_are_rejected():
    """|c * f| >= 2^16 pi/2 would leave the kernels' range reduction: a clear error, not a wrong result."""
    table = bf.RopeTable.ltx2(4 * 64, 4, 3)  # top frequency theta * pi/2 ~ 1.6e4
    q = torch.randn(1, 5, 4, 64)
    far = torch.full((1, 5, 3), 7.0)  # 7 * 1.6e4 > 1.03e5
    with pytest.raises(ValueError, match="q_coords: rotation angles"):
        bf.rope_attention(q, q, q, far, far / 10, table)
    with pytest.raises(ValueError, match="coords: rotation angles"):
        bf.apply_rope(q, far, table)
    bf.rope_attention(q, q, q, far / 10, far / 10, table)  # 1.1e5 / 10: fine


def shipped_tiles():
    """Each distinct shipped ``(BLOCK_M, BLOCK_N)`` once, with the first (arch, half dim, family) shipping it."""
    tiles = {}
    for (major, half_pad, family), configs in sorted(SHIPPED_CONFIGS.items()):
        for config in configs:
            tiles.setdefault(config[:2], (major, half_pad, family, config))
    return [pytest.param(*t, id=f"{t[3][0]}x{t[3][1]}-sm{t[0]}x-{t[2]}") for _, t in sorted(tiles.items())]


@pytest.mark.parametrize("major,half_pad,family,config", shipped_tiles())
def test_every_shipped_tile_matches_float64_in_bf16(major, half_pad, family, config):
    """Each shipped (BLOCK_M, BLOCK_N) under the interpreter, passed explicitly, in bf16: one partial query
    tile, a full and a partial key tile (and a shorter key length), at a head dim of its list (D = 80 for
    the padded 64 pairs).  One program per batch keeps the interpreter fast."""
    block_m, block_n = config[:2]
    D = ATTENTION_HEAD_DIMS[half_pad][-1]
    B, Nq, Nk, H, Hk = 2, block_m - 3, block_n + 5, 1, 1
    dtype = torch.bfloat16
    q, k, v, qc, kc, table, _ = make_inputs("wan", dtype, B, Nq, Nk, H, Hk, D, seed=block_m + block_n)
    rotate = family == "fused"  # the fused family rotates Q and K in the kernel; plain reads them as given
    k_lens = torch.tensor([Nk, Nk - block_n // 2], dtype=torch.int32)
    kw = dict(rotate_q=rotate, rotate_k=rotate, k_lens=k_lens, return_lse=True)
    freqs, axes = table.freqs.contiguous(), table.axes.contiguous()
    out, lse = rope_attention_fwd(q, k, v, qc, kc, freqs, axes, freqs, axes, table.interleaved, scale=D ** -0.5,
                                  config=config, **kw)
    ref = reference.rope_attention(q.double(), k.double(), v.double(), qc, kc, table, **kw)
    plain = reference.rope_attention(q, k, v, qc, kc, table, **kw)
    assert_within_budget(f"{config} out", out, plain[0], ref[0], dtype)
    assert_within_budget(f"{config} lse", lse, plain[1], ref[1], dtype)
