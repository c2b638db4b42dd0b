"""``baton-fast selftest``: the numeric check through the CLI, its failure path, and ``--static`` output."""
import json
import math
import os
import subprocess
import sys

import torch

from baton_fast import selftest, static_check
from baton_fast.cli import main

PRELOADED_COMPILED_KERNELS = """
import sys
import baton_fast.kernels.rope_attention  # compiled jit functions: the selftest must not run them on CPU
from baton_fast.cli import main
sys.exit(main(["selftest", "--json", sys.argv[1]]))
"""


def outputs_of(case):
    if isinstance(case, selftest.AttentionCase):
        return ("out", "lse") if case.return_lse else ("out",)
    return ("x",) if case.norm is None else ("q", "k")


def test_cli_checks_every_kernel_against_float64(tmp_path):
    """A CLI process that already imported the kernels without the interpreter (no GPU here): the
    selftest runs them in an interpreter subprocess and reports every case, dtype and output."""
    path = tmp_path / "selftest.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "BATON_FAST_BACKEND")}
    proc = subprocess.run([sys.executable, "-c", PRELOADED_COMPILED_KERNELS, str(path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = json.loads(path.read_text())
    expected = {(case.name, str(dtype).replace("torch.", ""), output)
                for case in selftest.ATTENTION_CASES + selftest.ROPE_CASES for dtype in selftest.DTYPES[selftest._device()]
                for output in outputs_of(case)}
    assert {(r["case"], r["dtype"], r["output"]) for r in records} == expected
    assert len(records) == len(expected)
    assert {r["kernel"] for r in records} == {"rope_attention", "apply_rope", "qk_rmsnorm_rope"}
    for r in records:
        assert r["ok"] and math.isfinite(r["error"]) and 0 <= r["error"] <= r["budget"], r
        assert r["budget"] >= 2 * r["baseline"] > 0, r
    assert f"{len(expected)}/{len(expected)} passed" in proc.stdout
    assert {r["dtype"] for r in records} == {"float32", "float16", "bfloat16"}
    assert "Triton kernels run under the interpreter (TRITON_INTERPRET=1, CPU" in proc.stdout.splitlines()[0]


def test_a_wrong_kernel_fails_with_exit_code_1(monkeypatch, tmp_path, capsys):
    """The failure path: apply_rope replaced by the identity is far outside the budget."""
    monkeypatch.setattr(selftest, "ATTENTION_CASES", ())
    monkeypatch.setattr(selftest, "ROPE_CASES", (selftest.RopeCase("apply_rope wan", "wan", 1, 17, 2, 32),))
    monkeypatch.setattr("baton_fast.ops.apply_rope", lambda x, coords, table: x.clone())
    path = tmp_path / "fail.json"
    assert main(["selftest", "--json", str(path)]) == 1
    records = json.loads(path.read_text())
    assert [r["dtype"] for r in records] == ["float32", "float16", "bfloat16"]
    assert all(not r["ok"] and r["error"] > r["budget"] for r in records)
    assert "FAIL" in capsys.readouterr().out


def test_compiled_kernels_in_this_process_are_detected(monkeypatch):
    """Without a GPU, a kernel module holding compiled jit functions forces the subprocess path."""
    import types

    from triton.runtime.jit import JITFunction

    def kernel(x):
        pass

    module = types.ModuleType("baton_fast.kernels.compiled_for_test")
    module.kernel = JITFunction(kernel)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert selftest._kernels_runnable_in_process()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert not selftest._kernels_runnable_in_process()
    assert os.environ["TRITON_INTERPRET"] == "1"


def test_static_table_and_json(monkeypatch, tmp_path, capsys):
    """``--static`` on a two-job subset: one attention config on sm_90, the Wan pre-pass on sm_80."""
    jobs = static_check.shipped_jobs()
    subset = [next(j for j in jobs if j.kernel == "rope_attention" and j.arch == 90 and j.D == 64),
              next(j for j in jobs if j.kernel == "rmsnorm_rope" and j.arch == 80 and j.case == "wan")]
    monkeypatch.setattr(static_check, "shipped_jobs", lambda: subset)
    monkeypatch.setattr(static_check, "quant_jobs", lambda: [])  # compiled by tests/test_quant_attention.py
    path = tmp_path / "static.json"
    assert main(["selftest", "--static", "--json", str(path)]) == 0
    records = json.loads(path.read_text())
    assert [(r["kernel"], r["arch"], r["D"]) for r in records] == [("rope_attention", "sm_90", 64),
                                                                    ("rmsnorm_rope", "sm_80", 128)]
    assert [r["mma"] for r in records] == ["HGMMA", "none"]
    out = capsys.readouterr().out
    assert "HGMMA" in out and "rmsnorm_rope" in out and "2/2 passed" in out
    assert [r["addr64"] for r in records] == [True, True] and "64-bit address arithmetic: 2/2 kernels" in out
