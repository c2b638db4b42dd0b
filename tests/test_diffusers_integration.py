"""baton_fast.integrations.diffusers: patched LTX-2 / Wan transformers give diffusers' outputs.

Tiny random-weight models (QK-norm weights randomised so the fused weights matter), fp32 on CPU:
reference backend within 1e-5 relative (max-norm) of the unpatched model; Triton under the
interpreter within DESIGN.md §5 of a float64 copy of the model.
"""
import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel, WanTransformer3DModel
from diffusers.models.transformers.transformer_ltx2 import LTX2Attention, LTX2AudioVideoAttnProcessor
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from baton_fast.integrations import diffusers as baton_diffusers
from baton_fast.integrations import diffusers_processors
from baton_fast.integrations.diffusers_processors import FastLTX2AttnProcessor, FastWanAttnProcessor, RotaryCoords

RTOL = 1e-5
LTX2_ROPES = ["rope", "audio_rope", "cross_attn_rope", "cross_attn_audio_rope"]
TEXT_LEN = 7
# row 0 right-padded (a prefix), row 1 left-padded (the default Gemma tokenizer side in diffusers' LTX-2 pipeline)
PADDED = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]])


def _randomise_qk_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm_q" in name or "norm_k" in name or "norm_added_k" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    return model


def tiny_ltx2(rope_type="interleaved", gated=False, num_layers=2, **config):
    torch.manual_seed(0)
    config = dict(dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16,
                       cross_attention_dim=32, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
                       audio_attention_head_dim=8, audio_cross_attention_dim=16, caption_channels=12), **config)
    model = LTX2VideoTransformer3DModel(num_layers=num_layers, rope_type=rope_type, gated_attn=gated,
                                        audio_gated_attn=gated, **config)
    return _randomise_qk_norms(model).eval()


def ltx2_inputs(frames=2, height=2, width=3, audio=5, mask=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = dict(hidden_states=torch.randn(2, frames * height * width, 8, generator=g),
             audio_hidden_states=torch.randn(2, audio, 4, generator=g),
             encoder_hidden_states=torch.randn(2, TEXT_LEN, 12, generator=g),
             audio_encoder_hidden_states=torch.randn(2, TEXT_LEN, 12, generator=g),
             timestep=torch.tensor([300.0, 700.0]), num_frames=frames, height=height, width=width,
             audio_num_frames=audio, return_dict=False)
    x = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in x.items()}
    if mask is not None:
        x.update(encoder_attention_mask=mask, audio_encoder_attention_mask=mask)
    return x


def tiny_wan(num_layers=2, **config):
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  out_channels=4, text_dim=12, freq_dim=16, ffn_dim=32, num_layers=num_layers,
                                  rope_max_seq_len=32, **config)
    return _randomise_qk_norms(model).eval()


def wan_inputs(frames=3, height=4, width=6, text=9, image=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = dict(hidden_states=torch.randn(2, 4, frames, height, width, generator=g), timestep=torch.tensor([300, 700]),
             encoder_hidden_states=torch.randn(2, text, 12, generator=g), return_dict=False)
    if image is not None:
        x["encoder_hidden_states_image"] = torch.randn(2, image, 12, generator=g)
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in x.items()}


def run(model, inputs):
    """The model's outputs followed by every attention module's output, in call order: each layer is
    compared, not only what survives the residual stream (where attention is a small term)."""
    attention_outputs = []
    hooks = [m.register_forward_hook(lambda module, args, out: attention_outputs.append(out.clone()))
             for m in model.modules() if isinstance(m, (LTX2Attention, WanAttention))]
    try:
        with torch.no_grad():
            outputs = [o.clone() for o in model(**inputs)]
    finally:
        for hook in hooks:
            hook.remove()
    return outputs + attention_outputs


def assert_rel_close(actual, expected, rtol=RTOL):
    for a, e in zip(actual, expected, strict=True):
        assert torch.isfinite(a).all()
        err = ((a - e).abs().max() / e.abs().max()).item()
        assert err <= rtol, f"max-norm relative error {err:.3g} > {rtol:g}"


def patched_and_unpatched(model, inputs):
    expected = run(model, inputs)
    with baton_diffusers.apply(model) as handle:
        actual = run(model, inputs)
    return actual, expected, handle


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")


