"""``baton-fast``: every bad flag of every subcommand is one line naming it (exit 2) before any work, Ctrl-C
is one line (exit 130), outputs are written as a set (all or none), ``--help`` shows the defaults."""
import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io.wavfile
import torch

from baton_fast import cli
from baton_fast.outputs import atomic_paths, check_output_folder, check_outputs


def write_stereo(path, seconds):
    t = np.arange(int(16000 * seconds)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    scipy.io.wavfile.write(path, 16000, np.round(np.stack([tone, 0.5 * tone]).T * 32767).astype(np.int16))
    return path


@pytest.fixture
def inputs(tmp_path):
    """A 1 s stereo wav, an existing file and folders in ``inputs/``; the command's outputs go to ``out/``."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    (tmp_path / "out").mkdir()
    (folder / "clip.mp4").mkdir()  # a folder where the mp4 should go
    (folder / "side.mp4").touch()
    (folder / "side.wav").mkdir()  # a folder where the mp4's wav should go
    (folder / "a_file").touch()
    return {"wav": write_stereo(folder / "pan.wav", 1.0), "dir": folder}


def _generate(out):
    return ["generate", "--video-prompt", "a dog", "--audio-prompt", "barking", "--steps", "1", "--no-progress",
            "--out", str(out)]


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")

# (argv with {out}/{wav}/{dir} placeholders, the message after "baton-fast SUBCOMMAND: error: ")
CASES = [
    (["generate", "--device", "tpu"], "--device: expected cpu, cuda or cuda:N, got 'tpu'"),
    (["generate", "--device", "cpu:3"], "--device: expected cpu, cuda or cuda:N, got 'cpu:3'"),
    pytest.param(["generate", "--device", "cuda"], "--device: CUDA requested but no CUDA device", marks=NO_CUDA),
    (["generate", "--dtype", "float8"], "--dtype: invalid choice: 'float8'"),
    (["generate", "--preset", "huge"], "--preset: invalid choice: 'huge'"),
    (["generate", "--seconds", "-1"], "--seconds: expected a duration in (0, 4] for preset 'tiny', got -1.0"),
    (["generate", "--seconds", "9"], "--seconds: expected a duration in (0, 4] for preset 'tiny', got 9.0"),
    (["generate", "--seconds", "nan"], "--seconds: expected a finite number, got 'nan'"),
    (["generate", "--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["generate", "--steps", "x"], "--steps: invalid int value: 'x'"),
    (["generate", "--solver", "rk9"], "--solver: invalid choice: 'rk9'"),
    (["generate", "--shift", "0"], "--shift: expected a positive number, got 0.0"),
    (["generate", "--shift", "inf"], "--shift: expected a finite number, got 'inf'"),
    (["generate", "--video-guidance", "nan"], "--video-guidance: expected a finite number, got 'nan'"),
    (["generate", "--seed", "-1"], "--seed: expected an integer in [0, 2^63), got -1"),
    (["generate", "--threads", "0"], "--threads: expected a positive integer, got '0'"),
    (["generate", "--compile", "no-such-backend"], "--compile: expected one of"),
    (["generate", "--cuda-graph", "--device", "cpu"], "--cuda-graph: needs a CUDA device"),
    (["generate", "--checkpoint", "{dir}/missing"], "--checkpoint: "),
    (["generate", "--offset", "1"], "--offset: only used with --audio"),
    (["generate", "--audio", "{wav}", "--offset", "2"], "--offset: expected a start in [0, 1.00) s"),
    (["generate", "--audio", "{wav}", "--seconds", "3"], "--seconds: the recording has 1.00 s from --offset 0 s on"),
    (["generate", "--audio", "{wav}", "--layout-fps", "0"], "--layout-fps: fps must be"),
    (["generate", "--frobnicate"], "--frobnicate: unrecognized argument"),
    (["generate", "--out", "{dir}/clip.avi"], "--out: expected a path ending in .mp4"),
    (["generate", "--out", "{dir}/clip.mp4"], "--out: '{dir}/clip.mp4' exists and is not a file (it is a directory)"),
    (["generate", "--out", "{dir}/side.mp4"], "--out: '{dir}/side.wav' exists and is not a file"),
    (["generate", "--out", "{dir}/missing/clip.mp4"], "--out: folder '{dir}/missing' does not exist"),
    (["plan-layout", "{wav}", "--out", "{out}/vsl.json", "--fps", "0"], "--fps: fps must be"),
    (["plan-layout", "{wav}", "--out", "{out}/vsl.json", "--fps", "x"], "--fps: expected a finite number, got 'x'"),
    (["plan-layout", "{wav}", "--out", "{out}/vsl.json", "--max-sources", "0"], "--max-sources: expected a positive"),
    (["plan-layout", "{wav}", "--out", "{dir}"], "--out: '{dir}' exists and is not a file"),
    (["plan-layout", "{wav}", "--out", "{dir}/missing/vsl.json"], "--out: folder '{dir}/missing' does not exist"),
    (["plan-layout", "{wav}", "--out", "{out}/vsl.json", "--png", "{dir}/missing/boxes.png"], "--png: folder"),
    (["plan-layout", "{wav}", "--out", "{out}/vsl.json", "--png", "{out}/boxes.jpg"], "--png: expected a path ending"),
    (["plan-layout", "{dir}/missing.wav", "--out", "{out}/vsl.json"], "audio: audio path"),
    (["plan-layout", "{wav}"], "--out: required"),
    (["bench", "--out", "{out}", "--threads", "0"], "--threads: expected a positive integer, got '0'"),
    (["bench", "--out", "{out}", "--sections", "cost_model,nonsense"], "--sections: expected a subset of"),
    (["bench", "--out", "{out}", "--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["bench", "--out", "{out}", "--quick", "--full"], "--full: not allowed with --quick"),
    (["bench", "--out", "{dir}/a_file/bench"], "--out: '{dir}/a_file' exists and is not a folder"),
    (["bench", "--out", "{out}", "--report-only", "{dir}/missing.json"], "--report-only: [Errno 2]"),
    (["selftest", "--seed", "x"], "--seed: invalid int value: 'x'"),
    (["selftest", "--json", "{dir}/missing/records.json"], "--json: folder '{dir}/missing' does not exist"),
    (["selftest", "--bogus"], "--bogus: unrecognized argument"),
    (["gpu-check", "--out", "{out}/gpu", "--budget-s", "x"], "--budget-s: invalid float value: 'x'"),
    (["gpu-check", "--out", "{out}/gpu", "--parts", "x"], "--parts: expected a comma-separated subset of"),
    pytest.param(["gpu-check", "--out", "{out}/gpu"], "no CUDA device is available", marks=NO_CUDA),
    (["nonsense"], "command: invalid choice: 'nonsense'"),
]


@pytest.mark.parametrize("argv, message", CASES)
def test_bad_flags_are_one_line_naming_the_flag(argv, message, inputs, tmp_path, capsys):
    fill = {"out": tmp_path / "out", "wav": inputs["wav"], "dir": inputs["dir"]}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "generate":
        argv = _generate(tmp_path / "out" / "clip.mp4") + argv[1:]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    prog = "baton-fast" + (f" {argv[0]}" if argv[0] in cli.SUBCOMMANDS else "")
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"{prog}: error: {message.format(**fill)}"), \
        captured.err
    assert captured.out == "" and list((tmp_path / "out").iterdir()) == []  # refused before any work


def test_help_shows_every_default(capsys):
    for name in cli.SUBCOMMANDS:
        parser, subparsers = cli._parser([name])
        text = "".join(subparsers[name].format_help().split())  # argparse wraps long defaults anywhere
        for action in subparsers[name]._actions:
            hidden = action.help in (None, argparse.SUPPRESS)
            no_default = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
            if not no_default and not hidden:
                shown = f"(default:{action.default})".replace(" ", "") in text or "default" in action.help
                assert shown, f"{name} {action.option_strings}: default {action.default!r} not shown"
    parser, subparsers = cli._parser(["generate"])
    text = " ".join(subparsers["generate"].format_help().split())
    options = text[text.index("options:"):]
    for flag, default in [("--steps", 8), ("--shift", 5.0), ("--video-guidance", 4.0), ("--audio-guidance", 3.0),
                          ("--seed", 0), ("--solver", "euler"), ("--threads", 1), ("--preset", "tiny")]:
        entry = options[options.index(f" {flag} "):][len(flag) + 2:]
        assert f"(default: {default})" in entry[:entry.index(" --")], flag  # in this flag's own help
    assert "tiny 4 s" in text  # the recording cap per preset


def test_costs_help_prints_usage_and_runs_no_table(capsys):
    from baton_fast.model import costs

    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        costs.main(["--help"])
    assert exit_.value.code == 0 and time.perf_counter() - start < 5
    assert "--steps STEPS" in capsys.readouterr().out
    assert costs.main(["--presets", "tiny,huge"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_outputs_are_written_as_a_set(tmp_path):
    """A failure after some files are written, or while they are moved into place, leaves the destinations
    as they were: new ones absent, existing ones with their old content, no temporary file."""
    a, b = tmp_path / "a.json", tmp_path / "b.txt"
    b.write_text("old b")
    with pytest.raises(RuntimeError):
        with atomic_paths({"a": a, "b": b}) as tmp:
            tmp["a"].write_text("new a")
            raise RuntimeError("the second writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"] and b.read_text() == "old b"

    c = tmp_path / "c"
    with pytest.raises(OSError):
        with atomic_paths({"b": b, "c": c}) as tmp:
            tmp["b"].write_text("new b")
            tmp["c"].write_text("new c")
            c.mkdir()  # appears after the checks: the second move fails, the first is undone
            (c / "keep").touch()
    assert b.read_text() == "old b" and sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "c"]

    with atomic_paths({"a": a, "b": b}) as tmp:
        tmp["a"].write_text("new a")
        tmp["b"].write_text("new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c"]
    assert oct(a.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_output_checks(tmp_path):
    (tmp_path / "file").touch()
    assert check_outputs("--x", [tmp_path / "new.json"]) == [tmp_path / "new.json"]
    assert check_output_folder("--x", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    with pytest.raises(ValueError, match="--x: folder .* does not exist"):
        check_outputs("--x", [tmp_path / "missing" / "new.json"])
    with pytest.raises(ValueError, match="--x: .* exists and is not a folder"):
        check_output_folder("--x", tmp_path / "file" / "sub")


def test_plan_layout_png_failure_leaves_no_json(inputs, tmp_path, capsys, monkeypatch):
    """The VSL JSON and the PNG are one set: the drawing failing leaves no vsl.json."""
    from baton_fast.spatial import draw

    def broken(vsl, path, **kwargs):
        raise OSError("--png: disk full")

    monkeypatch.setattr(draw, "draw_vsl", broken)
    out = tmp_path / "out"
    assert cli.main(["plan-layout", str(inputs["wav"]), "--out", str(out / "vsl.json"), "--png",
                     str(out / "boxes.png")]) == 2
    assert capsys.readouterr().err == "baton-fast plan-layout: error: --png: disk full\n"
    assert list(out.iterdir()) == []


def test_generate_interrupted_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    """Ctrl-C after the mp4 is written, while the wav is: one line, exit 130, no file at --out."""
    from baton_fast.model import media

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(media, "write_wav", interrupted)
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(_generate(out / "clip.mp4") + ["--seconds", "0.5"]) == 130
    assert capsys.readouterr().err == "baton-fast generate: interrupted\n"
    assert list(out.iterdir()) == []


def test_generate_prints_the_threads_and_the_setup_progress(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    torch.set_num_threads(1)
    assert cli.main(_generate(out)[:-3] + ["--out", str(out), "--seconds", "0.5", "--threads", "2"]) == 0
    captured = capsys.readouterr()
    assert "2 thread(s)" in captured.out
    assert "4 frames at 8 fps (0.50 s), 0.50 s of audio" in captured.out
    for phase in ("arguments", "libraries", "models", "planner", "text encoder", "prepare"):
        assert phase in captured.err, phase
    assert "denoise" in captured.err and torch.get_num_threads() == 1  # restored for the caller
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["outputs"]["video_seconds"] == report["outputs"]["audio_seconds"] == 0.5


IMPORT_PROBE = """
import sys, traceback
from baton_fast import cli

class DynamoImport:  # says where torch._dynamo is first imported from
    def find_spec(self, name, path=None, target=None):
        if name == "torch._dynamo" and name not in sys.modules:
            print("torch._dynamo imported from", "".join(traceback.format_stack(limit=12)))

sys.meta_path.insert(0, DynamoImport())
status = cli.main(sys.argv[1:])
heavy = ("torch._dynamo", "sympy", "transformers", "scipy", "diffusers", "matplotlib", "baton_fast.spatial",
         "baton_fast.bench.runner")
print("status", status, "imported", sorted(name for name in heavy if name in sys.modules))
"""


@pytest.mark.slow  # a fresh interpreter's imports: seconds
def test_generate_imports_only_what_it_uses(tmp_path):
    """``generate`` without --audio on the CPU in a fresh interpreter: no ``torch._dynamo`` (nor its sympy: the memory
    check counts parameters by arithmetic, not on the meta device, and the eager CPU ops skip the ``torch.library``
    dispatch, which imports it), no transformers (the MiniLM encoder and the default planner LM run on plain torch),
    no scipy, SpA2V or plotting."""
    out = tmp_path / "clip.mp4"
    run = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *_generate(out), "--seconds", "0.5"], capture_output=True,
                         text=True, timeout=600)
    assert "status 0 imported []" in run.stdout.splitlines(), run.stdout + run.stderr


@pytest.mark.slow  # a fresh interpreter's imports: seconds
def test_ctrl_c_in_a_real_run_is_one_line_and_leaves_nothing(tmp_path):
    """SIGINT to ``python -m baton_fast.cli generate`` while it denoises: exit 130, one line, no traceback,
    nothing at --out."""
    out = tmp_path / "clip.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "baton_fast.cli", *_generate(out)[:-3], "--out", str(out),
                             "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err, deadline = b"", time.monotonic() + 240
    denoising = re.compile(rb"denoise: .*[0-9.]+it/s")  # steps done: the bar is fully set up
    try:
        while not denoising.search(err) and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                err += os.read(proc.stderr.fileno(), 65536)
        assert denoising.search(err), err.decode()
        proc.send_signal(signal.SIGINT)
        rest_out, rest_err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = (err + rest_err).decode()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.replace("\r", "\n").rstrip("\n").splitlines()[-1] == "baton-fast generate: interrupted"
    assert rest_out == b"" and list(tmp_path.iterdir()) == []
