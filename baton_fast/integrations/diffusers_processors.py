"""Attention processors for diffusers' LTX-2 and Wan transformers, built on baton-fast ops.

A processor is a small stateless class with diffusers' ``__call__(attn, hidden_states, ...)``
signature; the attention module keeps owning the weights.  Every processor does:

1. the module's own Q/K/V projections (``[B, N, H*D]``);
2. QK RMSNorm across the inner dim fused with RoPE in one pass per tensor
   (:func:`baton_fast.qk_rmsnorm_rope`), the rotation computed from coordinates
   (:class:`RotaryCoords`, handed to every layer by the patched rope modules) — or, when a
   layer is given diffusers' precomputed ``(cos, sin)`` tensors, the module's own RMSNorm and
   diffusers' rotation of those tensors (the fallback path);
3. attention of the rotated Q, K with :func:`baton_fast.rope_attention` (``rotate_q=False``,
   ``rotate_k=False``): K is rotated once per layer, not once per query block, and the text
   padding arrives as key lengths ``k_lens`` ``[B]``.  An additive float mask (e.g. LTX-2's
   ``video_self_attention_mask``) cannot be expressed as key lengths: those calls go through
   diffusers' own ``dispatch_attention_fn`` with the mask, on the already-rotated Q, K.

The ops are called with ``check_values=False``: the coordinates were checked once per forward by the
patched rope modules, and the key lengths are made by the text-mask hook; a layer reads nothing back
from the device.

Quantised attention: inside :func:`baton_fast.quant.attention_quant` (the context the sampler's hybrid schedule
sets), a layer that attends on baton-fast (no additive mask) without a gradient quantises Q and K in its
RMSNorm + RoPE pass (``qk_rmsnorm_rope(..., quant=scheme)``: norm, rotation and quantisation in one pass) and
hands the quantised tensors to ``rope_attention``; Wan's I2V image attention reuses that quantised query, its
keys normalised and quantised in one pass (``rmsnorm_rope(..., quant=scheme, smooth=True)``).  The layers on
diffusers' ``(cos, sin)`` fallback path quantise inside ``rope_attention`` as any call under the context does
(their rotation is diffusers' own pass, so quantising its result first would be the same pass moved).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx2 import apply_interleaved_rotary_emb, apply_split_rotary_emb
from diffusers.models.transformers.transformer_wan import _get_added_kv_projections, _get_qkv_projections

from ..ops import qk_rmsnorm_rope, rmsnorm_rope, rope_attention
from ..quant import context_scheme
from ..rope import RopeTable

__all__ = ["RotaryCoords", "FastLTX2AttnProcessor", "FastWanAttnProcessor", "is_key_lengths"]


class RotaryCoords(NamedTuple):
    """What a patched rope module hands every layer instead of per-token ``(cos, sin)``.

    Attributes:
        coords: float32 ``[B or 1, N, A]`` token coordinates (affine maps already applied).
        table: :class:`RopeTable` ``[1 or H, D/2]`` for the heads of the layers that read it.
    """

    coords: torch.Tensor
    table: RopeTable


def is_key_lengths(mask: Optional[torch.Tensor]) -> bool:
    """True for the integer ``[B]`` key lengths that the text-mask hook puts in place of a padding mask."""
    return mask is not None and mask.dim() == 1 and mask.dtype in (torch.int32, torch.int64)


def _prepass_scheme(mask, *projections: torch.Tensor) -> Optional[str]:
    """The quantisation scheme of a layer's QK pre-pass: the :func:`~baton_fast.quant.attention_quant` context's,
    for a layer that attends on baton-fast (``mask`` None or key lengths) with no gradient through its
    ``projections``, as ``rope_attention`` decides for its own inputs; None (full precision) otherwise."""
    return context_scheme(mask is not None and not is_key_lengths(mask), *projections)


def _rmsnorm_rope(attn, query, key, query_rope, key_rope, quant: Optional[str] = None):
    """RMSNorm across the inner dim (``attn.norm_q`` / ``attn.norm_k`` weights) then RoPE, one pass per tensor.

    query ``[B, Nq, H, D]``, key ``[B, Nk, H, D]``; ``query_rope`` / ``key_rope`` are both
    :class:`RotaryCoords` or both None (no rotation).  Returns ``(query, key)`` ``[B, N, H, D]``, or with
    ``quant`` (a scheme of :mod:`baton_fast.quant`) two :class:`~baton_fast.quant.QuantizedTensor` quantised in
    the same pass, for :func:`_attend`.
    """
    norm_q, norm_k = attn.norm_q, attn.norm_k
    eps = _eps(norm_q, query)
    norm = dict(q_weight=norm_q.weight, k_weight=norm_k.weight, eps=eps, across_heads=True, check_values=False,
                quant=quant)
    if query_rope is None:  # RMSNorm alone
        return qk_rmsnorm_rope(query, key, **norm)
    return qk_rmsnorm_rope(query, key, query_rope.coords, key_rope.coords, query_rope.table, k_table=key_rope.table,
                           **norm)


def _eps(norm: torch.nn.RMSNorm, x: torch.Tensor) -> float:
    """The epsilon a ``torch.nn.RMSNorm`` uses on ``x`` (its ``eps``, or the dtype's machine epsilon for None)."""
    return norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps


def _check_rope_pair(name: str, query_rope, key_rope) -> None:
    if isinstance(query_rope, RotaryCoords) != isinstance(key_rope, RotaryCoords):
        raise TypeError(f"{name}: expected the query and key rotary embeddings to be both coordinates "
                        f"(RotaryCoords) or both (cos, sin) tensors, got {type(query_rope).__name__} and "
                        f"{type(key_rope).__name__}")


def _attend(q, k, v, mask):
    """Attention of rotated ``q [B, Nq, H, D]`` over ``k, v [B, Nk, H, D]`` -> ``[B, Nq, H, D]``.

    ``q``, ``k``: tensors, or the quantised ones of :func:`_rmsnorm_rope` (then ``mask`` is not an additive mask).
    ``mask``: None, integer key lengths ``[B]``, or an additive float mask already shaped for
    ``dispatch_attention_fn`` (diffusers' path, for masks that are not key lengths).
    """
    if mask is None or is_key_lengths(mask):
        return rope_attention(q, k, v, rotate_q=False, rotate_k=False, k_lens=mask, check_values=False)
    return dispatch_attention_fn(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)


class FastLTX2AttnProcessor:
    """Processor for ``LTX2Attention`` (video / audio self-attention, text cross-attention, a2v / v2a).

    Same signature as diffusers' ``LTX2AudioVideoAttnProcessor`` and ``LTX2PerturbedAttnProcessor``
    (the perturbation arguments are only passed by blocks built with ``perturbed_attn=True``).
    ``query_rotary_emb`` / ``key_rotary_emb``: :class:`RotaryCoords`, diffusers' ``(cos, sin)``, or None.
    ``attention_mask``: None, key lengths ``[B]`` (from the text-mask hook) or an additive float mask.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 query_rotary_emb=None, key_rotary_emb=None, perturbation_mask=None, all_perturbed=None):
        batch_size = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if key_rotary_emb is None:
            key_rotary_emb = query_rotary_emb
        _check_rope_pair("LTX2Attention", query_rotary_emb, key_rotary_emb)
        gate_logits = attn.to_gate_logits(hidden_states) if attn.to_gate_logits is not None else None

        value = attn.to_v(context)
        if all_perturbed is None:
            all_perturbed = torch.all(perturbation_mask == 0) if perturbation_mask is not None else False
        if all_perturbed:  # spatio-temporal guidance: the values stand in for the attention
            hidden_states = value
        else:
            query, key = attn.to_q(hidden_states), attn.to_k(context)
            if query_rotary_emb is None or isinstance(query_rotary_emb, RotaryCoords):
                query, key = _rmsnorm_rope(attn, query.unflatten(2, (attn.heads, -1)),
                                           key.unflatten(2, (attn.heads, -1)), query_rotary_emb, key_rotary_emb,
                                           _prepass_scheme(attention_mask, query, key, value))
            else:  # precomputed (cos, sin): diffusers' own norm and rotation
                rotate = apply_interleaved_rotary_emb if attn.rope_type == "interleaved" else apply_split_rotary_emb
                query = rotate(attn.norm_q(query), query_rotary_emb).unflatten(2, (attn.heads, -1))
                key = rotate(attn.norm_k(key), key_rotary_emb).unflatten(2, (attn.heads, -1))
            if attention_mask is not None and not is_key_lengths(attention_mask):
                attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch_size)
                attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            hidden_states = _attend(query, key, value.unflatten(2, (attn.heads, -1)), attention_mask).flatten(2, 3)
            if perturbation_mask is not None:
                hidden_states = torch.lerp(value, hidden_states, perturbation_mask)

        if gate_logits is not None:  # per-head gates, 2*sigmoid so that zero logits give 1
            gates = 2.0 * torch.sigmoid(gate_logits)
            hidden_states = (hidden_states.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def _wan_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan rotation of ``x [B, N, H, D]`` by per-token interleaved ``cos, sin`` ``[1, N, 1, D]``
    (upstream defines it inside ``WanAttnProcessor.__call__``, so it cannot be imported)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out


class FastWanAttnProcessor:
    """Processor for ``WanAttention`` (self-attention with 3-D RoPE, text cross-attention, and the
    image cross-attention of the I2V models).  Same signature as diffusers' ``WanAttnProcessor``.

    ``rotary_emb``: :class:`RotaryCoords`, diffusers' ``(cos, sin)`` ``[1, N, 1, D]``, or None.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        image_context = None
        if attn.add_k_proj is not None:  # I2V: image tokens first, then 512 text tokens (as upstream)
            image_context_length = encoder_hidden_states.shape[1] - 512
            image_context = encoder_hidden_states[:, :image_context_length]
            encoder_hidden_states = encoder_hidden_states[:, image_context_length:]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        image_kv = _get_added_kv_projections(attn, image_context) if image_context is not None else ()
        scheme = None
        if rotary_emb is None or isinstance(rotary_emb, RotaryCoords):
            scheme = _prepass_scheme(attention_mask, query, key, value, *image_kv)
            query, key = _rmsnorm_rope(attn, query.unflatten(2, (attn.heads, -1)), key.unflatten(2, (attn.heads, -1)),
                                       rotary_emb, rotary_emb, scheme)
        else:  # precomputed (cos, sin): diffusers' own norm and rotation
            query = _wan_rotate(attn.norm_q(query).unflatten(2, (attn.heads, -1)), *rotary_emb)
            key = _wan_rotate(attn.norm_k(key).unflatten(2, (attn.heads, -1)), *rotary_emb)
        value = value.unflatten(2, (attn.heads, -1))

        hidden_states = _attend(query, key, value, attention_mask).flatten(2, 3)
        if image_context is not None:  # I2V: the same (pre-quantised) query over the image tokens
            key_image, value_image = image_kv
            if scheme is None:
                key_image = attn.norm_added_k(key_image).unflatten(2, (attn.heads, -1))
            else:  # RMSNorm and quantisation (K smoothed) in one pass
                key_image = rmsnorm_rope(key_image.unflatten(2, (attn.heads, -1)), weight=attn.norm_added_k.weight,
                                         eps=_eps(attn.norm_added_k, key_image), check_values=False, quant=scheme,
                                         smooth=True)
            hidden_states_image = _attend(query, key_image, value_image.unflatten(2, (attn.heads, -1)), None)
            hidden_states = hidden_states + hidden_states_image.flatten(2, 3)

        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)
