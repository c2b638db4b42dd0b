"""Measured attention benchmarks: baton-fast against the unfused paths, per attention of the model family.

On a GPU (full model shapes, bf16; median of ``triton.testing.do_bench``):

- ``baton-fast fused``: ``baton_fast.rope_attention`` (Triton), RoPE from coordinates in the kernel;
- ``baton-fast, K pre-rotated``: ``apply_rope`` on K (outside the timing for keys fixed for the
  sampling run), then ``rope_attention(rotate_k=False)``;
- ``SDPA + RoPE pass``, ``FlexAttention + RoPE pass``, ``flash-attn + RoPE pass``,
  ``xformers + RoPE pass``: the diffusers-style path (:mod:`.unfused_rope`: materialised cos/sin,
  separate rotate passes) in front of each attention kernel; flash-attn and xformers when importable.

On a CPU (the scaled-down :data:`.cases.CPU_CASES`, float32; median wall time): the CPU paths —
``baton-fast op, eager`` (the op's CPU path: RoPE from coordinates, then SDPA), ``reference,
torch.compile`` (the explicit plain-PyTorch reference compiled by inductor), ``SDPA + RoPE pass`` and
``FlexAttention + RoPE pass`` (compiled; ``--full`` only).  The Triton interpreter is an emulator and
is never timed.

The cos/sin tables of the unfused paths are built outside the timed region (diffusers builds them
once per forward).  Before timing, every backend's output is compared with a reference (float64
on a CPU; the float32 SDPA path on a GPU) and the error is stored with the figures, with the check
of DESIGN.md §5 (:func:`check_bound`).
Throughputs use the cost model's counts: matrix FLOPs / time, and the fused path's minimal HBM
bytes / time ("effective bandwidth").
"""
from __future__ import annotations

import importlib.util
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import baton_fast
from baton_fast import numerics, reference
from baton_fast.rope import RopeTable

from .cases import CPU_CASES, CPU_HEADS, FULL_CASES, Case, video_sweep
from .cost_model import attention_flops, fused_cost
from .unfused_rope import materialise_cos_sin, rotate

__all__ = ["AttentionInputs", "make_inputs", "backends_for", "measure_case", "benchmark_plan", "time_cpu_ms",
           "error_summary", "check_bound"]

# Absolute floor added to the allowed error (DESIGN.md §5: twice the plain implementation's error in
# the same dtype, plus a small floor for rounding).
# Video grids of the sweep besides the table's own (CPU_VIDEO_GRID, 512 tokens): quick and full.
SWEEP_GRIDS_CPU = {True: ((1, 16, 16), (4, 16, 16)), False: ((1, 16, 16), (4, 16, 16), (8, 16, 16), (16, 16, 16))}
# Ovi video self-attention for 1, 2 and 3 seconds of 720x720 video (1 + 24 s / 4 latent frames); the
# table's own case is 5 s.
SWEEP_GRIDS_GPU = ((7, 22, 22), (13, 22, 22), (19, 22, 22))


@dataclass
class AttentionInputs:
    """Random q ``[1, Nq, H, D]``, k/v ``[1, Nk, H, D]``, coordinates ``[1, N, A]`` float32 and tables
    (``None`` for a side that is not rotated)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_coords: torch.Tensor
    k_coords: torch.Tensor
    q_table: Optional[RopeTable]
    k_table: Optional[RopeTable]

    def to(self, dtype) -> "AttentionInputs":
        return AttentionInputs(self.q.to(dtype), self.k.to(dtype), self.v.to(dtype), self.q_coords, self.k_coords,
                               self.q_table, self.k_table)

    def op_kwargs(self) -> dict:
        """Keyword arguments of ``baton_fast.rope_attention`` (and the reference) after ``q, k, v, q_coords,
        k_coords``: a side without a table is not rotated."""
        return dict(table=self.q_table or self.k_table, k_table=self.k_table, rotate_q=self.q_table is not None,
                    rotate_k=self.k_table is not None)


def make_inputs(case: Case, device, dtype, seed: int = 0) -> AttentionInputs:
    """Seeded standard-normal q, k, v of the case's shape on ``device`` in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    H, D = case.heads, case.head_dim

    def randn(tokens):
        return torch.randn(1, tokens, H, D, generator=gen).to(device=device, dtype=dtype)

    return AttentionInputs(randn(case.q.tokens), randn(case.k.tokens), randn(case.k.tokens),
                           case.q.coords(device), case.k.coords(device),
                           case.q.table(H, D), case.k.table(H, D))


# --------------------------------------------------------------------------- backends
def _unfused(attend: Callable, inp: AttentionInputs) -> Callable[[], torch.Tensor]:
    """Materialise cos/sin once; the returned call rotates Q and K (every call, static keys included, as
    diffusers' processors do) and runs ``attend(q, k, v)`` on ``[B, N, H, D]`` tensors."""
    q_tab = materialise_cos_sin(inp.q_coords, inp.q_table) if inp.q_table else None
    k_tab = materialise_cos_sin(inp.k_coords, inp.k_table) if inp.k_table else None
    q, k, v = inp.q, inp.k, inp.v

    def run():
        return attend(rotate(q, q_tab) if q_tab else q, rotate(k, k_tab) if k_tab else k, v)

    return run


