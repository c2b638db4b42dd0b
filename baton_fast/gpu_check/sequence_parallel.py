"""``baton-fast gpu-check --sp-degree N``: sequence-parallel attention on N GPUs of this machine, against one.

    python3 -m baton_fast.cli gpu-check --sp-degree 4 [--out DIR] [--seed 0] [--budget-s 410]

N ranks, one process per GPU (NCCL, :func:`~baton_fast.distributed.launch.run_local_group`: forked from a
server that imported torch once, every collective under a timeout, the whole run bounded by
``--budget-s``), run the video self-attention of the Ovi 720p 5 s preset (:data:`GRID` = 15,004 tokens,
24 heads of 128, Wan RoPE, bf16), each rank on its contiguous shard, for every scheme the heads allow:
Ulysses (N divides the heads), ring, and the hybrid of :func:`~baton_fast.distributed.mesh_degrees` when
it is neither.

- **Check** (every rank): its output shard against the same shard of one-GPU ``rope_attention`` of the
  whole sequence (on its own GPU), as a relative difference, and the first :data:`CHECK_ROWS` queries of
  its shard against a float64 reference: the sharded error must be within the DESIGN §5 budget of the
  one-GPU error (:func:`baton_fast.numerics.check`).  Gradients dq, dk, dv of a seeded loss against
  one-GPU autograd: within the budget set by the one-GPU bf16 gradients' error against one-GPU fp32.
- **Time**: forward, and forward + backward, the median of :data:`REPEATS` after a warm-up, every call
  from a barrier, the slowest rank's time; beside the one-GPU time of the whole sequence and its speedup.

Writes ``DIR/sp_results.json`` (the bench record format, section :data:`SECTION`, device
``cuda:<GPU name> x N``) and prints one line per record.  Exit status: 0 when every check passed, 1
otherwise (or when the ranks failed or ran past the budget: a ``failed`` record says why), 2 (one line)
when there are fewer than N CUDA devices, no NCCL, or ``--sp-degree`` is not an integer >= 2.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from .results import gpu_description, new_document, record, write_document

__all__ = ["environment_problem", "run", "SECTION", "GRID", "HEADS", "HEAD_DIM", "CHECK_ROWS", "REPEATS"]

SECTION = "sequence_parallel_gpu"
GRID, HEADS, HEAD_DIM = (31, 22, 22), 24, 128  # Ovi 720p 5 s: the video self-attention of one DiT block
CHECK_ROWS = 64
REPEATS = 10
COLLECTIVE_TIMEOUT_S = 120.0


def environment_problem(degree) -> str | None:
    """Why ``--sp-degree degree`` cannot run here (one line), or None."""
    from .command import environment_problem as single_gpu_problem

    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 2:
        return f"--sp-degree: expected an integer >= 2 (GPUs, one rank each), got {degree!r}"
    problem = single_gpu_problem()
    if problem:
        return problem
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_nccl_available():
        return f"--sp-degree {degree}: this torch build has no NCCL backend (torch {torch.__version__})"
    count = torch.cuda.device_count()
    if count < degree:
        return f"--sp-degree {degree}: this machine has {count} CUDA device(s); the check needs one per rank"
    return None


# --------------------------------------------------------------------------- on every rank
def _inputs(seed: int, grid, device):
    """The whole sequence's q, k, v (bf16 ``[1, N, H, D]``), coordinates, table and a seeded output gradient,
    the same on every rank."""
    import baton_fast
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    q, k, v, d_out = (torch.randn(1, n, HEADS, HEAD_DIM, generator=g).to(device, torch.bfloat16) for _ in range(4))
    coords = baton_fast.video_grid_coords(*grid, device=device)[None]
    return q, k, v, coords, baton_fast.RopeTable.wan(HEAD_DIM).to(device), d_out


def _timed_ms(fn, group, device, repeats: int) -> float:
    """Median ms of ``fn()`` over ``repeats`` calls after a warm-up, each from a barrier, the slowest rank's."""
    import torch.distributed as dist

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    fn()
    times = []
    for _ in range(repeats):
        if group is not None:
            dist.barrier(group)
        sync()
        start = time.perf_counter()
        fn()
        sync()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
        if group is not None:
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
        times.append(float(elapsed) * 1e3)
    return statistics.median(times)


