"""``baton-fast bench``: run the benchmarks for the hardware found, write results, a report and plots.

    baton-fast bench [--quick | --full] [--out DIR] [--device auto|cpu|cuda] [--sections a,b] [--threads N]
    baton-fast bench --report-only RESULTS.json [MORE.json ...] [--out DIR]

Sections (all by default):

- ``cost_model`` (modelled): FLOPs, bytes and roofline times at full model shapes (:mod:`.cost_model`);
- ``kernels`` and ``sweep`` (measured): the attention backends per case and video self-attention
  time vs tokens (:mod:`.kernels_bench`): full shapes in bf16 on a GPU, scaled-down shapes in fp32
  on a CPU;
- ``static`` (compiled): registers, spills and tensor-core instructions of every shipped kernel
  configuration on sm_90 and sm_80, from ``baton_fast.static_check.check`` (``--quick``: the
  attention kernel at the models' head dim, 128, in the first shipped configuration per arch, its
  heaviest and lightest flag variants);
- ``diffusers`` (measured): ``baton_fast.bench.diffusers_bench.run(quick)`` when that module exists;
- ``end_to_end`` (measured): ``baton_fast.model.benchmark_end_to_end(quick)`` when the model layer
  provides it.  Extension point: that function returns a list of records of the form below
  (``section="end_to_end"``); nothing else needs to change;
- ``cache`` (measured): the step-caching threshold sweep, ``baton_fast.bench.cache_bench.run(quick)``;
- ``sp_model`` (modelled): sequence-parallel communication per DiT step beside compute, degrees 1-8 at the
  full presets (:func:`.cost_model.sp_records`);
- ``sequence_parallel`` (measured): 2 gloo ranks against 1 process on this CPU, ``baton_fast.bench.sp_bench.run(quick)``;
- ``sparse_model`` (modelled): sliding-tile block-sparse video self-attention at full size, FLOPs and roofline
  against dense (:func:`.cost_model.sparse_records`);
- ``sparse`` (measured): the CPU block-sparse path against dense SDPA, ``baton_fast.bench.sparse_bench.run(quick)``;
- ``training`` (measured and modelled): forward + backward of the attention, ``baton_fast.bench.training_bench.run(quick)``.

Output in ``--out`` (default ``out/bench``): ``results.json`` (``schema``, ``mode``, ``device``,
``machine`` from :func:`.machine.machine_info`, ``wall_s`` and ``records``), ``report.md`` and
``plots/*.png``.  A record is one figure::

    {"section": "kernels", "case": "Ovi video self-attn", "backend": "SDPA + RoPE pass",
     "device": "cpu", "kind": "measured" | "modelled" | "compiled", "metric": "time",
     "value": 12.3, "unit": "ms", "shape": {"B": 1, "Nq": ..., "Nk": ..., "H": ..., "Hk": ..., "D": ...},
     "dtype": "float32", "extra": {...}}
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from baton_fast.cli import positive_int
from baton_fast.outputs import check_output_folder

from . import kernels_bench, report
from .cases import FULL_CASES
from .cost_model import model_records, sp_records, sparse_records
from .kernels_bench import error_summary
from .machine import machine_info
from .stderr_filter import filtered_stderr

__all__ = ["add_arguments", "run", "collect", "write_outputs", "SECTIONS", "END_TO_END_FUNCTION"]

SECTIONS = ("cost_model", "kernels", "sweep", "static", "diffusers", "end_to_end", "cache", "sp_model",
            "sequence_parallel", "sparse_model", "sparse", "training")
END_TO_END_FUNCTION = "benchmark_end_to_end"
QUICK_STATIC_HEAD_DIM = 128


def add_arguments(parser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="full", action="store_false",
                      help="the default: short timings, the models' head dim in the static check (< 3 min on 2 cores)")
    mode.add_argument("--full", dest="full", action="store_true",
                      help="longer timings, every backend, the longer sweep and every static configuration")
    parser.set_defaults(full=False)
    parser.add_argument("--out", default="out/bench", help="output directory (default: out/bench)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="device of the measured sections (default: cuda when available)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads for the measured sections (default 1: CPU timings stay reproducible "
                             "on a shared machine, where multi-threaded timings swing by 10x)")
    parser.add_argument("--report-only", nargs="+", metavar="RESULTS_JSON",
                        help="regenerate report.md and plots from results files; run nothing")


# --------------------------------------------------------------------------- sections
def _record(section, case, backend, metric, value, unit, kind, **extra) -> dict:
    return dict(section=section, case=case, backend=backend, device="", kind=kind, metric=metric, value=value,
                unit=unit, shape={}, dtype="", extra=extra)


def _skipped(section, backend, reason) -> list:
    return [_record(section, section, backend, "skipped", None, "", "measured", reason=reason)]


def _cost_model_records() -> list:
    return [r for case in FULL_CASES for r in model_records(case.shape())]


SP_PRESETS, SP_SECONDS = ("ovi-720p-5s", "baton-paper"), 5.0


def _sp_model_records() -> list:
    from baton_fast.model.config import PRESETS
    from baton_fast.model.costs import flop_counts

    try:
        return [r for name in SP_PRESETS for r in sp_records(
            PRESETS[name], SP_SECONDS, flop_counts(PRESETS[name], SP_SECONDS, evaluations=1)["dit_forward"])]
    except Exception as exc:  # the FLOP count failing must not lose the rest of the run
        return _skipped("sp_model", "bench.cost_model.sp_records", error_summary(exc))


def _flags_on(job) -> int:
    return sum(value is True for _, value in job.flags)


def _quick_static_jobs(jobs) -> list:
    """Per arch: the attention kernel at the models' head dim in its first shipped configuration, with
    the most and the fewest flags switched on (the heaviest and the lightest variant)."""
    from baton_fast.kernels.rope_attention import shipped_configs

    chosen = []
    for arch in dict.fromkeys(job.arch for job in jobs):
        first = tuple(shipped_configs(arch // 10, QUICK_STATIC_HEAD_DIM, "fused")[0])
        pool = [job for job in jobs if job.kernel == "rope_attention" and job.arch == arch
                and job.D == QUICK_STATIC_HEAD_DIM and job.config == first]
        chosen += list(dict.fromkeys([max(pool, key=_flags_on), min(pool, key=_flags_on)])) if pool else []
    return chosen


def _static_records(quick: bool, progress: bool = False) -> list:
    try:
        from baton_fast import static_check
    except ImportError as err:
        return _skipped("static", "baton_fast.static_check", f"not importable: {err}")
    jobs = static_check.shipped_jobs()
    if quick:
        jobs = _quick_static_jobs(jobs)
    try:
        compiled = static_check.check(jobs, progress=progress)  # its own bar: one step per compiled kernel
    except Exception as exc:  # a compile failure is reported in its section, not fatal to the run
        return _skipped("static", "baton_fast.static_check", error_summary(exc))
    out = []
    for s in compiled:
        out.append(dict(section="static", case=(s["kernel"] + " " + s["case"]).strip(), backend=f"triton {s['arch']}",
                        device=s["arch"], kind="compiled", metric="registers", value=s["regs"], unit="registers",
                        shape=dict(D=s["D"], heads=s["heads"]), dtype=s["dtype"], extra=s))
    return out


def _optional_records(section: str, module: str, function: str, quick: bool) -> list:
    """Records from ``module.function(quick)`` when the module exists and defines it; else one ``skipped``."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        found = False
    if not found:
        return _skipped(section, module, f"{module} is not installed")
    try:
        fn = getattr(importlib.import_module(module), function, None)
        if fn is None:
            return _skipped(section, module, f"{module} does not define {function}(quick)")
        records = list(fn(quick))
    except Exception as exc:  # another component failing must not lose the rest of the run
        return _skipped(section, module, error_summary(exc))
    return [dict(r, section=r.get("section", section)) for r in records if isinstance(r, dict)]


