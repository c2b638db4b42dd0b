"""baton-fast: Triton kernels with coordinate RoPE fused into attention, for joint
video+audio diffusion transformers (Baton, SpA2V, Ovi, Wan, LTX-2)."""
from .ops import (apply_rope, backend_for, check_coords, check_key_lengths, layout_tile_stats, qk_rmsnorm_rope,
                  rmsnorm_rope, rope_attention)
from .autograd import deterministic  # also registers the backward of every op
from .tuning import tune
from .block_mask import BlockMask, tile_order
from .rope import (RopeTable, audio_coords, ltx2_audio_coords, ltx2_video_coords, plan_audio_coords,
                   plan_video_coords, video_grid_coords)

__version__ = "0.1.0"

__all__ = ["RopeTable", "rope_attention", "BlockMask", "tile_order", "deterministic", "tune", "apply_rope", "qk_rmsnorm_rope", "layout_tile_stats", "backend_for", "video_grid_coords",
           "audio_coords", "ltx2_video_coords", "ltx2_audio_coords", "plan_video_coords", "plan_audio_coords"]
