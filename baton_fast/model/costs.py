"""Parameter and FLOP counts of a preset: parameters by arithmetic on the configuration (no torch op, so the
memory check of ``generate`` stays cheap), FLOPs on the meta device (no memory, no weights).

The arithmetic mirrors the modules (``model.dit``, ``model.attention``, ``model.planner`` and the default
Qwen3 LM); the tests hold it to the modules' own ``parameters()`` on the meta device for every preset.

FLOPs are matmul FLOPs (2 per multiply-add) as counted by ``torch.utils.flop_counter`` for linear
layers and the LM's attention, plus ``4 * B * H * Nq * Nk * D`` for every ``baton_fast.rope_attention``
call (QK^T and PV; key lengths ignored, i.e. padded text counts in full).  Elementwise work (norms,
RoPE, activations) is not counted.  Classifier-free guidance doubles the batch.

    python -m baton_fast.model.costs [--steps N] [--presets a,b]   # Markdown table (every preset: about a minute)
"""
from __future__ import annotations

import math
import sys

import torch

from .config import PRESETS, BatonConfig
from .dit import DualBranchDiT
from .planner import PlannedTokens, SemanticAlignmentTowers, default_language_model, rs_rope_coords

__all__ = ["parameter_counts", "flop_counts", "plan_cache_bytes"]

META = torch.device("meta")


def _rope_attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    B, n_q, H, D = q_shape
    return 4 * B * H * n_q * k_shape[1] * D


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping={torch.ops.baton_fast.rope_attention: _rope_attention_flops}) as c:
        fn()
    return int(c.get_total_flops())


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _models(cfg: BatonConfig):
    with torch.device(META):
        dit = DualBranchDiT(cfg)
        if cfg.planner is None:
            return dit, None, None
        lm = default_language_model(cfg.planner)
        towers = SemanticAlignmentTowers(cfg.planner, cfg.planner.lm_hidden, cfg.keyframes(cfg.max_seconds),
                                         math.ceil(cfg.max_seconds), cfg.eps)
    return dit, lm, towers


def parameter_counts(cfg: BatonConfig) -> dict:
    """``{"dit", "dit_video", "dit_audio", "planner_lm", "planner_towers", "total"}`` parameter counts
    (video/audio: each tower's blocks and embeddings; the text encoder is not included)."""
    pc = cfg.planner
    video = _branch_io(cfg.video, cfg, pc and pc.video_feature_dim) + cfg.video.num_layers * _branch_block(
        cfg.video, cfg.audio.dim, pc is not None)
    audio = _branch_io(cfg.audio, cfg, pc and pc.audio_feature_dim) + cfg.audio.num_layers * _branch_block(
        cfg.audio, cfg.video.dim, pc is not None)
    counts = {"dit": video + audio, "dit_video": video, "dit_audio": audio,
              "planner_lm": _qwen3(pc) if pc is not None else 0, "planner_towers": _towers(cfg) if pc is not None else 0}
    counts["total"] = counts["dit"] + counts["planner_lm"] + counts["planner_towers"]
    return counts


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + n_out * bias


def _key_value(context_dim: int, dim: int) -> int:
    """``attention.KeyValue``: k, v and the RMSNorm of k."""
    return 2 * _linear(context_dim, dim) + dim


def _cross_attention(dim: int, context_dim: int) -> int:
    """``attention.CrossAttention``: q, its RMSNorm, the keys and values, o."""
    return 2 * _linear(dim, dim) + dim + _key_value(context_dim, dim)


def _feed_forward(dim: int, hidden: int) -> int:
    return _linear(dim, hidden) + _linear(hidden, dim)


def _branch_block(branch, other_dim: int, planned: bool) -> int:
    """``dit.BranchBlock``: modulation, self-attention (q, k, v, o, two RMSNorms), norm3, the text and cross-modal
    attention (and its LayerNorm of the other branch), the plan attention and its LayerNorm, the FFN."""
    d = branch.dim
    self_attention = 4 * _linear(d, d) + 2 * d
    text_and_other = _cross_attention(d, d) + 2 * other_dim + _key_value(other_dim, d)
    plan = 2 * d + _cross_attention(d, d) if planned else 0
    return 6 * d + self_attention + 2 * d + text_and_other + plan + _feed_forward(d, branch.ffn_dim)


def _branch_io(branch, cfg: BatonConfig, plan_dim) -> int:
    """``dit.BranchIO``: patch, text, timestep and planned-token embeddings, and the head (modulation, linear)."""
    d, patch_values = branch.dim, branch.latent_channels * branch.patch_volume
    embeddings = (_linear(patch_values, d) + _linear(cfg.text_dim, d) + _linear(d, d) + _linear(cfg.freq_dim, d)
                  + _linear(d, d) + _linear(d, 6 * d))
    plan = _linear(plan_dim, d) + _linear(d, d) if plan_dim else 0
    return embeddings + plan + 2 * d + _linear(d, patch_values)


def _towers(cfg: BatonConfig) -> int:
    """``planner.SemanticAlignmentTowers`` sized for the preset's longest clip."""
    pc, d = cfg.planner, cfg.planner.tower_dim
    queries = (cfg.keyframes(cfg.max_seconds) * pc.grid ** 2 + math.ceil(cfg.max_seconds) * pc.audio_tokens_per_chunk) * d
    layer = 4 * 2 * d + _cross_attention(d, pc.lm_hidden) + _cross_attention(d, d) + _feed_forward(d, pc.tower_ffn)
    heads = sum(2 * d + _linear(d, d) + _linear(d, features) for features in (pc.video_feature_dim, pc.audio_feature_dim))
    return queries + 2 * pc.tower_layers * layer + heads


