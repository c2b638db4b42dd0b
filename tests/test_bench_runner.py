"""`baton-fast bench`: the unfused baseline's numerics, measured records, results file, report and hooks."""
import importlib.machinery
import json
import os
import sys
import time
import types

import pytest
import torch

from baton_fast import cli, reference
from baton_fast.bench import kernels_bench, machine, report, runner
from baton_fast.bench.cases import Case, Side
from baton_fast.bench.unfused_rope import materialise_cos_sin, rotate
from baton_fast.model import bench as model_bench
from baton_fast.rope import RopeTable

TINY_VIDEO = Side("video", (2, 3, 3))
TINY_CASES = (Case("Ovi video self-attn", TINY_VIDEO, TINY_VIDEO, 2, 32, 30),
              Case("Ovi audio->video cross-attn", Side("audio", (5,)), Side("video_time", (2, 3, 3)), 2, 32, 30),
              Case("text cross-attn", Side("unrotated", (18,)), Side("unrotated", (7,)), 2, 32, 30))
EAGER, SDPA = kernels_bench.CPU_BACKENDS[0], kernels_bench.CPU_BACKENDS[2]


@pytest.mark.parametrize("side, table", [
    (TINY_VIDEO, RopeTable.wan(32)),
    (Side("ltx2_video", (2, 3, 4)), RopeTable.ltx2(4 * 32, 4, interleaved=False)),  # per-head, split layout
    (Side("ltx2_video", (2, 3, 4)), RopeTable.ltx2(4 * 32, 4)),
    (Side("audio", (9,)), RopeTable.ovi_temporal(32, 0.19676)),
])
def test_unfused_rotation_equals_the_reference(side, table):
    """The diffusers-style baseline (float32 angles and arithmetic, as diffusers) computes the rotation of the
    reference in float32, and is as close to the float64 reference as that is."""
    x = torch.randn(2, side.tokens, 4, 32)
    coords = side.coords() * 1.37  # off-grid coordinates too
    got = rotate(x, materialise_cos_sin(coords, table))
    torch.testing.assert_close(got, reference.apply_rope(x, coords, table), rtol=1e-5, atol=1e-5)
    exact = reference.apply_rope(x.double(), coords, table)
    assert (got - exact).abs().max() <= 2 * (reference.apply_rope(x, coords, table) - exact).abs().max() + 1e-6


def test_measure_case_records_checked_figures():
    records = kernels_bench.measure_case(TINY_CASES[1], "cpu", torch.float32, backends=[EAGER, SDPA])
    assert [(r["backend"], r["metric"], r["unit"]) for r in records] == [
        (b.name, metric, unit) for b in (EAGER, SDPA)
        for metric, unit in (("time", "ms"), ("matrix throughput", "GFLOP/s"), ("effective bandwidth", "GB/s"))]
    for r in records:
        assert r["kind"] == "measured" and r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["shape"] == dict(B=1, Nq=5, Nk=18, H=2, Hk=2, D=32)
        assert r["value"] > 0 and r["extra"]["check_ok"] and r["extra"]["max_abs_err"] < 1e-5
    time_ms = records[0]["value"]
    assert records[1]["value"] == pytest.approx(4 * 2 * 5 * 18 * 32 / (time_ms * 1e-3) / 1e9)


def test_a_failing_or_wrong_backend_is_reported_not_hidden():
    def broken(inp, k_static):
        raise RuntimeError("no such kernel here")

    def wrong(inp, k_static):
        return lambda: torch.zeros_like(inp.q)

    records = kernels_bench.measure_case(TINY_CASES[0], "cpu", torch.float32, backends=[
        kernels_bench.Backend("broken", broken), kernels_bench.Backend("wrong", wrong)])
    skipped = [r for r in records if r["backend"] == "broken"]
    assert [r["metric"] for r in skipped] == ["skipped"] and "no such kernel here" in skipped[0]["extra"]["reason"]
    assert all(not r["extra"]["check_ok"] for r in records if r["backend"] == "wrong")


def test_cpu_timer_warms_up_then_times_at_least_min_reps():
    calls = []
    times = kernels_bench.time_cpu_ms(lambda: calls.append(1), min_reps=4, budget_s=0.0, warmup_s=0.0)
    assert len(times) == 4 and len(calls) == 2 + 4 and all(t >= 0 for t in times)
    slow = kernels_bench.time_cpu_ms(lambda: time.sleep(0.002), min_reps=1, budget_s=0.02, warmup_s=0.0)
    assert len(slow) >= 3 and min(slow) >= 2.0


def test_backends_for_cpu():
    names = [b.name for b in kernels_bench.backends_for(torch.device("cpu"), TINY_CASES[0], quick=True)]
    assert names == ["baton-fast op, eager (CPU path)", "reference, torch.compile", "SDPA + RoPE pass"]
    assert "FlexAttention + RoPE pass" in [b.name for b in kernels_bench.backends_for(torch.device("cpu"),
                                                                                      TINY_CASES[0], quick=False)]


