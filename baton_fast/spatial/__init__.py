"""SpA2V stage 1: spatial auditory cues -> Video Scene Layout, plus layout group masks for stage 2.

Names are imported from their submodules on first use, so ``plan-layout`` (cues, planner, VSL) does not
load matplotlib or torch until it draws or builds masks.
"""
import importlib

_SOURCES = {
    "cues": ("SpatialCues", "spatial_cues", "load_audio", "cue_report"),
    "draw": ("draw_vsl",),
    "layout_masks": ("vsl_group_masks",),
    "planner": ("DEFAULT_EXAMPLES", "DIRECTOR_INSTRUCTION", "MOTIONS", "CuePlanner", "LayoutExample", "MLLMPlanner",
                "SourceTrack", "cue_features", "parse_vsl_answer", "track_report"),
    "vsl": ("VSL", "LayoutFrame", "LayoutObject"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = list(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
