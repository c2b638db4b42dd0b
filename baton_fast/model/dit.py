"""Dual-branch DiT: Ovi's twin video/audio towers of Wan-style blocks plus Baton's plan cross-attention.

One fusion layer = one video block and one audio block (Ovi pairs them 1:1 at full size):

1. self-attention per modality, adaLN-modulated; QK RMSNorm across the inner dim fused with RoPE
   (3-D Wan table on the video latent grid, scaled temporal table on the audio index);
2. text cross-attention fused with cross-modal cross-attention: one query projection, two attentions
   (text keys without RoPE and with key lengths; the other modality's tokens after their
   self-attention, under the temporal RoPE aligned across modalities), outputs summed, one output
   projection;
3. Baton's plan cross-attention, cascaded after step 2: RS-RoPE with the branch's own table; its keys
   and values (projection of the embedded planned tokens, keys rotated once) are computed once per
   sampling run by :meth:`DualBranchDiT.prepare` and cached in the :class:`RunContext`
   (:class:`PlanKeyValues`, which also keeps them quantised, once per scheme, for the quantised steps);
4. FFN, adaLN-modulated.

SpA2V's layout masks (:class:`~baton_fast.model.layout.LayoutGuidance`, optional per evaluation)
restrict steps 1 and 2a of the video branch: a masked forward runs its video tokens in the layout's group order
(step 1 on the layout's block mask); a sliding-tile window (``prepare(..., sparse_window=...)``) runs them in
tile-major order.  Either way the coordinates travel with the tokens, and the tokens go back to raster order
before the head.  On quantised steps (the sampler's quant schedule) the unmasked attentions whose Q and K come
from the QK RMSNorm + RoPE pre-pass quantise them there (:func:`~baton_fast.model.attention.prepass_quant`); the
plan cross-attention quantises Q in its RMSNorm + RoPE pass and reads the cached K and V quantised.

Everything that is fixed for a sampling run (token coordinates, RoPE tables, embedded text, plan
keys/values) lives in a :class:`RunContext`; a denoise step only reads it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

import baton_fast
from baton_fast import quant
from baton_fast.rope import RopeTable, audio_coords, video_grid_coords

from .attention import CrossAttention, FeedForward, KeyValue, SelfAttention, prepass_quant, split_heads
from .config import BatonConfig, BranchConfig, RunShape
from .layout import NO_MASKS, UNMASKED, AttentionGroups, LayoutGuidance, VideoMasks
from .planner import PlannedTokens
from .sparsity import VideoSparsity

__all__ = ["BranchGeometry", "PlanKeyValues", "RunContext", "DualBranchDiT", "FusionBlock", "patchify_video",
           "unpatchify_video", "patchify_audio", "unpatchify_audio", "timestep_embedding", "check_run_values"]


# ------------------------------------------------------------------ patchify
def patchify_video(latents: torch.Tensor, patch) -> torch.Tensor:
    """``[B, C, F, H, W] -> [B, (F/pt)(H/ph)(W/pw), C*pt*ph*pw]``, tokens in row-major (t, h, w) order."""
    B, C, F, H, W = latents.shape
    pt, ph, pw = patch
    x = latents.reshape(B, C, F // pt, pt, H // ph, ph, W // pw, pw)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, (F // pt) * (H // ph) * (W // pw), C * pt * ph * pw)


def unpatchify_video(tokens: torch.Tensor, grid, patch, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify_video`: ``[B, f*h*w, C*pt*ph*pw] -> [B, C, f*pt, h*ph, w*pw]``."""
    (f, h, w), (pt, ph, pw) = grid, patch
    x = tokens.reshape(tokens.shape[0], f, h, w, channels, pt, ph, pw)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(tokens.shape[0], channels, f * pt, h * ph, w * pw)


