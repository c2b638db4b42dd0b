"""apply_rope and qk_rmsnorm_rope (Triton, interpreter on CPU) against the float64 reference."""
import pytest
import torch

import baton_fast as bf
from baton_fast import reference
from baton_fast.numerics import check


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")


def table_for(family, H, D):
    if family == "wan":
        return bf.RopeTable.wan(D), 20.0
    return bf.RopeTable.ltx2(H * D, H, 3, interleaved=family == "ltx2_interleaved"), 1.0


# (family, dtype, B, N, H, D)
CASES = [
    ("wan", torch.float32, 2, 17, 3, 64),
    ("wan", torch.float16, 1, 130, 24, 128),
    ("wan", torch.float32, 1, 1, 5, 80),
    ("ltx2_interleaved", torch.float16, 2, 17, 4, 64),
    ("ltx2_split", torch.float32, 1, 130, 4, 96),
    ("ltx2_split", torch.float16, 1, 17, 2, 256),
    ("wan", torch.bfloat16, 1, 19, 3, 64),
    ("ltx2_interleaved", torch.bfloat16, 2, 5, 2, 80),
]


def make(family, dtype, B, N, H, D, seed):
    g = torch.Generator().manual_seed(seed)
    table, span = table_for(family, H, D)
    x = (torch.randn(B, N, H, D, generator=g) * 3).to(dtype)
    coords = (torch.rand(B, N, 3, generator=g) * 2 - 1) * span
    return x, coords, table


@pytest.mark.parametrize("family,dtype,B,N,H,D", CASES)
def test_apply_rope_matches_float64(family, dtype, B, N, H, D):
    x, coords, table = make(family, dtype, B, N, H, D, seed=N + H)
    out = bf.apply_rope(x, coords, table)
    c = check(out, reference.apply_rope(x, coords, table), reference.apply_rope(x.double(), coords, table), dtype)
    assert out.dtype == dtype and c.ok, c


@pytest.mark.parametrize("family,dtype,B,N,H,D", CASES)
@pytest.mark.parametrize("across_heads", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_qk_rmsnorm_rope_matches_float64(family, dtype, B, N, H, D, across_heads, weighted):
    q, qc, table = make(family, dtype, B, N, H, D, seed=1)
    Nk = N + 3
    k, kc, _ = make(family, dtype, B, Nk, H, D, seed=2)
    g = torch.Generator().manual_seed(3)
    width = H * D if across_heads else D
    qw, kw = ((torch.rand(width, generator=g) + 0.5).to(dtype) for _ in range(2)) if weighted else (None, None)
    args = dict(q_weight=qw, k_weight=kw, across_heads=across_heads, eps=1e-6)
    q_rot, k_rot = bf.qk_rmsnorm_rope(q, k, qc, kc, table, **args)
    plain = reference.qk_rmsnorm_rope(q, k, qc, kc, table, **args)
    dbl = {n: (w.double() if w is not None else None) for n, w in (("q_weight", qw), ("k_weight", kw))}
    ref = reference.qk_rmsnorm_rope(q.double(), k.double(), qc, kc, table, **{**args, **dbl})
    for name, x, p, r in (("q", q_rot, plain[0], ref[0]), ("k", k_rot, plain[1], ref[1])):
        c = check(x, p, r, dtype)
        assert x.dtype == dtype and c.ok, f"{name}: {c}"


def test_prepass_then_attention_equals_fused_rotation():
    """qk_rmsnorm_rope + rope_attention(rotate_q=False, rotate_k=False) == rms_norm + rope_attention rotating in-kernel."""
    q, qc, table = make("wan", torch.float32, 1, 40, 4, 64, seed=7)
    k, kc, _ = make("wan", torch.float32, 1, 40, 4, 64, seed=8)
    v = torch.randn_like(k)
    q_rot, k_rot = bf.qk_rmsnorm_rope(q, k, qc, kc, table)
    a = bf.rope_attention(q_rot, k_rot, v, qc, kc, table, rotate_q=False, rotate_k=False)
    qn, kn = (reference.rms_norm(x, None, 1e-6, True) for x in (q, k))
    b = bf.rope_attention(qn, kn, v, qc, kc, table)
    torch.testing.assert_close(a, b, atol=2e-6, rtol=0)


def test_rmsnorm_alone_without_table_or_coordinates():
    """No table, no coordinates: the pre-pass is the RMSNorm alone (text cross-attention)."""
    q, _, _ = make("wan", torch.float32, 2, 9, 4, 64, seed=11)
    k, _, _ = make("wan", torch.float32, 2, 5, 2, 64, seed=12)
    qw, kw = torch.rand(256) + 0.5, torch.rand(128) + 0.5
    q_n, k_n = bf.qk_rmsnorm_rope(q, k, q_weight=qw, k_weight=kw)
    torch.testing.assert_close(q_n, reference.rms_norm(q, qw, 1e-6, True), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(k_n, reference.rms_norm(k, kw, 1e-6, True), atol=2e-6, rtol=1e-5)
