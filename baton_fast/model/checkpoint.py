"""Checkpoints: one safetensors file per module (``dit.safetensors``, ``planner.safetensors``) in a folder.

Loading is strict: the file must hold exactly the module's tensors (tied weights stored once) with the
same shapes, else a ValueError lists what is missing, unexpected or of the wrong shape.  Tensors are
read one at a time and copied into the module (converted to its dtype and device).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import BatonConfig
from .media import atomic_path

__all__ = ["FILES", "state_tensors", "save_checkpoint", "load_checkpoint"]

FILES = {"dit": "dit.safetensors", "planner": "planner.safetensors"}
FORMAT = "baton-fast/1"


def state_tensors(module: nn.Module) -> dict:
    """The module's persistent state, with tied parameters under their first name only."""
    distinct = {name for name, _ in module.named_parameters()}
    every = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in module.state_dict().items() if k in distinct or k not in every}


def _modules(cfg: BatonConfig, dit, planner):
    if (planner is None) != (cfg.planner is None):
        raise ValueError(f"planner: preset {cfg.name!r} " + ("has a planner; pass it" if planner is None
                                                            else "has no planner"))
    return {"dit": dit, **({"planner": planner} if planner is not None else {})}


def save_checkpoint(directory, cfg: BatonConfig, dit: nn.Module, planner: nn.Module = None) -> Path:
    """Write ``dit.safetensors`` (and ``planner.safetensors``) into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in _modules(cfg, dit, planner).items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_tensors(module).items()}
        with atomic_path(directory / FILES[name]) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "preset": cfg.name, "module": name})
    return directory


def load_checkpoint(directory, cfg: BatonConfig, dit: nn.Module, planner: nn.Module = None) -> None:
    """Load a folder written by :func:`save_checkpoint` into ``dit`` (and ``planner``), strictly."""
    from safetensors import safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint: expected a folder with {' and '.join(FILES.values())}, got {directory}")
    for name, module in _modules(cfg, dit, planner).items():
        path = directory / FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint: {path} not found")
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as err:  # safetensors raises its own error type for corrupt files
            raise ValueError(f"checkpoint: cannot read {path}: {err}") from err
        state = state_tensors(module)
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        problems = _mismatches(shapes, {k: tuple(v.shape) for k, v in state.items()})
        if problems:
            saved_for = (handle.metadata() or {}).get("preset", "unknown")
            raise ValueError(f"checkpoint: {path} does not fit preset {cfg.name!r} (saved for {saved_for!r}): "
                             + "; ".join(problems))
        with torch.no_grad():
            for key, target in state.items():
                target.copy_(handle.get_tensor(key))


def _mismatches(found: dict, expected: dict, show: int = 4) -> list:
    """Human-readable differences between two ``name -> shape`` maps (at most ``show`` names each)."""
    def listing(items):
        return ", ".join(items[:show]) + (f", ... ({len(items)} in all)" if len(items) > show else "")

    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = [f"{k}: file {list(found[k])} vs model {list(expected[k])}"
             for k in sorted(found.keys() & expected.keys()) if found[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {listing(wrong)}")
    return problems
