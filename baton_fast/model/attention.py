"""Attention modules shared by the planner towers and the DiT; every attention runs through baton-fast ops.

Tensors are ``[B, N, dim]`` between modules and ``[B, N, H, D]`` inside them.  Queries and keys are
RMS-normalised across the whole inner dim ``H*D`` (Wan's QK norm).  Coordinates are float32
``[1 or B, N, A]``; a side that is not rotated needs none (the ops take None for it).

:class:`SelfAttention` and :meth:`CrossAttention.rotated_queries` call the ops with ``check_values=False``:
their coordinates are those of a prepared run, checked once by ``DualBranchDiT.prepare``.
"""
from __future__ import annotations

import torch
from torch import nn

import baton_fast
from baton_fast.rope import RopeTable

__all__ = ["split_heads", "KeyValue", "SelfAttention", "CrossAttention", "FeedForward"]


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, N, H*D] -> [B, N, H, D]`` (a view)."""
    return x.unflatten(-1, (num_heads, -1))


class KeyValue(nn.Module):
    """Keys and values of a context ``[B, M, context_dim]``: ``k`` RMS-normalised, both ``[B, M, H, D]``."""

    def __init__(self, context_dim: int, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.k = nn.Linear(context_dim, dim)
        self.v = nn.Linear(context_dim, dim)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def projections(self, context: torch.Tensor):
        """Keys before their RMSNorm and values, ``[B, M, H, D]`` each (for a fused norm + RoPE pre-pass)."""
        return split_heads(self.k(context), self.num_heads), split_heads(self.v(context), self.num_heads)

    def forward(self, context: torch.Tensor):
        return (split_heads(self.norm_k(self.k(context)), self.num_heads),
                split_heads(self.v(context), self.num_heads))


class SelfAttention(nn.Module):
    """Self-attention with coordinate RoPE: the fused QK RMSNorm + RoPE pre-pass rotates q and k once,
    then ``rope_attention`` reads them already rotated."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.eps = eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)  # weights read by the fused pre-pass
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, coords: torch.Tensor, table: RopeTable, q_groups=None,
                k_groups=None, block_mask=None) -> torch.Tensor:
        """x ``[B, N, dim]``, coords float32 ``[1 or B, N, A]`` -> ``[B, N, dim]``; optional layout group
        bitmasks ``[1, N]`` (the same tensor for queries and keys) are passed to ``rope_attention``, or a
        :class:`~baton_fast.BlockMask` built once per run (sliding-tile windows: tokens in its order)."""
        h = self.num_heads
        q, k = baton_fast.qk_rmsnorm_rope(split_heads(self.q(x), h), split_heads(self.k(x), h), coords, coords, table,
                                          q_weight=self.norm_q.weight, k_weight=self.norm_k.weight, eps=self.eps,
                                          check_values=False)
        v = split_heads(self.v(x), h)
        if block_mask is not None:
            out = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False, block_mask=block_mask,
                                            check_values=False)
        elif q_groups is None:
            out = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False)
        else:
            out = attention_in_group_order(q, k, v, q_groups, k_groups)
        return self.o(out.flatten(2))


def attention_in_group_order(q, k, v, q_groups, k_groups):
    """Layout self-attention with the tokens sorted by group mask, so that the fused kernel meets whole
    tiles of one group and skips the tiles of pairs that share no bit.

    q, k already rotated ``[B, N, H, D]`` (positions live in the rotation, so the order of tokens does not
    change the result); ``q_groups is k_groups``, int64 ``[1, N]``.  Row-major latent order mixes
    background and object tokens in nearly every tile (no tile skipped); sorted, each group is contiguous.
    """
    if k_groups is not q_groups or q_groups.shape[0] != 1:
        raise ValueError("q_groups, k_groups: expected one [1, N] mask shared by queries and keys")
    order = torch.argsort(q_groups[0], stable=True)
    groups = q_groups[:, order]
    out = baton_fast.rope_attention(q[:, order], k[:, order], v[:, order], rotate_q=False, rotate_k=False,
                                    q_groups=groups, k_groups=groups)
    return torch.empty_like(out).index_copy_(1, order, out)


class CrossAttention(nn.Module):
    """Queries from ``x [B, N, dim]`` attend to keys/values from ``kv`` (call ``self.kv(context)``, or pass
    cached ones).  RoPE flags, key tables and key lengths are forwarded to ``rope_attention``."""

    def __init__(self, dim: int, num_heads: int, context_dim: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.kv = KeyValue(context_dim, dim, num_heads, eps)
        self.o = nn.Linear(dim, dim)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(self.norm_q(self.q(x)), self.num_heads)

    def rotated_queries(self, x: torch.Tensor, coords: torch.Tensor, table: RopeTable) -> torch.Tensor:
        """:meth:`queries` rotated by ``coords`` in one fused RMSNorm + RoPE pass, ``[B, N, H, D]``: the attention
        then reads both sides already rotated (``rope_attention``'s fast ``plain`` tiles)."""
        return baton_fast.rmsnorm_rope(split_heads(self.q(x), self.num_heads), coords, table,
                                       weight=self.norm_q.weight, eps=self.norm_q.eps, check_values=False)

    def forward(self, x, k, v, q_coords, k_coords, table: RopeTable, **rope) -> torch.Tensor:
        """x ``[B, N, dim]``; k, v ``[B, M, H, D]``; returns ``[B, N, dim]``."""
        out = baton_fast.rope_attention(self.queries(x), k, v, q_coords, k_coords, table, **rope)
        return self.o(out.flatten(2))


class FeedForward(nn.Sequential):
    """Wan's FFN: Linear, tanh-GELU, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
