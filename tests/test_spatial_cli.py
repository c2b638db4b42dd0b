"""``baton-fast plan-layout``: a synthetic stereo recording to a VSL JSON and a boxes PNG."""
import matplotlib.image
import numpy as np
import pytest
import scipy.io.wavfile

from baton_fast import cli
from baton_fast.spatial import VSL, draw_vsl

FS = 16000
T = np.arange(2 * FS) / FS


@pytest.fixture
def plan_layout(monkeypatch):
    """``baton-fast`` restricted to this subcommand, so other subcommands' imports do not matter here."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"plan-layout": cli.SUBCOMMANDS["plan-layout"]})
    return lambda *argv: cli.main(["plan-layout", *map(str, argv)])


def write_wav(path, waveform):
    scipy.io.wavfile.write(path, FS, np.round(np.atleast_2d(waveform).T * 32767).astype(np.int16))
    return path


def test_registered():
    assert cli.SUBCOMMANDS["plan-layout"][0] == "baton_fast.spatial.cli"


def test_plan_layout_writes_json_and_png(tmp_path, plan_layout, capsys):
    angle = np.linspace(0.1, 0.9, len(T)) * np.pi / 2  # left to right
    dog = 0.3 * np.sin(2 * np.pi * 350 * T) * np.stack([np.cos(angle), np.sin(angle)])
    car = 0.15 * np.sin(2 * np.pi * 1900 * T) * np.stack([np.full_like(T, 0.2), np.ones_like(T)])  # right
    audio = write_wav(tmp_path / "scene.wav", dog + car)
    out, png = tmp_path / "vsl.json", tmp_path / "boxes.png"
    assert plan_layout(audio, "--out", out, "--png", png, "--names", "dog, car", "--fps", "2") == 0
    printed = capsys.readouterr().out
    assert "stereo" in printed and "2 source(s)" in printed and "left-crossing" in printed
    vsl = VSL.load(out)
    assert vsl.object_names() == {0: "dog", 1: "car"}
    np.testing.assert_allclose(vsl.times, np.arange(5) / 2)
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something is drawn


def test_plan_layout_mono_and_errors(tmp_path, plan_layout, capsys):
    audio = write_wav(tmp_path / "mono.wav", 0.3 * np.sin(2 * np.pi * 440 * T))
    assert plan_layout(audio, "--out", tmp_path / "v.json") == 0
    assert "mono (no spatial cue)" in capsys.readouterr().out
    (tmp_path / "bad.wav").write_bytes(b"RIFF but not really")
    assert plan_layout(tmp_path / "bad.wav", "--out", tmp_path / "w.json") == 2
    assert "cannot decode audio" in capsys.readouterr().err
    assert plan_layout(tmp_path / "missing.wav", "--out", tmp_path / "w.json") == 2
    assert "no such file" in capsys.readouterr().err
    assert plan_layout(audio, "--out", tmp_path / "w.json", "--fps", "0") == 2
    assert "fps must be" in capsys.readouterr().err
    assert not (tmp_path / "w.json").exists()


def test_draw_vsl_with_many_keyframes_and_an_empty_one(tmp_path):
    frames = [{"time": i / 6, "caption": "", "objects": [] if i == 3 else
               [{"id": 5, "name": "ball", "box": [i / 40, 0.4, i / 40 + 0.2, 0.6]}]} for i in range(31)]
    vsl = VSL.from_dict({"caption": "a ball rolls to the right " * 8, "frames": frames})
    draw_vsl(vsl, tmp_path / "many.png")
    assert matplotlib.image.imread(tmp_path / "many.png").shape[0] > 200
    with pytest.raises(ValueError, match="max_panels must be >= 1"):
        draw_vsl(vsl, tmp_path / "x.png", max_panels=0)
