"""Step caching (``baton_fast.model.cache``): threshold 0 is the uncached run bit for bit, a skipping run is
deterministic, the skip decisions follow each policy on a velocity field whose changes are known, forced
steps, bad settings, the pipeline's per-evaluation report, and no recompilation of the compiled blocks."""
import copy
import json
import math

import pytest
import torch

from baton_fast.model.cache import DEFAULT_THRESHOLDS, StepCache, check_cache_settings, relative_l1
from baton_fast.model.config import get_preset
from baton_fast.model.dit import DualBranchDiT
from baton_fast.model.layout import LayoutGuidance
from baton_fast.model.sampler import GuidedVelocity, SamplerOptions, compile_blocks, flow_sigmas, sample

from test_model_dit import random_plan, random_text

CFG = get_preset("tiny")
POLICIES = ("teacache", "first-block")


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return DualBranchDiT(CFG).eval()


@pytest.fixture(scope="module")
def run_inputs(dit):
    """A 0.5 s clip (2 x 4 x 4 video tokens, 4 audio tokens), one prompt pair with guidance (DiT batch 2,
    plan K/V cached in the context), noise, and a layout mask over the video tokens."""
    g = torch.Generator().manual_seed(3)
    shape = CFG.shape(0.5)
    video_text, video_lens = random_text(2, 5, g)
    audio_text, audio_lens = random_text(2, 5, g)
    with torch.no_grad():
        ctx = dit.prepare(shape, video_text, video_lens, audio_text, audio_lens, random_plan(CFG, shape, 2, g))
    noise = (torch.randn(1, *shape.video_latent, generator=g),
             torch.randn(1, shape.audio_latents, CFG.audio.latent_channels, generator=g))
    groups = torch.randint(1, 4, (1, shape.video_tokens), generator=g)
    layout = LayoutGuidance(groups, torch.full((2, 5), -1, dtype=torch.int64), fraction=0.5)
    return ctx, noise, layout


def run(model, run_inputs, options, layout=False):
    """Sample with ``options``; returns ``(video, audio, cache report or None)``."""
    ctx, noise, masks = run_inputs
    cache = StepCache.from_options(options)
    velocity = GuidedVelocity(model, ctx, options.video_guidance, options.audio_guidance, cache)
    with torch.no_grad():
        video, audio = sample(velocity, *noise, options, layout=masks if layout else None, cache=cache)
    return video, audio, cache.report() if cache is not None else None


# ---------------------------------------------------------------------- on the tiny DiT
@pytest.mark.parametrize("policy, solver, layout", [("teacache", "heun", True), ("first-block", "euler", False)])
def test_threshold_zero_is_the_uncached_run_bit_for_bit(dit, run_inputs, policy, solver, layout):
    """Heun with layout masks on the first steps, guidance and the plan K/V cache: every evaluation computes."""
    options = SamplerOptions(steps=3, solver=solver, progress=False)
    video, audio, _ = run(dit, run_inputs, options, layout)
    cached = SamplerOptions(steps=3, solver=solver, progress=False, cache=policy, cache_threshold=0.0)
    cached_video, cached_audio, report = run(dit, run_inputs, cached, layout)
    assert torch.equal(cached_video, video) and torch.equal(cached_audio, audio)
    assert report["computed"] == report["evaluations"] == options.evaluations


@pytest.mark.parametrize("policy, solver", [("teacache", "euler"), ("first-block", "heun")])
def test_a_skipping_threshold_is_deterministic_and_close(dit, run_inputs, policy, solver):
    options = SamplerOptions(steps=4, solver=solver, progress=False)
    reference = run(dit, run_inputs, options)
    cached = SamplerOptions(steps=4, solver=solver, progress=False, cache=policy, cache_threshold=0.3)
    first, second = run(dit, run_inputs, cached), run(dit, run_inputs, cached)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]
    report = first[2]
    assert 2 <= report["computed"] < report["evaluations"] == options.evaluations
    steps = report["steps"]
    assert [(r["step"], r["evaluation"]) for r in steps] == [(i, e) for i in range(4)
                                                             for e in ((0, 1) if solver == "heun" and i < 3 else (0,))]
    assert all(r["computed"] == {"video": True, "audio": True} for r in steps if r["step"] in (0, 3))
    skipped = [r for r in steps if not r["computed"]["video"]]
    assert skipped and all(r["forced"] is None and max(r["distance"].values()) < 0.3 for r in skipped)
    assert all(r["blocks"] == (CFG.video.num_layers if r["computed"]["video"] else int(policy == "first-block"))
               for r in steps)
    for x, ref in zip(first[:2], reference[:2]):  # skipping changes the result, a little
        assert 0 < (x - ref).norm() / ref.norm() < 0.1


