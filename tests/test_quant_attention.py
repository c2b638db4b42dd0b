"""Quantised attention (baton_fast.quant, kernels/rope_attention_quant.py) against float64.

Budget (docs/quantization.md): the kernel's max error against the float64 attention of the same normalised and
rotated inputs is at most twice that of the plain PyTorch implementation of the same scheme (quantise,
dequantise, fp32 attention) plus a floor of 1e-3 x max|reference|, and its cosine similarity is at least
COSINE[scheme].  Under the interpreter the int8 / fp8 dots are exact (the kernels' fp8 casts are made exact
there, see ``to_fp8``), so what is measured is the scheme, the kernels' rounding and P's fp8 quantisation.
"""
import pytest
import torch

import baton_fast
from baton_fast import numerics, quant, reference
from baton_fast.kernels.rope_attention_quant import SHIPPED_CONFIGS as QUANT_CONFIGS
from baton_fast.rope import RopeTable, video_grid_coords

FLOOR = 1e-3
# fp8: four e4m3 roundings (Q, K, V and the kernel's P, 2-4e-4 each) give 0.9987-0.9990 on Gaussian inputs,
# whatever the scales or smoothing (docs/quantization.md, "Why fp8 stays below 0.999")
COSINE = {"fp8": 0.998, "int8": 0.999, "int8+fp8": 0.999}


def _truth_and_plain(q_rot, k_rot, v, scheme, k_lens=None):
    """float64 attention of the rotated inputs, and the plain quantise-dequantise-fp32 implementation."""
    truth = reference.rope_attention(q_rot.double(), k_rot.double(), v.double(), rotate_q=False, rotate_k=False,
                                     k_lens=k_lens)
    qq = quant.quantize_rows_reference(q_rot, scheme)
    kq = quant.quantize_rows_reference(k_rot, scheme, smooth=True)
    return truth, quant.dequantized_attention(qq, kq, _plain_v(v, scheme), k_lens=k_lens)


def _plain_v(v, scheme):
    """V as the plain scheme quantises it: fp8 per (key block, channel), or fp16."""
    return quant.quantize_v_reference(v, scheme) if quant.FP8_PV[scheme] else v.half()


def _assert_within_budget(out, truth, plain, scheme):
    baseline = numerics.max_error(plain, truth)
    check = numerics.ErrorCheck(numerics.max_error(out, truth), baseline,
                                2 * baseline + FLOOR * max(1.0, float(truth.abs().max())))
    cosine = quant.cosine_similarity(out, truth)
    assert check.ok, f"{scheme}: {check}"
    assert cosine >= COSINE[scheme], f"{scheme}: cosine similarity {cosine:.5f} < {COSINE[scheme]}"


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")


