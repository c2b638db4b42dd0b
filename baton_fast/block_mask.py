"""Block sparsity as data: which key blocks each query block visits (FlexAttention's ``BlockMask`` layout).

A :class:`BlockMask` cuts the queries into blocks of ``block_q`` tokens and the keys into blocks of
``block_k`` tokens and lists, for every ``[B or 1, H or 1, query block]``, the key blocks to visit, in two
sorted lists kept apart:

- *partial* blocks (``kv_num_blocks`` / ``kv_indices``): some pairs allowed, some not; the per-token mask of
  each is one ``[block_q, block_k]`` tile of ``partial_masks`` (``kv_mask_ids`` says which; identical tiles are
  stored once);
- *full* blocks (``full_kv_num_blocks`` / ``full_kv_indices``): every pair allowed and every key in range,
  so no per-token mask is needed.

A key block in neither list is never read.  The lists are built once per run (the builders below, on the
device of their inputs) and read by the fused kernel (``rope_attention(..., block_mask=...)``) and by the CPU
block-sparse path (:mod:`baton_fast.block_sparse`).

Builders: :meth:`BlockMask.from_dense` (any token mask), :meth:`BlockMask.from_groups` (SpA2V layout
bitmasks), :meth:`BlockMask.sliding_tile` (3-D sliding-tile attention over video tokens in tile-major order,
FastVideo STA's pattern; :func:`tile_order` gives that order) and :meth:`BlockMask.radial` (a temporal-decay
window, Radial Attention's pattern).  The token-level builders work from token *classes* (a tile, a distinct
group mask, a frame) and a class compatibility matrix, so no ``[Nq, Nk]`` mask is ever formed: at Wan-14B
720p (75,600 tokens) a dense mask would take 5.7 GB.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["BlockMask", "tile_order", "sliding_tile_block_counts", "DEFAULT_BLOCK"]

DEFAULT_BLOCK = (128, 64)  # (block_q, block_k): the kernels' main sm_90 / sm_80 tile


def _check_block(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two >= 16 (a kernel tile size), got {value!r}")
    return value


def _check_triple(name: str, value, minimum: int, odd: bool = False) -> tuple:
    ok = (isinstance(value, (tuple, list)) and len(value) == 3
          and all(isinstance(x, int) and not isinstance(x, bool) and x >= minimum for x in value))
    if ok and odd:
        ok = all(x % 2 == 1 for x in value)
    if not ok:
        kind = "odd integers" if odd else "integers"
        raise ValueError(f"{name}: expected three {kind} >= {minimum} (t, h, w), got {value!r}")
    return tuple(value)


def tile_order(grid: Sequence[int], tile: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The permutation between raster and tile-major order of a ``grid = (T, H, W)`` of tokens.

    Tile-major order lists the tiles of ``tile = (t, h, w)`` tokens in raster order of the tile grid
    (``ceil(T/t) x ceil(H/h) x ceil(W/w)`` tiles; those at the far border are smaller when a size does not
    divide), and the tokens of each tile in raster order.  Returns ``(to_tiles, to_raster)``, int64
    ``[T*H*W]`` each: ``x_tiles = x_raster[:, to_tiles]`` and ``x_raster = x_tiles[:, to_raster]``.  Move the
    coordinates with their tokens (``coords[:, to_tiles]``): RoPE then rotates every token as before.
    """
    grid = _check_triple("grid", grid, 1)
    tile = _check_triple("tile", tile, 1)
    tile_index = _tile_coords(grid, tile, device)
    tiles = [-(-g // t) for g, t in zip(grid, tile)]
    flat = (tile_index[:, 0] * tiles[1] + tile_index[:, 1]) * tiles[2] + tile_index[:, 2]
    to_tiles = torch.argsort(flat, stable=True)  # stable: raster order inside each tile
    return to_tiles, torch.argsort(to_tiles)


def _tile_coords(grid, tile, device) -> torch.Tensor:
    """int64 ``[T*H*W, 3]``: the tile coordinates of every token, in raster order."""
    axes = [torch.arange(g, device=device) // t for g, t in zip(grid, tile)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


@dataclass(frozen=True)
class BlockMask:
    """Per ``[B or 1, H or 1, query block]``: the partial and the full key blocks to visit (module docstring).

    Attributes:
        kv_num_blocks: int32 ``[Bm, Hm, Mq]`` partial blocks per query block (``Mq = ceil(q_len / block_q)``).
        kv_indices: int32 ``[Bm, Hm, Mq, Cp]`` their key-block indices, ascending (entries past the count unused).
        kv_mask_ids: int32 ``[Bm, Hm, Mq, Cp]`` for each partial block, its tile in ``partial_masks``.
        full_kv_num_blocks: int32 ``[Bm, Hm, Mq]`` full blocks per query block.
        full_kv_indices: int32 ``[Bm, Hm, Mq, Cf]`` their key-block indices, ascending.
        partial_masks: bool ``[P, block_q, block_k]`` per-token masks of the partial blocks (False past the
            last query or key).
        q_len, k_len: tokens on each side; block_q, block_k: tokens per block (powers of two >= 16).
    """

    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    kv_mask_ids: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor
    partial_masks: torch.Tensor
    q_len: int
    k_len: int
    block_q: int
    block_k: int

    def __post_init__(self):
        _check_block("block_q", self.block_q)
        _check_block("block_k", self.block_k)
        lead = (*self.kv_num_blocks.shape, -(-self.q_len // self.block_q))
        for name in ("kv_num_blocks", "kv_indices", "kv_mask_ids", "full_kv_num_blocks", "full_kv_indices"):
            value = getattr(self, name)
            rank = 3 if name.endswith("num_blocks") else 4
            if value.dtype != torch.int32 or value.dim() != rank or tuple(value.shape[:3]) != self.shape:
                raise ValueError(f"{name}: expected int32 [{', '.join(map(str, self.shape))}{', C' * (rank == 4)}], "
                                 f"got {value.dtype} {tuple(value.shape)}")
        if lead[2] != lead[3]:
            raise ValueError(f"kv_num_blocks: expected {lead[3]} query blocks for q_len={self.q_len}, got {lead[2]}")
        if self.partial_masks.dtype != torch.bool or tuple(self.partial_masks.shape[1:]) != (self.block_q, self.block_k):
            raise ValueError(f"partial_masks: expected bool [P, {self.block_q}, {self.block_k}], got "
                             f"{self.partial_masks.dtype} {tuple(self.partial_masks.shape)}")

    # ------------------------------------------------------------------ sizes
    @property
    def shape(self) -> tuple:
        """``(Bm, Hm, Mq)``: batch rows (1: shared), head rows (1: shared), query blocks."""
        return tuple(self.kv_num_blocks.shape)

    @property
    def num_k_blocks(self) -> int:
        return -(-self.k_len // self.block_k)

    @property
    def device(self) -> torch.device:
        return self.kv_num_blocks.device

    def visited_blocks(self) -> int:
        """Key blocks visited over all rows ``[Bm, Hm, Mq]`` (partial + full)."""
        return int(self.kv_num_blocks.sum() + self.full_kv_num_blocks.sum())

    def block_density(self) -> float:
        """Visited share of the ``Mq x Mk`` block pairs (what the kernel computes, relative to dense)."""
        Bm, Hm, Mq = self.shape
        return self.visited_blocks() / (Bm * Hm * Mq * self.num_k_blocks)

    def to(self, device) -> BlockMask:
        """The same mask with its tensors on ``device`` (once per run, not per call)."""
        fields = {name: getattr(self, name).to(device) for name in _TENSOR_FIELDS}
        return BlockMask(**fields, q_len=self.q_len, k_len=self.k_len, block_q=self.block_q, block_k=self.block_k)

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        """Raise ValueError unless the mask fits an attention with these sizes (before any launch)."""
        Bm, Hm, _ = self.shape
        if Bm not in (1, batch) or Hm not in (1, heads) or self.q_len != q_len or self.k_len != k_len:
            raise ValueError(f"block_mask: built for [B={Bm}, H={Hm}] with {self.q_len} queries and {self.k_len} keys, "
                             f"but the attention has B={batch}, H={heads}, {q_len} queries and {k_len} keys")

    # ------------------------------------------------------------------ views
    def to_dense(self) -> torch.Tensor:
        """The token mask the lists stand for: bool ``[Bm, Hm, q_len, k_len]`` (for tests; O(Nq*Nk) memory)."""
        Bm, Hm, Mq = self.shape
        Mk, bq, bk = self.num_k_blocks, self.block_q, self.block_k
        dense = torch.zeros(Bm, Hm, Mq, Mk, bq, bk, dtype=torch.bool, device=self.device)
        for counts, indices, tiles in ((self.kv_num_blocks, self.kv_indices, self.partial_masks[self.kv_mask_ids.long()]
                                        if self.partial_masks.shape[0] else None),
                                       (self.full_kv_num_blocks, self.full_kv_indices, None)):
            used = torch.arange(indices.shape[3], device=self.device) < counts[..., None]
            b, h, m, c = used.nonzero(as_tuple=True)
            kb = indices[b, h, m, c].long()
            dense[b, h, m, kb] = tiles[b, h, m, c] if tiles is not None else True
        dense = dense.permute(0, 1, 2, 4, 3, 5).reshape(Bm, Hm, Mq * bq, Mk * bk)
        return dense[:, :, :self.q_len, :self.k_len]

    def visit_lists(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both lists merged per query block, for paths that visit every block alike: ``(counts int32
        [Bm, Hm, Mq], indices int32 [Bm, Hm, Mq, Cp + Cf] ascending, mask_ids int32 [Bm, Hm, Mq, Cp + Cf])``,
        with ``mask_ids = -1`` on full blocks."""
        counts = self.kv_num_blocks + self.full_kv_num_blocks
        big = self.num_k_blocks
        slots_p = torch.arange(self.kv_indices.shape[3], device=self.device) < self.kv_num_blocks[..., None]
        slots_f = torch.arange(self.full_kv_indices.shape[3], device=self.device) < self.full_kv_num_blocks[..., None]
        keys = torch.cat([torch.where(slots_p, self.kv_indices, big), torch.where(slots_f, self.full_kv_indices, big)],
                         dim=3)
        ids = torch.cat([self.kv_mask_ids, torch.full_like(self.full_kv_indices, -1)], dim=3)
        keys, order = keys.sort(dim=3, stable=True)
        return counts, torch.where(keys < big, keys, 0).to(torch.int32), ids.gather(3, order)

    @functools.cached_property
    def query_lists(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The visit lists transposed, per key block (FlexAttention's ``q_num_blocks`` / ``q_indices``), for the
        dK/dV backward: ``(q_num_blocks int32 [Bm, Hm, Mk], q_indices int32 [Bm, Hm, Mk, Mq], q_mask_ids int32
        [Bm, Hm, Mk, Mq], full_q_num_blocks int32 [Bm, Hm, Mk], full_q_indices int32 [Bm, Hm, Mk, Mq])``: the query
        blocks visiting each key block, ascending, partial (with their ``partial_masks`` tile, read transposed) and
        full apart; slots past a count hold 0.  Built once per mask on its device, without a host sync (the lists
        are ``Mq`` wide)."""
        Mk = self.num_k_blocks
        partial = self._by_key_block(self.kv_num_blocks, self.kv_indices, self.kv_mask_ids, Mk)
        full = self._by_key_block(self.full_kv_num_blocks, self.full_kv_indices, torch.zeros_like(self.full_kv_indices),
                                  Mk)
        return (*_ascending_lists(partial), *_ascending_lists(full)[:2])

    def _by_key_block(self, counts, indices, values, num_k_blocks: int) -> torch.Tensor:
        """int32 ``[Bm, Hm, Mk, Mq]``: ``values`` of one list at its visited ``(query block, key block)`` pairs,
        transposed, -1 at pairs the list does not visit."""
        Bm, Hm, Mq = self.shape
        slots = torch.arange(indices.shape[3], device=self.device) < counts[..., None]
        dense = torch.full((Bm, Hm, Mq, num_k_blocks + 1), -1, dtype=torch.int32, device=self.device)
        dense.scatter_(3, torch.where(slots, indices, num_k_blocks).long(), torch.where(slots, values, -1))
        return dense[..., :num_k_blocks].transpose(2, 3)

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_dense(cls, mask: torch.Tensor, block_q: int = DEFAULT_BLOCK[0], block_k: int = DEFAULT_BLOCK[1]
                   ) -> BlockMask:
        """From a token mask, bool ``[Nq, Nk]``, ``[Bm, Nq, Nk]`` or ``[Bm, Hm, Nq, Nk]`` (True: may attend)."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or not 2 <= mask.dim() <= 4:
            raise ValueError(f"mask: expected a bool tensor [Nq, Nk], [B, Nq, Nk] or [B, H, Nq, Nk], got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        bq, bk = _check_block("block_q", block_q), _check_block("block_k", block_k)
        mask = mask[None, None] if mask.dim() == 2 else mask[:, None] if mask.dim() == 3 else mask
        Bm, Hm, nq, nk = mask.shape
        Mq, Mk = -(-nq // bq), -(-nk // bk)
        tiles = torch.zeros(Bm, Hm, Mq * bq, Mk * bk, dtype=torch.bool, device=mask.device)
        tiles[:, :, :nq, :nk] = mask
        tiles = tiles.reshape(Bm, Hm, Mq, bq, Mk, bk).permute(0, 1, 2, 4, 3, 5)  # [Bm, Hm, Mq, Mk, bq, bk]
        rows_valid = (torch.arange(Mq * bq, device=mask.device) < nq).reshape(Mq, 1, bq, 1)
        any_ = tiles.any(dim=(4, 5))
        full = (tiles | ~rows_valid).all(dim=(4, 5))  # padded query rows are never stored: they do not count
        return cls._from_block_flags(any_, full, lambda b, h, m, kb: tiles[b, h, m, kb], nq, nk, bq, bk)

    @classmethod
    def from_groups(cls, q_groups: torch.Tensor, k_groups: torch.Tensor, block_q: int = DEFAULT_BLOCK[0],
                    block_k: int = DEFAULT_BLOCK[1]) -> BlockMask:
        """From SpA2V layout bitmasks, int32/int64 ``[Bm, Nq]`` / ``[Bm or 1, Nk]``: query ``i`` may attend to key
        ``j`` when ``q_groups[i] & k_groups[j] != 0`` (``rope_attention``'s ``q_groups`` / ``k_groups``)."""
        for name, g in (("q_groups", q_groups), ("k_groups", k_groups)):
            if not isinstance(g, torch.Tensor) or g.dtype not in (torch.int32, torch.int64) or g.dim() != 2:
                raise ValueError(f"{name}: expected int32/int64 bitmasks [B or 1, N], got "
                                 f"{getattr(g, 'dtype', type(g).__name__)} {tuple(getattr(g, 'shape', ()))}")
        rows = max(q_groups.shape[0], k_groups.shape[0])
        if {q_groups.shape[0], k_groups.shape[0]} - {1, rows}:
            raise ValueError(f"q_groups, k_groups: expected batch rows 1 or B, got {q_groups.shape[0]} and "
                             f"{k_groups.shape[0]}")
        masks = []
        for r in range(rows):
            qg = q_groups[min(r, q_groups.shape[0] - 1)].long()
            kg = k_groups[min(r, k_groups.shape[0] - 1)].long()
            q_values, q_class = torch.unique(qg, return_inverse=True)
            k_values, k_class = torch.unique(kg, return_inverse=True)
            compat = (q_values[:, None] & k_values[None, :]) != 0
            masks.append(cls._from_classes(q_class, k_class, compat, block_q, block_k))
        return masks[0] if rows == 1 else cls._stack(masks)

    @classmethod
    def sliding_tile(cls, grid: Sequence[int], tile: Sequence[int], window: Sequence[int],
                     block_q: int = DEFAULT_BLOCK[0], block_k: int = DEFAULT_BLOCK[1], device=None) -> BlockMask:
        """3-D sliding-tile attention over ``grid = (T, H, W)`` video tokens in tile-major order
        (:func:`tile_order`; tiles of ``tile = (t, h, w)`` tokens): a query in tile ``a`` attends to a key in tile
        ``b`` iff ``|a_i - b_i| <= window_i // 2`` on every axis, with ``window = (wt, wh, ww)`` odd, in tiles,
        centred on the query's tile and clipped at the grid border."""
        token_class, compat = _sliding_tile_classes(grid, tile, window, device)
        return cls._from_classes(token_class, token_class, compat, block_q, block_k)

    @classmethod
    def radial(cls, grid: Sequence[int], band: int = 1, block_q: int = DEFAULT_BLOCK[0],
               block_k: int = DEFAULT_BLOCK[1], device=None) -> BlockMask:
        """Radial (temporal-decay) attention over ``grid = (T, H, W)`` tokens in raster order, after Radial
        Attention: frames up to ``band`` apart attend densely; beyond, the spatial window halves with every
        doubling of the temporal distance ``d``: key ``(t', y', x')`` is visible from ``(t, y, x)`` iff
        ``max(|y - y'|, |x - x'|) <= max(H, W) >> (floor(log2(d / band)) + 1)``."""
        grid = _check_triple("grid", grid, 1)
        if isinstance(band, bool) or not isinstance(band, int) or band < 1:
            raise ValueError(f"band: expected an integer >= 1 (frames attended densely), got {band!r}")
        bq, bk = _check_block("block_q", block_q), _check_block("block_k", block_k)
        coords = _tile_coords(grid, (1, 1, 1), device)  # raster (t, y, x) of every token
        frames = torch.arange(grid[0], device=coords.device)
        d = (frames[:, None] - frames[None, :]).abs()
        shrink = torch.floor(torch.log2(d.clamp(min=1).double() / band)).long() + 1
        radius = torch.where(d > band, max(grid[1:]) >> shrink.clamp(min=0, max=62), max(grid[1:]))  # [T, T]
        n = coords.shape[0]

        def token_mask(q_idx, k_idx):  # int [..., bq], [..., bk] -> bool [..., bq, bk]; indices >= n refused
            cq, ck = coords[q_idx.clamp(max=n - 1)][..., :, None, :], coords[k_idx.clamp(max=n - 1)][..., None, :, :]
            near = (cq[..., 1:] - ck[..., 1:]).abs().amax(-1) <= radius[cq[..., 0], ck[..., 0]]
            return near & (q_idx < n)[..., :, None] & (k_idx < n)[..., None, :]

        Mq, Mk = -(-n // bq), -(-n // bk)
        q_idx = torch.arange(Mq * bq, device=coords.device).reshape(Mq, bq)
        k_idx = torch.arange(Mk * bk, device=coords.device).reshape(Mk, bk)
        any_, full = [], []
        for m in range(Mq):  # one query block against every key block: [Mk, bq, bk] at a time
            tiles = token_mask(q_idx[m].expand(Mk, bq), k_idx)
            any_.append(tiles.any(dim=(1, 2)))
            full.append((tiles | (q_idx[m] >= n)[None, :, None]).all(dim=(1, 2)))
        return cls._from_block_flags(torch.stack(any_)[None, None], torch.stack(full)[None, None],
                                     lambda b, h, m, kb: token_mask(q_idx[m], k_idx[kb]), n, n, bq, bk)

    # ------------------------------------------------------------------ construction
    @classmethod
    def _from_classes(cls, q_class: torch.Tensor, k_class: torch.Tensor, compat: torch.Tensor, block_q: int,
                      block_k: int) -> BlockMask:
        """One mask row from token classes: query ``i`` may attend to key ``j`` iff ``compat[q_class[i],
        k_class[j]]``.  ``q_class`` int ``[Nq]`` in ``[0, Uq)``, ``k_class`` int ``[Nk]``, ``compat`` bool
        ``[Uq, Uk]``.  Block flags come from class incidence products (no token-pair tensor)."""
        any_, full, qc, kc = _class_block_flags(q_class, k_class, compat, block_q, block_k)

        def token_mask(b, h, m, kb):
            rows, cols = qc[m], kc[kb]
            tiles = compat[rows.clamp(min=0)[:, :, None], cols.clamp(min=0)[:, None, :]]
            return tiles & (rows >= 0)[:, :, None] & (cols >= 0)[:, None, :]

        return cls._from_block_flags(any_[None, None], full[None, None], token_mask, q_class.shape[0],
                                     k_class.shape[0], block_q, block_k)

    @classmethod
    def _from_block_flags(cls, any_: torch.Tensor, full: torch.Tensor, token_mask, q_len: int, k_len: int,
                          block_q: int, block_k: int) -> BlockMask:
        """The lists from block flags, bool ``[Bm, Hm, Mq, Mk]`` (``any_``: some pair allowed; ``full``: every pair
        of the stored queries allowed and every key in range).  ``token_mask(b, h, m, kb)`` (index tensors
        ``[P]``) returns the bool ``[P, block_q, block_k]`` token masks of the partial blocks."""
        full = full & any_
        partial = any_ & ~full
        kv_num, kv_idx = _sorted_lists(partial)
        full_num, full_idx = _sorted_lists(full)
        slots = torch.arange(kv_idx.shape[3], device=any_.device) < kv_num[..., None].long()
        b, h, m, c = slots.nonzero(as_tuple=True)
        mask_ids = torch.zeros(kv_idx.shape, dtype=torch.int32, device=any_.device)
        if b.numel():
            tiles = token_mask(b, h, m, kv_idx[b, h, m, c].long())
            pool, inverse = torch.unique(tiles.flatten(1), dim=0, return_inverse=True)
            mask_ids[b, h, m, c] = inverse.to(torch.int32)
            pool = pool.reshape(-1, block_q, block_k)
        else:
            pool = torch.zeros(0, block_q, block_k, dtype=torch.bool, device=any_.device)
        return cls(kv_num, kv_idx, mask_ids, full_num, full_idx, pool.contiguous(), q_len, k_len, block_q, block_k)

    @classmethod
    def _stack(cls, masks: list) -> BlockMask:
        """Masks of single batch rows stacked into one with ``Bm = len(masks)`` (same sizes)."""
        first = masks[0]
        offsets, total = [], 0
        for mask in masks:
            offsets.append(total)
            total += mask.partial_masks.shape[0]

        def stack(name, extra=None):
            values = [getattr(mask, name) for mask in masks]
            width = max(v.shape[3] for v in values) if values[0].dim() == 4 else None
            if width is not None:
                values = [torch.nn.functional.pad(v, (0, width - v.shape[3])) for v in values]
            if extra is not None:
                values = [v + off for v, off in zip(values, extra)]
            return torch.cat(values, dim=0)

        return cls(stack("kv_num_blocks"), stack("kv_indices"), stack("kv_mask_ids", offsets),
                   stack("full_kv_num_blocks"), stack("full_kv_indices"),
                   torch.cat([mask.partial_masks for mask in masks]), first.q_len, first.k_len, first.block_q,
                   first.block_k)


def _padded_classes(classes: torch.Tensor, blocks: int, size: int) -> torch.Tensor:
    """int64 ``[blocks, size]``: the token classes block by block, -1 past the last token."""
    out = torch.full((blocks * size,), -1, dtype=torch.long, device=classes.device)
    out[:classes.shape[0]] = classes
    return out.reshape(blocks, size)


def _incidence(classes: torch.Tensor, count: int) -> torch.Tensor:
    """float ``[blocks, count]``: 1 where a block of ``classes [blocks, size]`` holds a token of the class."""
    inc = torch.zeros(classes.shape[0], count + 1, device=classes.device)
    inc.scatter_(1, torch.where(classes < 0, count, classes), 1.0)
    return inc[:, :count]


def _class_block_flags(q_class, k_class, compat, block_q: int, block_k: int):
    """Block flags of a class rule (:meth:`BlockMask._from_classes`): ``(any_ bool [Mq, Mk], full bool [Mq, Mk],
    q classes [Mq, block_q], k classes [Mk, block_k])``, from class incidence products."""
    bq, bk = _check_block("block_q", block_q), _check_block("block_k", block_k)
    qc = _padded_classes(q_class, -(-q_class.shape[0] // bq), bq)
    kc = _padded_classes(k_class, -(-k_class.shape[0] // bk), bk)
    iq, ik = _incidence(qc, compat.shape[0]), _incidence(kc, compat.shape[1])
    allowed = compat.float()
    any_ = (iq @ allowed @ ik.T) > 0
    some_refused = (iq @ (1.0 - allowed) @ ik.T) > 0
    full = any_ & ~some_refused & (kc >= 0).all(dim=1)[None, :]
    return any_, full, qc, kc


def _sliding_tile_classes(grid, tile, window, device):
    """``(token class int64 [N] in tile-major order, compat bool [tiles, tiles])`` of :meth:`BlockMask.sliding_tile`."""
    grid = _check_triple("grid", grid, 1)
    tile = _check_triple("tile", tile, 1)
    window = _check_triple("window", window, 1, odd=True)
    tile_of = _tile_coords(grid, tile, device)[tile_order(grid, tile, device)[0]]
    tiles, token_class = torch.unique(tile_of, dim=0, return_inverse=True)
    reach = torch.tensor([w // 2 for w in window], device=tiles.device)
    return token_class, ((tiles[:, None, :] - tiles[None, :, :]).abs() <= reach).all(dim=-1)


def sliding_tile_block_counts(grid, tile, window, block_q: int = DEFAULT_BLOCK[0],
                              block_k: int = DEFAULT_BLOCK[1]) -> dict:
    """The block counts of :meth:`BlockMask.sliding_tile` without building its lists or tiles (for full-size cost
    models): ``{"visited", "full", "total"}`` block pairs of one ``[query blocks, key blocks]`` mask."""
    token_class, compat = _sliding_tile_classes(grid, tile, window, None)
    any_, full, _, _ = _class_block_flags(token_class, token_class, compat, block_q, block_k)
    return {"visited": int(any_.sum()), "full": int((full & any_).sum()), "total": any_.numel()}


_TENSOR_FIELDS = ("kv_num_blocks", "kv_indices", "kv_mask_ids", "full_kv_num_blocks", "full_kv_indices",
                  "partial_masks")


def _ascending_lists(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(counts int32 [..., M], indices int32 [..., M, W], values int32 [..., M, W])`` of the entries ``>= 0`` of
    ``values [..., M, W]``, ascending by index; full width ``W``, so no host sync; slots past a count hold 0."""
    width = values.shape[-1]
    visited = values >= 0
    order = torch.where(visited, torch.arange(width, device=values.device), width).sort(dim=-1).values
    used = order < width
    indices = torch.where(used, order, 0)
    return (visited.sum(-1).to(torch.int32), indices.to(torch.int32),
            torch.where(used, values.gather(-1, indices), 0).to(torch.int32))


def _sorted_lists(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts int32 [..., M], indices int32 [..., M, C])`` of the True entries of ``flags [..., M, Mk]``,
    ascending, ``C = max(1, max count)``; slots past a row's count hold 0."""
    counts = flags.sum(-1)
    width = max(1, int(counts.max())) if counts.numel() else 1
    mk = flags.shape[-1]
    keys = torch.where(flags, torch.arange(mk, device=flags.device), mk)
    indices = keys.sort(dim=-1).values[..., :width]
    return counts.to(torch.int32), torch.where(indices < mk, indices, 0).to(torch.int32)