@pytest.mark.slow
def test_compiled_blocks_do_not_recompile_per_step(dit, run_inputs):
    """Regional torch.compile: after one uncached evaluation, cached runs of both policies (skipping and
    computing, block 0 alone and the rest) reuse the graphs; any recompilation raises."""
    from torch._dynamo.utils import counters

    model = copy.deepcopy(dit)
    compile_blocks(model, backend="aot_eager")
    torch._dynamo.reset()
    run(model, run_inputs, SamplerOptions(steps=1, progress=False))
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for policy in POLICIES:
            report = run(model, run_inputs, SamplerOptions(steps=4, progress=False, cache=policy,
                                                           cache_threshold=0.3))[2]
            assert report["computed"] < report["evaluations"]
    assert counters["stats"]["unique_graphs"] == graphs


# ---------------------------------------------------------------------- on a constructed field
class ScriptedDiT:
    """A stand-in for the DiT with a known velocity: each of its 2 blocks adds the evaluation's level ``m``
    to the tokens (so block 0's residual is ``m`` and the uncached velocity is ``2 m``), and the modulated
    input of block 0 is ``m`` itself.  ``levels[k] = (video m, audio m)`` of evaluation ``k``."""

    blocks = (None, None)

    def __init__(self, levels):
        self.levels, self.calls = levels, 0

    def first_block_inputs(self, video, audio, video_mod, audio_mod):
        return video_mod.expand_as(video), audio_mod.expand_as(audio)

    def run_blocks(self, video, audio, video_mod, audio_mod, ctx, layout=None, start=0, stop=None):
        blocks = (2 if stop is None else stop) - start
        return video + blocks * video_mod, audio + blocks * audio_mod

    def velocity(self, cache):
        def call(video, audio, sigma, layout=None):
            m = [torch.full((1, 1, 1), float(level)) for level in self.levels[self.calls]]
            self.calls += 1
            tokens = video.reshape(1, -1, 1), audio.reshape(1, -1, 1)
            out = cache(self, *tokens, *m, ctx=None, layout=layout)
            return tuple((y - x).reshape(z.shape) for x, y, z in zip(tokens, out, (video, audio)))
        return call


# video level grows 4 % per step; audio 1 % per step, and 50 % once at step 5
LEVELS = [(1.04 ** k, 1.01 ** k * (1.5 if k >= 5 else 1.0)) for k in range(10)]


