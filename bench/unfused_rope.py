"""The unfused RoPE path that the benchmarks compare against, written the way diffusers does it.

diffusers' rotary embeddings (``WanRotaryPosEmbed``, ``LTX2AudioVideoRotaryPosEmbed``) materialise
per-token float32 cos and sin tensors with every pair's value stored twice (one per element), once
per forward; each attention processor then rotates Q and K in separate elementwise passes
(``x.float() * cos + rotate_half(x).float() * sin``) before calling the attention kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from baton_fast.reference import rope_angles
from baton_fast.rope import RopeTable

__all__ = ["CosSin", "materialise_cos_sin", "rotate"]


@dataclass(frozen=True)
class CosSin:
    """Materialised table: ``cos``, ``sin`` float32 ``[1, N, rows, D]`` (``rows`` = 1 when shared by the
    heads) and the pair layout."""

    cos: torch.Tensor
    sin: torch.Tensor
    interleaved: bool


def materialise_cos_sin(coords: torch.Tensor, table: RopeTable) -> CosSin:
    """Per-token cos/sin tables from coordinates ``[1, N, A]`` float32: each float32 ``[1, N, rows, D]``."""
    phi = rope_angles(coords, table)  # [1, N, rows, D/2]
    cos, sin = phi.cos(), phi.sin()
    if table.interleaved:
        return CosSin(cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1), True)
    return CosSin(torch.cat([cos, cos], -1), torch.cat([sin, sin], -1), False)


def rotate(x: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
    """Rotate ``x [B, N, H, D]`` with a materialised table; float32 arithmetic, result in x's dtype."""
    if cos_sin.interleaved:
        real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack([-imag, real], -1).flatten(-2)
    else:
        first, second = x.chunk(2, -1)
        rotated = torch.cat([-second, first], -1)
    return (x.float() * cos_sin.cos + rotated.float() * cos_sin.sin).to(x.dtype)
