"""The attentions of the model family (DESIGN.md §1), at full size and scaled down for a CPU.

A :class:`Side` is one side of an attention (its queries or its keys): how many tokens, how
they get coordinates and which rope table rotates them.  A :class:`Case` pairs two sides with a
head layout.  The same cases feed the cost model (:meth:`Case.shape`: plain integers) and the
measured benchmarks (:meth:`Side.coords`, :meth:`Side.table`: real tensors).

Full-size assumptions (one sample, batch 1):

- Ovi video, 5 s of 720x720 at 24 fps: Wan2.2 VAE (4x time, 16x space) and 2x2 patches give
  31 x 22 x 22 = 15,004 tokens; 24 heads x 128; 30 blocks.
- Ovi audio, 5 s: 157 latents (~31.4 per second), same tower width (24 x 128).
- Baton video planned tokens, 5 s: 31 keyframes x 27 x 27 SigLIP2 cells = 22,599 tokens, placed on
  the video latent grid by RS-RoPE (keyframes at 6 fps = the latent frame rate 24 / 4).
- LTX-2 video, 1280x704, 121 frames: VAE 32x space and 8x time (causal: 1 + 120 / 8 = 16 latent
  frames), patch 1: 16 x 22 x 40 = 14,080 tokens; 32 heads x 128 (inner dim 4096) with per-head
  rope tables over the whole inner dim; 48 blocks.
- Text: 512 context tokens (umT5 in Wan / Ovi); cross-attention to text is not rotated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from baton_fast.rope import (RopeTable, audio_coords, ltx2_video_coords, plan_video_coords,
                             video_grid_coords)

from .cost_model import AttentionShape

__all__ = ["Side", "Case", "FULL_CASES", "CPU_CASES", "CPU_HEADS", "CPU_VIDEO_GRID", "OVI_AUDIO_SCALE", "video_sweep"]

OVI_AUDIO_SCALE = 0.19676  # Ovi's audio rope frequency scale (~31 video latents / 157.5 audio latents)
OVI_LATENT_FPS = 6.0  # 24 fps video, 4x temporal VAE
CPU_HEADS = 4  # heads of the scaled-down CPU cases (head dims stay the models')
TEXT_TOKENS = 512

# kind -> number of coordinate axes a token of that kind carries (0: the side is not rotated)
_AXES = {"video": 3, "ltx2_video": 3, "video_time": 1, "audio": 1, "plan_video": 3, "unrotated": 0}


@dataclass(frozen=True)
class Side:
    """One side of an attention.

    ``kind`` and ``dims``:

    - ``"video"`` ``(frames, height, width)``: Wan / Ovi latent grid, Wan 3-D table shared by all heads;
    - ``"ltx2_video"`` ``(frames, height, width)``: LTX-2 patch midpoints, per-head LTX-2 table;
    - ``"video_time"`` ``(frames, height, width)``: video tokens seen by Ovi's audio<->video
      cross-attention: only the frame index, Ovi temporal table (scale 1);
    - ``"audio"`` ``(latents,)``: Ovi audio latents, temporal table scaled by :data:`OVI_AUDIO_SCALE`;
    - ``"plan_video"`` ``(keyframes, cells, latent_height, latent_width)``: Baton video planned tokens
      (``cells x cells`` per keyframe), RS-RoPE on the Wan table;
    - ``"unrotated"`` ``(tokens,)``: no rotation (text tokens, or queries of a text cross-attention).
    """

    kind: str
    dims: tuple

    def __post_init__(self):
        if self.kind not in _AXES:
            raise ValueError(f"kind: expected one of {sorted(_AXES)}, got {self.kind!r}")
        expected = 4 if self.kind == "plan_video" else 1 if self.kind in ("audio", "unrotated") else 3
        if len(self.dims) != expected or any(int(d) < 1 for d in self.dims):
            raise ValueError(f"dims: expected {expected} positive sizes for kind {self.kind!r}, got {self.dims}")

    @property
    def tokens(self) -> int:
        if self.kind == "plan_video":
            keyframes, cells = self.dims[:2]
            return keyframes * cells * cells
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def axes(self) -> int:
        """Coordinate floats per token that a rotation reads (0 when the side is not rotated)."""
        return _AXES[self.kind]

    @property
    def rotated(self) -> bool:
        return self.axes > 0

    def table_rows(self, heads: int) -> int:
        """Rows of this side's rope table: ``heads`` for per-head tables (LTX-2), else 1 (0: none)."""
        return heads if self.kind == "ltx2_video" else int(self.rotated)

    def table(self, heads: int, head_dim: int) -> Optional[RopeTable]:
        """The rope table of this side (``None`` when it is not rotated)."""
        if self.kind in ("video", "plan_video"):
            return RopeTable.wan(head_dim)
        if self.kind == "ltx2_video":
            return RopeTable.ltx2(heads * head_dim, heads)
        if self.kind == "video_time":
            return RopeTable.ovi_temporal(head_dim, 1.0)
        if self.kind == "audio":
            return RopeTable.ovi_temporal(head_dim, OVI_AUDIO_SCALE)
        return None

    def coords(self, device=None) -> torch.Tensor:
        """float32 ``[1, tokens, max(axes, 1)]`` (zeros for an unrotated side)."""
        if self.kind == "video":
            c = video_grid_coords(*self.dims, device=device)
        elif self.kind == "ltx2_video":
            c = ltx2_video_coords(*self.dims, device=device)
        elif self.kind == "video_time":
            c = video_grid_coords(*self.dims, device=device)[:, :1].contiguous()
        elif self.kind == "audio":
            c = audio_coords(self.dims[0], device=device)
        elif self.kind == "plan_video":
            keyframes, cells, height, width = self.dims
            c = plan_video_coords(keyframes, cells, height, width, latent_fps=OVI_LATENT_FPS,
                                  keyframe_fps=OVI_LATENT_FPS, device=device)
        else:
            c = torch.zeros(self.tokens, 1, device=device)
        return c[None]


