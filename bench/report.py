"""Markdown report and PNG plots from one or more ``baton-fast bench`` results files.

    python -m baton_fast.bench.report RESULTS.json [MORE.json ...] [--plots DIR] > BENCHMARKS.md

Several files (a CPU run and a GPU run) merge into one report; a ``baton-fast gpu-check`` results file
(``mode = "gpu-check"``) adds its GPU check section (:func:`render_gpu_check`).  ``--plots DIR`` writes the PNG
plots there and links them relative to the current directory (run it from where the markdown goes).
Every figure keeps its label: *measured* (timed on the machine named in the file), *modelled*
(the cost model), *compiled* (machine code of an ahead-of-time compile).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["load_results", "render_markdown", "render_summary", "render_gpu_check", "write_plots", "main", "GPU_COMMAND",
           "REPORT_COMMAND"]

RESULTS_SCHEMA = "baton-fast-bench/1"
# `baton-fast gpu-check` (baton_fast/gpu_check) writes a results file of this schema with this mode and sections
GPU_CHECK_MODE = "gpu-check"
GPU_NUMERICS_SECTION, GPU_GRAPH_SECTION, GPU_MEMORY_SECTION = "gpu_numerics", "cuda_graph", "gpu_memory"
GPU_COMMAND = "python3 -m baton_fast.cli gpu-check --out bench/results/gpu"
REPORT_COMMAND = ("python -m baton_fast.bench.report bench/results/cpu/results.json bench/results/gpu/results.json "
                  "--plots bench/results/plots > BENCHMARKS.md")
HEADLINE_SELF_ATTENTION = "Ovi video self-attn"
EAGER_CPU = "baton-fast op, eager (CPU path)"
FUSED_GPU = "baton-fast fused"
UNFUSED_BASELINE = "SDPA + RoPE pass"
END_TO_END_STEP_METRIC = "time per denoise step (median)"  # end-to-end records of the cost curve vs seconds
SPEED_REGRESSION = """\
## Speed regression (pytest-benchmark, CPU paths)

`bench/test_speed.py` times the CPU paths (reference eager and compiled, the unfused SDPA path,
`apply_rope`, `qk_rmsnorm_rope`) at fixed small shapes.  Save a baseline, then compare a later run
against it (fails when a median is more than 25% slower):

```bash
pytest bench/ --benchmark-only --benchmark-autosave
pytest bench/ --benchmark-only --benchmark-compare --benchmark-compare-fail=median:25%
```

