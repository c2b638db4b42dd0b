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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

__all__ = ["DEFAULT_LAYOUT_FRACTION", "AttentionGroups", "UNMASKED", "LayoutGuidance"]

DEFAULT_LAYOUT_FRACTION = 0.4  # first 40 % of the steps: sigma >= 0.88 at Ovi's shift 5 (docs/spatial.md)


class AttentionGroups(NamedTuple):
    """``q_groups`` / ``k_groups`` of one ``rope_attention`` call (both None: unmasked)."""

    q_groups: Optional[torch.Tensor] = None
    k_groups: Optional[torch.Tensor] = None


UNMASKED = AttentionGroups()


@dataclass(frozen=True)
class LayoutGuidance:
    """Layout masks of one sampling run.

    Attributes:
        video_groups: int64 ``[1, Nv]`` group bitmask of every video token (row-major ``(t, h, w)``).
        text_groups: int64 ``[2B, L]`` bitmask of every text token of the video branch, rows as the run
            context's text (``[cond; uncond]``); ``-1`` (all bits) on tokens that every query may see.
        fraction: fraction of the sampling steps, counted from the first, during which the masks apply.
    """

    video_groups: torch.Tensor
    text_groups: torch.Tensor
    fraction: float = DEFAULT_LAYOUT_FRACTION

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

    @property
    def self_attention(self) -> AttentionGroups:
        return AttentionGroups(self.video_groups, self.video_groups)

    @property
    def text_attention(self) -> AttentionGroups:
        return AttentionGroups(self.video_groups, self.text_groups)

    def masked_steps(self, steps: int) -> int:
        """Number of leading steps run with the masks: ``fraction * steps`` rounded half up, at least one
        when ``fraction > 0``."""
        count = int(self.fraction * steps + 0.5)
        return min(steps, max(count, 1)) if self.fraction > 0 else 0

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