@dataclass(frozen=True)
class Case:
    """One attention: queries ``q``, keys/values ``k``, ``heads x head_dim`` on both sides.

    ``layers``: blocks of the model that share one cos/sin table in the unfused path.
    ``k_static``: keys and values are fixed for the whole sampling run (Baton plan tokens).
    """

    name: str
    q: Side
    k: Side
    heads: int
    head_dim: int
    layers: int
    k_static: bool = False

    @property
    def self_attention(self) -> bool:
        return self.q == self.k

    def shape(self, batch: int = 1, dtype_bytes: int = 2) -> AttentionShape:
        """The integer description the cost model reads."""
        return AttentionShape(
            name=self.name, batch=batch, n_q=self.q.tokens, n_k=self.k.tokens, heads=self.heads,
            kv_heads=self.heads, head_dim=self.head_dim, q_axes=self.q.axes, k_axes=self.k.axes,
            q_table_rows=self.q.table_rows(self.heads), k_table_rows=self.k.table_rows(self.heads),
            shared_table=self.self_attention, layers=self.layers, dtype_bytes=dtype_bytes,
            k_static=self.k_static)


OVI_VIDEO = Side("video", (31, 22, 22))
OVI_AUDIO = Side("audio", (157,))

FULL_CASES = (
    Case("Ovi video self-attn", OVI_VIDEO, OVI_VIDEO, 24, 128, 30),
    Case("LTX-2 video self-attn", Side("ltx2_video", (16, 22, 40)), Side("ltx2_video", (16, 22, 40)), 32, 128, 48),
    Case("Baton plan cross-attn", OVI_VIDEO, Side("plan_video", (31, 27, 22, 22)), 24, 128, 30, k_static=True),
    Case("Ovi audio self-attn", OVI_AUDIO, OVI_AUDIO, 24, 128, 30),
    Case("text cross-attn", Side("unrotated", (OVI_VIDEO.tokens,)), Side("unrotated", (TEXT_TOKENS,)), 24, 128, 30),
    Case("Ovi audio->video cross-attn", OVI_AUDIO, Side("video_time", (31, 22, 22)), 24, 128, 30),
    Case("Ovi video->audio cross-attn", Side("video_time", (31, 22, 22)), OVI_AUDIO, 24, 128, 30),
)

# The same attentions scaled down for a CPU: CPU_HEADS heads, 2 x 16 x 16 = 512 video tokens (1/29 of
# Ovi's), plan tokens 2 keyframes x 20 x 20 = 800 (about the full-size 1.5 ratio to the video), 157
# audio tokens as in the model, and 512 text tokens.
CPU_VIDEO_GRID = (2, 16, 16)
_CPU_VIDEO = Side("video", CPU_VIDEO_GRID)
CPU_CASES = (
    Case("Ovi video self-attn", _CPU_VIDEO, _CPU_VIDEO, CPU_HEADS, 128, 30),
    Case("LTX-2 video self-attn", Side("ltx2_video", (1, 16, 32)), Side("ltx2_video", (1, 16, 32)), CPU_HEADS, 128, 48),
    Case("Baton plan cross-attn", _CPU_VIDEO, Side("plan_video", (2, 20, 16, 16)), CPU_HEADS, 128, 30, k_static=True),
    Case("Ovi audio self-attn", OVI_AUDIO, OVI_AUDIO, CPU_HEADS, 128, 30),
    Case("text cross-attn", Side("unrotated", (_CPU_VIDEO.tokens,)), Side("unrotated", (TEXT_TOKENS,)), CPU_HEADS, 128, 30),
    Case("Ovi audio->video cross-attn", OVI_AUDIO, Side("video_time", CPU_VIDEO_GRID), CPU_HEADS, 128, 30),
    Case("Ovi video->audio cross-attn", Side("video_time", CPU_VIDEO_GRID), OVI_AUDIO, CPU_HEADS, 128, 30),
)


def video_sweep(grids, heads: int) -> list[Case]:
    """Ovi-style video self-attention at each latent grid ``(frames, height, width)``: the cost curve."""
    return [Case("Ovi video self-attn", Side("video", tuple(g)), Side("video", tuple(g)), heads, 128, 30)
            for g in grids]
