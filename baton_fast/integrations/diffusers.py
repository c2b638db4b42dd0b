"""Drop-in baton-fast attention for diffusers' LTX-2 and Wan transformers.

    from baton_fast.integrations import diffusers as baton_diffusers
    handle = baton_diffusers.apply(transformer)   # or: with baton_diffusers.apply(transformer): ...
    ...
    handle.remove()                               # diffusers' processors and rope modules are back

``apply`` changes three things, all undone by ``remove()``; the state dict never changes.  While it is
in effect, setting another attention processor (``model.set_attn_processor(...)``) raises an error that
says to call ``remove()`` first:

1. every attention module gets a baton-fast processor (:mod:`.diffusers_processors`);
2. the model's rope modules return :class:`RotaryCoords` — the token coordinates, computed once
   per forward with diffusers' own arithmetic on ``A`` floats per token, and a per-head
   :class:`~baton_fast.RopeTable` — instead of ``(cos, sin)`` over the whole inner dim; every
   layer rotates from them in its fused QK-RMSNorm + RoPE pass.  A rope module whose
   frequencies this module cannot reproduce exactly is left alone, and its layers rotate with
   the precomputed ``(cos, sin)`` (listed in ``handle.cos_sin_ropes``);
3. LTX-2 only: a forward pre-hook turns binary text padding masks ``[B, N_text]`` into key
   lengths ``[B]``.  Text keys carry no RoPE, so attention does not depend on their order: the
   hook moves each row's kept tokens first (a stable gather of ``encoder_hidden_states``, the
   identity for right-padded masks) and passes their count as ``k_lens``.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from diffusers import LTX2VideoTransformer3DModel, WanTransformer3DModel
from diffusers.models.transformers.transformer_ltx2 import LTX2Attention
from diffusers.models.transformers.transformer_wan import WanAttention

from ..ops import check_coords
from ..rope import RopeTable, video_grid_coords
from .diffusers_processors import FastLTX2AttnProcessor, FastWanAttnProcessor, RotaryCoords

__all__ = ["apply", "DiffusersPatch", "SUPPORTED_MODELS", "pack_text_padding"]

SUPPORTED_MODELS = (LTX2VideoTransformer3DModel, WanTransformer3DModel)


class DiffusersPatch:
    """Handle returned by :func:`apply`.  ``remove()`` (or leaving a ``with`` block) restores the model.

    Attributes:
        model: the patched transformer.
        coordinate_ropes: names of the rope modules that now hand coordinates to the layers.
        cos_sin_ropes: names of the rope modules left computing ``(cos, sin)`` (fallback path).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.coordinate_ropes: list[str] = []
        self.cos_sin_ropes: list[str] = []
        self._undo: list = []

    @property
    def active(self) -> bool:
        return bool(self._undo)

    def remove(self) -> None:
        """Restore diffusers' processors, rope modules and forward; calling it again does nothing."""
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> "DiffusersPatch":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return (f"DiffusersPatch({type(self.model).__name__}, {state}, coordinate_ropes={self.coordinate_ropes}, "
                f"cos_sin_ropes={self.cos_sin_ropes})")

    # ------------------------------------------------------------------ patching steps
    def _set_processors(self, attention_cls, processor_cls) -> None:
        """Give every ``attention_cls`` module of the model a ``processor_cls``, and refuse other processors while
        the patch is on: diffusers' own processors expect ``(cos, sin)`` from the rope modules, which now hand
        out coordinates (``model.set_attn_processor(...)`` calls each module's ``set_processor``)."""
        for module in self.model.modules():
            if isinstance(module, attention_cls):
                original = module.processor
                module.set_processor(processor_cls())
                self._undo.append(lambda module=module, original=original: module.set_processor(original))
                module.set_processor = _refuse_processor_swap
                self._undo.append(lambda module=module: delattr(module, "set_processor"))

    def _replace_rope_forward(self, name: str, replacement) -> None:
        """Replace the forward of rope module ``name`` (an instance attribute, deleted on removal)."""
        module = self.model.get_submodule(name)
        module.forward = replacement
        self.coordinate_ropes.append(name)
        self._undo.append(lambda: delattr(module, "forward"))

    def _add_forward_pre_hook(self, hook) -> None:
        handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        self._undo.append(handle.remove)


def _refuse_processor_swap(processor, *args, **kwargs):
    raise RuntimeError(f"set_processor: this model runs on baton-fast attention (baton_fast.integrations.diffusers."
                       f"apply), whose rope modules hand out coordinates, not the (cos, sin) that "
                       f"{type(processor).__name__} expects; call remove() on the handle apply() returned first")


