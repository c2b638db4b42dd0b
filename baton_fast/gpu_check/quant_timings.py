"""Quantised attention timings on a lent GPU: baton-fast fp8 / int8+fp8 against its bf16 kernel, SageAttention and
FA3-FP8 when importable (docs/quantization.md).

Cases: the long self-attentions of :data:`baton_fast.bench.cost_model.QUANT_CASES` (Ovi, Wan2.1-14B 720p, LTX-2;
head dim 128, batch 1), Q and K already normalised and rotated (what the pre-pass hands the attention).  Each
backend is timed with ``triton.testing.do_bench`` (median ms) after one untimed call; the records give ms,
TFLOP/s (``4 H N^2 D`` over the median) and the cosine similarity of the output with baton-fast's bf16 kernel.
``baton-fast <scheme>`` includes the quantising passes of Q, K and V (as ``rope_attention(..., quant=...)`` on
pre-rotated inputs runs them); ``baton-fast <scheme>, kernel only`` times the attention on pre-quantised inputs.
A backend that is not importable, or fails, is recorded as ``skipped`` with the reason.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch

from .results import record

__all__ = ["quant_timing_items", "QUANT_SECTION"]

QUANT_SECTION = "kernels"
DTYPE = torch.bfloat16


def _backends(q, k, v) -> dict:
    """``{name: zero-argument callable}`` of every backend importable here."""
    import baton_fast
    from baton_fast import quant

    fns = {"baton-fast bf16": lambda: baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False)}
    for scheme in ("fp8", "int8+fp8"):
        fns[f"baton-fast {scheme}"] = (lambda s=scheme: baton_fast.rope_attention(q, k, v, rotate_q=False,
                                                                                  rotate_k=False, quant=s))
        qq, kq = quant.quantize(q, scheme), quant.quantize(k, scheme, smooth=True)
        vq = quant.quantize_v(v, scheme)
        fns[f"baton-fast {scheme}, kernel only"] = (lambda qq=qq, kq=kq, vq=vq: quant.quant_attention(qq, kq, vq))
    if importlib.util.find_spec("sageattention") is not None:
        from sageattention import sageattn
        fns["SageAttention"] = lambda: sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    if importlib.util.find_spec("flash_attn_interface") is not None:
        fns["FA3-FP8"] = _fa3_fp8(q, k, v)
    return fns


def _fa3_fp8(q, k, v) -> Callable:
    """FlashAttention-3's FP8 forward (``flash_attn_interface.flash_attn_func`` on e4m3 inputs with per-(batch,
    head) descales), inputs cast once outside the timed call."""
    from flash_attn_interface import flash_attn_func

    def cast(x):
        amax = x.abs().amax(dim=(1, 3)).float().clamp_min(1e-12)  # [B, H]
        scale = 448.0 / amax
        return (x.float() * scale[:, None, :, None]).to(torch.float8_e4m3fn), (1.0 / scale).contiguous()

    (q8, qd), (k8, kd), (v8, vd) = cast(q), cast(k), cast(v)
    return lambda: flash_attn_func(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)


def quant_timing_items(device, where: str) -> list[tuple[str, Callable[[], list]]]:
    """``(label, task)`` per case of :data:`~baton_fast.bench.cost_model.QUANT_CASES`; a task returns its records."""
    from triton.testing import do_bench

    from baton_fast import quant
    from baton_fast.bench.cost_model import QUANT_CASES

    def task(name, tokens, heads):
        shape = dict(B=1, Nq=tokens, Nk=tokens, H=heads, Hk=heads, D=128)
        q, k, v = (torch.randn(1, tokens, heads, 128, device=device, dtype=DTYPE) for _ in range(3))
        flops = 4.0 * heads * tokens * tokens * 128
        records, baseline = [], None
        for backend, fn in _backends(q, k, v).items():
            try:
                out = fn()
                out = out[0] if isinstance(out, tuple) else out
                baseline = out if baseline is None else baseline
                ms = do_bench(fn, warmup=5, rep=25)
            except Exception as exc:  # a backend's failure is a result, not the end of the part
                records.append(record(QUANT_SECTION, f"{name} (quantised)", backend, "skipped", None, "", device=where,
                                      shape=shape, dtype="bfloat16", reason=f"{type(exc).__name__}: {exc}"[:300]))
                continue
            common = dict(device=where, shape=shape, dtype="bfloat16")
            records += [record(QUANT_SECTION, f"{name} (quantised)", backend, "median time", ms, "ms", **common),
                        record(QUANT_SECTION, f"{name} (quantised)", backend, "TFLOP/s", flops / ms / 1e9, "TFLOP/s",
                               **common),
                        record(QUANT_SECTION, f"{name} (quantised)", backend, "cosine vs baton-fast bf16",
                               quant.cosine_similarity(out.float(), baseline.float()), "", **common)]
            del out
        return records

    return [(f"{case[0]} (quantised)", lambda case=case: task(*case)) for case in QUANT_CASES]
