"""The VA-Planner's default language model, a randomly initialised Qwen3, in plain torch.

``transformers``' ``Qwen3ForCausalLM`` is the same network, but importing it pulls ``torch._dynamo``,
``torch.distributed.tensor``, sympy and scipy in (seconds of ``generate``'s start-up) for a model the
planner runs once, without decoding.  This one has the same parameter names and shapes (a
``planner.safetensors`` fits either), the same initialisation law (normal, std 0.02; norms at one) and,
on the same weights, the same hidden states (``tests/test_model_pipeline.py`` holds it to
``transformers``' model): per layer pre-RMSNorm, grouped-query attention with RMS-normalised q and k per
head and rotary positions (theta 10000, ``rotate_half`` layout), causal and key-padding masks, a SwiGLU MLP.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Qwen3LM"]

ROPE_THETA, RMS_EPS, INIT_STD = 10000.0, 1e-6, 0.02  # transformers' Qwen3Config defaults


class _RMSNorm(nn.Module):
    """Qwen3's RMSNorm: normalised in float32, scaled in the input dtype."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + RMS_EPS)).to(x.dtype)


def _rotate(x, cos, sin):
    """Rotary positions on ``[B, H, L, D]`` in the ``rotate_half`` layout (pairs ``(i, i + D/2)``)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class _Attention(nn.Module):
    def __init__(self, pc):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = pc.lm_heads, pc.lm_kv_heads, pc.lm_head_dim
        h = pc.lm_hidden
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False)
        self.q_norm, self.k_norm = _RMSNorm(self.head_dim), _RMSNorm(self.head_dim)

    def forward(self, x, cos, sin, mask):
        """x ``[B, L, hidden]``; cos, sin ``[L, D]``; mask bool ``[B, 1, L, L]`` (True: attend)."""
        def heads(proj, norm=None):
            y = proj(x).unflatten(-1, (-1, self.head_dim))
            return (norm(y) if norm is not None else y).transpose(1, 2)

        q, k, v = heads(self.q_proj, self.q_norm), heads(self.k_proj, self.k_norm), heads(self.v_proj)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class _MLP(nn.Module):
    def __init__(self, pc):
        super().__init__()
        self.gate_proj = nn.Linear(pc.lm_hidden, pc.lm_ffn, bias=False)
        self.up_proj = nn.Linear(pc.lm_hidden, pc.lm_ffn, bias=False)
        self.down_proj = nn.Linear(pc.lm_ffn, pc.lm_hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, pc):
        super().__init__()
        self.self_attn, self.mlp = _Attention(pc), _MLP(pc)
        self.input_layernorm, self.post_attention_layernorm = _RMSNorm(pc.lm_hidden), _RMSNorm(pc.lm_hidden)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Model(nn.Module):
    """``Qwen3Model``: embeddings, layers, final norm; ``forward`` -> ``.last_hidden_state [B, L, hidden]``."""

    def __init__(self, pc):
        super().__init__()
        self.head_dim = pc.lm_head_dim
        self.embed_tokens = nn.Embedding(pc.lm_vocab, pc.lm_hidden)
        self.layers = nn.ModuleList(_Layer(pc) for _ in range(pc.lm_layers))
        self.norm = _RMSNorm(pc.lm_hidden)

    def forward(self, input_ids, attention_mask=None):
        """input_ids int64 ``[B, L]``; attention_mask ``[B, L]`` (1: token, 0: padding; default all tokens)."""
        B, L = input_ids.shape
        device = input_ids.device
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
                                        / self.head_dim)
        angles = torch.arange(L, device=device, dtype=torch.float32)[:, None] * inv_freq
        x = self.embed_tokens(input_ids)
        cos, sin = (f(torch.cat([angles, angles], dim=-1)).to(x.dtype) for f in (torch.cos, torch.sin))
        mask = torch.ones(L, L, dtype=torch.bool, device=device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return SimpleNamespace(last_hidden_state=self.norm(x))


class Qwen3LM(nn.Module):
    """Randomly initialised Qwen3 causal LM with a preset's planner sizes (``PlannerConfig.lm_*``), honouring the
    ambient device; what :class:`~baton_fast.model.planner.VAPlanner` reads: ``base_model(input_ids=...,
    attention_mask=...).last_hidden_state``, ``config.hidden_size``, ``get_input_embeddings()``."""

    def __init__(self, pc):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=pc.lm_hidden, vocab_size=pc.lm_vocab)
        self.model = _Model(pc)
        self.lm_head = nn.Linear(pc.lm_hidden, pc.lm_vocab, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=INIT_STD)
        if pc.lm_tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def base_model(self) -> _Model:
        return self.model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def resize_token_embeddings(self, size: int):
        raise ValueError(f"cfg.planner.lm_vocab: the default planner LM has {self.config.vocab_size} embeddings, "
                         f"fewer than the tokenizer's {size} tokens; raise lm_vocab")
