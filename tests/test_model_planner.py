"""VA-Planner (sequence layout, placeholder gather, towers, any causal LM, local LM folder) and the
offline MiniLM text encoder."""
import dataclasses

import pytest
import torch

from baton_fast.model.config import get_preset
from baton_fast.model.planner import AUDIO_PLAN, SYSTEM_PROMPT, VIDEO_PLAN, VAPlanner, load_language_model
from baton_fast.model.text_encoder import TextEncoder, minilm_path
from baton_fast.rope import plan_audio_coords, plan_video_coords

CFG = get_preset("tiny")
PC = CFG.planner


@pytest.fixture(scope="module")
def planner():
    torch.manual_seed(0)
    return VAPlanner(CFG).eval()


def test_sequence_layout_and_right_padding(planner):
    ids, mask = planner.tokenize(["a red ball", "a very long description of a red ball on a floor"],
                                 ["a thud", "thuds"])
    tok = planner.tokenizer
    assert ids.shape == mask.shape and ids.dtype == torch.long
    for row in range(2):
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        tokens = tok.convert_ids_to_tokens(ids[row, :n].tolist())
        placeholders = PC.video_placeholders + PC.audio_placeholders
        assert tokens[-placeholders:] == [VIDEO_PLAN] * PC.video_placeholders + [AUDIO_PLAN] * PC.audio_placeholders
        system = tok(SYSTEM_PROMPT, add_special_tokens=False)["input_ids"]
        assert ids[row, :len(system)].tolist() == system
        assert tokens[len(system)] == "<|video_prompt|>" and "<|audio_prompt|>" in tokens


def test_prompt_text_cannot_forge_placeholders(planner):
    ids, _ = planner.tokenize([f"a ball {VIDEO_PLAN} {AUDIO_PLAN}"], ["a thud"])
    assert int((ids == planner.video_plan_id).sum()) == PC.video_placeholders
    assert int((ids == planner.audio_plan_id).sum()) == PC.audio_placeholders


def test_bad_prompts(planner):
    with pytest.raises(TypeError, match="video_prompts"):
        planner.tokenize("not a list", ["a"])
    with pytest.raises(ValueError, match="audio_prompts"):
        planner.tokenize(["a", "b"], ["a"])


def test_placeholder_gather_equals_boolean_mask(planner):
    ids, mask = planner.tokenize(["short", "a much longer video prompt with many words"], ["a", "b c d"])
    with torch.no_grad():
        video, audio = planner.placeholder_states(ids, mask)
        hidden = planner.lm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert video.shape == (2, PC.video_placeholders, PC.lm_hidden)
    assert torch.equal(video, hidden[ids == planner.video_plan_id].view(2, PC.video_placeholders, -1))
    assert torch.equal(audio, hidden[ids == planner.audio_plan_id].view(2, PC.audio_placeholders, -1))


def test_planned_tokens_shapes_coords_and_padding_invariance(planner):
    shape = CFG.shape(2.0)
    with torch.no_grad():
        both = planner(["a red ball", "a much longer prompt about a red ball bouncing"], ["a thud", "thuds"], shape)
        alone = planner(["a red ball"], ["a thud"], shape)
    K, M = shape.keyframes, shape.chunks
    assert (K, M) == (5, 2)
    assert both.video.shape == (2, K * PC.grid ** 2, PC.video_feature_dim) and both.video.dtype == torch.float32
    assert both.audio.shape == (2, M * PC.audio_tokens_per_chunk, PC.audio_feature_dim)
    _, gh, gw = shape.video_grid
    assert torch.equal(both.video_coords[0], plan_video_coords(K, PC.grid, gh, gw, latent_fps=2.0, keyframe_fps=2.0))
    assert torch.equal(both.audio_coords[0], plan_audio_coords(M, PC.audio_tokens_per_chunk, audio_latents_per_s=8.0))
    # right padding never reaches the placeholders of the shorter prompt (causal LM)
    assert torch.allclose(both.video[:1], alone.video, atol=1e-5)
    assert torch.allclose(both.audio[:1], alone.audio, atol=1e-5)
    assert not torch.allclose(both.video[0], both.video[1])


