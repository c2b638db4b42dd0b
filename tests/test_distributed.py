"""Sequence-parallel attention on CPU with gloo, 2 and 4 processes, against single-process ``rope_attention``.

One local process group per world size runs every case (:func:`worker`, through
:func:`~baton_fast.distributed.launch.run_local_group`) and returns each rank's results to the tests.
Every collective has a timeout (``init_process_group(timeout=...)``) and the group a wall-clock bound,
so nothing can hang.
Each rank builds the whole inputs from the case's seed, takes its shard, runs the distributed op and
compares its output shard with the same shard of the single-process result (fp32, <= 1e-5 relative) and
with a float64 reference under the DESIGN §5 budget.
"""
from __future__ import annotations

import time
import traceback
from unittest import mock

import pytest
import torch

from baton_fast.distributed import shard_lengths
from baton_fast.distributed.launch import run_local_group

COLLECTIVE_TIMEOUT_S = 60
WORKERS_TIMEOUT_S = 240
REL_TOL = 1e-5

# name, world size, scheme, shapes and options of each equality case.  q_split / k_split: tokens per rank
# (default: as even as possible); k_split None with n_k None means self-attention (keys = queries' tokens).
CASES = [
    dict(name="self_ulysses_lse", world=2, scheme="ulysses", n_q=37, lse=True),
    dict(name="self_ring_lse", world=2, scheme="ring", n_q=37, lse=True),
    dict(name="self_ring_no_lse", world=2, scheme="ring", n_q=20),
    dict(name="cross_ulysses_gqa_lens", world=2, scheme="ulysses", n_q=23, n_k=15, kv_heads=2, k_lens=True),
    dict(name="cross_ring_gqa_lens_lse", world=2, scheme="ring", n_q=23, n_k=15, kv_heads=2, k_lens=True, lse=True),
    dict(name="self_ulysses_groups_lse", world=2, scheme="ulysses", n_q=29, groups=True, lse=True),
    dict(name="self_ring_groups_lens_lse", world=2, scheme="ring", n_q=29, groups=True, k_lens=True, lse=True),
    dict(name="cross_ulysses_uneven", world=2, scheme="ulysses", n_q=33, n_k=21, q_split=[30, 3], k_split=[1, 20],
         lse=True, k_lens=True),
    dict(name="cross_ring_uneven", world=2, scheme="ring", n_q=33, n_k=21, q_split=[30, 3], k_split=[1, 20],
         lse=True, k_lens=True, groups=True),
    dict(name="cross_ulysses_uneven_prepared", world=2, scheme="ulysses", n_q=33, n_k=21, q_split=[30, 3],
         k_split=[1, 20], lse=True, k_lens=True, groups=True, prepared=True),
    dict(name="ring_head_table_half_prerotated_k", world=2, scheme="ring", n_q=19, n_k=26, head_table=True,
         interleaved=False, rotate_k=False, lse=True),
    dict(name="ulysses_head_table_only_k_rotated", world=2, scheme="ulysses", n_q=19, n_k=26, head_table=True,
         rotate_q=False, lse=True),
    dict(name="self_ring4_lens_lse", world=4, scheme="ring", n_q=41, k_lens=True, lse=True),
    dict(name="self_ulysses4_gqa_groups", world=4, scheme="ulysses", n_q=41, heads=8, kv_heads=4, groups=True,
         lse=True),
    dict(name="self_hybrid4_lens_groups_lse", world=4, scheme="hybrid", n_q=43, k_lens=True, groups=True, lse=True),
    dict(name="cross_hybrid4_empty_shards", world=4, scheme="hybrid", n_q=20, n_k=17, q_split=[10, 0, 7, 3],
         k_split=[0, 9, 8, 0], kv_heads=2, k_lens=True, lse=True),
    dict(name="cross_ring4_empty_shard_gqa", world=4, scheme="ring", n_q=18, n_k=30, q_split=[5, 5, 0, 8],
         kv_heads=1, lse=True),
    dict(name="self_hybrid4_prepared", world=4, scheme="hybrid", n_q=43, k_lens=True, lse=True, prepared=True),
]