def patchify_audio(latents: torch.Tensor, patch) -> torch.Tensor:
    """``[B, L, C] -> [B, L/pa, pa*C]``."""
    B, L, C = latents.shape
    return latents.reshape(B, L // patch[0], patch[0] * C)


def unpatchify_audio(tokens: torch.Tensor, patch, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify_audio`: ``[B, L/pa, pa*C] -> [B, L, C]``."""
    return tokens.reshape(tokens.shape[0], tokens.shape[1] * patch[0], channels)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's sinusoidal embedding of ``timesteps [B]`` (0..1000): float32 ``[B, dim]`` = ``[cos, sin]``."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    angles = timesteps.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=1)


# ------------------------------------------------------------------ run context
@dataclass(frozen=True)
class BranchGeometry:
    """Where one branch's tokens sit and which tables rotate them (head dim of this branch).

    Attributes:
        coords: float32 ``[1, N, A]`` token coordinates (video ``(t, h, w)`` latent grid, audio index).
        table: self-attention table, also the RS-RoPE table of the plan cross-attention.
        temporal_table / other_temporal_table: this branch's and the other branch's side of the
            temporal RoPE aligned across modalities (both read axis 0 of their own coordinates).
        plan_coords: float32 ``[1, P, A]`` RS-RoPE coordinates of the planned tokens, or None.
        shard: under sequence parallelism, the :class:`~baton_fast.distributed.dit.SequenceSharding` of this
            branch (coordinates and plan coordinates are then this rank's part); None when one rank holds all.
    """

    coords: torch.Tensor
    table: RopeTable
    temporal_table: RopeTable
    other_temporal_table: RopeTable
    plan_coords: Optional[torch.Tensor]
    shard: Optional[object] = None


class PlanKeyValues(tuple):
    """One block's plan keys and values for a run, the pair ``(k, v)`` ``[B, P, H, D]`` (k rotated by RS-RoPE),
    and their quantised forms for the quantised steps, made from them once per scheme (:meth:`quantized`): they
    live and go with the pair (a new run builds new pairs)."""

    def __new__(cls, k: torch.Tensor, v: torch.Tensor):
        return super().__new__(cls, (k, v))

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self._quantized = {}

    def __getnewargs__(self):  # copy and pickle rebuild the pair from (k, v)
        return tuple(self)

    def quantized(self, scheme: str) -> tuple:
        """``(k, v)`` for ``scheme``'s attention: K smoothed by its token mean and quantised per (token, head)
        (:func:`~baton_fast.quant.quantize`), V as the scheme reads it (:func:`~baton_fast.quant.quantize_v`)."""
        if scheme not in self._quantized:
            k, v = self
            self._quantized[scheme] = (quant.quantize(k, scheme, smooth=True), quant.quantize_v(v, scheme))
        return self._quantized[scheme]


@dataclass(frozen=True)
class BranchContext:
    """Per-run inputs of one branch: embedded text ``[B, L, dim]``, its lengths ``int32 [B]``, geometry, and
    the cached plan keys/values, one :class:`PlanKeyValues` pair ``[B, P, H, D]`` per block (or None)."""

    text: torch.Tensor
    text_lens: torch.Tensor
    geometry: BranchGeometry
    plan_kv: Optional[list]


@dataclass(frozen=True)
class RunContext:
    """Everything fixed for one sampling run (see the module docstring)."""

    shape: RunShape
    video: BranchContext
    audio: BranchContext
    sparsity: Optional[VideoSparsity] = None  # sliding-tile window: video tokens run in its tile-major order

    @property
    def batch(self) -> int:
        return self.video.text.shape[0]

    def video_reordered(self, order: torch.Tensor) -> RunContext:
        """This context with the video coordinates moved by ``order`` (int64 ``[Nv]``), as the video tokens are."""
        geo = self.video.geometry
        video = dataclasses.replace(self.video, geometry=dataclasses.replace(geo, coords=geo.coords[:, order]))
        return dataclasses.replace(self, video=video)


def check_run_values(video: BranchGeometry, audio: BranchGeometry, text_lens, text_tokens: int) -> None:
    """The value checks of a run, once (a denoise step then reads nothing back from the device): every coordinate
    set against every table that rotates it (self-attention and the plan queries; both sides of the cross-modal
    attention), and the text key lengths.  The plan keys are checked where they are rotated
    (:meth:`PlanCrossAttention.keys_values`)."""
    for own, other in ((video, audio), (audio, video)):
        baton_fast.check_coords(own.coords, own.table)
        baton_fast.check_coords(own.coords, own.temporal_table)
        baton_fast.check_coords(other.coords, own.other_temporal_table)
    for lens in text_lens:
        baton_fast.check_key_lengths(lens, text_tokens)


# ------------------------------------------------------------------ blocks
class TextAndCrossModalAttention(CrossAttention):
    """Ovi's fused cross-attention: one query projection; text keys (``self.kv``: no RoPE, ``k_lens``) and
    the other modality's tokens (``self.other_kv``: aligned temporal RoPE on both sides); the two outputs
    are summed before ``o``."""

    def __init__(self, dim: int, num_heads: int, other_dim: int, eps: float):
        super().__init__(dim, num_heads, dim, eps)
        self.norm_other = nn.LayerNorm(other_dim, eps=eps)
        self.other_kv = KeyValue(other_dim, dim, num_heads, eps)

    def forward(self, x, text, text_lens, other, geo: BranchGeometry, other_coords,
                text_groups: AttentionGroups = UNMASKED, other_shard=None) -> torch.Tensor:
        """Both attentions read Q and K already normalised (and rotated) by the fused pre-pass, so they run the
        kernel's fast ``plain`` tiles (quantised there on quantised steps, unless masked or sharded); the values
        were checked by :meth:`DualBranchDiT.prepare`."""
        q = split_heads(self.q(x), self.num_heads)
        norm = dict(q_weight=self.norm_q.weight, eps=self.norm_q.eps, check_values=False)
        k, v = self.kv.projections(text)
        q_text, k = baton_fast.qk_rmsnorm_rope(q, k, k_weight=self.kv.norm_k.weight,
                                               **prepass_quant(text_groups.q_groups is not None, q, k, v), **norm)
        out = baton_fast.rope_attention(q_text, k, v, rotate_q=False, rotate_k=False, k_lens=text_lens,
                                        q_groups=text_groups.q_groups, k_groups=text_groups.k_groups,
                                        check_values=False)
        k, v = self.other_kv.projections(self.norm_other(other))
        other_quant = prepass_quant(False, q, k, v) if other_shard is None else {}  # sharded: merged by LSE
        q_other, k = baton_fast.qk_rmsnorm_rope(q, k, geo.coords, other_coords, geo.temporal_table,
                                                k_table=geo.other_temporal_table, k_weight=self.other_kv.norm_k.weight,
                                                **other_quant, **norm)
        other_attention = baton_fast.rope_attention if other_shard is None else other_shard.keys_attention
        out = out + other_attention(q_other, k, v, rotate_q=False, rotate_k=False)
        return self.o(out.flatten(2))


class PlanCrossAttention(CrossAttention):
    """Baton's plan cross-attention with RS-RoPE; keys/values come from :meth:`keys_values`, once per run."""

    def keys_values(self, plan: torch.Tensor, geo: BranchGeometry) -> PlanKeyValues:
        """Embedded planned tokens ``[B, P, dim]`` -> ``(k rotated by RS-RoPE, v)``, each ``[B, P, H, D]``."""
        k, v = self.kv(plan)
        return PlanKeyValues(baton_fast.apply_rope(k, geo.plan_coords, geo.table), v)

    def forward(self, x, kv: PlanKeyValues, geo: BranchGeometry) -> torch.Tensor:
        """Q rotated by the fused pre-pass, K cached rotated: the largest attention of Baton on the ``plain`` tiles.
        On quantised steps (:func:`prepass_quant`) the pre-pass quantises Q and the attention reads ``kv``'s
        quantised K and V (made once per run and scheme); a sequence-parallel rank (``geo.shard``) moves float
        queries between ranks and lets its attention quantise inside the call."""
        q = split_heads(self.q(x), self.num_heads)
        quantized = prepass_quant(False, q, *kv) if geo.shard is None else {}
        q = self.rotated_queries(q, geo.coords, geo.table, **quantized)
        k, v = kv.quantized(quantized["quant"]) if quantized else kv
        attention = baton_fast.rope_attention if geo.shard is None else geo.shard.plan_attention
        return self.o(attention(q, k, v, rotate_q=False, rotate_k=False).flatten(2))


class BranchBlock(nn.Module):
    """One Wan-style block of one branch, split into the stages the fusion layer interleaves."""

    def __init__(self, cfg: BranchConfig, other_dim: int, planned: bool, eps: float):
        super().__init__()
        dim = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = TextAndCrossModalAttention(dim, cfg.num_heads, other_dim, eps)
        self.norm_plan = nn.LayerNorm(dim, eps=eps) if planned else None
        self.plan_attn = PlanCrossAttention(dim, cfg.num_heads, dim, eps) if planned else None
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = FeedForward(dim, cfg.ffn_dim)

    def modulation_terms(self, time_mod: torch.Tensor):
        """``time_mod [B, 6, dim]`` -> shift/scale/gate of attention and FFN, each ``[B, 1, dim]``."""
        return (self.modulation + time_mod).chunk(6, dim=1)

    def attention_input(self, x, mod):
        """The timestep-modulated input of the self-attention, ``[B, N, dim]`` (TeaCache's indicator)."""
        shift, scale = mod[0], mod[1]
        return self.norm1(x) * (1 + scale) + shift

    def self_attention(self, x, mod, geo: BranchGeometry, masks: VideoMasks = NO_MASKS):
        """``masks``: a block mask (one rank) or group bitmasks (a sequence-parallel rank, ``geo.shard``)."""
        if geo.shard is None:
            out = self.self_attn(self.attention_input(x, mod), geo.coords, geo.table, block_mask=masks.block_mask)
        else:
            out = geo.shard.self_attention(self.self_attn)(self.attention_input(x, mod), geo.coords, geo.table,
                                                           *masks.self_groups)
        return x + out * mod[2]

    def cross_attention(self, x, ctx: BranchContext, other, other_coords, text_groups: AttentionGroups = UNMASKED,
                        other_shard=None):
        """``other_shard``: the other branch's sharding when ``other`` is this rank's part of its tokens."""
        return x + self.cross_attn(self.norm3(x), ctx.text, ctx.text_lens, other, ctx.geometry, other_coords,
                                   text_groups, other_shard)

    def plan_and_ffn(self, x, mod, plan_kv, geo: BranchGeometry):
        if self.plan_attn is not None:
            x = x + self.plan_attn(self.norm_plan(x), plan_kv, geo)
        shift, scale, gate = mod[3], mod[4], mod[5]
        return x + self.ffn(self.norm2(x) * (1 + scale) + shift) * gate


class FusionBlock(nn.Module):
    """One video block and one audio block; the cross-modal attention of each reads the other branch's
    tokens after its self-attention (pre-update with respect to the cross-attention)."""

    def __init__(self, cfg: BatonConfig):
        super().__init__()
        planned = cfg.planner is not None
        self.video = BranchBlock(cfg.video, cfg.audio.dim, planned, cfg.eps)
        self.audio = BranchBlock(cfg.audio, cfg.video.dim, planned, cfg.eps)

    def forward(self, video, audio, video_mod, audio_mod, video_ctx: BranchContext, audio_ctx: BranchContext,
                video_plan_kv=None, audio_plan_kv=None, masks: VideoMasks = NO_MASKS):
        """video ``[B, Nv, dv]``, audio ``[B, Na, da]``; ``*_mod [B, 6, d]`` from the timestep; ``masks``
        restrict the video self- and text cross-attention (:meth:`DualBranchDiT.video_masks`, for the video
        tokens in the order they come in); returns both updated."""
        gv, ga = video_ctx.geometry, audio_ctx.geometry
        mv, ma = self.video.modulation_terms(video_mod), self.audio.modulation_terms(audio_mod)
        video = self.video.self_attention(video, mv, gv, masks)
        audio = self.audio.self_attention(audio, ma, ga)
        video, audio = (self.video.cross_attention(video, video_ctx, audio, ga.coords, masks.text_groups),
                        self.audio.cross_attention(audio, audio_ctx, video, gv.coords, other_shard=gv.shard))
        return (self.video.plan_and_ffn(video, mv, video_plan_kv, gv),
                self.audio.plan_and_ffn(audio, ma, audio_plan_kv, ga))


class Head(nn.Module):
    """Output head: LayerNorm modulated by the timestep embedding, then a linear map to patch values."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x, time_emb):
        shift, scale = (self.modulation + time_emb[:, None]).chunk(2, dim=1)
        return self.linear(self.norm(x) * (1 + scale) + shift)


class BranchIO(nn.Module):
    """A branch outside its blocks: patch, text, timestep and planned-token embeddings, and the head."""

    def __init__(self, cfg: BranchConfig, text_dim: int, freq_dim: int, plan_dim: Optional[int], eps: float):
        super().__init__()
        dim, patch_values = cfg.dim, cfg.latent_channels * cfg.patch_volume
        self.freq_dim = freq_dim
        self.patch_embed = nn.Linear(patch_values, dim)
        self.text_embed = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.plan_embed = (nn.Sequential(nn.Linear(plan_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
                           if plan_dim else None)
        self.head = Head(dim, patch_values, eps)

    def time(self, timesteps: torch.Tensor, dtype):
        """``timesteps [B]`` -> (embedding ``[B, dim]``, block modulation ``[B, 6, dim]``)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.freq_dim).to(dtype))
        return emb, self.time_proj(emb).unflatten(1, (6, -1))


# ------------------------------------------------------------------ model
class DualBranchDiT(nn.Module):
    """The dual-branch diffusion transformer (see the module docstring).

    Use: ``ctx = dit.prepare(shape, video_text, video_lens, audio_text, audio_lens, plan)`` once per
    sampling run, then ``dit(video_latents, audio_latents, timesteps, ctx[, layout])`` per evaluation.
    """

    def __init__(self, cfg: BatonConfig):
        super().__init__()
        if cfg.audio.num_layers != cfg.video.num_layers:
            raise ValueError(f"audio.num_layers: expected {cfg.video.num_layers} (one audio block per video block), "
                             f"got {cfg.audio.num_layers}")
        self.cfg = cfg
        planner = cfg.planner
        self.video_io = BranchIO(cfg.video, cfg.text_dim, cfg.freq_dim, planner and planner.video_feature_dim, cfg.eps)
        self.audio_io = BranchIO(cfg.audio, cfg.text_dim, cfg.freq_dim, planner and planner.audio_feature_dim, cfg.eps)
        self.blocks = nn.ModuleList(FusionBlock(cfg) for _ in range(cfg.video.num_layers))

    @property
    def dtype(self) -> torch.dtype:
        return self.video_io.patch_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.video_io.patch_embed.weight.device

    # ---------------------------------------------------------------- per run
    def geometry(self, shape: RunShape, plan: Optional[PlannedTokens], device) -> tuple:
        """Coordinates and RoPE tables of both branches for one run: ``(video, audio)`` :class:`BranchGeometry`."""
        cfg, hv, ha = self.cfg, self.cfg.video.head_dim, self.cfg.audio.head_dim
        video = BranchGeometry(
            coords=video_grid_coords(*shape.video_grid, device=device)[None],
            table=RopeTable.wan(hv).to(device),
            temporal_table=RopeTable.ovi_temporal(hv, scale=1.0).to(device),
            other_temporal_table=RopeTable.ovi_temporal(hv, scale=cfg.audio_rope_scale).to(device),
            plan_coords=plan.video_coords.to(device) if plan is not None else None)
        audio_table = RopeTable.ovi_temporal(ha, scale=cfg.audio_rope_scale).to(device)
        audio = BranchGeometry(
            coords=audio_coords(shape.audio_latents // cfg.audio.patch[0], device=device)[None],
            table=audio_table,
            temporal_table=audio_table,
            other_temporal_table=RopeTable.ovi_temporal(ha, scale=1.0).to(device),
            plan_coords=plan.audio_coords.to(device) if plan is not None else None)
        return video, audio

    def prepare(self, shape: RunShape, video_text, video_text_lens, audio_text, audio_text_lens,
                plan: Optional[PlannedTokens] = None, mesh=None, sparse_window=None) -> RunContext:
        """Build the :class:`RunContext`: geometry, embedded text and the plan keys/values of every block.

        ``*_text``: text-encoder states ``[B, L, text_dim]`` (same ``L`` for both), ``*_text_lens`` int ``[B]``;
        ``plan``: the planner's output for the same batch (required iff the config has a planner);
        ``mesh``: a :class:`~baton_fast.distributed.SequenceMesh` to shard the video and video plan tokens over
        (every rank calls with the same inputs; see :mod:`baton_fast.distributed.dit`), or None;
        ``sparse_window``: ``(wt, wh, ww)`` odd, in tiles: the sliding-tile window of the video self-attention
        (:mod:`baton_fast.model.sparsity`; the video tokens then run in tile-major order), or None.
        """
        if (plan is None) != (self.cfg.planner is None):
            raise ValueError(f"plan: preset {self.cfg.name!r} " + ("needs planned tokens" if plan is None
                                                                   else "has no plan cross-attention"))
        if video_text.shape[-1] != self.cfg.text_dim or audio_text.shape != video_text.shape:
            raise ValueError(f"video_text, audio_text: expected [B, L, {self.cfg.text_dim}] each, got "
                             f"{tuple(video_text.shape)} and {tuple(audio_text.shape)}")
        dtype, device = self.dtype, self.device
        gv, ga = self.geometry(shape, plan, device)
        check_run_values(gv, ga, (video_text_lens, audio_text_lens), video_text.shape[1])
        sparsity = None
        if sparse_window is not None:
            if mesh is not None:
                raise ValueError("sparse_window: not supported with a sequence-parallel mesh")
            sparsity = VideoSparsity.build(shape.video_grid, sparse_window, device)
            gv = dataclasses.replace(gv, coords=gv.coords[:, sparsity.to_tiles])  # coordinates travel with tokens
        video_plan = plan.video if plan is not None else None
        if mesh is not None:
            from baton_fast.distributed.dit import SequenceSharding
            sharding = SequenceSharding.for_run(mesh, shape.video_tokens, None if plan is None else plan.video.shape[1])
            gv, video_plan = sharding.geometry(gv), sharding.plan.take(video_plan) if plan is not None else None
        kv_v = kv_a = None
        if plan is not None:
            pv = self.video_io.plan_embed(video_plan.to(device, dtype))
            pa = self.audio_io.plan_embed(plan.audio.to(device, dtype))
            kv_v = [blk.video.plan_attn.keys_values(pv, gv) for blk in self.blocks]
            if mesh is not None:  # in the layout the sharded plan attention reads
                kv_v = [PlanKeyValues(*sharding.cache_plan(kv)) for kv in kv_v]
            kv_a = [blk.audio.plan_attn.keys_values(pa, ga) for blk in self.blocks]
        return RunContext(
            shape=shape,
            video=BranchContext(self.video_io.text_embed(video_text.to(device, dtype)),
                                video_text_lens.to(device, torch.int32), gv, kv_v),
            audio=BranchContext(self.audio_io.text_embed(audio_text.to(device, dtype)),
                                audio_text_lens.to(device, torch.int32), ga, kv_a),
            sparsity=sparsity)

    # ---------------------------------------------------------------- per evaluation
    @staticmethod
    def video_masks(ctx: RunContext, layout: Optional[LayoutGuidance] = None, sparse: bool = False) -> VideoMasks:
        """The masks of one evaluation's video attentions: the layout's (block mask and group masks in its group
        order; on a sequence-parallel rank, bitmasks of this rank's raster tokens), or ``ctx.sparsity``'s window
        when ``sparse``, or none."""
        if layout is not None:
            shard = ctx.video.geometry.shard
            return layout.grouped_masks() if shard is None else layout.sharded_masks(shard.video.take(layout.video_groups))
        return VideoMasks(block_mask=ctx.sparsity.mask) if sparse else NO_MASKS

    def run_blocks(self, video, audio, video_mod, audio_mod, ctx: RunContext, layout: Optional[LayoutGuidance] = None,
                   start: int = 0, stop: Optional[int] = None, sparse: bool = False):
        """Fusion blocks ``start:stop`` (all by default) on the tokens ``video [B, Nv, dv]``, ``audio [B, Na, da]``
        with the timestep modulation ``*_mod [B, 6, d]``; the video tokens and ``ctx``'s video coordinates in the
        order of the evaluation (:meth:`forward`: the layout's group order with a ``layout``, tile-major with a
        sliding-tile window); ``sparse``: the video self-attention visits only the blocks of ``ctx.sparsity``'s
        window.  Returns both updated."""
        masks = self.video_masks(ctx, layout, sparse)
        for i in range(start, len(self.blocks) if stop is None else stop):
            plan_kv = (ctx.video.plan_kv[i], ctx.audio.plan_kv[i]) if ctx.video.plan_kv is not None else (None, None)
            video, audio = self.blocks[i](video, audio, video_mod, audio_mod, ctx.video, ctx.audio, *plan_kv, masks)
        return video, audio

    def first_block_inputs(self, video, audio, video_mod, audio_mod):
        """Timestep-modulated inputs of fusion block 0's self-attentions: ``(video [B, Nv, dv], audio [B, Na, da])``."""
        block = self.blocks[0]
        return (block.video.attention_input(video, block.video.modulation_terms(video_mod)),
                block.audio.attention_input(audio, block.audio.modulation_terms(audio_mod)))

    def forward(self, video_latents: torch.Tensor, audio_latents: torch.Tensor, timesteps: torch.Tensor,
                ctx: RunContext, layout: Optional[LayoutGuidance] = None, cache=None, sparse: bool = False):
        """Velocity of both modalities.

        Args:
            video_latents: ``[B, C_v, F, H, W]``; audio_latents: ``[B, L, C_a]`` (ctx.shape's sizes).
            timesteps: ``[B]`` in ``[0, 1000]``.
            layout: SpA2V layout masks for this evaluation (see :mod:`baton_fast.model.layout`), or None.
            cache: a :class:`~baton_fast.model.cache.StepCache` that runs (or skips) the fusion blocks, or None.
            sparse: run the video self-attention on the sliding-tile window of ``ctx`` (prepared with
                ``sparse_window``); False: dense.
        Returns:
            ``(video [B, C_v, F, H, W], audio [B, L, C_a])`` in the model dtype.
        """
        cfg, shape = self.cfg, ctx.shape
        if (tuple(video_latents.shape[1:]) != shape.video_latent
                or tuple(audio_latents.shape[1:]) != (shape.audio_latents, cfg.audio.latent_channels)
                or video_latents.shape[0] != ctx.batch or audio_latents.shape[0] != ctx.batch):
            raise ValueError(f"latents: expected video [{ctx.batch}, {', '.join(map(str, shape.video_latent))}] and "
                             f"audio [{ctx.batch}, {shape.audio_latents}, {cfg.audio.latent_channels}], got "
                             f"{tuple(video_latents.shape)} and {tuple(audio_latents.shape)}")
        if layout is not None:
            layout.check(shape.video_tokens, ctx.video.text.shape[:2])
        if sparse and ctx.sparsity is None:
            raise ValueError("sparse: the run context was prepared without sparse_window")
        if ctx.sparsity is not None and (layout is not None or cache is not None):
            raise ValueError("sparse_window: not supported with layout masks (the window needs the tokens in "
                             "tile-major order, the layout in group order) or step caching")
        dtype, shard = self.dtype, ctx.video.geometry.shard
        video = patchify_video(video_latents.to(dtype), cfg.video.patch)
        if ctx.sparsity is not None:  # tile-major order for the whole forward (the coordinates were moved in prepare)
            video = video[:, ctx.sparsity.to_tiles]
        grouped = layout is not None and shard is None
        if grouped:  # the layout's group order for the whole forward, coordinates with the tokens
            video, ctx = video[:, layout.order.to_groups], ctx.video_reordered(layout.order.to_groups)
        if shard is not None:  # this rank's video tokens (raster order; run_blocks takes their layout masks)
            if cache is not None:
                raise ValueError("cache: step caching is not supported with a sequence-parallel run context (each "
                                 "rank would decide on its own tokens whether to skip)")
            video = shard.video.take(video)
        video = self.video_io.patch_embed(video)
        audio = self.audio_io.patch_embed(patchify_audio(audio_latents.to(dtype), cfg.audio.patch))
        video_emb, video_mod = self.video_io.time(timesteps, dtype)
        audio_emb, audio_mod = self.audio_io.time(timesteps, dtype)
        if cache is None:
            video, audio = self.run_blocks(video, audio, video_mod, audio_mod, ctx, layout, sparse=sparse)
        else:
            video, audio = cache(self, video, audio, video_mod, audio_mod, ctx, layout)
        video = self.video_io.head(video, video_emb)
        if shard is not None:
            video = shard.video.gather(video)
        if ctx.sparsity is not None:
            video = video[:, ctx.sparsity.to_raster]
        if grouped:
            video = video[:, layout.order.to_raster]
        video = unpatchify_video(video, shape.video_grid, cfg.video.patch, cfg.video.latent_channels)
        audio = unpatchify_audio(self.audio_io.head(audio, audio_emb), cfg.audio.patch, cfg.audio.latent_channels)
        return video, audio

