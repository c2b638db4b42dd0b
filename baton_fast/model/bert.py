"""A BERT encoder forward (MiniLM-L6's architecture) on a ``transformers`` BERT folder's own weights.

``transformers``' ``BertModel`` pulls ``torch._dynamo``, ``torch.distributed.tensor``, sympy and scipy in at
import (seconds of ``generate``'s start-up) for a 6-layer encoder; this is the same computation in plain
torch, with the same parameter names, read from ``config.json`` and ``model.safetensors``: absolute
position and token-type embeddings, post-LayerNorm layers, exact-erf GELU, padded keys masked.
``tests/test_model_pipeline.py`` holds its states to ``BertModel``'s on the same folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BertEncoder", "is_bert_folder"]


def is_bert_folder(path) -> bool:
    """Whether ``path`` holds a BERT (``model_type`` "bert", absolute positions, GELU) with safetensors weights
    and a ``tokenizer.json``: what :class:`BertEncoder` and the ``tokenizers`` wrapper read."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (config.get("model_type") == "bert" and config.get("position_embedding_type", "absolute") == "absolute"
            and config.get("hidden_act") == "gelu" and (path / "model.safetensors").is_file()
            and (path / "tokenizer.json").is_file())


class _Loaded:
    """Parameters left uninitialised (``torch.empty``): :meth:`BertEncoder.from_folder` loads every one, strictly."""

    def reset_parameters(self):
        pass


class _Linear(_Loaded, nn.Linear):
    pass


class _Embedding(_Loaded, nn.Embedding):
    pass


class _LayerNorm(_Loaded, nn.LayerNorm):
    pass


class _Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = _Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = _Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = _Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = _LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (BERT's ``*Output`` modules)."""

    def __init__(self, n_in: int, n_out: int, eps: float):
        super().__init__()
        self.dense = _Linear(n_in, n_out)
        self.LayerNorm = _LayerNorm(n_out, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.query, self.key, self.value = (_Linear(c.hidden_size, c.hidden_size) for _ in range(3))

    def forward(self, x, key_mask):
        """x ``[B, L, C]``, key_mask bool ``[B, 1, 1, L]`` (True: attend) -> ``[B, L, C]``."""
        q, k, v = (proj(x).unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for proj in (self.query, self.key, self.value))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask).transpose(1, 2).flatten(2)


class _Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c.hidden_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x, key_mask):
        return self.output(self.self(x, key_mask), x)


class _Intermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = _Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x, key_mask):
        x = self.attention(x, key_mask)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class BertEncoder(nn.Module):
    """BERT's last hidden states: ``input_ids``, ``attention_mask`` int64 ``[B, L]`` -> ``[B, L, hidden]``.

    Build with :meth:`from_folder`; ``config`` carries the folder's ``config.json`` (``hidden_size`` ...).
    """

    def __init__(self, config: SimpleNamespace):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    @classmethod
    def from_folder(cls, path) -> "BertEncoder":
        """The encoder of ``path`` (:func:`is_bert_folder`) with its weights (the pooler is not used)."""
        from safetensors.torch import load_file

        path = Path(path)
        config = SimpleNamespace(**{"pad_token_id": 0, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                                    **json.loads((path / "config.json").read_text())})
        with torch.device("cpu"):
            model = cls(config)
        weights = {name: tensor for name, tensor in load_file(path / "model.safetensors").items()
                   if not name.startswith("pooler.") and name != "embeddings.position_ids"}
        model.load_state_dict({name.removeprefix("bert."): tensor for name, tensor in weights.items()}, assign=True)
        return model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        key_mask = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, key_mask)
        return x
