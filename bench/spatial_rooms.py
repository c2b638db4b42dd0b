"""The SpA2V planner on physically simulated rooms: accuracy per category and condition.

    OPENBLAS_NUM_THREADS=1 python -m baton_fast.bench.spatial_rooms [--per-category 12] [--conditions all]
        [--json out.json]

(one BLAS thread: the planner's matrix products are small, and an idle-spinning thread pool on a loaded
machine is counted as CPU time.)

Every scene is simulated at run time from its seed (:mod:`baton_fast.spatial.scenes`: pyroomacoustics
image sources + a statistical late tail, a 0.2 m pair), planned with ``spatial_cues`` + ``CuePlanner``
and scored; the table (markdown) goes to stdout, progress to stderr. Needs ``pyroomacoustics`` (the
``test`` extra).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
from tqdm import tqdm

from baton_fast.spatial.cues import spatial_cues
from baton_fast.spatial.planner import CuePlanner
from baton_fast.spatial.scenes import CATEGORIES, CONDITIONS, MIC_SPACING, SAMPLE_RATE, scene, score


def evaluate(category: str, condition: str, number: int, planner: CuePlanner) -> dict:
    """Simulate scene ``number`` of ``category`` under ``condition``, plan it and score the plan."""
    stereo, truth = scene(category, condition, number)
    start, cpu_start = time.perf_counter(), time.process_time()
    cues = spatial_cues(stereo, SAMPLE_RATE, mic_spacing=MIC_SPACING)
    vsl = planner.plan(cues)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tracks = planner.tracks(cues)
    return {"category": category, "condition": condition, "number": number, "kinds": list(truth.kinds),
            "truth": list(truth.motions), "found": [t.motion for t in tracks], "plan_s": seconds,
            "plan_cpu_s": cpu_seconds,
            **score(category, truth, [t.motion for t in tracks], vsl)}


def table(results: list[dict], conditions: list[str]) -> str:
    """Markdown: one row per category, one column per condition, ``right / total (percent)``."""
    lines = ["| category | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    rows = [(category, "right") for category in CATEGORIES] + [("source count, all categories", "count")]
    for name, key in rows:
        cells = []
        for condition in conditions:
            picked = [r[key] for r in results if r["condition"] == condition
                      and (key == "count" or r["category"] == name)]
            cells.append(f"{sum(picked)}/{len(picked)} ({100 * np.mean(picked):.0f} %)" if picked else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baton_fast.bench.spatial_rooms",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--per-category", type=int, default=12, help="scenes per category and condition (default 12)")
    parser.add_argument("--conditions", default="all",
                        help=f"comma-separated subset of {list(CONDITIONS)} (default all)")
    parser.add_argument("--first", type=int, default=0,
                        help="number of the first scene per category and condition (default 0; the planner's "
                             "thresholds were chosen on scenes 0-11, so --first 12 gives held-out scenes)")
    parser.add_argument("--json", help="also write every scene's result to this file")
    args = parser.parse_args(argv)
    conditions = list(CONDITIONS) if args.conditions == "all" else [c.strip() for c in args.conditions.split(",")]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or args.per_category < 1 or args.first < 0:
        print(f"--conditions: unknown {unknown}, expected some of {list(CONDITIONS)}" if unknown
              else f"--per-category / --first: expected a positive / non-negative integer, got "
              f"{args.per_category} / {args.first}", file=sys.stderr)
        return 2
    planner = CuePlanner()
    numbers = range(args.first, args.first + args.per_category)
    jobs = [(c, k, n) for k in conditions for c in CATEGORIES for n in numbers]
    results = [evaluate(c, k, n, planner) for c, k, n in tqdm(jobs, desc="scenes", file=sys.stderr)]
    wall_ms, cpu_ms = (1e3 * np.median([r[key] for r in results]) for key in ("plan_s", "plan_cpu_s"))
    print(table(results, conditions))
    print(f"\n{len(results)} scenes, numbers {args.first}-{args.first + args.per_category - 1} per category and "
          f"condition; cues + plan per 4 s clip, "
          f"median: {cpu_ms:.1f} ms CPU time, {wall_ms:.1f} ms wall clock, measured on {platform.node()} "
          f"({platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
