"""Sequence parallelism measured on this CPU: 2 gloo ranks against 1 process, at scaled-down shapes.

Records for the benchmark runner (``section="sequence_parallel"``, ``kind="measured"``, ``device="cpu"``):
time per call (median of several after a warm-up) of

- the video self-attention of a ``F x 16 x 16`` token grid (Wan table, 8 heads of 64, fp32):
  ``rope_attention`` in one process on 1 thread (full run: also on 2 threads), ``ulysses_attention`` and
  ``ring_attention`` on 2 ranks of 1 thread each;
- one forward of the tiny preset's DiT at 256x256 px (quick: 2 s, 1280 video tokens; full: 4 s, 2304), the
  video and plan tokens split, audio replicated: one process against 2 ranks of 1 thread.

Each figure carries its speedup over one process on one thread (the same work per core).

The ranks are started by ``torchrun`` (``torch.distributed.run``, 2 processes of 1 thread) and exit with
the run.  A distributed call's time is the slowest rank's (the ranks start together after a barrier).  The ranks
talk over gloo on 127.0.0.1 (a loopback TCP transport), so these figures say what the split costs and
saves on this machine's cores, not what NVLink would give: for that see the modelled ``sp_model`` section
(:func:`bench.cost_model.sp_records`).  Both cores of a 2-core machine are used, and other work on it
shows up in the figures.

    python -m baton_fast.bench.sp_bench          # quick run, printed
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

import baton_fast
from baton_fast.distributed import init_sequence_mesh, ring_attention, shard_range, ulysses_attention
from baton_fast.distributed.launch import free_port

__all__ = ["run", "ATTENTION_GRID", "HEADS", "HEAD_DIM"]

SECTION = "sequence_parallel"
ATTENTION_GRID = {True: (4, 16, 16), False: (8, 16, 16)}  # quick, full: 1024 and 2048 tokens
HEADS, HEAD_DIM = 8, 64
REPEATS = {True: 3, False: 7}
DIT_SECONDS = {True: 2.0, False: 4.0}
RANKS = 2


def _median_ms(fn, repeats: int, group=None) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up; with a group, each call is timed from a barrier
    and the slowest rank's time is kept."""
    fn()
    times = []
    for _ in range(repeats):
        if group is not None:
            dist.barrier()
        start = time.perf_counter()
        fn()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        if group is not None:
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed) * 1e3)
    return statistics.median(times)


def _attention_inputs(grid):
    torch.manual_seed(0)
    n = grid[0] * grid[1] * grid[2]
    q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM) for _ in range(3))
    return q, k, v, baton_fast.video_grid_coords(*grid)[None], baton_fast.RopeTable.wan(HEAD_DIM)


def _dit_inputs(seconds: float):
    """The tiny preset at 256x256 px (32x32 latents: 16x16 tokens per latent frame), random weights and inputs."""
    from baton_fast.model.config import get_preset
    from baton_fast.model.dit import DualBranchDiT
    from baton_fast.model.planner import PlannedTokens, rs_rope_coords

    tiny = get_preset("tiny")
    cfg = dataclasses.replace(tiny, name="tiny-256px", video_format=dataclasses.replace(tiny.video_format, height=256,
                                                                                         width=256))
    torch.manual_seed(0)
    dit = DualBranchDiT(cfg).eval()
    shape, pc = cfg.shape(seconds), cfg.planner
    plan = PlannedTokens(torch.randn(2, shape.keyframes * pc.grid ** 2, pc.video_feature_dim),
                         torch.randn(2, shape.chunks * pc.audio_tokens_per_chunk, pc.audio_feature_dim),
                         *rs_rope_coords(cfg, shape))
    text, lens = torch.randn(2, 8, cfg.text_dim), torch.tensor([8, 5], dtype=torch.int32)
    latents = (torch.randn(2, *shape.video_latent), torch.randn(2, shape.audio_latents, cfg.audio.latent_channels))
    return dit, shape, (text, lens, text, lens, plan), latents


def _single_process(quick: bool) -> dict:
    """Rank 0's one-process timings (the other rank waits) on 1 thread, and (full run) on 2 threads."""
    q, k, v, coords, table = _attention_inputs(ATTENTION_GRID[quick])
    dit, shape, run_inputs, (video, audio) = _dit_inputs(DIT_SECONDS[quick])
    t = torch.tensor([900.0, 250.0])
    out = {}
    with torch.inference_mode():
        ctx = dit.prepare(shape, *run_inputs)
        for threads in (1,) if quick else (1, 2):
            torch.set_num_threads(threads)
            out[("attention", threads)] = _median_ms(lambda: baton_fast.rope_attention(q, k, v, coords, coords, table),
                                                     REPEATS[quick])
            out[("dit", threads)] = _median_ms(lambda: dit(video, audio, t, ctx), REPEATS[quick])
    torch.set_num_threads(1)
    return out