# ------------------------------------------------------------------------------- LTX-2
@pytest.mark.parametrize("mask", [None, PADDED], ids=["no-mask", "padded-text"])
@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
def test_ltx2_equals_diffusers(rope_type, gated, mask):
    model = tiny_ltx2(rope_type, gated)
    actual, expected, handle = patched_and_unpatched(model, ltx2_inputs(mask=mask))
    assert handle.coordinate_ropes == LTX2_ROPES and handle.cos_sin_ropes == []
    assert_rel_close(actual, expected)


def test_ltx2_padding_mask_runs_as_key_lengths(monkeypatch):
    """Binary text masks reach the processors as key lengths: diffusers' attention is never called."""
    def fail(*args, **kwargs):
        raise AssertionError("dispatch_attention_fn called: the padding mask was not turned into key lengths")

    monkeypatch.setattr(diffusers_processors, "dispatch_attention_fn", fail)
    model = tiny_ltx2()
    inputs = ltx2_inputs(mask=PADDED)
    with baton_diffusers.apply(model):
        run(model, inputs)


def test_ltx2_text_with_no_kept_token_attends_to_all():
    """diffusers adds the same -1e4 to every key of an all-padding row, which softmax ignores."""
    model = tiny_ltx2()
    empty_row = PADDED.clone()
    empty_row[1] = 0
    with baton_diffusers.apply(model):
        actual = run(model, ltx2_inputs(mask=empty_row))
        unmasked = run(model, ltx2_inputs(mask=torch.stack([PADDED[0], torch.ones(TEXT_LEN, dtype=torch.long)])))
    assert_rel_close(actual, unmasked)


@pytest.mark.parametrize("kind", ["soft-mask", "video-self-attention-mask"])
def test_ltx2_additive_masks_use_diffusers_attention(kind):
    model = tiny_ltx2()
    inputs = ltx2_inputs()
    if kind == "soft-mask":  # not binary: kept as diffusers' additive bias
        inputs.update(encoder_attention_mask=torch.rand(2, TEXT_LEN), audio_encoder_attention_mask=PADDED * 0.5 + 0.5)
    else:
        inputs["video_self_attention_mask"] = torch.rand(2, 12, 12)
    actual, expected, _ = patched_and_unpatched(model, inputs)
    assert_rel_close(actual, expected)


@pytest.mark.parametrize("case", ["float32-frequency-grid", "split-pairs-across-heads"])
def test_ltx2_precomputed_cos_sin_fallback(case):
    """Rope modules RopeTable cannot reproduce are left alone: their layers rotate with diffusers' cos/sin."""
    if case == "float32-frequency-grid":
        model, cos_sin = tiny_ltx2(rope_double_precision=False), LTX2_ROPES
    else:  # the a2v/v2a rope splits its pairs over the 4 video heads, the layers have 2 audio heads
        model = tiny_ltx2("split", num_attention_heads=4, attention_head_dim=8)
        cos_sin = ["cross_attn_rope", "cross_attn_audio_rope"]
    actual, expected, handle = patched_and_unpatched(model, ltx2_inputs(mask=PADDED))
    assert handle.cos_sin_ropes == cos_sin and handle.coordinate_ropes == [r for r in LTX2_ROPES if r not in cos_sin]
    assert_rel_close(actual, expected)


def test_ltx2_spatio_temporal_guidance():
    model = tiny_ltx2(perturbed_attn=True)
    inputs = ltx2_inputs(mask=PADDED)
    inputs.update(spatio_temporal_guidance_blocks=[1], perturbation_mask=torch.tensor([0.0, 1.0]))
    actual, expected, _ = patched_and_unpatched(model, inputs)
    assert_rel_close(actual, expected)


def test_ltx2_rope_modules_hand_out_coordinates():
    model = tiny_ltx2()
    inputs = ltx2_inputs()
    coords = model.rope.prepare_video_coords(2, 2, 2, 3, torch.device("cpu"))
    with baton_diffusers.apply(model):
        rotary = model.rope(coords)
        assert isinstance(rotary, RotaryCoords)
        assert rotary.coords.shape == (2, 12, 3) and rotary.coords.dtype == torch.float32
        assert rotary.table.freqs.shape == (2, 8)  # per-head rows over the inner dim (2 heads x 16 / 2)
        with pytest.raises(ValueError, match="coords"):
            model.rope(coords[:, :2])
    assert isinstance(model.rope(coords), tuple) and not isinstance(model.rope(coords), RotaryCoords)
    run(model, inputs)