def _heads_first(attention):
    """Wrap an attention on ``[B, H, N, D]`` for ``[B, N, H, D]`` tensors."""
    def attend(q, k, v):
        return attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return attend


def _baton_fast(inp: AttentionInputs, k_static: bool):
    kwargs = inp.op_kwargs()
    return lambda: baton_fast.rope_attention(inp.q, inp.k, inp.v, inp.q_coords, inp.k_coords, **kwargs)


def _baton_fast_prerotated_k(inp: AttentionInputs, k_static: bool):
    kwargs = dict(inp.op_kwargs(), rotate_k=False)
    if k_static:  # rotated once per sampling run
        k_rot = baton_fast.apply_rope(inp.k, inp.k_coords, inp.k_table)
        return lambda: baton_fast.rope_attention(inp.q, k_rot, inp.v, inp.q_coords, inp.k_coords, **kwargs)
    return lambda: baton_fast.rope_attention(inp.q, baton_fast.apply_rope(inp.k, inp.k_coords, inp.k_table), inp.v,
                                             inp.q_coords, inp.k_coords, **kwargs)


def _reference_compiled(inp: AttentionInputs, k_static: bool):
    # a fresh static-shape compile per case: measured faster to compile than one dynamic-shape
    # graph that recompiles for every new table layout, and the kernels are specialised
    torch._dynamo.reset()
    compiled = torch.compile(reference.rope_attention, dynamic=False)
    kwargs = inp.op_kwargs()
    return lambda: compiled(inp.q, inp.k, inp.v, inp.q_coords, inp.k_coords, **kwargs)


def _sdpa(inp: AttentionInputs, k_static: bool):
    return _unfused(_heads_first(F.scaled_dot_product_attention), inp)


def _flex(inp: AttentionInputs, k_static: bool):
    from torch.nn.attention.flex_attention import flex_attention
    torch._dynamo.reset()
    return _unfused(_heads_first(torch.compile(flex_attention, dynamic=False)), inp)


def _flash_attn(inp: AttentionInputs, k_static: bool):
    from flash_attn import flash_attn_func  # [B, N, H, D] layout
    return _unfused(flash_attn_func, inp)


def _xformers(inp: AttentionInputs, k_static: bool):
    from xformers.ops import memory_efficient_attention  # [B, N, H, D] layout
    return _unfused(memory_efficient_attention, inp)


@dataclass(frozen=True)
class Backend:
    name: str
    build: Callable  # (inputs, k_static) -> zero-argument callable returning out [B, Nq, H, D]
    module: Optional[str] = None  # importable module it needs
    needs_k_rotation: bool = False  # only meaningful when K is rotated
    quick: bool = True  # part of --quick runs


GPU_BACKENDS = (
    Backend("baton-fast fused", _baton_fast),
    Backend("baton-fast, K pre-rotated", _baton_fast_prerotated_k, needs_k_rotation=True),
    Backend("SDPA + RoPE pass", _sdpa),
    Backend("FlexAttention + RoPE pass", _flex),
    Backend("flash-attn + RoPE pass", _flash_attn, module="flash_attn"),
    Backend("xformers + RoPE pass", _xformers, module="xformers"),
)
CPU_BACKENDS = (
    Backend("baton-fast op, eager (CPU path)", _baton_fast),
    Backend("reference, torch.compile", _reference_compiled),
    Backend("SDPA + RoPE pass", _sdpa),
    Backend("FlexAttention + RoPE pass", _flex, quick=False),  # compiles per shape; slower than SDPA on CPUs
)