@pytest.mark.parametrize("policy, rescale, computed, audio_asked", [
    # teacache: accumulated change 0.04, 0.08, 0.12 >= 0.1 -> step 3; audio's 0.51 at step 5; then 8; 9 is last
    ("teacache", None, [0, 3, 5, 8, 9], [5]),
    # rescale 2x (polynomial 2 c + 0): 0.08, 0.16 -> every second step, audio at 5
    ("teacache", (2.0, 0.0), [0, 2, 4, 5, 7, 9], [5]),
    # first-block: change of block 0's residual since the last computed step: 0.04, 0.0816, 0.125 -> 3; ...
    ("first-block", None, [0, 3, 5, 8, 9], [5]),
])
def test_decisions_follow_the_policy_on_a_known_field(policy, rescale, computed, audio_asked):
    model = ScriptedDiT(LEVELS)
    options = SamplerOptions(steps=10, shift=1.0, progress=False, cache=policy, cache_threshold=0.1,
                             cache_rescale=rescale)
    cache = StepCache.from_options(options)
    video0, audio0 = torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1)
    video, audio = sample(model.velocity(cache), video0, audio0, options, cache=cache)
    records = cache.report()["steps"]
    assert [r["step"] for r in records if r["computed"]["video"]] == computed
    assert [r["step"] for r in records if r["requested"]["audio"] and r["forced"] is None] == audio_asked
    assert all(r["computed"]["video"] == r["computed"]["audio"] for r in records)  # joint rule
    # a skipped step reuses the residual of the last computed step u: velocity 2 m(u) (teacache), or block 0's
    # m(k) + the other block's m(u) (first-block); x(0) = sum over the steps of dt * velocity
    dts = (flow_sigmas(10, 1.0)[1:] - flow_sigmas(10, 1.0)[:-1]).tolist()
    used = [max(c for c in computed if c <= k) for k in range(10)]
    first = [k if policy == "first-block" else u for k, u in enumerate(used)]
    expect = [sum(dt * (LEVELS[f][b] + LEVELS[u][b]) for dt, f, u in zip(dts, first, used)) for b in (0, 1)]
    assert math.isclose(video.item(), expect[0], rel_tol=1e-5) and math.isclose(audio.item(), expect[1], rel_tol=1e-5)


def test_first_and_last_steps_compute_unless_asked_and_the_layout_switch():
    levels = [(1.0, 1.0)] * 20  # nothing ever changes: only forced evaluations compute

    def computed(first_steps=1, last_steps=1, solver="euler", layout=None):
        options = SamplerOptions(steps=6, solver=solver, progress=False, cache="teacache", cache_threshold=0.5,
                                 cache_first_steps=first_steps, cache_last_steps=last_steps)
        cache = StepCache.from_options(options)
        sample(ScriptedDiT(levels).velocity(cache), torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1), options,
               layout=layout, cache=cache)
        return [(r["step"], r["evaluation"], r["forced"]) for r in cache.report()["steps"] if r["computed"]["video"]]

    assert computed() == [(0, 0, "first steps"), (5, 0, "last steps")]
    assert computed(first_steps=2, last_steps=0) == [(0, 0, "first steps"), (1, 0, "first steps")]
    assert computed(0, 0) == [(0, 0, None)]  # nothing cached yet
    assert computed(solver="heun") == [(0, 0, "first steps"), (0, 1, "first steps"), (5, 0, "last steps")]
    masks = LayoutGuidance(torch.ones(1, 1, dtype=torch.int64), torch.ones(2, 1, dtype=torch.int64), fraction=0.5)
    assert computed(layout=masks) == [(0, 0, "first steps"), (3, 0, "layout switch"), (5, 0, "last steps")]


def test_relative_l1_per_row():
    previous = torch.tensor([[1.0, -2.0], [4.0, 0.0]])
    current = torch.tensor([[1.5, -2.0], [4.0, 1.0]])
    assert torch.allclose(relative_l1(current, previous), torch.tensor([0.5 / 3, 1.0 / 4]))


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize("kwargs, message", [
    (dict(cache="magic"), "cache: expected one of none, teacache, first-block"),
    (dict(cache="teacache", cache_threshold=-0.1), "cache_threshold: expected a finite number >= 0"),
    (dict(cache="first-block", cache_threshold=float("nan")), "cache_threshold"),
    (dict(cache="teacache", cache_threshold=True), "cache_threshold"),
    (dict(cache_threshold=0.1), "cache_threshold: only used with a cache policy"),
    (dict(cache="first-block", cache_rescale=(1.0, 0.0)), "cache_rescale: only used by the teacache policy"),
    (dict(cache="teacache", cache_rescale=()), "cache_rescale: expected a non-empty sequence"),
    (dict(cache="teacache", cache_first_steps=-1), "cache_first_steps"),
    (dict(cache="teacache", cache_last_steps=1.5), "cache_last_steps"),
    (dict(cache="teacache", cuda_graph=True), "cannot run inside a CUDA-graph replay"),
])
def test_bad_settings_raise_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerOptions(steps=4, progress=False, **kwargs)


