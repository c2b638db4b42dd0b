"""Attention timings at full model shapes: the fused kernels against the unfused paths, and peak memory.

Cases: :data:`baton_fast.bench.cases.FULL_CASES` (Ovi video and audio self-attention, LTX-2 video
self-attention, Baton plan cross-attention, text cross-attention, Ovi's audio<->video
cross-attentions) plus Wan2.1-14B at 720p (:data:`WAN_14B_720P`), in bf16.  Each case runs
:func:`baton_fast.bench.kernels_bench.measure_case` (every backend checked against the float32 SDPA
path first, then timed with ``triton.testing.do_bench``, median): baton-fast fused, baton-fast with K
pre-rotated, SDPA + a separate RoPE pass, FlexAttention + RoPE pass, and flash-attn / xformers + RoPE
pass when importable.  Throughputs use the cost model's counts; the figure a case is read by
(:func:`headline_metric`) is TFLOP/s for self-attention and long-key cross-attention, GB/s where one
side is short (text 512 keys, audio 157 tokens: memory bound).  Peak memory (:func:`with_peak_memory`)
is the CUDA allocator's peak during one call, above what was allocated before it (inputs, the
comparison output), after one untimed call (tuning, compilation).

Forward + backward (:func:`training_timing_items`): the video self-attentions a fine-tuning step is made of,
one forward + backward through autograd (q, k, v require grad) of baton-fast's fused attention (Triton forward
and backward kernels) and of PyTorch RoPE + SDPA (:func:`baton_fast.bench.training_bench.measured_records`,
``do_bench`` median), with the matrix rate of the 14 ``B H Nq Nk D`` FLOPs of a step (forward 4, backward 10).
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable

import torch

from baton_fast.bench import kernels_bench, training_bench
from baton_fast.bench.cases import FULL_CASES, Case, Side
from baton_fast.bench.cost_model import attention_flops, fused_cost
from baton_fast.bench.report import GPU_MEMORY_SECTION

from .results import record

__all__ = ["WAN_14B_720P", "TIMED_CASES", "TRAINING_CASES", "SHORT_SIDE", "DTYPE", "headline_metric",
           "case_accounting", "with_peak_memory", "timing_items", "training_timing_items", "unavailable_backends"]

# Wan2.1-T2V-14B, 1280x720, 81 frames: VAE 4x time (causal: 1 + 80/4 = 21 latent frames) and 8x space,
# 2x2 patches: 21 x 45 x 80 = 75,600 tokens; 40 heads x 128 (dim 5120); 40 blocks.
WAN_14B_720P = Case("Wan2.1-14B 720p video self-attn", Side("video", (21, 45, 80)), Side("video", (21, 45, 80)),
                    40, 128, 40)
_BY_NAME = {c.name: c for c in FULL_CASES}
# run order: the self-attentions that dominate a step first (a run that hits its budget keeps those)
TIMED_CASES = (_BY_NAME["Ovi video self-attn"], WAN_14B_720P, _BY_NAME["LTX-2 video self-attn"],
               _BY_NAME["Baton plan cross-attn"], _BY_NAME["text cross-attn"], _BY_NAME["Ovi audio->video cross-attn"],
               _BY_NAME["Ovi video->audio cross-attn"], _BY_NAME["Ovi audio self-attn"])
# forward + backward: Ovi's and LTX-2's video self-attention (Wan-14B 720p, ~25x the work of a step at 75,600
# tokens, would not fit the part's budget beside them)
TRAINING_CASES = (_BY_NAME["Ovi video self-attn"], _BY_NAME["LTX-2 video self-attn"])
SHORT_SIDE = 1024  # tokens: an attention with a side this short is read in GB/s
DTYPE = torch.bfloat16


def headline_metric(case: Case) -> str:
    """``"TFLOP/s"`` (matrix throughput) or ``"GB/s"`` (effective bandwidth): how the case is read."""
    return "GB/s" if min(case.q.tokens, case.k.tokens) <= SHORT_SIDE else "TFLOP/s"


def case_accounting(case: Case, dtype=DTYPE) -> dict:
    """The counts the throughputs divide by: matrix FLOPs (``4 B H Nq Nk D``) and the fused path's minimal
    HBM bytes (cost model), their ratio, and the headline metric."""
    shape = case.shape(dtype_bytes=torch.finfo(dtype).bits // 8)
    flops, nbytes = attention_flops(shape), fused_cost(shape).bytes
    return dict(flops=flops, bytes=nbytes, flops_per_byte=flops / nbytes, headline=headline_metric(case))


def with_peak_memory(backend: kernels_bench.Backend, sink: list) -> kernels_bench.Backend:
    """``backend`` whose first call also measures the peak memory of one call and appends
    ``(backend name, peak bytes above the allocation before the call)`` to ``sink``."""
    def build(inp, k_static):
        fn = backend.build(inp, k_static)
        measured = []

        def call():
            if measured:
                return fn()
            fn()  # untimed: tuning, compilation, lazy allocations
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = fn()
            torch.cuda.synchronize()
            measured.append(torch.cuda.max_memory_allocated() - before)
            sink.append((backend.name, measured[0]))
            return out

        return call

    return dataclasses.replace(backend, build=build)


def unavailable_backends() -> list[str]:
    """GPU backends whose module is not importable here (named in the results, not silently left out)."""
    return [b.name for b in kernels_bench.GPU_BACKENDS
            if b.module is not None and importlib.util.find_spec(b.module) is None]


def timing_items(device, where: str, cases=TIMED_CASES, dtype=DTYPE) -> list[tuple[str, Callable[[], list]]]:
    """``(label, task)`` per case; a task returns the case's ``kernels`` and ``gpu_memory`` records."""
    device = torch.device(device)

    def task(case: Case):
        peaks: list = []
        backends = [with_peak_memory(b, peaks) for b in kernels_bench.backends_for(device, case, quick=True)]
        records = kernels_bench.measure_case(case, device, dtype, quick=True, backends=backends)
        accounting = case_accounting(case, dtype)
        for r in records:
            r["extra"].update(headline=accounting["headline"], flops_per_byte=accounting["flops_per_byte"])
        shape = dict(B=1, Nq=case.q.tokens, Nk=case.k.tokens, H=case.heads, Hk=case.heads, D=case.head_dim)
        records += [record(GPU_MEMORY_SECTION, case.name, name, "peak memory", peak, "B", device=where, shape=shape,
                           dtype=str(dtype).removeprefix("torch."), measured_as="max_memory_allocated above the "
                           "allocation before one call, after one untimed call") for name, peak in peaks]
        records += [record("kernels", case.name, name, "skipped", None, "", device=where, shape=shape,
                           dtype=str(dtype).removeprefix("torch."), reason="not importable on this machine")
                    for name in unavailable_backends()]
        return records

    from .quant_timings import quant_timing_items  # fp8 / int8+fp8 against SageAttention, FA3-FP8

    return ([(case.name, lambda case=case: task(case)) for case in cases] + training_timing_items(device, where)
            + quant_timing_items(device, where))


def training_timing_items(device, where: str, cases=TRAINING_CASES, dtype=DTYPE) -> list[tuple[str, Callable[[], list]]]:
    """``(label, task)`` per case: forward + backward time and TFLOP/s of each path (module docstring) as
    ``kernels`` records."""
    device = torch.device(device)

    def task(case: Case):
        label, out = f"{case.name} (forward+backward)", []
        s = case.shape()
        flops = 14 * s.batch * s.heads * s.n_q * s.n_k * s.head_dim
        for r in training_bench.measured_records(case, device, dtype, quick=True):
            common = dict(device=where, shape=r["shape"], dtype=r["dtype"], **r["extra"])
            out += [record("kernels", label, r["backend"], "forward+backward time", r["value"], "ms", **common),
                    record("kernels", label, r["backend"], "forward+backward TFLOP/s", flops / r["value"] / 1e9,
                           "TFLOP/s", **common)]
        return out

    return [(f"{case.name} (forward+backward)", lambda case=case: task(case)) for case in cases]
