"""SpA2V stage 1: spatial auditory cues -> Video Scene Layout, plus layout group masks for stage 2."""
from .cues import SpatialCues, cue_report, load_audio, spatial_cues
from .draw import draw_vsl
from .layout_masks import vsl_group_masks
from .planner import (DEFAULT_EXAMPLES, DIRECTOR_INSTRUCTION, MOTIONS, CuePlanner, LayoutExample, MLLMPlanner,
                      SourceTrack, cue_features, parse_vsl_answer, track_report)
from .vsl import VSL, LayoutFrame, LayoutObject

__all__ = ["SpatialCues", "spatial_cues", "load_audio", "cue_report", "VSL", "LayoutFrame", "LayoutObject",
           "CuePlanner", "MLLMPlanner", "SourceTrack", "LayoutExample", "DEFAULT_EXAMPLES", "DIRECTOR_INSTRUCTION",
           "MOTIONS", "cue_features", "parse_vsl_answer", "track_report", "vsl_group_masks", "draw_vsl"]
