"""The ops' autograd registration: torch.library.opcheck (schema, fake tensors, AOT dispatch, autograd
registration) on every op and backward op, and torch.compile of forward + backward with no graph break."""
import pytest
import torch

import baton_fast as bf
from baton_fast import ops

H, HK, D = 2, 1, 32
TABLE = bf.RopeTable.wan(D)


@pytest.fixture(params=["reference", "triton"])
def backend(request, monkeypatch):
    """Run the test on each backend (the backward ops are the Triton kernels, whatever the backend)."""
    monkeypatch.setenv("BATON_FAST_BACKEND", request.param)
    return request.param


def attention_op_args(requires_grad=True, return_lse=True, groups=False):
    """Arguments of ``baton_fast::rope_attention`` as the public wrapper passes them."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, H, D, generator=g, requires_grad=requires_grad)
    k, v = (torch.randn(2, 7, HK, D, generator=g, requires_grad=requires_grad) for _ in range(2))
    qc, kc = (torch.rand(2, n, 3, generator=g) * 4 for n in (5, 7))
    freqs, axes = TABLE.freqs, TABLE.axes
    q_groups = torch.tensor([[1, 2, 3, 1, 2]]) if groups else None
    k_groups = torch.tensor([[1, 1, 2, 2, 3, 3, 1]]) if groups else None
    return (q, k, v, qc, kc, freqs, axes, freqs, axes, TABLE.interleaved, True, True, torch.tensor([7, 4]), D ** -0.5,
            return_lse, q_groups, k_groups)


@pytest.mark.parametrize("return_lse,groups", [(True, False), (False, True)])
def test_opcheck_rope_attention(backend, return_lse, groups):
    torch.library.opcheck(torch.ops.baton_fast.rope_attention.default,
                          attention_op_args(return_lse=return_lse, groups=groups))


@pytest.mark.parametrize("block_mask", [False, True])
def test_opcheck_rope_attention_backward(block_mask):
    """The backward op, dense and walking a BlockMask's lists (its six tensors and block sizes)."""
    args = attention_op_args(requires_grad=False)
    q, k, v = args[:3]
    out, lse = torch.ops.baton_fast.rope_attention(*args)
    dout = torch.randn_like(out)
    rest = args[3:13] + (args[13],)  # coords, tables, layout, rotate flags, k_lens, scale
    mask = []
    if block_mask:
        m = bf.BlockMask.from_dense(torch.ones(5, 7, dtype=torch.bool).tril(), 16, 16)
        mask = [m.kv_num_blocks, m.kv_indices, m.kv_mask_ids, m.full_kv_num_blocks, m.full_kv_indices, m.partial_masks]
    torch.library.opcheck(torch.ops.baton_fast.rope_attention_backward.default,
                          (dout, torch.randn_like(lse), q, k, v, out, lse, *rest, None, None, False, mask,
                           16 if block_mask else 0, 16 if block_mask else 0))


def norm_op_args(norm, weighted, requires_grad=True):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, H, D, generator=g, requires_grad=requires_grad)
    width = H * D if norm == 2 else D
    w = (torch.rand(width, generator=g) + 0.5).requires_grad_(requires_grad) if weighted else None
    coords = torch.rand(1, 5, 3, generator=g) * 4
    return x, coords, TABLE.freqs, TABLE.axes, TABLE.interleaved, w, norm, 1e-6


@pytest.mark.parametrize("norm,weighted", [(0, False), (2, True)])
def test_opcheck_rmsnorm_rope(backend, norm, weighted):
    torch.library.opcheck(torch.ops.baton_fast.rmsnorm_rope.default, norm_op_args(norm, weighted))


@pytest.mark.parametrize("norm,weighted", [(0, False), (1, True), (2, False)])
def test_opcheck_rmsnorm_rope_backward(norm, weighted):
    plain = norm_op_args(norm, weighted, requires_grad=False)
    torch.library.opcheck(torch.ops.baton_fast.rmsnorm_rope_backward.default,
                          (torch.randn_like(plain[0]),) + plain)


def test_opcheck_qk_rmsnorm_rope(backend):
    q_side = norm_op_args(2, True)[:6]
    k_side = norm_op_args(2, True)[:6]
    torch.library.opcheck(torch.ops.baton_fast.qk_rmsnorm_rope.default, q_side + k_side + (2, 1e-6))


def training_block(q, k, v, coords, q_weight, k_weight):
    """QK-norm + RoPE pre-pass, attention on the rotated K (LSE used in the loss), and a fused-rotation
    cross-attention: every op with a backward in one graph."""
    q_rot, k_rot = bf.qk_rmsnorm_rope(q, k, coords, coords, TABLE, q_weight=q_weight, k_weight=k_weight)
    out, lse = bf.rope_attention(q_rot, k_rot, v, coords, coords, TABLE, rotate_q=False, rotate_k=False,
                                 return_lse=True)
    cross = bf.rope_attention(bf.apply_rope(q, coords, TABLE), k, v, coords, coords, TABLE)
    return (out * cross).sum() + lse.sum()


def test_compile_forward_and_backward_without_graph_breaks(backend):
    g = torch.Generator().manual_seed(2)
    leaves = [torch.randn(1, 9, H, D, generator=g), torch.randn(1, 9, HK, D, generator=g),
              torch.randn(1, 9, HK, D, generator=g), torch.rand(H * D, generator=g) + 0.5,
              torch.rand(HK * D, generator=g) + 0.5]
    coords = bf.video_grid_coords(1, 3, 3)[None]

    def grads(fn):
        xs = [x.clone().requires_grad_() for x in leaves]
        loss = fn(xs[0], xs[1], xs[2], coords, xs[3], xs[4])
        return torch.autograd.grad(loss, xs)

    torch._dynamo.reset()
    try:
        compiled = torch.compile(training_block, fullgraph=True, backend="aot_eager")  # raises on a graph break
        for got, want in zip(grads(compiled), grads(training_block)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()