# --------------------------------------------------------------------------------- Wan
@pytest.mark.parametrize("variant", ["t2v", "i2v", "fused-projections"])
def test_wan_equals_diffusers(variant):
    if variant == "i2v":
        model, inputs = tiny_wan(image_dim=12, added_kv_proj_dim=32), wan_inputs(text=512, image=5)
    else:
        model, inputs = tiny_wan(), wan_inputs()
    if variant == "fused-projections":
        model.fuse_qkv_projections()
    actual, expected, handle = patched_and_unpatched(model, inputs)
    assert handle.coordinate_ropes == ["rope"]
    assert_rel_close(actual, expected)


def test_wan_processor_with_precomputed_cos_sin():
    """A Wan attention called with diffusers' (cos, sin) rotates with them."""
    model = tiny_wan(num_layers=1)
    attn = model.blocks[0].attn1
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(2))
    cos_sin = model.rope(torch.zeros(1, 4, 2, 4, 6))  # latent grid 2 x 2 x 3 = 12 tokens
    with torch.no_grad():
        expected = attn(x, None, None, cos_sin)
        with baton_diffusers.apply(model):
            assert isinstance(attn.processor, FastWanAttnProcessor)
            actual = attn(x, None, None, cos_sin)
    assert_rel_close([actual], [expected])


# ------------------------------------------------------------------ Triton (interpreter)
def _float64_twin(make, **kwargs):
    model = make(**kwargs)
    return model.double()


def assert_within_design_tolerance(actual, expected32, expected64):
    """DESIGN.md §5: |baton - fp64| <= 2 |plain fp32 - fp64| + a floor of a few fp32 roundings."""
    eps = torch.finfo(torch.float32).eps
    for a, e32, e64 in zip(actual, expected32, expected64, strict=True):
        assert torch.isfinite(a).all()
        err = (a.double() - e64).abs().max().item()
        plain = (e32.double() - e64).abs().max().item()
        bound = 2 * plain + 4 * eps * e64.abs().max().item()
        assert err <= bound, f"error {err:.3g} > bound {bound:.3g} (plain fp32 error {plain:.3g})"


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
def test_ltx2_triton_interpreter(rope_type, monkeypatch):
    small = dict(frames=1, height=2, width=3, audio=3, mask=PADDED)
    model = tiny_ltx2(rope_type, gated=True, num_layers=1)
    expected32 = run(model, ltx2_inputs(**small))
    expected64 = run(_float64_twin(tiny_ltx2, rope_type=rope_type, gated=True, num_layers=1),
                     ltx2_inputs(dtype=torch.float64, **small))
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")
    with baton_diffusers.apply(model):
        actual = run(model, ltx2_inputs(**small))
    assert_within_design_tolerance(actual, expected32, expected64)


def test_wan_triton_interpreter(monkeypatch):
    small = dict(frames=2, height=4, width=4, text=5)
    model = tiny_wan(num_layers=1)
    expected32 = run(model, wan_inputs(**small))
    expected64 = run(_float64_twin(tiny_wan, num_layers=1), wan_inputs(dtype=torch.float64, **small))
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")
    with baton_diffusers.apply(model):
        actual = run(model, wan_inputs(**small))
    assert_within_design_tolerance(actual, expected32, expected64)


# ---------------------------------------------------------------------------- compile
@pytest.mark.parametrize("family, backend", [("ltx2", "aot_eager"), ("wan", "inductor")])
def test_torch_compile_of_patched_model(family, backend):
    """Whole-graph capture (fullgraph) through the processors and the custom ops' fake kernels; inductor
    code generation for Wan (LTX-2's six attentions per block take inductor minutes on 2 cores)."""
    if family == "ltx2":  # a bool mask: the hook converts it without reading tensor values
        model, inputs = tiny_ltx2(num_layers=1), ltx2_inputs(mask=PADDED.bool())
    else:
        model, inputs = tiny_wan(num_layers=1), wan_inputs()
    expected = run(model, inputs)
    torch._dynamo.reset()
    with baton_diffusers.apply(model):
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        actual = run(compiled, inputs)
    assert_rel_close(actual, expected)


