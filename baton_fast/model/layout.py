"""Layout guidance: the group bitmasks that SpA2V's grounded generation (MIGC-style) gives the DiT.

A :class:`LayoutGuidance` holds, for one sampling run, the masks of the two attentions of the video
branch that a layout restricts (``rope_attention``'s ``q_groups`` / ``k_groups``: a query attends to a
key only when their masks share a bit):

- video self-attention: ``q_groups = k_groups =`` the video token masks (bit 0 background, bit ``i + 1``
  object ``i``): a token inside a box attends to the tokens of that box, a background token to the
  background;
- text cross-attention: queries carry the video token masks, text keys carry bit ``i + 1`` on the phrase
  tokens of object ``i`` and all bits (``-1``) elsewhere: the phrase of an object is seen only from inside
  its box, the rest of the prompt from everywhere.

The audio branch, the cross-modal attention and the plan cross-attention are never masked.  The
sampler passes the guidance to the DiT for the first :meth:`LayoutGuidance.masked_steps` steps and
``None`` afterwards.  The masks are built from a VSL by :func:`baton_fast.spatial.grounding.layout_guidance`.

A guidance builds its :class:`GroupOrder` once, when it is made (where the run is prepared, before the first
step): the video tokens sorted by group mask, so that each group is contiguous, and the
:class:`~baton_fast.BlockMask` of the self-attention in that order.  A masked DiT forward moves its video tokens
and their coordinates into that order once (RoPE stays exact: coordinates travel with their tokens), runs every
block's video self-attention on the block mask (only the key blocks that share a group with the query block are
visited) and moves the tokens back before the head.  Row-major latent order would mix background and object
tokens in nearly every block, so that no block could be skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch

from baton_fast.block_mask import DEFAULT_BLOCK, BlockMask
from baton_fast.block_sparse import visit_plan

from .sparsity import block_visits

__all__ = ["DEFAULT_LAYOUT_FRACTION", "AttentionGroups", "UNMASKED", "VideoMasks", "NO_MASKS", "GroupOrder",
           "LayoutGuidance"]

DEFAULT_LAYOUT_FRACTION = 0.4  # first 40 % of the steps: sigma >= 0.88 at Ovi's shift 5 (docs/spatial.md)
LAYOUT_BLOCK = DEFAULT_BLOCK   # (block_q, block_k) of the self-attention's block mask: the kernels' main tile


class AttentionGroups(NamedTuple):
    """``q_groups`` / ``k_groups`` of one ``rope_attention`` call (both None: unmasked)."""

    q_groups: Optional[torch.Tensor] = None
    k_groups: Optional[torch.Tensor] = None


UNMASKED = AttentionGroups()


class VideoMasks(NamedTuple):
    """What restricts the video attentions of one evaluation, for its tokens in the order they run in.

    ``self_groups``: bitmasks of the self-attention (sequence-parallel ranks: raster order, each rank's tokens);
    ``block_mask``: or its :class:`~baton_fast.BlockMask` (one rank: layout group order, or a sliding-tile window
    in tile-major order); ``text_groups``: the bitmasks of the text cross-attention."""

    self_groups: AttentionGroups = UNMASKED
    block_mask: Optional[BlockMask] = None
    text_groups: AttentionGroups = UNMASKED


NO_MASKS = VideoMasks()


@dataclass(frozen=True)
class GroupOrder:
    """The video tokens of one layout sorted by group mask, and the self-attention's block mask in that order.

    Attributes:
        to_groups, to_raster: int64 ``[Nv]`` permutations: ``x[:, to_groups]`` puts raster tokens in group order
            (stable: raster order within a group), ``x[:, to_raster]`` puts them back.
        groups: int64 ``[1, Nv]``, the video group masks in group order.
        mask: ``BlockMask.from_groups(groups, groups)`` with :data:`LAYOUT_BLOCK` blocks.
    """

    to_groups: torch.Tensor
    to_raster: torch.Tensor
    groups: torch.Tensor
    mask: BlockMask

    @classmethod
    def build(cls, video_groups: torch.Tensor) -> GroupOrder:
        """From the run's video group masks, int64 ``[1, Nv]`` (reads them on the host: once per run)."""
        to_groups = torch.argsort(video_groups[0], stable=True)
        to_raster = torch.empty_like(to_groups)
        to_raster[to_groups] = torch.arange(to_groups.shape[0], device=to_groups.device)
        groups = video_groups[:, to_groups]
        mask = BlockMask.from_groups(groups, groups, *LAYOUT_BLOCK)
        visit_plan(mask)  # the CPU path's grouping, read now rather than in a step
        return cls(to_groups, to_raster, groups, mask)


@dataclass(frozen=True)
class LayoutGuidance:
    """Layout masks of one sampling run.

    Attributes:
        video_groups: int64 ``[1, Nv]`` group bitmask of every video token (row-major ``(t, h, w)``).
        text_groups: int64 ``[2B, L]`` bitmask of every text token of the video branch, rows as the run
            context's text (``[cond; uncond]``); ``-1`` (all bits) on tokens that every query may see.
        fraction: fraction of the sampling steps, counted from the first, during which the masks apply.
        order: the :class:`GroupOrder` of the video tokens, built with the guidance (not an argument).
    """

    video_groups: torch.Tensor
    text_groups: torch.Tensor
    fraction: float = DEFAULT_LAYOUT_FRACTION
    order: GroupOrder = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for name, value in (("video_groups", self.video_groups), ("text_groups", self.text_groups)):
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() != 2:
                raise TypeError(f"{name}: expected an int64 tensor [rows, tokens], got "
                                f"{getattr(value, 'dtype', type(value).__name__)} "
                                f"{tuple(getattr(value, 'shape', ()))}")
        if self.video_groups.shape[0] != 1:
            raise ValueError(f"video_groups: expected one row [1, Nv] (one layout per run), "
                             f"got {tuple(self.video_groups.shape)}")
        is_number = isinstance(self.fraction, (int, float)) and not isinstance(self.fraction, bool)
        if not is_number or not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction: expected a number in [0, 1] (share of the sampling steps), "
                             f"got {self.fraction!r}")
        object.__setattr__(self, "order", GroupOrder.build(self.video_groups))

    def grouped_masks(self) -> VideoMasks:
        """The masks of a forward whose video tokens run in :attr:`order`: the self-attention on the block mask."""
        return VideoMasks(block_mask=self.order.mask, text_groups=AttentionGroups(self.order.groups, self.text_groups))

    def sharded_masks(self, video_groups: torch.Tensor) -> VideoMasks:
        """The masks of a sequence-parallel rank whose video tokens (raster order) carry ``video_groups [1, n]``."""
        return VideoMasks(self_groups=AttentionGroups(video_groups, video_groups),
                          text_groups=AttentionGroups(video_groups, self.text_groups))

    def masked_steps(self, steps: int) -> int:
        """Number of leading steps run with the masks: ``fraction * steps`` rounded half up, at least one
        when ``fraction > 0``."""
        count = int(self.fraction * steps + 0.5)
        return min(steps, max(count, 1)) if self.fraction > 0 else 0

    def block_report(self, masked_evaluations: int, layers: int) -> dict:
        """The self-attention's block visits (:func:`~baton_fast.model.sparsity.block_visits`) over the
        ``masked_evaluations`` DiT evaluations of ``layers`` blocks that run with the masks."""
        return {"masked_evaluations": masked_evaluations, **block_visits(self.order.mask, masked_evaluations, layers)}

    def check(self, video_tokens: int, text_shape) -> None:
        """Raise ValueError unless the masks fit a run with ``video_tokens`` tokens and text ``[2B, L]``."""
        if self.video_groups.shape[1] != video_tokens:
            raise ValueError(f"layout.video_groups: expected [1, {video_tokens}] (the run's video tokens), "
                             f"got {tuple(self.video_groups.shape)}")
        if tuple(self.text_groups.shape) != tuple(text_shape):
            raise ValueError(f"layout.text_groups: expected {list(text_shape)} (the run's video-branch text), "
                             f"got {list(self.text_groups.shape)}")

    def to(self, device) -> LayoutGuidance:
        return LayoutGuidance(self.video_groups.to(device), self.text_groups.to(device), self.fraction)
