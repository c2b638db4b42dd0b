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
from baton_fast.quant import context_scheme
from baton_fast.rope import RopeTable

__all__ = ["split_heads", "KeyValue", "SelfAttention", "prepass_quant", "CrossAttention", "FeedForward"]


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
    """Self-attention with coordinate RoPE: the fused QK RMSNorm + RoPE pre-pass rotates (and, on quantised
    steps, quantises) q and k once, then ``rope_attention`` reads them already rotated."""

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

    def forward(self, x: torch.Tensor, coords: torch.Tensor, table: RopeTable, block_mask=None) -> torch.Tensor:
        """x ``[B, N, dim]``, coords float32 ``[1 or B, N, A]`` -> ``[B, N, dim]``; optional
        :class:`~baton_fast.BlockMask` built once per run (layout groups or a sliding-tile window, over the tokens
        in its order).  Under the sampler's quant schedule (:func:`baton_fast.quant.attention_quant`) an unmasked
        call quantises Q and K in the pre-pass (:func:`prepass_quant`)."""
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q, self.k, self.v))
        q, k = baton_fast.qk_rmsnorm_rope(q, k, coords, coords, table, q_weight=self.norm_q.weight,
                                          k_weight=self.norm_k.weight, eps=self.eps, check_values=False,
                                          **prepass_quant(block_mask is not None, q, k, v))
        sparse = {} if block_mask is None else {"block_mask": block_mask}
        out = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False, check_values=False, **sparse)
        return self.o(out.flatten(2))


def prepass_quant(masked: bool, *tensors: torch.Tensor) -> dict:
    """``{"quant": scheme}`` for a model attention's ``qk_rmsnorm_rope`` pre-pass, so that it quantises Q and K in
    the same pass: the :func:`~baton_fast.quant.attention_quant` context's scheme, for a call with no mask and no
    gradient through ``tensors`` (the projections it attends with), as ``rope_attention`` decides for its own
    inputs; ``{}`` (full precision) otherwise."""
    scheme = context_scheme(masked, *tensors)
    return {} if scheme is None else {"quant": scheme}


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

    def rotated_queries(self, q: torch.Tensor, coords: torch.Tensor, table: RopeTable, **quant):
        """The query projections ``q = split_heads(self.q(x)) [B, N, H, D]`` normalised (``norm_q``) and rotated by
        ``coords`` in one fused RMSNorm + RoPE pass, ``[B, N, H, D]``: the attention then reads both sides already
        rotated (``rope_attention``'s fast ``plain`` tiles).  ``quant``: :func:`prepass_quant`'s keywords (with a
        scheme the same pass quantises them: a :class:`~baton_fast.quant.QuantizedTensor`, the query side)."""
        return baton_fast.rmsnorm_rope(q, coords, table, weight=self.norm_q.weight, eps=self.norm_q.eps,
                                       check_values=False, **quant)

    def forward(self, x, k, v, q_coords, k_coords, table: RopeTable, **rope) -> torch.Tensor:
        """x ``[B, N, dim]``; k, v ``[B, M, H, D]``; returns ``[B, N, dim]``."""
        out = baton_fast.rope_attention(self.queries(x), k, v, q_coords, k_coords, table, **rope)
        return self.o(out.flatten(2))


class FeedForward(nn.Sequential):
    """Wan's FFN: Linear, tanh-GELU, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
