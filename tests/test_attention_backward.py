"""rope_attention backward (Triton kernels under the interpreter) against float64 autograd of the reference.

Each gradient must be within DESIGN.md §5 of the float64 one: at most twice the error of plain PyTorch
autograd in the same dtype, plus the floor (baton_fast/numerics.py).
"""
import pytest
import torch

import baton_fast as bf
from baton_fast import reference
from baton_fast.block_mask import BlockMask
from baton_fast.block_sparse import masked_attention
from baton_fast.kernels import rope_attention_bwd
from test_attention_numerics import assert_within_budget, make_inputs


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")


def gradients(fn, inputs, grad_out):
    """``d(sum(fn(*inputs) * grad_out)) / d inputs`` for float tensors ``inputs`` (detached copies); ``fn``
    returns a tensor or a tuple of tensors, ``grad_out`` holds one gradient per output."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    return torch.autograd.grad(fn(*leaves), leaves, grad_out)


def assert_gradients_within_budget(kernel_fn, reference_fn, inputs, dtype, seed, names=("dq", "dk", "dv")):
    """Kernel gradients in ``dtype`` vs float64 autograd of ``reference_fn``, plain PyTorch autograd as baseline.
    ``reference_fn`` returns a tensor or a tuple of tensors; output ``i`` gets a random gradient seeded
    ``seed + i``."""
    outputs = reference_fn(*inputs)
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
    grad_out = [torch.randn(o.shape, generator=torch.Generator().manual_seed(seed + i)) for i, o in enumerate(outputs)]
    result = gradients(kernel_fn, inputs, [g.to(dtype) for g in grad_out])
    plain = gradients(reference_fn, inputs, [g.to(dtype) for g in grad_out])
    ref64 = gradients(reference_fn, [x.double() for x in inputs], [g.double() for g in grad_out])
    for name, r, p, f in zip(names, result, plain, ref64):
        assert r.dtype == dtype and r.shape == f.shape
        assert_within_budget(name, r, p, f, dtype)


def assert_bit_identical_runs(kernel_fn, inputs, dout):
    """Two backward runs of ``kernel_fn`` with output gradient ``dout`` give bit-identical gradients; returns them."""
    first, second = (gradients(kernel_fn, inputs, [dout]) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    return first


# (family, dtype, B, Nq, Nk, H, Hk, D): sizes 1, 17, 130, 257; Nq != Nk; GQA; every RoPE family; both layouts
CASES = [
    ("wan", torch.float32, 2, 17, 40, 2, 1, 32),
    ("wan", torch.float16, 1, 33, 17, 2, 2, 80),
    ("ovi_av", torch.bfloat16, 1, 130, 17, 1, 1, 32),
    ("ltx2_interleaved", torch.bfloat16, 2, 17, 33, 2, 1, 32),
    ("ltx2_split", torch.float16, 2, 33, 17, 4, 2, 32),
    ("ltx2_split", torch.bfloat16, 1, 17, 33, 2, 1, 64),
]
SLOW = [("ovi_av", torch.float32, 1, 1, 257, 2, 1, 32), ("wan", torch.bfloat16, 1, 257, 33, 2, 1, 32)]


@pytest.mark.parametrize("family,dtype,B,Nq,Nk,H,Hk,D",
                         CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW])
def test_rope_attention_gradients_match_float64(family, dtype, B, Nq, Nk, H, Hk, D):
    q, k, v, qc, kc, table, k_table = make_inputs(family, dtype, B, Nq, Nk, H, Hk, D, seed=Nq + 3 * Nk)
    k_lens = torch.tensor([Nk, max(1, Nk // 3)])[:B] if B > 1 else None
    kw = dict(k_table=k_table, k_lens=k_lens)
    assert_gradients_within_budget(lambda q, k, v: bf.rope_attention(q, k, v, qc, kc, table, **kw),
                                   lambda q, k, v: reference.rope_attention(q, k, v, qc, kc, table, **kw),
                                   (q, k, v), dtype, seed=Nq)


@pytest.mark.parametrize("dtype,rotate_q,rotate_k", [(torch.float32, True, False), (torch.bfloat16, False, True)])
def test_prerotated_sides(dtype, rotate_q, rotate_k):
    """rotate_q/rotate_k False: that side's gradient is not rotated back (it was never rotated)."""
    q, k, v, qc, kc, _, _ = make_inputs("wan", dtype, 1, 17, 33, 2, 1, 32, seed=7)
    table = bf.RopeTable.ltx2(2 * 32, 2, 3, interleaved=False)
    table_k = bf.RopeTable(table.freqs[:1].contiguous(), table.axes[:1].contiguous(), False)
    qc, kc = qc / 20, kc / 20
    kw = dict(k_table=table_k, rotate_q=rotate_q, rotate_k=rotate_k)
    assert_gradients_within_budget(lambda q, k, v: bf.rope_attention(q, k, v, qc, kc, table, **kw),
                                   lambda q, k, v: reference.rope_attention(q, k, v, qc, kc, table, **kw),
                                   (q, k, v), dtype, seed=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_layout_masks(dtype):
    """SpA2V group bitmasks, with key tiles that no query of a tile may see (skipped in both kernels)."""
    q, k, v, qc, kc, table, _ = make_inputs("wan", dtype, 2, 40, 70, 1, 1, 32, seed=8)
    g = torch.Generator().manual_seed(9)
    q_groups = torch.randint(1, 4, (2, 40), generator=g)
    k_groups = torch.randint(1, 4, (2, 70), generator=g)
    k_groups[:, 32:64] = 8  # a key tile no query shares a bit with
    kw = dict(q_groups=q_groups, k_groups=k_groups, k_lens=torch.tensor([70, 45]))
    assert_gradients_within_budget(lambda q, k, v: bf.rope_attention(q, k, v, qc, kc, table, **kw),
                                   lambda q, k, v: reference.rope_attention(q, k, v, qc, kc, table, **kw),
                                   (q, k, v), dtype, seed=2)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_gradient_through_the_returned_lse(monkeypatch, backend):
    """A loss on both outputs: the LSE's gradient enters as ``delta - dLSE``."""
    monkeypatch.setenv("BATON_FAST_BACKEND", backend)
    q, k, v, qc, kc, table, _ = make_inputs("wan", torch.float32, 2, 17, 30, 2, 1, 32, seed=10)
    w = torch.randn(2, 2, 17, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss(fn, q, k, v):
        out, lse = fn(q, k, v, qc, kc, table, return_lse=True)
        return out.sum() + (lse * w.to(lse.dtype)).sum()

    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    got = torch.autograd.grad(loss(bf.rope_attention, *leaves), leaves)
    leaves64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    want = torch.autograd.grad(loss(reference.rope_attention, *leaves64), leaves64)
    for g, w64 in zip(got, want):
        torch.testing.assert_close(g.double(), w64, atol=2e-5, rtol=1e-4)


def test_rows_without_keys_get_zero_gradients():
    q, k, v, qc, kc, table, _ = make_inputs("wan", torch.float16, 3, 17, 20, 2, 1, 32, seed=5)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = bf.rope_attention(*leaves, qc, kc, table, k_lens=torch.tensor([0, 20, 5]))
    dq, dk, dv = torch.autograd.grad(out, leaves, torch.randn_like(out))
    assert all(bool(torch.isfinite(g).all()) for g in (dq, dk, dv))
    assert not dq[0].any() and not dk[0].any() and not dv[0].any()
    assert not dk[2, 5:].any() and not dv[2, 5:].any() and dk[2, :5].any()


def test_deterministic_mode_is_bit_identical_and_matches_the_atomic_mode():
    """Grouped-query dK/dV: atomics across query heads (default) or one launch per query head of the group, in order
    (deterministic)."""
    q, k, v, qc, kc, table, _ = make_inputs("wan", torch.bfloat16, 1, 17, 20, 4, 1, 32, seed=12)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.dtype)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = bf.rope_attention(*leaves, qc, kc, table)  # the mode is read when the backward runs

    def grads():
        return torch.autograd.grad(out, leaves, dout, retain_graph=True)

    with bf.deterministic():
        first, second = grads(), grads()
    fast = grads()
    for a, b, f in zip(first, second, fast):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.float(), f.float(), atol=2e-2, rtol=2e-2)


