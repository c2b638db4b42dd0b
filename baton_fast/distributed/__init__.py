"""Sequence parallelism on ``torch.distributed``: Ulysses, ring and hybrid ``rope_attention`` (docs/distributed.md)."""
from .agreement import ShardPlan
from .attention import (agree_shards, hybrid_attention, merge_partials, ring_attention, sharded_keys_attention,
                        ulysses_attention)
from .mesh import SequenceMesh, init_sequence_mesh, mesh_degrees, shard_lengths, shard_range

__all__ = ["ulysses_attention", "ring_attention", "hybrid_attention", "sharded_keys_attention", "merge_partials",
           "agree_shards", "ShardPlan", "SequenceMesh",
           "init_sequence_mesh", "mesh_degrees", "shard_lengths", "shard_range"]
