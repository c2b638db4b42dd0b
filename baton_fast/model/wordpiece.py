"""The MiniLM WordPiece tokenizer from its ``tokenizer.json``, read with the ``tokenizers`` library alone.

``transformers``' fast tokenizer wraps the same Rust tokenizer; importing ``transformers`` costs seconds of
``generate``'s start-up, so the text encoder and the default planner call this small wrapper instead.  It
answers the part of the ``transformers`` tokenizer interface that they and the phrase grounding use, with
the same ids, masks and offsets (``tests/test_model_pipeline.py`` holds it to ``transformers``' own).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["WordPieceTokenizer"]


class WordPieceTokenizer:
    """``tokenizer.json`` of a folder -> token ids, called like a ``transformers`` fast tokenizer.

    Args:
        path: a folder with ``tokenizer.json`` (and ``tokenizer_config.json``'s ``pad_token``, default
            ``[PAD]``).
    """

    def __init__(self, path):
        from tokenizers import Tokenizer

        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer: expected {file}")
        self._tokenizer = Tokenizer.from_file(str(file))
        self._tokenizer.no_truncation()  # the file's own settings; each call sets its own
        self._tokenizer.no_padding()
        self.pad_token, self.bos_token_id = "[PAD]", None  # BERT has no beginning-of-sequence token
        self.pad_token_id = self._tokenizer.token_to_id(self.pad_token)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def add_special_tokens(self, tokens: dict) -> int:
        """``{"additional_special_tokens": [str, ...]}``: appended to the vocabulary (never split, never
        normalised); returns how many were new."""
        from tokenizers import AddedToken

        return self._tokenizer.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in tokens["additional_special_tokens"]])

    def convert_tokens_to_ids(self, tokens: list) -> list:
        return [self._tokenizer.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: list) -> list:
        return [self._tokenizer.id_to_token(i) for i in ids]

    def __call__(self, texts, *, add_special_tokens: bool = True, split_special_tokens: bool = False,
                 truncation: bool = False, max_length: int = None, padding: bool = False,
                 return_offsets_mapping: bool = False, return_tensors: str = None) -> dict:
        """A string or a list of strings -> ``{"input_ids", "attention_mask"[, "offset_mapping"]}``: lists (one
        row per string, or one row for a string), or int64 tensors ``[N, L]`` with ``return_tensors="pt"``.

        ``truncation``: at most ``max_length`` tokens, special tokens included; ``padding``: right-padded to
        the longest row; ``split_special_tokens``: special tokens written in the text are tokenized as text.
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors: expected None or 'pt', got {return_tensors!r}")
        single = isinstance(texts, str)
        tok = self._tokenizer
        if truncation:
            tok.enable_truncation(max_length)
        else:
            tok.no_truncation()
        if padding:
            tok.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        else:
            tok.no_padding()
        tok.encode_special_tokens = split_special_tokens
        encodings = tok.encode_batch([texts] if single else list(texts), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in encodings]
        if return_tensors == "pt":
            return {name: torch.tensor(rows, dtype=torch.int64) for name, rows in out.items()}
        return {name: rows[0] for name, rows in out.items()} if single else out