def test_reference_backend_gradients_match_float64(monkeypatch):
    """CPU tensors on the default backend: autograd of the reference math, in the inputs' dtype."""
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    q, k, v, qc, kc, table, k_table = make_inputs("ovi_av", torch.float32, 2, 17, 30, 4, 2, 64, seed=4)
    kw = dict(k_table=k_table, k_lens=torch.tensor([30, 11]))
    assert_gradients_within_budget(lambda q, k, v: bf.rope_attention(q, k, v, qc, kc, table, **kw),
                                   lambda q, k, v: reference.rope_attention(q, k, v, qc, kc, table, **kw),
                                   (q, k, v), torch.float32, seed=5)


@pytest.mark.parametrize("name", ["q_coords", "k_coords", "table"])
def test_coordinates_and_tables_are_not_differentiable(name):
    q, k, v, qc, kc, table, _ = make_inputs("wan", torch.float32, 1, 5, 6, 2, 2, 32, seed=1)
    args = dict(q_coords=qc, k_coords=kc, table=table)
    if name == "table":
        args["table"] = bf.RopeTable(table.freqs.clone().requires_grad_(), table.axes, table.interleaved)
    else:
        args[name] = args[name].clone().requires_grad_()
    with pytest.raises(ValueError, match=f"{name}: not differentiable"):
        bf.rope_attention(q.requires_grad_(), k, v, **args)


