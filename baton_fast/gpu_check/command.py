"""``baton-fast gpu-check``: native numerics, CUDA-graph replay and attention timings on a CUDA GPU.

    python3 -m baton_fast.cli gpu-check [--out DIR] [--parts numerics,cuda_graph,timings] [--budget-s 410]
    python3 -m baton_fast.cli gpu-check --sp-degree N [--out DIR]   # several GPUs: .sequence_parallel

Each part runs in child processes (a kernel fault that poisons the CUDA context, or a hang, costs that
part only) within its share of the time budget (:data:`PART_BUDGETS_S`, scaled to ``--budget-s``): no
item starts after the part's deadline (the rest are recorded as skipped), and a child still running
``GRACE_S`` after it is stopped.  The numerics items, mostly Triton compiles, are shared by
:data:`SHARDS` processes; the CUDA-graph check and the timings run alone.  Children write
``DIR/parts/<part>-<shard>.json`` after every item; ``DIR/results.json`` (:mod:`.results`) follows them
every :data:`POLL_S` seconds, so a run stopped at any point leaves its data, and the part files are
removed once merged.  At the end ``DIR/report.md`` is rendered by :mod:`baton_fast.bench.report`.
Exit status: 0 when every check passed and every part finished, 1 otherwise, 2 (one line) when there
is no CUDA device or an argument is wrong.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .results import PARTS, gpu_description, new_document, record, validate_document, write_document

__all__ = ["add_arguments", "run", "PART_BUDGETS_S", "DEFAULT_BUDGET_S", "GRACE_S", "SHARDS", "parse_parts",
           "part_budgets", "environment_problem", "run_items", "merge_shards", "exit_status"]

# numerics: 51 items over up to 8 processes, mostly Triton compiles; cuda_graph: one item that compiles the
# tiny DiT's attention variants; timings: 8 cases, each with a FlexAttention compile
PART_BUDGETS_S = {"numerics": 90.0, "cuda_graph": 80.0, "timings": 240.0}
DEFAULT_BUDGET_S = sum(PART_BUDGETS_S.values())  # 410 s: with start-ups and the last item's overrun, < 8 min
GRACE_S = 45.0  # the longest item (Wan 720p timings with a FlexAttention compile) fits in it
PART_SECTIONS = {"numerics": "gpu_numerics", "cuda_graph": "cuda_graph", "timings": "kernels"}
SHARDS = {"numerics": max(1, min(8, (os.cpu_count() or 2) // 2))}
POLL_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/gpu", help="output directory (default: out/gpu)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="time budget in seconds, shared by the parts in the ratio of their defaults ("
                             + ", ".join(f"{p} {s:g} s" for p, s in PART_BUDGETS_S.items())
                             + f"; default {DEFAULT_BUDGET_S:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--sp-degree", type=int, default=None, metavar="N",
                        help="instead of the parts: sequence-parallel attention on N GPUs (NCCL, one process each) "
                             "against one GPU, checked and timed, into DIR/sp_results.json "
                             "(baton_fast/gpu_check/sequence_parallel.py)")
    # internal, for the child processes: run shard I/N of one part until the deadline
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)
    parser.add_argument("--deadline-in-s", type=float, help=argparse.SUPPRESS)


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"--parts: expected a comma-separated subset of {', '.join(PARTS)}, got {text!r}")
    return [p for p in PARTS if p in parts]


def part_budgets(parts: list[str], budget_s: float) -> dict:
    """Seconds per part: ``budget_s`` shared in the ratio of :data:`PART_BUDGETS_S`."""
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"--budget-s: expected a positive number of seconds, got {budget_s!r}")
    total = sum(PART_BUDGETS_S[p] for p in parts)
    return {p: round(budget_s * PART_BUDGETS_S[p] / total, 1) for p in parts}


def environment_problem():
    """Why gpu-check cannot run in this process (one line), or None."""
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        return (f"no CUDA device is available (torch {torch.__version__}, {build}); gpu-check runs on a machine "
                f"with an NVIDIA GPU")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set: gpu-check runs the compiled kernels; unset it"
    if os.environ.get("BATON_FAST_BACKEND", "auto") == "reference":
        return "BATON_FAST_BACKEND=reference is set: gpu-check runs the Triton kernels; unset it"
    return None


# --------------------------------------------------------------------------- child: one shard of a part
def _telemetry(when: str) -> dict:
    from baton_fast.bench.machine import gpu_info
    keep = ("index", "name", "sm_clock_mhz", "memory_clock_mhz", "temperature_c", "power_draw_w", "memory_used_bytes")
    return dict(when=when, utc=time.strftime("%H:%M:%S", time.gmtime()),
                gpus=[{k: g.get(k) for k in keep} for g in gpu_info()])


def _items(part: str, where: str, seed: int) -> list:
    if part == "numerics":
        from .native import config_items, selftest_items
        major = torch.cuda.get_device_capability()[0]
        return selftest_items(where, seed) + config_items(major, "cuda", where, seed)
    if part == "cuda_graph":
        from .graph import check_cuda_graph
        return [("tiny denoise step, bf16", lambda: check_cuda_graph("cuda", torch.bfloat16, where, seed))]
    from .timings import timing_items
    return timing_items("cuda", where)


def run_items(doc: dict, part_name: str, items: list, deadline: float, path, where: str) -> None:
    """Run ``(label, task)`` items of one part into ``doc`` (each task returns records), rewriting ``path``
    after each; none starts after the monotonic-clock ``deadline`` (the rest are recorded as skipped), and
    an item that raises becomes one ``failed`` record."""
    from tqdm import tqdm

    from baton_fast.bench.kernels_bench import error_summary

    start = time.perf_counter()
    part = doc["parts"][part_name]
    section = PART_SECTIONS[part_name]
    part.update(status="running", items=len(items), telemetry=[_telemetry("start")])
    write_document(doc, path)
    for i, (label, task) in enumerate(tqdm(items, desc=f"gpu-check {part_name}", unit="item", file=sys.stderr)):
        if time.monotonic() > deadline:
            doc["records"] += [record(section, name, "", "skipped", None, "", device=where,
                                      reason=f"the part's time budget ({part['budget_s']:g} s) was spent")
                               for name, _ in items[i:]]
            part["status"] = "partial"
            break
        try:
            doc["records"] += task()
        except Exception as exc:  # one item failing must not lose the others
            doc["records"].append(record(section, label, "", "failed", None, "", device=where,
                                         reason=error_summary(exc, limit=500)))
        part["items_done"] += 1
        part["wall_s"] = round(time.perf_counter() - start, 1)
        write_document(doc, path)
    else:
        part["status"] = "done"
    part["telemetry"].append(_telemetry("end"))
    part["wall_s"] = doc["wall_s"] = round(time.perf_counter() - start, 1)
    write_document(doc, path)


def _part_file(out_dir: Path, part: str, shard: int) -> Path:
    return out_dir / "parts" / f"{part}-{shard}.json"


def _run_shard(args) -> int:
    """Child process: items ``I, I+N, ...`` of ``args.part`` (``--shard I/N``) until the deadline."""
    from baton_fast.bench.machine import machine_info

    deadline = time.monotonic() + args.deadline_in_s
    index, count = map(int, args.shard.split("/"))
    where = f"cuda:{torch.cuda.get_device_name()}"
    doc = new_document(gpu_description(0), machine_info(), {args.part: args.deadline_in_s})
    items = _items(args.part, where, args.seed)[index::count]
    run_items(doc, args.part, items, deadline, _part_file(Path(args.out), args.part, index), where)
    return 0


# --------------------------------------------------------------------------- parent: parts and merging
def merge_shards(name: str, budget_s: float, shard_docs: list, exit_codes: list) -> tuple[dict, list, list]:
    """``(part entry, records, failures)`` of a part from its shards' documents (None: none written) and the
    exit codes of their processes (None: still running, or stopped); ``failures`` names each shard that
    exited with an error or was stopped before it finished."""
    entry = dict(status="done", budget_s=budget_s, wall_s=0.0, items=0, items_done=0, telemetry=[])
    records, failures = [], []
    for shard, (child, code) in enumerate(zip(shard_docs, exit_codes)):
        part = child["parts"][name] if child else dict(status="running", wall_s=0.0, items=0, items_done=0,
                                                         telemetry=[])
        for key in ("items", "items_done"):
            entry[key] += part[key]
        entry["wall_s"] = max(entry["wall_s"], part["wall_s"])
        entry["telemetry"] += part["telemetry"]
        records += child["records"] if child else []
        if part["status"] == "partial" and entry["status"] != "running":
            entry["status"] = "partial"
        elif part["status"] != "done":
            entry["status"] = "running"
        if code not in (0, None):
            failures.append(f"shard {shard}: its process exited with status {code}")
    return entry, records, failures


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet (writes are atomic: never half a file)
        return None


def _child_command(name: str, shard: str, budget_s: float, args) -> list[str]:
    return [sys.executable, "-m", "baton_fast.cli", "gpu-check", "--part", name, "--shard", shard,
            "--out", str(args.out), "--seed", str(args.seed), "--deadline-in-s", str(budget_s)]


def _run_part(name: str, budget_s: float, args, doc: dict, results_path: Path, where: str) -> None:
    """Run a part as ``SHARDS[name]`` child processes (same interpreter, working directory and environment,
    so the same imports: a source checkout too), merging their part files into ``doc`` and ``results_path``."""
    out_dir, shards = Path(args.out), SHARDS.get(name, 1)
    files = [_part_file(out_dir, name, i) for i in range(shards)]
    for f in files:
        f.unlink(missing_ok=True)
    procs = [subprocess.Popen(_child_command(name, f"{i}/{shards}", budget_s, args)) for i in range(shards)]
    stop_at, base, stopped = time.monotonic() + budget_s + GRACE_S, list(doc["records"]), False
    while True:
        running = [p for p in procs if p.poll() is None]
        if running and time.monotonic() > stop_at:
            for p in running:
                p.kill()
                p.wait()
            running, stopped = [], True
        entry, records, failures = merge_shards(name, budget_s, [_read(f) for f in files],
                                                [None if p in running else p.returncode for p in procs])
        doc["parts"][name], doc["records"] = entry, base + records
        if not running:
            break
        write_document(doc, results_path)
        time.sleep(POLL_S)
    if entry["status"] == "running":  # a shard ended (or was stopped) before it finished its items
        entry["status"] = "partial"
        failures.append("stopped: still running past its deadline" if stopped else "a shard ended before its items")
    if failures:
        entry["failure"] = "; ".join(failures)
        doc["records"].append(record(PART_SECTIONS[name], name, "", "failed", None, "", device=where,
                                     reason=f"part {name}: {entry['failure']}"))
    write_document(doc, results_path)
    for f in files:  # merged into results.json
        f.unlink(missing_ok=True)


def _failed(r: dict) -> bool:
    """A failed item, a failed numerics or graph check, or a baton-fast backend that failed its error check
    or could not run (other backends' errors and skips are reported, not held against baton-fast)."""
    ours = r["backend"].startswith("baton-fast")
    return (r["metric"] == "failed" or r["extra"].get("ok") is False
            or (ours and (r["extra"].get("check_ok") is False or r["metric"] == "skipped")))


def exit_status(doc: dict) -> int:
    """1 when a record failed (:func:`_failed`) or a part did not finish, else 0."""
    failed = any(_failed(r) for r in doc["records"])
    return 1 if failed or any(p["status"] != "done" for p in doc["parts"].values()) else 0


def run(args) -> int:
    if args.part:
        return _run_shard(args)
    if args.sp_degree is not None:
        from .sequence_parallel import run as run_sequence_parallel
        return run_sequence_parallel(args)
    parts, out_dir = parse_parts(args.parts), Path(args.out)
    budgets = part_budgets(parts, args.budget_s)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out: expected a directory, got the file {out_dir}")
    problem = environment_problem()
    if problem:
        print(f"baton-fast gpu-check: error: {problem}", file=sys.stderr)
        return 2
    from baton_fast.bench import report
    from baton_fast.bench.machine import machine_info

    start = time.perf_counter()
    where = f"cuda:{torch.cuda.get_device_name()}"
    doc = new_document(gpu_description(0), machine_info(), budgets)
    results_path = out_dir / "results.json"
    write_document(doc, results_path)
    for name in parts:
        print(f"gpu-check: {name} (budget {budgets[name]:g} s) on {doc['gpu']['name']}", file=sys.stderr, flush=True)
        _run_part(name, budgets[name], args, doc, results_path, where)
        doc["wall_s"] = round(time.perf_counter() - start, 1)
        write_document(doc, results_path)
    validate_document(doc)
    (out_dir / "report.md").write_text(report.render_markdown([doc], command=f"python -m baton_fast.bench.report "
                                                                             f"{results_path}"))
    print(report.render_summary([doc]))
    print(report.render_gpu_check([doc]))
    print(f"wrote {results_path} and {out_dir / 'report.md'} ({doc['wall_s']} s)")
    return exit_status(doc)
