"""A tiny-preset denoise step captured in a CUDA graph and replayed, against the same step run eagerly.

The step is one guided velocity evaluation of the dual-branch DiT (conditional and unconditional
passes batched, plan K/V cached by ``prepare``) on random weights, random text states and a random
plan (no text encoder, planner LM or network needed).  :func:`baton_fast.tune` runs it once first, so
every fused launch picks its tile before the capture; then the sampler's own
:class:`~baton_fast.model.sampler.CudaGraphVelocity` warms up on a side stream and captures it.  The
replay must give the eager outputs for the inputs it was captured with and for new inputs copied into
its static buffers (:func:`compare`; a replay that ignored its new inputs would return the first
outputs), and the time per evaluation is measured both ways (CUDA events, median).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import torch

import baton_fast
from baton_fast.bench.report import GPU_GRAPH_SECTION

from .results import record

__all__ = ["TinyStep", "tiny_step", "compare", "check_cuda_graph", "PRESET", "SECONDS", "TIMED_CALLS"]

PRESET = "tiny"
SECONDS = 2.0
TIMED_CALLS = 20
TEXT_TOKENS = 12


@dataclass
class TinyStep:
    """``velocity(video [1, ...], audio [1, ...], sigma 0-d)`` -> float32 ``(video, audio)`` velocities, and two
    different input sets for it."""

    velocity: Callable
    inputs: list  # [(video, audio, sigma)] * 2
    shape: dict


def tiny_step(device, dtype, seed: int = 0) -> TinyStep:
    """The guided velocity of a randomly initialised ``tiny`` DiT for ``SECONDS`` of video (batch 1, CFG)."""
    from baton_fast.model.config import get_preset
    from baton_fast.model.dit import DualBranchDiT
    from baton_fast.model.planner import PlannedTokens, rs_rope_coords
    from baton_fast.model.sampler import GuidedVelocity

    device = torch.device(device)
    cfg = get_preset(PRESET)
    shape = cfg.shape(SECONDS)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        dit = DualBranchDiT(cfg).to(device, dtype).eval()

    def randn(*size):
        return torch.randn(*size, generator=g).to(device)

    pc = cfg.planner
    plan = PlannedTokens(randn(2, shape.keyframes * pc.grid ** 2, pc.video_feature_dim).to(dtype),
                         randn(2, shape.chunks * pc.audio_tokens_per_chunk, pc.audio_feature_dim).to(dtype),
                         *rs_rope_coords(cfg, shape, device))
    lens = torch.tensor([TEXT_TOKENS, 3], device=device, dtype=torch.int32)  # conditional, unconditional (padded)
    with torch.inference_mode():
        ctx = dit.prepare(shape, randn(2, TEXT_TOKENS, cfg.text_dim), lens, randn(2, TEXT_TOKENS, cfg.text_dim), lens,
                          plan)
    inputs = [(randn(1, *shape.video_latent), randn(1, shape.audio_latents, cfg.audio.latent_channels),
               torch.tensor(sigma, device=device)) for sigma in (0.9, 0.35)]
    return TinyStep(GuidedVelocity(dit, ctx, 4.0, 3.0), inputs,
                    dict(preset=PRESET, seconds=SECONDS, video_tokens=shape.video_tokens,
                         audio_tokens=shape.audio_latents // cfg.audio.patch[0], batch=2))


def compare(eager: tuple, replayed: tuple) -> dict:
    """Max abs difference of two ``(video, audio)`` results, whether they are bitwise equal, and the
    difference relative to the eager output's largest magnitude.  NaN or inf anywhere gives ``inf``."""
    diffs, scale = [], 0.0
    for e, r in zip(eager, replayed):
        e, r = e.double(), r.double()
        finite = bool(torch.isfinite(e).all()) and bool(torch.isfinite(r).all())
        diffs.append(float((e - r).abs().max()) if finite else float("inf"))
        scale = max(scale, float(e.abs().max()) if finite else 0.0)
    bitwise = all(torch.equal(e, r) for e, r in zip(eager, replayed))
    return dict(max_abs_diff=max(diffs), bitwise_equal=bitwise, relative_diff=max(diffs) / max(scale, 1e-30))


# Replay and eager run the same kernels on the same data, so they should agree to the bit; one rounding
# step of the model dtype (a different reduction order in a library kernel) is still accepted.
RELATIVE_TOLERANCE = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7, torch.float32: 2 ** -20}


def _median_ms(fn: Callable, calls: int) -> float:
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_cuda_graph(device, dtype, where: str, seed: int = 0) -> list[dict]:
    """Capture, replay and compare (CUDA only); records of the ``cuda_graph`` section."""
    from baton_fast.model.sampler import CudaGraphVelocity

    step = tiny_step(device, dtype, seed)
    dt = str(dtype).removeprefix("torch.")
    records = []
    with torch.inference_mode():
        tuned = baton_fast.tune(step.velocity, *step.inputs[0])  # tile choices made now, not inside the capture
        eager = [step.velocity(*x) for x in step.inputs]
        graph = CudaGraphVelocity(step.velocity, *step.inputs[0])
        replayed = [graph(*x) for x in step.inputs]
        tolerance = RELATIVE_TOLERANCE[dtype]
        for name, e, r in zip(("captured inputs", "new inputs"), eager, replayed):
            c = compare(e, r)
            ok = c["bitwise_equal"] or c["relative_diff"] <= tolerance
            records.append(record(GPU_GRAPH_SECTION, f"denoise step, {name}", "CUDA graph replay vs eager",
                                  "max abs difference", c["max_abs_diff"], "", device=where, shape=step.shape,
                                  dtype=dt, ok=ok, relative_tolerance=tolerance, tuned_launches=len(tuned), **c))
        timed = {"eager": lambda: step.velocity(*step.inputs[1]), "CUDA graph replay": lambda: graph(*step.inputs[1])}
        for backend, fn in timed.items():
            records.append(record(GPU_GRAPH_SECTION, "denoise step", backend, "time per guided evaluation",
                                  _median_ms(fn, TIMED_CALLS), "ms", device=where, shape=step.shape, dtype=dt,
                                  timer="torch.cuda.Event", calls=TIMED_CALLS, statistic="median"))
    return records