@pytest.mark.parametrize("family,dtype,B,H,Hk,deterministic", [
    ("wan", torch.float16, 1, 2, 1, False),
    ("ltx2_interleaved", torch.bfloat16, 2, 2, 1, True),
    ("ovi_av", torch.float32, 1, 2, 2, False),
])
def test_block_mask_gradients_walk_the_lists(monkeypatch, family, dtype, B, H, Hk, deterministic):
    """rope_attention(..., block_mask=...): dQ walks the visit lists, dK/dV the transposed ones (tiles smaller
    than the 32 x 32 mask blocks on both sides), never the dense mask; against float64 autograd of the dense
    masked attention.  Partial, full and unvisited blocks, per-head masks, odd sizes, key lengths, a query block
    with no key."""
    Nq, Nk, D = 70, 57, 32
    q, k, v, qc, kc, table, k_table = make_inputs(family, dtype, B, Nq, Nk, H, Hk, D, seed=21)
    g = torch.Generator().manual_seed(22)
    dense = torch.rand(1, H, Nq, Nk, generator=g) < 0.4
    dense[:, :, :32, :32] = True  # full blocks
    dense[:, 0, 32:64, 32:] = False  # an unvisited block
    dense[:, 1, 64:] = False  # a query block with no key
    mask = BlockMask.from_dense(dense, 32, 32)
    assert int(mask.kv_num_blocks.sum()) and int(mask.full_kv_num_blocks.sum()) and mask.visited_blocks() < 2 * 3 * 2
    k_lens = torch.tensor([Nk, 40])[:B] if B > 1 else None
    monkeypatch.setattr(BlockMask, "to_dense", lambda self: pytest.fail("the backward formed the dense mask"))
    check_block_mask_gradients((q, k, v), qc, kc, table, k_table, dense, mask, k_lens, deterministic, seed=23)


def check_block_mask_gradients(inputs, qc, kc, table, k_table, dense, mask, k_lens, deterministic, seed):
    """``rope_attention(..., block_mask=mask)``'s gradients against float64 autograd of the attention masked by
    ``dense`` (bool ``[1, H, Nq, Nk]``) within the budget; in deterministic mode also two runs bit-identical
    (the group's query heads added in launch order)."""
    k_table = k_table or table

    def reference_fn(q, k, v):
        q_rot, k_rot = reference.apply_rope(q, qc, table), reference.apply_rope(k, kc, k_table)
        return masked_attention(q_rot, k_rot, v, dense, k_lens=k_lens)

    def kernel_fn(q, k, v):
        return bf.rope_attention(q, k, v, qc, kc, table, k_table=k_table, k_lens=k_lens, block_mask=mask)

    dtype = inputs[0].dtype
    with bf.deterministic(deterministic):
        assert_gradients_within_budget(kernel_fn, reference_fn, inputs, dtype, seed=seed)
        if deterministic:
            dout = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
            assert_bit_identical_runs(kernel_fn, inputs, dout)


