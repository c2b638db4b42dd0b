"""End-to-end benchmark of the planner-to-denoise path: ``benchmark_end_to_end(quick)``, the ``end_to_end``
section of ``baton-fast bench``.

Measured on this machine, on the ``tiny`` preset (random weights, seed 0; one prompt pair, classifier-free
guidance, so every DiT evaluation runs on a batch of 2), through :meth:`BatonPipeline.generate`:

- two paths, one set of weights: the **reference eager** pipeline, and the **compiled fast path** — a copy of
  its DiT whose fusion blocks are compiled by the sampler's regional ``torch.compile`` (``compile_backend``,
  :func:`~baton_fast.model.sampler.compile_blocks`: ``fullgraph=True, dynamic=False``, inductor).  Planner,
  text encoder and decoder are shared and run eagerly in both; the baton-fast ops run their CPU reference
  path on a CPU and the Triton kernels on CUDA;
- per path: planner LM prefill (the causal forward over prompts and placeholders, timed on its own), planner
  (tokenize + prefill + alignment towers), text encoding, run preparation, time per denoise step (median of
  every step of the timed runs), the whole denoise loop, decode, total (planner to decode, model build
  excluded) and the peak tensor memory of one run, over the whole run and during the DiT evaluations
  (above what was allocated before the run; torch profiler allocation events on a CPU, the CUDA
  allocator's peak on CUDA);
- compile time: the first compiled run's preparation + denoise time minus the median of the warm runs'
  (Dynamo trace, AOT and inductor codegen for the shape; inductor's on-disk caches are left on, as a user
  gets them, and their hits and misses are recorded);
- time per denoise step at 1, 2 and 4 s of video: the cost curve.  The compiled path recompiles per duration
  (static shapes; a cold compile takes ~25 s on 2 cores, one from inductor's cache a few seconds), so it
  runs at the headline duration, 2 s, first, and ``quick`` adds 1 s and 4 s only while the compile time
  spent plus the last compile's stays within 15 s (:data:`BUDGETS`); ``quick=False`` compiles all three.

Every path first runs once untimed per duration (warm-up; the compiled path compiles there); the timed
runs then alternate between the paths, so that a change of machine load hits both.  Records follow the
format of :mod:`baton_fast.bench.runner` (``kind="measured"``, ``measured=True``, device ``cpu`` or
``cuda:<name>``, the torch thread count in ``extra``).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from baton_fast.bench.report import END_TO_END_STEP_METRIC as STEP_METRIC  # the report plots it against seconds

from .config import get_preset
from .pipeline import BatonPipeline
from .sampler import SamplerOptions

__all__ = ["benchmark_end_to_end", "Budget", "BUDGETS", "SECONDS", "HEADLINE_SECONDS", "PRESET", "COMPILE_BACKEND",
           "STEP_METRIC"]

SECTION = "end_to_end"
PRESET = "tiny"
SECONDS = (1.0, 2.0, 4.0)
HEADLINE_SECONDS = 2.0
COMPILE_BACKEND = "inductor"
DIT_ANNOTATION = "baton_fast.bench: DiT evaluation"  # profiler range around each DiT forward
PROMPTS = ("a red ball bounces on a wooden floor", "a rubber ball bouncing, soft thuds")


@dataclass(frozen=True)
class Budget:
    """Euler ``steps`` per run and timed ``rounds`` per path and duration; the compiled path runs at the
    ``compiled_seconds`` durations in that order (the first always; each further one — a recompile — only
    while the compile time spent so far plus the last compile's stays within ``compile_budget_s``)."""

    steps: int
    rounds: int
    compiled_seconds: tuple
    compile_budget_s: float


BUDGETS = {True: Budget(steps=8, rounds=5, compiled_seconds=(2.0, 1.0, 4.0), compile_budget_s=15.0),
           False: Budget(steps=20, rounds=15, compiled_seconds=(2.0, 1.0, 4.0), compile_budget_s=math.inf)}


@dataclass
class _Path:
    """One way of running the pipeline and what was measured on it."""

    name: str
    pipeline: BatonPipeline
    compile_backend: Optional[str]  # None: eager
    first: dict = field(default_factory=dict)           # seconds -> timing report of the warm-up run
    runs: dict = field(default_factory=dict)            # seconds -> timing reports of the timed runs
    prefill_s: list = field(default_factory=list)       # planner LM prefill times (headline duration)
    compile_s: dict = field(default_factory=dict)       # seconds -> compile time (first run - warm run), in order
    compile_caches: dict = field(default_factory=dict)  # seconds -> inductor FX-graph cache hits and misses
    peak_bytes: tuple = (0, 0)  # (whole run, DiT evaluations)


def _device_and_dtype():
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generate(path: _Path, seconds: float, steps: int) -> dict:
    options = SamplerOptions(steps=steps, compile_backend=path.compile_backend, progress=False)
    return path.pipeline.generate([PROMPTS[0]], [PROMPTS[1]], seconds=seconds, seed=0, options=options).report


def _prefill_seconds(pipeline: BatonPipeline) -> float:
    """Wall time of the planner's LM prefill on the batch ``generate`` plans (prompts + negative prompts)."""
    planner = pipeline.planner
    input_ids, attention_mask = planner.tokenize([PROMPTS[0], ""], [PROMPTS[1], ""])
    input_ids, attention_mask = input_ids.to(pipeline.device), attention_mask.to(pipeline.device)
    with torch.inference_mode():
        _synchronize(pipeline.device)
        start = time.perf_counter()
        planner.placeholder_states(input_ids, attention_mask)
        _synchronize(pipeline.device)
    return time.perf_counter() - start


@contextlib.contextmanager
def _dit_windows(dit: torch.nn.Module, on_enter, on_exit):
    """Call ``on_enter()`` before and ``on_exit()`` after every forward of ``dit`` while the context is open."""
    hooks = (dit.register_forward_pre_hook(lambda module, args: on_enter()),
             dit.register_forward_hook(lambda module, args, output: on_exit()))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _peak_tensor_bytes(run, dit: torch.nn.Module, device: torch.device) -> tuple[int, int]:
    """``(whole run, DiT evaluations)``: peak bytes of tensors allocated on ``device`` while ``run()`` runs and
    while ``dit`` evaluates within it, above what was allocated before ``run()``.

    CUDA: the allocator's peak, read and reset around every DiT forward.  CPU: the torch profiler's
    allocation events (the running total after each allocation), DiT evaluations marked by a
    ``record_function`` range.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        peaks = {"run": 0, "dit": 0}

        def read(window):
            torch.cuda.synchronize(device)
            peaks[window] = max(peaks[window], torch.cuda.max_memory_allocated(device) - start)
            torch.cuda.reset_peak_memory_stats(device)

        torch.cuda.reset_peak_memory_stats(device)
        with _dit_windows(dit, lambda: read("run"), lambda: read("dit")):
            run()
        read("run")
        return max(peaks.values()), peaks["dit"]

    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    ranges = []
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with _dit_windows(dit, lambda: ranges.append(record_function(DIT_ANNOTATION).__enter__()),
                          lambda: ranges.pop().__exit__(None, None, None)):
            run()
    allocations = []  # (start ns, bytes, running total, inside a DiT evaluation)
    stack = [(node, False) for node in prof.profiler.kineto_results.experimental_event_tree()]
    while stack:
        node, in_dit = stack.pop()
        in_dit = in_dit or node.name == DIT_ANNOTATION
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == device.type:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated,
                                in_dit))
        stack.extend((child, in_dit) for child in node.children)
    if not allocations:
        return 0, 0
    allocations.sort()
    before = allocations[0][2] - allocations[0][1]
    return (max(total for _, _, total, _ in allocations) - before,
            max((total for _, _, total, in_dit in allocations if in_dit), default=before) - before)


def _generation_seconds(timings: dict) -> float:
    """Planner to decode (the model build is not part of a generation)."""
    return sum(timings[k] for k in ("planner", "text_encoder", "prepare", "denoise", "decode"))


def _compiles_at(path: _Path, seconds: float, budget: Budget) -> bool:
    """Whether the compiled ``path`` runs at ``seconds``: the first of ``budget.compiled_seconds`` always, a
    further one while the compile time spent so far plus the last compile's stays within the budget."""
    if seconds not in budget.compiled_seconds:
        return False
    spent = list(path.compile_s.values())
    return not spent or sum(spent) + spent[-1] <= budget.compile_budget_s


def _dit_seconds(report: dict) -> float:
    """Run preparation + denoise of one run: where the compiled path compiles on its first run."""
    return report["timings_s"]["prepare"] + report["timings_s"]["denoise"]


def _inductor_cache_counts() -> dict:
    from torch._dynamo.utils import counters
    return {k: counters["inductor"][k] for k in ("fxgraph_cache_hit", "fxgraph_cache_miss")}


def _shape(report: dict, steps: int) -> dict:
    tokens = report["tokens"]
    return dict(preset=report["preset"], seconds=report["seconds"], prompts=report["batch"],
                dit_batch=2 * report["batch"], steps=steps, video_tokens=tokens["video"],
                audio_tokens=tokens["audio"], text_tokens=tokens["text"], video_plan_tokens=tokens["video_plan"],
                audio_plan_tokens=tokens["audio_plan"])


def _median_ms(values) -> float:
    return statistics.median(values) * 1e3


def _records(paths: list, where: str, dtype: torch.dtype, budget: Budget) -> list:
    cuda = where.startswith("cuda")
    threads = torch.get_num_threads()
    notes = (f"{PRESET} preset, random weights; 1 prompt pair with classifier-free guidance (DiT batch 2), "
             f"{budget.steps} Euler steps; compiled = regional torch.compile of the DiT fusion blocks "
             f"({COMPILE_BACKEND}, fullgraph, static shapes); planner, text encoder and decoder eager in both; "
             f"baton-fast ops on the {'Triton' if cuda else 'CPU reference'} path")
    records = []

    def record(path, seconds, metric, value, unit, note=notes, **extra):
        report = path.runs[seconds][0]
        records.append(dict(section=SECTION, case=f"{PRESET}, {seconds:g} s", backend=path.name, device=where,
                            kind="measured", measured=True, metric=metric, value=value, unit=unit,
                            shape=_shape(report, budget.steps), dtype=str(dtype).removeprefix("torch."), notes=note,
                            extra=dict(extra, torch_threads=threads)))

    for path in paths:
        runs = path.runs[HEADLINE_SECONDS]
        timings = [r["timings_s"] for r in runs]
        rounds = dict(rounds=len(runs), timer="perf_counter")
        record(path, HEADLINE_SECONDS, "planner LM prefill", _median_ms(path.prefill_s), "ms",
               runs_ms=[t * 1e3 for t in path.prefill_s], **rounds)
        for metric, key in (("planner (tokenize + prefill + towers)", "planner"), ("text encoding", "text_encoder"),
                            ("run preparation (text embed, plan K/V)", "prepare")):
            record(path, HEADLINE_SECONDS, metric, _median_ms(t[key] for t in timings), "ms", **rounds)
        for seconds in SECONDS:
            if seconds not in path.runs:
                continue
            steps = [s for r in path.runs[seconds] for s in r["timings_s"]["steps"]]
            q1, _, q3 = statistics.quantiles(steps, n=4) if len(steps) > 1 else (steps[0],) * 3
            record(path, seconds, STEP_METRIC, _median_ms(steps), "ms", samples=len(steps), iqr_ms=(q3 - q1) * 1e3,
                   warm_up="one untimed run per path and duration", **rounds)
        record(path, HEADLINE_SECONDS, f"denoise ({budget.steps} steps)", _median_ms(t["denoise"] for t in timings),
               "ms", **rounds)
        record(path, HEADLINE_SECONDS, "decode", _median_ms(t["decode"] for t in timings), "ms", **rounds)
        record(path, HEADLINE_SECONDS, "total (planner to decode)", _median_ms(map(_generation_seconds, timings)),
               "ms", **rounds)
        how = "CUDA allocator peak" if cuda else "torch profiler CPU allocation events"
        for window, nbytes in zip(("whole run", "DiT evaluations"), path.peak_bytes):
            record(path, HEADLINE_SECONDS, f"peak tensor memory ({window})", nbytes / 2**20, "MiB", how=how,
                   above="tensors allocated before the run (weights, caches)")
        for seconds in sorted(path.compile_s):
            caches = path.compile_caches[seconds]
            record(path, seconds, "compile time (first run - warm run)", path.compile_s[seconds], "s",
                   f"compile time at {seconds:g} s with inductor's on-disk FX-graph cache: "
                   f"{caches['fxgraph_cache_hit']} hit(s), {caches['fxgraph_cache_miss']} miss(es)",
                   backend=path.compile_backend, inductor_fx_graph_cache=caches)
    return records


def benchmark_end_to_end(quick: bool) -> list[dict]:
    """Measure the planner-to-denoise path of the ``tiny`` preset, eager vs compiled (see the module
    docstring); returns the records of the ``end_to_end`` section of ``baton-fast bench``.

    A compiled path that cannot run here (no C++ compiler for inductor, say) gives one ``skipped`` record
    with the reason next to the eager records.
    """
    from baton_fast.bench.kernels_bench import error_summary
    from baton_fast.ops import backend_for

    if not isinstance(quick, bool):
        raise TypeError(f"quick: expected a bool, got {type(quick).__name__}")
    budget = BUDGETS[quick]
    device, dtype = _device_and_dtype()
    eager_pipeline = BatonPipeline.build(get_preset(PRESET), device=device, dtype=dtype)
    compiled_pipeline = BatonPipeline(eager_pipeline.cfg, copy.deepcopy(eager_pipeline.dit),
                                      eager_pipeline.text_encoder, eager_pipeline.planner, eager_pipeline.decoder)
    eager = _Path(f"eager, {backend_for(device)} ops", eager_pipeline, None)
    compiled = _Path(f"regional torch.compile ({COMPILE_BACKEND})", compiled_pipeline, COMPILE_BACKEND)
    torch._dynamo.reset()  # compile from scratch (in this process; inductor's disk caches stay)
    where = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"
    skipped, compile_failed = [], False
    for seconds in dict.fromkeys([*budget.compiled_seconds, *SECONDS]):  # compiled durations first, in order
        if seconds not in SECONDS:
            continue
        paths = [eager] + ([compiled] if not compile_failed and _compiles_at(compiled, seconds, budget) else [])
        for path in paths:
            caches = _inductor_cache_counts()
            try:
                path.first[seconds] = _generate(path, seconds, budget.steps)
            except Exception as exc:  # the compiled path failing here must not lose the other figures
                if path is eager:
                    raise
                skipped.append(dict(section=SECTION, case=f"{PRESET}, {seconds:g} s", backend=path.name,
                                    device=where, kind="measured", measured=True, metric="skipped", value=None,
                                    unit="", shape={}, dtype=str(dtype).removeprefix("torch."),
                                    extra=dict(reason=error_summary(exc))))
                compile_failed = True
                continue
            if path is compiled:
                path.compile_caches[seconds] = {k: v - caches[k] for k, v in _inductor_cache_counts().items()}
        paths = [path for path in paths if seconds in path.first]
        for _ in range(budget.rounds):
            for path in paths:
                if seconds == HEADLINE_SECONDS:
                    path.prefill_s.append(_prefill_seconds(path.pipeline))
                path.runs.setdefault(seconds, []).append(_generate(path, seconds, budget.steps))
        if compiled in paths:
            compiled.compile_s[seconds] = _dit_seconds(compiled.first[seconds]) - statistics.median(
                map(_dit_seconds, compiled.runs[seconds]))
    measured = [path for path in (eager, compiled) if HEADLINE_SECONDS in path.runs]
    for path in measured:
        path.peak_bytes = _peak_tensor_bytes(functools.partial(_generate, path, HEADLINE_SECONDS, budget.steps),
                                             path.pipeline.dit, device)
    return _records(measured, where, dtype, budget) + skipped