def _tasks(device, quick: bool, sections, progress: bool = False) -> list:
    """``(section, label, task)`` triples in run order."""
    tasks = []
    if "cost_model" in sections:
        tasks.append(("cost_model", "cost model", _cost_model_records))
    if {"kernels", "sweep"} & set(sections):
        tasks += [t for t in kernels_bench.benchmark_plan(device, quick) if t[0] in sections]
    if "static" in sections:
        tasks.append(("static", "static compile sm_90/sm_80", lambda: _static_records(quick, progress)))
    if "diffusers" in sections:
        tasks.append(("diffusers", "diffusers drop-in",
                      lambda: _optional_records("diffusers", "baton_fast.bench.diffusers_bench", "run", quick)))
    if "end_to_end" in sections:
        tasks.append(("end_to_end", "end to end",
                      lambda: _optional_records("end_to_end", "baton_fast.model", END_TO_END_FUNCTION, quick)))
    if "cache" in sections:
        tasks.append(("cache", "step-caching sweep",
                      lambda: _optional_records("cache", "baton_fast.bench.cache_bench", "run", quick)))
    if "sp_model" in sections:
        tasks.append(("sp_model", "sequence-parallel model", _sp_model_records))
    if "sequence_parallel" in sections:
        tasks.append(("sequence_parallel", "sequence parallelism, 2 gloo ranks",
                      lambda: _optional_records("sequence_parallel", "baton_fast.bench.sp_bench", "run", quick)))
    if "sparse_model" in sections:
        tasks.append(("sparse_model", "block-sparse model", sparse_records))
    if "sparse" in sections:
        tasks.append(("sparse", "block-sparse attention on CPU",
                      lambda: _optional_records("sparse", "baton_fast.bench.sparse_bench", "run", quick)))
    if "training" in sections:
        tasks.append(("training", "forward + backward",
                      lambda: _optional_records("training", "baton_fast.bench.training_bench", "run", quick)))
    return tasks


