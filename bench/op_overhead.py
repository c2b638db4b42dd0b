"""Host time per op call: what the Python side of each op costs, with the launchers stubbed.

The Triton backend is selected and its launchers replaced by allocations of the outputs, so what is
timed is the work a GPU call does on the host before its launch is queued (argument checks, value
read-backs, placeholder tables, dispatch), at the tiny DiT's shapes.  CPU time of this thread
(``time.thread_time``), the best of several runs: on a shared machine the minimum is the cost, the rest
is waiting.  Each case runs as a direct call (values checked, the default) and as a prepared-run call
(``check_values=False``).

    python -m baton_fast.bench.op_overhead [--runs 9] [--calls 300]
"""
from __future__ import annotations

import argparse
import os
import time
from unittest import mock

import torch

__all__ = ["cases", "measure"]


def cases():
    """``{name: call(**kwargs)}``: the op calls of one tiny-DiT block (B=2, 32 tokens, 2 heads of 32)."""
    import baton_fast as bf

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 32, 2, 32, generator=g) for _ in range(3))
    text_k, text_v = (torch.randn(2, 5, 2, 32, generator=g) for _ in range(2))
    coords, plan_coords = bf.video_grid_coords(2, 4, 4)[None], torch.rand(1, 32, 3, generator=g) * 4
    table, temporal = bf.RopeTable.wan(32), bf.RopeTable.ovi_temporal(32)
    lens, weight = torch.tensor([5, 3], dtype=torch.int32), torch.rand(2 * 32, generator=g)
    return {
        "qk_rmsnorm_rope (self-attention pre-pass)":
            lambda **kw: bf.qk_rmsnorm_rope(q, k, coords, coords, table, q_weight=weight, k_weight=weight, **kw),
        "rope_attention, pre-rotated (self-attention)":
            lambda **kw: bf.rope_attention(q, k, v, rotate_q=False, rotate_k=False, **kw),
        "rope_attention, text key lengths":
            lambda **kw: bf.rope_attention(q, text_k, text_v, rotate_q=False, rotate_k=False, k_lens=lens, **kw),
        "rope_attention, both sides rotated (cross-modal)":
            lambda **kw: bf.rope_attention(q, k, v, coords, coords, temporal, k_table=temporal, **kw),
        "rope_attention, Q rotated (plan)":
            lambda **kw: bf.rope_attention(q, k, v, coords, plan_coords, table, rotate_k=False, **kw),
        "apply_rope": lambda **kw: bf.apply_rope(q, coords, table, **kw),
    }


def _stubbed_launchers():
    from baton_fast.kernels import rope_attention, rope_norm

    def attention(q, k, v, *args, return_lse, **kwargs):
        return torch.empty_like(q), (q.new_empty((q.shape[0], q.shape[2], q.shape[1])) if return_lse else None)

    return (mock.patch.dict(os.environ, {"BATON_FAST_BACKEND": "triton"}),
            mock.patch.object(rope_attention, "rope_attention_fwd", attention),
            mock.patch.object(rope_norm, "rmsnorm_rope_fwd", lambda x, *args, **kwargs: torch.empty_like(x)))


def measure(runs: int = 9, calls: int = 300) -> dict:
    """``{case: {"checked": µs, "check_values=False": µs}}``, host CPU time per call (best of ``runs``)."""
    from tqdm.auto import tqdm

    patches = _stubbed_launchers()
    for patch in patches:
        patch.start()
    try:
        results = {}
        with torch.no_grad():
            for name, call in tqdm(cases().items(), desc="op overhead", leave=False):
                results[name] = {}
                for label, kwargs in (("checked", {}), ("check_values=False", {"check_values": False})):
                    for _ in range(calls):  # warm-up
                        call(**kwargs)
                    best = float("inf")
                    for _ in range(runs):
                        start = time.thread_time()
                        for _ in range(calls):
                            call(**kwargs)
                        best = min(best, (time.thread_time() - start) / calls)
                    results[name][label] = best * 1e6
        return results
    finally:
        for patch in reversed(patches):
            patch.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per case; the best is kept (default 9)")
    parser.add_argument("--calls", type=int, default=300, help="calls per run (default 300)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.calls < 1:
        parser.error("--runs, --calls: expected positive integers")
    torch.set_num_threads(1)
    for name, times in measure(args.runs, args.calls).items():
        print(f"{name}: " + ", ".join(f"{label} {us:.0f} us" for label, us in times.items()))


if __name__ == "__main__":
    main()
