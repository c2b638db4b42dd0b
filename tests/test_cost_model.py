"""The cost model against hand-computed small cases, and the full-size shapes it is applied to."""
import math

import pytest

from baton_fast.bench import cost_model as cm
from baton_fast.bench.cases import FULL_CASES, Side

# Tiny self-attention counted by hand: B=1, Nq=Nk=4, H=Hk=2, D=4 (2 pairs), 1 coordinate axis,
# a table shared by the heads, bf16 (2 bytes), the cos/sin table shared by 2 layers.
TINY = cm.AttentionShape(name="tiny", batch=1, n_q=4, n_k=4, heads=2, kv_heads=2, head_dim=4, q_axes=1, k_axes=1,
                         q_table_rows=1, k_table_rows=1, shared_table=True, layers=2, dtype_bytes=2)
# Q, K, V, O each hold 1 * 4 * 2 * 4 = 32 elements of 2 bytes.
QKVO_BYTES = 4 * 32 * 2
# one side's rope inputs: 4 tokens x 1 float32 coordinate + 1 row x 2 pairs x (float32 freq + int32 axis)
ROPE_INPUT_BYTES = 4 * 1 * 4 + 1 * 2 * 8
# rotating 2 heads x 4 tokens x 2 pairs, 45 operations per pair (angle 1 + sincos 38 + rotation 6)
ROTATE_OPS = 2 * 4 * 2 * 45


def test_tiny_fused_by_hand():
    cost = cm.fused_cost(TINY)
    assert cost.matrix_flops == 4 * 1 * 2 * 4 * 4 * 4  # 4 B H Nq Nk D = 512
    assert cost.bytes == QKVO_BYTES + 2 * ROPE_INPUT_BYTES  # 256 + 64 = 320
    # Q once; K once per (query block, head) program: cdiv(4, BLOCK_M) = 1 block, so once per head too
    assert cost.vector_ops == 2 * ROTATE_OPS  # 1440
    assert len(cost.passes) == 1


def test_tiny_unfused_by_hand():
    cost = cm.unfused_cost(TINY)
    names = [p.name for p in cost.passes]
    assert len(names) == 4 and names[1:] == ["rotate Q", "rotate K", "attention"]  # one shared table
    table, rot_q, rot_k, attention = cost.passes
    # table: read 4 x 1 float32 coords, write cos and sin, 4 tokens x (1 row x D=4) float32 each; / 2 layers
    assert table.bytes == (4 * 4 + 2 * 4 * 4 * 4) / 2  # 72
    assert table.vector_ops == 4 * 1 * 2 * (1 + 38) / 2  # 156
    # rotate: read and write 32 bf16 elements, read cos and sin (4 tokens x 4 float32 each)
    assert rot_q.bytes == rot_k.bytes == 2 * 32 * 2 + 2 * 4 * 4 * 4  # 256
    assert rot_q.vector_ops == 3 * 32  # x * cos + rotate_half(x) * sin
    assert attention.bytes == QKVO_BYTES and attention.matrix_flops == 512 and attention.vector_ops == 0
    assert cost.bytes == 72 + 256 + 256 + 256  # 840
    assert cost.bytes / cm.fused_cost(TINY).bytes == pytest.approx(840 / 320)


def test_tiny_prerotated_k_by_hand():
    cost = cm.fused_prerotated_k_cost(TINY)
    pre, attention = cost.passes
    assert pre.bytes == 2 * 32 * 2 + ROPE_INPUT_BYTES  # read K, write K, K's coords and table: 160
    assert pre.vector_ops == ROTATE_OPS
    assert attention.bytes == QKVO_BYTES + ROPE_INPUT_BYTES  # Q's rope inputs only: 288
    assert attention.vector_ops == ROTATE_OPS


def test_k_rotation_repeats_per_query_block():
    """Rotating K in the loop costs once per (query block, head): one more block, one more K rotation."""
    base = dict(name="blocks", batch=1, n_k=10, heads=3, kv_heads=3, head_dim=8, q_axes=3, k_axes=3,
                q_table_rows=1, k_table_rows=1, shared_table=False, layers=1)
    one = cm.fused_cost(cm.AttentionShape(n_q=cm.BLOCK_M, **base))
    two = cm.fused_cost(cm.AttentionShape(n_q=cm.BLOCK_M + 1, **base))
    k_rotation = 3 * 10 * 4 * cm.FUSED_PAIR_OPS  # heads x Nk x pairs x ops, once per block
    q_rotation_per_row = 3 * 4 * cm.FUSED_PAIR_OPS
    assert two.vector_ops - one.vector_ops == pytest.approx(k_rotation + q_rotation_per_row)


