"""Sliding-tile sparsity of the video self-attention for one sampling run (``generate --sparse-window t,h,w``).

:class:`VideoSparsity` holds what :meth:`DualBranchDiT.prepare` builds once per run: the permutation of the
video tokens into tile-major order (:func:`baton_fast.tile_order`; the DiT moves its tokens and their
coordinates there once per forward, so every attention sees the same positions) and the
:class:`~baton_fast.BlockMask` of the window.  The sampler runs the first ``dense_steps`` steps dense, as STA
does, and the rest with the mask on the video self-attention of every block (the other attentions stay dense).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from baton_fast.block_mask import BlockMask, tile_order
from baton_fast.block_sparse import visit_plan

__all__ = ["SPARSE_TILE", "SPARSE_BLOCK", "VideoSparsity", "parse_window", "block_visits"]

SPARSE_TILE = (2, 4, 4)     # latent tokens per tile (t, h, w): 32, one mask block
SPARSE_BLOCK = (32, 32)     # (block_q, block_k) of the mask


def block_visits(mask: BlockMask, evaluations: int, layers: int) -> dict:
    """Key blocks ``mask`` visits per attention and in a run of ``evaluations`` DiT evaluations of ``layers`` blocks
    that use it, beside the dense count (the report entry of a block-sparse attention)."""
    Bm, Hm, Mq = mask.shape
    per_call = mask.visited_blocks()
    dense = Bm * Hm * Mq * mask.num_k_blocks
    return {"blocks": [mask.block_q, mask.block_k], "key_blocks_visited_per_attention": per_call,
            "key_blocks_dense_per_attention": dense, "block_density": round(per_call / dense, 4),
            "key_blocks_visited_in_run": per_call * evaluations * layers,
            "key_blocks_dense_in_run": dense * evaluations * layers}


def parse_window(text: str) -> tuple:
    """``"t,h,w"`` -> three odd integers >= 1 (the window in tiles); ValueError otherwise."""
    try:
        window = tuple(int(x) for x in text.split(","))
    except ValueError:
        window = ()
    if len(window) != 3 or any(w < 1 or w % 2 == 0 for w in window):
        raise ValueError(f"expected three odd integers >= 1 as t,h,w (the window in tiles of "
                         f"{'x'.join(map(str, SPARSE_TILE))} tokens), got {text!r}")
    return window


@dataclass(frozen=True)
class VideoSparsity:
    """The sliding-tile window of one run.

    Attributes:
        window: ``(wt, wh, ww)`` odd, in tiles of :data:`SPARSE_TILE` tokens.
        to_tiles, to_raster: int64 ``[Nv]`` permutations between raster and tile-major token order.
        mask: the :class:`~baton_fast.BlockMask` of the window over the tile-major tokens.
    """

    window: tuple
    to_tiles: torch.Tensor
    to_raster: torch.Tensor
    mask: BlockMask

    @classmethod
    def build(cls, grid, window, device) -> VideoSparsity:
        to_tiles, to_raster = tile_order(grid, SPARSE_TILE, device)
        mask = BlockMask.sliding_tile(grid, SPARSE_TILE, window, *SPARSE_BLOCK, device=device)
        visit_plan(mask)  # the CPU path's grouping, read now rather than in a step
        return cls(tuple(window), to_tiles, to_raster, mask)

    def report(self, sparse_evaluations: int, layers: int) -> dict:
        """The report entry: window, tile, blocks and the key blocks visited per sparse self-attention and in
        the whole run (``sparse_evaluations`` DiT evaluations of ``layers`` blocks), beside dense."""
        return {"window_tiles": list(self.window), "tile_tokens": list(SPARSE_TILE),
                "sparse_evaluations": sparse_evaluations, **block_visits(self.mask, sparse_evaluations, layers)}