def test_defaults_and_a_cache_used_without_begin(dit, run_inputs):
    assert check_cache_settings("teacache", None) == DEFAULT_THRESHOLDS["teacache"]
    assert StepCache.from_options(SamplerOptions()) is None
    ctx, noise, _ = run_inputs
    cache = StepCache("first-block", steps=4)
    with pytest.raises(RuntimeError, match="begin"):
        GuidedVelocity(dit, ctx, 4.0, 3.0, cache)(*noise, torch.tensor(1.0))


# ---------------------------------------------------------------------- product
@pytest.mark.slow
def test_generate_cli_reports_every_evaluation(tmp_path):
    from baton_fast import cli

    out = tmp_path / "out.mp4"
    argv = ["generate", "--video-prompt", "a red ball bounces", "--audio-prompt", "a rubber ball thuds",
            "--seconds", "1", "--steps", "4", "--solver", "heun", "--no-progress", "--out", str(out)]
    assert cli.main(argv + ["--cache", "teacache", "--cache-threshold", "0.3"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    cache = report["cache"]
    assert cache["policy"] == "teacache" and cache["threshold"] == 0.3
    assert len(cache["steps"]) == cache["evaluations"] == report["evaluations"] == 7
    assert cache["computed"] == sum(r["computed"]["video"] for r in cache["steps"]) < 7
    assert cache["steps"][0]["distance"] == {"video": None, "audio": None}  # nothing to compare with yet


@pytest.mark.parametrize("extra, message", [(["--cache", "magic"], "--cache"),
                                            (["--cache", "teacache", "--cache-threshold", "-1"], "threshold"),
                                            (["--cache-threshold", "0.1"], "threshold")])
def test_generate_cli_refuses_bad_cache_flags(tmp_path, capsys, extra, message):
    from baton_fast import cli

    out = tmp_path / "out.mp4"
    argv = ["generate", "--video-prompt", "a", "--audio-prompt", "b", "--no-progress", "--out", str(out), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sweep_benchmark_records_table_and_plot(monkeypatch, tmp_path):
    """The ``cache`` bench section, cut down (the tiny preset, 3 steps, the default threshold only):
    records per setting, uncached as the reference, and the report's table and PNG plot."""
    from baton_fast.bench import cache_bench, report

    assert [cfg.name for cfg in cache_bench.presets()] == ["tiny", "tiny-deep"]
    assert cache_bench.deep_preset().video.num_layers == 6
    monkeypatch.setattr(cache_bench, "presets", lambda: [CFG])
    monkeypatch.setattr(cache_bench, "STEPS", 3)
    monkeypatch.setattr(cache_bench, "THRESHOLDS", {True: ()})
    records = cache_bench.run(True)
    assert {r["case"] for r in records} == {"tiny, 2 s, 3 Euler steps"}
    assert len(records) == 3 * 8  # (uncached + 2 policies at their default) x metrics
    value = {(r["case"].split(",")[0], r["backend"], r["metric"]): r["value"] for r in records}
    assert value[("tiny", "uncached", "fewer evaluations")] == 1.0
    assert value[("tiny", "uncached", "final-latent rel. L2 (video)")] == 0.0
    assert value[("tiny", "uncached", "DiT CPU-time speed-up")] == 1.0 and value[("tiny", "uncached", "DiT CPU time")] > 0
    assert value[("tiny", "teacache, threshold 0.1 (default)", "evaluations computed")] <= 3
    assert all(r["kind"] == "measured" and r["device"] == "cpu" and "random weights" in r["notes"] for r in records)
    results = [dict(schema=report.RESULTS_SCHEMA, records=records)]
    plots = report.write_plots(results, tmp_path)
    assert (tmp_path / "cache_sweep.png").stat().st_size > 0
    section = report._cache(results, plots)
    assert "| cpu | tiny, 2 s, 3 Euler steps | first-block, threshold 0.1 (default) |" in section
    assert "random weights" in section and "![step-caching sweep](" in section
