"""Block-sparse video self-attention measured on this CPU: the visited blocks only against dense SDPA.

Records for the benchmark runner (``section="sparse"``, ``kind="measured"``, ``device="cpu"``): at a video grid in
tile-major order (quick: 4 x 32 x 32 = 4096 tokens; full: 8 x 32 x 32 = 8192) with a sliding-tile
:class:`~baton_fast.BlockMask` of about 25 % block density, 4 heads of 64, fp32, one thread: the median process CPU time and wall time of

- ``dense SDPA``: ``torch.nn.functional.scaled_dot_product_attention`` over every key (the baseline);
- ``block-sparse (visited blocks)``: :func:`baton_fast.block_sparse.block_sparse_attention`, the CPU path of
  ``rope_attention(..., block_mask=...)``;

in one run, one after the other, and the ratios.  The sparse output is checked against SDPA under the same token
mask (max abs difference in ``extra``).  Other work on this shared machine shows up in both timings alike.

    python -m baton_fast.bench.sparse_bench          # quick run, printed
"""
from __future__ import annotations

import statistics
import time

import torch

from baton_fast.block_mask import BlockMask
from baton_fast.block_sparse import block_sparse_attention

__all__ = ["run", "SETTINGS", "HEADS", "HEAD_DIM"]

SECTION = "sparse"
HEADS, HEAD_DIM = 4, 64
# quick / full: (grid (T, H, W), tile (t, h, w), window in tiles, (block_q, block_k), repeats).  Query blocks of
# 256 tokens (one tile each): SDPA on CPU runs 128-row query blocks at about 2/3 of its long-sequence rate.
SETTINGS = {True: ((4, 32, 32), (1, 16, 16), (5, 1, 1), (256, 128), 3),
            False: ((8, 32, 32), (2, 8, 16), (3, 5, 1), (256, 128), 5)}


def _median_ms(fn, repeats: int) -> dict:
    """Median process CPU time and wall time of ``fn()`` in ms after one warm-up (CPU time is the steadier
    figure on a shared machine)."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - start_cpu) * 1e3)
        wall.append((time.perf_counter() - start_wall) * 1e3)
    return {"cpu time": statistics.median(cpu), "wall time": statistics.median(wall)}


def run(quick: bool = True) -> list:
    """The measured records (see the module docstring)."""
    grid, tile, window, block, repeats = SETTINGS[quick]
    tokens = grid[0] * grid[1] * grid[2]
    mask = BlockMask.sliding_tile(grid, tile, window, *block)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, tokens, HEADS, HEAD_DIM, generator=g) for _ in range(3))
    heads_first = [x.transpose(1, 2) for x in (q, k, v)]

    sparse_out = block_sparse_attention(q, k, v, mask)
    masked = torch.nn.functional.scaled_dot_product_attention(*heads_first, attn_mask=mask.to_dense()[0]).transpose(1, 2)
    error = float((sparse_out - masked).abs().max())

    times = {"dense SDPA": _median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(*heads_first), repeats),
             "block-sparse (visited blocks)": _median_ms(lambda: block_sparse_attention(q, k, v, mask), repeats)}
    shape = dict(B=1, Nq=tokens, Nk=tokens, H=HEADS, Hk=HEADS, D=HEAD_DIM)
    extra = dict(grid=grid, tile=tile, window=window, block=block, block_density=round(mask.block_density(), 4),
                 threads=torch.get_num_threads(), repeats=repeats)

    def record(backend, metric, value, unit, **more):
        return dict(section=SECTION, case=f"video self-attn {grid[0]}x{grid[1]}x{grid[2]} sliding tile", backend=backend,
                    device="cpu", kind="measured", metric=metric, value=value, unit=unit, shape=shape,
                    dtype="float32", extra=dict(extra, **more))

    records = [record(name, metric, ms, "ms") for name, by_metric in times.items() for metric, ms in by_metric.items()]
    for metric in ("cpu time", "wall time"):
        ratio = times["dense SDPA"][metric] / times["block-sparse (visited blocks)"][metric]
        records.append(record("dense / block-sparse", f"speedup ({metric})", ratio, "x",
                              max_abs_diff_vs_masked_sdpa=error))
    return records


if __name__ == "__main__":
    torch.set_num_threads(1)
    for r in run(quick=True):
        print(f"{r['backend']:32s} {r['metric']:20s} {r['value']:10.3f} {r['unit']}  density {r['extra']['block_density']}")
