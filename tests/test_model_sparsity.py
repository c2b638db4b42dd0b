"""Sliding-tile sparsity in the DiT: tokens and coordinates moved to tile-major order once per forward, the video
self-attention on the run's BlockMask; a window that covers the grid gives the dense result."""
import pytest
import torch

from baton_fast.model.config import get_preset
from baton_fast.model.dit import DualBranchDiT
from baton_fast.model.layout import LayoutGuidance
from baton_fast.model.planner import PlannedTokens, rs_rope_coords
from baton_fast.model.sparsity import parse_window

CFG = get_preset("tiny")


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    dit = DualBranchDiT(CFG).eval()
    g = torch.Generator().manual_seed(1)
    shape = CFG.shape(1.0)  # 3 x 4 x 4 video tokens: 2 x 1 x 1 tiles of 2 x 4 x 4, the last one smaller
    pc = CFG.planner
    plan = PlannedTokens(torch.randn(2, shape.keyframes * pc.grid ** 2, pc.video_feature_dim, generator=g),
                         torch.randn(2, shape.chunks * pc.audio_tokens_per_chunk, pc.audio_feature_dim, generator=g),
                         *rs_rope_coords(CFG, shape))
    text = torch.randn(2, 5, CFG.text_dim, generator=g)
    lens = torch.tensor([5, 3], dtype=torch.int32)
    inputs = (torch.randn(2, *shape.video_latent, generator=g),
              torch.randn(2, shape.audio_latents, CFG.audio.latent_channels, generator=g), torch.tensor([900.0, 250.0]))

    def prepare(window=None):
        return dit.prepare(shape, text, lens, text, lens, plan, sparse_window=window)

    return dit, prepare, inputs


def test_window_covering_the_grid_equals_dense(run):
    dit, prepare, inputs = run
    with torch.no_grad():
        dense = dit(*inputs, prepare())
        ctx = prepare((3, 1, 1))
        assert ctx.sparsity.mask.block_density() == 1.0
        for sparse in (False, True):  # tile-major order alone, then with the mask
            out = dit(*inputs, ctx, sparse=sparse)
            for x, ref in zip(out, dense):
                assert torch.allclose(x, ref, atol=1e-5, rtol=1e-4)


def test_narrow_window_skips_blocks_and_changes_the_output(run):
    dit, prepare, inputs = run
    ctx = prepare((1, 1, 1))
    report = ctx.sparsity.report(sparse_evaluations=4, layers=len(dit.blocks))
    assert report["key_blocks_visited_per_attention"] < report["key_blocks_dense_per_attention"]
    assert report["key_blocks_visited_in_run"] == 4 * len(dit.blocks) * report["key_blocks_visited_per_attention"]
    with torch.no_grad():
        dense, sparse = dit(*inputs, ctx), dit(*inputs, ctx, sparse=True)
    assert not torch.allclose(dense[0], sparse[0], atol=1e-4)
    assert all(torch.isfinite(x).all() for x in sparse)


def test_sparse_errors(run):
    dit, prepare, inputs = run
    with pytest.raises(ValueError, match="sparse: the run context was prepared without sparse_window"):
        dit(*inputs, prepare(), sparse=True)
    layout = LayoutGuidance(torch.ones(1, 48, dtype=torch.int64), torch.full((2, 5), -1, dtype=torch.int64))
    with pytest.raises(ValueError, match="sparse_window: not supported with layout masks"):  # tile vs group order
        dit(*inputs, prepare((1, 1, 1)), layout)
    for text in ("2,1,1", "1,1", "a,b,c", "0,1,1"):
        with pytest.raises(ValueError, match="expected three odd integers"):
            parse_window(text)


def test_generate_flags_refused_in_one_line(tmp_path, capsys):
    from baton_fast import cli

    base = ["generate", "--video-prompt", "a", "--audio-prompt", "b", "--out", str(tmp_path / "clip.mp4")]
    for extra, message in ((["--sparse-window", "3,2,1"], "--sparse-window: expected three odd integers"),
                           (["--sparse-window", "1,1,1", "--sparse-dense-steps", "-1"],
                            "--sparse-dense-steps: expected an integer >= 0"),
                           (["--sparse-window", "1,1,1", "--layout", "auto"], "--sparse-window: not supported with")):
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert "baton-fast generate: error: " + message in err and err.count("error:") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_sampler_schedule_dense_then_sparse():
    from baton_fast.model.sampler import SamplerOptions

    assert SamplerOptions(steps=5, sparse_window=(1, 3, 3), sparse_dense_steps=2).sparse_steps == [2, 3, 4]
    assert SamplerOptions(steps=5).sparse_steps == []
    with pytest.raises(ValueError, match="sparse_window: not supported with a CUDA graph or step caching"):
        SamplerOptions(steps=5, sparse_window=(1, 3, 3), cache="teacache")