def _split_config(monkeypatch):
    """Pin the interpreter to the shipped sm_90 D = 256 configuration (its tiles, the output split)."""
    config = rope_attention_bwd.BWD_CONFIGS[(9, 128)]
    assert config[6], "the sm_90 D = 256 backward configuration no longer splits the dK/dV kernel by output"
    monkeypatch.setattr(rope_attention_bwd, "INTERPRETER_BWD_CONFIG", config)


@pytest.mark.parametrize("dtype,deterministic", [(torch.float16, False), (torch.bfloat16, True)])
def test_output_split_at_d256(monkeypatch, dtype, deterministic):
    """The sm_90 D = 256 configuration under the interpreter: the dK/dV kernel launched once per gradient (dV, then
    dK) and the layout-mask tile skip applied to the loads only.  D = 256, Nq = 17, Nk = 130 (partial 64-key tiles),
    GQA 2/1 (atomics, or the deterministic launches, one per query head of the group: two runs bit-identical, and
    bit-identical to the unsplit kernels on the same tiles), key lengths, layout masks with a key tile that no query
    shares a bit with; against float64."""
    _split_config(monkeypatch)
    q, k, v, qc, kc, table, k_table = make_inputs("wan", dtype, 2, 17, 130, 2, 1, 256, seed=41)
    g = torch.Generator().manual_seed(42)
    q_groups = torch.randint(1, 4, (2, 17), generator=g)
    k_groups = torch.randint(1, 4, (2, 130), generator=g)
    k_groups[:, 64:128] = 8  # a key tile of both kernels that no query tile shares a bit with
    kw = dict(k_table=k_table, k_lens=torch.tensor([130, 71]), q_groups=q_groups, k_groups=k_groups)

    def kernel_fn(q, k, v):
        return bf.rope_attention(q, k, v, qc, kc, table, **kw)

    def reference_fn(q, k, v):
        return reference.rope_attention(q, k, v, qc, kc, table, **kw)

    with bf.deterministic(deterministic):
        assert_gradients_within_budget(kernel_fn, reference_fn, (q, k, v), dtype, seed=43)
        if deterministic:
            dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(44)).to(dtype)
            first = assert_bit_identical_runs(kernel_fn, (q, k, v), dout)
            monkeypatch.setattr(rope_attention_bwd, "INTERPRETER_BWD_CONFIG",
                                (*rope_attention_bwd.INTERPRETER_BWD_CONFIG[:6], False))
            unsplit = gradients(kernel_fn, (q, k, v), [dout])
            assert all(torch.equal(a, b) for a, b in zip(first, unsplit))


@pytest.mark.parametrize("dtype,deterministic", [(torch.float16, False), (torch.bfloat16, True)])
def test_output_split_block_mask_at_d256(monkeypatch, dtype, deterministic):
    """The split dK/dV kernel walking a BlockMask's transposed lists (64 x 64 blocks: the configuration's tiles
    unchanged), partial, full and unvisited blocks, key lengths, GQA 2/1 with atomics (fp16) or in deterministic
    mode (bf16: one launch per query head of the group, two runs bit-identical); against float64 of the dense
    masked attention."""
    _split_config(monkeypatch)
    Nq, Nk, D = 70, 130, 256
    q, k, v, qc, kc, table, k_table = make_inputs("wan", dtype, 2, Nq, Nk, 2, 1, D, seed=45)
    g = torch.Generator().manual_seed(46)
    dense = torch.rand(1, 2, Nq, Nk, generator=g) < 0.5
    dense[:, :, :64, :64] = True  # full blocks
    dense[:, 0, 64:, 64:128] = False  # an unvisited block
    mask = BlockMask.from_dense(dense, 64, 64)
    check_block_mask_gradients((q, k, v), qc, kc, table, k_table, dense, mask, torch.tensor([Nk, 100]),
                               deterministic, seed=47)
