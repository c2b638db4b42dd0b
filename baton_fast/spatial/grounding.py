"""SpA2V stage 2: a VSL -> the :class:`~baton_fast.model.layout.LayoutGuidance` of one sampling run.

- Video tokens: :func:`vsl_group_masks` at the DiT's token grid (latent grid after patchify) and at the
  time of every latent frame (:func:`latent_frame_times`): bit ``i + 1`` inside object ``i``'s box, bit 0
  on the background.
- Text tokens (MIGC-style phrase grounding): object ``i``'s name is looked up in the video prompt
  (:func:`find_phrase`); the tokens whose character spans overlap it carry bit ``i + 1``; every other
  token (the rest of the prompt, special tokens, padding, the negative prompt) carries all bits
  (``-1``), so the global text stays visible to every query.  A name that is not in the prompt is
  appended to it first (:func:`ground_prompt`), so every object has phrase tokens.

Object ``i`` is the ``i``-th of ``vsl.object_ids()`` (ascending ids), as in :func:`vsl_group_masks`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from baton_fast.model.config import BatonConfig, RunShape
from baton_fast.model.layout import DEFAULT_LAYOUT_FRACTION, LayoutGuidance

from .layout_masks import vsl_group_masks
from .vsl import VSL

__all__ = ["ALL_GROUPS", "latent_frame_times", "layout_names", "names_from_prompt", "find_phrase", "ground_prompt",
           "phrase_groups", "layout_guidance"]

ALL_GROUPS = -1  # int64 with every bit set: a key every query may attend to


def latent_frame_times(cfg: BatonConfig, shape: RunShape) -> np.ndarray:
    """Seconds of every video latent frame: float64 ``[F]``.

    The causal video VAE decodes latent frame 0 to pixel frame 0 and latent frame ``i >= 1`` to pixel
    frames ``tc (i - 1) + 1 .. tc i`` (``tc`` = temporal compression); a latent frame's time is the mean
    time of its pixel frames, pixel frame ``j`` being shown at ``j / fps``.
    """
    vf = cfg.video_format
    tc = vf.temporal_compression
    index = np.arange(shape.video_grid[0], dtype=np.float64)
    first_pixel = np.where(index == 0, 0.0, tc * (index - 1) + 1)
    last_pixel = tc * index
    return (first_pixel + last_pixel) / 2 / vf.fps


def layout_names(vsl: VSL) -> list[str]:
    """Name of object ``i`` (the ``i``-th of ``vsl.object_ids()``), for every object of the layout."""
    if not isinstance(vsl, VSL):
        raise TypeError(f"layout: expected a VSL, got {type(vsl).__name__}")
    names = vsl.object_names()
    return [names[obj_id] for obj_id in vsl.object_ids()]


_SPLIT = re.compile(r"[,;]|\band\b", re.IGNORECASE)
_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)


def names_from_prompt(prompt: str) -> list[str]:
    """Object phrases of a prompt, in order: the parts between commas, semicolons and "and", each
    without a leading article ("a dog barks and a car passes" -> ["dog barks", "car passes"])."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a string, got {type(prompt).__name__}")
    phrases = (_ARTICLE.sub("", part.strip()).strip() for part in _SPLIT.split(prompt))
    return [phrase for phrase in phrases if phrase]


def find_phrase(prompt: str, name: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of every whole-word, case-insensitive occurrence of ``name`` in
    ``prompt`` (a plural "s" / "es" counts as part of the occurrence)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    pattern = re.compile(r"\b" + re.escape(name.strip()) + r"(?:e?s)?\b", re.IGNORECASE)
    return [match.span() for match in pattern.finditer(prompt)]


def ground_prompt(prompt: str, names: Sequence[str]) -> str:
    """``prompt`` with ``", <name>"`` appended for every name of ``names`` that it does not contain."""
    missing = [name.strip() for name in dict.fromkeys(names) if not find_phrase(prompt, name)]
    if not missing:
        return prompt
    return ", ".join([prompt.rstrip(), *missing]) if prompt.strip() else ", ".join(missing)


def phrase_groups(tokenizer, prompt: str, names: Sequence[str], max_tokens: int) -> torch.Tensor:
    """Group bitmask of every token of ``prompt`` as the text encoder tokenizes it: int64 ``[tokens]``.

    ``tokenizer``: the text encoder's (a ``transformers`` fast tokenizer: offsets are needed), called as
    the encoder calls it (truncation to ``max_tokens``).  Tokens overlapping an occurrence of
    ``names[i]`` get bit ``i + 1`` (several names: several bits); all others ``-1``.  Raises ValueError
    when a name does not occur in the prompt or falls beyond the truncation.
    """
    try:
        encoded = tokenizer(prompt, truncation=True, max_length=max_tokens, return_offsets_mapping=True)
    except NotImplementedError as err:
        raise ValueError("text encoder: phrase grounding needs a fast tokenizer (character offsets)") from err
    offsets = encoded["offset_mapping"]
    groups = torch.full((len(offsets),), ALL_GROUPS, dtype=torch.int64)
    bits = torch.zeros(len(offsets), dtype=torch.int64)
    for i, name in enumerate(names):
        spans = find_phrase(prompt, name)
        if not spans:
            raise ValueError(f"video prompt: object name {name!r} does not occur in {prompt!r}")
        tokens = [t for t, (start, end) in enumerate(offsets) if end > start
                  and any(start < span_end and end > span_start for span_start, span_end in spans)]
        if not tokens:
            raise ValueError(f"video prompt: object name {name!r} falls beyond the text encoder's {max_tokens}-token "
                             f"limit; shorten the prompt {prompt!r}")
        bits[tokens] |= 1 << (i + 1)
    return torch.where(bits != 0, bits, groups)


def layout_guidance(vsl: VSL, cfg: BatonConfig, shape: RunShape, tokenizer, prompts: Sequence[str], text_tokens: int,
                    *, max_tokens: int, fraction: float = DEFAULT_LAYOUT_FRACTION, device="cpu") -> LayoutGuidance:
    """The layout masks of a run of ``len(prompts)`` clips with classifier-free guidance.

    ``prompts``: the (already grounded, see :func:`ground_prompt`) video prompts, rows ``:B`` of the
    text; rows ``B:`` are the negative prompts, whose tokens all carry ``-1``.  ``text_tokens``: the
    padded text length ``L`` of the run.  Returns video groups ``[1, Nv]`` and text groups ``[2B, L]``.
    """
    names = layout_names(vsl)
    _, height, width = shape.video_grid
    video_groups = vsl_group_masks(vsl, latent_frame_times(cfg, shape), height, width)[None]
    text_groups = torch.full((2 * len(prompts), text_tokens), ALL_GROUPS, dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        groups = phrase_groups(tokenizer, prompt, names, max_tokens)
        if len(groups) > text_tokens:
            raise ValueError(f"text_tokens: prompt {row} has {len(groups)} tokens, more than the run's {text_tokens}")
        text_groups[row, :len(groups)] = groups
    return LayoutGuidance(video_groups.to(device), text_groups.to(device), fraction)
