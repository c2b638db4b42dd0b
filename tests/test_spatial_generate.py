"""SpA2V stage 2, grounded generation: VSL -> layout masks -> the DiT's attention calls -> the sampler ->
``baton-fast generate --audio ... --layout auto|vsl.json``; the Triton kernel on the masked block; skipped tiles."""
import copy
import functools
import json
import operator

import av
import matplotlib.image
import numpy as np
import pytest
import scipy.io.wavfile
import torch

import baton_fast
from baton_fast import cli, reference
from baton_fast.model.config import get_preset
from baton_fast.model.decode import Decoder
from baton_fast.model.dit import DualBranchDiT, patchify_audio, patchify_video
from baton_fast.model.layout import LayoutGuidance
from baton_fast.model.pipeline import BatonPipeline
from baton_fast.model.planner import PlannedTokens, rs_rope_coords
from baton_fast.model.sampler import SamplerOptions, sample
from baton_fast.spatial import VSL, CuePlanner, spatial_cues, vsl_group_masks
from baton_fast.spatial.grounding import (find_phrase, ground_prompt, latent_frame_times, layout_guidance,
                                          names_from_prompt, phrase_groups)

CFG = get_preset("tiny")
PROMPT = "a dog barks near a red car"

# dog: left half, rows 1-2 of the 4x4 token grid; car: absent at t = 0, then the bottom-right quarter
SCENE = VSL.from_dict({"caption": "a dog and a red car", "frames": [
    {"time": 0.0, "objects": [{"id": 0, "name": "dog", "box": [0.0, 0.25, 0.5, 0.75]}]},
    {"time": 1.0, "objects": [{"id": 0, "name": "dog", "box": [0.0, 0.25, 0.5, 0.75]},
                              {"id": 3, "name": "red car", "box": [0.5, 0.5, 1.0, 1.0]}]}]})


@pytest.fixture(scope="module")
def pipeline():
    return BatonPipeline.build(CFG)


@pytest.fixture(scope="module")
def tokenizer(pipeline):
    return pipeline.text_encoder.tokenizer