def _grid(n, device=None):
    frames = -(-n // 12)
    return video_grid_coords(frames, 3, 4)[:n][None]


def test_prepass_self_attention_wan_fp8(triton_backend):
    """Wan self-attention: qk_rmsnorm_rope(quant="fp8") (norm across heads with weights, RoPE, quantise in one
    pass; K smoothed), then rope_attention on the quantised tensors.  N = 37 (odd), D = 64."""
    torch.manual_seed(0)
    B, N, H, D = 1, 37, 2, 64
    q, k, v = (torch.randn(B, N, H, D) for _ in range(3))
    wq, wk = 1 + 0.1 * torch.randn(H * D), 1 + 0.1 * torch.randn(H * D)
    coords, table = _grid(N), RopeTable.wan(D)
    qq, kq = baton_fast.qk_rmsnorm_rope(q, k, coords, coords, table, q_weight=wq, k_weight=wk, quant="fp8")
    q_rot, k_rot = reference.qk_rmsnorm_rope(q, k, coords, coords, table, q_weight=wq, k_weight=wk)
    # the pre-pass writes the reference quantisation (up to a rounding tie here and there)
    ref_k = quant.quantize_rows_reference(k_rot, "fp8", smooth=True)
    assert torch.allclose(kq.mean, ref_k.mean, atol=1e-6)
    assert torch.allclose(kq.dequantize(), ref_k.dequantize(), rtol=2 ** -3, atol=1e-6)
    out = baton_fast.rope_attention(qq, kq, v, rotate_q=False, rotate_k=False)
    _assert_within_budget(out, *_truth_and_plain(q_rot, k_rot, v, "fp8"), "fp8")


def _assert_writes_the_plain_scheme(qt, x_rot, scheme, smooth):
    """The pre-pass wrote the plain scheme's quantisation of its (fp32) normalised, rotated input: scales and mean
    to fp32 rounding, the 8-bit values equal but for a rounding tie here and there (at most one step each)."""
    plain = quant.quantize_rows_reference(x_rot, scheme, smooth=smooth)
    torch.testing.assert_close(qt.scale, plain.scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(qt.mean, plain.mean, rtol=0, atol=1e-6)
    differ = qt.data.float() != plain.data.float()
    assert int(differ.sum()) <= max(1, differ.numel() // 1000), f"{int(differ.sum())} of {differ.numel()} differ"
    if quant.QK_FORMAT[scheme] == "int8":
        assert (qt.data.int() - plain.data.int()).abs().max() <= 1
    else:
        torch.testing.assert_close(qt.dequantize(), plain.dequantize(), rtol=2 ** -3, atol=1e-6)


@pytest.mark.parametrize("n, scheme, family, dtype", [(17, "int8", "ltx2", torch.float32),
                                                      (130, "int8+fp8", "ovi", torch.float32),
                                                      (130, "fp8", "ltx2", torch.bfloat16)])
def test_rmsnorm_rope_quantises_in_its_pass(triton_backend, n, scheme, family, dtype):
    """rmsnorm_rope(quant=...) (the plan cross-attention's query pre-pass: RMSNorm with a weight, RoPE and the
    quantisation in one pass) and, for its keys, rmsnorm_rope(quant=..., smooth=True); then rope_attention on the
    quantised tensors against float64.  LTX-2's per-head table (split pairs, norm per head, weights [D]) and Ovi's
    scaled temporal table (norm across heads, weights [H*D]); Nq = 17 / 130, Nk = 41 / 70, K with a channel bias."""
    torch.manual_seed(8)
    B, H, D, n_k = 2, 2, 64, 41 if n == 17 else 70
    q = torch.randn(B, n, H, D).to(dtype)
    k = (torch.randn(B, n_k, H, D) + 0.3 * torch.randn(D)).to(dtype)
    v = torch.randn(B, n_k, H, D).to(dtype)
    if family == "ltx2":
        table, across, width = RopeTable.ltx2(H * D, H, interleaved=False), False, D
        q_coords, k_coords = torch.rand(1, n, 3) * 2 - 1, torch.rand(1, n_k, 3) * 2 - 1
    else:
        table, across, width = RopeTable.ovi_temporal(D, scale=0.19676), True, H * D
        q_coords = torch.arange(n, dtype=torch.float32)[None, :, None]
        k_coords = (torch.arange(n_k, dtype=torch.float32) // 3)[None, :, None]
    wq, wk = 1 + 0.1 * torch.randn(width), 1 + 0.1 * torch.randn(width)
    qq = baton_fast.rmsnorm_rope(q, q_coords, table, weight=wq, across_heads=across, quant=scheme)
    kq = baton_fast.rmsnorm_rope(k, k_coords, table, weight=wk, across_heads=across, quant=scheme, smooth=True)
    assert (qq.scheme, kq.scheme, qq.source_dtype, qq.shape) == (scheme, scheme, dtype, q.shape)
    rotated = [reference.rmsnorm_rope(x.double(), c, table, weight=w.double(), across_heads=across)
               for x, c, w in ((q, q_coords, wq), (k, k_coords, wk))]
    for qt, x, c, w, smooth in ((qq, q, q_coords, wq, False), (kq, k, k_coords, wk, True)):
        x_rot = reference.rmsnorm_rope(x.float(), c, table, weight=w, across_heads=across)
        _assert_writes_the_plain_scheme(qt, x_rot, scheme, smooth)
    out = baton_fast.rope_attention(qq, kq, v, rotate_q=False, rotate_k=False)
    assert out.dtype == dtype and out.shape == q.shape
    _assert_within_budget(out, *_truth_and_plain(*rotated, v.double(), scheme), scheme)


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
def test_cross_attention_gqa_key_lengths_ovi(triton_backend, scheme):
    """Ovi audio->video style cross-attention rotated in rope_attention(quant=...): GQA (H=4, Hk=2), Nq=17,
    Nk=70 (two V scale blocks), key lengths 70 and 41, separate query/key tables; K with outlier channels."""
    torch.manual_seed(1)
    B, Nq, Nk, H, Hk, D = 2, 17, 70, 4, 2, 64
    q = torch.randn(B, Nq, H, D)
    k = torch.randn(B, Nk, Hk, D)
    k[..., [3, 40]] += 12.0  # outlier channels (a per-channel bias, as in real K): smoothing takes them
    v = torch.randn(B, Nk, Hk, D)
    k_lens = torch.tensor([70, 41])
    q_table, k_table = RopeTable.ovi_temporal(D, scale=0.19676), RopeTable.ovi_temporal(D)
    q_coords = torch.arange(Nq, dtype=torch.float32)[None, :, None]
    k_coords = (torch.arange(Nk, dtype=torch.float32) // 12)[None, :, None]
    out = baton_fast.rope_attention(q, k, v, q_coords, k_coords, q_table, k_table=k_table, k_lens=k_lens,
                                    quant=scheme)
    assert out.dtype == q.dtype and out.shape == q.shape
    q_rot, k_rot = reference.apply_rope(q, q_coords, q_table), reference.apply_rope(k, k_coords, k_table)
    _assert_within_budget(out, *_truth_and_plain(q_rot, k_rot, v, scheme, k_lens), scheme)


@pytest.mark.parametrize("interleaved, scheme", [(False, "int8+fp8"), (True, "fp8")])
def test_ltx2_per_head_table(triton_backend, interleaved, scheme):
    """LTX-2 per-head table (identity padding pairs first), split pairs with SageAttention2's int8 Q.K + fp8 P.V
    and interleaved pairs with fp8; D = 80 (padded to 128 in the kernel), N = 33, bf16 inputs."""
    torch.manual_seed(2)
    B, N, H, D = 1, 33, 2, 80
    q, k, v = (torch.randn(B, N, H, D, dtype=torch.bfloat16) for _ in range(3))
    table = RopeTable.ltx2(H * D, H, interleaved=interleaved)
    coords = torch.rand(1, N, 3) * 2 - 1
    out = baton_fast.rope_attention(q, k, v, coords, coords, table, quant=scheme)
    assert out.dtype == torch.bfloat16
    q_rot, k_rot = reference.apply_rope(q.float(), coords, table), reference.apply_rope(k.float(), coords, table)
    _assert_within_budget(out, *_truth_and_plain(q_rot, k_rot, v.float(), scheme), scheme)


def test_lse_merges_key_shards_quantised_apart(triton_backend, scheme="int8+fp8"):
    """return_lse on pre-quantised q, k (ring attention): the keys in two shards (Nk = 40 + 29), each quantised
    apart (its own smoothing mean, which the LSE adds back), merged by their LSEs; GQA 4/2, Nq = 33, batch item 1
    has no key in the second shard (lse -inf).  Each shard's out and lse against float64 within budget; the
    merge against the float64 attention over all keys."""
    torch.manual_seed(7)
    B, Nq, H, Hk, D = 2, 33, 4, 2, 64
    q = torch.randn(B, Nq, H, D)
    shards = [(torch.randn(B, n, Hk, D) + 0.5, torch.randn(B, n, Hk, D), torch.tensor(lens))
              for n, lens in ((40, [40, 33]), (29, [29, 0]))]
    qq = quant.quantize(q, scheme)
    outs, lses = [], []
    for k, v, k_lens in shards:
        out, lse = baton_fast.rope_attention(qq, quant.quantize(k, scheme, smooth=True), v, rotate_q=False,
                                             rotate_k=False, k_lens=k_lens, return_lse=True)
        truth, truth_lse = reference.rope_attention(q.double(), k.double(), v.double(), rotate_q=False,
                                                    rotate_k=False, k_lens=k_lens, return_lse=True)
        plain, plain_lse = quant.dequantized_attention(qq, quant.quantize_rows_reference(k, scheme, smooth=True),
                                                       _plain_v(v, scheme), k_lens=k_lens, return_lse=True)
        _assert_within_budget(out, truth, plain, scheme)
        assert lse.shape == (B, H, Nq) and torch.equal(lse.isinf(), truth_lse.isinf())
        finite = truth_lse.isfinite()
        lse_budget = 2 * numerics.max_error(plain_lse[finite], truth_lse[finite]) + FLOOR
        assert numerics.max_error(lse[finite], truth_lse[finite]) <= lse_budget
        outs.append(out.double())
        lses.append(lse.double())
    # rope_attention(..., quant=..., return_lse=True) quantises q and k the same way in the call
    k, v, k_lens = shards[0]
    in_call = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False, k_lens=k_lens, return_lse=True,
                                        quant=scheme)
    assert torch.equal(in_call[0].double(), outs[0]) and torch.equal(in_call[1].double(), lses[0])
    total = torch.logaddexp(*lses)
    merged = sum(o * torch.exp(l - total).transpose(1, 2)[..., None] for o, l in zip(outs, lses))
    k_all = torch.cat([shards[0][0], shards[1][0]], 1).double()
    v_all = torch.cat([shards[0][1], shards[1][1]], 1).double()
    keep = torch.ones(B, 69, dtype=torch.bool)
    keep[1, 33:] = False  # batch item 1: 33 keys of the first shard, none of the second
    truth = torch.stack([reference.rope_attention(q[i:i + 1].double(), k_all[i:i + 1, keep[i]],
                                                  v_all[i:i + 1, keep[i]], rotate_q=False, rotate_k=False)[0]
                         for i in range(B)])
    assert quant.cosine_similarity(merged, truth) >= COSINE[scheme]


@pytest.mark.parametrize("scheme", quant.SCHEMES)
def test_smoothing_keeps_outlier_channels_from_breaking_k(scheme):
    """Plain scheme (no kernel): K with a few large channels loses Q.K precision to its scale unless smoothed."""
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 64, 2, 64), torch.randn(1, 96, 2, 64), torch.randn(1, 96, 2, 64)
    k[..., [5, 17, 33]] += 20.0
    truth = reference.rope_attention(q.double(), k.double(), v.double(), rotate_q=False, rotate_k=False)
    qq = quant.quantize_rows_reference(q, scheme)
    smoothed = quant.dequantized_attention(qq, quant.quantize_rows_reference(k, scheme, smooth=True), v)
    raw = quant.dequantized_attention(qq, quant.quantize_rows_reference(k, scheme, smooth=False), v)
    assert quant.cosine_similarity(smoothed, truth) >= COSINE[scheme]
    assert numerics.max_error(raw, truth) > 2 * numerics.max_error(smoothed, truth)


def test_reference_backend_is_the_plain_scheme():
    """On the reference backend (CPU default) quant= runs the quantise-dequantise reference itself."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 20, 2, 32) for _ in range(3))
    coords, table = _grid(20), RopeTable.wan(32)
    for scheme in quant.SCHEMES:
        out = baton_fast.rope_attention(q, k, v, coords, coords, table, quant=scheme)
        q_rot, k_rot = reference.apply_rope(q, coords, table), reference.apply_rope(k, coords, table)
        _, plain = _truth_and_plain(q_rot, k_rot, v, scheme)
        torch.testing.assert_close(out, plain, rtol=0, atol=1e-6)


def test_default_is_full_precision_and_the_context_selects():
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 24, 2, 32) for _ in range(3))
    full = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False)
    torch.testing.assert_close(full, reference.rope_attention(q, k, v, rotate_q=False, rotate_k=False))
    with quant.attention_quant("int8"):
        assert quant.active_scheme() == "int8"
        selected = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False)
        # calls that need an LSE run in full precision
        _, lse = baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False, return_lse=True)
    assert quant.active_scheme() is None
    torch.testing.assert_close(selected, baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False,
                                                                   quant="int8"))
    assert not torch.equal(selected, full)
    assert lse.shape == (1, 2, 24)


@pytest.mark.parametrize("call, message", [
    (lambda q, k, v: baton_fast.rope_attention(q, k, v, rotate_q=False, rotate_k=False, quant="fp16"), "quant:"),
    (lambda q, k, v: baton_fast.rope_attention(*baton_fast.qk_rmsnorm_rope(q, k, quant="int8"), v), "rotate_q"),
    (lambda q, k, v: baton_fast.rope_attention(*baton_fast.qk_rmsnorm_rope(q, k, quant="int8"), v,
                                               rotate_q=False, rotate_k=False, quant="fp8"), "quant: expected"),
    (lambda q, k, v: quant.quant_attention(q, q, v), "q: expected a QuantizedTensor"),
    (lambda q, k, v: baton_fast.qk_rmsnorm_rope(q, k, quant="int4"), "quant:"),
    (lambda q, k, v: baton_fast.rmsnorm_rope(q, quant="int4"), "quant:"),
    (lambda q, k, v: baton_fast.rmsnorm_rope(q, smooth=True), "smooth: only with quant="),
    (lambda q, k, v: baton_fast.rmsnorm_rope(q, weight=torch.ones(64, requires_grad=True), quant="int8"),
     "quant: .* no gradient; got a gradient"),
    (lambda q, k, v: baton_fast.qk_rmsnorm_rope(q.requires_grad_(), k, quant="fp8"), "quant: .* got a gradient"),
])
def test_bad_arguments_are_named(call, message):
    q, k, v = (torch.randn(1, 8, 2, 32) for _ in range(3))
    with pytest.raises((ValueError, TypeError), match=message):
        call(q, k, v)


def test_head_dim_above_the_shipped_range_is_refused():
    q = torch.randn(1, 4, 1, 256)
    with pytest.raises(ValueError, match="q: expected an even head dim between 2 and 128"):
        baton_fast.rope_attention(q, q, q, rotate_q=False, rotate_k=False, quant="fp8")


@pytest.mark.slow
def test_machine_code_of_every_shipped_quant_config():
    """fp8 on sm_90 uses QGMMA, int8+fp8 IGMMA and QGMMA, int8 on sm_80 IMMA; all spill-free, no local memory."""
    from baton_fast import static_check

    records = static_check.check(static_check.quant_jobs())
    assert len(records) == sum(len(configs) for configs in QUANT_CONFIGS.values())
    for r in records:
        required = static_check.QUANT_ARCH_MMA[r["dtype"]][1]
        assert all(r["mma_ops"].get(op, 0) > 0 for op in required), r
        assert (r["spill_stores"], r["spill_loads"], r["stack"], r["local_mem_ops"]) == (0, 0, 0, 0), r
        assert r["ok"], r


# --------------------------------------------------------------------------- hybrid schedule (sampler)
def test_schedule_runs_the_middle_steps_quantised():
    from baton_fast.model.sampler import SamplerOptions, sample

    options = SamplerOptions(steps=6, solver="heun", quant="fp8", quant_full_steps=2, progress=False)
    assert options.quantized_steps == [2, 3]
    seen = []

    def velocity(video, audio, sigma):
        seen.append(quant.active_scheme())
        return torch.zeros_like(video), torch.zeros_like(audio)

    sample(velocity, torch.randn(1, 2, 1, 2, 2), torch.randn(1, 3, 2), options)
    # Heun: two evaluations per step, one on the last
    assert seen == [None] * 4 + ["fp8"] * 4 + [None] * 3
    assert SamplerOptions(steps=4, quant="int8", quant_full_steps=2).quantized_steps == []
    assert SamplerOptions(steps=4).quantized_steps == []
    with pytest.raises(ValueError, match="quant:"):
        SamplerOptions(quant="fp4")
    with pytest.raises(ValueError, match="quant_full_steps:"):
        SamplerOptions(quant="fp8", quant_full_steps=-1)


def test_full_precision_difference_is_against_an_all_full_run():
    from baton_fast.model.sampler import SamplerOptions, full_precision_difference, sample

    def velocity(video, audio, sigma):  # the quantised steps push the latents by 0.5 per unit sigma
        shift = 0.5 if quant.active_scheme() else 0.0
        return video * 0 + shift, audio * 0 - shift

    options = SamplerOptions(steps=5, shift=1.0, quant="int8", quant_full_steps=1, progress=False)
    video0, audio0 = torch.randn(1, 2, 1, 2, 2), torch.randn(1, 3, 2)
    video, audio = sample(velocity, video0, audio0, options)
    report = full_precision_difference(velocity, video0, audio0, options, video, audio)
    assert report["quantized_steps"] == [1, 2, 3] and report["full_precision_steps"] == 1
    diff = report["final_latent_difference_vs_full_precision"]
    # three steps of dt = -0.2 moved every latent by 0.5 * 0.6 = 0.3 (the full-precision run left them)
    assert diff["video"]["max_abs"] == pytest.approx(0.3) and diff["audio"]["max_abs"] == pytest.approx(0.3)
    assert diff["video"]["rel_l2"] == pytest.approx(0.3 * 8 ** 0.5 / float(video0.double().norm()))


@pytest.mark.slow
def test_pipeline_reports_quantised_steps_and_latent_difference():
    """Tiny preset on CPU (Ovi-style, no planner): the quantised steps run the quantise-dequantise reference; the
    report names them and the final-latent difference against the same run in full precision."""
    import dataclasses

    from baton_fast.model.config import PRESETS
    from baton_fast.model.pipeline import BatonPipeline
    from baton_fast.model.sampler import SamplerOptions

    pipe = BatonPipeline.build(dataclasses.replace(PRESETS["tiny"], name="tiny-ovi", planner=None))
    options = SamplerOptions(steps=3, quant="int8", quant_full_steps=1, progress=False)
    report = pipe.generate(["a dog"], ["barking"], seconds=1.0, options=options).report["quant"]
    assert report["quantized_steps"] == [1] and report["scheme"] == "int8"
    for modality in ("video", "audio"):
        diff = report["final_latent_difference_vs_full_precision"][modality]
        assert 0 < diff["rel_l2"] < 0.05, diff  # the quantised step changed the latents, a little


# --------------------------------------------------------------------------- cost model (modelled)
def test_modelled_fp8_against_bf16():
    from baton_fast.bench.cost_model import QUANT_CASES, quant_records, quant_table

    records = quant_records()
    assert {r["kind"] for r in records} == {"modelled"} and {r["device"] for r in records} == {"modelled"}
    by_key = {(r["case"], r["backend"], r["metric"]): r["value"] for r in records}
    for name, tokens, heads in QUANT_CASES:
        flops = 4.0 * heads * tokens * tokens * 128
        assert by_key[(name, "bf16", "matrix FLOPs")] == by_key[(name, "fp8 / int8+fp8", "matrix FLOPs")] == flops
        for device in ("H100 SXM", "H200 SXM"):
            speedup = by_key[(name, "bf16 / fp8", f"roofline speed-up {device}")]
            assert 1.5 < speedup <= 2.0  # compute bound: at most the 2x of the FP8 peak; the passes cost a little
    assert "modelled" in quant_table()


def test_gpu_check_quant_backends_agree_on_cpu():
    """The callables gpu-check times (here on CPU tensors, reference backend): each gives the bf16 result closely."""
    from baton_fast.gpu_check.quant_timings import _backends

    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 40, 2, 64, dtype=torch.bfloat16) for _ in range(3))
    fns = _backends(q, k, v)
    assert {"baton-fast bf16", "baton-fast fp8", "baton-fast int8+fp8, kernel only"} <= set(fns)
    baseline = fns["baton-fast bf16"]().float()
    for name, fn in fns.items():
        assert quant.cosine_similarity(fn().float(), baseline) > 0.995, name


def test_fp8_schemes_need_an_fp8_gpu(monkeypatch):
    """fp8 e4m3 does not compile for sm_80 (Triton): refused before any launch, naming quant."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    cuda = torch.device("cuda")
    assert quant.check_scheme("int8", cuda) == "int8"
    for scheme in ("fp8", "int8+fp8"):
        with pytest.raises(ValueError, match="quant: .* needs fp8 e4m3 tensor cores .* sm_80: use 'int8'"):
            quant.check_scheme(scheme, cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert quant.check_scheme("fp8", cuda) == "fp8"