def _grads(fn, q, k, v, d_out, dtype):
    leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    (fn(*leaves).float() * d_out.float()).sum().backward()
    return [x.grad for x in leaves]


def _rank_main(degree: int, seed: int, grid=GRID, repeats: int = REPEATS) -> dict:
    """One rank: every scheme's checks (this rank's) and timings (the slowest rank's), and the one-GPU time.
    (Under gloo it runs on the CPU: the tests run it so, at a tiny ``grid``, timing one call.)"""
    import torch.distributed as dist

    import baton_fast
    from baton_fast import reference
    from baton_fast.distributed import SequenceMesh, agree_shards, hybrid_attention, init_sequence_mesh, mesh_degrees
    from baton_fast.distributed.agreement import collective_device
    from baton_fast.distributed.mesh import shard_range
    from baton_fast.numerics import budget, check, max_error

    rank, device = dist.get_rank(), collective_device(None)
    q, k, v, coords, table, d_out = _inputs(seed, grid, device)
    def one_gpu(q_, k_, v_):  # the whole sequence on this rank's GPU
        return baton_fast.rope_attention(q_, k_, v_, coords, coords, table)

    single = one_gpu(q, k, v)
    start, stop = shard_range(q.shape[1], degree, rank)
    rows = slice(start, min(stop, start + CHECK_ROWS))
    ref64 = reference.rope_attention(q[:, rows].double(), k.double(), v.double(), coords[:, rows], coords, table)
    plain = reference.rope_attention(q[:, rows], k, v, coords[:, rows], coords, table)
    single_grads, fp32_grads = (_grads(one_gpu, q, k, v, d_out, dtype) for dtype in (torch.bfloat16, torch.float32))
    ring, ulysses = mesh_degrees(degree, HEADS)
    meshes = {"ring": SequenceMesh.ring_only()}
    if HEADS % degree == 0:
        meshes["ulysses"] = SequenceMesh.ulysses_only()
    elif ulysses > 1:
        meshes[f"hybrid {ring}x{ulysses}"] = init_sequence_mesh(ring, ulysses)
    shard = [x[:, start:stop] for x in (q, k, v, coords)]
    plan = agree_shards(*shard, shard[3], table)
    out = {"single_ms": _timed_ms(lambda: one_gpu(q, k, v), None, device, repeats) if rank == 0 else None,
           "repeats": repeats, "schemes": {}}
    dist.barrier()
    for name, mesh in meshes.items():
        def call(q_, k_, v_, mesh=mesh):
            return hybrid_attention(q_, k_, v_, shard[3], shard[3], table, mesh=mesh, shards=plan)

        got = call(*shard[:3])
        forward = check(got[:, :rows.stop - start], plain, ref64, torch.bfloat16)
        grads = _grads(call, *shard[:3], d_out[:, start:stop], torch.bfloat16)
        grad_ok = {}
        for g_name, got_g, single_g, fp32_g in zip(("dq", "dk", "dv"), grads, single_grads, fp32_grads):
            single_g, fp32_g = single_g[:, start:stop], fp32_g[:, start:stop]
            base = max_error(single_g, fp32_g)
            grad_ok[g_name] = max_error(got_g, fp32_g) <= budget(base, fp32_g, torch.bfloat16)
        scale = float(single[:, start:stop].float().abs().max())
        result = dict(rel_vs_single=max_error(got, single[:, start:stop]) / max(scale, 1e-30),
                      error=forward.error, budget=forward.budget, ok=forward.ok, grad_ok=grad_ok)
        leaves = [x.detach().requires_grad_() for x in shard[:3]]
        result["forward_ms"] = _timed_ms(lambda: call(*shard[:3]), dist.group.WORLD, device, repeats)
        result["forward_backward_ms"] = _timed_ms(
            lambda: (call(*leaves).float() * d_out[:, start:stop].float()).sum().backward(), dist.group.WORLD, device,
            repeats)
        out["schemes"][name] = result
    return out