# -------------------------------------------------------------------------------- API
def test_remove_restores_model_exactly():
    model = tiny_ltx2(gated=True)
    inputs = ltx2_inputs(mask=PADDED)
    before = run(model, inputs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    processors = {name: p for name, p in model.attn_processors.items()}
    handle = baton_diffusers.apply(model)
    assert all(isinstance(p, FastLTX2AttnProcessor) for p in model.attn_processors.values())
    assert len(model.attn_processors) == 6 * 2  # six attentions per block
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    assert all(model.attn_processors[name] is p for name, p in processors.items())
    assert all(isinstance(p, LTX2AudioVideoAttnProcessor) for p in processors.values())
    assert all("forward" not in vars(model.get_submodule(name)) for name in LTX2_ROPES)
    assert not model._forward_pre_hooks
    for after, b in zip(run(model, inputs), before):
        assert torch.equal(after, b)


def test_context_manager_restores_wan():
    model = tiny_wan(num_layers=1)
    with baton_diffusers.apply(model) as handle:
        assert handle.active and isinstance(model.blocks[0].attn2.processor, FastWanAttnProcessor)
    assert isinstance(model.blocks[0].attn2.processor, WanAttnProcessor)
    assert "forward" not in vars(model.rope)


def test_unsupported_model_type_error_lists_supported():
    with pytest.raises(TypeError, match="LTX2VideoTransformer3DModel, WanTransformer3DModel.*Linear"):
        baton_diffusers.apply(torch.nn.Linear(2, 2))


def test_applying_twice_is_an_error():
    model = tiny_wan(num_layers=1)
    with baton_diffusers.apply(model):
        with pytest.raises(ValueError, match="already applied"):
            baton_diffusers.apply(model)


def test_pack_text_padding():
    states = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1]])
    packed, k_lens = baton_diffusers.pack_text_padding(states, mask)
    assert k_lens.tolist() == [2, 2] and k_lens.dtype == torch.int32
    assert packed[0, :, 0].tolist() == [0, 1, 2, 3]  # a prefix mask keeps the order
    assert packed[1, :2, 0].tolist() == [5, 7]  # kept tokens first, in order
    assert baton_diffusers.pack_text_padding(states, mask * 0.5) is None  # not binary
    assert baton_diffusers.pack_text_padding(states, mask[:, :3]) is None  # not [B, N] for these states


