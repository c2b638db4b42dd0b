"""``rope_attention(..., block_mask=...)`` as a ``torch.library`` op, with its backward.

The op ``baton_fast::block_sparse_rope_attention`` takes the checked arguments of ``baton_fast::rope_attention``
(see :mod:`baton_fast.ops`) and a :class:`~baton_fast.block_mask.BlockMask` as its six tensors and two block
sizes.  On the Triton backend the fused kernel walks the mask's visit lists (``kernels/rope_attention.py``,
``HAS_BLOCK_MASK``: partial blocks with their token tile, then full blocks without one); on the reference backend
the sides are rotated by :mod:`baton_fast.reference` and :func:`baton_fast.block_sparse.block_sparse_attention`
visits the listed blocks.

Backward: on the Triton backend the backward kernels walk the lists (:func:`baton_fast.autograd.triton_backward`;
dK/dV over the transposed lists); on the reference backend, by ``torch.func.vjp`` of the reference rotation and
the dense masked attention (:func:`baton_fast.block_sparse.masked_attention` under ``block_mask.to_dense()``, in
the inputs' dtype): a dense recompute, O(Nq*Nk) memory per head.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .block_mask import BlockMask
from .block_sparse import block_sparse_attention, masked_attention
from .rope import RopeTable

__all__ = ["block_sparse_rope_attention"]


def _mask_tensors(block_mask: BlockMask) -> list:
    return [block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.kv_mask_ids, block_mask.full_kv_num_blocks,
            block_mask.full_kv_indices, block_mask.partial_masks]


def _rebuilt(tensors, q_len, k_len, block_q, block_k) -> BlockMask:
    return BlockMask(*tensors, q_len=q_len, k_len=k_len, block_q=block_q, block_k=block_k)


def _on_triton(q, k) -> bool:
    """Whether the fused kernel runs (``baton_fast::rope_attention``'s own dispatch rule)."""
    from . import ops

    return bool(ops._attention_on_triton(q) and q.numel() and k.shape[1])


def _tables(q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved):
    return (RopeTable.trusted(q_freqs, q_axes, interleaved, q_coords.shape[2]),
            RopeTable.trusted(k_freqs, k_axes, interleaved, k_coords.shape[2]))


@torch.library.custom_op("baton_fast::block_sparse_rope_attention", mutates_args=())
def _block_sparse_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_coords: torch.Tensor,
                     k_coords: torch.Tensor, q_freqs: torch.Tensor, q_axes: torch.Tensor, k_freqs: torch.Tensor,
                     k_axes: torch.Tensor, interleaved: bool, rotate_q: bool, rotate_k: bool,
                     k_lens: Optional[torch.Tensor], scale: float, return_lse: bool, mask: list[torch.Tensor],
                     block_q: int, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    block_mask = _rebuilt(mask, q.shape[1], k.shape[1], block_q, block_k)
    if _on_triton(q, k):
        from .kernels.rope_attention import rope_attention_fwd
        out, lse = rope_attention_fwd(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved,
                                      rotate_q=rotate_q, rotate_k=rotate_k, k_lens=k_lens, scale=scale,
                                      return_lse=return_lse, block_mask=block_mask)
    else:
        qt, kt = _tables(q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved)
        q, k = reference._rotated(q, k, q_coords, k_coords, qt, kt, rotate_q, rotate_k)
        out, lse = block_sparse_attention(q, k, v, block_mask, scale=scale, k_lens=k_lens, return_lse=True)
        out = out.to(q.dtype).contiguous()
    return out, (lse.contiguous() if return_lse else q.new_empty((0,), dtype=torch.float32))


@_block_sparse_op.register_fake
def _(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q, rotate_k, k_lens, scale,
      return_lse, mask, block_q, block_k):
    B, n_q, H, _ = q.shape
    lse = q.new_empty((B, H, n_q) if return_lse else (0,), dtype=torch.float32)
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


def _setup_context(ctx, inputs, output):
    (q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q, rotate_k, k_lens, scale,
     return_lse, mask, block_q, block_k) = inputs
    ctx.save_for_backward(q, k, v, *output, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, k_lens, *mask)
    ctx.flags = (interleaved, rotate_q, rotate_k, scale, return_lse, block_q, block_k, _on_triton(q, k))


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, k_lens, *mask = ctx.saved_tensors
    interleaved, rotate_q, rotate_k, scale, return_lse, block_q, block_k, on_triton = ctx.flags
    if on_triton:
        from .autograd import triton_backward

        grads = triton_backward(dout, dlse if return_lse else None, q, k, v, out, lse, q_coords, k_coords, q_freqs,
                                q_axes, k_freqs, k_axes, interleaved, rotate_q, rotate_k, k_lens, scale, mask=mask,
                                block_q=block_q, block_k=block_k)
        return tuple(grads) + (None,) * 12 + ([None] * len(mask), None, None)
    token_mask = _rebuilt(mask, q.shape[1], k.shape[1], block_q, block_k).to_dense()
    qt, kt = _tables(q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved)

    def forward(q, k, v):
        q_rot, k_rot = reference._rotated(q, k, q_coords, k_coords, qt, kt, rotate_q, rotate_k)
        out, lse = masked_attention(q_rot, k_rot, v, token_mask, scale=scale, k_lens=k_lens, return_lse=True)
        if not return_lse:
            return out.to(q.dtype)
        return out.to(q.dtype), torch.where(torch.isfinite(lse), lse, 0.0)  # no gradient through -inf rows

    _, vjp = torch.func.vjp(forward, q, k, v)
    grads = vjp(dout.to(q.dtype) if not return_lse else (dout.to(q.dtype), dlse))
    return tuple(grads) + (None,) * 12 + ([None] * len(mask), None, None)


torch.library.register_autograd("baton_fast::block_sparse_rope_attention", _backward, setup_context=_setup_context)


def block_sparse_rope_attention(args: tuple, return_lse: bool, block_mask: BlockMask):
    """Run the op on ``rope_attention``'s checked leading arguments ``args`` (:func:`baton_fast.ops._attention_args`)
    and a mask already checked against them (sizes and device); returns ``(out, lse)``."""
    return _block_sparse_op(*args, return_lse, _mask_tensors(block_mask), block_mask.block_q, block_mask.block_k)
