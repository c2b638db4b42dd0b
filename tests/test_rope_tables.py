"""Rope tables and coordinate builders against the models' own code (DESIGN.md §2).

LTX-2 and Wan are checked against diffusers' rotary embeddings and rotary application;
Baton's RS-RoPE builders against the §2 formulas evaluated by hand; the relative
property of coordinate RoPE on the float64 reference and on the fused Triton op.
"""
import pytest
import torch
from diffusers.models.transformers import transformer_wan
from diffusers.models.transformers.transformer_ltx2 import (LTX2AudioVideoRotaryPosEmbed,
                                                            LTX2VideoTransformer3DModel,
                                                            apply_interleaved_rotary_emb, apply_split_rotary_emb)

import baton_fast as bf
from baton_fast import reference

CPU = torch.device("cpu")


def rel_err(result: torch.Tensor, expected: torch.Tensor) -> float:
    return ((result.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def rope_inner(x: torch.Tensor, coords: torch.Tensor, table: bf.RopeTable) -> torch.Tensor:
    """Reference rotation of ``x [B, N, H*D]`` (diffusers' layout) with the per-head table."""
    B, N, inner = x.shape
    heads = table.num_heads
    return reference.apply_rope(x.view(B, N, heads, inner // heads), coords, table).reshape(B, N, inner)


def diffusers_ltx2_rotate(x: torch.Tensor, cos_sin, rope_type: str) -> torch.Tensor:
    apply = apply_interleaved_rotary_emb if rope_type == "interleaved" else apply_split_rotary_emb
    return apply(x, cos_sin)


# ------------------------------------------------------------------------- LTX-2
# inner dims: 80 % 6 = 2 -> one identity padding pair, 64 % 6 = 4 -> two, 72 % 6 = 0 -> none
@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
@pytest.mark.parametrize("inner_dim, heads", [(80, 2), (64, 4), (72, 3)])
@pytest.mark.parametrize("patch_size, patch_size_t", [(1, 1), (2, 2)])
def test_ltx2_video_rope_matches_diffusers(rope_type, inner_dim, heads, patch_size, patch_size_t):
    frames, height, width, fps = 3, 5, 6, 25.0  # sizes not divisible by the patch: partial last patches
    rope = LTX2AudioVideoRotaryPosEmbed(dim=inner_dim, patch_size=patch_size, patch_size_t=patch_size_t,
                                        rope_type=rope_type, num_attention_heads=heads, modality="video")
    cos_sin = rope(rope.prepare_coords(2, frames, height, width, CPU, fps=fps))
    coords = bf.ltx2_video_coords(frames, height, width, patch_size=patch_size, patch_size_t=patch_size_t, fps=fps)
    table = bf.RopeTable.ltx2(inner_dim, heads, num_axes=3, interleaved=rope_type == "interleaved")
    x = torch.randn(2, coords.shape[0], inner_dim, generator=torch.Generator().manual_seed(0))
    expected = diffusers_ltx2_rotate(x, cos_sin, rope_type)
    assert rel_err(rope_inner(x, coords[None], table), expected) <= 1e-5


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
@pytest.mark.parametrize("patch_size_t, shift", [(1, 0), (2, 3)])
def test_ltx2_audio_rope_matches_diffusers(rope_type, patch_size_t, shift):
    frames, inner_dim, heads = 11, 56, 2
    rope = LTX2AudioVideoRotaryPosEmbed(dim=inner_dim, patch_size_t=patch_size_t, scale_factors=(4,),
                                        rope_type=rope_type, num_attention_heads=heads, modality="audio")
    cos_sin = rope(rope.prepare_coords(2, frames, CPU, shift=shift))
    coords = bf.ltx2_audio_coords(frames, patch_size_t=patch_size_t, scale_factor=4, shift=shift)
    table = bf.RopeTable.ltx2(inner_dim, heads, num_axes=1, interleaved=rope_type == "interleaved")
    x = torch.randn(2, coords.shape[0], inner_dim, generator=torch.Generator().manual_seed(1))
    expected = diffusers_ltx2_rotate(x, cos_sin, rope_type)
    assert rel_err(rope_inner(x, coords[None], table), expected) <= 1e-5


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
def test_ltx2_model_rotary_embeddings_match_diffusers(rope_type):
    """The four rotary embeddings LTX2VideoTransformer3DModel.forward builds: video and audio self-attention,
    and the temporal-only (num_pos_dims=1) a2v / v2a cross-attention ones over the audio inner dim."""
    video_max_pos, audio_max_pos, audio_heads, audio_head_dim = 20, 24, 2, 28
    audio_inner = audio_heads * audio_head_dim
    model = LTX2VideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=40, cross_attention_dim=16,
        patch_size=2, audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=audio_heads,
        audio_attention_head_dim=audio_head_dim, audio_cross_attention_dim=audio_inner, num_layers=1,
        caption_channels=16, pos_embed_max_pos=video_max_pos, audio_pos_embed_max_pos=audio_max_pos,
        rope_type=rope_type)
    frames, height, width, audio_frames, fps = 3, 4, 6, 9, 24.0
    # as in LTX2VideoTransformer3DModel.forward
    video_bounds = model.rope.prepare_video_coords(1, frames, height, width, CPU, fps=fps)
    audio_bounds = model.audio_rope.prepare_audio_coords(1, audio_frames, CPU)
    cross_max = max(video_max_pos, audio_max_pos)
    interleaved = rope_type == "interleaved"
    cases = [  # (diffusers cos/sin, our coordinates, our table)
        (model.rope(video_bounds),
         bf.ltx2_video_coords(frames, height, width, patch_size=2, fps=fps, base=(video_max_pos, 2048, 2048)),
         bf.RopeTable.ltx2(80, 2, num_axes=3, interleaved=interleaved)),
        (model.audio_rope(audio_bounds),
         bf.ltx2_audio_coords(audio_frames, base_frames=audio_max_pos),
         bf.RopeTable.ltx2(audio_inner, audio_heads, num_axes=1, interleaved=interleaved)),
        (model.cross_attn_rope(video_bounds[:, 0:1, :]),
         bf.ltx2_video_coords(frames, height, width, patch_size=2, fps=fps, base=(cross_max, 2048, 2048))[:, :1],
         bf.RopeTable.ltx2(audio_inner, audio_heads, num_axes=1, interleaved=interleaved)),
        (model.cross_attn_audio_rope(audio_bounds[:, 0:1, :]),
         bf.ltx2_audio_coords(audio_frames, base_frames=cross_max),
         bf.RopeTable.ltx2(audio_inner, audio_heads, num_axes=1, interleaved=interleaved)),
    ]
    g = torch.Generator().manual_seed(2)
    for cos_sin, coords, table in cases:
        x = torch.randn(1, coords.shape[0], table.num_heads * table.head_dim, generator=g)
        assert rel_err(rope_inner(x, coords[None], table), diffusers_ltx2_rotate(x, cos_sin, rope_type)) <= 1e-5


def test_ltx2_table_layout():
    """Identity padding pairs first, then pair k*A + a reads axis a at omega_k = theta^(k/(n-1)) * pi/2."""
    table = bf.RopeTable.ltx2(80, 2, num_axes=3)  # 40 pairs over the inner dim: n = 13 per axis, 1 padding pair
    freqs, axes = table.freqs.reshape(-1), table.axes.reshape(-1)
    assert table.freqs.shape == (2, 20) and freqs[0] == 0
    omega = (1e4 ** (torch.arange(13, dtype=torch.float64) / 12) * torch.pi / 2).float()
    torch.testing.assert_close(freqs[1:].view(13, 3), omega[:, None].expand(13, 3), rtol=0, atol=0)
    assert axes[1:].view(13, 3).tolist() == [[0, 1, 2]] * 13


# --------------------------------------------------------------------------- Wan
@pytest.mark.parametrize("head_dim", [128, 80])
def test_wan_rope_matches_diffusers_processor(head_dim, monkeypatch):
    """WanRotaryPosEmbed + WanAttnProcessor's own rotary application (a closure inside __call__, so the
    processor runs with identity projections and the rotated q, k are captured at the attention call)."""
    heads, patch = 2, (1, 2, 2)
    rope = transformer_wan.WanRotaryPosEmbed(head_dim, patch, max_seq_len=64)
    latents = torch.zeros(1, 4, 3, 6, 10)  # [B, C, F, H, W] -> 3 x 3 x 5 patches
    cos_sin = rope(latents)
    attn = transformer_wan.WanAttention(dim=heads * head_dim, heads=heads, dim_head=head_dim,
                                        processor=transformer_wan.WanAttnProcessor())
    attn.to_q = attn.to_k = attn.to_v = attn.norm_q = attn.norm_k = torch.nn.Identity()
    attn.to_out = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    captured = {}

    def capture_attention(query, key, value, **kwargs):
        captured["q"], captured["k"] = query, key  # [B, N, H, D]
        return query

    monkeypatch.setattr(transformer_wan, "dispatch_attention_fn", capture_attention)
    coords = bf.video_grid_coords(3, 3, 5)
    x = torch.randn(2, coords.shape[0], heads * head_dim, generator=torch.Generator().manual_seed(3))
    attn(x, rotary_emb=cos_sin)
    ours = reference.apply_rope(x.view(2, -1, heads, head_dim), coords[None], bf.RopeTable.wan(head_dim))
    assert rel_err(ours, captured["q"]) <= 1e-5
    assert rel_err(ours, captured["k"]) <= 1e-5


def test_wan_table_bands():
    """D=128: 22 pairs on t, 21 on h, 21 on w; f = 1e4^(-2k/d_axis)."""
    table = bf.RopeTable.wan(128)
    assert table.axes[0].tolist() == [0] * 22 + [1] * 21 + [2] * 21
    for band, d_axis in ((table.freqs[0, :22], 44), (table.freqs[0, 22:43], 42), (table.freqs[0, 43:], 42)):
        expected = 1e4 ** (-torch.arange(0, d_axis, 2, dtype=torch.float64) / d_axis)
        torch.testing.assert_close(band.double(), expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("head_dim, temporal_pairs", [(128, 22), (80, 14)])
def test_ovi_temporal_table_rotates_only_temporal_pairs(head_dim, temporal_pairs):
    scale = 0.19676
    table = bf.RopeTable.ovi_temporal(head_dim, scale=scale)
    wan = bf.RopeTable.wan(head_dim)
    assert (table.axes == 0).all()
    assert (table.freqs[0, :temporal_pairs] > 0).all() and (table.freqs[0, temporal_pairs:] == 0).all()
    torch.testing.assert_close(table.freqs[0, :temporal_pairs].double(),
                               wan.freqs[0, :temporal_pairs].double() * scale, rtol=1e-6, atol=0)
    # the identity pairs leave their dims untouched, the temporal ones do not
    x = torch.randn(1, 9, 2, head_dim, generator=torch.Generator().manual_seed(4))
    coords = bf.audio_coords(9)[None] + 3.0
    y = reference.apply_rope(x, coords, table)
    assert torch.equal(y[..., 2 * temporal_pairs:], x[..., 2 * temporal_pairs:])
    assert (y[..., :2 * temporal_pairs] - x[..., :2 * temporal_pairs]).abs().amax() > 0.1


# ---------------------------------------------------------------------- RS-RoPE
def test_plan_video_coords_hand_computed():
    """Keyframe grid S=2 on a 4x6 latent grid, latent fps 3, keyframes at 6 fps:
    t = k * 3/6 = 0, 0.5; h = (r + 0.5) * 4/2 - 0.5 = 0.5, 2.5; w = (s + 0.5) * 6/2 - 0.5 = 1, 4."""
    coords = bf.plan_video_coords(2, 2, 4, 6, latent_fps=3.0, keyframe_fps=6.0)
    expected = torch.tensor([[t, h, w] for t in (0.0, 0.5) for h in (0.5, 2.5) for w in (1.0, 4.0)])
    assert coords.dtype == torch.float32
    assert torch.equal(coords, expected)


def test_plan_video_coords_formula():
    """Ovi-sized: S=3 cells on a 22x22 latent grid, 31 latent frames for 5 s (6.2 latent fps)."""
    keyframes, S, H, W, latent_fps, keyframe_fps = 4, 3, 22, 20, 6.2, 6.0
    coords = bf.plan_video_coords(keyframes, S, H, W, latent_fps=latent_fps, keyframe_fps=keyframe_fps)
    rows = [[k * (latent_fps / keyframe_fps), (r + 0.5) * H / S - 0.5, (s + 0.5) * W / S - 0.5]
            for k in range(keyframes) for r in range(S) for s in range(S)]
    torch.testing.assert_close(coords, torch.tensor(rows, dtype=torch.float64).float(), rtol=0, atol=0)


def test_plan_video_coords_one_cell_per_latent_is_the_latent_grid():
    coords = bf.plan_video_coords(1, 4, 4, 4, latent_fps=6.0)
    assert torch.equal(coords, bf.video_grid_coords(1, 4, 4))


def test_plan_audio_coords_hand_computed():
    """2 chunks of 8 audio latents, 4 tokens each: token n of chunk m covers latents 8m+2n, 8m+2n+1,
    so t = (m + (n + 0.5)/4) * 8 - 0.5 = 8m + 2n + 0.5."""
    coords = bf.plan_audio_coords(2, 4, audio_latents_per_s=8.0)
    assert coords.dtype == torch.float32 and coords.shape == (8, 1)
    assert coords[:, 0].tolist() == [0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 14.5]
    # one token per latent: the tokens sit on the latents
    assert torch.equal(bf.plan_audio_coords(3, 5, audio_latents_per_s=5.0), bf.audio_coords(15))


# ------------------------------------------------------------- relative property
def relative_case(family: str):
    """(q coordinates, k coordinates, table, shared shift) for a family; q and k token sets differ."""
    if family == "wan":  # video latents attend to RS-RoPE video plan tokens
        q_coords = bf.video_grid_coords(2, 3, 4)
        k_coords = bf.plan_video_coords(2, 2, 3, 4, latent_fps=3.0)
        return q_coords, k_coords, bf.RopeTable.wan(64), torch.tensor([2.5, -1.25, 3.0])
    interleaved = family == "ltx2_interleaved"
    q_coords = bf.ltx2_video_coords(2, 3, 4, fps=24.0)
    k_coords = bf.ltx2_video_coords(2, 2, 2, patch_size=2, fps=24.0)
    return q_coords, k_coords, bf.RopeTable.ltx2(2 * 40, 2, 3, interleaved=interleaved), torch.tensor([0.25, -0.5, 0.125])


@pytest.mark.parametrize("family", ["wan", "ltx2_interleaved", "ltx2_split"])
def test_relative_property(family, monkeypatch):
    """Shifting every coordinate of q and k by one vector leaves the output unchanged: exactly (float64) on
    the reference, within the fp32 budget (twice plain fp32 PyTorch's error, DESIGN.md §5) on the fused op;
    shifting only the queries changes it far beyond that budget."""
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")
    q_coords, k_coords, table, shift = relative_case(family)
    g = torch.Generator().manual_seed(5)
    H, D = table.num_heads if table.num_heads > 1 else 2, table.head_dim
    q = torch.randn(1, q_coords.shape[0], H, D, generator=g)
    k, v = (torch.randn(1, k_coords.shape[0], H, D, generator=g) for _ in range(2))
    qc, kc = q_coords[None], k_coords[None]
    qs, ks = qc + shift, kc + shift

    def ref64(qc_, kc_):
        return reference.rope_attention(q.double(), k.double(), v.double(), qc_, kc_, table)

    truth = ref64(qc, kc)
    assert (ref64(qs, ks) - truth).abs().max() <= 1e-10
    plain_fp32 = reference.rope_attention(q, k, v, qs, ks, table)
    budget = 2 * (plain_fp32.double() - truth).abs().max().item() + 1e-6
    fused = bf.rope_attention(q, k, v, qs, ks, table)
    assert (fused.double() - truth).abs().max() <= budget
    q_only = bf.rope_attention(q, k, v, qs, kc, table)
    assert (q_only.double() - truth).abs().max() > 100 * budget


# ------------------------------------------------------------------- validation
def table_args(**overrides):
    args = dict(freqs=torch.rand(2, 8), axes=torch.zeros(2, 8, dtype=torch.int32))
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides, error, match", [
    (dict(freqs=torch.rand(2, 8, dtype=torch.float64)), TypeError, "freqs"),
    (dict(freqs=torch.rand(2, 8).half()), TypeError, "freqs"),
    (dict(freqs=[[0.5] * 8]), TypeError, "freqs"),
    (dict(freqs=torch.rand(16), axes=torch.zeros(16, dtype=torch.int32)), TypeError, "freqs"),
    (dict(freqs=torch.rand(1, 2, 8), axes=torch.zeros(1, 2, 8, dtype=torch.int32)), TypeError, "freqs"),
    (dict(axes=torch.zeros(2, 8)), TypeError, "axes"),
    (dict(axes=torch.zeros(2, 8, dtype=torch.bool)), TypeError, "axes"),
    (dict(axes=torch.zeros(1, 8, dtype=torch.int32)), ValueError, "axes"),
    (dict(axes=torch.zeros(2, 7, dtype=torch.int32)), ValueError, "axes"),
    (dict(freqs=torch.rand(2, 0), axes=torch.zeros(2, 0, dtype=torch.int32)), ValueError, "freqs"),
    (dict(freqs=torch.rand(0, 8), axes=torch.zeros(0, 8, dtype=torch.int32)), ValueError, "freqs"),
    (dict(freqs=-torch.rand(2, 8)), ValueError, "freqs"),
    (dict(freqs=torch.full((2, 8), float("nan"))), ValueError, "freqs"),
    (dict(freqs=torch.full((2, 8), float("inf"))), ValueError, "freqs"),
    (dict(axes=torch.full((2, 8), -1, dtype=torch.int32)), ValueError, "axes"),
    (dict(axes=torch.zeros(2, 8, dtype=torch.int32, device="meta")), ValueError, "axes on meta"),
])
def test_rope_table_rejects_bad_tables(overrides, error, match):
    with pytest.raises(error, match=match):
        bf.RopeTable(**table_args(**overrides))


def test_rope_table_accepts_integer_axes():
    table = bf.RopeTable(**table_args(axes=torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]] * 2)))
    assert table.axes.dtype == torch.int32 and table.num_axes == 3 and table.head_dim == 16 and table.num_heads == 2


@pytest.mark.parametrize("build, match", [
    (lambda: bf.RopeTable.from_bands([(0, [1.0, 0.5, 0.25])], head_dim=4), "head_dim"),
    (lambda: bf.RopeTable.from_bands([(0, [1.0])], head_dim=5), "head_dim"),
    (lambda: bf.RopeTable.ltx2(90, 4), "inner_dim"),
    (lambda: bf.RopeTable.ltx2(12, 4), "inner_dim"),
    (lambda: bf.RopeTable.ltx2(64, 2, num_axes=0), "num_axes"),
])
def test_rope_table_constructors_reject_bad_sizes(build, match):
    with pytest.raises(ValueError, match=match):
        build()