def test_cross_attention_materialises_two_tables_and_static_keys_skip_the_prepass():
    shape = cm.AttentionShape(name="cross", batch=2, n_q=6, n_k=10, heads=4, kv_heads=2, head_dim=8, q_axes=3,
                              k_axes=1, q_table_rows=1, k_table_rows=2, shared_table=False, layers=1,
                              dtype_bytes=4, k_static=True)
    tables = [p for p in cm.unfused_cost(shape).passes if p.name.startswith("cos/sin")]
    # Q: 6 tokens x 3 coords, cos+sin over 1 row x 8; K: 10 tokens x 1 coord, cos+sin over 2 rows x 8
    assert [t.bytes for t in tables] == [4 * 6 * 3 + 2 * 4 * 6 * 8, 4 * 10 * 1 + 2 * 4 * 10 * 16]
    prerotated = cm.fused_prerotated_k_cost(shape)
    assert [p.name for p in prerotated.passes] == ["fused attention, K pre-rotated"]
    # grouped heads: K/V elements use kv_heads; batch 2 reads Q/K/V/O per sample, coordinates once
    qkvo = 4 * (2 * 2 * 6 * 4 * 8 + 2 * 2 * 10 * 2 * 8)
    assert prerotated.bytes == qkvo + 4 * 6 * 3 + 1 * 4 * 8


def test_unrotated_attention_costs_the_same_on_every_path():
    shape = cm.AttentionShape(name="text", batch=1, n_q=100, n_k=7, heads=2, kv_heads=2, head_dim=16, q_axes=0,
                              k_axes=0, q_table_rows=0, k_table_rows=0, shared_table=False, layers=30)
    costs = [build(shape) for build in cm.PATHS.values()]
    assert {c.bytes for c in costs} == {2 * (2 * 100 * 2 * 16 + 2 * 7 * 2 * 16)}
    assert {c.vector_ops for c in costs} == {0}


def test_roofline_takes_the_slowest_ceiling_per_pass_and_sums_passes():
    device = cm.Device("toy", matrix_flops_per_s=100.0, vector_ops_per_s=10.0, hbm_bytes_per_s=1000.0, source="test")
    # fused, one pass: max(512 / 100, 1440 / 10, 320 / 1000)
    assert cm.roofline_seconds(cm.fused_cost(TINY), device) == pytest.approx(144.0)
    # unfused: table max(0, 15.6, 0.072) + 2 x rotate max(0, 9.6, 0.256) + attention max(5.12, 0, 0.256)
    assert cm.roofline_seconds(cm.unfused_cost(TINY), device) == pytest.approx(15.6 + 2 * 9.6 + 5.12)


def test_full_size_shapes():
    by_name = {case.name: case for case in FULL_CASES}
    ovi = by_name["Ovi video self-attn"].shape()
    assert (ovi.n_q, ovi.heads, ovi.head_dim) == (31 * 22 * 22, 24, 128) == (15004, 24, 128)
    assert by_name["LTX-2 video self-attn"].shape().n_q == 16 * 22 * 40 == 14080  # 121 frames: 1 + 120 / 8 = 16
    plan = by_name["Baton plan cross-attn"].shape()
    assert (plan.n_q, plan.n_k, plan.k_static) == (15004, 22599, True)
    assert by_name["LTX-2 video self-attn"].shape().q_table_rows == 32  # per-head tables
    assert by_name["Ovi audio->video cross-attn"].shape().k_axes == 1  # only the frame index is read
    assert not by_name["text cross-attn"].shape().rotate_q
    assert cm.attention_flops(ovi) == 4 * 24 * 15004 ** 2 * 128
    elements = 15004 * 24 * 128
    assert cm.fused_cost(ovi).bytes == 4 * 2 * elements + 2 * (15004 * 3 * 4 + 64 * 8)


def test_model_records_are_labelled_and_consistent():
    shape = FULL_CASES[0].shape()
    records = cm.model_records(shape)
    assert {r["kind"] for r in records} == {"modelled"} and all(r["unit"] for r in records)
    ratio = next(r for r in records if r["metric"] == "HBM bytes ratio")["value"]
    assert ratio == pytest.approx(cm.unfused_cost(shape).bytes / cm.fused_cost(shape).bytes)
    h100 = next(r for r in records if r["backend"] == "fused" and r["metric"] == "roofline time H100 SXM")
    assert h100["value"] == pytest.approx(cm.roofline_seconds(cm.fused_cost(shape), cm.DEVICES["H100 SXM"]) * 1e6)
    # long self-attention at full size is compute bound on an H100: the roofline is the matrix term
    assert h100["value"] == pytest.approx(cm.attention_flops(shape) / 989.4e12 * 1e6)
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in records)


@pytest.mark.parametrize("bad", [dict(n_q=0), dict(head_dim=7), dict(kv_heads=5), dict(q_axes=0), dict(k_table_rows=0)])
def test_bad_shapes_raise(bad):
    fields = dict(name="bad", batch=1, n_q=4, n_k=4, heads=2, kv_heads=2, head_dim=4, q_axes=1, k_axes=1,
                  q_table_rows=1, k_table_rows=1, shared_table=True, layers=1)
    (name,) = bad
    with pytest.raises(ValueError, match=name):  # the message names the field
        cm.AttentionShape(**{**fields, **bad})


def test_bad_sides_raise():
    with pytest.raises(ValueError, match="kind"):
        Side("image", (4, 4, 4))
    with pytest.raises(ValueError, match="dims"):
        Side("video", (4, 4))
