"""End-to-end benchmark (``baton_fast.model.benchmark_end_to_end``): record structure, values, peak memory,
a failing compiled path, and the report's table and cost-curve plot.  Sizes are cut down (2 Euler steps,
one timed round, 1 and 2 s, the ``aot_eager`` compile backend) so that the whole file runs in seconds."""
import math

import pytest
import torch

from baton_fast.bench import report, runner
from baton_fast.model import bench as e2e
from baton_fast.model import benchmark_end_to_end

SECONDS = (1.0, 2.0)
SMALL = {True: e2e.Budget(steps=2, rounds=1, compiled_seconds=(2.0, 1.0), compile_budget_s=math.inf)}
MEASURED_METRICS = {"planner LM prefill", "planner (tokenize + prefill + towers)", "text encoding",
                    "run preparation (text embed, plan K/V)", e2e.STEP_METRIC, "denoise (2 steps)", "decode",
                    "total (planner to decode)", "peak tensor memory (whole run)",
                    "peak tensor memory (DiT evaluations)"}
EAGER, COMPILED = "eager, reference ops", "regional torch.compile (aot_eager)"


def _small(monkeypatch, backend="aot_eager"):
    monkeypatch.setattr(e2e, "BUDGETS", SMALL)
    monkeypatch.setattr(e2e, "SECONDS", SECONDS)
    monkeypatch.setattr(e2e, "COMPILE_BACKEND", backend)


@pytest.fixture(scope="module")
def records():
    """The section as ``baton-fast bench --quick`` collects it (through the runner's hook), cut down."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _small(monkeypatch)
        return runner._optional_records("end_to_end", "baton_fast.model", runner.END_TO_END_FUNCTION, True)


def _value(records, backend, metric, seconds=e2e.HEADLINE_SECONDS):
    (found,) = [r["value"] for r in records if r["backend"] == backend and r["metric"] == metric
                and r["shape"]["seconds"] == seconds]
    return found


def test_records_have_the_runner_format_and_measured_labels(records):
    required = {"section", "case", "backend", "device", "kind", "measured", "metric", "value", "unit", "shape", "dtype",
                "notes", "extra"}
    for r in records:
        assert required <= r.keys()
        assert (r["section"], r["kind"], r["measured"], r["device"], r["dtype"]) == (
            "end_to_end", "measured", True, "cpu", "float32")
        assert r["extra"]["torch_threads"] == torch.get_num_threads()
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
        assert r["unit"] == ("MiB" if "memory" in r["metric"] else "s" if "compile" in r["metric"] else "ms")
    pairs = {(r["backend"], r["metric"]) for r in records}
    assert pairs == {(path, m) for path in (EAGER, COMPILED) for m in MEASURED_METRICS} | {
        (COMPILED, "compile time (first run - warm run)")}
    curve = {(r["backend"], r["shape"]["seconds"]) for r in records if r["metric"] == e2e.STEP_METRIC}
    assert curve == {(path, s) for path in (EAGER, COMPILED) for s in SECONDS}
    compile_times = [r for r in records if r["metric"].startswith("compile time")]
    assert {r["shape"]["seconds"] for r in compile_times} == set(SECONDS)
    assert all(r["extra"]["backend"] == "aot_eager" for r in compile_times)


def test_values_are_consistent(records):
    for path in (EAGER, COMPILED):
        # total = planner + text + prepare + denoise + decode in every run, so its median exceeds theirs
        total = _value(records, path, "total (planner to decode)")
        assert total > _value(records, path, "denoise (2 steps)") > _value(records, path, e2e.STEP_METRIC)
        assert total > _value(records, path, "planner (tokenize + prefill + towers)")
        assert (_value(records, path, "peak tensor memory (whole run)")
                >= _value(records, path, "peak tensor memory (DiT evaluations)") > 0)
    shapes = {r["shape"]["seconds"]: r["shape"] for r in records}
    assert shapes[1.0]["video_tokens"] < shapes[2.0]["video_tokens"]
    assert shapes[2.0] == dict(preset="tiny", seconds=2.0, prompts=1, dit_batch=2, steps=2, video_tokens=80,
                               audio_tokens=16, text_tokens=shapes[2.0]["text_tokens"], video_plan_tokens=20,
                               audio_plan_tokens=8)


def test_peak_tensor_bytes_separates_dit_evaluations():
    mib = 2**20

    class Model(torch.nn.Module):
        def forward(self, x):
            return torch.ones(mib // 4).sum() + x  # 1 MiB inside, freed before returning

    model = Model()
    kept = []

    def run():
        model(torch.zeros(()))
        kept.append(torch.ones(4 * mib // 4))  # 4 MiB outside the model, alive at the end

    whole, dit = e2e._peak_tensor_bytes(run, model, torch.device("cpu"))
    assert mib <= dit < mib + 4096
    assert 4 * mib <= whole < 4 * mib + 4096


def test_failing_compiled_path_is_skipped_next_to_the_eager_figures(monkeypatch):
    _small(monkeypatch, backend="no_such_backend")
    records = benchmark_end_to_end(True)
    skipped = [r for r in records if r["metric"] == "skipped"]
    assert len(skipped) == 1 and "no_such_backend" in skipped[0]["extra"]["reason"]  # not retried at 1 s
    assert {r["backend"] for r in records if r["value"] is not None} == {EAGER}
    assert {r["shape"]["seconds"] for r in records if r["metric"] == e2e.STEP_METRIC} == set(SECONDS)


@pytest.mark.parametrize("spent, compiles_next", [([], True), ([3.0], True), ([7.5], True), ([8.0], False),
                                                  ([3.0, 6.0], True), ([3.0, 6.5], False), ([25.0], False)])
def test_quick_compiles_further_durations_only_within_the_compile_budget(spent, compiles_next):
    """The first compiled duration always runs; a further one while spent + last compile <= 15 s (quick)."""
    budget = e2e.BUDGETS[True]
    path = e2e._Path("compiled", None, "inductor", compile_s=dict(zip(budget.compiled_seconds, spent)))
    assert e2e._compiles_at(path, budget.compiled_seconds[len(spent)], budget) == compiles_next
    assert not e2e._compiles_at(path, 3.0, budget)  # not a compiled duration


def test_quick_must_be_a_bool():
    with pytest.raises(TypeError, match="quick"):
        benchmark_end_to_end("yes")


def test_report_shows_the_table_and_the_cost_curve(records, tmp_path):
    results = dict(schema=report.RESULTS_SCHEMA, created_utc="now", mode="quick", device="cpu", wall_s=1.0,
                   machine={}, records=records)
    plots = report.write_plots([results], tmp_path)
    assert (tmp_path / "end_to_end_step_vs_seconds.png").stat().st_size > 0
    section = report._end_to_end([results], plots)
    assert f"| device | case | metric | {EAGER} | {COMPILED} |" in section
    step_2s = f"| cpu | tiny, 2 s | {e2e.STEP_METRIC} | {report._num(_value(records, EAGER, e2e.STEP_METRIC))} ms | "
    assert step_2s in section
    assert f"| cpu | tiny, 1 s | {e2e.STEP_METRIC} |" in section
    assert "![end-to-end cost curve](" in section and "compile time (first run - warm run)" in section

