"""torch.compile(fullgraph=True) traces through the public ops (custom ops with fake implementations)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import baton_fast as bf
from baton_fast import numerics, reference

H, HK, D = 4, 2, 32
TABLE = bf.RopeTable.wan(D)


def block(q, k, v, q_coords, k_coords, k_lens, q_weight, k_weight):
    """QK-norm + RoPE pre-pass, fused attention on the rotated K with key lengths and lse, a RoPE after,
    and plain torch ops around them (so the compiled graph reads the ops' outputs with their promised strides)."""
    q_rot, k_rot = bf.qk_rmsnorm_rope(q, k, q_coords, k_coords, TABLE, q_weight=q_weight, k_weight=k_weight)
    out, lse = bf.rope_attention(q_rot, k_rot, v, q_coords, k_coords, TABLE, rotate_q=False, rotate_k=False,
                                 k_lens=k_lens, return_lse=True)
    cross = bf.rope_attention(q, k, v, q_coords, k_coords, TABLE, k_lens=k_lens)
    rotated = bf.apply_rope(out, q_coords, TABLE)
    return rotated.flatten(2) * 2.0 + cross.flatten(2), lse.exp()


def inputs(n_q: int, n_k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, H, n_q, D, generator=g).transpose(1, 2)  # strided q
    k, v = (torch.randn(2, n_k, HK, D, generator=g) for _ in range(2))
    q_coords = bf.video_grid_coords(1, 1, n_q)[None]
    k_coords = (torch.rand(2, n_k, 3, generator=g) * 8).floor()
    k_lens = torch.tensor([n_k, n_k // 2], dtype=torch.int32)
    return q, k, v, q_coords, k_coords, k_lens, torch.rand(H * D, generator=g), torch.rand(HK * D, generator=g)


class CountingBackend:
    """A torch.compile backend that records every graph Dynamo hands it and runs it eagerly."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fullgraph_inductor_matches_eager(backend, monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", backend)
    args = inputs(17, 11)
    compiled = torch.compile(block, fullgraph=True)  # raises on any graph break
    for out, expected in zip(compiled(*args), block(*args)):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# The traced graph does not depend on the backend (the ops are opaque to Dynamo): these two run the reference.
def test_one_graph_with_the_custom_ops(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    counting = CountingBackend()
    torch.compile(block, fullgraph=True, backend=counting)(*inputs(17, 11))
    assert len(counting.graphs) == 1
    targets = {str(node.target) for node in counting.graphs[0].graph.nodes if node.op == "call_function"}
    assert {"baton_fast.qk_rmsnorm_rope.default", "baton_fast.rope_attention.default",
            "baton_fast.rmsnorm_rope.default"} <= targets


def test_dynamic_shapes_compile_once_across_sequence_lengths(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    counting = CountingBackend()
    compiled = torch.compile(block, fullgraph=True, dynamic=True, backend=counting)
    for n_q, n_k in ((17, 11), (23, 30)):
        args = inputs(n_q, n_k, seed=n_q)
        for out, expected in zip(compiled(*args), block(*args)):
            torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert len(counting.graphs) == 1


def attention(q, k, v, q_coords, k_coords, k_lens):
    return bf.rope_attention(q, k, v, q_coords, k_coords, TABLE, k_lens=k_lens).flatten(2) * 2.0


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_calls_still_check_values(backend, monkeypatch):
    """Under torch.compile the value checks run in the op ``baton_fast::check_values``, which the graph keeps (its
    copies feed the attention): bad coordinates and key lengths still raise, naming the argument."""
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    q, k, v, q_coords, k_coords, k_lens, _, _ = inputs(17, 11)
    compiled = torch.compile(attention, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(q, k, v, q_coords, k_coords, k_lens), attention(q, k, v, q_coords, k_coords,
                                                                                        k_lens))
    bad = k_coords.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="k_coords: expected finite coordinates"):
        compiled(q, k, v, q_coords, bad, k_lens)
    with pytest.raises(ValueError, match="k_lens: expected values in"):
        compiled(q, k, v, q_coords, k_coords, k_lens + 1)


def test_trusted_calls_compile_without_the_check_op(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    counting = CountingBackend()
    q, k, v, q_coords, k_coords, k_lens, _, _ = inputs(17, 11)
    torch.compile(lambda *a: bf.rope_attention(*a, TABLE, k_lens=k_lens, check_values=False), fullgraph=True,
                  backend=counting)(q, k, v, q_coords, k_coords)
    targets = {str(node.target) for node in counting.graphs[0].graph.nodes if node.op == "call_function"}
    assert "baton_fast.rope_attention.default" in targets and "baton_fast.check_values.default" not in targets



class _Watching(TorchDispatchMode):
    """A dispatch mode that only passes every call on (as a profiler or a host-read counter would watch)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_dispatcher_only_where_the_op_is_not_needed(monkeypatch):
    """An eager CPU call that needs no gradient runs the ops' implementation directly (``runs_directly``: the
    dispatcher's cost is a visible share of a small CPU layer), with the op's result; a call that needs the op
    (a dispatch mode watching, a gradient to record) still goes through it."""
    from baton_fast import attention_op, norm_op

    dispatched = []
    for module, name in ((attention_op, "_rope_attention_op"), (norm_op, "_rmsnorm_rope_op"),
                         (norm_op, "_qk_rmsnorm_rope_op")):
        op = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _op=op, _name=name: dispatched.append(_name) or _op(*a))
    args = inputs(17, 11)
    with torch.no_grad(), _Watching():
        through_ops = block(*args)
    assert sorted(set(dispatched)) == ["_qk_rmsnorm_rope_op", "_rmsnorm_rope_op", "_rope_attention_op"]
    dispatched.clear()
    with torch.no_grad():
        direct = block(*args)
    assert dispatched == []
    for out, expected in zip(direct, through_ops, strict=True):
        assert torch.equal(out, expected)
    q = args[0].detach().requires_grad_()
    block(q, *args[1:])[0].sum().backward()
    assert "_rope_attention_op" in dispatched and "_qk_rmsnorm_rope_op" in dispatched and q.grad is not None


def test_compiled_reference_rotation_matches_eager():
    """The reference path compiles too (bench's torch.compile entries): eager turns interleaved fp32 pairs by a
    complex product, the compiled graph by the cos/sin products; both against float64."""
    table = bf.RopeTable.ltx2(256, 4, interleaved=True)
    g = torch.Generator().manual_seed(5)
    x, coords = torch.randn(1, 37, 4, 64, generator=g), torch.rand(1, 37, 3, generator=g) * 2 - 1
    truth = reference.apply_rope(x.double(), coords, table)
    eager = reference.apply_rope(x, coords, table)
    compiled = torch.compile(reference.apply_rope, fullgraph=True)(x, coords, table)
    check = numerics.check(compiled, eager, truth, torch.float32)  # DESIGN §5: within 2x eager's error + floor
    assert check.ok, check
