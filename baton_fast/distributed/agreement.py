"""Ranks agree on a call before any data moves: one small all-gather of shape metadata.

A direct call of the sequence-parallel attentions agrees on every call (:func:`agree`).  On CUDA that
all-gather ends in a device-to-host read, so a run agrees once where it is prepared instead and keeps the
result, a :class:`ShardPlan` (every rank's token counts): calls given ``shards=plan`` check their own
arguments against it locally and run no collective on host values.

Each rank checks its own arguments, then every rank contributes a float64 vector (an error flag, the
fields that must be equal on all ranks, and its own token counts).  If any rank rejected its arguments or
the ranks disagree, *every* rank raises (the rank at fault re-raises its own error), so no rank is left
waiting in a collective that the others never enter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

__all__ = ["agree", "ShardPlan", "collective_device"]


def agree(check: Callable[[], dict], counts: Callable[[], dict], group: Optional[dist.ProcessGroup],
          device: torch.device, what: str) -> dict:
    """Run ``check`` (local validation, returns ``{field: number}`` that every rank must share), then
    gather those fields and ``counts()`` (``{field: int}``, may differ by rank: token counts) from every rank.

    Returns ``{field: [value of rank 0, rank 1, ...]}`` for the count fields.  Raises on every rank:
    the rank whose ``check`` raised re-raises that error, the others a ``RuntimeError`` naming it; on a
    disagreement every rank raises a ``ValueError`` naming the field and each rank's value.
    """
    error, shared, local_counts = None, {}, {}
    try:
        shared, local_counts = check(), counts()
    except (TypeError, ValueError) as exc:
        error = exc
    names = sorted(shared) if error is None else []
    count_names = sorted(local_counts) if error is None else []
    # the layout of the vector must not depend on the arguments: a fixed length, padded with zeros
    values = [1.0 if error is not None else 0.0, float(len(names)), float(len(count_names))]
    values += [float(shared[n]) for n in names] + [float(local_counts[n]) for n in count_names]
    width = 64
    if len(values) > width:
        raise ValueError(f"{what}: too many metadata fields ({len(values)} > {width})")
    mine = torch.zeros(width, dtype=torch.float64, device=device)
    mine[:len(values)] = torch.tensor(values, dtype=torch.float64)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    table = torch.stack(gathered).cpu().tolist()
    failed = [r for r, row in enumerate(table) if row[0]]
    if failed:
        if error is not None:
            raise error
        raise RuntimeError(f"{what}: rank(s) {failed} of the group rejected their arguments (see their error)")
    if any(row[1:3] != table[0][1:3] for row in table):
        raise ValueError(f"{what}: ranks passed different optional arguments (metadata layouts "
                         f"{[tuple(int(v) for v in row[1:3]) for row in table]})")
    for i, name in enumerate(names):
        column = [row[3 + i] for row in table]
        if any(v != column[0] for v in column):
            shown = ", ".join(f"rank {r}: {_shown(v)}" for r, v in enumerate(column))
            raise ValueError(f"{what}: ranks disagree on {name} ({shown}); every rank must pass the same")
    start = 3 + len(names)
    return {name: [int(row[start + i]) for row in table] for i, name in enumerate(count_names)}


def _shown(value: float):
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True)
class ShardPlan:
    """Every rank's token counts for the calls of one run, agreed once (:func:`~baton_fast.distributed.agree_shards`,
    or :class:`~baton_fast.distributed.dit.SequenceSharding` in ``dit.prepare``).

    Attributes:
        q_lengths, k_lengths: queries and keys of the shard of each rank of the group, in rank order.
    """

    q_lengths: tuple
    k_lengths: tuple

    def counts(self, rank: int, n_q: Optional[int], n_k: int) -> dict:
        """``{"nq": [...], "nk": [...]}`` as :func:`agree` returns them, after checking (locally) that this rank's
        shard holds the planned ``n_q`` queries (None: not checked, replicated queries) and ``n_k`` keys."""
        for name, planned, got in (("queries", self.q_lengths, n_q), ("keys", self.k_lengths, n_k)):
            if got is not None and (rank >= len(planned) or planned[rank] != got):
                raise ValueError(f"shards: rank {rank} holds {got} {name}, but the plan agreed on {list(planned)} "
                                 f"(one entry per rank); agree again (agree_shards) when the shapes change")
        return {"nq": list(self.q_lengths), "nk": list(self.k_lengths)}


def collective_device(group: Optional[dist.ProcessGroup]) -> torch.device:
    """Where the tensors of ``group``'s collectives live: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