def backends_for(device: torch.device, case: Case, quick: bool) -> list[Backend]:
    """The backends that apply to ``case`` on ``device`` (importable ones; ``quick`` drops the slow ones)."""
    chosen = GPU_BACKENDS if device.type == "cuda" else CPU_BACKENDS
    return [b for b in chosen if (b.module is None or importlib.util.find_spec(b.module) is not None)
            and (case.k.rotated or not b.needs_k_rotation) and (b.quick or not quick)]


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line ... last line`` of an exception (compiler errors put the cause last)."""
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return text[:limit]


# --------------------------------------------------------------------------- timing
def time_cpu_ms(fn: Callable, min_reps: int, budget_s: float, max_reps: int = 100, warmup_s: float = 0.1) -> list[float]:
    """Per-call wall times (ms): warm-up calls for at least two calls and ``warmup_s`` (first-touch
    allocations, caches), then at least ``min_reps`` timed calls and more until ``budget_s``."""
    start = time.perf_counter()
    for calls in range(1, max_reps + 1):
        fn()
        if calls >= 2 and time.perf_counter() - start >= warmup_s:
            break
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _time_ms(fn: Callable, device: torch.device, quick: bool) -> tuple[float, dict]:
    """Median time in ms and how it was taken."""
    if device.type == "cuda":
        from triton.testing import do_bench
        rep = 50 if quick else 200
        return do_bench(fn, warmup=25, rep=rep, return_mode="median"), dict(timer="triton.testing.do_bench",
                                                                             rep_ms=rep)
    times = time_cpu_ms(fn, min_reps=5 if quick else 10, budget_s=0.5 if quick else 2.0)
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return statistics.median(times), dict(timer="perf_counter", reps=len(times), iqr_ms=q3 - q1,
                                          threads=torch.get_num_threads())


def check_bound(inp: AttentionInputs, device: torch.device) -> tuple[torch.Tensor, float]:
    """``(expected, allowed)``: the output every backend is compared with and the largest max-abs error
    accepted: DESIGN §5's budget (:func:`baton_fast.numerics.budget`), from the error of a plain PyTorch
    implementation in the inputs' dtype.

    On a CPU: the float64 reference, and the plain reference in the inputs' dtype.  On a GPU, where a
    float64 (or score-materialising) reference does not fit at full size: the SDPA path in float32, and
    the same path in the inputs' dtype."""
    if device.type == "cuda":
        expected = _sdpa(inp.to(torch.float32), k_static=False)().float()
        plain = _sdpa(inp, k_static=False)()
    else:
        kwargs = inp.op_kwargs()
        wide = inp.to(torch.float64)
        expected = reference.rope_attention(wide.q, wide.k, wide.v, wide.q_coords, wide.k_coords, **kwargs)
        plain = reference.rope_attention(inp.q, inp.k, inp.v, inp.q_coords, inp.k_coords, **kwargs)
    return expected, numerics.budget(numerics.max_error(plain, expected), expected, inp.q.dtype)


# --------------------------------------------------------------------------- records
def measure_case(case: Case, device, dtype, *, section: str = "kernels", quick: bool = True,
                 backends: Optional[list] = None) -> list[dict]:
    """Check and time every applicable backend on ``case``; one record per figure.

    Figures: ``time`` (ms), matrix throughput (TFLOP/s on a GPU, GFLOP/s on a CPU) and effective
    bandwidth (GB/s of the fused path's minimal bytes).  A backend that fails to build or run gives
    a ``skipped`` record with the reason.
    """
    device = torch.device(device)
    inp = make_inputs(case, device, dtype)
    expected, allowed = check_bound(inp, device)
    shape_model = case.shape(dtype_bytes=torch.finfo(dtype).bits // 8)
    flops, nbytes = attention_flops(shape_model), fused_cost(shape_model).bytes
    shape = dict(B=1, Nq=case.q.tokens, Nk=case.k.tokens, H=case.heads, Hk=case.heads, D=case.head_dim)
    where = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"
    records = []

    def record(backend, metric, value, unit, **extra):
        records.append(dict(section=section, case=case.name, backend=backend, device=where, kind="measured",
                            metric=metric, value=value, unit=unit, shape=shape, dtype=str(dtype).replace("torch.", ""),
                            extra=extra))

    for backend in backends if backends is not None else backends_for(device, case, quick):
        try:
            fn = backend.build(inp, case.k_static)
            err = (fn().to(expected.dtype) - expected).abs().max().item()
            median, how = _time_ms(fn, device, quick)
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            record(backend.name, "skipped", None, "", reason=error_summary(exc))
            continue
        check = dict(max_abs_err=err, allowed_err=allowed, check_ok=math.isfinite(err) and err <= allowed)
        record(backend.name, "time", median, "ms", **how, **check)
        per_s = 1e3 / median
        if device.type == "cuda":
            record(backend.name, "matrix throughput", flops * per_s / 1e12, "TFLOP/s", flops_from="cost model", **check)
        else:
            record(backend.name, "matrix throughput", flops * per_s / 1e9, "GFLOP/s", flops_from="cost model", **check)
        record(backend.name, "effective bandwidth", nbytes * per_s / 1e9, "GB/s",
               bytes_from="cost model, fused path minimal bytes", **check)
    return records


def benchmark_plan(device, quick: bool) -> list[tuple[str, str, Callable[[], list]]]:
    """``(section, label, task)`` triples: the per-case table (``kernels``) and the sequence-length
    sweep (``sweep``) for ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        cases, dtype, sweep = FULL_CASES, torch.bfloat16, video_sweep(SWEEP_GRIDS_GPU, 24)
    else:
        cases, dtype, sweep = CPU_CASES, torch.float32, video_sweep(SWEEP_GRIDS_CPU[quick], CPU_HEADS)
    plan = [("kernels", c.name, lambda c=c: measure_case(c, device, dtype, quick=quick)) for c in cases]
    plan += [("sweep", f"{c.q.tokens} video tokens", lambda c=c: measure_case(c, device, dtype, section="sweep",
                                                                             quick=quick)) for c in sweep]
    return plan