def collect(device: str = "auto", quick: bool = True, sections=SECTIONS, progress: bool = True) -> dict:
    """Run the sections and return the results document (see the module docstring)."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"--sections: expected a subset of {', '.join(SECTIONS)}, got {', '.join(sorted(unknown))}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    start = time.perf_counter()
    machine = machine_info()
    records = []
    tasks = _tasks(device, quick, sections, progress)
    with filtered_stderr():  # without the torch profiler's USDT lines (the memory measurements profile)
        bar = tqdm(tasks, desc="bench", unit="task", disable=not progress, file=sys.stderr)
        for _, label, task in bar:
            bar.set_postfix_str(label)
            records += task()
    return dict(schema=report.RESULTS_SCHEMA, created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                mode="quick" if quick else "full", device=device, sections=list(sections), argv=sys.argv,
                wall_s=round(time.perf_counter() - start, 1), machine=machine, records=records)


def write_outputs(results: list, out_dir, sources: list) -> Path:
    """Write ``report.md`` and ``plots/`` for ``results`` (results documents read from the files ``sources``)
    into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = report.write_plots(results, out_dir / "plots", link_base=out_dir)
    path = out_dir / "report.md"
    command = f"baton-fast bench --report-only {' '.join(map(str, sources))} --out {out_dir}"
    path.write_text(report.render_markdown(results, plots, command))
    return path


def run(args) -> int:
    out_dir = check_output_folder("--out", args.out)
    if args.report_only:
        try:
            results = report.load_results(args.report_only)
        except (OSError, ValueError) as err:
            raise ValueError(f"--report-only: {err}") from None
        print(f"wrote {write_outputs(results, out_dir, args.report_only)}")
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = collect(args.device, quick=not args.full, sections=sections)
    finally:  # callers in the same process (tests) keep their thread count
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=1))
    report_path = write_outputs([results], out_dir, [results_path])
    print(report.render_summary([results]))
    print(f"wrote {results_path}, {report_path} and {out_dir / 'plots'} ({results['wall_s']} s)")
    return 0
