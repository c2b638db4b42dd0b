"""Run a function on a local process group (gloo on 127.0.0.1, or NCCL over this machine's GPUs): the tests,
the CPU benchmark and ``gpu-check --sp-degree``.

Under ``torchrun`` the ranks already exist; this is for a single machine without a launcher.  The ranks
fork from a server process that imported torch and baton-fast once (``forkserver`` with preloads), so
they do not each pay the imports.  Every collective has a timeout and the whole run a wall-clock bound:
a rank that fails or hangs ends the run with an error naming it, never a hang.
"""
from __future__ import annotations

import datetime
import multiprocessing
import queue
import socket
import time
import traceback
from typing import Callable

import torch
import torch.distributed as dist

__all__ = ["run_local_group", "free_port"]

PRELOAD = ["torch", "torch._dynamo", "baton_fast", "baton_fast.distributed", "baton_fast.model.dit"]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, rank, world, port, collective_timeout_s, threads, backend, results, args):
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":  # one GPU per rank
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=collective_timeout_s))
        results.put((rank, True, fn(*args)))
    except BaseException:  # reported to the parent, which raises
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local_group(fn: Callable, world: int, *args, timeout_s: float = 240.0, collective_timeout_s: float = 60.0,
                    threads: int = 1, backend: str = "gloo") -> list:
    """Call ``fn(*args)`` on ``world`` new processes, each a rank of one process group; return the ranks'
    return values (picklable) in rank order.

    ``fn`` must be importable by name (a module-level function).  ``threads``: torch threads per rank.
    ``backend``: ``"gloo"`` (CPU), or ``"nccl"`` with rank ``r`` on GPU ``r`` (``torch.cuda.set_device``).
    Raises ``RuntimeError`` with the rank's traceback if a rank raised, or naming the ranks still running
    after ``timeout_s`` (they are killed)."""
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world: expected a positive number of ranks, got {world!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo' or 'nccl', got {backend!r}")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    results = context.Queue()
    port = free_port()
    procs = [context.Process(target=_rank_main,
                             args=(fn, r, world, port, collective_timeout_s, threads, backend, results, args),
                             daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    deadline, values = time.monotonic() + timeout_s, {}
    try:
        while len(values) < world:
            try:
                rank, ok, value = results.get(timeout=0.5)
            except queue.Empty:
                # a rank that died before reporting (killed, or failed to start) is not waited for
                dead = [r for r, p in enumerate(procs) if r not in values and p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"ranks {dead} of {world} exited without a result (exit codes "
                                       f"{[procs[r].exitcode for r in dead]})") from None
                if time.monotonic() > deadline:
                    running = [r for r in range(world) if r not in values]
                    raise RuntimeError(f"ranks {running} of {world} did not finish within {timeout_s:g} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} of {world} failed:\n{value}")
            values[rank] = value
    finally:
        for p in procs:
            p.join(max(0.0, min(5.0, deadline - time.monotonic())))
            if p.is_alive():
                p.kill()
    return [values[r] for r in range(world)]