@pytest.fixture
def tiny_plan(monkeypatch):
    """The measured sections on tiny cases with the two fast CPU backends."""
    def plan(device, quick):
        sections = ("kernels", "kernels", "sweep")
        return [(section, c.name, lambda c=c, section=section: kernels_bench.measure_case(
            c, device, torch.float32, section=section, backends=[EAGER, SDPA])) for section, c in zip(sections, TINY_CASES)]
    monkeypatch.setattr(kernels_bench, "benchmark_plan", plan)
    # the end-to-end section, cut down: eager only, 2 steps, one timed run (tests/test_model_bench.py covers it)
    monkeypatch.setattr(model_bench, "BUDGETS", {True: model_bench.Budget(steps=2, rounds=1, compiled_seconds=(),
                                                                         compile_budget_s=0.0)})


def test_bench_command_writes_results_report_and_plots(tiny_plan, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["bench", "--quick", "--sections", "cost_model,kernels,sweep,end_to_end", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == report.RESULTS_SCHEMA and results["mode"] == "quick" and results["device"] == "cpu"
    assert results["machine"]["torch_threads"] == 1 and results["machine"]["versions"]["torch"]
    required = {"section", "case", "backend", "device", "kind", "metric", "value", "unit", "shape", "dtype", "extra"}
    assert all(required <= r.keys() for r in results["records"])
    kinds = {(r["section"], r["kind"]) for r in results["records"]}
    assert {("cost_model", "modelled"), ("kernels", "measured"), ("sweep", "measured")} <= kinds
    markdown = (out / "report.md").read_text()
    assert "Not measured on a GPU yet" in markdown and report.GPU_COMMAND in markdown
    assert "| Ovi video self-attn | 18 x 18, 2x32 | SDPA + RoPE pass |" in markdown
    assert "| device | case | metric | eager, reference ops |" in markdown  # the end-to-end table
    assert (out / "plots" / "modelled_bytes.png").stat().st_size > 0
    assert (out / "plots" / "time_vs_tokens_cpu.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "## Headline" in printed and "results.json" in printed

    again = tmp_path / "again"
    assert cli.main(["bench", "--report-only", str(out / "results.json"), "--out", str(again)]) == 0
    regenerated = (again / "report.md").read_text()
    assert f"--report-only {out / 'results.json'} --out {again}" in regenerated
    assert regenerated.split("## Machines")[1] == markdown.split("## Machines")[1]


def test_report_module_prints_markdown_and_rejects_bad_files(tiny_plan, tmp_path, capsys):
    results = runner.collect("cpu", quick=True, sections=["cost_model"], progress=False)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert report.main([str(path)]) == 0
    assert capsys.readouterr().out.startswith("# Benchmarks")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"records": []}))
    assert report.main([str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_report_renders_a_gpu_run_next_to_a_cpu_run(tiny_plan, tmp_path):
    """The GPU sections render from GPU records (synthetic here, test-only: this machine has no GPU) and a
    merged report keeps one copy of the modelled figures."""
    cpu = runner.collect("cpu", quick=True, sections=["cost_model", "kernels"], progress=False)
    gpu = json.loads(json.dumps(cpu))
    gpu["device"] = "cuda"
    gpu["machine"]["gpus"] = [dict(name="Test GPU", driver="0.0", memory_total_bytes=None, sm_clock_max_mhz=None,
                                   power_limit_w=None)]
    renamed = {EAGER.name: report.FUSED_GPU, SDPA.name: report.UNFUSED_BASELINE}
    for r in gpu["records"]:
        if r["section"] == "kernels":
            r.update(device="cuda:Test GPU", backend=renamed[r["backend"]])
    markdown = report.render_markdown([cpu, gpu], report.write_plots([cpu, gpu], tmp_path))
    assert "Measured on a GPU" in markdown and "Not measured on a GPU yet" not in markdown
    assert "Test GPU (driver 0.0, ? GiB" in markdown
    assert markdown.count("| Ovi video self-attn | 15,004 x 15,004, 24x128 |") == 1  # cost model row, deduplicated
    assert (tmp_path / "time_vs_tokens_gpu.png").exists() and (tmp_path / "time_vs_tokens_cpu.png").exists()


def test_optional_sections_hook(monkeypatch):
    module = types.ModuleType("fake_model")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_model", None)
    module.benchmark_end_to_end = lambda quick: [dict(case="tiny", backend="eager", metric="time per step",
                                                     value=12.0, unit="ms", kind="measured")]
    monkeypatch.setitem(sys.modules, "fake_model", module)
    records = runner._optional_records("end_to_end", "fake_model", runner.END_TO_END_FUNCTION, True)
    assert records == [dict(section="end_to_end", case="tiny", backend="eager", metric="time per step", value=12.0,
                            unit="ms", kind="measured")]
    missing = runner._optional_records("end_to_end", "no_such_module_here", runner.END_TO_END_FUNCTION, True)
    assert missing[0]["metric"] == "skipped" and "not installed" in missing[0]["extra"]["reason"]

    def explode(quick):
        raise RuntimeError("model not ready")

    module.benchmark_end_to_end = explode
    failed = runner._optional_records("end_to_end", "fake_model", runner.END_TO_END_FUNCTION, True)
    assert "model not ready" in failed[0]["extra"]["reason"]


def test_every_optional_section_finds_its_module_and_function(monkeypatch):
    """The sections run through ``_optional_records`` name modules of this repository: each is importable and
    defines the function, so a rename fails here instead of turning the section into one ``skipped`` record."""
    import importlib

    looked_up = []
    monkeypatch.setattr(runner, "_optional_records", lambda *args: looked_up.append(args[:3]) or [])
    for section, _, task in runner._tasks("cpu", True, ["diffusers", "end_to_end", "cache", "sequence_parallel",
                                                        "sparse", "training"]):
        assert task() == [], section
    assert [section for section, _, _ in looked_up] == ["diffusers", "end_to_end", "cache", "sequence_parallel",
                                                        "sparse", "training"]
    for section, module, function in looked_up:
        assert callable(getattr(importlib.import_module(module), function, None)), (section, module, function)


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads"),
    (["--sections", "cost_model,nonsense"], "--sections"),
])
def test_bad_arguments_exit_with_one_line(argv, message, tmp_path, capsys):
    assert cli.main(["bench", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_machine_info():
    info = machine.machine_info()
    assert info["cpu_cores"] >= 1 and info["memory_bytes"] > 0 and info["cpu_model"]
    assert info["versions"]["torch"] == torch.__version__
    assert machine.library_versions(["surely-not-installed-dist"]) == {"surely-not-installed-dist": None}


def test_no_gpu_reports_no_gpus(monkeypatch):
    import pynvml

    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert machine.gpu_info() == []


def test_quick_static_jobs_pick_the_models_head_dim_per_arch():
    from baton_fast import static_check

    jobs = runner._quick_static_jobs(static_check.shipped_jobs())
    assert {job.arch for job in jobs} == set(static_check.ARCHS)
    assert all(job.kernel == "rope_attention" and job.D == 128 for job in jobs)
    assert len(jobs) <= 2 * len(static_check.ARCHS)
    assert any(dict(job.flags)["ROTATE_K"] for job in jobs)  # the heaviest variant rotates K in the loop


def test_headline_counts_the_eager_path_among_the_cpu_paths():
    def timing(case, backend, ms):
        return dict(section="kernels", case=case, backend=backend, device="cpu", metric="time", value=ms)

    results = [{"records": [timing("self-attn", report.EAGER_CPU, 2.0), timing("self-attn", "compiled", 4.0),
                            timing("cross-attn", report.EAGER_CPU, 2.0), timing("cross-attn", "compiled", 0.5)]}]
    headline = report._headline(results)
    assert f"self-attn: {report.EAGER_CPU} 1x" in headline  # eager is the fastest here: no speed-up claimed
    assert "cross-attn: compiled 4x" in headline


def test_static_section_shows_the_compiles_own_progress(monkeypatch):
    from baton_fast import static_check

    calls = []
    monkeypatch.setattr(static_check, "check", lambda jobs, progress=False: calls.append(progress) or [])
    for progress in (True, False):
        [(_, _, task)] = runner._tasks("cpu", True, ["static"], progress)
        assert task() == []
    assert calls == [True, False]


def test_bench_output_has_no_profiler_usdt_lines(capfd):
    """The torch profiler's USDT lines (written to fd 2 by kineto) are dropped; everything else, progress
    bars' carriage returns and lines split across writes included, passes through in order."""
    from torch.profiler import ProfilerActivity, profile

    from baton_fast.bench.stderr_filter import filtered_stderr

    with filtered_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            torch.ones(3).add_(1)
        usdt = b"USDT:2026-12-01 23:28:02 19284:19284 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
        for chunk in (b"kept 1\nUS", usdt[2:] + b"bar 10%\rbar", b" 50%\r" + usdt[:30], usdt[30:] + b"kept 2 (USDT: inside)\n",
                      b"\rbar 60%  ", usdt + b"[W1201 23:28:02.39 CPUAllocator.cpp:245] Memory block of unknown size "
                      b"was allocated before the profiling started\n", b"\rbar 70%\nU"):
            os.write(2, chunk)
            time.sleep(0.02)  # separate reads, so that a line is split across them
    err = capfd.readouterr().err
    assert err == "kept 1\nbar 10%\rbar 50%\rkept 2 (USDT: inside)\n\rbar 60%  \rbar 70%\nU", err


def test_stderr_filter_returns_while_a_child_still_holds_stderr():
    """A child started in the block that outlives it (the distributed bench's forkserver) keeps the pipe open:
    leaving the block must not wait for that child."""
    import subprocess

    from baton_fast.bench.stderr_filter import filtered_stderr

    start = time.perf_counter()
    with filtered_stderr():
        child = subprocess.Popen(["sleep", "30"])  # inherits file descriptor 2, the pipe
    try:
        assert time.perf_counter() - start < 10
    finally:
        child.kill()
        child.wait()