# --------------------------------------------------------------------------- parent
def _records(per_rank: list, degree: int, where: str) -> list:
    """Records of the ranks' results: per scheme the check (every rank's worst) and the two timings."""
    shape = dict(B=1, Nq=GRID[0] * GRID[1] * GRID[2], Nk=GRID[0] * GRID[1] * GRID[2], H=HEADS, Hk=HEADS, D=HEAD_DIM)
    case = f"video self-attention, Ovi 720p 5 s ({'x'.join(map(str, GRID))} tokens), {degree} GPUs"
    single_ms = per_rank[0]["single_ms"]
    records = [record(SECTION, case, "rope_attention, 1 GPU", "time", single_ms, "ms", device=where, shape=shape,
                      dtype="bfloat16", timer=f"median of {per_rank[0]['repeats']} after a warm-up")]
    for name, first in per_rank[0]["schemes"].items():
        ranks = [r["schemes"][name] for r in per_rank]
        ok = all(r["ok"] for r in ranks) and all(all(r["grad_ok"].values()) for r in ranks)
        backend = f"{name} attention, {degree} ranks (NCCL)"
        records.append(record(SECTION, case, backend, "max rel diff vs 1 GPU", max(r["rel_vs_single"] for r in ranks),
                              "", device=where, shape=shape, dtype="bfloat16", ok=ok,
                              error_vs_float64=max(r["error"] for r in ranks), budget=min(r["budget"] for r in ranks),
                              gradients_ok={g: all(r["grad_ok"][g] for r in ranks) for g in ("dq", "dk", "dv")}))
        timer = f"median of {per_rank[0]['repeats']} after a warm-up, slowest rank"
        records += [record(SECTION, case, backend, "forward time", first["forward_ms"], "ms", device=where, shape=shape,
                           dtype="bfloat16", timer=timer, speedup_vs_1_gpu=single_ms / first["forward_ms"]),
                    record(SECTION, case, backend, "forward+backward time", first["forward_backward_ms"], "ms",
                           device=where, shape=shape, dtype="bfloat16", timer=timer)]
    return records


def run(args) -> int:
    """The ``--sp-degree`` mode of ``gpu-check`` (see the module docstring)."""
    problem = environment_problem(args.sp_degree)
    if problem:
        print(f"baton-fast gpu-check: error: {problem}", file=sys.stderr)
        return 2
    from baton_fast.bench.machine import machine_info
    from baton_fast.distributed.launch import run_local_group

    degree, start = args.sp_degree, time.perf_counter()
    where = f"cuda:{torch.cuda.get_device_name()} x {degree}"
    doc = new_document(gpu_description(0), machine_info(), {})
    doc["sections"] = [SECTION]
    path = Path(args.out) / "sp_results.json"
    print(f"gpu-check: sequence-parallel attention on {degree} GPUs (budget {args.budget_s:g} s)", file=sys.stderr,
          flush=True)
    try:
        per_rank = run_local_group(_rank_main, degree, degree, args.seed, timeout_s=args.budget_s,
                                   collective_timeout_s=COLLECTIVE_TIMEOUT_S, backend="nccl")
        doc["records"] = _records(per_rank, degree, where)
    except RuntimeError as exc:  # a rank failed, or the run passed its budget
        doc["records"] = [record(SECTION, "sequence-parallel attention", f"{degree} ranks (NCCL)", "failed", None, "",
                                 device=where, reason=str(exc)[-2000:])]
    doc["wall_s"] = round(time.perf_counter() - start, 1)
    write_document(doc, path)
    for r in doc["records"]:
        value = "" if r["value"] is None else f"{r['value']:.4g} {r['unit']}".strip()
        flags = {k: r["extra"][k] for k in ("ok", "speedup_vs_1_gpu", "reason") if k in r["extra"]}
        print(f"{r['backend']} | {r['metric']}: {value} {flags if flags else ''}".rstrip())
    print(f"wrote {path} ({doc['wall_s']} s)")
    failed = any(r["metric"] == "failed" or r["extra"].get("ok") is False for r in doc["records"])
    return 1 if failed else 0
