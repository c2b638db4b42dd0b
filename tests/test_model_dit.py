"""Dual-branch DiT: patchify, a fusion block against a float64 oracle on both backends, the plan K/V
cache, batched classifier-free guidance, torch.compile without graph breaks."""
import copy

import pytest
import torch

import baton_fast
from baton_fast import reference
from baton_fast.model.config import get_preset
from baton_fast.model.dit import (DualBranchDiT, PlanCrossAttention, patchify_audio, patchify_video,
                                  unpatchify_audio, unpatchify_video)
from baton_fast.model.planner import PlannedTokens, rs_rope_coords
from baton_fast.model.sampler import GuidedVelocity, compile_blocks

CFG = get_preset("tiny")


def random_plan(cfg, shape, batch, generator):
    pc = cfg.planner
    return PlannedTokens(
        torch.randn(batch, shape.keyframes * pc.grid ** 2, pc.video_feature_dim, generator=generator),
        torch.randn(batch, shape.chunks * pc.audio_tokens_per_chunk, pc.audio_feature_dim, generator=generator),
        *rs_rope_coords(cfg, shape))


def random_text(batch, tokens, generator):
    text = torch.randn(batch, tokens, CFG.text_dim, generator=generator)
    lens = torch.randint(1, tokens + 1, (batch,), generator=generator, dtype=torch.int32)
    return text, lens


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return DualBranchDiT(CFG).eval()


@pytest.fixture(scope="module")
def case():
    """A short clip (0.5 s: 2 x 4 x 4 video tokens, 4 audio tokens), batch 2, padded text."""
    g = torch.Generator().manual_seed(1)
    shape = CFG.shape(0.5)
    video_text, video_lens = random_text(2, 5, g)
    audio_text, audio_lens = random_text(2, 5, g)
    return dict(shape=shape, plan=random_plan(CFG, shape, 2, g), video_text=video_text, video_lens=video_lens,
                audio_text=audio_text, audio_lens=audio_lens,
                video=torch.randn(2, *shape.video_latent, generator=g),
                audio=torch.randn(2, shape.audio_latents, CFG.audio.latent_channels, generator=g),
                timesteps=torch.tensor([900.0, 250.0]))


def prepare(model, c, dtype=torch.float32):
    plan = c["plan"]
    plan = PlannedTokens(plan.video.to(dtype), plan.audio.to(dtype), plan.video_coords, plan.audio_coords)
    return model.prepare(c["shape"], c["video_text"].to(dtype), c["video_lens"], c["audio_text"].to(dtype),
                         c["audio_lens"], plan)


def first_block(model, c, dtype=torch.float32):
    """Embed the inputs and run fusion block 0: returns (video tokens, audio tokens)."""
    ctx = prepare(model, c, dtype)
    video = model.video_io.patch_embed(patchify_video(c["video"].to(dtype), CFG.video.patch))
    audio = model.audio_io.patch_embed(patchify_audio(c["audio"].to(dtype), CFG.audio.patch))
    _, video_mod = model.video_io.time(c["timesteps"], dtype)
    _, audio_mod = model.audio_io.time(c["timesteps"], dtype)
    return model.blocks[0](video, audio, video_mod, audio_mod, ctx.video, ctx.audio, ctx.video.plan_kv[0],
                           ctx.audio.plan_kv[0])


def without_value_checks(reference_op):
    """A reference op called as the model calls the baton-fast op (the reference reads no ``check_values``)."""
    def call(*args, check_values=True, **kwargs):
        return reference_op(*args, **kwargs)
    return call


# ---------------------------------------------------------------------- patchify
def test_patchify_round_trip_and_token_order():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(2, 3, 5, 8, 6, generator=g)
    tokens = patchify_video(video, (1, 2, 2))
    assert tokens.shape == (2, 5 * 4 * 3, 12)
    # token (t, h, w) holds pixels [c, t, 2h:2h+2, 2w:2w+2] in (c, ph, pw) order
    t, h, w = 3, 1, 2
    assert torch.equal(tokens[1, (t * 4 + h) * 3 + w], video[1, :, t, 2 * h:2 * h + 2, 2 * w:2 * w + 2].reshape(-1))
    assert torch.equal(unpatchify_video(tokens, (5, 4, 3), (1, 2, 2), 3), video)
    audio = torch.randn(2, 12, 5, generator=g)
    assert torch.equal(patchify_audio(audio, (3,))[0, 1], audio[0, 3:6].reshape(-1))
    assert torch.equal(unpatchify_audio(patchify_audio(audio, (3,)), (3,), 5), audio)