# backward: dq, dk, dv through the schemes (output and LSE gradients) against single-process autograd
GRAD_CASES = [
    dict(name="grad_self_ring_lse", world=2, scheme="ring", n_q=37, lse=True),
    dict(name="grad_cross_ring_uneven_gqa_lens_groups", world=2, scheme="ring", n_q=33, n_k=21, q_split=[30, 3],
         k_split=[1, 20], kv_heads=2, k_lens=True, groups=True, lse=True),
    dict(name="grad_cross_ulysses_uneven_gqa_lens", world=2, scheme="ulysses", n_q=23, n_k=15, q_split=[5, 18],
         kv_heads=2, k_lens=True, lse=True),
    dict(name="grad_self_ulysses_groups_no_lse", world=2, scheme="ulysses", n_q=29, groups=True),
    dict(name="grad_self_hybrid4_lens_groups_lse", world=4, scheme="hybrid", n_q=43, k_lens=True, groups=True,
         lse=True),
    dict(name="grad_cross_ring4_empty_shards_gqa_prepared", world=4, scheme="ring", n_q=18, n_k=30,
         q_split=[5, 5, 0, 8], k_split=[12, 0, 9, 9], kv_heads=1, lse=True, prepared=True),
]

# the tiny DiT sharded (mesh: ring x ulysses degrees): one forward (with layout masks) and a short sampling run
DIT_CASES = [
    dict(name="dit_forward_ulysses2_layout", world=2, mesh=(1, 2), layout=True),
    dict(name="dit_forward_ring2", world=2, mesh=(2, 1)),
    dict(name="dit_sampling_ulysses2", world=2, mesh=(1, 2), steps=2),
    dict(name="dit_forward_hybrid4_layout", world=4, mesh=(2, 2), layout=True),
    dict(name="dit_backward_ulysses2_layout", world=2, mesh=(1, 2), layout=True, grad=True),
    dict(name="dit_backward_ring2", world=2, mesh=(2, 1), grad=True),
]

# configurations that must raise on every rank: (name, world, expected message fragment per rank role)
ERROR_CASES = [
    dict(name="ulysses_heads_not_divisible", world=2, match="must divide the query heads"),
    dict(name="ranks_disagree_on_head_dim", world=2, match="ranks disagree on head_dim"),
    dict(name="ranks_disagree_on_k_lens", world=2, match="ranks disagree on k_lens"),
    dict(name="one_rank_bad_argument", world=2, match={0: "q: expected [B, Nq, H, D]", 1: "rank(s) [0]"}),
    dict(name="shards_plan_not_this_rank", world=2, match={0: "shards: rank 0 holds 5 queries",
                                                           1: "shards: rank 1 holds 5 keys"}),
    dict(name="prepared_run_ranks_disagree", world=2, match="ranks disagree on video_tokens"),
    dict(name="mesh_not_world_size", world=4, match="expected the world size 4"),
    dict(name="hybrid_heads_not_divisible", world=4, match="Ulysses degree 2 must divide"),
]