def apply(model: torch.nn.Module) -> DiffusersPatch:
    """Run ``model``'s attention on baton-fast; returns the handle that undoes it.

    Args:
        model: a diffusers ``LTX2VideoTransformer3DModel`` or ``WanTransformer3DModel`` (not yet
            wrapped by ``torch.compile``: apply first, then compile).  Apply after moving the model
            to its device (the small rope tables are built there).
    Raises:
        TypeError: any other model type.
        ValueError: the model is already patched.
    """
    if not isinstance(model, SUPPORTED_MODELS):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_MODELS)
        raise TypeError(f"model: expected a diffusers {names}, got {type(model).__name__}")
    if any(isinstance(getattr(m, "processor", None), (FastLTX2AttnProcessor, FastWanAttnProcessor))
           for m in model.modules()):
        raise ValueError("model: baton-fast processors are already applied; remove() the first handle before "
                         "applying again")
    patch = DiffusersPatch(model)
    try:
        if isinstance(model, LTX2VideoTransformer3DModel):
            _apply_ltx2(patch)
        else:
            _apply_wan(patch)
    except BaseException:
        patch.remove()
        raise
    return patch


# ------------------------------------------------------------------------- LTX-2
class _LTX2Coordinates:
    """Stands in for ``LTX2AudioVideoRotaryPosEmbed.forward``: returns the patch midpoints mapped to
    ``2 c / max_position - 1`` (diffusers' arithmetic, float32 ``[B, N, A]``) with the rope table."""

    def __init__(self, max_positions: tuple, table: RopeTable, num_axes: int):
        self.max_positions = max_positions
        self.table = table
        self.num_axes = num_axes

    def __call__(self, coords: torch.Tensor, device=None) -> RotaryCoords:
        device = device or coords.device
        if coords.dim() == 4:  # [B, A, N, 2] patch bounds [start, end) -> midpoints [B, A, N]
            start, end = coords.chunk(2, dim=-1)
            coords = ((start + end) / 2.0).squeeze(-1)
        if coords.dim() != 3 or coords.shape[1] != self.num_axes:
            raise ValueError(f"coords: expected [B, {self.num_axes}, N] or [B, {self.num_axes}, N, 2], "
                             f"got shape {tuple(coords.shape)}")
        grid = torch.stack([coords[:, i] / self.max_positions[i] for i in range(self.num_axes)], dim=-1).to(device)
        if self.table.freqs.device != grid.device:
            self.table = self.table.to(grid.device)
        # checked once per forward: the layers call the ops with check_values=False
        return RotaryCoords(check_coords((grid * 2 - 1).float(), self.table), self.table)


def _ltx2_table(rope, heads: int, head_dim: int, num_axes: int) -> Optional[RopeTable]:
    """The rope module's table split over the ``heads`` of the layers that read it, or None when
    it cannot be reproduced exactly (float32 frequency grid, or split pairs that cross heads)."""
    interleaved = rope.rope_type == "interleaved"
    if (not rope.double_precision or rope.dim != heads * head_dim or rope.dim < 2 * num_axes
            or (not interleaved and rope.num_attention_heads != heads)):
        return None
    return RopeTable.ltx2(rope.dim, heads, num_axes, rope.theta, interleaved)


def _apply_ltx2(patch: DiffusersPatch) -> None:
    model = patch.model
    cfg = model.config
    device = model.proj_in.weight.device
    video = (cfg.num_attention_heads, cfg.attention_head_dim)
    audio = (cfg.audio_num_attention_heads, cfg.audio_attention_head_dim)
    # (rope modules patched together, heads and head dim of the layers that read them, coordinate axes)
    groups = [(("rope",), video, 3), (("audio_rope",), audio, 1),
              (("cross_attn_rope", "cross_attn_audio_rope"), audio, 1)]  # a2v / v2a: audio heads, time only
    for names, (heads, head_dim), num_axes in groups:
        ropes = [model.get_submodule(n) for n in names]
        tables = [_ltx2_table(r, heads, head_dim, num_axes) for r in ropes]
        if any(t is None for t in tables):
            patch.cos_sin_ropes.extend(names)
            continue
        for name, rope, table in zip(names, ropes, tables):
            max_positions = ((rope.base_num_frames, rope.base_height, rope.base_width) if rope.modality == "video"
                             else (rope.base_num_frames,))
            patch._replace_rope_forward(name, _LTX2Coordinates(max_positions, table.to(device), num_axes))
    patch._set_processors(LTX2Attention, FastLTX2AttnProcessor)
    patch._add_forward_pre_hook(_TextPaddingToKeyLengths(type(model).forward))


