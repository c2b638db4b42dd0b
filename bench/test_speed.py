"""Speed regression of the CPU paths (pytest-benchmark).

    pytest bench/ --benchmark-only --benchmark-autosave                                   # save a baseline
    pytest bench/ --benchmark-only --benchmark-compare --benchmark-compare-fail=median:25%  # compare with it

Each benchmark first checks its output against a float64 reference, so a fast wrong path fails.
Shapes are the scaled-down CPU cases of ``baton-fast bench`` (:data:`baton_fast.bench.cases.CPU_CASES`).
"""
import pytest
import torch

import baton_fast
from baton_fast import reference
from baton_fast.bench.cases import CPU_CASES
from baton_fast.bench.kernels_bench import CPU_BACKENDS, check_bound, make_inputs

CASES = {case.name: case for case in CPU_CASES if case.name in ("Ovi video self-attn", "Ovi audio->video cross-attn")}
QUICK_BACKENDS = {b.name: b for b in CPU_BACKENDS if b.quick}


@pytest.mark.parametrize("backend", list(QUICK_BACKENDS))
@pytest.mark.parametrize("case", list(CASES))
def test_attention_speed(benchmark, case, backend):
    inp = make_inputs(CASES[case], "cpu", torch.float32)
    fn = QUICK_BACKENDS[backend].build(inp, CASES[case].k_static)
    expected, allowed = check_bound(inp, torch.device("cpu"))
    err = (fn().double() - expected).abs().max().item()  # also the warm-up (compiles)
    assert err <= allowed, f"{backend} on {case}: max abs error {err:.2e} > {allowed:.2e}"
    benchmark.group = f"attention: {case}"
    benchmark(fn)


@pytest.fixture(scope="module")
def video_qk():
    """Ovi-style video q, k ``[1, 512, 4, 128]`` float32 with their coordinates and Wan table."""
    inp = make_inputs(CASES["Ovi video self-attn"], "cpu", torch.float32)
    return inp.q, inp.k, inp.q_coords, inp.q_table


def test_apply_rope_speed(benchmark, video_qk):
    q, _, coords, table = video_qk
    expected = reference.apply_rope(q.double(), coords, table)
    assert (baton_fast.apply_rope(q, coords, table).double() - expected).abs().max().item() < 1e-5
    benchmark.group = "rope passes"
    benchmark(baton_fast.apply_rope, q, coords, table)


def test_qk_rmsnorm_rope_speed(benchmark, video_qk):
    q, k, coords, table = video_qk
    expected_q, expected_k = reference.qk_rmsnorm_rope(q.double(), k.double(), coords, coords, table)
    got_q, got_k = baton_fast.qk_rmsnorm_rope(q, k, coords, coords, table)
    assert max((got_q.double() - expected_q).abs().max().item(), (got_k.double() - expected_k).abs().max().item()) < 1e-5
    benchmark.group = "rope passes"
    benchmark(baton_fast.qk_rmsnorm_rope, q, k, coords, coords, table)
