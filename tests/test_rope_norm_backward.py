"""Backward of apply_rope, rmsnorm_rope and qk_rmsnorm_rope (Triton under the interpreter) against float64
autograd of the reference: dx and dweight within DESIGN.md §5 of the float64 gradients."""
import pytest
import torch

import baton_fast as bf
from baton_fast import reference
from test_attention_backward import assert_gradients_within_budget
from test_rope_norm_numerics import make


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")


# (family, dtype, B, N, H, D)
CASES = [
    ("wan", torch.float32, 2, 9, 3, 64),
    ("ltx2_interleaved", torch.float16, 1, 17, 4, 32),
    ("ltx2_split", torch.bfloat16, 2, 17, 2, 80),
    ("wan", torch.bfloat16, 1, 1, 5, 32),
]


@pytest.mark.parametrize("family,dtype,B,N,H,D",
                         CASES + [pytest.param("ltx2_interleaved", torch.float16, 1, 130, 2, 32, marks=pytest.mark.slow)])
def test_apply_rope_gradient(family, dtype, B, N, H, D):
    x, coords, table = make(family, dtype, B, N, H, D, seed=N)
    assert_gradients_within_budget(lambda x: (bf.apply_rope(x, coords, table),),
                                   lambda x: (reference.apply_rope(x, coords, table),), (x,), dtype, 0, ["dx"])


@pytest.mark.parametrize("family,dtype,B,N,H,D,across_heads",
                         [case + (i % 2 == 0,) for i, case in enumerate(CASES)])  # every dtype, both weight kinds
def test_qk_rmsnorm_rope_gradients(family, dtype, B, N, H, D, across_heads):
    """dq, dk and both norm weights' gradients (weights [H*D] across heads, [D] per head); Nk != N, Hk != H."""
    q, qc, table = make(family, dtype, B, N, H, D, seed=1)
    k, kc, _ = make(family, dtype, B, N + 3, H, D, seed=2)
    width = H * D if across_heads else D
    g = torch.Generator().manual_seed(3)
    qw, kw = ((torch.rand(width, generator=g) + 0.5).to(dtype) for _ in range(2))
    eps = 1e-6

    def kernel(q, k, qw, kw):
        return bf.qk_rmsnorm_rope(q, k, qc, kc, table, q_weight=qw, k_weight=kw, eps=eps, across_heads=across_heads)

    def ref(q, k, qw, kw):
        return reference.qk_rmsnorm_rope(q, k, qc, kc, table, q_weight=qw, k_weight=kw, eps=eps,
                                         across_heads=across_heads)

    assert_gradients_within_budget(kernel, ref, (q, k, qw, kw), dtype, 0, ["dq", "dk", "dq_weight", "dk_weight"])


@pytest.mark.parametrize("weighted", [True, False])
def test_rmsnorm_rope_alone_and_without_weight(weighted):
    x, coords, table = make("wan", torch.float16, 2, 17, 3, 32, seed=4)
    w = (torch.rand(32, generator=torch.Generator().manual_seed(5)) + 0.5).half()
    inputs = (x, w) if weighted else (x,)

    def kernel(x, w=None):
        return (bf.ops.rmsnorm_rope(x, coords, table, weight=w, across_heads=False),)

    def ref(x, w=None):
        return (reference.apply_rope(reference.rms_norm(x, w, 1e-6, across_heads=False), coords, table),)

    assert_gradients_within_budget(kernel, ref, inputs, torch.float16, 0, ["dx", "dweight"])


def test_weight_gradient_is_bit_identical_across_runs():
    """dweight is a fixed-order reduction of per-program partials (no atomics)."""
    q, qc, table = make("wan", torch.bfloat16, 1, 33, 1, 32, seed=6)  # 3 programs of 16 tokens
    w = torch.ones(32, dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(q.dtype)
    out = bf.qk_rmsnorm_rope(q, q, qc, qc, table, q_weight=w)[0]
    runs = [torch.autograd.grad(out, w, dout, retain_graph=True)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and runs[0].any()


def test_reference_backend_gradients(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    x, coords, table = make("ltx2_split", torch.float32, 2, 17, 2, 32, seed=8)
    w = torch.rand(2 * 32, generator=torch.Generator().manual_seed(9)) + 0.5
    assert_gradients_within_budget(lambda x, w: bf.qk_rmsnorm_rope(x, x, coords, coords, table, q_weight=w, k_weight=w),
                                   lambda x, w: reference.qk_rmsnorm_rope(x, x, coords, coords, table, q_weight=w,
                                                                          k_weight=w),
                                   (x, w), torch.float32, 0, ["dx", "dweight"])


def test_coordinates_are_not_differentiable():
    x, coords, table = make("wan", torch.float32, 1, 5, 2, 32, seed=1)
    with pytest.raises(ValueError, match="coords: not differentiable"):
        bf.apply_rope(x.requires_grad_(), coords.requires_grad_(), table)
    with pytest.raises(ValueError, match="k_coords: not differentiable"):
        bf.qk_rmsnorm_rope(x, x, coords.detach(), coords, table)