# ---------------------------------------------------------------------- numerics
def test_block_matches_float64_oracle_on_reference_and_triton(dit, case, monkeypatch):
    """Fusion block 0 in fp32 on both backends against the same block in float64 (reference ops):
    the Triton error is within twice the plain-PyTorch error plus a rounding floor (DESIGN.md §5)."""
    dit64 = copy.deepcopy(dit).double()
    with monkeypatch.context() as m, torch.no_grad():
        for name in ("rope_attention", "qk_rmsnorm_rope", "rmsnorm_rope", "apply_rope"):
            m.setattr(baton_fast, name, without_value_checks(getattr(reference, name)))
        oracle = first_block(dit64, case, torch.float64)
    outputs = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("BATON_FAST_BACKEND", backend)
        with torch.no_grad():
            outputs[backend] = first_block(dit, case)
    for i, name in enumerate(("video", "audio")):
        ref, tri = outputs["reference"][i], outputs["triton"][i]
        assert ref.dtype == tri.dtype == torch.float32 and ref.shape == oracle[i].shape
        assert torch.isfinite(tri).all()
        err_ref = (ref.double() - oracle[i]).abs().max().item()
        err_tri = (tri.double() - oracle[i]).abs().max().item()
        assert err_tri <= 2 * err_ref + 1e-5 * oracle[i].abs().max().item(), (name, err_tri, err_ref)
        assert err_ref < 1e-4 * oracle[i].abs().max().item(), (name, err_ref)


