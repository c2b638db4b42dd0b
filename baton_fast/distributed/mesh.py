"""The sequence-parallel process mesh: which ranks trade heads (Ulysses) and which pass keys around (ring).

A mesh of ``ring_degree x ulysses_degree`` ranks holds a sequence in ``ring_degree * ulysses_degree``
contiguous shards, shard ``i`` on the rank at mesh position ``(i // ulysses_degree, i % ulysses_degree)``
(rank ``i`` of the mesh's group).  The ranks of one Ulysses group hold consecutive shards, so after their
all-to-all each holds one contiguous *ring block* of the sequence, for ``H / ulysses_degree`` heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

__all__ = ["SequenceMesh", "init_sequence_mesh", "mesh_degrees", "shard_lengths", "shard_range"]


@dataclass(frozen=True)
class SequenceMesh:
    """Process groups of a sequence-parallel mesh.

    Attributes:
        group: every rank of the mesh; its rank order is the order of the sequence shards.
        ulysses: this rank's Ulysses group (consecutive shards; all-to-all over heads), None for degree 1.
        ring: this rank's ring group (one rank per ring block; point-to-point), None for degree 1.
        ulysses_degree, ring_degree: the sizes of those groups.
    """

    group: Optional[dist.ProcessGroup]
    ulysses: Optional[dist.ProcessGroup]
    ring: Optional[dist.ProcessGroup]
    ulysses_degree: int
    ring_degree: int

    @property
    def size(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def rank(self) -> int:
        """This rank's shard index (its rank in ``group``)."""
        return dist.get_rank(self.group)

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses_degree

    @property
    def ring_rank(self) -> int:
        return self.rank // self.ulysses_degree

    def ring_peer(self, ring_rank: int) -> int:
        """Global rank of the member ``ring_rank`` of this rank's ring group (for point-to-point ops)."""
        return dist.get_global_rank(self.ring, ring_rank)

    @classmethod
    def ulysses_only(cls, group: Optional[dist.ProcessGroup] = None) -> "SequenceMesh":
        """All ranks of ``group`` (default: the world) in one Ulysses group."""
        group = group or dist.group.WORLD
        return cls(group, group, None, dist.get_world_size(group), 1)

    @classmethod
    def ring_only(cls, group: Optional[dist.ProcessGroup] = None) -> "SequenceMesh":
        """All ranks of ``group`` (default: the world) in one ring."""
        group = group or dist.group.WORLD
        return cls(group, None, group, 1, dist.get_world_size(group))


def init_sequence_mesh(ring_degree: int, ulysses_degree: int) -> SequenceMesh:
    """A ``ring_degree x ulysses_degree`` mesh over the default (world) group.  Every rank must call it.

    Raises ``ValueError`` on every rank when the degrees do not multiply to the world size."""
    world = dist.get_world_size()
    for name, degree in (("ring_degree", ring_degree), ("ulysses_degree", ulysses_degree)):
        if not isinstance(degree, int) or degree < 1:
            raise ValueError(f"{name}: expected a positive integer, got {degree!r}")
    if ring_degree * ulysses_degree != world:
        raise ValueError(f"ring_degree x ulysses_degree: expected the world size {world}, got "
                         f"{ring_degree} x {ulysses_degree} = {ring_degree * ulysses_degree}")
    if ring_degree == 1:
        return SequenceMesh.ulysses_only()
    if ulysses_degree == 1:
        return SequenceMesh.ring_only()
    rank = dist.get_rank()
    ulysses = ring = None
    # every rank creates every group, in the same order (new_group is collective)
    for r in range(ring_degree):
        group = dist.new_group([r * ulysses_degree + u for u in range(ulysses_degree)])
        ulysses = group if rank // ulysses_degree == r else ulysses
    for u in range(ulysses_degree):
        group = dist.new_group([r * ulysses_degree + u for r in range(ring_degree)])
        ring = group if rank % ulysses_degree == u else ring
    return SequenceMesh(dist.group.WORLD, ulysses, ring, ulysses_degree, ring_degree)


def mesh_degrees(degree: int, heads: int) -> tuple[int, int]:
    """``(ring_degree, ulysses_degree)`` for ``degree`` ranks and ``heads`` attention heads: as much Ulysses as
    the heads allow (the greatest common divisor), the rest as a ring."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree: expected a positive integer, got {degree!r}")
    ulysses = math.gcd(degree, heads)
    return degree // ulysses, ulysses


def shard_lengths(n: int, parts: int) -> list[int]:
    """Tokens per shard when ``n`` tokens are split in ``parts`` contiguous shards: the first ``n % parts``
    shards get one more (``shard_lengths(17, 2) == [9, 8]``)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def shard_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """``(start, stop)`` of shard ``index`` of :func:`shard_lengths`."""
    lens = shard_lengths(n, parts)
    start = sum(lens[:index])
    return start, start + lens[index]
