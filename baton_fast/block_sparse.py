"""Block-sparse attention in PyTorch: the CPU path of a :class:`~baton_fast.block_mask.BlockMask`, and its oracle.

:func:`block_sparse_attention` visits only the key blocks that each query block lists: the query blocks are
grouped by how many key blocks they visit, the visited K/V blocks of a group are gathered into one
``[G, count * block_k, D]`` batch, and one ``scaled_dot_product_attention`` per group runs over them (with a
token mask only where a group holds partial blocks or key lengths).  The work is that of the visited blocks
plus one gather of their K/V.  The grouping (:func:`visit_plan`) reads the mask's counts on the host once per mask,
not per call: build it where the mask is built (a prepared run's steps then read nothing back).

:func:`masked_attention` is the dense reference with the same token mask (``block_mask.to_dense()``), in any
dtype, float64 included: the numerics oracle of the fused kernel and of this path.
"""
from __future__ import annotations

import math
import weakref
from typing import Optional

import torch

from .block_mask import BlockMask

__all__ = ["block_sparse_attention", "masked_attention", "visit_plan"]

_PLANS: dict = {}  # id of a mask's kv_num_blocks -> (weak reference to it, its visit plan)


def masked_attention(q, k, v, token_mask: torch.Tensor, *, scale: Optional[float] = None, k_lens=None,
                     return_lse: bool = False):
    """Dense attention under a token mask, in q's dtype.

    q ``[B, Nq, H, D]``, k/v ``[B, Nk, Hk, D]`` (already rotated; ``H % Hk == 0``); ``token_mask`` bool
    ``[Bm, Hm, Nq, Nk]`` (``Bm`` 1 or B, ``Hm`` 1 or H; True: may attend); ``k_lens`` optional int ``[B]``.
    Returns ``out [B, Nq, H, D]`` and, with ``return_lse``, ``lse`` float32 ``[B, H, Nq]``; rows with no
    allowed key give zeros and ``lse = -inf``.
    """
    B, nq, H, D = q.shape
    nk, Hk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    k, v = k.repeat_interleave(H // Hk, dim=2), v.repeat_interleave(H // Hk, dim=2)
    allowed = token_mask.to(q.device)
    if k_lens is not None:
        allowed = allowed & (torch.arange(nk, device=q.device) < k_lens.to(q.device)[:, None])[:, None, None, :]
    p, lse = _masked_softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) * scale, allowed)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    return (out, lse) if return_lse else out


def _masked_softmax(s: torch.Tensor, allowed: Optional[torch.Tensor]):
    """Softmax of scores ``s [..., Nk]`` over the allowed keys (bool, broadcast to ``s``; None: all) and its
    log-sum-exp, float32 ``[...]``: rows with no allowed key give zero weights and ``-inf``."""
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    return p / torch.where(l > 0, l, torch.ones_like(l)), (m + torch.log(l)).squeeze(-1).float()


def visit_plan(block_mask: BlockMask) -> list:
    """The mask's query blocks grouped by how many key blocks they visit: ``[(count, rows int64 [G], partial)]``
    over the flattened mask rows ``(bm, hm, m)`` of ``[Bm, Hm, Mq]``, ``count > 0``; ``partial``: whether a row of
    the group visits a partial block.  Reads the counts on the host the first time, then is kept beside the mask
    (for as long as its ``kv_num_blocks`` tensor lives)."""
    key = block_mask.kv_num_blocks
    ref, plan = _PLANS.get(id(key), (None, None))
    if ref is None or ref() is not key:  # keyed by identity: a tensor's == compares values
        partial = block_mask.kv_num_blocks.reshape(-1).long()
        counts = partial + block_mask.full_kv_num_blocks.reshape(-1).long()
        plan = []
        for count in counts.unique().tolist():
            if count:
                rows = (counts == count).nonzero(as_tuple=True)[0]
                plan.append((count, rows, bool((partial[rows] > 0).any())))
        _PLANS[id(key)] = (weakref.ref(key, lambda _, k=id(key): _PLANS.pop(k, None)), plan)
    return plan


def _rows(mask_rows: torch.Tensor, mask_shape, B: int, H: int) -> torch.Tensor:
    """The rows ``(b, h, m)`` of ``[B, H, Mq]`` that read the flattened mask rows ``mask_rows`` of ``[Bm, Hm, Mq]``."""
    Bm, Hm, Mq = mask_shape
    bm, hm, m = mask_rows // (Hm * Mq), (mask_rows // Mq) % Hm, mask_rows % Mq
    b = torch.arange(B, device=mask_rows.device)[:, None, None] if Bm == 1 else bm[None, None]
    h = torch.arange(H, device=mask_rows.device)[None, :, None] if Hm == 1 else hm[None, None]
    return ((b * H + h) * Mq + m[None, None]).reshape(-1)


