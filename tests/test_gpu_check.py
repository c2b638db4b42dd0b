"""`baton-fast gpu-check` on a CPU: the no-CUDA exit, argument errors, the case lists, FLOP/byte
accounting, the numerics harness (under the interpreter), the CUDA-graph comparison, partial results,
the results schema and the report of a synthetic results file (a test fixture, not a measurement)."""
import json
import math
import subprocess
import sys
import time

import pytest
import torch

from baton_fast import cli
from baton_fast.bench import report
from baton_fast.bench.cases import FULL_CASES, Case, Side
from baton_fast.bench.cost_model import QUANT_CASES
from baton_fast.gpu_check import command, graph, native, results, timings
from baton_fast.gpu_check.checkout import REPO_ROOT
from baton_fast.kernels.rope_attention import SHIPPED_CONFIGS, half_pad, rope_attention_fwd

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit without CUDA")
FIXTURE_GPU = "TEST FIXTURE GPU (synthetic, not a measurement)"
WHERE = f"cuda:{FIXTURE_GPU}"


# --------------------------------------------------------------------------- command line
@needs_no_cuda
def test_without_cuda_it_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert cli.main(["gpu-check", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "no CUDA device is available" in lines[0] and lines[0].startswith("baton-fast gpu-check")
    assert not out.exists()


@pytest.mark.parametrize("argv, flag", [
    (["--parts", "numerics,bogus"], "--parts"),
    (["--parts", ","], "--parts"),
    (["--budget-s", "0"], "--budget-s"),
    (["--budget-s", "nan"], "--budget-s"),
    (["--budget-s", "soon"], "--budget-s"),
])
def test_argument_errors_name_the_flag(argv, flag, capsys):
    assert cli.main(["gpu-check", *argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and flag in lines[0]


def test_out_must_not_be_a_file(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("{}")
    assert cli.main(["gpu-check", "--out", str(path)]) == 2
    assert "--out" in capsys.readouterr().err
    assert path.read_text() == "{}"


def test_budgets_are_shared_in_the_default_ratio():
    assert command.part_budgets(list(results.PARTS), command.DEFAULT_BUDGET_S) == command.PART_BUDGETS_S
    half = command.part_budgets(["numerics", "timings"], 100)
    n, t = command.PART_BUDGETS_S["numerics"], command.PART_BUDGETS_S["timings"]
    assert half == pytest.approx({"numerics": 100 * n / (n + t), "timings": 100 * t / (n + t)}, abs=0.05)
    # the default budget plus the part processes' grace stays inside one 10-minute device command
    assert command.DEFAULT_BUDGET_S + len(results.PARTS) * command.GRACE_S < 600
    assert command.parse_parts("timings, numerics") == ["numerics", "timings"]  # run order is fixed


def test_environment_problems(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET" in command.environment_problem()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    assert "BATON_FAST_BACKEND" in command.environment_problem()
    monkeypatch.delenv("BATON_FAST_BACKEND")
    assert command.environment_problem() is None


# --------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("arch", [9, 8])
def test_config_cases_cover_every_shipped_config_in_both_dtypes(arch):
    cases = native.config_cases(arch)
    expected = {(family, tuple(cfg), hp) for (a, hp, family), cfgs in SHIPPED_CONFIGS.items() if a == arch
                for cfg in cfgs}
    assert {(c.family, c.config, half_pad(c.D)) for c in cases} == expected
    for family, config, hp in expected:
        dtypes = {c.dtype for c in cases if (c.family, c.config, half_pad(c.D)) == (family, config, hp)}
        assert dtypes == {torch.float16, torch.bfloat16}
    assert all(c.rotate_q or not c.rotate_k for c in cases)
    assert all(not (c.rotate_q or c.rotate_k or c.groups) for c in cases if c.family == "plain")
    groups = {half_pad(c.D) for c in cases if c.groups}
    assert groups == {hp for (a, hp, _) in SHIPPED_CONFIGS if a == arch}  # layout masks once per head-dim width
    assert any(c.D % 32 for c in cases)  # head dims that are not powers of two (masked lanes)


def test_each_part_lists_its_items(monkeypatch):
    from baton_fast import selftest
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    numerics = command._items("numerics", WHERE, 0)
    assert len(numerics) == len(selftest.ATTENTION_CASES + selftest.ROPE_CASES) + len(native.config_cases(9))
    assert [label for label, _ in command._items("cuda_graph", WHERE, 0)] == ["tiny denoise step, bf16"]
    assert [label for label, _ in command._items("timings", WHERE, 0)] == [c.name for c in timings.TIMED_CASES] + [
        f"{c.name} (forward+backward)" for c in timings.TRAINING_CASES] + [f"{case[0]} (quantised)" for case in QUANT_CASES]


def test_selftest_items_are_the_selftest_cases():
    from baton_fast import selftest
    labels = [label for label, _ in native.selftest_items(WHERE)]
    assert labels == [c.name for c in selftest.ATTENTION_CASES + selftest.ROPE_CASES]


SMALL = dict(B=2, Nq=20, Nk=19, H=2, Hk=1)


FIRST_FUSED_D64 = tuple(SHIPPED_CONFIGS[(9, 32, "fused")][0])


def _fused_items(launch=None):
    """The fp16 item of sm_90's first fused configuration at D=64 (Q and K rotated in the kernel)."""
    items = native.config_items(9, "cpu", WHERE, shape=SMALL, dtypes=(torch.float16,), launch=launch)
    name = f"fused {'x'.join(map(str, FIRST_FUSED_D64))} D64 wan: rotate Q, rotate K"
    return [(label, task) for label, task in items if label.startswith(name)]


def test_a_shipped_config_passes_against_float64_under_the_interpreter():
    (label, task), = _fused_items()
    recs = task()
    assert [r["extra"]["output"] for r in recs] == ["out", "lse"]
    for r in recs:
        assert r["section"] == "gpu_numerics" and r["extra"]["config"] == list(FIRST_FUSED_D64)
        assert math.isfinite(r["value"]) and 0 < r["value"] <= r["extra"]["budget"] and r["extra"]["ok"]


def test_the_numerics_harness_catches_a_kernel_that_skips_the_rotation():
    def unrotated(*args, rotate_q, rotate_k, **kwargs):
        return rope_attention_fwd(*args, rotate_q=False, rotate_k=rotate_k, **kwargs)

    (label, task), = _fused_items(launch=unrotated)
    out, _ = task()
    assert not out["extra"]["ok"] and out["value"] > out["extra"]["budget"]


# --------------------------------------------------------------------------- timings (dry)
def test_timed_cases_and_their_accounting():
    names = [c.name for c in timings.TIMED_CASES]
    assert set(names) == {c.name for c in FULL_CASES} | {timings.WAN_14B_720P.name} and len(names) == len(set(names))
    assert timings.WAN_14B_720P.q.tokens == 21 * 45 * 80 == 75_600
    ovi = timings.TIMED_CASES[0]
    acc = timings.case_accounting(ovi)
    assert acc["flops"] == 4 * 1 * 24 * 15_004 * 15_004 * 128
    qkvo = 4 * 15_004 * 24 * 128 * 2  # bf16 Q, K, V read once and O written once
    assert qkvo < acc["bytes"] < qkvo * 1.01  # plus coordinates and the rope table
    metric = {c.name: timings.headline_metric(c) for c in timings.TIMED_CASES}
    assert {n for n, m in metric.items() if m == "GB/s"} == {
        "text cross-attn", "Ovi audio->video cross-attn", "Ovi video->audio cross-attn", "Ovi audio self-attn"}
    assert metric["Baton plan cross-attn"] == metric["LTX-2 video self-attn"] == "TFLOP/s"


def test_forward_backward_timing_records_on_cpu():
    """The forward + backward task on a scaled-down case (CPU paths): both paths timed, rate from 14 B H Nq Nk D."""
    case = Case("tiny video self-attn", Side("video", (1, 4, 8)), Side("video", (1, 4, 8)), 2, 32, 1)
    (label, task), = timings.training_timing_items("cpu", WHERE, cases=[case], dtype=torch.float32)
    records = task()
    assert label == f"{case.name} (forward+backward)" and all(r["case"] == label for r in records)
    assert {r["backend"] for r in records} == {"baton-fast rope_attention", "PyTorch RoPE + SDPA"}
    times = {r["backend"]: r["value"] for r in records if r["metric"] == "forward+backward time"}
    flops = 14 * case.heads * case.q.tokens * case.k.tokens * case.head_dim
    for r in records:
        assert r["section"] == "kernels" and r["device"] == WHERE and r["value"] > 0
        if r["unit"] == "TFLOP/s":
            assert r["value"] == pytest.approx(flops / times[r["backend"]] / 1e9)


def test_backends_that_cannot_be_imported_are_named(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "xformers" else object())
    assert timings.unavailable_backends() == ["xformers + RoPE pass"]


# --------------------------------------------------------------------------- CUDA graph comparison
@pytest.mark.slow
def test_tiny_step_and_the_replay_comparison_on_cpu():
    step = graph.tiny_step("cpu", torch.float32)
    with torch.inference_mode():
        first, again, other = (step.velocity(*step.inputs[i]) for i in (0, 0, 1))
    assert first[0].shape == step.inputs[0][0].shape and first[1].shape == step.inputs[0][1].shape
    same = graph.compare(first, again)
    assert same == dict(max_abs_diff=0.0, bitwise_equal=True, relative_diff=0.0)
    stale = graph.compare(other, first)  # what a replay that ignored its new inputs would give
    assert not stale["bitwise_equal"] and stale["relative_diff"] > graph.RELATIVE_TOLERANCE[torch.bfloat16]
    broken = (first[0].clone(), first[1].clone())
    broken[1][0, 0, 0] = float("nan")
    assert graph.compare(first, broken)["max_abs_diff"] == math.inf


# --------------------------------------------------------------------------- partial results, schema
def _fixture_document(parts=("numerics", "cuda_graph", "timings")):
    """A synthetic gpu-check document (test fixture: no figure in it was measured)."""
    from baton_fast.bench.machine import machine_info
    gpu = dict(name=FIXTURE_GPU, capability=[9, 0], multiprocessors=132, memory_bytes=150 * 2**30)
    return results.new_document(gpu, machine_info(), {p: 10.0 for p in parts}, argv=["test-fixture"])


def _num_record(case, value, budget, config=None, output="out", dtype="float16"):
    return results.record("gpu_numerics", case, "triton, shipped config" if config else "op (config picked by the op)",
                          "max abs error", value, "", device=WHERE, dtype=dtype, kernel="rope_attention",
                          output=output, budget=budget, baseline=budget / 3, ok=value <= budget, config=config)


def test_run_items_writes_after_every_item_and_records_failures_and_skips(tmp_path):
    doc, path = _fixture_document(["numerics"]), tmp_path / "parts" / "numerics.json"
    seen = []

    def ok():
        seen.append(json.loads(path.read_text())["parts"]["numerics"]["items_done"])  # written before this item
        return [_num_record("a", 1e-3, 2e-3)]

    def boom():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def slow():
        time.sleep(0.2)
        return [_num_record("c", 1e-3, 2e-3)]

    items = [("a", ok), ("b", boom), ("c", slow), ("d", ok), ("e", ok)]
    deadline = time.monotonic() + 0.1  # "c" starts before it, "d" after
    command.run_items(doc, "numerics", items, deadline, path, WHERE)
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(doc)) and seen == [0]
    results.validate_document(written)
    part = written["parts"]["numerics"]
    assert part["status"] == "partial" and part["items"] == 5 and part["items_done"] == 3
    by_case = {r["case"]: r for r in written["records"]}
    assert by_case["b"]["metric"] == "failed" and "illegal memory access" in by_case["b"]["extra"]["reason"]
    assert [by_case[c]["metric"] for c in "de"] == ["skipped", "skipped"]
    assert command.exit_status(written) == 1
    assert not (tmp_path / "parts" / "numerics.json.tmp").exists()


CHILD = """
import json, sys, time
path, mode = sys.argv[1], sys.argv[2]
doc = json.loads(open(path + ".in").read())
doc["parts"]["numerics"].update(status="running" if mode == "hang" else "done", items=2, items_done=1 + (mode != "hang"))
open(path + ".tmp", "w").write(json.dumps(doc))
__import__("os").replace(path + ".tmp", path)
if mode == "hang":
    time.sleep(60)
sys.exit(3 if mode == "crash" else 0)
"""


def test_parts_run_as_merged_child_processes_and_a_hung_one_is_stopped(tmp_path, monkeypatch):
    """The parent's side of a part: shard processes (stand-ins that write part files: one finishes, one
    exits with an error, one hangs) are merged into results.json, the hung one is stopped after the grace."""
    args = command.argparse.Namespace(out=str(tmp_path), seed=0)
    modes = {"0/3": "ok", "1/3": "crash", "2/3": "hang"}
    for shard in modes:
        child = _fixture_document(["numerics"])
        child["records"].append(_num_record(f"case {shard}", 1e-3, 2e-3))
        path = command._part_file(tmp_path, "numerics", int(shard[0]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + ".in").write_text(json.dumps(child))

    def child_command(name, shard, budget_s, args):
        return [sys.executable, "-c", CHILD, str(command._part_file(tmp_path, name, int(shard[0]))), modes[shard]]

    monkeypatch.setattr(command, "_child_command", child_command)
    monkeypatch.setitem(command.SHARDS, "numerics", 3)
    monkeypatch.setattr(command, "GRACE_S", 1.5)
    monkeypatch.setattr(command, "POLL_S", 0.2)
    doc, results_path = _fixture_document(["numerics"]), tmp_path / "results.json"
    start = time.monotonic()
    command._run_part("numerics", 0.5, args, doc, results_path, WHERE)
    assert time.monotonic() - start < 10
    written = json.loads(results_path.read_text())
    results.validate_document(written)
    part = written["parts"]["numerics"]
    assert part["status"] == "partial" and part["items"] == 6 and part["items_done"] == 5
    assert "shard 1: its process exited with status 3" in part["failure"] and "past its deadline" in part["failure"]
    cases = [r["case"] for r in written["records"]]
    assert cases == ["case 0/3", "case 1/3", "case 2/3", "numerics"] and written["records"][-1]["metric"] == "failed"
    assert not list((tmp_path / "parts").glob("*.json"))  # merged, then removed
    assert command.exit_status(written) == 1


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["gpu"].update(name=""), "GPU's name"),
    (lambda d: d.pop("versions"), "versions"),
    (lambda d: d["records"].append(dict(_num_record("x", 1, 2), section="bogus")), "section"),
    (lambda d: d["records"].append(dict(_num_record("x", 1, 2), device="cpu")), "cuda:<name>"),
    (lambda d: d["records"].append(results.record("kernels", "x", "y", "skipped", None, "", device=WHERE)),
     "extra.reason"),
    (lambda d: d["records"].append(dict(_num_record("x", 1, 2), value="1")), "number"),
])
def test_validate_document_names_what_is_wrong(breakage, message):
    doc = _fixture_document()
    results.validate_document(doc)
    breakage(doc)
    with pytest.raises(ValueError, match=message):
        results.validate_document(doc)


# --------------------------------------------------------------------------- report
def test_report_renders_a_synthetic_results_file(tmp_path):
    doc = _fixture_document()
    for p in doc["parts"].values():
        p.update(status="done", items=3, items_done=3, wall_s=1.0,
                 telemetry=[dict(when="start", gpus=[dict(sm_clock_mhz=1980, temperature_c=40, power_draw_w=120.0)])])
    doc["records"] += [_num_record("rope_attention: wan self-attention", 1e-3, 2e-3),
                       _num_record("rope_attention: plain 128x64x8x2 D128", 5e-3, 2e-3, config=[128, 64, 8, 2]),
                       _num_record("rope_attention: plain 128x64x8x2 D128", 1e-3, 4e-3, config=[128, 64, 8, 2],
                                   output="lse")]
    shape = dict(B=1, Nq=15_004, Nk=15_004, H=24, Hk=24, D=128)
    for backend, ms in (("baton-fast fused", 2.0), ("SDPA + RoPE pass", 3.0)):
        check = dict(max_abs_err=1e-3, allowed_err=2e-3, check_ok=True, headline="TFLOP/s")
        doc["records"] += [
            results.record("kernels", "Ovi video self-attn", backend, "time", ms, "ms", device=WHERE, shape=shape,
                           dtype="bfloat16", rep_ms=50, **check),
            results.record("kernels", "Ovi video self-attn", backend, "matrix throughput", 2.766 / ms * 1e3, "TFLOP/s",
                           device=WHERE, shape=shape, dtype="bfloat16", **check),
            results.record("gpu_memory", "Ovi video self-attn", backend, "peak memory", 3 * 2**20, "B", device=WHERE,
                           shape=shape, dtype="bfloat16")]
    doc["records"] += [results.record("cuda_graph", "denoise step, new inputs", "CUDA graph replay vs eager",
                                      "max abs difference", 0.0, "", device=WHERE, shape=dict(preset="tiny"),
                                      dtype="bfloat16", ok=True, bitwise_equal=True, relative_diff=0.0,
                                      relative_tolerance=2 ** -7)]
    results.validate_document(doc)
    path = results.write_document(doc, tmp_path / "results.json")
    markdown = report.render_markdown(report.load_results([path]))
    assert f"## GPU check on {FIXTURE_GPU}" in markdown
    assert "**FAILED** rope_attention: plain 128x64x8x2 D128 float16 out" in markdown
    assert "| rope_attention | triton, shipped config | float16 | 2 | 1 | 2.5 (" in markdown
    assert "bitwise equal: True" in markdown and "SM 1980 MHz, 40 C, 120 W" in markdown
    assert "| Ovi video self-attn | 15,004 x 15,004, 24x128 | baton-fast fused | 2 | 1,383 TFLOP/s | 3 |" in markdown
    assert "SDPA + RoPE pass time / baton-fast fused time: Ovi video self-attn 1.5x" in markdown
    assert f"`{report.GPU_COMMAND}`" in report.render_gpu_check([])


# --------------------------------------------------------------------------- source checkout
@pytest.mark.slow
def test_runs_from_a_source_checkout_without_install():
    """With the installed package hidden, ``python3 -m baton_fast.cli`` from the repository root maps
    kernels/ and bench/ itself (the GPU machine's image has no baton-fast installed)."""
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; "
            f"sys.path.insert(0, {str(REPO_ROOT)!r}); import importlib.util, baton_fast; "
            "assert importlib.util.find_spec('baton_fast.kernels') is None; "
            "import baton_fast.gpu_check.command, baton_fast.kernels.rope_attention as k, baton_fast.bench.report as r; "
            "print(k.__file__); print(r.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(REPO_ROOT / "kernels" / "rope_attention.py"), str(REPO_ROOT / "bench" / "report.py")]