def _ranks_main(quick: bool) -> dict:
    """Run on each of the 2 ranks: rank 0 first times the single process, then both time the distributed calls."""
    rank = dist.get_rank()
    single = _single_process(quick) if rank == 0 else {}
    dist.barrier()
    q, k, v, coords, table = _attention_inputs(ATTENTION_GRID[quick])
    start, stop = shard_range(q.shape[1], RANKS, rank)
    local = [x[:, start:stop] for x in (q, k, v, coords)]
    out = dict(single)
    repeats = REPEATS[quick]
    out["ulysses"] = _median_ms(lambda: ulysses_attention(local[0], local[1], local[2], local[3], local[3], table),
                                repeats, dist.group.WORLD)
    out["ring"] = _median_ms(lambda: ring_attention(local[0], local[1], local[2], local[3], local[3], table),
                             repeats, dist.group.WORLD)
    dit, shape, run_inputs, (video, audio) = _dit_inputs(DIT_SECONDS[quick])
    mesh = init_sequence_mesh(1, RANKS)
    t = torch.tensor([900.0, 250.0])
    with torch.inference_mode():
        ctx = dit.prepare(shape, *run_inputs, mesh=mesh)
        out["dit"] = _median_ms(lambda: dit(video, audio, t, ctx), repeats, dist.group.WORLD)
    out = {f"{k[0]}/{k[1]}" if isinstance(k, tuple) else k: v for k, v in out.items()}  # JSON keys
    out["shapes"] = {"attention_tokens": q.shape[1], "video_tokens": shape.video_tokens,
                     "plan_tokens": run_inputs[4].video.shape[1], "audio_tokens": shape.audio_latents}
    return out


def run(quick: bool = True) -> list:
    """Every measured record of this benchmark (2 ranks of 1 thread on this machine)."""
    timings = _torchrun(quick)
    shapes = timings.pop("shapes")
    attention_shape = dict(B=1, Nq=shapes["attention_tokens"], Nk=shapes["attention_tokens"], H=HEADS, Hk=HEADS,
                           D=HEAD_DIM)
    dit_shape = {k: v for k, v in shapes.items() if k != "attention_tokens"}
    cases = {"attention": (f"video self-attention {'x'.join(map(str, ATTENTION_GRID[quick]))} tokens",
                           attention_shape),
             "dit": (f"tiny DiT forward, 256x256 px, {DIT_SECONDS[quick]:g} s, CFG batch 2", dit_shape)}
    rows = [(kind, f"{name}, 1 process x {threads} thread{'s' * (threads > 1)}", timings[f"{kind}/{threads}"])
            for kind, name in (("attention", "rope_attention"), ("dit", "DiT")) for threads in (1, 2)
            if f"{kind}/{threads}" in timings]
    rows += [("attention", "ulysses_attention, 2 ranks x 1 thread (gloo)", timings["ulysses"]),
             ("attention", "ring_attention, 2 ranks x 1 thread (gloo)", timings["ring"]),
             ("dit", "DiT sharded (Ulysses), 2 ranks x 1 thread (gloo)", timings["dit"])]
    records = []
    for kind, backend, value in rows:
        case, shape = cases[kind]
        records.append(dict(section=SECTION, case=case, backend=backend, device="cpu", kind="measured", metric="time",
                            value=value, unit="ms", shape=shape, dtype="float32",
                            extra={"speedup_vs_1_process_1_thread": timings[f"{kind}/1"] / value,
                                   "repeats": REPEATS[quick],
                                   "timer": "median wall time after a warm-up; distributed: slowest rank"}))
    return records


def _torchrun(quick: bool) -> dict:
    """Rank 0's timings from a ``torchrun`` of :func:`_rank_entry` on :data:`RANKS` processes (bounded in time)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(RANKS),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "baton_fast.bench.sp_bench",
                   "--rank-results", out] + (["--full"] if not quick else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=600 if quick else 1800,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode:
            raise RuntimeError(f"torchrun exited with {done.returncode}: {done.stderr[-2000:]}")
        return json.loads(Path(out, "rank0.json").read_text())


def _rank_entry(out_dir: str, quick: bool) -> None:
    """One rank under torchrun: gloo with a timeout on every collective; rank 0 writes the timings."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    try:
        timings = _ranks_main(quick)
        if dist.get_rank() == 0:
            Path(out_dir, "rank0.json").write_text(json.dumps(timings))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank-results", help=argparse.SUPPRESS)  # set by _torchrun for its ranks
    parser.add_argument("--full", action="store_true", help="the full shapes and repeats")
    args = parser.parse_args()
    if args.rank_results:
        _rank_entry(args.rank_results, quick=not args.full)
        sys.exit(0)
    for r in run(quick=not args.full):
        print(f"{r['case']} | {r['backend']}: {r['value']:.1f} ms ({r['extra']['speedup_vs_1_process_1_thread']:.2f}x "
              f"vs 1 process x 1 thread)")
