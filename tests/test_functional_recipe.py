"""The functional recipe for Wan/Ovi-style code (docs/diffusers.md): a block that calls Wan's
``rope_apply`` on q and k and then attention is reproduced by one ``baton_fast.rope_attention``
call with ``RopeTable.wan`` and ``video_grid_coords``, built once.

Not bit-for-bit, for two exact reasons, each bounded below:
1. Wan rotates in complex128 (float64 angles ``t * f``, float64 cos/sin and products) and rounds
   once to fp32; baton-fast's contract computes angles and the rotation in fp32 (DESIGN.md §3),
   so a rotated element differs by about one fp32 rounding of the largest element.
2. ``F.scaled_dot_product_attention``'s CPU kernel (blocked online softmax) sums in another order
   than the reference path's softmax; identical rotated inputs already differ by a few roundings.
"""
import pytest
import torch
import torch.nn.functional as F

import baton_fast
from baton_fast import RopeTable, video_grid_coords

EPS = torch.finfo(torch.float32).eps
HEAD_DIM, HEADS = 128, 3


# ---- Wan's own code (Wan2.1 wan/modules/model.py), unchanged apart from the padding-aware attention below
def rope_params(max_seq_len, dim, theta=10000):
    assert dim % 2 == 0
    freqs = torch.outer(torch.arange(max_seq_len),
                        1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
    return torch.polar(torch.ones_like(freqs), freqs)


def rope_apply(x, grid_sizes, freqs):
    n, c = x.size(2), x.size(3) // 2
    freqs = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    output = []
    for i, (f, h, w) in enumerate(grid_sizes.tolist()):
        seq_len = f * h * w
        x_i = torch.view_as_complex(x[i, :seq_len].to(torch.float64).reshape(seq_len, n, -1, 2))
        freqs_i = torch.cat([
            freqs[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)
        ], dim=-1).reshape(seq_len, 1, -1)
        x_i = torch.view_as_real(x_i * freqs_i).flatten(2)
        x_i = torch.cat([x_i, x[i, seq_len:]])
        output.append(x_i)
    return torch.stack(output).float()


def wan_freqs(d=HEAD_DIM):
    return torch.cat([rope_params(1024, d - 4 * (d // 6)), rope_params(1024, 2 * (d // 6)),
                      rope_params(1024, 2 * (d // 6))], dim=1)


def wan_self_attention(q, k, v, grid_sizes, seq_lens):
    """Wan's ``flash_attention(rope_apply(q), rope_apply(k), v, k_lens=seq_lens)`` in plain PyTorch."""
    keep = torch.arange(k.shape[1])[None, :] < seq_lens[:, None]  # [B, Nk]
    q, k = rope_apply(q, grid_sizes, wan_freqs()), rope_apply(k, grid_sizes, wan_freqs())
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=keep[:, None, None, :])
    return out.transpose(1, 2)


# ---- the recipe
def recipe_coords(grid_sizes, length):
    """float32 ``[B, length, 3]``: each sample's latent grid, zeros (= not rotated) on its padding."""
    coords = torch.zeros(len(grid_sizes), length, 3)
    for i, (f, h, w) in enumerate(grid_sizes.tolist()):
        coords[i, :f * h * w] = video_grid_coords(f, h, w)
    return coords


def recipe_self_attention(q, k, v, grid_sizes, seq_lens):
    table = RopeTable.wan(HEAD_DIM)  # once per model
    coords = recipe_coords(grid_sizes, q.shape[1])  # once per forward, shared by every layer
    return baton_fast.rope_attention(q, k, v, coords, coords, table, k_lens=seq_lens)


def exact_rotation(x, coords):
    """The oracle: x ``[B, N, H, D]`` rotated in float64 with Wan's float64 frequencies at ``coords``."""
    freqs = wan_freqs()[1].angle()  # [D/2]: t, h, w bands, the angles at position 1
    phi = coords.double()[..., RopeTable.wan(HEAD_DIM).axes[0].long()] * freqs  # [B, N, D/2]
    x = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(x * torch.polar(torch.ones_like(phi), phi)[:, :, None, :]).flatten(-2)


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")


@pytest.mark.parametrize("grids", [[(3, 5, 7), (3, 5, 7)], [(3, 5, 7), (2, 4, 6)]], ids=["same-grid", "padded-batch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recipe_reproduces_wan_block(grids, seed):
    grid_sizes = torch.tensor(grids)
    seq_lens = grid_sizes.prod(1)
    length = int(seq_lens.max())
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(len(grids), length, HEADS, HEAD_DIM, generator=g) for _ in range(3))

    # 1. the rotation: within 2 fp32 roundings of the largest element
    coords = recipe_coords(grid_sizes, length)
    rotated = baton_fast.apply_rope(q, coords, RopeTable.wan(HEAD_DIM))
    wan_rotated = rope_apply(q, grid_sizes, wan_freqs())
    assert (rotated - wan_rotated).abs().max() <= 2 * EPS * q.abs().max()

    # 2. the block: within 16 fp32 roundings of the largest output (measured worst over 40 seeds: 8.5)
    out = recipe_self_attention(q, k, v, grid_sizes, seq_lens)
    wan = wan_self_attention(q, k, v, grid_sizes, seq_lens)
    assert torch.isfinite(out).all()
    assert (out - wan).abs().max() <= 16 * EPS * wan.abs().max()

    # 3. DESIGN.md §5 against the float64 block: no worse than 2x Wan's own fp32 error (plus a rounding floor)
    keep = torch.arange(length)[None, :] < seq_lens[:, None]
    exact = F.scaled_dot_product_attention(exact_rotation(q, coords).transpose(1, 2),
                                           exact_rotation(k, coords).transpose(1, 2), v.double().transpose(1, 2),
                                           attn_mask=keep[:, None, None, :]).transpose(1, 2)
    wan_error = (wan.double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= 2 * wan_error + 2 * EPS * exact.abs().max()