# ---------------------------------------------------------------------- masks
def test_latent_frame_times_match_the_decoded_frames():
    """Latent frame i's time is the mean time of the pixel frames the (causal) decoder makes from it."""
    shape = CFG.shape(2.0)
    expected = []
    for i in range(shape.video_grid[0]):
        latents = torch.zeros(1, *shape.video_latent)
        latents[:, :, i] = 1.0
        shown = (Decoder(CFG).preview_rgb(latents)[0] != 0.5).flatten(1).any(1)  # pixel frames made from frame i
        expected.append(shown.nonzero().double().mean().item() / CFG.video_format.fps)
    np.testing.assert_allclose(latent_frame_times(CFG, shape), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(expected, [0.0, 0.3125, 0.8125, 1.3125, 1.8125])


def test_phrase_tokens_carry_their_object_bit(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(PROMPT)["input_ids"])
    assert tokens == ["[CLS]", "a", "dog", "bark", "##s", "near", "a", "red", "car", "[SEP]"]
    groups = phrase_groups(tokenizer, PROMPT, ["dog", "red car"], max_tokens=64)
    assert groups.dtype == torch.int64
    assert groups.tolist() == [-1, -1, 2, -1, -1, -1, -1, 4, 4, -1]
    # every occurrence, plurals, case; no match inside a longer word
    assert find_phrase("Dogs chase a dog; a hotdog", "dog") == [(0, 4), (13, 16)]
    assert phrase_groups(tokenizer, "two dogs and a car", ["car", "dog"], 64).tolist() == [-1, -1, 4, -1, -1, 2, -1]
    with pytest.raises(ValueError, match="'cat' does not occur"):
        phrase_groups(tokenizer, PROMPT, ["cat"], 64)
    with pytest.raises(ValueError, match="'car' falls beyond the text encoder's 6-token limit"):
        phrase_groups(tokenizer, PROMPT, ["car"], 6)


def test_missing_names_are_appended_and_prompt_phrases_become_names():
    assert ground_prompt(PROMPT, ["dog", "red car"]) == PROMPT
    grounded = ground_prompt("a park at noon ", ["dog", "sound source", "sound source"])
    assert grounded == "a park at noon, dog, sound source"
    assert ground_prompt("", ["dog"]) == "dog"
    assert names_from_prompt("A dog barks, and the car passes; birds") == ["dog barks", "car passes", "birds"]


def test_layout_guidance_from_a_vsl(tokenizer):
    shape = CFG.shape(2.0)
    guidance = layout_guidance(SCENE, CFG, shape, tokenizer, [PROMPT], text_tokens=12, max_tokens=64, fraction=0.5)
    frames, rows, cols = shape.video_grid
    video = guidance.video_groups.reshape(frames, rows, cols)
    dog, car = 2, 4  # objects in ascending id order: dog (id 0) bit 1, car (id 3) bit 2
    expected_frame = torch.ones(rows, cols, dtype=torch.int64)
    expected_frame[1:3, 0:2] = dog
    assert torch.equal(video[0], expected_frame)  # t = 0: the car is absent
    expected_frame[2:4, 2:4] = car
    assert torch.equal(video[-1], expected_frame)  # t = 1.81 s: both
    assert torch.equal(guidance.video_groups[0], vsl_group_masks(SCENE, latent_frame_times(CFG, shape), rows, cols))
    assert guidance.text_groups.shape == (2, 12)
    assert guidance.text_groups[0].tolist() == [-1, -1, dog, -1, -1, -1, -1, car, car, -1, -1, -1]
    assert (guidance.text_groups[1] == -1).all()  # the negative prompt: global text only
    assert guidance.masked_steps(8) == 4


def test_layout_guidance_rejects_bad_input(tokenizer):
    shape = CFG.shape(2.0)
    with pytest.raises(TypeError, match="layout: expected a VSL"):
        layout_guidance({"frames": []}, CFG, shape, tokenizer, [PROMPT], text_tokens=12, max_tokens=64)
    with pytest.raises(ValueError, match="fraction"):
        layout_guidance(SCENE, CFG, shape, tokenizer, [PROMPT], text_tokens=12, max_tokens=64, fraction=1.5)
    with pytest.raises(ValueError, match="text_tokens"):
        layout_guidance(SCENE, CFG, shape, tokenizer, [PROMPT], text_tokens=4, max_tokens=64)
    with pytest.raises(TypeError, match="video_groups"):
        LayoutGuidance(torch.ones(1, 4, dtype=torch.int32), torch.ones(2, 3, dtype=torch.int64))


# ---------------------------------------------------------------------- the attention calls
class AttentionSpy:
    """Wraps ``baton_fast.rope_attention``: records every call's arguments and output."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        out = self.function(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out

    def masked(self):
        return [call for call in self.calls
                if call[1].get("q_groups") is not None or call[1].get("block_mask") is not None]


def run_context(dit, shape, text_tokens, text_lens, generator):
    """A prepared run for batch 2 ([cond; uncond]) with random text states and plan."""
    pc = CFG.planner
    plan = PlannedTokens(torch.randn(2, shape.keyframes * pc.grid ** 2, pc.video_feature_dim, generator=generator),
                         torch.randn(2, shape.chunks * pc.audio_tokens_per_chunk, pc.audio_feature_dim,
                                     generator=generator), *rs_rope_coords(CFG, shape))
    text = torch.randn(2, text_tokens, CFG.text_dim, generator=generator)
    return dit.prepare(shape, text, text_lens, text.flip(0), text_lens.flip(0), plan)


def allowed_attention(call, query_groups, key_groups, k_lens=None):
    """Recompute a recorded call row by row: each query attends, unmasked, to exactly its allowed keys."""
    (q, k, v, *rope), kwargs, _ = call
    q_coords, k_coords, table = rope + [None] * (3 - len(rope))  # self-attention passes no rope arguments
    expected = torch.zeros_like(q)
    for b in range(q.shape[0]):
        n_keys = k.shape[1] if k_lens is None else int(k_lens[b])
        for i in range(q.shape[1]):
            keys = [j for j in range(n_keys) if int(query_groups[i]) & int(key_groups[b % len(key_groups)][j])]
            expected[b, i] = reference.rope_attention(q[b:b + 1, i:i + 1], k[b:b + 1, keys], v[b:b + 1, keys], q_coords,
                                                      k_coords, table, rotate_q=False, rotate_k=False)[0, 0]
    return expected


def test_masks_reach_the_video_self_and_text_attention(pipeline, tokenizer, monkeypatch):
    """With a layout, the video tokens run in its group order: every block's video self-attention gets the
    layout's block mask and its text cross-attention the token masks (in that order) and the phrase masks; a token
    attends only to the keys it shares a bit with (a background token: background tokens only); nothing else is
    masked; without a layout nothing is."""
    dit, shape = pipeline.dit, CFG.shape(2.0)
    text_tokens = 10
    guidance = layout_guidance(SCENE, CFG, shape, tokenizer, [PROMPT], text_tokens, max_tokens=64)
    lens = torch.tensor([10, 2], dtype=torch.int32)
    ctx = run_context(dit, shape, text_tokens, lens, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    video, audio = torch.randn(2, *shape.video_latent, generator=g), torch.randn(2, shape.audio_latents, 4, generator=g)
    spy = AttentionSpy(baton_fast.rope_attention)
    monkeypatch.setattr(baton_fast, "rope_attention", spy)
    with torch.no_grad():
        dit(video, audio, torch.tensor([900.0, 900.0]), ctx)
        assert spy.calls and not spy.masked()
        unmasked_calls = len(spy.calls)
        spy.calls.clear()
        dit(video, audio, torch.tensor([900.0, 900.0]), ctx, guidance)
    assert len(spy.calls) == unmasked_calls
    masked = spy.masked()
    assert len(masked) == 2 * CFG.video.num_layers  # per block: video self-attention, video text attention
    video_groups, text_groups = guidance.video_groups[0], guidance.text_groups
    background = (video_groups == 1).nonzero().flatten()
    assert 0 < len(background) < shape.video_tokens
    for block in range(CFG.video.num_layers):
        self_call, text_call = masked[2 * block], masked[2 * block + 1]
        # the tokens run sorted by group (the layout's GroupOrder): same masks, permuted
        sorted_groups = guidance.order.groups
        assert self_call[1]["block_mask"] is guidance.order.mask and "q_groups" not in self_call[1]
        assert torch.equal(sorted_groups[0], video_groups[torch.argsort(video_groups, stable=True)])
        assert text_call[1]["q_groups"] is sorted_groups and text_call[1]["k_groups"] is guidance.text_groups
        assert self_call[0][1].shape[1] == shape.video_tokens and text_call[0][1].shape[1] == text_tokens
        out = self_call[2]
        expected = allowed_attention(self_call, sorted_groups[0], sorted_groups)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        # a background query's output is a mix of background values only
        q, k, v = self_call[0][:3]
        background = (sorted_groups[0] == 1).nonzero().flatten()
        only_background = reference.rope_attention(q[:, background], k[:, background], v[:, background], None,
                                                   None, None, rotate_q=False, rotate_k=False)
        torch.testing.assert_close(out[:, background], only_background, rtol=1e-5, atol=1e-6)
        expected = allowed_attention(text_call, sorted_groups[0], text_groups, k_lens=text_call[1]["k_lens"])
        torch.testing.assert_close(text_call[2], expected, rtol=1e-5, atol=1e-6)


def test_sampler_passes_the_layout_to_the_first_steps_only():
    layout = LayoutGuidance(torch.ones(1, 4, dtype=torch.int64), torch.full((2, 3), -1, dtype=torch.int64), 0.4)
    for solver, steps, expected in (("euler", 5, [True, True, False, False, False]),
                                    ("heun", 3, [True, True, False, False, False]),  # 1 step of 2 evals, 1 of 2, 1 of 1
                                    ("euler", 1, [True])):
        seen = []

        def velocity(video, audio, sigma, layout=None):
            seen.append(layout)
            return torch.zeros_like(video), torch.zeros_like(audio)

        options = SamplerOptions(steps=steps, solver=solver, progress=False)
        sample(velocity, torch.zeros(1, 2), torch.zeros(1, 2), options, layout=layout)
        assert [s is layout for s in seen] == expected and all(s is None for s in seen if s is not layout)
    masks = (layout.video_groups, layout.text_groups)
    fractions = (0.0, 0.01, 0.4, 0.45, 1.0)
    assert [LayoutGuidance(*masks, fraction).masked_steps(8) for fraction in fractions] == [0, 1, 3, 4, 8]
    assert LayoutGuidance(*masks).masked_steps(50) == 20  # the default 0.4


@pytest.fixture(scope="module")
def generations(pipeline):
    """Same seed and prompt: without a layout, with one (DiT layout argument recorded), with fraction 0."""
    options = SamplerOptions(steps=4, progress=False)
    run = functools.partial(pipeline.generate, PROMPT, "barking and an engine", seconds=1.0, seed=3, options=options)
    forward, layouts = DualBranchDiT.forward, []

    def recording_forward(self, video, audio, timesteps, ctx, layout=None, **kwargs):
        layouts.append(layout)
        return forward(self, video, audio, timesteps, ctx, layout, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(DualBranchDiT, "forward", recording_forward)
        masked = run(layout=SCENE)
    return {"plain": run(), "masked": masked, "layouts": layouts, "fraction 0": run(layout=SCENE, layout_fraction=0.0)}


def test_generation_masks_the_first_steps_and_differs(generations):
    layouts = generations["layouts"]
    assert [layout is not None for layout in layouts] == [True, True, False, False]  # 0.4 x 4 steps
    assert layouts[0] is layouts[1] and layouts[0].video_groups.shape == (1, CFG.shape(1.0).video_tokens)
    plain, masked, never = generations["plain"], generations["masked"], generations["fraction 0"]
    difference = (masked.video_latents - plain.video_latents).abs().max().item()
    assert difference > 1e-3 * plain.video_latents.abs().max().item()
    assert torch.equal(never.video_latents, plain.video_latents)  # no masked step: the same run
    report = masked.report["layout"]
    assert report["masked_steps"] == 2 and report["video_prompts"] == [PROMPT]
    assert [(g["name"], g.get("phrase_tokens")) for g in report["groups"]] == [("background", None), ("dog", [1]),
                                                                                 ("red car", [2])]
    assert sum(g["video_tokens"] for g in report["groups"]) >= CFG.shape(1.0).video_tokens
    blocks = report["self_attention"]  # the layout's BlockMask over the 2 masked Euler evaluations of every block
    assert blocks["masked_evaluations"] == 2
    assert blocks["key_blocks_visited_in_run"] == blocks["key_blocks_visited_per_attention"] * 2 * CFG.video.num_layers
    assert 0 < blocks["key_blocks_visited_per_attention"] <= blocks["key_blocks_dense_per_attention"]


# ---------------------------------------------------------------------- Triton kernel
def masked_first_block(model, shape, ctx, layout, video, audio, timesteps):
    """Embed and run fusion block 0 with ``layout`` (video tokens in its group order, as a masked forward runs
    them; returned in raster order): (video tokens, audio tokens)."""
    dtype = model.dtype
    x_video = model.video_io.patch_embed(patchify_video(video.to(dtype), CFG.video.patch))
    x_audio = model.audio_io.patch_embed(patchify_audio(audio.to(dtype), CFG.audio.patch))
    _, video_mod = model.video_io.time(timesteps, dtype)
    _, audio_mod = model.audio_io.time(timesteps, dtype)
    if layout is not None:
        x_video, ctx = x_video[:, layout.order.to_groups], ctx.video_reordered(layout.order.to_groups)
    x_video, x_audio = model.blocks[0](x_video, x_audio, video_mod, audio_mod, ctx.video, ctx.audio,
                                       ctx.video.plan_kv[0], ctx.audio.plan_kv[0], model.video_masks(ctx, layout))
    return (x_video if layout is None else x_video[:, layout.order.to_raster]), x_audio


def test_masked_block_on_triton_matches_the_float64_oracle(pipeline, tokenizer, monkeypatch):
    """Fusion block 0 with layout masks, fp32 on the reference and the Triton backend (interpreter)
    against float64: Triton's error within twice the plain-PyTorch error plus a rounding floor (DESIGN §5)."""
    shape, text_tokens = CFG.shape(1.0), 10
    guidance = layout_guidance(SCENE, CFG, shape, tokenizer, [PROMPT], text_tokens, max_tokens=64)
    lens = torch.tensor([10, 2], dtype=torch.int32)
    g = torch.Generator().manual_seed(5)
    video, audio = torch.randn(2, *shape.video_latent, generator=g), torch.randn(2, shape.audio_latents, 4, generator=g)
    timesteps = torch.tensor([900.0, 900.0])
    dit64 = copy.deepcopy(pipeline.dit).double()
    with monkeypatch.context() as m, torch.no_grad():
        for name in ("rope_attention", "qk_rmsnorm_rope", "rmsnorm_rope", "apply_rope"):
            m.setattr(baton_fast, name, without_check_values(getattr(reference, name)))
        ctx64 = run_context(dit64, shape, text_tokens, lens, torch.Generator().manual_seed(0))
        oracle = masked_first_block(dit64, shape, ctx64, guidance, video, audio, timesteps)
    outputs = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("BATON_FAST_BACKEND", backend)
        with torch.no_grad():
            ctx = run_context(pipeline.dit, shape, text_tokens, lens, torch.Generator().manual_seed(0))
            outputs[backend] = masked_first_block(pipeline.dit, shape, ctx, guidance, video, audio, timesteps)
            if backend == "reference":
                unmasked = masked_first_block(pipeline.dit, shape, ctx, None, video, audio, timesteps)
    assert (unmasked[0] - outputs["reference"][0]).abs().max() > 1e-2 * oracle[0].abs().max()  # the masks matter
    for i, name in enumerate(("video", "audio")):
        ref, tri = outputs["reference"][i], outputs["triton"][i]
        assert torch.isfinite(tri).all() and tri.dtype == torch.float32
        err_ref = (ref.double() - oracle[i]).abs().max().item()
        err_tri = (tri.double() - oracle[i]).abs().max().item()
        assert err_tri <= 2 * err_ref + 1e-5 * oracle[i].abs().max().item(), (name, err_tri, err_ref)
        assert err_ref < 1e-4 * oracle[i].abs().max().item(), (name, err_ref)


def without_check_values(fn):
    """``fn`` (a reference op) taking and ignoring the public ops' ``check_values`` argument."""
    def call(*args, check_values=True, **kwargs):
        return fn(*args, **kwargs)
    return call


def brute_force_skipped_tiles(q_groups, k_groups, block_m, block_n, programs_per_tile_row):
    """Key tiles the kernel skips: the OR of a query block's masks shares no bit with the OR of a key tile's."""
    def tile_ors(groups, block):
        return [functools.reduce(operator.or_, groups[i:i + block].tolist()) for i in range(0, len(groups), block)]
    pairs = [(q, k) for q in tile_ors(q_groups, block_m) for k in tile_ors(k_groups, block_n)]
    return programs_per_tile_row * sum((q & k) == 0 for q, k in pairs)


def stereo_pan(seconds, rate, start, end, frequency=440.0):
    """A tone panned with the constant-power law from ``start`` to ``end`` (0 left, 1 right): float [2, samples]."""
    t = np.arange(int(seconds * rate)) / rate
    angle = np.linspace(start, end, len(t)) * np.pi / 2
    return 0.3 * np.sin(2 * np.pi * frequency * t) * np.stack([np.cos(angle), np.sin(angle)])


@pytest.mark.parametrize("layout", ["cue-planned", "close-up"])
def test_skipped_tiles_at_the_tiny_self_attention_shapes(layout):
    """The kernel's skipped-tile count (layout_tile_stats, interpreter) on the tiny preset's video
    self-attention (2 s: 80 tokens, cond + uncond, 2 heads x 32) equals the count from the masks.
    cue-planned: CuePlanner's layout of a left-to-right pan; close-up: an object that fills the frame
    from 1 s on (absent before)."""
    shape = CFG.shape(2.0)
    if layout == "cue-planned":
        vsl = CuePlanner().plan(spatial_cues(stereo_pan(2.0, 16000, 0.1, 0.9), 16000), ["dog"])
    else:
        vsl = VSL.from_dict({"caption": "", "frames": [{"time": 0.0, "objects": []}, {"time": 1.0, "objects": [
            {"id": 0, "name": "train", "box": [0.0, 0.0, 1.0, 1.0]}]}]})
    groups = vsl_group_masks(vsl, latent_frame_times(CFG, shape), *shape.video_grid[1:])[None]  # as layout_guidance
    g = torch.Generator().manual_seed(0)
    B, N, H, D = 2, shape.video_tokens, CFG.video.num_heads, CFG.video.head_dim
    q, k, v = (torch.randn(B, N, H, D, generator=g) for _ in range(3))
    coords = baton_fast.video_grid_coords(*shape.video_grid)[None]
    stats = baton_fast.layout_tile_stats(q, k, v, coords, coords, baton_fast.RopeTable.wan(D), q_groups=groups,
                                         k_groups=groups, rotate_q=False, rotate_k=False)
    expected = brute_force_skipped_tiles(groups[0], groups[0], stats["block_m"], stats["block_n"], B * H)
    print(f"{layout}: {stats['skipped']} of {stats['skipped'] + stats['visited']} key tiles skipped "
          f"({stats['block_m']}x{stats['block_n']} tiles, {N} tokens)")
    assert stats["skipped"] == expected
    assert (stats["skipped"] > 0) == (layout == "close-up")


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def generate(monkeypatch):
    """``baton-fast generate`` only, so that other subcommands' imports do not matter here."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"generate": cli.SUBCOMMANDS["generate"]})
    return lambda *argv: cli.main(["generate", "--steps", "2", "--no-progress", *map(str, argv)])


def write_wav(path, waveform, rate):
    scipy.io.wavfile.write(path, rate, np.round(np.atleast_2d(waveform).T * 32767).astype(np.int16))
    return path


def decoded_audio(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
        return samples, stream.rate, stream.channels


def test_cli_generate_with_audio_and_auto_layout(tmp_path, generate, capsys):
    """A 1 s stereo pan at 20 kHz (not an AAC rate): mp4 of the recording's length with the input audio
    (resampled to 22.05 kHz, still left-then-right), the VSL JSON and the boxes PNG next to it."""
    audio = write_wav(tmp_path / "pan.wav", stereo_pan(1.0, 20000, 0.05, 0.95), 20000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert generate("--audio", audio, "--layout", "auto", "--names", "dog", "--video-prompt", "a dog runs",
                    "--out", out_dir / "clip.mp4") == 0
    printed = capsys.readouterr().out
    print(printed)
    assert "input audio (2 ch, 0.00-1.00 s of the 1.00 s recording) muxed" in printed
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip.boxes.png", "clip.json", "clip.mp4", "clip.vsl.json",
                                                         "clip.wav"]
    report = json.loads((out_dir / "clip.json").read_text())
    assert report["mp4_audio"] == {"source": "input", "path": str(audio), "channels": 2, "sample_rate": 22050,
                                   "input_sample_rate": 20000, "offset": 0.0, "seconds": 1.0, "recording_seconds": 1.0,
                                   "wav": "the generated sound track"}
    assert report["layout"]["source"] == "auto" and report["layout"]["masked_steps"] == 1
    assert report["layout"]["mic_spacing"] == 0.2
    assert report["seconds"] == 1.0 and report["timings_s"]["layout_plan"] > 0
    vsl = VSL.load(out_dir / "clip.vsl.json")
    assert vsl.object_names() == {0: "dog"} and "left-crossing" in vsl.caption
    png = matplotlib.image.imread(out_dir / "clip.boxes.png")
    assert png.ndim == 3 and png[..., :3].std() > 0.05
    samples, rate, channels = decoded_audio(out_dir / "clip.mp4")
    assert (rate, channels) == (22050, 2)
    assert abs(samples.shape[1] / rate - 1.0) < 2048 / rate  # the recording's length, up to AAC padding
    quarter = rate // 4
    early = (samples[:, :quarter].astype(np.float64) ** 2).sum(1)
    late = (samples[:, -quarter:].astype(np.float64) ** 2).sum(1)
    assert early[0] > 4 * early[1] and late[1] > 4 * late[0]  # the input's pan, not the generated mono track
    with av.open(str(out_dir / "clip.mp4")) as container:
        assert container.streams.video[0].frames == CFG.shape(1.0).frames


def test_recording_span_defaults_to_the_preset_cap(tmp_path):
    """--audio without --seconds: the recording from --offset on, cut at the preset's cap (and said so)."""
    from baton_fast.generate import _recording

    long = write_wav(tmp_path / "long.wav", stereo_pan(5.0, 16000, 0.2, 0.8), 16000)
    used = _recording(str(long), CFG, 0.0, None)
    assert (used.offset, used.seconds, used.total, used.capped) == (0.0, CFG.max_seconds, 5.0, True)
    assert used.waveform.shape == (2, 4 * 16000)
    assert used.describe(CFG) == ("0.00-4.00 s of the 5.00 s recording (preset 'tiny' generates at most 4 s; "
                                  "pick the span with --offset and --seconds)")
    late = _recording(str(long), CFG, 3.3, None)  # 1.7 s left: 13 frames at 8 fps = 1.625 s
    assert (late.seconds, late.capped) == (1.625, False) and late.waveform.shape == (2, 26000)
    np.testing.assert_array_equal(late.waveform[:, :11200], used.waveform[:, 52800:])  # 3.3-4.0 s in both


@pytest.mark.parametrize("flags, spacing", [([], 0.2), (["--mic-spacing", "0.35"], 0.35)])
def test_mic_spacing_reaches_the_cues_of_the_auto_layout(tmp_path, monkeypatch, flags, spacing):
    """generate --mic-spacing goes to spatial_cues' mic_spacing (plan-layout's parameter), default plan-layout's."""
    from baton_fast.generate import DEFAULT_MIC_SPACING, _layout, _recording, add_arguments
    from baton_fast.spatial import cues

    assert DEFAULT_MIC_SPACING == cues.DEFAULT_MIC_SPACING
    seen = []

    def spy(*args, mic_spacing, **kwargs):
        seen.append(mic_spacing)
        return real(*args, mic_spacing=mic_spacing, **kwargs)

    real = cues.spatial_cues
    monkeypatch.setattr(cues, "spatial_cues", spy)
    parser = cli.Parser()
    add_arguments(parser)
    wav = write_wav(tmp_path / "pan.wav", stereo_pan(1.0, 16000, 0.05, 0.95), 16000)
    args = parser.parse_args(["--audio", str(wav), "--names", "dog", "--out", "x.mp4", *flags])
    sound = _recording(args.audio, CFG, 0.0, None)
    vsl, source, _ = _layout(args, sound)
    assert seen == [spacing] and source == "auto"
    assert vsl == CuePlanner(fps=args.layout_fps).plan(real(sound.waveform, 16000, mic_spacing=spacing), ["dog"])


def test_cli_generate_with_a_span_of_a_long_recording(tmp_path, generate, capsys):
    """--offset 1.5 --seconds 2 of a 5 s pan: a 2 s clip (16 frames) muxed with exactly that span of the input."""
    audio = write_wav(tmp_path / "pan.wav", stereo_pan(5.0, 16000, 0.05, 0.95), 16000)
    out = tmp_path / "out" / "clip.mp4"
    out.parent.mkdir()
    assert generate("--audio", audio, "--offset", "1.5", "--seconds", "2", "--names", "dog", "--out", out) == 0
    assert "input audio (2 ch, 1.50-3.50 s of the 5.00 s recording) muxed" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["mp4_audio"]["offset"] == 1.5 and report["mp4_audio"]["seconds"] == 2.0
    assert report["outputs"]["frames"] == 16 and report["outputs"]["video_seconds"] == 2.0
    samples, rate, _ = decoded_audio(out)
    assert abs(samples.shape[1] / rate - 2.0) < 2048 / rate  # the span's length, up to AAC padding
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 16


def test_cli_generate_with_a_vsl_file(tmp_path, generate):
    """--layout vsl.json without --audio: the prompts default to the layout caption, the generated sound
    track is muxed, the VSL is copied next to the mp4."""
    SCENE.save(tmp_path / "scene.json")
    out = tmp_path / "out" / "clip.mp4"
    out.parent.mkdir()
    assert generate("--layout", tmp_path / "scene.json", "--seconds", "0.5", "--out", out) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["mp4_audio"]["source"] == "generated" and report["layout"]["source"] == str(tmp_path / "scene.json")
    assert report["layout"]["video_prompts"] == ["a dog and a red car"]
    assert VSL.load(out.with_suffix(".vsl.json")) == SCENE
    _, rate, channels = decoded_audio(out)
    assert (rate, channels) == (CFG.audio_format.sample_rate, 1)


@pytest.mark.parametrize("case, message", [
    ("missing audio", "--audio: audio path"),
    ("auto without audio", "--layout auto: plans the layout from a recording; give --audio"),
    ("invalid vsl", "x1 (0.6) must be < x2 (0.4)"),
    ("unparsable vsl", "does not parse"),
    ("missing vsl", "--layout: '"),
    ("seconds beyond the recording", "--seconds: the recording has 1.00 s from --offset 0 s on, got 1.5"),
    ("offset beyond the recording", "--offset: expected a start in [0, 1.00) s (the recording's length), got 1"),
    ("names without layout", "--names: only used with --layout"),
    ("no prompt", "--video-prompt: required"),
    ("bad fraction", "--layout-fraction: expected a number in [0, 1]"),
    ("mic spacing out of range", "--mic-spacing: mic_spacing must be a distance in [0.005, 2] metres, got 3.0"),
    ("mic spacing not a number", "--mic-spacing: expected a finite number, got 'nan'"),
    ("mic spacing without audio", "--mic-spacing: only used with --layout or --audio"),
    ("mic spacing with a vsl file", "--mic-spacing: only used with --layout auto"),
])
def test_cli_generate_bad_layout_inputs(tmp_path, generate, capsys, case, message):
    inputs, out_dir = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    out_dir.mkdir()
    wav = write_wav(inputs / "pan.wav", stereo_pan(1.0, 16000, 0.2, 0.8), 16000)
    bad = SCENE.to_dict()
    bad["frames"][0]["objects"][0]["box"] = [0.6, 0.2, 0.4, 0.5]
    (inputs / "bad.json").write_text(json.dumps(bad))
    (inputs / "broken.json").write_text("{not json")
    argv = {"missing audio": ["--audio", inputs / "missing.wav"],
            "auto without audio": ["--layout", "auto", "--video-prompt", "a", "--audio-prompt", "b"],
            "invalid vsl": ["--audio", wav, "--layout", inputs / "bad.json"],
            "unparsable vsl": ["--layout", inputs / "broken.json"],
            "missing vsl": ["--layout", inputs / "missing.json"],
            "seconds beyond the recording": ["--audio", wav, "--seconds", "1.5"],
            "offset beyond the recording": ["--audio", wav, "--offset", "1"],
            "names without layout": ["--names", "dog", "--video-prompt", "a", "--audio-prompt", "b"],
            "no prompt": ["--audio-prompt", "b"],
            "bad fraction": ["--audio", wav, "--layout-fraction", "1.5"],
            "mic spacing out of range": ["--audio", wav, "--mic-spacing", "3"],
            "mic spacing not a number": ["--audio", wav, "--mic-spacing", "nan"],
            "mic spacing without audio": ["--mic-spacing", "0.3", "--video-prompt", "a", "--audio-prompt", "b"],
            "mic spacing with a vsl file": ["--audio", wav, "--layout", inputs / "bad.json", "--mic-spacing", "0.3"],
            }[case]
    assert generate(*argv, "--out", out_dir / "clip.mp4") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("baton-fast generate: error:") and message in err, err
    assert list(out_dir.iterdir()) == []