Baselines are stored under `.benchmarks/` (per machine; not committed).
"""


# --------------------------------------------------------------------------- loading
def load_results(paths: Iterable) -> list[dict]:
    """Read results files written by ``baton-fast bench``; raises ValueError naming a bad file."""
    results = []
    for path in paths:
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: expected a results JSON file, got invalid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA or not isinstance(data.get("records"), list):
            raise ValueError(f"{path}: expected a results file with schema {RESULTS_SCHEMA!r} and a records list")
        results.append(data)
    return results


def _deduplicated(results: list[dict]) -> list[dict]:
    """Drop records that repeat an earlier one's identity (section, case, backend, metric, shape, device and,
    for compiled records, kernel, arch, config, flags, dtype): merging a CPU
    and a GPU run keeps both runs' measurements but one copy of the modelled and compiled figures."""
    seen, out = set(), []
    for res in results:
        kept = []
        for r in res["records"]:
            fields = ("section", "case", "backend", "metric", "shape", "device", "config", "flags", "dtype",
                      "kernel", "arch", "D", "extra")  # compiled records differ by config, flags, dtype
            key = json.dumps([r.get(k) for k in fields], sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                kept.append(r)
        out.append(dict(res, records=kept))
    return out


def _records(results, **match) -> list[dict]:
    return [r for res in results for r in res["records"] if all(r.get(k) == v for k, v in match.items())]


# --------------------------------------------------------------------------- formatting
def _num(value: Optional[float], digits: int = 3) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _scaled(value: float, unit: str) -> str:
    """Bytes as MB, FLOPs as GFLOP, operations as Gop; others as is."""
    scale = {"B": (1e6, "MB"), "FLOP": (1e9, "GFLOP"), "op": (1e9, "Gop")}.get(unit)
    return f"{_num(value / scale[0])} {scale[1]}" if scale else f"{_num(value)} {unit}"


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _shape(shape: dict) -> str:
    return f"{shape['Nq']:,} x {shape['Nk']:,}, {shape['H']}x{shape['D']}" if shape else ""


def _is_gpu(record) -> bool:
    return str(record.get("device", "")).startswith("cuda")


# --------------------------------------------------------------------------- sections
def _gib(nbytes: Optional[int]) -> str:
    return f"{_num(nbytes / 2**30)} GiB" if nbytes is not None else "? GiB"


def _machines(results) -> str:
    rows = []
    for res in results:
        m = res["machine"]
        gpus = ", ".join(f"{g['name']} (driver {g['driver']}, {_gib(g['memory_total_bytes'])}, "
                         f"SM max {g['sm_clock_max_mhz']} MHz, power limit {_num(g['power_limit_w'])} W)"
                         for g in m["gpus"]) or "none"
        v = m["versions"]
        rows.append([res["mode"], res["device"], f"{m['cpu_model']} ({m['usable_cores']} cores, "
                     f"{m['torch_threads']} torch threads)", _gib(m["memory_bytes"]), gpus,
                     f"torch {v['torch']}, triton {v['triton']}, flash-attn {v['flash-attn']}, xformers {v['xformers']}, "
                     f"diffusers {v['diffusers']}",
                     ", ".join(_num(x, 2) for x in m["load_average_1_5_15"] or []),
                     f"{res['created_utc']}, {_num(res['wall_s'])} s"])
    return "## Machines\n\n" + _table(["run", "device", "CPU", "memory", "GPU", "versions", "load (1/5/15 min)",
                                       "date, wall time"], rows)


def _value(results, **match) -> Optional[float]:
    found = _records(results, **match)
    return found[0]["value"] if found else None


def _headline(results) -> str:
    lines = ["## Headline", ""]
    bytes_ratio = {r["case"]: r["value"] for r in _records(results, section="cost_model", metric="HBM bytes ratio")}
    time_ratio = {r["case"]: r["value"] for r in _records(results, section="cost_model",
                                                          metric="roofline time ratio H100 SXM")}
    if bytes_ratio:
        lines.append("- **Modelled** (cost model, full model shapes, bf16): HBM bytes of the unfused "
                     "(diffusers-style) path / the fused kernel: "
                     + "; ".join(f"{case} **{_num(v)}x**" for case, v in bytes_ratio.items())
                     + ".  Roofline time ratio on H100 SXM: "
                     + "; ".join(f"{case} {_num(v)}x" for case, v in time_ratio.items()) + ".")
    gpu = [r for r in _records(results, metric="time", section="kernels") if _is_gpu(r)]
    if gpu:
        parts = []
        for case in dict.fromkeys(r["case"] for r in gpu):
            fused = _value(results, section="kernels", case=case, backend=FUSED_GPU, metric="time")
            base = _value(results, section="kernels", case=case, backend=UNFUSED_BASELINE, metric="time")
            if fused and base:
                parts.append(f"{case} {_num(base / fused)}x")
        lines.append(f"- **Measured on a GPU**: {UNFUSED_BASELINE} time / {FUSED_GPU} time: " + "; ".join(parts) + ".")
    else:
        lines.append(f"- **GPU**: not measured on a GPU yet (`{GPU_COMMAND}` fills it in).")
    cpu = [r for r in _records(results, metric="time", section="kernels") if not _is_gpu(r)]
    if cpu:
        parts = []
        for case in dict.fromkeys(r["case"] for r in cpu):
            eager = _value(results, section="kernels", case=case, backend=EAGER_CPU, metric="time")
            paths = {r["backend"]: r["value"] for r in cpu if r["case"] == case and r["value"]}  # eager included
            if eager and len(paths) > 1:
                best = min(paths, key=paths.get)
                parts.append(f"{case}: {best} {_num(eager / paths[best])}x")
        lines.append("- **Measured on this CPU** (scaled-down shapes, float32): fastest CPU path (the eager "
                     "reference among the candidates: 1x when it is the fastest) vs the eager reference — "
                     + "; ".join(parts) + ".  CPU figures say nothing about GPU kernels.")
    return "\n".join(lines) + "\n"


def _cost_model(results) -> str:
    recs = _records(results, section="cost_model")
    if not recs:
        return ""
    rows = []
    for case in dict.fromkeys(r["case"] for r in recs):
        def v(backend, metric):
            return _value(results, section="cost_model", case=case, backend=backend, metric=metric)
        shape = next(r["shape"] for r in recs if r["case"] == case)
        rows.append([case, _shape(shape), _scaled(v("fused", "matrix FLOPs"), "FLOP"),
                     _scaled(v("fused", "HBM bytes"), "B"), _scaled(v("fused, K pre-rotated", "HBM bytes"), "B"),
                     _scaled(v("unfused", "HBM bytes"), "B"), f"**{_num(v('unfused / fused', 'HBM bytes ratio'))}x**",
                     f"{_num(v('fused', 'roofline time H100 SXM'))} / {_num(v('fused, K pre-rotated', 'roofline time H100 SXM'))}"
                     f" / {_num(v('unfused', 'roofline time H100 SXM'))}",
                     f"{_num(v('fused', 'roofline time H200 SXM'))} / {_num(v('fused, K pre-rotated', 'roofline time H200 SXM'))}"
                     f" / {_num(v('unfused', 'roofline time H200 SXM'))}"])
    ceilings = sorted({r["extra"]["ceilings"] for r in recs if "ceilings" in r.get("extra", {})})
    return ("## Cost model (modelled, full model shapes, batch 1, bf16)\n\n"
            "Minimal HBM traffic and matrix FLOPs per attention for the fused kernel, the fused kernel with K "
            "rotated once by a pre-pass (static plan keys: once per sampling run, not counted), and the unfused "
            "diffusers-style path (per-token float32 cos/sin tables over rows x D, generated once per forward and "
            "shared by the blocks; rotate passes that read and write Q and K; then attention).  Roofline time per "
            "pass = max(matrix FLOPs / tensor peak, vector ops / FP32 peak, bytes / HBM bandwidth), summed over "
            "passes (see `bench/cost_model.py`).\n\n"
            + _table(["attention", "Nq x Nk, H x D", "matrix FLOPs", "bytes fused", "bytes fused, K pre-rotated",
                      "bytes unfused", "unfused / fused bytes", "H100 µs fused / pre-rot. / unfused",
                      "H200 µs fused / pre-rot. / unfused"], rows)
            + "\nCeilings: " + "; ".join(ceilings) + ".\n")


def _kernel_table(results, section: str, gpu: bool) -> str:
    recs = [r for r in _records(results, section=section) if _is_gpu(r) == gpu]
    rows = []
    for r in recs:
        if r["metric"] != "time":
            continue
        match = dict(section=section, case=r["case"], backend=r["backend"], shape=r["shape"], device=r["device"])
        thr = _records(results, metric="matrix throughput", **match)
        bw = _value(results, metric="effective bandwidth", **match)
        e = r["extra"]
        rows.append([r["case"], _shape(r["shape"]), r["backend"], f"**{_num(r['value'])}**",
                     f"{_num(thr[0]['value'])} {thr[0]['unit']}" if thr else "–", _num(bw),
                     f"{e['max_abs_err']:.1e}" + (f" (allowed {e['allowed_err']:.1e})" if "allowed_err" in e else "")
                     + ("" if e["check_ok"] else " FAILED"),
                     e.get("reps", e.get("rep_ms", ""))])
    skipped = [f"{r['case']} / {r['backend']}: {r['extra']['reason']}" for r in recs if r["metric"] == "skipped"]
    text = _table(["attention", "Nq x Nk, H x D", "backend", "median ms", "matrix throughput", "eff. GB/s",
                   "max abs err vs reference", "reps" if not gpu else "rep ms"], rows) if rows else ""
    if skipped:
        text += "\nSkipped: " + "; ".join(skipped) + "\n"
    return text


def _kernels(results, plots: dict) -> str:
    out = ["## Attention kernels, measured on a GPU (full model shapes, bf16)\n"]
    gpu = _kernel_table(results, "kernels", gpu=True)
    out.append(gpu if gpu else f"Not measured on a GPU yet.  On a machine with an NVIDIA GPU run `{GPU_COMMAND}`, "
               f"then regenerate this file with `{REPORT_COMMAND}`.\n")
    cpu = _kernel_table(results, "kernels", gpu=False)
    if cpu:
        out.append("## Attention kernels, measured on a CPU (scaled-down shapes, float32)\n")
        out.append("CPU paths only (the Triton kernels need a GPU; the interpreter is an emulator and is not "
                   "timed): the op's CPU path (RoPE from coordinates, then PyTorch's SDPA), the plain-PyTorch "
                   "reference (explicit scores) compiled by `torch.compile` (inductor), and the diffusers-style unfused path (materialised cos/sin, rotate "
                   "passes) in front of SDPA or compiled FlexAttention.  Throughputs divide the cost model's matrix "
                   "FLOPs and fused-path bytes by the measured median.  Errors are against a float64 reference; "
                   "allowed: twice the plain float32 reference's own error plus a floor of 1e-6 x max(1, max |reference|) (DESIGN.md §5, `baton_fast.numerics.budget`).\n")
        out.append(cpu)
    sweep_rows = _kernel_table(results, "sweep", gpu=False) + _kernel_table(results, "sweep", gpu=True)
    if sweep_rows:
        out.append("## Cost curve: video self-attention time vs tokens (measured)\n")
        out.append(sweep_rows)
    for name in ("time_vs_tokens_cpu", "time_vs_tokens_gpu"):
        if name in plots:
            out.append(f"\n![{name}]({plots[name]})\n")
    return "\n".join(out)


def _static(results) -> str:
    recs = _records(results, section="static")
    head = "## Machine code of the shipped kernel configurations (compiled ahead of time, no GPU needed)\n\n"
    if not recs:
        return head + "Not in these results (`baton-fast bench --sections static`).\n"
    rows = []
    for r in recs:
        if r["metric"] == "skipped":
            return head + f"Skipped: {r['extra']['reason']}\n"
        s = r["extra"]
        flags = ", ".join(k for k, on in sorted(s["flags"].items()) if on is True) or \
            ", ".join(f"{k}={v}" for k, v in sorted(s["flags"].items()))
        rows.append([s["kernel"] + (f" ({s['case']})" if s["case"] else ""), s["arch"], "x".join(map(str, s["config"])),
                     s["dtype"], s["D"], flags, s["regs"], f"{s['spill_stores']}/{s['spill_loads']}", s["stack"],
                     s["smem"], f"{s['mma']} x{s['mma_count']}", "yes" if s["ok"] else "NO: " + "; ".join(s["problems"])])
    return (head + "From `baton_fast.static_check` (Triton compiled for `GPUTarget(\"cuda\", 90|80, 32)`, read with "
            "the wheel's `cuobjdump`/`ptxas`).  config = BLOCK_M x BLOCK_N x warps x stages (attention) or "
            "warps x stages (pre-pass).\n\n"
            + _table(["kernel", "arch", "config", "dtype", "D", "flags", "registers", "spill B st/ld", "stack B",
                      "smem B", "MMA", "ok"], rows))


def _gpu_check_docs(results) -> list[dict]:
    return [res for res in results if res.get("mode") == GPU_CHECK_MODE]


def _ratio(error: Optional[float], budget: Optional[float]) -> float:
    if error is None or budget is None or error != error:
        return float("inf")  # NaN error: a failure
    return error / budget if budget else (0.0 if error == 0 else float("inf"))


def _gpu_numerics(recs: list[dict]) -> str:
    checks = [r for r in recs if r["metric"] == "max abs error"]
    groups = defaultdict(list)
    for r in checks:
        groups[(r["extra"]["kernel"], r["backend"], r["dtype"])].append(r)
    rows = []
    for (kernel, backend, dtype), rs in groups.items():
        worst = max(rs, key=lambda r: _ratio(r["value"], r["extra"]["budget"]))
        rows.append([kernel, backend, dtype, len(rs), sum(r["extra"]["ok"] for r in rs),
                     f"{_num(_ratio(worst['value'], worst['extra']['budget']), 2)} ({worst['case']}, {worst['extra']['output']})"])
    text = ("### Native numerics: every kernel against float64 (DESIGN.md §5 budget)\n\n"
            + (_table(["kernel", "how launched", "dtype", "checks", "passed", "worst error / budget"], rows)
               if rows else "No numerics records.\n"))
    failed = [r for r in checks if not r["extra"]["ok"]]
    text += "\n" * bool(failed) + "".join(f"- **FAILED** {r['case']} {r['dtype']} {r['extra']['output']}: error {_num(r['value'])}, "
                    f"budget {_num(r['extra']['budget'])}\n" for r in failed)
    per_config = defaultdict(dict)
    for r in checks:
        if r["extra"].get("config"):
            per_config[(r["case"], r["dtype"])][r["extra"]["output"]] = r
    if per_config:
        text += "\nShipped configurations (BLOCK_M x BLOCK_N x warps x stages), launched directly:\n\n" + _table(
            ["case", "dtype", "out error (budget)", "lse error (budget)", "result"],
            [[case, dtype, *(f"{_num(outs[o]['value'])} ({_num(outs[o]['extra']['budget'])})" if o in outs else "–"
                             for o in ("out", "lse")), "pass" if all(r["extra"]["ok"] for r in outs.values()) else "FAIL"]
             for (case, dtype), outs in per_config.items()])
    return text


def _gpu_graph(recs: list[dict]) -> str:
    rows = []
    for r in recs:
        e = r["extra"]
        verdict = "" if "ok" not in e else ("pass" if e["ok"] else "FAIL")
        detail = (f"bitwise equal: {e['bitwise_equal']}, relative {e['relative_diff']:.1e} (tolerance "
                  f"{e['relative_tolerance']:.1e})" if "bitwise_equal" in e else e.get("timer", ""))
        rows.append([r["case"], r["backend"], r["metric"], f"{_num(r['value'])} {r['unit']}".strip(), r["dtype"],
                     detail, verdict])
    shape = next((r["shape"] for r in recs if r.get("shape")), {})
    return ("### CUDA graph of a denoise step (tiny preset, random weights)\n\n" + _shape_text(shape) + "\n\n"
            + _table(["case", "path", "metric", "value", "dtype", "detail", "result"], rows))


def _gpu_memory(results, doc_recs: list[dict]) -> str:
    rows = []
    for r in doc_recs:
        if r["section"] != GPU_MEMORY_SECTION:
            continue
        match = dict(section="kernels", case=r["case"], backend=r["backend"], device=r["device"])
        times = _records(results, metric="time", **match)
        headline = times[0]["extra"].get("headline") if times else None
        metric = {"TFLOP/s": "matrix throughput", "GB/s": "effective bandwidth"}.get(headline)
        figure = _records(results, metric=metric, **match) if metric else []
        rows.append([r["case"], _shape(r["shape"]), r["backend"], f"{_num(times[0]['value'])}" if times else "–",
                     f"{_num(figure[0]['value'])} {figure[0]['unit']}" if figure else "–",
                     _num(r["value"] / 2**20)])
    if not rows:
        return ""
    return ("### Headline figure and peak memory per attention (bf16, full model shapes)\n\n"
            "TFLOP/s (cost-model matrix FLOPs / median time) for self-attention and long-key cross-attention, GB/s "
            "(the fused path's minimal bytes / median time) where one side is short; peak memory: the CUDA "
            "allocator's peak during one call above what was allocated before it.  All timings: the GPU table "
            "of the attention kernels below.\n\n"
            + _table(["attention", "Nq x Nk, H x D", "backend", "median ms", "headline figure", "peak MiB"], rows))


def render_gpu_check(results) -> str:
    """The GPU check section: per ``gpu-check`` results document the GPU (named), versions, parts and
    telemetry, native numerics, the CUDA-graph check and the headline figures with peak memory."""
    docs = _gpu_check_docs(results)
    if not docs:
        return (f"## GPU check\n\nNo `gpu-check` results here: no GPU was available when they were taken.  On a "
                f"machine with an NVIDIA GPU run `{GPU_COMMAND}` (docs/gpu_check.md).\n")
    out = []
    for doc in docs:
        gpu, v = doc["gpu"], doc["versions"]
        drivers = ", ".join(sorted({str(g.get("driver")) for g in doc["machine"].get("gpus", [])})) or "?"
        parts = "; ".join(f"{name} {p['status']} ({p['items_done']}/{p['items']} items, {_num(p['wall_s'])} s of "
                          f"{_num(p['budget_s'])} s)" + (f", {p['failure']}" if p.get("failure") else "")
                          for name, p in doc["parts"].items())
        telemetry = "; ".join(
            f"{name} {t['when']}: " + ", ".join(f"SM {g['sm_clock_mhz']} MHz, {g['temperature_c']} C, "
                                                f"{_num(g['power_draw_w'])} W" for g in t["gpus"])
            for name, p in doc["parts"].items() for t in p.get("telemetry", []) if t.get("gpus"))
        recs = doc["records"]
        skipped = [f"{r['case']}: {r['extra']['reason']}" for r in recs
                   if r["metric"] in ("skipped", "failed") and r["section"] != "kernels"]
        out.append(
            f"## GPU check on {gpu['name']} (measured by `baton-fast gpu-check`)\n\n"
            f"- GPU: {gpu['name']}, compute capability {'.'.join(map(str, gpu['capability']))}, "
            f"{gpu['multiprocessors']} SMs, {_gib(gpu['memory_bytes'])}, driver {drivers}\n"
            f"- Software: Python {v['python']}, torch {v['torch']} (CUDA {v['torch_cuda']}), triton {v['triton']}\n"
            f"- Run: {doc['created_utc']}, {_num(doc['wall_s'])} s; parts: {parts}\n"
            + (f"- Telemetry (nvidia-ml-py): {telemetry}\n" if telemetry else "- Telemetry: nvidia-ml-py gave none\n")
            + "".join(f"- Not run: {s}\n" for s in skipped) + "\n"
            + _gpu_numerics([r for r in recs if r["section"] == GPU_NUMERICS_SECTION]) + "\n"
            + (_gpu_graph([r for r in recs if r["section"] == GPU_GRAPH_SECTION and r["metric"] not in ("skipped", "failed")])
               + "\n" if any(r["section"] == GPU_GRAPH_SECTION for r in recs) else "")
            + _gpu_memory(results, recs))
    return "\n".join(out)


def _shape_text(shape) -> str:
    """``Nq x Nk, HxD`` for an attention shape; ``key=value`` pairs (nested shapes named) otherwise."""
    if not isinstance(shape, dict) or not shape:
        return str(shape or "")
    if {"Nq", "Nk", "H", "D"} <= shape.keys():
        return _shape(shape)
    return ", ".join(f"{k}: {_shape_text(v)}" if isinstance(v, dict) else f"{k}={v}" for k, v in shape.items())


def _generic(results, section: str, title: str, empty: str) -> str:
    """Any section's records as one table (the diffusers and end-to-end sections)."""
    recs = _records(results, section=section)
    if not recs:
        return f"## {title}\n\n{empty}\n"
    rows = []
    for r in recs:
        extra = r.get("extra") or {}
        value = (f"{_num(r['value'])} {r.get('unit', '')}" if r.get("value") is not None
                 else f"skipped: {extra.get('reason', '')}")
        rows.append([r.get("case", ""), r.get("backend", ""), r.get("metric", ""), value, r.get("kind", ""),
                     r.get("dtype", ""), _shape_text(r.get("shape")), r.get("device", ""),
                     r.get("notes") or extra.get("notes", "")])
    return f"## {title}\n\n" + _table(["case", "backend", "metric", "value", "kind", "dtype", "shape", "device",
                                        "notes"], rows)


def _end_to_end(results, plots: dict) -> str:
    """The end-to-end section: one row per device, case and metric, one column per path; the cost-curve plot."""
    head = "## End to end (planner to denoise, tiny preset, measured)\n\n"
    recs = _records(results, section="end_to_end")
    if not recs:
        return head + ("Not in these results: the model layer does not provide `baton_fast.model.benchmark_end_to_end` "
                       "(see docs/benchmarks.md).\n")
    measured = [r for r in recs if r.get("value") is not None]
    paths = list(dict.fromkeys(r["backend"] for r in measured))
    cells, shapes = {}, {}
    for r in measured:
        cells.setdefault((r["device"], r["case"], r["metric"]), {})[r["backend"]] = f"{_num(r['value'])} {r['unit']}"
        shapes.setdefault(r["case"], r.get("shape"))
    text = head
    if cells:
        text += _table(["device", "case", "metric", *paths],
                       [[*key, *(row.get(p, "–") for p in paths)] for key, row in cells.items()])
        notes = dict.fromkeys(r.get("notes") for r in measured if r.get("notes"))
        text += "\n" + "".join(f"- {note}\n" for note in notes)
        text += "".join(f"- {case}: {_shape_text(shape)}\n" for case, shape in shapes.items())
    text += "".join(f"- Skipped: {r['case']} / {r['backend']}: {r['extra']['reason']}\n" for r in recs
                    if r.get("value") is None)
    if "end_to_end_step_vs_seconds" in plots:
        text += f"\n![end-to-end cost curve]({plots['end_to_end_step_vs_seconds']})\n"
    return text


CACHE_METRICS = ("evaluations computed", "fewer evaluations", "DiT wall time", "DiT wall-time speed-up",
                 "DiT CPU time", "DiT CPU-time speed-up", "final-latent rel. L2 (video)",
                 "final-latent rel. L2 (audio)")  # bench/cache_bench.py


def _cache(results, plots: dict) -> str:
    """The step-caching sweep: one row per device, case and setting, one column per metric; the plot."""
    head = "## Step caching (threshold sweep, measured, random weights)\n\n"
    recs = [r for r in _records(results, section="cache") if r.get("value") is not None]
    if not recs:
        skipped = [r for r in _records(results, section="cache") if r.get("value") is None]
        return head + ("".join(f"- Skipped: {r['extra']['reason']}\n" for r in skipped)
                       or "Not in these results (`baton-fast bench --sections cache`).\n")
    cells, shapes = {}, {}
    for r in recs:
        cells.setdefault((r["device"], r["case"], r["backend"]), {})[r["metric"]] = f"{_num(r['value'])} {r['unit']}".strip()
        shapes.setdefault(r["case"], r["shape"])
    text = head + _table(["device", "case", "setting", *CACHE_METRICS],
                         [[*key, *(row.get(m, "–") for m in CACHE_METRICS)] for key, row in cells.items()])
    text += "".join(f"- {note}\n" for note in dict.fromkeys(r.get("notes") for r in recs if r.get("notes")))
    text += "".join(f"- {case}: {_shape_text(shape)}\n" for case, shape in shapes.items())
    if "cache_sweep" in plots:
        text += f"\n![step-caching sweep]({plots['cache_sweep']})\n"
    return text


SP_MODEL_COLUMNS = ("bytes sent per rank per step", "compute per step at H200 SXM peak",
                    "communication per step, NVLink 4", "communication per step, PCIe 5.0 x16",
                    "step, NVLink 4, no overlap", "step, PCIe 5.0 x16, no overlap")  # bench/cost_model.sp_records


def _sequence_parallel(results) -> str:
    """Sequence parallelism: the modelled communication beside compute per preset, then the CPU measurement."""
    text = "## Sequence parallelism (docs/distributed.md)\n\n"
    modelled = [r for r in _records(results, section="sp_model") if r.get("value") is not None]
    cells = {}
    for r in modelled:
        value = _scaled(r["value"], r["unit"]) if r["unit"] == "B" else f"{_num(r['value'])} {r['unit']}"
        cells.setdefault((r["case"], r["backend"]), {})[r["metric"]] = value
    if cells:
        text += ("**Modelled** per DiT step (CFG batch 2, bf16): bytes each rank sends, link time at the "
                 "per-direction bandwidth, compute at the dense BF16 peak split over the ranks "
                 "(`bench/cost_model.py` `sp_records`).\n\n"
                 + _table(["case", "scheme x degree", *SP_MODEL_COLUMNS],
                          [[*key, *(row.get(m, "–") for m in SP_MODEL_COLUMNS)] for key, row in cells.items()]) + "\n")
    text += "".join(f"- Skipped (modelled): {r['extra']['reason']}\n" for r in _records(results, section="sp_model")
                    if r.get("value") is None)
    measured = _generic(results, "sequence_parallel", "Sequence parallelism on this CPU (measured, gloo)",
                        "Not in these results (`baton-fast bench --sections sequence_parallel`).")
    return text + "\n" + measured


def _sparse(results) -> str:
    """Block-sparse attention: the modelled full-size table, then the CPU measurement (docs/sparsity.md)."""
    modelled = _generic(results, "sparse_model", "Block-sparse video attention, full size (modelled; docs/sparsity.md)",
                        "Not in these results (`baton-fast bench --sections sparse_model`).")
    published = next((r["extra"]["published"] for r in _records(results, section="sparse_model")
                      if (r.get("extra") or {}).get("published")), None)
    if published:
        modelled += f"\nPublished, not measured here: {published}.\n"
    measured = _generic(results, "sparse", "Block-sparse attention on this CPU (measured)",
                        "Not in these results (`baton-fast bench --sections sparse`).")
    return modelled + "\n" + measured


def render_markdown(results: list[dict], plots: Optional[dict] = None, command: Optional[str] = None) -> str:
    """The whole report; ``plots`` maps plot names to the links to use (from :func:`write_plots`);
    ``command`` is the command that regenerates it (shown at the top)."""
    plots = plots or {}
    results = _deduplicated(results)
    cost = _cost_model(results)
    if "modelled_bytes" in plots:
        cost += f"\n![modelled bytes]({plots['modelled_bytes']})\n"
    command = command or "python -m baton_fast.bench.report RESULTS.json --plots DIR > BENCHMARKS.md"
    parts = [
        "# Benchmarks\n",
        f"Generated from results JSON by `{command}`; do not edit by hand.  `baton-fast bench` writes the results file (`--quick`, the default, in under 3 "
        "minutes on 2 cores; `--full` runs everything).  Every figure is labelled **measured** (timed on the "
        "machine below), **modelled** (cost model) or **compiled** (machine code of an ahead-of-time compile).\n",
        _machines(results), _headline(results), cost, render_gpu_check(results), _kernels(results, plots),
        _static(results),
        _generic(results, "diffusers", "diffusers drop-in (LTX-2 / Wan transformers)",
                 "Not in these results (`bench/diffusers_bench.py` was not available when they were taken)."),
        _end_to_end(results, plots),
        _cache(results, plots),
        _sequence_parallel(results),
        _sparse(results),
        _generic(results, "training", "Training: attention forward + backward",
                 "Not in these results (the `training` section was not run)."),
        SPEED_REGRESSION,
    ]
    return "\n".join(p for p in parts if p)


def render_summary(results: list[dict]) -> str:
    """What ``baton-fast bench`` prints: the headline, the cost model and the measured kernel tables."""
    results = _deduplicated(results)
    parts = (_headline(results), _cost_model(results), _kernel_table(results, "kernels", gpu=True),
             _kernel_table(results, "kernels", gpu=False))
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------- plots
def write_plots(results: list[dict], out_dir, link_base=None) -> dict:
    """Write PNG plots into ``out_dir``; returns ``{name: link}`` with links relative to ``link_base``
    (default: the current directory)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _deduplicated(results)
    links = {}

    def save(fig, name):
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        links[name] = os.path.relpath(path, link_base or os.getcwd())

    for gpu, name in ((False, "time_vs_tokens_cpu"), (True, "time_vs_tokens_gpu")):
        curves = defaultdict(dict)
        for r in _records(results, metric="time", case=HEADLINE_SELF_ATTENTION):
            if r["section"] in ("kernels", "sweep") and _is_gpu(r) == gpu:
                curves[r["backend"]][r["shape"]["Nq"]] = r["value"]
        if not curves:
            continue
        sample = next(r for r in _records(results, metric="time", case=HEADLINE_SELF_ATTENTION) if _is_gpu(r) == gpu)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for backend, points in sorted(curves.items()):
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=backend)
        ax.set(xscale="log", yscale="log", xlabel="video tokens (self-attention, Nq = Nk)", ylabel="median time (ms)",
               title=f"Measured on {'GPU' if gpu else 'CPU'}: video self-attention, H={sample['shape']['H']}, "
                     f"D={sample['shape']['D']}, {sample['dtype']}")
        tokens = sorted({x for points in curves.values() for x in points})
        ax.set_xticks(tokens, [f"{x:,}" for x in tokens])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, name)

    curve = [r for r in _records(results, section="end_to_end", metric=END_TO_END_STEP_METRIC) if r.get("value")]
    if curve:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        lines = defaultdict(dict)
        for r in curve:
            lines[(r["backend"], r["device"])][r["shape"]["seconds"]] = r["value"]
        for (backend, device), points in lines.items():
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=f"{backend} ({device})")
        tokens = {r["shape"]["seconds"]: f"{r['shape']['video_tokens']} + {r['shape']['audio_tokens']}" for r in curve}
        ax.set_xticks(sorted(tokens), [f"{x:g} s\n{tokens[x]} tokens" for x in sorted(tokens)])
        ax.set(xlabel="seconds of video (video + audio tokens per sample)", ylabel="median time per denoise step (ms)",
               title=f"Measured on {', '.join(sorted({r['device'] for r in curve}))}: time per denoise step vs "
                     f"duration, {curve[0]['shape']['preset']} preset")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "end_to_end_step_vs_seconds")

    sweep = [r for r in _records(results, section="cache") if r.get("value") is not None]
    if sweep:
        cases = list(dict.fromkeys((r["device"], r["case"]) for r in sweep))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for device, case in cases:
            for policy in dict.fromkeys(r["extra"]["policy"] for r in sweep if r["extra"]["policy"] != "none"):
                points = defaultdict(dict)
                for r in sweep:
                    if (r["device"], r["case"], r["extra"]["policy"]) == (device, case, policy):
                        points[r["metric"]][r["extra"]["threshold"]] = r["value"]
                xs = sorted(points["fewer evaluations"])
                label = f"{case.split(',')[0]}, {policy}"
                clock = "CPU" if points["DiT CPU-time speed-up"] else "wall"
                line, = axes[0].plot(xs, [points["fewer evaluations"][x] for x in xs], marker="o",
                                     label=f"{label}: fewer evaluations")
                axes[0].plot(xs, [points[f"DiT {clock}-time speed-up"][x] for x in xs], marker="x", linestyle="--",
                             color=line.get_color(), label=f"{label}: DiT {clock}-time speed-up")
                axes[1].plot(xs, [points["final-latent rel. L2 (video)"][x] for x in xs], marker="o",
                             color=line.get_color(), label=f"{label}: video")
                axes[1].plot(xs, [points["final-latent rel. L2 (audio)"][x] for x in xs], marker="x",
                             linestyle="--", color=line.get_color(), label=f"{label}: audio")
        axes[0].set(xlabel="cache threshold", ylabel="x vs uncached", title="Evaluations and DiT time")
        axes[0].axhline(1.0, color="grey", linewidth=0.8)
        axes[1].set(xlabel="cache threshold", ylabel="relative L2 vs uncached", yscale="log",
                    title="Final-latent difference (random weights: a mechanism check)")
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
        fig.suptitle(f"Measured on {', '.join(sorted({d for d, _ in cases}))}: step caching, "
                     f"{sweep[0]['shape']['steps']} Euler steps, random weights")
        save(fig, "cache_sweep")

    cost = _records(results, section="cost_model", metric="HBM bytes")
    if cost:
        cases = list(dict.fromkeys(r["case"] for r in cost))
        paths = list(dict.fromkeys(r["backend"] for r in cost))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        width = 0.8 / len(paths)
        for i, path in enumerate(paths):
            values = [next(r["value"] for r in cost if r["case"] == c and r["backend"] == path) / 1e6 for c in cases]
            ax.bar([j + i * width for j in range(len(cases))], values, width, label=path)
        ax.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(cases))], cases, rotation=20, ha="right",
                      fontsize=8)
        ax.set(yscale="log", ylabel="minimal HBM traffic (MB)",
               title="Modelled: HBM bytes per attention, full model shapes, bf16")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "modelled_bytes")
    return links


# --------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baton_fast.bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files written by `baton-fast bench`")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR and link them")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
    except (ValueError, OSError) as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    plots = write_plots(results, args.plots) if args.plots else {}
    command = " ".join(["python -m baton_fast.bench.report", *args.results] + (["--plots", args.plots] if args.plots else []))
    sys.stdout.write(render_markdown(results, plots, command + " > BENCHMARKS.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