def test_tower_timestamps_are_seconds(planner):
    video, audio = planner.towers.timestamps(3, 2, "cpu")
    assert torch.equal(video[0, :, 0], torch.arange(3.0).repeat_interleave(PC.grid ** 2) / PC.keyframe_fps)
    t = PC.audio_tokens_per_chunk
    expected = torch.tensor([m + (n + 0.5) / t for m in range(2) for n in range(t)])
    assert torch.allclose(audio[0, :, 0], expected)


def test_towers_cross_modal_exchange(planner):
    """Audio queries read the video stream: changing the video placeholder states changes audio tokens."""
    g = torch.Generator().manual_seed(0)
    video_states = torch.randn(1, PC.video_placeholders, PC.lm_hidden, generator=g)
    audio_states = torch.randn(1, PC.audio_placeholders, PC.lm_hidden, generator=g)
    with torch.no_grad():
        _, audio1 = planner.towers(video_states, audio_states, 3, 2)
        _, audio2 = planner.towers(video_states + 1, audio_states, 3, 2)
    assert not torch.allclose(audio1, audio2)
    with pytest.raises(ValueError, match="keyframes"):
        planner.towers(video_states, audio_states, 100, 2)


def test_any_causal_lm_and_local_folder(tmp_path):
    """A Llama-architecture LM with another width works; a saved LM folder loads offline and plans the same."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=30600, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    planner = VAPlanner(CFG, lm, tokenizer).eval()
    lm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = VAPlanner(CFG, *load_language_model(tmp_path)).eval()
    loaded.towers.load_state_dict(planner.towers.state_dict())
    shape = CFG.shape(1.0)
    with torch.no_grad():
        a = planner(["a ball"], ["a thud"], shape)
        b = loaded(["a ball"], ["a thud"], shape)
    assert a.video.shape == (1, 3 * PC.grid ** 2, PC.video_feature_dim)
    assert torch.allclose(a.video, b.video, atol=1e-6) and torch.allclose(a.audio, b.audio, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="planner_lm"):
        load_language_model(tmp_path / "missing")


def test_planner_needs_a_planner_preset():
    with pytest.raises(ValueError, match="no planner"):
        VAPlanner(get_preset("ovi-720p-5s"))


# ---------------------------------------------------------------------- text encoder
@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_tokens=CFG.text_max_tokens).eval()


def test_text_encoder_is_the_real_minilm_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub access would raise
    assert minilm_path().joinpath("model.safetensors").is_file()
    encoder = TextEncoder()
    hidden, lens = encoder(["a dog barks loudly", "a dog is barking", "quarterly stock market report", ""])
    assert hidden.shape == (4, int(lens.max()), 384) and hidden.dtype == torch.float32 and lens.dtype == torch.int32
    assert lens[-1] == 2  # [CLS] [SEP]
    pooled = torch.stack([hidden[i, :lens[i]].mean(0) for i in range(3)])
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    # trained weights: paraphrases are much closer than unrelated sentences (random weights are not)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2


def test_text_encoder_padding_does_not_change_states(encoder):
    short, _ = encoder(["a dog barks"])
    both, lens = encoder(["a dog barks", "a much longer sentence about a dog that barks at night"])
    assert torch.allclose(both[0, :lens[0]], short[0], atol=1e-5)


def test_text_encoder_errors(tmp_path, encoder):
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        TextEncoder(tmp_path)
    with pytest.raises(TypeError, match="texts"):
        encoder("not a list")


def test_presets_planner_sizes():
    paper = get_preset("baton-paper")
    shape = paper.shape(5.0)
    assert (shape.keyframes, shape.chunks, shape.video_grid) == (31, 5, (31, 22, 22))
    assert shape.keyframes * paper.planner.grid ** 2 == 22599 and shape.video_tokens == 15004
    assert dataclasses.replace(paper, planner=None).shape(5.0).keyframes == 0
