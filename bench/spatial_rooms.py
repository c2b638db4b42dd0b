"""The SpA2V planner on physically simulated rooms: accuracy per category and condition.

    OPENBLAS_NUM_THREADS=1 python -m baton_fast.bench.spatial_rooms [--per-category 12] [--first 0]
        [--conditions all] [--categories all] [--diagnose] [--json out.json]

(one BLAS thread: the planner's matrix products are small, and an idle-spinning thread pool on a loaded
machine is counted as CPU time.)

Every scene is simulated at run time from its seed (:mod:`baton_fast.spatial.scenes`: pyroomacoustics
image sources + a statistical late tail, a 0.2 m pair), planned with ``spatial_cues`` + ``CuePlanner``
and scored; the table (markdown) goes to stdout, progress to stderr; ``--diagnose`` adds one line per
scene scored wrong (truth, and every source found: position start -> end, direct-level and DRR change,
motion). Needs ``pyroomacoustics`` (the
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
    sources = [{"x": [round(t.x_start, 2), round(t.x_end, 2)], "direct_level_change_db": round(t.level_change_db, 1),
                "drr_change_db": round(t.drr_change_db, 1), "motion": t.motion} for t in tracks]
    return {"category": category, "condition": condition, "number": number, "kinds": list(truth.kinds),
            "truth": list(truth.motions), "azimuths_deg": [round(a) for a, _ in truth.azimuths],
            "found": [t.motion for t in tracks], "sources": sources, "plan_s": seconds, "plan_cpu_s": cpu_seconds,
            **score(category, truth, [t.motion for t in tracks], vsl)}


def diagnosis(result: dict) -> str:
    """One line on a scene: what it holds and what the planner found (x 0 = left; azimuth > 0 = left)."""
    found = "; ".join(f"x {s['x'][0]:.2f}->{s['x'][1]:.2f} direct {s['direct_level_change_db']:+.1f} dB "
                      f"DRR {s['drr_change_db']:+.1f} dB {s['motion']}" for s in result["sources"])
    truth = ", ".join(f"{kind} at {azimuth:+d} deg {motion}" for kind, azimuth, motion in
                      zip(result["kinds"], result["azimuths_deg"], result["truth"]))
    return f"{result['condition']} | {result['category']} {result['number']}: {truth} | found {found or 'nothing'}"


def table(results: list[dict], conditions: list[str], categories: list[str]) -> str:
    """Markdown: one row per category, one column per condition, ``right / total (percent)``."""
    lines = ["| category | " + " | ".join(conditions) + " |", "|---" * (len(conditions) + 1) + "|"]
    rows = [(category, "right") for category in categories] + [("source count, all categories", "count")]
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
                        help="number of the first scene per category and condition (default 0; the planner was "
                             "tuned looking at scenes 0-23, and 24-35 in part, so --first 36 gives held-out "
                             "scenes)")
    parser.add_argument("--categories", default="all",
                        help=f"comma-separated subset of {list(CATEGORIES)} (default all)")
    parser.add_argument("--diagnose", action="store_true", help="also print one line per scene scored wrong")
    parser.add_argument("--json", help="also write every scene's result to this file")
    args = parser.parse_args(argv)
    conditions = list(CONDITIONS) if args.conditions == "all" else [c.strip() for c in args.conditions.split(",")]
    categories = list(CATEGORIES) if args.categories == "all" else [c.strip() for c in args.categories.split(",")]
    unknown = [c for c in conditions if c not in CONDITIONS]
    unknown_categories = [c for c in categories if c not in CATEGORIES]
    if unknown_categories:
        print(f"--categories: unknown {unknown_categories}, expected some of {list(CATEGORIES)}", file=sys.stderr)
        return 2
    if unknown or args.per_category < 1 or args.first < 0:
        print(f"--conditions: unknown {unknown}, expected some of {list(CONDITIONS)}" if unknown
              else f"--per-category / --first: expected a positive / non-negative integer, got "
              f"{args.per_category} / {args.first}", file=sys.stderr)
        return 2
    planner = CuePlanner()
    numbers = range(args.first, args.first + args.per_category)
    jobs = [(c, k, n) for k in conditions for c in categories for n in numbers]
    results = [evaluate(c, k, n, planner) for c, k, n in tqdm(jobs, desc="scenes", file=sys.stderr)]
    wall_ms, cpu_ms = (1e3 * np.median([r[key] for r in results]) for key in ("plan_s", "plan_cpu_s"))
    print(table(results, conditions, categories))
    if args.diagnose:
        print("\nScenes scored wrong:\n" + "\n".join(f"- {diagnosis(r)}" for r in results if not r["right"]))
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