def test_cached_plan_keys_equal_recomputed(dit, case):
    """The plan K/V cached by prepare() give the same attention as projecting and rotating K inside
    the kernel on every call."""
    ctx = prepare(dit, case)
    attn: PlanCrossAttention = dit.blocks[1].video.plan_attn
    geo = ctx.video.geometry
    x = torch.randn(2, case["shape"].video_tokens, CFG.video.dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cached = attn(x, ctx.video.plan_kv[1], geo)
        k, v = attn.kv(dit.video_io.plan_embed(case["plan"].video))
        recomputed = super(PlanCrossAttention, attn).forward(x, k, v, geo.coords, geo.plan_coords, geo.table)
        k_cached, v_cached = ctx.video.plan_kv[1]
    assert torch.equal(v_cached, v)
    assert torch.allclose(k_cached, baton_fast.apply_rope(k, geo.plan_coords, geo.table))
    assert torch.allclose(cached, recomputed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("branch", ["video", "audio"])
def test_pre_rotated_cross_attention_equals_in_kernel_rotation(dit, case, branch):
    """The text + cross-modal attention on Q, K normalised and rotated by the pre-pass (the fast ``plain`` tiles)
    equals the module-level formulation: ``nn.RMSNorm`` of Q and K, then rotation inside ``rope_attention``."""
    ctx = prepare(dit, case)
    own, other = (ctx.video, ctx.audio) if branch == "video" else (ctx.audio, ctx.video)
    attn = getattr(dit.blocks[0], branch).cross_attn
    geo, g = own.geometry, torch.Generator().manual_seed(4)
    x = torch.randn(2, geo.coords.shape[1], attn.q.in_features, generator=g)
    others = torch.randn(2, other.geometry.coords.shape[1], attn.norm_other.normalized_shape[0], generator=g)
    with torch.no_grad():
        fast = attn(x, own.text, own.text_lens, others, geo, other.geometry.coords)
        q = attn.queries(x)
        k, v = attn.kv(own.text)
        out = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False, k_lens=own.text_lens)
        k, v = attn.other_kv(attn.norm_other(others))
        out = out + baton_fast.rope_attention(q, k, v, geo.coords, other.geometry.coords, geo.temporal_table,
                                              k_table=geo.other_temporal_table)
        module_level = attn.o(out.flatten(2))
    torch.testing.assert_close(fast, module_level, atol=1e-5, rtol=1e-5)


def test_batched_guidance_equals_two_separate_passes(dit, case):
    """[cond; uncond] in one forward == a conditional and an unconditional forward, then CFG."""
    c = case
    x_video, x_audio = c["video"][:1], c["audio"][:1]
    sigma = torch.tensor(0.6)
    with torch.no_grad():
        batched = GuidedVelocity(dit, prepare(dit, c), 4.0, 3.0)(x_video, x_audio, sigma)
        halves = []
        for row in (0, 1):
            plan = c["plan"]
            ctx = dit.prepare(c["shape"], c["video_text"][row:row + 1], c["video_lens"][row:row + 1],
                              c["audio_text"][row:row + 1], c["audio_lens"][row:row + 1],
                              PlannedTokens(plan.video[row:row + 1], plan.audio[row:row + 1], plan.video_coords,
                                            plan.audio_coords))
            halves.append(dit(x_video, x_audio, torch.tensor([600.0]), ctx))
    for i, scale in ((0, 4.0), (1, 3.0)):
        cond, uncond = halves[0][i], halves[1][i]
        assert not torch.allclose(cond, uncond)  # the two rows really differ
        assert torch.allclose(batched[i], uncond + scale * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_forward_shapes_dtypes_and_bfloat16(dit, case):
    with torch.no_grad():
        video, audio = dit(case["video"], case["audio"], case["timesteps"], prepare(dit, case))
        assert video.shape == case["video"].shape and audio.shape == case["audio"].shape
        assert video.dtype == audio.dtype == torch.float32
        dit16 = copy.deepcopy(dit).to(torch.bfloat16)
        video16, audio16 = dit16(case["video"], case["audio"], case["timesteps"], prepare(dit16, case, torch.bfloat16))
    assert video16.dtype == audio16.dtype == torch.bfloat16
    # bf16 rounding through the blocks: measured 0.013 (video) and 0.007 (audio), about one bf16 ulp at the outputs'
    # magnitude; four ulps of budget.  (atol 0.15 + rtol 0.1, before, passed with a block's self-attention or FFN
    # dropped in bf16: 0.084, 0.091.)
    for low, full in ((video16, video), (audio16, audio)):
        assert (low.float() - full).abs().max() <= 4 * 2.0 ** -7 * max(1.0, full.abs().max().item())


def test_forward_rejects_wrong_latents_and_missing_plan(dit, case):
    ctx = prepare(dit, case)
    with pytest.raises(ValueError, match="latents"):
        dit(case["video"][:, :, :1], case["audio"], case["timesteps"], ctx)
    with pytest.raises(ValueError, match="needs planned tokens"):
        dit.prepare(case["shape"], case["video_text"], case["video_lens"], case["audio_text"], case["audio_lens"])
    with pytest.raises(ValueError, match="video_text"):
        dit.prepare(case["shape"], case["video_text"][..., :7], case["video_lens"], case["audio_text"],
                    case["audio_lens"], case["plan"])


def test_compiled_blocks_fullgraph_match_eager(dit, case):
    """Regional torch.compile(fullgraph=True) of every fusion block: no graph break, same output."""
    model = copy.deepcopy(dit)
    ctx = prepare(model, case)
    with torch.no_grad():
        eager = model(case["video"], case["audio"], case["timesteps"], ctx)
        compile_blocks(model, backend="aot_eager")
        compiled = model(case["video"], case["audio"], case["timesteps"], ctx)
    for e, c in zip(eager, compiled):
        assert torch.allclose(e, c, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------- layout attention on a BlockMask
def layout_case(monkeypatch):
    """A 2 s clip (5 x 4 x 4 = 80 video tokens) with a layout of three groups and an overlap (bits 1, 2, 4 and 3
    mixed over the grid, so raster order mixes them in every block) and 32 x 16 mask blocks (80 queries: the last
    query block is half full)."""
    from baton_fast.model import layout as layout_module

    monkeypatch.setattr(layout_module, "LAYOUT_BLOCK", (32, 16))
    g = torch.Generator().manual_seed(11)
    shape = CFG.shape(2.0)
    video_text, video_lens = random_text(2, 5, g)
    audio_text, audio_lens = random_text(2, 5, g)
    groups = torch.tensor([1, 2, 4, 1, 2, 4, 3])[torch.randint(0, 7, (1, shape.video_tokens), generator=g)]
    text_groups = torch.full((2, 5), -1, dtype=torch.int64)
    text_groups[:, 1:3] = 2
    return dict(shape=shape, plan=random_plan(CFG, shape, 2, g), video_text=video_text, video_lens=video_lens,
                audio_text=audio_text, audio_lens=audio_lens, video=torch.randn(2, *shape.video_latent, generator=g),
                audio=torch.randn(2, shape.audio_latents, CFG.audio.latent_channels, generator=g),
                timesteps=torch.tensor([900.0, 250.0]),
                layout=layout_module.LayoutGuidance(groups, text_groups))


def in_raster_order(layout):
    """The same layout with the identity as its token order: the oracle's forward runs in raster order, its
    self-attention on the block mask of the raster group masks (the rule ``q_groups & k_groups != 0``)."""
    import dataclasses

    from baton_fast.block_mask import BlockMask
    from baton_fast.model.layout import LAYOUT_BLOCK, GroupOrder

    same = dataclasses.replace(layout)
    identity = torch.arange(layout.video_groups.shape[1])
    groups = layout.video_groups
    object.__setattr__(same, "order", GroupOrder(identity, identity, groups,
                                                 BlockMask.from_groups(groups, groups, *LAYOUT_BLOCK)))
    return same


def test_layout_forward_in_group_order_matches_the_float64_raster_oracle(dit, monkeypatch):
    """A masked forward (tokens and coordinates in the layout's group order, self-attention on its block mask, on the
    CPU block-sparse path) against float64 in raster order with the same token mask (fp32 rounding); the block mask skips
    blocks that raster order could not; the masks matter.  The kernel on the same mask: tests/test_layout_attention.py."""
    c = layout_case(monkeypatch)
    order = c["layout"].order
    raster_mask = in_raster_order(c["layout"]).order.mask
    assert order.mask.visited_blocks() < raster_mask.visited_blocks() == raster_mask.num_k_blocks * 3
    assert torch.equal(order.groups[0], c["layout"].video_groups[0, order.to_groups])
    assert torch.equal(order.to_groups[order.to_raster], torch.arange(c["shape"].video_tokens))
    dit64 = copy.deepcopy(dit).double()
    with monkeypatch.context() as m, torch.no_grad():
        for name in ("rope_attention", "qk_rmsnorm_rope", "rmsnorm_rope", "apply_rope"):
            m.setattr(baton_fast, name, without_value_checks(getattr(reference, name)))
        oracle = dit64(c["video"].double(), c["audio"].double(), c["timesteps"], prepare(dit64, c, torch.float64),
                       in_raster_order(c["layout"]))
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    ctx = prepare(dit, c)
    with torch.no_grad():
        grouped = dit(c["video"], c["audio"], c["timesteps"], ctx, c["layout"])
        unmasked = dit(c["video"], c["audio"], c["timesteps"], ctx)
    assert (unmasked[0] - grouped[0]).abs().max() > 1e-2 * oracle[0].abs().max()
    for i, name in enumerate(("video", "audio")):
        assert grouped[i].dtype == torch.float32 and grouped[i].shape == oracle[i].shape
        err = (grouped[i].double() - oracle[i]).abs().max().item()
        assert err < 1e-5 * oracle[i].abs().max().item(), (name, err)  # fp32 rounding (4e-7 seen)


# ---------------------------------------------------------------------- quantised steps: the quantising pre-pass
class PrepassSpy:
    """Wraps ``baton_fast.qk_rmsnorm_rope``: records the scheme of every call (None: full precision); with
    ``drop_quant`` it runs the pre-pass in full precision whatever the caller asked (the path before the
    quantising pre-pass: ``rope_attention`` then quantises the rotated q, k itself)."""

    def __init__(self, function, drop_quant=False):
        self.function, self.drop_quant, self.schemes = function, drop_quant, []

    def __call__(self, *args, quant=None, **kwargs):
        self.schemes.append(quant)
        return self.function(*args, **kwargs) if self.drop_quant else self.function(*args, quant=quant, **kwargs)


def test_quantised_steps_quantise_q_and_k_in_the_prepass(dit, case, monkeypatch):
    """Inside the sampler's quant context (``attention_quant``) the self-, text and cross-modal attentions of both
    branches quantise Q and K in their pre-pass (``qk_rmsnorm_rope(quant=...)``), with the same arithmetic as
    before (fp32 pre-pass, then ``rope_attention`` quantising the rotated q, k: equal to rounding); masked calls
    (layout) and full-precision steps keep the unquantised pre-pass."""
    from baton_fast.model.layout import LayoutGuidance
    from baton_fast.quant import attention_quant

    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    ctx, c = prepare(dit, case), case
    prepass = baton_fast.qk_rmsnorm_rope
    results = {}
    for name, spy in (("prepass", PrepassSpy(prepass)), ("before", PrepassSpy(prepass, drop_quant=True))):
        monkeypatch.setattr(baton_fast, "qk_rmsnorm_rope", spy)
        with torch.no_grad(), attention_quant("int8"):
            results[name] = dit(c["video"], c["audio"], c["timesteps"], ctx)
        assert spy.schemes == ["int8"] * 6 * CFG.video.num_layers, name  # per block: 2 self, 2 text, 2 cross-modal
    spy = PrepassSpy(prepass)
    monkeypatch.setattr(baton_fast, "qk_rmsnorm_rope", spy)
    with torch.no_grad():
        full = dit(c["video"], c["audio"], c["timesteps"], ctx)
    assert spy.schemes == [None] * 6 * CFG.video.num_layers
    for prepassed, before, exact in zip(results["prepass"], results["before"], full):
        torch.testing.assert_close(prepassed, before, rtol=0, atol=1e-6)
        assert (prepassed - exact).abs().max() > 1e-4 * exact.abs().max()  # the step really ran quantised
    spy.schemes.clear()
    layout = LayoutGuidance(torch.randint(1, 4, (1, c["shape"].video_tokens)), torch.full((2, 5), -1))
    with torch.no_grad(), attention_quant("int8"):
        dit(c["video"], c["audio"], c["timesteps"], ctx, layout)
    # per block: video self (block mask), audio self, video text (masked), video cross-modal, audio text, audio cross
    assert spy.schemes == [None, "int8", None, "int8", "int8", "int8"] * CFG.video.num_layers


def test_quantised_plan_attention_quantises_q_in_its_prepass_and_the_cached_kv_once(dit, case, monkeypatch):
    """On quantised steps the plan cross-attention quantises Q in its ``rmsnorm_rope`` pass and reads the cached
    plan K (smoothed) and V quantised once per run and scheme (every step after the first reuses them; a new
    run quantises again), and ``rope_attention`` is handed QuantizedTensors for it; the output equals the path
    before (``rope_attention`` quantising the rotated q and the cached k, v in every call) to 1e-6."""
    from baton_fast import quant
    from baton_fast.model.dit import PlanKeyValues
    from baton_fast.quant import attention_quant

    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    c, layers = case, CFG.video.num_layers
    quantize, key_quantisations = quant.quantize, []
    monkeypatch.setattr(quant, "quantize", lambda x, scheme, smooth=False: key_quantisations.append((scheme, smooth))
                        or quantize(x, scheme, smooth=smooth))
    attention, calls = baton_fast.rope_attention, []
    monkeypatch.setattr(baton_fast, "rope_attention", lambda q, k, v, *a, **kw: calls.append((q, k, v))
                        or attention(q, k, v, *a, **kw))
    ctx = prepare(dit, c)

    def forward(context):
        return dit(c["video"], c["audio"], c["timesteps"], context)

    with torch.no_grad():
        full = forward(ctx)
    for scheme in quant.SCHEMES:
        calls.clear()
        with torch.no_grad(), attention_quant(scheme):
            steps = [forward(ctx) for _ in range(3)]
        assert key_quantisations == [(scheme, True)] * 2 * layers  # one K per block and branch for three steps
        key_quantisations.clear()
        cached = [kv.quantized(scheme) for branch in (ctx.video, ctx.audio) for kv in branch.plan_kv]
        plan_calls = [(q, v, pair) for q, k, v in calls for pair in cached if k is pair[0]]
        assert len(plan_calls) == 3 * 2 * layers
        for q, v, (_, plan_v) in plan_calls:
            assert isinstance(q, quant.QuantizedTensor) and q.scheme == scheme and v is plan_v
        assert isinstance(cached[0][1], quant.QuantizedTensor) == quant.FP8_PV[scheme]
        with monkeypatch.context() as m, torch.no_grad(), attention_quant(scheme):
            m.setattr(baton_fast, "rmsnorm_rope", PrepassSpy(baton_fast.rmsnorm_rope, drop_quant=True))
            m.setattr(PlanKeyValues, "quantized", lambda self, scheme: tuple(self))
            before = forward(ctx)
        assert all(torch.equal(a, b) for step in steps[:-1] for a, b in zip(step, steps[-1]))  # same inputs
        for now, old, exact in zip(steps[-1], before, full):
            assert now.dtype == old.dtype == torch.float32
            torch.testing.assert_close(now, old, rtol=0, atol=1e-6)
            assert (now - exact).abs().max() > 1e-4 * exact.abs().max()  # the step really ran quantised
    with torch.no_grad(), attention_quant("int8"):
        forward(ctx)
        assert key_quantisations == []  # still cached for this run
        forward(prepare(dit, c))
    assert key_quantisations == [("int8", True)] * 2 * layers  # a new run's plan K/V are new
