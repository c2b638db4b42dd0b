"""Sequence-parallel ``rope_attention``: Ulysses (all-to-all over heads), ring (keys passed around), hybrid.

Every rank holds a contiguous shard of the query sequence and of the key sequence (shard ``i`` on rank
``i`` of the mesh's group; shards may differ in length by rank); the result is this rank's shard of the
single-process ``rope_attention`` output (and LSE).

- RoPE stays exact: each rank rotates its own queries and keys once, with its own coordinates
  (``apply_rope``), before any transfer.  Rotated tokens carry their positions, so no coordinate moves and
  no kernel rotates a key block once per ring step (DESIGN §3: rotate K once).
- Ulysses (degree ``U``): ``all_to_all_single`` trades the sequence split for a head split (``H/U`` heads
  of the whole ring block on each rank), padding stripped, so ``k_lens`` and layout groups (all-gathered in
  the group: one integer per token) apply to the real sequence; a second all-to-all returns the output.
- Ring (degree ``R``): the packed K/V block (and its key groups) goes to the next rank with
  ``batch_isend_irecv`` while the current block is computed; partial outputs are merged with their
  log-sum-exp in fp32.  Blocks are padded to the longest one and masked with per-block key lengths
  (``clamp(k_lens - block offset, 0, block length)``): no token is dropped.
- Hybrid: Ulysses inside each group of ``U`` consecutive shards, then the ring over the ``R`` blocks.

Before any data moves, the ranks agree (:func:`~baton_fast.distributed.agreement.agree`): a bad argument
on one rank, a head count the Ulysses degree does not divide, or ranks disagreeing on shapes raise on
every rank.  A run that agreed once (:func:`agree_shards`, the DiT's ``prepare``) passes the resulting
:class:`~baton_fast.distributed.agreement.ShardPlan` as ``shards=``: its calls check locally and run no
collective on host values.

All three are differentiable in q, k, v (and through the LSE): the Ulysses exchange's backward is the
inverse exchange (:class:`_UlyssesExchange`), the ring's a FlashAttention-2 style pass around the ring
(:class:`_RingAttention`).
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

import baton_fast
from baton_fast.ops import SUPPORTED_DTYPES, _attention_args, _check_layout_groups
from baton_fast.rope import RopeTable

from .agreement import ShardPlan, agree
from .mesh import SequenceMesh

__all__ = ["ulysses_attention", "ring_attention", "hybrid_attention", "sharded_keys_attention", "merge_partials",
           "agree_shards"]


def ulysses_attention(q, k, v, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *,
                      group: Optional[dist.ProcessGroup] = None, **rope_attention_kwargs):
    """``rope_attention`` over the ranks of ``group`` (default: the world), Ulysses style.

    Args:
        q: this rank's query shard ``[B, nq_r, H, D]``; k, v: its key shard ``[B, nk_r, Hk, D]``
            (``nq_r``, ``nk_r`` may differ by rank).  The group size must divide ``H`` and ``Hk``.
        q_coords, k_coords: float32 ``[B or 1, n_r, A]``, the coordinates of this rank's tokens.
        table, rope_attention_kwargs: as :func:`baton_fast.rope_attention`; ``k_lens`` (``[B]``, the same
            on every rank) counts keys of the whole sequence; ``q_groups`` / ``k_groups`` are this rank's
            shards ``[B or 1, n_r]``.
    Returns:
        this rank's output shard ``[B, nq_r, H, D]`` in q's dtype (and ``lse`` float32 ``[B, H, nq_r]``
        with ``return_lse=True``).
    """
    return hybrid_attention(q, k, v, q_coords, k_coords, table, mesh=SequenceMesh.ulysses_only(group),
                            **rope_attention_kwargs)


def ring_attention(q, k, v, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *,
                   group: Optional[dist.ProcessGroup] = None, **rope_attention_kwargs):
    """``rope_attention`` over the ranks of ``group`` (default: the world), ring style: any head count.
    Arguments and result as :func:`ulysses_attention`."""
    return hybrid_attention(q, k, v, q_coords, k_coords, table, mesh=SequenceMesh.ring_only(group),
                            **rope_attention_kwargs)


def hybrid_attention(q, k, v, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *,
                     mesh: SequenceMesh, k_table: Optional[RopeTable] = None, rotate_q: bool = True,
                     rotate_k: bool = True, k_lens: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                     return_lse: bool = False, q_groups: Optional[torch.Tensor] = None,
                     k_groups: Optional[torch.Tensor] = None, check_values: bool = True,
                     shards: Optional[ShardPlan] = None):
    """``rope_attention`` over a ``ring x ulysses`` :class:`SequenceMesh` (:func:`init_sequence_mesh`).
    Arguments and result as :func:`ulysses_attention`; the Ulysses degree must divide ``H`` and ``Hk``.

    Without ``shards`` the ranks agree on the call's shapes first (one small all-gather: a bad argument on
    one rank raises on every rank).  ``shards``: a :class:`ShardPlan` agreed beforehand (:func:`agree_shards`,
    or the DiT's prepared run): the call then checks its arguments and token counts locally and runs no
    collective on host values.  ``check_values=False`` skips the value checks (coordinates, key lengths), as
    in ``rope_attention``: with ``shards`` the call then reads nothing back from the device."""
    checked, counts = _checked_call(q, k, v, q_coords, k_coords, table, mesh, shards, k_table=k_table,
                                    rotate_q=rotate_q, rotate_k=rotate_k, k_lens=k_lens, scale=scale,
                                    return_lse=return_lse, q_groups=q_groups, k_groups=k_groups)
    (q, k, v, q_coords, k_coords, qf, qa, kf, ka, interleaved, rotate_q, rotate_k, k_lens, scale) = checked
    H, Hk = q.shape[2], k.shape[2]
    if H % mesh.ulysses_degree or Hk % mesh.ulysses_degree:
        raise ValueError(f"mesh: the Ulysses degree {mesh.ulysses_degree} must divide the query heads H={H} and the "
                         f"key heads Hk={Hk}; use ring attention (or a smaller Ulysses degree) for this head count")
    if k_lens is not None and check_values:
        lo, hi = (int(x) for x in torch.stack([k_lens.min(), k_lens.max()]).tolist())
        if lo < 0 or hi > sum(counts["nk"]):
            raise ValueError(f"k_lens: expected values in [0, {sum(counts['nk'])}] (keys over all ranks), "
                             f"got range [{lo}, {hi}]")
    if rotate_q:
        q = baton_fast.apply_rope(q, q_coords, RopeTable.trusted(qf, qa, interleaved, q_coords.shape[2]),
                                  check_values=check_values)
    if rotate_k:
        k = baton_fast.apply_rope(k, k_coords, RopeTable.trusted(kf, ka, interleaved, k_coords.shape[2]),
                                  check_values=check_values)
    U = mesh.ulysses_degree
    first = mesh.ring_rank * U  # shard index of this Ulysses group's first member
    nq_u, nk_u = counts["nq"][first:first + U], counts["nk"][first:first + U]
    if U > 1:
        q, k, v = (_sequence_to_heads(x, lens, mesh.ulysses_rank, mesh.ulysses)
                   for x, lens in ((q, nq_u), (k, nk_u), (v, nk_u)))
        if q_groups is not None:
            q_groups = _gather_tokens(q_groups, nq_u, mesh.ulysses)
            k_groups = _gather_tokens(k_groups, nk_u, mesh.ulysses)
    block_lens = [sum(counts["nk"][r * U:(r + 1) * U]) for r in range(mesh.ring_degree)]
    out, lse = _ring(q, k, v, k_lens, q_groups, k_groups, scale, block_lens, mesh, return_lse)
    if U > 1:
        out = _heads_to_sequence(out, nq_u, mesh.ulysses_rank, mesh.ulysses)
        if return_lse:
            lse = _heads_to_sequence(lse.transpose(1, 2)[..., None], nq_u, mesh.ulysses_rank,
                                     mesh.ulysses)[..., 0].transpose(1, 2)
    return (out, lse.contiguous()) if return_lse else out


def agree_shards(q, k, v, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *,
                 group: Optional[dist.ProcessGroup] = None, **rope_attention_kwargs) -> ShardPlan:
    """The agreement a direct call runs, once: every rank of ``group`` (default: the world) checks these
    arguments (as for :func:`hybrid_attention`) and the ranks agree on them, raising on every rank as a call
    would.  Returns the :class:`ShardPlan` to pass as ``shards=`` to the calls of the same shapes."""
    rope_attention_kwargs.pop("check_values", None)  # a call's keyword, not one of the agreement's
    _, counts = _checked_call(q, k, v, q_coords, k_coords, table, SequenceMesh.ring_only(group), None,
                              **rope_attention_kwargs)
    return ShardPlan(tuple(counts["nq"]), tuple(counts["nk"]))


def _checked_call(q, k, v, q_coords, k_coords, table, mesh: SequenceMesh, shards: Optional[ShardPlan], *,
                  k_table=None, rotate_q=True, rotate_k=True, k_lens=None, scale=None, return_lse=False,
                  q_groups=None, k_groups=None):
    """``(rope_attention's checked arguments, every rank's token counts)``: agreed with the other ranks, or,
    with ``shards``, checked locally against the plan."""
    args = {}

    def check():
        args["checked"] = _attention_args(q, k, v, q_coords, k_coords, table, k_table, rotate_q, rotate_k, k_lens,
                                          scale)
        _check_layout_groups(q, k, q_groups, k_groups)

    def shared_fields():
        check()
        return _shared_fields(q, k, args["checked"][-1], k_lens, return_lse, q_groups, k_groups)

    if shards is not None:
        check()
        return args["checked"], shards.counts(mesh.rank, q.shape[1], k.shape[1])
    counts = agree(shared_fields, lambda: {"nq": q.shape[1], "nk": k.shape[1]}, mesh.group, q.device,
                   "sequence-parallel attention")
    return args["checked"], counts


def _shared_fields(q, k, scale, k_lens, return_lse, q_groups, k_groups) -> dict:
    """The numbers every rank must pass alike (token counts excepted)."""
    B, _, H, D = q.shape
    fields = dict(batch=B, heads=H, head_dim=D, kv_heads=k.shape[2], dtype=SUPPORTED_DTYPES.index(q.dtype),
                  scale=float(scale), return_lse=int(return_lse), k_lens=k_lens is not None,
                  layout_groups=q_groups is not None,
                  q_groups_batch=q_groups.shape[0] if q_groups is not None else 0,
                  k_groups_batch=k_groups.shape[0] if k_groups is not None else 0, k_lens_sum=0, k_lens_weighted=0)
    if k_lens is not None:  # a fingerprint of the values: equal on every rank when the lengths agree
        weights = torch.arange(1, B + 1, dtype=torch.float64, device=k_lens.device)
        fields["k_lens_sum"], fields["k_lens_weighted"] = torch.stack(
            [k_lens.double().sum(), (k_lens.double() * weights).sum()]).tolist()
    return fields


# ------------------------------------------------------------------ Ulysses all-to-all
def _pad_tokens(x: torch.Tensor, n: int, dim: int = 1) -> torch.Tensor:
    """``x`` zero-padded along ``dim`` to ``n`` tokens."""
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, n - x.shape[dim]]
    return F.pad(x, pad) if n > x.shape[dim] else x


def _sequence_to_heads(x: torch.Tensor, lens: list, rank: int, group) -> torch.Tensor:
    """This rank's tokens of every head ``[B, lens[rank], H, D]`` -> every rank's tokens of this rank's heads
    ``[B, sum(lens), H/U, D]`` (rank order, padding stripped).  Differentiable (:class:`_UlyssesExchange`)."""
    return _UlyssesExchange.apply(x, lens, rank, group, True)


def _heads_to_sequence(x: torch.Tensor, lens: list, rank: int, group) -> torch.Tensor:
    """Inverse of :func:`_sequence_to_heads`: ``[B, sum(lens), H/U, D]`` -> ``[B, lens[rank], H, D]``."""
    return _UlyssesExchange.apply(x, lens, rank, group, False)


class _UlyssesExchange(torch.autograd.Function):
    """The Ulysses all-to-all (``to_heads``: sequence split -> head split, else back).  It only moves and pads
    elements, so its backward is the inverse exchange of the gradient (the padding's gradient is dropped)."""

    @staticmethod
    def forward(ctx, x, lens, rank, group, to_heads):
        ctx.exchange = (lens, rank, group, not to_heads)
        return _exchange(x, lens, rank, group, to_heads)

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad, *ctx.exchange), None, None, None, None


def _exchange(x: torch.Tensor, lens: list, rank: int, group, to_heads: bool) -> torch.Tensor:
    U, n_pad = len(lens), max(lens)
    if to_heads:
        B, _, H, D = x.shape
        send = _pad_tokens(x, n_pad).reshape(B, n_pad, U, H // U, D).permute(2, 0, 1, 3, 4).contiguous()
    else:
        send = torch.stack([_pad_tokens(piece, n_pad) for piece in x.split(lens, dim=1)]).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    if to_heads:  # recv[j]: rank j's tokens, this rank's heads
        return torch.cat([recv[j, :, :n] for j, n in enumerate(lens)], dim=1)
    _, B, _, Hl, D = recv.shape  # recv[j]: this rank's tokens, rank j's heads
    return recv.permute(1, 2, 0, 3, 4).reshape(B, n_pad, U * Hl, D)[:, :lens[rank]]


def _gather_tokens(x: torch.Tensor, lens: list, group) -> torch.Tensor:
    """Per-token data ``[G, lens[me]]`` of every rank of ``group``, concatenated: ``[G, sum(lens)]``.
    Differentiable (:class:`_TokenGather`)."""
    return _TokenGather.apply(x, tuple(lens), group)


class _TokenGather(torch.autograd.Function):
    """The all-gather of every rank's tokens.  With the loss summed over the ranks, the gathered tensor's
    gradient is every rank's gradient summed, of which this rank keeps its own tokens: a reduce-scatter
    (an all-reduce and a slice here: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, lens, group):
        ctx.gather = (lens, group)
        n_pad = max(lens)
        gathered = [torch.empty((x.shape[0], n_pad), dtype=x.dtype, device=x.device) for _ in lens]
        dist.all_gather(gathered, _pad_tokens(x, n_pad).contiguous(), group=group)
        return torch.cat([g[:, :n] for g, n in zip(gathered, lens)], dim=1)

    @staticmethod
    def backward(ctx, grad):
        lens, group = ctx.gather
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=group)
        rank = dist.get_rank(group)
        start = sum(lens[:rank])
        return total[:, start:start + lens[rank]], None, None


# ------------------------------------------------------------------ ring
def merge_partials(out: Optional[torch.Tensor], lse: Optional[torch.Tensor], part: torch.Tensor,
                   part_lse: torch.Tensor):
    """Merge two attentions of the same queries over disjoint key sets, by their log-sum-exp.

    ``out``/``part`` ``[B, Nq, H, D]``, ``lse``/``part_lse`` float32 ``[B, H, Nq]`` (``out=None`` starts the
    merge).  Returns ``(merged fp32 out, merged lse)``; rows with no key in either stay zero with ``-inf``."""
    part = part.float()
    if out is None:
        return part, part_lse
    merged = torch.logaddexp(lse, part_lse)
    empty = torch.isneginf(merged)
    safe = torch.where(empty, torch.zeros_like(merged), merged)
    w_old = torch.where(empty, torch.zeros_like(merged), torch.exp(lse - safe)).transpose(1, 2)[..., None]
    w_new = torch.where(empty, torch.zeros_like(merged), torch.exp(part_lse - safe)).transpose(1, 2)[..., None]
    return out * w_old + part * w_new, merged


def _ring(q, k, v, k_lens, q_groups, k_groups, scale, block_lens, mesh: SequenceMesh, need_lse: bool):
    """Attention of this rank's (rotated) queries over every ring block's keys; ``k``, ``v`` are this rank's
    block.  ``block_lens[r]``: keys of ring block ``r``.  Returns ``(out in q's dtype, lse or None)``;
    differentiable in q, k, v (:class:`_RingAttention`)."""
    if mesh.ring_degree == 1:  # one block: the whole key sequence, real lengths
        return _block_attention(q, k, v, k_lens, q_groups, k_groups, scale, need_lse)
    out, lse = _RingAttention.apply(q, k, v, k_lens, q_groups, k_groups, scale, tuple(block_lens), mesh)
    return out, lse if need_lse else None


class _RingAttention(torch.autograd.Function):
    """Ring attention with a FlashAttention-2 style backward (as ring-flash-attention).

    Forward: the K/V blocks go around the ring (the next one in flight while the current one is computed),
    the partial outputs merged by their LSE.  Only this rank's q, k, v and the merged output and LSE are
    saved.  Backward: the K/V blocks go around the ring again, each with a dK/dV accumulator; every rank
    recomputes its queries' attention over the block and back-propagates it with the merged LSE.  The
    merged ``O = sum_s w_s o_s`` with ``w_s = exp(lse_s - LSE)`` gives the block's output gradient
    ``w_s dO`` and LSE gradient ``w_s (rowsum(dO * (o_s - O)) + dLSE)``, which ``rope_attention``'s own
    backward (kernel or reference) takes.  The accumulator then moves to the next rank with the block; after
    ``R`` moves each block's dK/dV is back on the rank that holds it."""

    @staticmethod
    def forward(ctx, q, k, v, k_lens, q_groups, k_groups, scale, block_lens, mesh):
        offsets, n_pad = [0, *itertools.accumulate(block_lens)], max(block_lens)
        kv, groups = _ring_buffers(k, v, k_groups, n_pad)
        out = lse = None
        for source, block, block_groups in _ring_walk(kv, groups, mesh):
            lens = _block_key_lens(k_lens, offsets[source], block_lens[source], n_pad, q.shape[0], q.device)
            part, part_lse = _block_attention(q, block[0], block[1], lens, q_groups, block_groups, scale, True)
            out, lse = merge_partials(out, lse, part, part_lse)
        ctx.save_for_backward(q, k, v, out, lse, k_lens, q_groups, k_groups)
        ctx.ring = (scale, block_lens, mesh)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, k_lens, q_groups, k_groups = ctx.saved_tensors
        scale, block_lens, mesh = ctx.ring
        offsets, n_pad = [0, *itertools.accumulate(block_lens)], max(block_lens)
        kv, groups = _ring_buffers(k, v, k_groups, n_pad)
        dout, dlse = dout.float(), dlse.float()
        empty = torch.isneginf(lse)
        dq, dkv = torch.zeros_like(q, dtype=torch.float32), torch.zeros_like(kv, dtype=torch.float32)
        for source, block, block_groups in _ring_walk(kv, groups, mesh):
            lens = _block_key_lens(k_lens, offsets[source], block_lens[source], n_pad, q.shape[0], q.device)
            leaves = [x.detach().requires_grad_() for x in (q, block[0], block[1])]
            with torch.enable_grad():
                part, part_lse = _block_attention(*leaves, lens, q_groups, block_groups, scale, True)
                weight = torch.where(empty, 0.0, torch.exp(part_lse - torch.where(empty, 0.0, lse)))  # [B, H, Nq]
                d_part = weight.transpose(1, 2)[..., None] * dout
                d_part_lse = weight * (((part.float() - out) * dout).sum(-1).transpose(1, 2) + dlse)
                grads = torch.autograd.grad((part, part_lse), leaves, (d_part.to(part.dtype), d_part_lse),
                                            allow_unused=True)
            grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]
            dq += grads[0]
            dkv[0] += grads[1]
            dkv[1] += grads[2]
            dkv = _ring_shift([dkv], mesh, tag=1)[0]  # the accumulator follows its block to the next rank
        n_k = k.shape[1]
        return dq.to(q.dtype), dkv[0, :, :n_k].to(k.dtype), dkv[1, :, :n_k].to(v.dtype), *(None,) * 6


def _ring_buffers(k, v, k_groups, n_pad: int):
    """This rank's K and V packed in one buffer ``[2, B, n_pad, Hk, D]`` (and its key groups), padded to the
    longest block."""
    kv = torch.stack([_pad_tokens(k, n_pad), _pad_tokens(v, n_pad)]).contiguous()
    return kv, _pad_tokens(k_groups, n_pad).contiguous() if k_groups is not None else None


def _ring_walk(kv: torch.Tensor, groups: Optional[torch.Tensor], mesh: SequenceMesh):
    """Yield ``(source ring rank, K/V block, its key groups)`` for each of the ring's ``R`` steps, starting
    with this rank's own; the next block's transfer is in flight while the caller computes on the current."""
    R, me = mesh.ring_degree, mesh.ring_rank
    for step in range(R):
        tensors = [kv] if groups is None else [kv, groups]
        received, pending = _ring_start(tensors, mesh, tag=0) if step + 1 < R else (None, [])
        yield (me - step) % R, kv, groups
        for request in pending:
            request.wait()
        if received is not None:
            kv, groups = received[0], received[1] if groups is not None else None


def _ring_start(tensors: list, mesh: SequenceMesh, tag: int):
    """Start sending ``tensors`` to the next rank of the ring and receiving the previous rank's alike:
    ``(buffers being received, requests to wait on)``."""
    R, me = mesh.ring_degree, mesh.ring_rank
    send_to, recv_from = mesh.ring_peer((me + 1) % R), mesh.ring_peer((me - 1) % R)
    received = [torch.empty_like(t) for t in tensors]
    ops = [op for t, r in zip(tensors, received) for op in (dist.P2POp(dist.isend, t, send_to, tag=tag),
                                                            dist.P2POp(dist.irecv, r, recv_from, tag=tag))]
    return received, dist.batch_isend_irecv(ops)


def _ring_shift(tensors: list, mesh: SequenceMesh, tag: int) -> list:
    """``tensors`` of the previous rank of the ring (this rank's go to the next)."""
    received, pending = _ring_start([t.contiguous() for t in tensors], mesh, tag)
    for request in pending:
        request.wait()
    return received


def _block_key_lens(k_lens, offset: int, length: int, padded: int, batch: int, device):
    """Key lengths within one padded block that starts at global key ``offset``; None when none is masked."""
    if k_lens is None:
        return None if length == padded else torch.full((batch,), length, dtype=torch.int32, device=device)
    return (k_lens - offset).clamp(0, length)


def _block_attention(q, k, v, k_lens, q_groups, k_groups, scale, need_lse):
    # nothing is rotated and the key lengths were checked against the whole sequence: no value check per block
    result = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False, k_lens=k_lens, scale=scale,
                                       return_lse=need_lse, q_groups=q_groups, k_groups=k_groups, check_values=False)
    return result if need_lse else (result, None)


def sharded_keys_attention(q, k, v, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *,
                           group: Optional[dist.ProcessGroup] = None, shards: Optional[ShardPlan] = None,
                           **rope_attention_kwargs):
    """``rope_attention`` of queries that every rank holds in full over keys split across the ranks of
    ``group`` (the audio branch attending to the sharded video tokens).

    Each rank attends to its own key shard (``k``, ``v`` ``[B, nk_r, Hk, D]``, ``k_coords`` theirs), then the
    partial outputs and LSEs are all-gathered and merged in rank order, so every rank gets the same result,
    ``[B, Nq, H, D]``.  ``q`` and ``q_coords`` must be equal on every rank (shapes are checked); key lengths
    and layout groups are not supported here (they would count keys of the whole sequence).  ``shards``: as
    in :func:`hybrid_attention` (its ``k_lengths``), skips the agreement."""
    for name in ("k_lens", "q_groups", "k_groups", "return_lse"):
        if rope_attention_kwargs.get(name) not in (None, False):
            raise ValueError(f"{name}: not supported by sharded_keys_attention")
    if shards is None:
        agree(lambda: _replicated_query_fields(q, k), lambda: {"nk": k.shape[1]}, group, q.device,
              "sharded-keys attention")
    else:  # agreed beforehand (the DiT's prepared run): checked locally
        _replicated_query_fields(q, k)
        shards.counts(dist.get_rank(group), None, k.shape[1])
    out, lse = baton_fast.rope_attention(q, k, v, q_coords, k_coords, table, return_lse=True, **rope_attention_kwargs)
    world = dist.get_world_size(group)
    # every rank's partial output and LSE, each flattened as the "tokens" of one row (differentiable)
    outs, lses = (_gather_tokens(x.reshape(1, -1), [x.numel()] * world, group).reshape(world, *x.shape)
                  for x in (out, lse))
    merged = merged_lse = None
    for part, part_lse in zip(outs, lses):
        merged, merged_lse = merge_partials(merged, merged_lse, part, part_lse)
    return merged.to(q.dtype)


def _replicated_query_fields(q, k) -> dict:
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name}: expected a float16/bfloat16/float32 tensor [B, N, H, D]")
    B, n_q, H, D = q.shape
    return dict(batch=B, queries=n_q, heads=H, head_dim=D, kv_heads=k.shape[2], dtype=SUPPORTED_DTYPES.index(q.dtype))
