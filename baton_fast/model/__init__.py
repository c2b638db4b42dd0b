"""Baton model layer: VA-Planner, dual-branch DiT, text encoder, flow-matching sampler, decoders,
checkpoints and the prompts-to-mp4 pipeline.  Every attention runs through baton-fast ops."""
from .bench import benchmark_end_to_end
from .config import PRESETS, BatonConfig, RunShape, get_preset
from .dit import DualBranchDiT, RunContext
from .planner import PlannedTokens, VAPlanner
from .sampler import SamplerOptions

__all__ = ["PRESETS", "BatonConfig", "RunShape", "get_preset", "DualBranchDiT", "RunContext", "PlannedTokens",
           "VAPlanner", "SamplerOptions", "benchmark_end_to_end"]