# ====================================================================== worker side
def _inputs(case: dict):
    """The whole (unsharded) inputs of a case, the same on every rank (seeded by the case's name)."""
    import baton_fast
    from baton_fast import RopeTable
    torch.manual_seed(sum(map(ord, case["name"])))
    B, H, D = 2, case.get("heads", 4), 32
    Hk = case.get("kv_heads", H)
    n_q = case["n_q"]
    self_attention = case.get("n_k") is None
    n_k = n_q if self_attention else case["n_k"]
    q, k, v = torch.randn(B, n_q, H, D), torch.randn(B, n_k, Hk, D), torch.randn(B, n_k, Hk, D)
    q_coords = torch.rand(1, n_q, 3) * 12
    k_coords = q_coords if self_attention else torch.rand(1, n_k, 3) * 12
    if case.get("head_table"):
        table = RopeTable(torch.rand(H, D // 2) * 0.8, torch.randint(0, 3, (H, D // 2)), case.get("interleaved", True))
        k_table = RopeTable(table.freqs[::H // Hk].contiguous(), table.axes[::H // Hk].contiguous(), table.interleaved)
    else:
        table = k_table = RopeTable.wan(D)
    kwargs = dict(k_table=k_table, rotate_q=case.get("rotate_q", True), rotate_k=case.get("rotate_k", True),
                  return_lse=case.get("lse", False))
    if not kwargs["rotate_k"]:
        k = baton_fast.apply_rope(k, k_coords, k_table)
    if case.get("k_lens"):
        kwargs["k_lens"] = torch.tensor([n_k - 3, 0] if n_k > 3 else [n_k, 0], dtype=torch.int32)
    if case.get("groups"):
        q_groups = torch.randint(1, 8, (1, n_q))
        q_groups[0, 1] = 0  # a query that may attend to no key: zeros and lse -inf
        kwargs["q_groups"] = q_groups
        kwargs["k_groups"] = q_groups if self_attention else torch.randint(1, 8, (1, n_k))
    return q, k, v, q_coords, k_coords, table, kwargs


def _splits(case: dict, n: int, key: str):
    from baton_fast.distributed import shard_lengths
    return case.get(key) or shard_lengths(n, case["world"])


def _shard(x, start, stop, dim=1):
    return x.narrow(dim, start, stop - start) if x is not None else None


def _distributed_call(case: dict, rank: int, meshes: dict, q, k, v, q_coords, k_coords, table, kwargs):
    """This rank's ``(out, lse or None)`` of the case's scheme on its shards, and the shards' ``(q0, q1, k0, k1)``."""
    from baton_fast.distributed import agree_shards, hybrid_attention, ring_attention, ulysses_attention

    q_split, k_split = _splits(case, q.shape[1], "q_split"), _splits(case, k.shape[1], "k_split")
    q0, k0 = sum(q_split[:rank]), sum(k_split[:rank])
    q1, k1 = q0 + q_split[rank], k0 + k_split[rank]
    local = {n: _shard(kwargs.get(n), *r) for n, r in (("q_groups", (q0, q1)), ("k_groups", (k0, k1)))}
    call = {**kwargs, **{n: t for n, t in local.items() if t is not None}}
    fn = {"ulysses": ulysses_attention, "ring": ring_attention}.get(case["scheme"])
    scheme = dict(mesh=meshes["hybrid"]) if fn is None else {}
    shards = (_shard(q, q0, q1), _shard(k, k0, k1), _shard(v, k0, k1), _shard(q_coords, q0, q1),
              _shard(k_coords, k0, k1), table)
    if case.get("prepared"):  # agreed once beforehand: the call itself must run no agreement collective
        call["shards"] = agree_shards(*shards, **call)
        with mock.patch("baton_fast.distributed.attention.agree", side_effect=AssertionError("agreed per call")):
            result = (fn or hybrid_attention)(*shards, **scheme, **call, check_values=False)
    else:
        result = (fn or hybrid_attention)(*shards, **scheme, **call)
    return (result if kwargs["return_lse"] else (result, None)), (q0, q1, k0, k1)


def _errors(name: str, got, single, ref64, baseline) -> dict:
    """``got`` against single-process (relative error) and against float64 (the DESIGN §5 budget)."""
    from baton_fast.numerics import budget, max_error

    finite = single[torch.isfinite(single)]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    return {f"{name}_rel": max_error(got, single) / max(scale, 1e-30),
            f"{name}_budget_ok": max_error(got, ref64) <= budget(max_error(baseline, ref64), ref64, torch.float32),
            f"{name}_shape_ok": tuple(got.shape) == tuple(single.shape)}


def _run_case(case: dict, rank: int, meshes: dict) -> dict:
    import baton_fast
    from baton_fast import reference

    q, k, v, q_coords, k_coords, table, kwargs = _inputs(case)
    expected = baton_fast.rope_attention(q, k, v, q_coords, k_coords, table, **kwargs)
    lse_kwargs = {**kwargs, "return_lse": True}
    exact = reference.rope_attention(q.double(), k.double(), v.double(), q_coords, k_coords, table, **lse_kwargs)
    plain = reference.rope_attention(q, k, v, q_coords, k_coords, table, **lse_kwargs)
    (out, lse), (q0, q1, k0, k1) = _distributed_call(case, rank, meshes, q, k, v, q_coords, k_coords, table, kwargs)
    expected_out, expected_lse = expected if kwargs["return_lse"] else (expected, None)
    report = _errors("out", out, _shard(expected_out, q0, q1), _shard(exact[0], q0, q1), _shard(plain[0], q0, q1))
    if lse is not None:
        report.update(_errors("lse", lse, _shard(expected_lse, q0, q1, 2), _shard(exact[1], q0, q1, 2),
                              _shard(plain[1], q0, q1, 2)))
    report["out_has_neg_inf_lse_rows"] = bool(lse is not None and torch.isneginf(lse).any())
    return report


def _loss(out, lse, d_out, d_lse):
    """A scalar with the given output (and LSE) gradients; -inf LSE rows (no key) carry none."""
    loss = (out.double() * d_out).sum()
    return loss if lse is None else loss + (torch.where(torch.isfinite(lse), lse, 0.0).double() * d_lse).sum()


def _run_grad_case(case: dict, rank: int, meshes: dict) -> dict:
    """dq, dk, dv of this rank's shards against the same shards of single-process autograd of
    ``rope_attention`` (and of the float64 reference), for seeded output and LSE gradients."""
    import baton_fast
    from baton_fast import reference

    q, k, v, q_coords, k_coords, table, kwargs = _inputs(case)
    g = torch.Generator().manual_seed(7)
    d_out = torch.randn(q.shape, generator=g, dtype=torch.float64)
    d_lse = torch.randn((q.shape[0], q.shape[2], q.shape[1]), generator=g, dtype=torch.float64)
    lse_kwargs = {**kwargs, "return_lse": True}

    def full_grads(fn, dtype):
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        result = fn(*leaves, q_coords, k_coords, table, **lse_kwargs)
        _loss(*result, d_out, d_lse if kwargs["return_lse"] else 0.0).backward()
        return [x.grad for x in leaves]

    single = full_grads(baton_fast.rope_attention, torch.float32)
    exact = full_grads(reference.rope_attention, torch.float64)
    plain = full_grads(reference.rope_attention, torch.float32)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    (out, lse), (q0, q1, k0, k1) = _distributed_call(case, rank, meshes, *leaves, q_coords, k_coords, table, kwargs)
    _loss(out, lse, _shard(d_out, q0, q1), _shard(d_lse, q0, q1, 2) if lse is not None else 0.0).backward()
    report = {}
    for name, leaf, (start, stop) in (("dq", leaves[0], (q0, q1)), ("dk", leaves[1], (k0, k1)),
                                      ("dv", leaves[2], (k0, k1))):
        i = "qkv".index(name[1])
        got = leaf.grad[:, start:stop]
        report.update(_errors(name, got, _shard(single[i], start, stop), _shard(exact[i], start, stop),
                              _shard(plain[i], start, stop)))
    return report


def _dit_inputs():
    """The tiny preset's DiT (seeded weights) and one run's inputs: 1 s (48 video tokens, 12 plan tokens),
    two text rows of 5 tokens (the rows of a CFG pair), layout masks."""
    from baton_fast.model.config import get_preset
    from baton_fast.model.dit import DualBranchDiT
    from baton_fast.model.layout import LayoutGuidance
    from baton_fast.model.planner import PlannedTokens, rs_rope_coords

    cfg = get_preset("tiny")
    torch.manual_seed(0)
    dit = DualBranchDiT(cfg).eval()
    g = torch.Generator().manual_seed(1)
    shape, pc = cfg.shape(1.0), cfg.planner
    plan = PlannedTokens(torch.randn(2, shape.keyframes * pc.grid ** 2, pc.video_feature_dim, generator=g),
                         torch.randn(2, shape.chunks * pc.audio_tokens_per_chunk, pc.audio_feature_dim, generator=g),
                         *rs_rope_coords(cfg, shape))
    text = [torch.randn(2, 5, cfg.text_dim, generator=g) for _ in range(2)]
    lens = torch.tensor([5, 3], dtype=torch.int32)
    text_groups = torch.full((2, 5), -1, dtype=torch.int64)
    text_groups[:, 1:3] = 2
    layout = LayoutGuidance(torch.randint(1, 4, (1, shape.video_tokens), generator=g), text_groups)
    latents = (torch.randn(2, *shape.video_latent, generator=g),
               torch.randn(2, shape.audio_latents, cfg.audio.latent_channels, generator=g))
    return dit, shape, (text[0], lens, text[1], lens, plan), layout, latents


def _run_dit_case(case: dict, rank: int, meshes: dict) -> dict:
    from baton_fast.distributed import init_sequence_mesh
    from baton_fast.model.sampler import GuidedVelocity, SamplerOptions, sample

    dit, shape, run_inputs, layout, (video, audio) = _dit_inputs()
    mesh = init_sequence_mesh(*case["mesh"])
    layout = layout if case.get("layout") else None
    if case.get("grad"):
        return _dit_gradients(dit, shape, run_inputs, layout, video, audio, mesh)
    with torch.inference_mode():
        contexts = [dit.prepare(shape, *run_inputs), dit.prepare(shape, *run_inputs, mesh=mesh)]
        if case.get("steps"):
            options = SamplerOptions(steps=case["steps"], progress=False)
            outputs = [sample(GuidedVelocity(dit, ctx, options.video_guidance, options.audio_guidance),
                              video[:1], audio[:1], options) for ctx in contexts]
        else:
            outputs = [dit(video, audio, torch.tensor([900.0, 250.0]), ctx, layout) for ctx in contexts]
    (single_video, single_audio), (sharded_video, sharded_audio) = outputs
    report = {}
    for name, got, single in (("video", sharded_video, single_video), ("audio", sharded_audio, single_audio)):
        report[f"{name}_rel"] = float((got - single).abs().max() / single.abs().max())
        report[f"{name}_shape_ok"] = tuple(got.shape) == tuple(single.shape)
    # the plan K/V cache: this rank's plan tokens (ring), or every plan token of this rank's heads (Ulysses)
    report["plan_cache_shape"] = list(contexts[1].video.plan_kv[0][0].shape)
    report["plan_shape"] = list(contexts[0].video.plan_kv[0][0].shape)
    return report


def _dit_gradients(dit, shape, run_inputs, layout, video, audio, mesh) -> dict:
    """One DiT forward + backward, one process against the mesh: the gradients of both latents and of every
    weight for seeded output gradients.  Sharded, each rank back-propagates its share of the loss (the
    output is replicated: ``loss / world``) and the gradients of the replicated inputs and weights are
    summed over the ranks, as data parallelism would."""
    import torch.distributed as dist

    g = torch.Generator().manual_seed(3)
    t = torch.tensor([900.0, 250.0])
    with torch.no_grad():
        contexts = [dit.prepare(shape, *run_inputs), dit.prepare(shape, *run_inputs, mesh=mesh)]
    d_video, d_audio = torch.randn(video.shape, generator=g), torch.randn(audio.shape, generator=g)
    flat = []
    for ctx, share in zip(contexts, (1.0, 1.0 / mesh.size)):
        dit.zero_grad(set_to_none=True)
        leaves = [x.clone().requires_grad_() for x in (video, audio)]
        out_video, out_audio = dit(*leaves, t, ctx, layout)
        (((out_video * d_video).sum() + (out_audio * d_audio).sum()) * share).backward()
        grads = [x.grad for x in leaves] + [p.grad if p.grad is not None else torch.zeros_like(p)
                                            for p in dit.parameters()]
        flat.append(torch.cat([x.flatten() for x in grads]))
    dist.all_reduce(flat[1], group=mesh.group)
    single, sharded = flat
    n_video, n_audio = video.numel(), audio.numel()
    parts = {"video": slice(0, n_video), "audio": slice(n_video, n_video + n_audio),
             "weights": slice(n_video + n_audio, None)}
    report = {}
    for name, part in parts.items():
        report[f"{name}_grad_rel"] = float((sharded[part] - single[part]).abs().max() / single[part].abs().max())
        report[f"{name}_grad_nonzero"] = bool(single[part].abs().max() > 0)
    return report


def _run_error_case(case: dict, rank: int, meshes: dict) -> dict:
    from baton_fast.distributed import (SequenceMesh, ShardPlan, hybrid_attention, init_sequence_mesh, ring_attention,
                                        ulysses_attention)
    from baton_fast.distributed.dit import SequenceSharding

    torch.manual_seed(0)
    name = case["name"]
    q = torch.randn(1, 5, 3 if "heads" in name else 4, 16)
    kwargs = {}
    if name == "ranks_disagree_on_head_dim" and rank == 1:
        q = torch.randn(1, 5, 4, 32)
    if name == "ranks_disagree_on_k_lens":
        kwargs["k_lens"] = torch.tensor([5 - rank])
    call = q
    if name == "one_rank_bad_argument" and rank == 0:
        call = q[0]  # 3 dims
    try:
        if name == "mesh_not_world_size":
            init_sequence_mesh(3, 1)
        elif name == "shards_plan_not_this_rank":  # checked locally, before anything moves
            ring_attention(q, q, q, rotate_q=False, rotate_k=False, shards=ShardPlan((5, 5), (5, 4)) if rank else
                           ShardPlan((4, 5), (5, 5)))
        elif name == "prepared_run_ranks_disagree":
            SequenceSharding.for_run(SequenceMesh.ulysses_only(), 48 + rank, 12)
        elif name == "hybrid_heads_not_divisible":
            hybrid_attention(q, q, q, rotate_q=False, rotate_k=False, mesh=meshes["hybrid"])
        else:
            ulysses_attention(call, q, q, rotate_q=False, rotate_k=False, **kwargs)
    except Exception as exc:  # recorded, checked by the test
        return {"raised": type(exc).__name__, "message": str(exc)}
    return {"raised": None, "message": ""}


def worker(world: int) -> dict:
    """Every case of ``world`` on this rank (run by :func:`run_local_group`): ``{case name: result}``."""
    import torch.distributed as dist
    from baton_fast.distributed import init_sequence_mesh

    rank = dist.get_rank()
    meshes = {"hybrid": init_sequence_mesh(2, 2) if world == 4 else None}
    results = {}
    runners = [(CASES, _run_case), (GRAD_CASES, _run_grad_case), (DIT_CASES, _run_dit_case),
               (ERROR_CASES, _run_error_case)]
    for case, run in [(case, run) for cases, run in runners for case in cases]:
        if case["world"] != world:
            continue
        try:
            results[case["name"]] = run(case, rank, meshes)
        except Exception:
            results[case["name"]] = {"crashed": traceback.format_exc()}
            break  # the ranks may be out of step now: stop rather than wait in the next collective
    return results


@pytest.fixture(scope="module")
def results():
    cache = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            cache[world] = run_local_group(worker, world, world, timeout_s=WORKERS_TIMEOUT_S,
                                           collective_timeout_s=COLLECTIVE_TIMEOUT_S)
        return cache[world]
    return get


def _case_result(results, case):
    per_rank = [r.get(case["name"]) for r in results(case["world"])]
    for rank, res in enumerate(per_rank):
        assert res is not None, f"rank {rank} did not run {case['name']} (an earlier case crashed)"
        assert "crashed" not in res, f"rank {rank}:\n{res['crashed']}"
    return per_rank


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_sequence_parallel_equals_single_process(results, case):
    for rank, res in enumerate(_case_result(results, case)):
        for side in ("out", "lse") if case.get("lse") else ("out",):
            assert res[f"{side}_shape_ok"], f"rank {rank}: {side} shape differs"
            assert res[f"{side}_rel"] <= REL_TOL, f"rank {rank}: {side} rel error {res[f'{side}_rel']:.3g}"
            assert res[f"{side}_budget_ok"], f"rank {rank}: {side} outside the float64 budget"
    if case.get("groups") and case.get("lse"):  # the case has a query with no allowed key
        assert any(r["out_has_neg_inf_lse_rows"] for r in _case_result(results, case))


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c["name"] for c in GRAD_CASES])
def test_sequence_parallel_backward_equals_single_process(results, case):
    for rank, res in enumerate(_case_result(results, case)):
        for grad in ("dq", "dk", "dv"):
            assert res[f"{grad}_shape_ok"], f"rank {rank}: {grad} shape differs"
            assert res[f"{grad}_rel"] <= REL_TOL, f"rank {rank}: {grad} rel error {res[f'{grad}_rel']:.3g}"
            assert res[f"{grad}_budget_ok"], f"rank {rank}: {grad} outside the float64 budget"


@pytest.mark.parametrize("case", DIT_CASES, ids=[c["name"] for c in DIT_CASES])
def test_sharded_dit_equals_single_process(results, case):
    if case.get("grad"):
        for rank, res in enumerate(_case_result(results, case)):
            for name in ("video", "audio", "weights"):
                assert res[f"{name}_grad_nonzero"], f"rank {rank}: no {name} gradient to compare"
                assert res[f"{name}_grad_rel"] <= REL_TOL, f"rank {rank}: {name} grad rel {res[f'{name}_grad_rel']:.3g}"
        return
    for rank, res in enumerate(_case_result(results, case)):
        for branch in ("video", "audio"):
            assert res[f"{branch}_shape_ok"], f"rank {rank}: {branch} shape differs"
            assert res[f"{branch}_rel"] <= REL_TOL, f"rank {rank}: {branch} rel error {res[f'{branch}_rel']:.3g}"
        B, P, H, D = res["plan_shape"]
        ring, ulysses = case["mesh"]
        share = shard_lengths(P, ring * ulysses)[rank] if ring > 1 else P  # with a ring: this rank's plan tokens ...
        assert res["plan_cache_shape"] == [B, share, H // ulysses if ring == 1 else H, D]  # ... Ulysses: H/U heads


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["name"] for c in ERROR_CASES])
def test_bad_configuration_raises_on_every_rank(results, case):
    for rank, res in enumerate(_case_result(results, case)):
        match = case["match"] if isinstance(case["match"], str) else case["match"][rank]
        assert res["raised"] is not None, f"rank {rank} did not raise"
        assert match in res["message"], f"rank {rank}: {res['raised']}: {res['message']}"


def _rank_one_fails():
    import torch.distributed as dist
    if dist.get_rank() == 1:
        raise ValueError("deliberate failure on rank 1")
    dist.barrier()  # rank 0 waits for a rank that is gone: the launcher must not wait with it


def test_failing_rank_ends_the_run_with_its_error():
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 of 2 failed(.|\n)*deliberate failure on rank 1"):
        run_local_group(_rank_one_fails, 2, timeout_s=60, collective_timeout_s=30)
    assert time.monotonic() - started < 30


def test_generate_sp_degree_outside_torchrun_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    from baton_fast import cli

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = cli.main(["generate", "--video-prompt", "a", "--audio-prompt", "b", "--sp-degree", "2",
                     "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--sp-degree: expected to run under torchrun" in err[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_generate_under_torchrun_writes_one_clip_from_rank_zero(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "sp.mp4"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
               "-m", "baton_fast.cli", "generate", "--video-prompt", "a red ball", "--audio-prompt", "a thud",
               "--seconds", "1", "--steps", "2", "--sp-degree", "2", "--no-progress", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sp.json", "sp.mp4", "sp.wav"]
    assert done.stdout.count("wrote ") == 1  # rank 0 only
    report = json.loads((tmp_path / "sp.json").read_text())
    assert report["sequence_parallel"] == {"degree": 2, "ulysses": 2, "ring": 1}


def test_communication_model_counts_by_hand():
    from baton_fast.model.config import get_preset
    from bench.cost_model import sp_traffic

    cfg = get_preset("baton-paper")  # 15,004 video tokens, 22,599 plan tokens, 157 audio tokens, 30 blocks
    assert sum(sp_traffic(cfg, 5.0, 1, "ulysses").values()) == 0
    width = 2 * 3072 * 2  # CFG rows x dim x bf16 bytes, per token
    ulysses = sp_traffic(cfg, 5.0, 2, "ulysses")
    assert ulysses["video self-attention"] == 30 * 4 * 0.5 * 7502 * width
    assert ulysses["plan cross-attention"] == 30 * 2 * 0.5 * 7502 * width  # q and o: the plan K/V cached by heads
    ring = sp_traffic(cfg, 5.0, 8, "ring")
    assert ring["video self-attention"] == 30 * 2 * 7 * 1876 * width
    assert ring["audio -> video cross-attention"] == 30 * 7 * (157 * width + 2 * 24 * 157 * 4)
    assert sum(ring.values()) > sum(sp_traffic(cfg, 5.0, 8, "ulysses").values())
    assert sp_traffic(get_preset("ovi-720p-5s"), 5.0, 4, "ring")["plan cross-attention"] == 0
    with pytest.raises(ValueError, match="dividing 24 heads"):
        sp_traffic(cfg, 5.0, 5, "ulysses")


# ====================================================================== gpu-check --sp-degree (CPU: its exits)
def _gpu_check_exit(argv, capsys, tmp_path) -> str:
    from baton_fast import cli

    out = tmp_path / "gpu"
    assert cli.main(["gpu-check", "--out", str(out), *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert not out.exists()
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit without CUDA")
def test_gpu_check_sp_degree_without_cuda_is_a_one_line_error(capsys, tmp_path):
    assert "no CUDA device is available" in _gpu_check_exit(["--sp-degree", "2"], capsys, tmp_path)


@pytest.mark.parametrize("degree", ["1", "0", "-3"])
def test_gpu_check_sp_degree_below_two_is_a_one_line_error(degree, capsys, tmp_path):
    line = _gpu_check_exit(["--sp-degree", degree], capsys, tmp_path)
    assert f"--sp-degree: expected an integer >= 2 (GPUs, one rank each), got {degree}" in line


def test_gpu_check_sp_degree_with_too_few_gpus_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    import torch.distributed as dist

    # a stand-in machine with one CUDA device (and NCCL), the compiled-kernel environment
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("BATON_FAST_BACKEND", raising=False)
    line = _gpu_check_exit(["--sp-degree", "4"], capsys, tmp_path)
    assert "--sp-degree 4: this machine has 1 CUDA device(s); the check needs one per rank" in line


def test_gpu_check_sp_records_fail_when_any_rank_fails_its_check():
    from baton_fast.gpu_check.sequence_parallel import _records

    def rank_result(ok, grad_ok, rel):  # stand-in rank results (no GPU ran): only the aggregation is tested
        scheme = dict(rel_vs_single=rel, error=0.01, budget=0.02, ok=ok, grad_ok=dict(dq=grad_ok, dk=True, dv=True),
                      forward_ms=5.0, forward_backward_ms=15.0)
        return {"single_ms": 8.0, "repeats": 10, "schemes": {"ring": scheme, "ulysses": dict(scheme, ok=True)}}

    records = _records([rank_result(True, True, 1e-3), rank_result(True, False, 4e-3)], 2, "cuda:stand-in x 2")
    checks = {r["backend"]: r for r in records if r["metric"] == "max rel diff vs 1 GPU"}
    assert checks["ring attention, 2 ranks (NCCL)"]["extra"]["ok"] is False  # rank 1's dq outside its budget
    assert checks["ring attention, 2 ranks (NCCL)"]["extra"]["gradients_ok"] == dict(dq=False, dk=True, dv=True)
    assert checks["ring attention, 2 ranks (NCCL)"]["value"] == 4e-3  # the worst rank
    forward = [r for r in records if r["metric"] == "forward time" and r["backend"].startswith("ring")][0]
    assert forward["extra"]["speedup_vs_1_gpu"] == 8.0 / 5.0


def test_gpu_check_sp_rank_program_runs_under_gloo_on_a_tiny_grid():
    """The ranks' program of ``gpu-check --sp-degree`` end to end on the CPU (gloo, 2 ranks, 2x3x4 tokens):
    its checks pass and every record is there.  Its times are CPU times of a toy shape and are not kept."""
    from baton_fast.gpu_check.sequence_parallel import _rank_main, _records

    per_rank = run_local_group(_rank_main, 2, 2, 0, (2, 3, 4), 1, timeout_s=WORKERS_TIMEOUT_S,
                               collective_timeout_s=COLLECTIVE_TIMEOUT_S)
    records = _records(per_rank, 2, "cuda:not-run (CPU test)")
    checks = [r for r in records if r["metric"] == "max rel diff vs 1 GPU"]
    assert [r["backend"] for r in checks] == ["ring attention, 2 ranks (NCCL)", "ulysses attention, 2 ranks (NCCL)"]
    for r in checks:
        assert r["extra"]["ok"], r
        assert r["value"] <= 2e-2  # bf16: the sharded shard against the one-process result
    assert sum(r["metric"] in ("forward time", "forward+backward time") for r in records) == 4