def _qwen3(pc) -> int:
    """The default planner LM (``planner.default_language_model``, Qwen3 without biases): embeddings, per layer
    q/k/v/o, the RMSNorms of q and k (per head) and of the layer, the gated MLP; the final norm; an untied head."""
    h, attention = pc.lm_hidden, pc.lm_heads * pc.lm_head_dim
    layer = (2 * h * attention + 2 * h * pc.lm_kv_heads * pc.lm_head_dim + 2 * pc.lm_head_dim + 2 * h
             + 3 * h * pc.lm_ffn)
    return pc.lm_vocab * h * (1 if pc.lm_tie_embeddings else 2) + pc.lm_layers * layer + h


def plan_cache_bytes(cfg: BatonConfig, seconds: float, dtype=torch.bfloat16, batch: int = 1) -> int:
    """Bytes of the cached plan keys and values of every block, both branches, cond + uncond."""
    if cfg.planner is None:
        return 0
    shape, pc = cfg.shape(seconds), cfg.planner
    video = shape.keyframes * pc.grid ** 2 * cfg.video.dim
    audio = shape.chunks * pc.audio_tokens_per_chunk * cfg.audio.dim
    return 2 * 2 * batch * cfg.video.num_layers * (video + audio) * dtype.itemsize


def flop_counts(cfg: BatonConfig, seconds: float, evaluations: int, *, batch: int = 1, text_tokens: int = None,
                prompt_tokens: int = 128) -> dict:
    """FLOPs of one generation of ``seconds`` with ``evaluations`` guided DiT evaluations.

    ``text_tokens``: text-encoder tokens per prompt (default the preset's maximum, as Ovi pads to it);
    ``prompt_tokens``: LM tokens per video or audio prompt read by the planner.
    Returns ``{"planner", "prepare", "dit_forward", "denoise", "total"}``.
    """
    shape = cfg.shape(seconds)
    dit, lm, towers = _models(cfg)
    rows = 2 * batch  # [cond; uncond]
    text_tokens = cfg.text_max_tokens if text_tokens is None else text_tokens
    text = torch.empty(rows, text_tokens, cfg.text_dim, device=META)
    lens = torch.full((rows,), text_tokens, device=META, dtype=torch.int32)
    counts = {"planner": 0}
    plan = None
    if cfg.planner is not None:
        pc = cfg.planner
        lm_tokens = 24 + 2 * prompt_tokens + pc.video_placeholders + pc.audio_placeholders  # system prompt ~24
        states = {}

        def planner():
            hidden = lm.base_model(input_ids=torch.zeros(rows, lm_tokens, dtype=torch.long, device=META)).last_hidden_state
            states["out"] = towers(hidden[:, :pc.video_placeholders], hidden[:, :pc.audio_placeholders],
                                   shape.keyframes, shape.chunks)

        counts["planner"] = _flops(planner)
        video_plan, audio_plan = states["out"]
        plan = PlannedTokens(video_plan, audio_plan, *rs_rope_coords(cfg, shape))
    contexts = {}
    counts["prepare"] = _flops(lambda: contexts.setdefault("ctx", dit.prepare(shape, text, lens, text, lens, plan)))
    video = torch.empty(rows, *shape.video_latent, device=META)
    audio = torch.empty(rows, shape.audio_latents, cfg.audio.latent_channels, device=META)
    counts["dit_forward"] = _flops(lambda: dit(video, audio, torch.zeros(rows, device=META), contexts["ctx"]))
    counts["denoise"] = evaluations * counts["dit_forward"]
    counts["total"] = counts["planner"] + counts["prepare"] + counts["denoise"]
    return counts


def _si(value: float, unit: str) -> str:
    """``1.23 T<unit>``-style formatting."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def _table(steps: int = 50, presets=tuple(PRESETS)) -> str:
    """Markdown table of ``presets``: parameters, and FLOPs of ``steps`` Euler steps at the preset's length."""
    header = ["preset", "seconds", "DiT params", "planner LM params", "tower params", "DiT forward, CFG batch 2",
              "planner", "run preparation (text embed, plan K/V)", f"{steps} Euler steps, total",
              "plan K/V cache, bf16"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in presets:
        cfg = PRESETS[name]
        seconds = 2.0 if name == "tiny" else cfg.max_seconds
        p, f = parameter_counts(cfg), flop_counts(cfg, seconds, evaluations=steps)
        lines.append(" | ".join([
            f"| {name}", f"{seconds:g}", _si(p["dit"], ""), _si(p["planner_lm"], ""), _si(p["planner_towers"], ""),
            _si(f["dit_forward"], "FLOP"), _si(f["planner"], "FLOP"), _si(f["prepare"], "FLOP"), _si(f["total"], "FLOP"),
            _si(plan_cache_bytes(cfg, seconds), "B")]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m baton_fast.model.costs``: print the table; bad arguments end in one line and exit 2."""
    from baton_fast.cli import DefaultsHelpFormatter, Parser, UsageError, positive_int

    parser = Parser(prog="python -m baton_fast.model.costs", formatter_class=DefaultsHelpFormatter,
                    description="Parameter and FLOP counts of the presets, on the meta device (Markdown table).")
    parser.add_argument("--steps", type=positive_int, default=50, help="Euler steps counted per run")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to count")
    try:
        args = parser.parse_args(argv)
        presets = [name.strip() for name in args.presets.split(",") if name.strip()]
        unknown = [name for name in presets if name not in PRESETS]
        if unknown or not presets:
            parser.error(f"argument --presets: expected some of {', '.join(PRESETS)}, got {args.presets!r}")
    except UsageError as err:
        print(f"{err.prog}: error: {err}", file=sys.stderr)
        return 2
    print(_table(args.steps, presets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