# ---------------------------------------------------------------------- benchmark model
def test_modelled_bytes_of_wan_self_attention_by_hand():
    from baton_fast.bench import diffusers_bench as bench

    wan = bench.FULL_MODELS[1]
    self_attn = wan.attentions[0]
    n, c, d, e, layers = self_attn.n_q, self_attn.heads * self_attn.head_dim, self_attn.head_dim, 2, self_attn.layers
    qk_norm = 2 * 2 * e * n * c  # read and write Q and K
    attention = 4 * e * n * c  # read Q, K, V, write O
    cos_sin_table = (4 * n * 3 + 2 * 4 * n * d) / layers  # coordinates in, cos and sin out, once per forward
    rotate = 2 * (2 * e * n * c + 2 * 4 * n * d)  # per side: read and write x, read cos and sin
    coordinates = 2 * (4 * n * 3 + 8 * d // 2)  # per side: float32 (t, h, w) and the table
    totals = bench.modelled_hbm_bytes(wan)
    assert totals[bench.DIFFUSERS]["self-attn"] == pytest.approx(layers * (qk_norm + cos_sin_table + rotate + attention))
    assert totals[bench.BATON]["self-attn"] == pytest.approx(layers * (qk_norm + coordinates + attention))
    assert totals[bench.BATON_COS_SIN]["total"] == totals[bench.DIFFUSERS]["total"]
    records = bench.modelled_records()
    assert {r["kind"] for r in records} == {"modelled"} and not any(r["measured"] for r in records)
    assert {"name", "backend", "shape", "dtype", "metric", "value", "unit", "notes"} <= set(records[0])


# ------------------------------------------------------------------- processor swaps, host reads
@pytest.mark.parametrize("family", ["ltx2", "wan"])
def test_setting_another_processor_while_applied_is_refused(family):
    """diffusers' own processors would get coordinates instead of (cos, sin): the swap is refused, clearly, and
    leaves the patched model working; after remove() it is allowed."""
    if family == "ltx2":
        model, inputs, foreign = tiny_ltx2(num_layers=1), ltx2_inputs(mask=PADDED), LTX2AudioVideoAttnProcessor
    else:
        model, inputs, foreign = tiny_wan(num_layers=1), wan_inputs(), WanAttnProcessor
    expected = run(model, inputs)
    handle = baton_diffusers.apply(model)
    with pytest.raises(RuntimeError, match=rf"set_processor: .*{foreign.__name__}.*call remove\(\)"):
        model.set_attn_processor(foreign())
    assert_rel_close(run(model, inputs), expected)
    handle.remove()
    model.set_attn_processor(foreign())
    assert all(isinstance(p, foreign) for p in model.attn_processors.values())
    for after, before in zip(run(model, inputs), expected):
        assert torch.equal(after, before)


def test_layers_read_nothing_back_coordinates_checked_once_per_forward():
    """The layers call the ops without value checks: LTX-2 reads back once per rope module and forward (its
    coordinate check), Wan nothing after the first forward at a grid size (checked coordinates are cached)."""
    from test_host_sync import HostReads

    ltx2, wan = tiny_ltx2(num_layers=2), tiny_wan(num_layers=2)
    with baton_diffusers.apply(ltx2), baton_diffusers.apply(wan):
        run(wan, wan_inputs())
        with HostReads() as reads:
            run(ltx2, ltx2_inputs(mask=PADDED.bool()))
        assert len(reads.reads) == len(LTX2_ROPES), reads.reads
        with HostReads() as reads:
            run(wan, wan_inputs())
        assert reads.reads == []



@pytest.mark.parametrize("family", ["ltx2", "wan", "wan-i2v"])
def test_quantised_layers_quantise_in_the_prepass(family, monkeypatch):
    """Under ``attention_quant``, every attention layer quantises Q and K in its norm + RoPE pass
    (``qk_rmsnorm_rope(..., quant=...)``; Wan I2V's image attention reuses that Q, its keys quantised in their
    ``rmsnorm_rope`` pass) and none re-quantises rotated tensors in ``rope_attention`` (the path before); the
    outputs are those of that path within the quantisation budget, and quantised indeed."""
    from baton_fast import quant

    model, inputs = {"ltx2": lambda: (tiny_ltx2(), ltx2_inputs(mask=PADDED)),
                     "wan": lambda: (tiny_wan(), wan_inputs()),
                     "wan-i2v": lambda: (tiny_wan(image_dim=12, added_kv_proj_dim=32),
                                         wan_inputs(text=512, image=5))}[family]()
    layers = sum(isinstance(m, (LTX2Attention, WanAttention)) for m in model.modules())
    full_precision = run(model, inputs)
    quantize_qk, prepasses = quant.quantize_qk, []
    with baton_diffusers.apply(model):
        with monkeypatch.context() as m, quant.attention_quant("int8"):
            m.setattr(diffusers_processors, "_prepass_scheme", lambda *args: None)  # the path before
            requantised = run(model, inputs)
        monkeypatch.setattr(quant, "quantize_qk", lambda *a, **kw: prepasses.append(a[-1]) or quantize_qk(*a, **kw))
        monkeypatch.setattr(quant, "rope_attention", lambda *a, **kw: pytest.fail("rotated q, k re-quantised"))
        with quant.attention_quant("int8"):
            prequantised = run(model, inputs)
    assert prepasses == ["int8"] * layers
    for new, before, expected in zip(prequantised, requantised, full_precision, strict=True):
        error, error_before = (((x - expected).abs().max() / expected.abs().max()).item() for x in (new, before))
        assert 0 < error <= 2 * error_before + 1e-4, (error, error_before)
        assert quant.cosine_similarity(new, expected) >= 0.999
