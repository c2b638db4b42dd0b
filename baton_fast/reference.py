"""Plain-PyTorch reference path: the numerics oracle and the CPU fallback.

Runs in any floating dtype, float64 included.  Angles are computed in float32 (in
float64 when the inputs are float64); rotation, scores, softmax and the weighted sum
run in the inputs' dtype, as a plain PyTorch implementation would.
"""
from __future__ import annotations

import math

import torch

from .rope import RopeTable

__all__ = ["rope_angles", "rope_cos_sin", "rotation_factors", "rotate", "apply_rope", "rope_attention",
           "sdpa_rope_attention", "rms_norm", "fused_rms_norm", "rmsnorm_rope", "qk_rmsnorm_rope"]


def rope_angles(coords: torch.Tensor, table: RopeTable, dtype=torch.float32) -> torch.Tensor:
    """``phi[b, n, h, j] = coords[b, n, axes[h, j]] * freqs[h, j]``: ``[B, N, Ht, D/2]`` in ``dtype``."""
    axes = table.axes.to(coords.device).long()
    c = coords.to(dtype)[:, :, axes]  # [B, N, Ht, D/2]
    return c * table.freqs.to(device=coords.device, dtype=dtype)


def rope_cos_sin(coords: torch.Tensor, table: RopeTable, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation factors over the whole head dim, ``[B or 1, N, Ht, D]`` in ``dtype``: ``cos phi`` on both dims of
    a pair and ``sin phi`` signed ``(-, +)`` (first, second dim of the pair), so that :func:`rotate` is two
    products of contiguous tensors.  Angles in float32 (float64 for float64)."""
    angle_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    phi = rope_angles(coords, table, angle_dtype)
    cos, sin = phi.cos().to(dtype), phi.sin().to(dtype)
    if table.interleaved:
        return torch.stack([cos, cos], dim=-1).flatten(-2), torch.stack([-sin, sin], dim=-1).flatten(-2)
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def rotation_factors(coords: torch.Tensor, table: RopeTable, dtype):
    """What :func:`rotate` multiplies ``x`` by, for coordinates ``[B or 1, N, A]`` in ``x``'s ``dtype``: with
    interleaved pairs in float32 / float64, the unit complex numbers ``exp(i phi)`` ``[B or 1, N, Ht, D/2]``
    (complex64 / complex128: each pair turns in one complex product, four times faster on a CPU than the products
    of :func:`rope_cos_sin`'s full-width factors, and half their size); otherwise, and under ``torch.compile``
    (whose tracer does not take complex views; inductor fuses the products anyway), :func:`rope_cos_sin`'s pair."""
    if table.interleaved and dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        phi = rope_angles(coords, table, dtype)
        return torch.complex(phi.cos(), phi.sin())
    return rope_cos_sin(coords, table, dtype)


def _as_pairs(x: torch.Tensor) -> torch.Tensor:
    """``x [..., D]`` as complex ``[..., D/2]`` (pair ``(x1, x2)`` -> ``x1 + i x2``), a view where the strides allow."""
    pairs = x.unflatten(-1, (-1, 2))
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        pairs = pairs.contiguous()
    return torch.view_as_complex(pairs)


def rotate(x: torch.Tensor, factors, interleaved: bool) -> torch.Tensor:
    """Turn the pairs ``(x1, x2)`` of ``x [B, N, H, D]`` to ``(x1 cos - x2 sin, x2 cos + x1 sin)``, given
    :func:`rotation_factors`: a complex product per pair, or ``x * cos + swap(x) * sin`` with ``swap``
    exchanging the dims of each pair (``factors = (cos, sin)`` of :func:`rope_cos_sin`)."""
    if isinstance(factors, torch.Tensor):
        return torch.view_as_real(_as_pairs(x) * factors).flatten(-2)
    cos, sin = factors
    if interleaved:
        swapped = torch.stack([x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)  # (flip is slower on CPU)
    else:
        x1, x2 = x.chunk(2, dim=-1)
        swapped = torch.cat([x2, x1], dim=-1)
    return x * cos + swapped * sin


def apply_rope(x: torch.Tensor, coords: torch.Tensor, table: RopeTable) -> torch.Tensor:
    """Rotate ``x [B, N, H, D]`` by coordinates ``[B or 1, N, A]`` (float32); returns ``x``'s dtype and shape."""
    return rotate(x, rotation_factors(coords, table, x.dtype), table.interleaved)


def _rotated(q, k, q_coords, k_coords, table, k_table, rotate_q, rotate_k):
    """q and k rotated where asked (``k_table`` defaults to ``table``)."""
    if rotate_q:
        q = apply_rope(q, q_coords, table)
    if rotate_k:
        k = apply_rope(k, k_coords, table if k_table is None else k_table)
    return q, k


def _valid_keys(k_lens, n_k, device):
    """bool ``[B, 1, 1, Nk]``: key ``j`` of batch ``b`` is valid when ``j < k_lens[b]``."""
    return (torch.arange(n_k, device=device)[None, :] < k_lens.to(device)[:, None])[:, None, None, :]


def rope_attention(q, k, v, q_coords=None, k_coords=None, table: RopeTable | None = None, *,
                   k_table: RopeTable | None = None,
                   rotate_q: bool = True, rotate_k: bool = True, k_lens=None, scale=None, return_lse=False,
                   q_groups=None, k_groups=None, block_mask=None):
    """Attention with coordinate RoPE, in plain PyTorch.

    Args:
        q: ``[B, Nq, H, D]``; k, v: ``[B, Nk, Hk, D]`` with ``H % Hk == 0``.
        q_coords / k_coords: float32 ``[B or 1, N, A]`` (None for a side that is not rotated).
        table / k_table: query-side table and key-side table (``k_table`` defaults to ``table``).
        k_lens: optional int ``[B]``: keys ``>= k_lens[b]`` are masked.
        q_groups / k_groups: optional integer bitmasks ``[B or 1, N]`` (SpA2V layout attention): query ``i``
            attends to key ``j`` only when ``q_groups[i] & k_groups[j] != 0``.
        block_mask: optional :class:`~baton_fast.BlockMask`: only the token pairs of ``block_mask.to_dense()``.
    Returns:
        ``out [B, Nq, H, D]`` in q's dtype; with ``return_lse`` also ``lse`` float32 ``[B, H, Nq]``
        (natural log; ``-inf`` and a zero output where every key is masked).
    """
    q, k = _rotated(q, k, q_coords, k_coords, table, k_table, rotate_q, rotate_k)
    B, Nq, H, D = q.shape
    Nk, Hk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if Hk != H:
        k = k.repeat_interleave(H // Hk, dim=2)
        v = v.repeat_interleave(H // Hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if k_lens is not None:
        s = s.masked_fill(~_valid_keys(k_lens, Nk, q.device), float("-inf"))
    if q_groups is not None:
        allowed = (q_groups.to(q.device).long()[:, :, None] & k_groups.to(q.device).long()[:, None, :]) != 0
        s = s.masked_fill(~allowed[:, None], float("-inf"))
    if block_mask is not None:
        s = s.masked_fill(~block_mask.to_dense().to(q.device), float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    out = torch.einsum("bhqk,bkhd->bqhd", p / torch.where(l > 0, l, torch.ones_like(l)), v)
    if not return_lse:
        return out
    lse = (m + torch.log(l)).squeeze(-1).float()  # log(0) = -inf for fully masked rows
    return out, lse


def sdpa_rope_attention(q, k, v, q_coords=None, k_coords=None, table: RopeTable | None = None, *,
                        k_table: RopeTable | None = None, rotate_q: bool = True, rotate_k: bool = True,
                        k_lens=None, scale=None):
    """The CPU fallback: :func:`rope_attention` without LSE or layout masks, through PyTorch's
    ``scaled_dot_product_attention`` (no ``[Nq, Nk]`` score matrix kept per head).  Same arguments."""
    q, k = _rotated(q, k, q_coords, k_coords, table, k_table, rotate_q, rotate_k)
    mask = _valid_keys(k_lens, k.shape[1], q.device) if k_lens is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale,
        enable_gqa=k.shape[2] != q.shape[2]).transpose(1, 2)
    if k_lens is None:
        return out
    # rows with no key: zeros (SDPA would give NaN), written contiguous in the same pass
    has_keys = (k_lens.to(q.device) > 0)[:, None, None, None]
    return torch.where(has_keys, out, out.new_zeros(()), out=torch.empty(out.shape, dtype=out.dtype, device=out.device))


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, across_heads: bool) -> torch.Tensor:
    """RMSNorm of ``x [B, N, H, D]`` per head (weight ``[D]``) or across the inner dim (weight ``[H*D]``)."""
    B, N, H, D = x.shape
    y = x.reshape(B, N, H * D) if across_heads else x
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.reshape(B, N, H, D)


def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, across_heads: bool) -> torch.Tensor:
    """:func:`rms_norm` through torch's fused ``rms_norm`` kernel (the CPU fallback of the ops): the same values
    in fp32 and fp64, accumulated at higher precision in 16-bit dtypes."""
    B, N, H, D = x.shape
    dims = (H * D,) if across_heads else (D,)
    y = x.reshape(B, N, H * D) if across_heads else x
    weight = weight.to(x.dtype) if weight is not None else None
    return torch.nn.functional.rms_norm(y, dims, weight, eps).reshape(B, N, H, D)


def rmsnorm_rope(x: torch.Tensor, coords=None, table: RopeTable | None = None, *, weight=None, eps: float = 1e-6,
                 across_heads: bool = True) -> torch.Tensor:
    """RMSNorm of ``x [B, N, H, D]`` then RoPE (none without a table); returns ``x``'s dtype and shape."""
    x = rms_norm(x, weight, eps, across_heads)
    return x if table is None else apply_rope(x, coords, table)


def qk_rmsnorm_rope(q, k, q_coords=None, k_coords=None, table: RopeTable | None = None, *, q_weight=None,
                    k_weight=None, k_table=None, eps: float = 1e-6, across_heads: bool = True):
    """RMSNorm then RoPE on q ``[B, N, H, D]`` and k ``[B, N, Hk, D]`` (RMSNorm alone without tables); returns
    ``(q_rot, k_rot)`` in their dtypes."""
    k_table = table if k_table is None else k_table
    return (rmsnorm_rope(q, q_coords, table, weight=q_weight, eps=eps, across_heads=across_heads),
            rmsnorm_rope(k, k_coords, k_table, weight=k_weight, eps=eps, across_heads=across_heads))