def block_sparse_attention(q, k, v, block_mask: BlockMask, *, scale: Optional[float] = None, k_lens=None,
                           return_lse: bool = False):
    """Attention over the key blocks ``block_mask`` lists (module docstring), equal to :func:`masked_attention`
    with ``block_mask.to_dense()``.

    q ``[B, Nq, H, D]``, k/v ``[B, Nk, Hk, D]`` already rotated (``H % Hk == 0``), any float dtype;
    ``block_mask`` for ``Nq`` queries and ``Nk`` keys, rows ``[1 or B, 1 or H]``; ``k_lens`` optional int ``[B]``.
    Returns ``out [B, Nq, H, D]`` in q's dtype and, with ``return_lse``, ``lse`` float32 ``[B, H, Nq]`` (rows
    with no allowed key: zeros, ``-inf``).
    """
    B, nq, H, D = q.shape
    nk, Hk = k.shape[1], k.shape[2]
    block_mask.check(B, H, nq, nk)
    bq, bk = block_mask.block_q, block_mask.block_k
    Mq, Mk = -(-nq // bq), -(-nk // bk)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    device = q.device

    # queries as [B*H*Mq, bq, D] rows (b, h, m); keys and values as [B*Hk*Mk, bk, D] blocks (b, hk, kb)
    def blocks(x, count, size):
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, count * size - x.shape[1]))
        return x.unflatten(1, (count, size)).permute(0, 3, 1, 2, 4).reshape(-1, size, D)

    q_rows, k_blocks, v_blocks = blocks(q, Mq, bq), blocks(k, Mk, bk), blocks(v, Mk, bk)
    _, indices, mask_ids = (t.to(device) for t in block_mask.visit_lists())
    indices = indices.expand(B, H, Mq, -1).reshape(B * H * Mq, -1).long()
    mask_ids = mask_ids.expand(B, H, Mq, -1).reshape(B * H * Mq, -1).long()
    row = torch.arange(B * H * Mq, device=device)
    b_of, h_of = row // (H * Mq), (row // Mq) % H
    key_base = (b_of * Hk + h_of // (H // Hk)) * Mk  # first key block of the row's (batch, key head)
    # full blocks read the all-True tile appended to the pool of partial tiles
    pool = block_mask.partial_masks.to(device)
    pool = torch.cat([pool, torch.ones(1, bq, bk, dtype=torch.bool, device=device)])
    mask_ids = torch.where(mask_ids < 0, pool.shape[0] - 1, mask_ids)
    key_limit = (k_lens.to(device).long() if k_lens is not None else torch.full((B,), nk, device=device))[b_of]

    out = q_rows.new_zeros(q_rows.shape)
    lse = torch.full((B * H * Mq, bq), float("-inf"), device=device)
    groups = [(count, _rows(rows.to(device), block_mask.shape, B, H), partial)
              for count, rows, partial in visit_plan(block_mask)]
    # one K and one V buffer for every group: fresh large tensors cost page faults on each call (the gather
    # into a new tensor took 6x as long on CPU as into a reused one)
    size = max((rows.shape[0] * count for count, rows, _ in groups), default=0) * bk * D
    key_buffer, value_buffer = k_blocks.new_empty(size), v_blocks.new_empty(size)
    for count, rows, partial in groups:
        kb = indices[rows, :count]  # [G, count]
        flat = (key_base[rows, None] + kb).reshape(-1)
        shape = (flat.shape[0], bk, D)
        keys = torch.index_select(k_blocks, 0, flat, out=key_buffer[:flat.shape[0] * bk * D].view(shape))
        values = torch.index_select(v_blocks, 0, flat, out=value_buffer[:flat.shape[0] * bk * D].view(shape))
        keys, values = keys.view(rows.shape[0], count * bk, D), values.view(rows.shape[0], count * bk, D)
        ids = mask_ids[rows, :count]
        allowed = None
        if k_lens is not None or partial:
            key_pos = kb[:, :, None] * bk + torch.arange(bk, device=device)  # [G, count, bk]
            allowed = pool[ids] & (key_pos < key_limit[rows, None, None])[:, :, None, :]
            allowed = allowed.permute(0, 2, 1, 3).reshape(rows.shape[0], bq, count * bk)
        o, l = _attend(q_rows.index_select(0, rows), keys, values, allowed, scale, return_lse)
        out.index_copy_(0, rows, o)
        if return_lse:
            lse[rows] = l
    out = out.reshape(B, H, Mq * bq, D).transpose(1, 2)[:, :nq]
    if not return_lse:
        return out
    return out, lse.reshape(B, H, Mq * bq)[:, :, :nq]


def _attend(q, k, v, allowed, scale, return_lse):
    """One group: q ``[G, bq, D]`` over k/v ``[G, L, D]`` with an optional bool mask ``[G, bq, L]``; returns
    ``(out [G, bq, D], lse float32 [G, bq] or None)``; rows with no allowed key give zeros and ``-inf``."""
    if not return_lse:
        out = torch.nn.functional.scaled_dot_product_attention(
            q[:, None], k[:, None], v[:, None], attn_mask=None if allowed is None else allowed[:, None],
            scale=scale)[:, 0]
        if allowed is not None:  # fully masked rows: zeros (SDPA gives NaN there)
            out = torch.where(allowed.any(-1, keepdim=True), out, out.new_zeros(()))
        return out, None
    p, lse = _masked_softmax(torch.einsum("gqd,gkd->gqk", q, k) * scale, allowed)
    return torch.einsum("gqk,gkd->gqd", p, v), lse