def pack_text_padding(states: torch.Tensor, mask: torch.Tensor):
    """Binary padding mask -> key lengths, for keys that carry no position (text).

    Args:
        states: ``[B, N, C]`` text tokens.
        mask: ``[B, N]``, 1 (or True) = keep, 0 = padding.
    Returns:
        ``(states, k_lens)`` with each row's kept tokens moved first in their order and
        ``k_lens`` int32 ``[B]``; a row with no kept token gets ``k_lens = N`` (diffusers adds the
        same bias to all its keys, which softmax ignores).  None when ``mask`` is not a binary
        ``[B, N]`` mask for ``states`` (the caller keeps diffusers' additive-mask path).
    """
    if states.dim() != 3 or mask.dim() != 2 or mask.shape != states.shape[:2]:
        return None
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        return None
    keep = mask.bool()
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    states = states.gather(1, order.unsqueeze(-1).expand_as(states))
    lengths = keep.sum(1)
    return states, torch.where(lengths > 0, lengths, mask.shape[1]).to(torch.int32)


class _TextPaddingToKeyLengths:
    """Forward pre-hook of the LTX-2 transformer: ``encoder_attention_mask`` and
    ``audio_encoder_attention_mask`` ``[B, N_text]`` become key lengths ``[B]`` (which the model
    passes unchanged to the text cross-attention processors), their text tokens packed first."""

    PAIRS = (("encoder_hidden_states", "encoder_attention_mask"),
             ("audio_encoder_hidden_states", "audio_encoder_attention_mask"))

    def __init__(self, forward):
        names = list(inspect.signature(forward).parameters)[1:]  # without self
        self.positions = {name: names.index(name) for pair in self.PAIRS for name in pair}

    def __call__(self, module, args, kwargs):
        args = list(args)
        for states_name, mask_name in self.PAIRS:
            states, mask = self._get(args, kwargs, states_name), self._get(args, kwargs, mask_name)
            if states is None or mask is None:
                continue
            packed = pack_text_padding(states, mask)
            if packed is not None:
                self._set(args, kwargs, states_name, packed[0])
                self._set(args, kwargs, mask_name, packed[1])
        return tuple(args), kwargs

    def _get(self, args, kwargs, name):
        position = self.positions[name]
        return args[position] if position < len(args) else kwargs.get(name)

    def _set(self, args, kwargs, name, value):
        position = self.positions[name]
        if position < len(args):
            args[position] = value
        else:
            kwargs[name] = value


# --------------------------------------------------------------------------- Wan
class _WanCoordinates:
    """Stands in for ``WanRotaryPosEmbed.forward``: the latent patch grid ``(t, h, w)``, float32 ``[1, N, 3]``,
    built and checked once per grid size and device (a forward then allocates and reads back nothing)."""

    def __init__(self, patch_size: tuple, table: RopeTable):
        self.patch_size = patch_size
        self.table = table
        self._grids: dict = {}

    def __call__(self, hidden_states: torch.Tensor) -> RotaryCoords:
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        grid, device = (frames // p_t, height // p_h, width // p_w), hidden_states.device
        if self.table.freqs.device != device:
            self.table = self.table.to(device)
        if torch.compiler.is_compiling():  # the compiled graph builds (and checks) its own constants
            return RotaryCoords(check_coords(video_grid_coords(*grid, device=device)[None], self.table), self.table)
        if (grid, device) not in self._grids:
            self._grids[grid, device] = check_coords(video_grid_coords(*grid, device=device)[None], self.table)
        return RotaryCoords(self._grids[grid, device], self.table)


def _wan_table(rope) -> Optional[RopeTable]:
    """``RopeTable.wan`` for the rope module, or None unless it reproduces the module's own
    frequencies (diffusers does not store theta; its buffers at position 1 hold cos/sin of them)."""
    table = RopeTable.wan(rope.attention_head_dim)
    if rope.freqs_cos.shape[0] < 2 or (rope.t_dim, rope.h_dim) != (table.head_dim - 4 * (table.head_dim // 6),
                                                                   2 * (table.head_dim // 6)):
        return None
    angle = table.freqs[0].double().repeat_interleave(2).to(rope.freqs_cos.device)
    matches = (torch.allclose(rope.freqs_cos[1].double(), angle.cos(), rtol=0, atol=1e-6)
               and torch.allclose(rope.freqs_sin[1].double(), angle.sin(), rtol=0, atol=1e-6))
    return table.to(rope.freqs_cos.device) if matches else None


def _apply_wan(patch: DiffusersPatch) -> None:
    rope = patch.model.rope
    table = _wan_table(rope)
    if table is None:
        patch.cos_sin_ropes.append("rope")
    else:
        patch._replace_rope_forward("rope", _WanCoordinates(tuple(rope.patch_size), table))
    patch._set_processors(WanAttention, FastWanAttnProcessor)
