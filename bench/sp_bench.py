"""Sequence parallelism measured on this CPU: 2 gloo ranks against 1 process, at scaled-down shapes.

Records for the benchmark runner (``section="sequence_parallel"``, ``kind="measured"``, ``device="cpu"``):
time per call (median of several rounds after a warm-up round, every case timed once per round) of

- the video self-attention of a ``F x 16 x 16`` token grid (Wan table, 8 heads of 64, fp32):
  ``rope_attention`` in one process on 1 thread (full run: also on 2 threads), ``ulysses_attention`` and
  ``ring_attention`` on 2 ranks of 1 thread each;
- one forward of the tiny preset's DiT at 256x256 px (quick: 2 s, 1280 video tokens; full: 4 s, 2304), the
  video and plan tokens split, audio replicated: one process against 2 ranks of 1 thread.

Each figure carries its speedup over one process on one thread (the same work per core), and the ratio
of CPU time (one process's against the busiest rank's): on a loaded machine the wall-time ratio says how
the ranks fared against the other jobs, the CPU-time ratio how the split divided the work.

The ranks are one local gloo group (:func:`~baton_fast.distributed.launch.run_local_group`: 2 processes of
1 thread forked from a server that imported torch and baton-fast once, every collective under a timeout,
the run under a wall-clock bound); rank 0 also times the single process, on the same model and inputs,
while the other rank waits.  A distributed call's time is the slowest rank's (the ranks start together
after a barrier).  The cases take turns in every round, so load that drifts during the run weighs on the
one-process and the 2-rank figures alike.  The ranks talk over gloo on 127.0.0.1 (a loopback TCP
transport), so these figures say what the split costs and saves on this machine's cores, not what NVLink
would give: for that see the modelled ``sp_model`` section (:func:`bench.cost_model.sp_records`).  Both
cores of a 2-core machine are used, and other work on it shows up in the figures.

    python -m baton_fast.bench.sp_bench          # quick run, printed
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.distributed as dist

import baton_fast
from baton_fast.distributed import init_sequence_mesh, ring_attention, shard_range, ulysses_attention
from baton_fast.distributed.launch import run_local_group

__all__ = ["run", "ATTENTION_GRID", "HEADS", "HEAD_DIM"]

SECTION = "sequence_parallel"
ATTENTION_GRID = {True: (4, 16, 16), False: (8, 16, 16)}  # quick, full: 1024 and 2048 tokens
HEADS, HEAD_DIM = 8, 64
REPEATS = {True: 3, False: 7}
DIT_SECONDS = {True: 2.0, False: 4.0}
RANKS = 2


def _interleaved_ms(cases: dict, repeats: int) -> dict:
    """``{name: (wall ms, CPU ms)}``: the medians of each case, the cases timed in turn in each of ``repeats``
    rounds (after one warm-up round), so that load drifting over the run weighs on every case alike.

    ``cases``: ``{name: (fn, distributed)}``.  Every call starts from a barrier; a distributed case runs on
    every rank and keeps the slowest rank's times, a single-process one runs on rank 0 while the others
    wait.  The CPU time is the process's (``time.process_time``: its threads, gloo's included), the work a
    call costs whatever else runs on the machine."""
    rank, times = dist.get_rank(), {name: [] for name in cases}
    for round_ in range(repeats + 1):
        for name, (fn, distributed) in cases.items():
            dist.barrier()
            start, start_cpu = time.perf_counter(), time.process_time()
            if distributed or rank == 0:
                fn()
            elapsed = torch.tensor([time.perf_counter() - start, time.process_time() - start_cpu], dtype=torch.float64)
            if distributed:
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            if round_:
                times[name].append((elapsed * 1e3).tolist())
    return {name: tuple(statistics.median(column) for column in zip(*t)) for name, t in times.items()}


def _on_threads(fn, threads: int):
    """``fn`` run with ``threads`` torch threads (back to 1 after)."""
    def call():
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(1)
    return call


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


def _ranks_main(quick: bool) -> dict:
    """Run on each of the 2 ranks: the single-process cases (rank 0) and the distributed ones, interleaved."""
    rank = dist.get_rank()
    q, k, v, coords, table = _attention_inputs(ATTENTION_GRID[quick])
    dit, shape, run_inputs, (video, audio) = _dit_inputs(DIT_SECONDS[quick])
    start, stop = shard_range(q.shape[1], RANKS, rank)
    local = [x[:, start:stop] for x in (q, k, v, coords)]
    t = torch.tensor([900.0, 250.0])
    with torch.inference_mode():
        single_ctx = dit.prepare(shape, *run_inputs) if rank == 0 else None
        sharded_ctx = dit.prepare(shape, *run_inputs, mesh=init_sequence_mesh(1, RANKS))
        cases = {}
        for threads in (1,) if quick else (1, 2):
            attention = _on_threads(lambda: baton_fast.rope_attention(q, k, v, coords, coords, table), threads)
            cases[f"attention/{threads}"] = (attention, False)
            cases[f"dit/{threads}"] = (_on_threads(lambda: dit(video, audio, t, single_ctx), threads), False)
        cases["ulysses"] = (lambda: ulysses_attention(local[0], local[1], local[2], local[3], local[3], table), True)
        cases["ring"] = (lambda: ring_attention(local[0], local[1], local[2], local[3], local[3], table), True)
        cases["dit"] = (lambda: dit(video, audio, t, sharded_ctx), True)
        out = _interleaved_ms(cases, REPEATS[quick])
    out["shapes"] = {"attention_tokens": q.shape[1], "video_tokens": shape.video_tokens,
                     "plan_tokens": run_inputs[4].video.shape[1], "audio_tokens": shape.audio_latents}
    return out


def run(quick: bool = True) -> list:
    """Every measured record of this benchmark (2 ranks of 1 thread on this machine)."""
    timings = run_local_group(_ranks_main, RANKS, quick, timeout_s=300 if quick else 1200,
                              collective_timeout_s=120, threads=1)[0]
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
    for kind, backend, (wall_ms, cpu_ms) in rows:
        case, shape = cases[kind]
        single_wall_ms, single_cpu_ms = timings[f"{kind}/1"]
        records.append(dict(section=SECTION, case=case, backend=backend, device="cpu", kind="measured", metric="time",
                            value=wall_ms, unit="ms", shape=shape, dtype="float32",
                            extra={"speedup_vs_1_process_1_thread": single_wall_ms / wall_ms,
                                   "cpu_ms": cpu_ms, "cpu_ratio_vs_1_process_1_thread": single_cpu_ms / cpu_ms,
                                   "repeats": REPEATS[quick],
                                   "timer": "median wall (and process CPU) time after a warm-up, cases interleaved "
                                            "per round; distributed: slowest rank"}))
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full shapes and repeats")
    args = parser.parse_args()
    for r in run(quick=not args.full):
        extra = r["extra"]
        print(f"{r['case']} | {r['backend']}: {r['value']:.1f} ms ({extra['speedup_vs_1_process_1_thread']:.2f}x "
              f"vs 1 process x 1 thread; CPU {extra['cpu_ms']:.1f} ms, "
              f"{extra['cpu_ratio_vs_1_process_1_thread']:.2f}x)")
