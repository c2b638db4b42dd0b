"""The dual-branch DiT sharded over a :class:`SequenceMesh`: video tokens and video plan tokens split.

Build with ``dit.prepare(..., mesh=mesh)`` (:meth:`~baton_fast.model.dit.DualBranchDiT.prepare`); the
video :class:`~baton_fast.model.dit.BranchGeometry` then carries a :class:`SequenceSharding` and holds
only this rank's coordinates, and the plan keys/values of every block are computed and cached for this
rank's plan tokens only (``1 / degree`` of the cache).  Per evaluation:

- video self-attention: :func:`hybrid_attention` over the mesh;
- the video plan cross-attention: on a Ulysses-only mesh the plan keys/values are cached split by heads
  (every plan token of this rank's ``H/U`` heads, exchanged once per run by :meth:`SequenceSharding.cache_plan`),
  so a step moves only the queries and the output; on a mesh with a ring, :func:`hybrid_attention`;
- the audio branch (short: ~157 tokens), the text and the timestep are replicated: every rank computes
  them alike; the audio queries' cross-modal attention to the video tokens is
  :func:`sharded_keys_attention` (partial outputs merged in rank order, the same on every rank);
- the video queries' text and cross-modal attentions read replicated keys: local, unchanged;
- the head's output tokens are all-gathered, so every rank returns the whole velocity.

Every transfer is differentiable: a backward of ``loss / world`` on each rank, then the gradients of the
replicated inputs and weights summed over the ranks, gives one process's gradients (docs/distributed.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

import baton_fast
from baton_fast.model.attention import SelfAttention, split_heads

from .agreement import ShardPlan, agree, collective_device
from .attention import _gather_tokens, _heads_to_sequence, _sequence_to_heads, hybrid_attention, sharded_keys_attention
from .mesh import SequenceMesh, shard_lengths

__all__ = ["TokenShard", "SequenceSharding", "ShardedSelfAttention"]


@dataclass(frozen=True)
class TokenShard:
    """This rank's contiguous part ``[start, stop)`` of ``sum(lengths)`` tokens split over a mesh."""

    mesh: SequenceMesh
    lengths: tuple

    @classmethod
    def split(cls, mesh: SequenceMesh, tokens: int) -> "TokenShard":
        return cls(mesh, tuple(shard_lengths(tokens, mesh.size)))

    @property
    def start(self) -> int:
        return sum(self.lengths[:self.mesh.rank])

    @property
    def stop(self) -> int:
        return self.start + self.lengths[self.mesh.rank]

    def take(self, x: Optional[torch.Tensor], dim: int = 1) -> Optional[torch.Tensor]:
        """This rank's tokens of ``x`` (tokens along ``dim``); None stays None."""
        return None if x is None else x.narrow(dim, self.start, self.stop - self.start)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``x [B, n_r, C]``, concatenated in shard order: ``[B, sum(lengths), C]``."""
        B, _, C = x.shape
        flat = _gather_tokens(x.reshape(B, -1), [n * C for n in self.lengths], self.mesh.group)
        return flat.reshape(B, sum(self.lengths), C)


@dataclass(frozen=True)
class SequenceSharding:
    """How one sampling run splits the video branch: its tokens and its plan tokens, over ``mesh``.

    Built in ``prepare``, where the ranks agree once on the run's token counts (:meth:`for_run`); every
    attention of the run then passes the resulting :class:`ShardPlan` (``shards=``), so no evaluation runs
    an agreement collective (on CUDA: no device-to-host read per call)."""

    video: TokenShard
    plan: Optional[TokenShard]

    @classmethod
    def for_run(cls, mesh: SequenceMesh, video_tokens: int, plan_tokens: Optional[int]) -> "SequenceSharding":
        """Every rank must call it (a collective): raises on every rank when the ranks' token counts differ."""
        if not isinstance(mesh, SequenceMesh):
            raise TypeError(f"mesh: expected a SequenceMesh (init_sequence_mesh), got {type(mesh).__name__}")
        run = dict(mesh_size=mesh.size, video_tokens=video_tokens,
                   plan_tokens=-1 if plan_tokens is None else plan_tokens)
        agree(lambda: run, dict, mesh.group, collective_device(mesh.group), "sequence-parallel run")
        plan = TokenShard.split(mesh, plan_tokens) if plan_tokens is not None else None
        return cls(TokenShard.split(mesh, video_tokens), plan)

    @property
    def video_shards(self) -> ShardPlan:
        """The agreed shards of the video self-attention (and of the audio -> video keys)."""
        return ShardPlan(self.video.lengths, self.video.lengths)

    @property
    def mesh(self) -> SequenceMesh:
        return self.video.mesh

    def geometry(self, geo):
        """This rank's part of the video :class:`BranchGeometry` (its coordinates), carrying this sharding."""
        return dataclasses.replace(geo, coords=self.video.take(geo.coords),
                                   plan_coords=self.plan.take(geo.plan_coords) if self.plan else None, shard=self)

    # ------------------------------------------------------------- attentions (see the module docstring)
    def self_attention(self, module: SelfAttention) -> "ShardedSelfAttention":
        return ShardedSelfAttention(module, self.mesh, self.video_shards)

    def cache_plan(self, kv):
        """One block's plan ``(k rotated, v)`` of this rank's plan tokens ``[B, p_r, H, D]`` as the plan attention
        reads them: on a Ulysses-only mesh every plan token of this rank's heads ``[B, P, H/U, D]`` (one
        all-to-all per run instead of one per step), else unchanged."""
        if self.mesh.ring_degree > 1:
            return kv
        heads, degree = kv[0].shape[2], self.mesh.ulysses_degree
        if heads % degree:
            raise ValueError(f"mesh: the Ulysses degree {degree} must divide the plan attention's {heads} heads")
        return tuple(_sequence_to_heads(x, list(self.plan.lengths), self.mesh.ulysses_rank, self.mesh.ulysses)
                     for x in kv)

    def plan_attention(self, q, k, v, **rope_attention_kwargs):
        """This rank's video queries (rotated) over the plan keys/values of :meth:`cache_plan`."""
        if self.mesh.ring_degree > 1:
            return hybrid_attention(q, k, v, mesh=self.mesh, shards=ShardPlan(self.video.lengths, self.plan.lengths),
                                    **rope_attention_kwargs)
        lens, group = list(self.video.lengths), self.mesh.ulysses
        rank = self.mesh.ulysses_rank
        out = baton_fast.rope_attention(_sequence_to_heads(q, lens, rank, group), k, v, **rope_attention_kwargs)
        return _heads_to_sequence(out, lens, rank, group)

    def keys_attention(self, q, k, v, q_coords=None, k_coords=None, table=None, **rope_attention_kwargs):
        """Replicated queries over the sharded video keys (the audio branch's cross-modal attention)."""
        return sharded_keys_attention(q, k, v, q_coords, k_coords, table, group=self.mesh.group,
                                      shards=self.video_shards, **rope_attention_kwargs)


class ShardedSelfAttention:
    """A :class:`SelfAttention` module's forward with the attention over the mesh (same arguments, same
    weights): the fused QK RMSNorm + RoPE pre-pass on this rank's tokens, then :func:`hybrid_attention`
    on the rotated shards (layout groups passed as they are: each rank's tokens keep their masks)."""

    def __init__(self, module: SelfAttention, mesh: SequenceMesh, shards: ShardPlan):
        self.module, self.mesh, self.shards = module, mesh, shards

    def __call__(self, x: torch.Tensor, coords: torch.Tensor, table, q_groups=None, k_groups=None) -> torch.Tensor:
        m, h = self.module, self.module.num_heads
        q, k = baton_fast.qk_rmsnorm_rope(split_heads(m.q(x), h), split_heads(m.k(x), h), coords, coords, table,
                                          q_weight=m.norm_q.weight, k_weight=m.norm_k.weight, eps=m.eps)
        out = hybrid_attention(q, k, split_heads(m.v(x), h), rotate_q=False, rotate_k=False, mesh=self.mesh,
                               q_groups=q_groups, k_groups=k_groups, shards=self.shards)
        return m.o(out.flatten(2))

