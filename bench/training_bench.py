"""Forward + backward of the fused attention: ``run(quick)``, the ``training`` section of ``baton-fast bench``.

- measured: one forward + backward of ``baton_fast.rope_attention`` (q, k, v require grad) on this machine's
  default path, next to plain PyTorch (RoPE, then SDPA, through autograd), at the scaled-down CPU cases of
  :data:`bench.cases.CPU_CASES` in fp32 on a CPU (on a GPU: the full cases in bf16, run the Triton kernels);
- modelled: matrix FLOPs and minimum HBM bytes of the fused forward + FlashAttention-2 backward at the full
  shapes (:data:`bench.cases.FULL_CASES`, bf16): forward ``4 B H Nq Nk D``, backward ``10 B H Nq Nk D``
  (QK^T recomputed, dV, dP, dQ, dK); bytes: the forward reads Q, K, V and writes O and the LSE; the backward
  reads Q, K, V, O, dO and the LSE and writes dQ, dK, dV (fp32 delta once written and read).
"""
from __future__ import annotations

import torch

import baton_fast
from baton_fast import reference

from .cases import CPU_CASES, FULL_CASES, Case
from .kernels_bench import _time_ms, make_inputs

__all__ = ["run", "modelled_records", "SECTION"]

SECTION = "training"


def _step(attention, inp, grad):
    """One forward + backward of ``attention(q, k, v)`` with gradient ``grad`` for its output."""
    leaves = [t.detach().requires_grad_() for t in (inp.q, inp.k, inp.v)]

    def step():
        out = attention(*leaves)
        torch.autograd.backward(out, grad)
        for t in leaves:
            t.grad = None

    return step


def measured_records(case: Case, device: torch.device, dtype: torch.dtype, quick: bool) -> list:
    inp = make_inputs(case, device, dtype)
    kwargs = inp.op_kwargs()
    grad = torch.randn_like(inp.q)
    paths = {
        "baton-fast rope_attention": lambda q, k, v: baton_fast.rope_attention(q, k, v, inp.q_coords, inp.k_coords,
                                                                               **kwargs),
        "PyTorch RoPE + SDPA": lambda q, k, v: reference.sdpa_rope_attention(q, k, v, inp.q_coords, inp.k_coords,
                                                                             **kwargs),
    }
    shape = dict(B=1, Nq=case.q.tokens, Nk=case.k.tokens, H=case.heads, Hk=case.heads, D=case.head_dim)
    out = []
    for backend, attention in paths.items():
        ms, how = _time_ms(_step(attention, inp, grad), device, quick)
        out.append(dict(section=SECTION, case=case.name, backend=backend, device=device.type, kind="measured",
                        metric="forward+backward time", value=ms, unit="ms", shape=shape, dtype=str(dtype)[6:],
                        extra=dict(how, path=baton_fast.backend_for(device))))
    return out


def modelled_records(case: Case, dtype_bytes: int = 2) -> list:
    s = case.shape()
    shape = dict(B=s.batch, Nq=s.n_q, Nk=s.n_k, H=s.heads, Hk=s.kv_heads, D=s.head_dim)
    scores = s.batch * s.heads * s.n_q * s.n_k * s.head_dim
    q_bytes = s.batch * s.n_q * s.heads * s.head_dim * dtype_bytes
    kv_bytes = s.batch * s.n_k * s.kv_heads * s.head_dim * dtype_bytes
    lse_bytes = s.batch * s.heads * s.n_q * 4
    forward = dict(flops=4 * scores, bytes=2 * q_bytes + 2 * kv_bytes + lse_bytes)
    backward = dict(flops=10 * scores, bytes=4 * q_bytes + 4 * kv_bytes + 3 * lse_bytes)
    out = []
    for name, cost in (("forward", forward), ("backward", backward)):
        for metric, unit in (("flops", "FLOP"), ("bytes", "B")):
            out.append(dict(section=SECTION, case=case.name, backend=f"fused {name}", device="modelled",
                            kind="modelled", metric="matrix FLOPs" if metric == "flops" else "HBM bytes",
                            value=cost[metric], unit=unit, shape=shape, dtype="bfloat16", extra={}))
    return out


def run(quick: bool = True) -> list:
    """Measured records on this machine (see the module docstring), then the modelled ones."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases = FULL_CASES if device.type == "cuda" else CPU_CASES
    cases = cases[:1] if quick else cases
    records = [r for case in cases for r in measured_records(case, device, dtype, quick)]
    return records + [r for case in FULL_CASES for r in modelled_records(case)]
