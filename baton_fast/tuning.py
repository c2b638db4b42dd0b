"""Tile configuration choice for the fused kernels, kept out of CUDA-graph capture.

On a GPU, the first call of a :class:`TuneKey` times every shipped configuration of its kernel family
(:func:`benchmark`, Triton's ``do_bench``) and keeps the fastest.  The key holds what changes the best
tile: arch, Nq and Nk buckets, head dim, dtype, the kernel's flags, the B*H bucket and the grouped-query
group (buckets are powers of two).  Choices are kept in memory and, when the environment variable
``BATON_FAST_TUNE_CACHE`` names a JSON file, on disk: read on first use, rewritten (merged, atomically)
after every new choice, so a later process starts tuned.

While a CUDA graph is being captured nothing is timed (timing launches, allocates and synchronises,
which capture forbids): the cached choice is used, or else the first shipped configuration
(deterministic).  Run :func:`tune` on the step to be captured first, so the graph records tuned tiles.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

__all__ = ["TuneKey", "attention_key", "choose", "tune", "capturing", "benchmark", "cached", "clear",
           "CACHE_ENV"]

CACHE_ENV = "BATON_FAST_TUNE_CACHE"
CACHE_VERSION = 1

Config = tuple  # (BLOCK_M, BLOCK_N, num_warps, num_stages)


@dataclass(frozen=True)
class TuneKey:
    """What the best tile depends on; ``str(key)`` is its name in the JSON cache."""
    arch: str          # "sm_90"
    n_q: int           # bucket: next power of two of Nq
    n_k: int           # bucket: next power of two of Nk
    head_dim: int
    dtype: str         # "bfloat16"
    flags: tuple       # sorted (name, value) pairs of the kernel flags that change the code
    batch_heads: int   # bucket: next power of two of B*H
    group: int         # H // Hk

    def __str__(self):
        flags = ",".join(f"{name}={int(value)}" for name, value in self.flags)
        return (f"{self.arch} nq{self.n_q} nk{self.n_k} d{self.head_dim} {self.dtype} bh{self.batch_heads} "
                f"g{self.group} {flags}")


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def attention_key(arch: str, n_q: int, n_k: int, head_dim: int, dtype: torch.dtype, flags: dict,
                  batch_heads: int, group: int) -> TuneKey:
    """The :class:`TuneKey` of an attention launch (``flags``: name -> bool of the code-changing flags)."""
    return TuneKey(arch, _bucket(n_q), _bucket(n_k), head_dim, str(dtype).replace("torch.", ""),
                   tuple(sorted((name, bool(value)) for name, value in flags.items())), _bucket(batch_heads), group)


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def benchmark(launch: Callable[[], None]) -> float:
    """Median time of ``launch()`` in ms (Triton's ``do_bench``: it launches, allocates and synchronises)."""
    from triton.testing import do_bench
    return do_bench(launch, warmup=5, rep=20)


_choices: dict = {}                  # str(TuneKey) -> config
_loaded_from: Optional[str] = None   # the cache file already merged into _choices
_session: Optional[dict] = None      # while tune() runs: str(TuneKey) -> config used


def choose(key: TuneKey, candidates: Sequence[Config], time_config: Callable[[Config], float]) -> Config:
    """The configuration to launch for ``key``: the cached choice if it is still a candidate; during
    capture, else the first candidate; otherwise the fastest candidate by ``time_config(config)`` (ms),
    remembered (and written to the disk cache)."""
    candidates = [tuple(c) for c in candidates]
    _load_disk_cache()
    name = str(key)
    config = _choices.get(name)
    if config not in candidates:
        if capturing():
            config = candidates[0]
        else:
            times = [time_config(c) for c in candidates]
            config = candidates[times.index(min(times))]
            _choices[name] = config
            _save_disk_cache()
    if _session is not None:
        _session[name] = config
    return config


def tune(fn: Callable, *args, **kwargs) -> dict:
    """Warm-up before CUDA-graph capture: run ``fn(*args, **kwargs)`` once, eagerly, so that every fused
    kernel launch in it picks (times, if new) its configuration now.  Returns ``{str(key): config}`` for
    the launches made during the call (empty on CPU, where no tuning happens)."""
    global _session
    if capturing():
        raise RuntimeError("tune: called while a CUDA graph is being captured; call it before the capture")
    previous, _session = _session, {}
    try:
        fn(*args, **kwargs)
        return dict(_session)
    finally:
        _session = previous


def cached() -> dict:
    """A copy of the in-memory choices, ``{str(key): config}`` (disk entries included once read)."""
    _load_disk_cache()
    return dict(_choices)


def clear() -> None:
    """Forget the in-memory choices (the disk cache is kept and read again on next use)."""
    global _loaded_from
    _choices.clear()
    _loaded_from = None


# --------------------------------------------------------------------------- disk cache
def _read(path: str) -> dict:
    """``{str(key): config}`` from the JSON file at ``path`` (empty if it does not exist)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("version") != CACHE_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {CACHE_VERSION}")
        entries = {str(name): tuple(int(x) for x in config) for name, config in data["configs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{CACHE_ENV}: expected a baton-fast tuning cache at {path} "
                         f"({{\"version\": {CACHE_VERSION}, \"configs\": {{key: [BLOCK_M, BLOCK_N, num_warps, "
                         f"num_stages]}}}}), could not read it: {err}") from None
    if any(len(config) != 4 for config in entries.values()):
        raise ValueError(f"{CACHE_ENV}: expected configs of 4 integers in {path}")
    return entries


def _load_disk_cache() -> None:
    global _loaded_from
    path = os.environ.get(CACHE_ENV)
    if path and path != _loaded_from:
        for name, config in _read(path).items():
            _choices.setdefault(name, config)
        _loaded_from = path


def _save_disk_cache() -> None:
    """Merge the in-memory choices into the cache file (written to a temporary file, then renamed)."""
    path = os.environ.get(CACHE_ENV)
    if not path:
        return
    entries = {**_read(path), **_choices}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tune-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"version": CACHE_VERSION, "configs": {n: list(c) for n, c in sorted(entries.items())}},
                      f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
