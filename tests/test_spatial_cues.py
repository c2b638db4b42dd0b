"""Spatial cues on synthetic signals with known answers, and the errors bad audio gets."""
import warnings

import numpy as np
import pytest
import scipy.io.wavfile
import torch

from baton_fast.spatial import cue_report, load_audio, spatial_cues
from baton_fast.spatial.cues import SPEED_OF_SOUND
from baton_fast.spatial.rooms import diffuse_noise
from baton_fast.spatial.tfcues import grid, position_map

FS = 16000
RNG = np.random.default_rng(1234)


def noise(seconds=1.0, scale=0.1):
    return scale * RNG.standard_normal(int(seconds * FS))


def sine(freq, seconds=1.0, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * FS)) / FS)


def delayed(signal, samples):
    """``signal`` delayed by ``samples`` (zeros shifted in)."""
    return np.concatenate([np.zeros(samples), signal[:len(signal) - samples]])


def test_loudness_per_channel_is_dbfs_of_the_mean_square():
    s = sine(1000.0, amplitude=0.5)
    cues = spatial_cues(np.stack([s, 0.1 * s]), FS)
    interior = cues.loudness_db[1:-1]  # the last frame is zero-padded
    np.testing.assert_allclose(interior[:, 0], 20 * np.log10(0.5 / np.sqrt(2)), atol=0.02)
    np.testing.assert_allclose(interior[:, 1], 20 * np.log10(0.05 / np.sqrt(2)), atol=0.02)


def test_ild_per_band_of_scaled_noise():
    n = noise()
    cues = spatial_cues(np.stack([n, 0.5 * n]), FS)
    assert cues.ild_db.shape == (len(cues.times), len(cues.band_edges_hz) - 1)
    assert np.all(np.diff(cues.band_edges_hz) > 0)
    np.testing.assert_allclose(cues.ild_db, 20 * np.log10(2.0), atol=0.05)


def test_ild_is_nan_in_silent_bands():
    s = sine(1000.0)
    cues = spatial_cues(np.stack([s, s]) + 0.0, FS, silence_db=-60.0)
    band = np.searchsorted(cues.band_edges_hz, 1000.0) - 1
    assert np.all(np.abs(cues.ild_db[1:-1, band]) < 0.01)
    assert np.isnan(cues.ild_db[1:-1, -1]).all()  # nothing near Nyquist


@pytest.mark.parametrize("delay", [-9, -3, 0, 4, 12])
def test_gcc_phat_itd_sign_and_size(delay):
    n = noise(seconds=9.0)  # > 256 frames: more than one GCC-PHAT chunk
    left, right = (n, delayed(n, delay)) if delay >= 0 else (delayed(n, -delay), n)
    cues = spatial_cues(np.stack([left, right]), FS, mic_spacing=0.3)  # range 1.1 * 0.3 / c = 0.96 ms
    # right channel delayed by `delay` samples: the left channel leads, ITD > 0
    np.testing.assert_allclose(cues.itd_s[1:-1], delay / FS, atol=0.6 / (8 * FS))
    assert np.all(cues.itd_strength[1:-1] > 0.9)


def test_centroid_and_pitch_of_a_sine():
    freq = 1003.7  # between two STFT bins
    cues = spatial_cues(np.stack([sine(freq), sine(freq)]), FS)
    np.testing.assert_allclose(cues.pitch_hz[1:-1], freq, atol=2.0)
    np.testing.assert_allclose(cues.centroid_hz[1:-1], freq, rtol=0.01)


def test_silent_frames_have_no_centroid_pitch_or_itd():
    s = np.concatenate([np.zeros(FS // 2), sine(440.0, 0.5)])
    cues = spatial_cues(np.stack([s, s]), FS)
    silent = cues.times < 0.4
    assert not cues.active[silent].any() and cues.active[cues.times > 0.6].all()
    assert np.isnan(cues.centroid_hz[silent]).all()
    assert np.isnan(cues.pitch_hz[silent]).all()
    assert np.isnan(cues.itd_s[silent]).all()


def test_mono_reports_no_spatial_cue():
    cues = spatial_cues(sine(440.0), FS)
    assert not cues.is_stereo
    assert cues.ild_db is None and cues.itd_s is None and cues.itd_strength is None
    assert cues.loudness_db.shape == (len(cues.times), 1)
    assert "no spatial cue" in cue_report(cues)


def test_report_of_a_stereo_recording_shows_the_louder_side():
    s = sine(440.0, 2.0)
    report = cue_report(spatial_cues(np.stack([s, 0.25 * s]), FS))
    assert "stereo" in report and "no spatial cue" not in report
    rows = [line.split() for line in report.splitlines() if line[:6].strip().replace(".", "").isdigit()]
    assert len(rows) == 4  # 2 s at 0.5 s per row
    assert all(abs(float(row[3]) - 12.04) < 0.1 for row in rows)  # ild column


def test_accepts_torch_and_refuses_clips_too_short_to_analyse():
    s = torch.from_numpy(np.stack([sine(440.0, 0.3), sine(440.0, 0.3)]))
    cues = spatial_cues(s, FS)
    assert len(cues.times) == 9 and cues.duration == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"waveform lasts 0\.030 s, too short to analyse: at least 0\.25 s"):
        spatial_cues(s[:, :480], FS)


def test_truncated_wav_is_refused_without_a_library_warning(tmp_path):
    path = tmp_path / "cut.wav"
    scipy.io.wavfile.write(path, FS, np.round(np.stack([sine(440.0), sine(440.0)]).T * 32767).astype(np.int16))
    path.write_bytes(path.read_bytes()[:44 + 4 * 480])  # header (which still claims 1 s) + 0.03 s
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any library warning fails the test
        waveform, rate = load_audio(path)
        with pytest.raises(ValueError, match="too short to analyse"):
            spatial_cues(waveform, rate)


@pytest.mark.parametrize("spacing", [0.1, 0.2, 0.4])
def test_time_difference_range_and_position_follow_the_mic_spacing(spacing):
    """A broadband source at 90 degrees (delay d / c) reads hard left, one at 30 degrees x = 0.25."""
    source = noise(1.0 + 0.01)
    for azimuth, expected_x in ((90.0, 0.0), (30.0, 0.25), (-30.0, 0.75)):
        delay = spacing * np.sin(np.radians(azimuth)) / SPEED_OF_SOUND * FS
        spectrum = np.fft.rfft(source)
        right = np.fft.irfft(spectrum * np.exp(-2j * np.pi * np.fft.rfftfreq(len(source)) * delay), len(source))
        cues = spatial_cues(np.stack([source, right]), FS, mic_spacing=spacing)
        assert cues.max_itd_seconds == pytest.approx(1.1 * spacing / SPEED_OF_SOUND)
        fused, _, (a_time, a_level) = position_map(cues)
        assert a_time > 0.9  # the level difference is 0: the time cue carries the position
        x = grid()[fused[2:-2].mean(axis=0).argmax()]
        assert abs(x - expected_x) <= 0.02, (azimuth, x)


def test_coherent_to_diffuse_ratio_separates_direct_sound_from_a_diffuse_field():
    rng = np.random.default_rng(5)
    direct = np.stack([noise(1.0), noise(1.0)])
    direct[1] = direct[0]  # fully coherent: a source straight ahead
    diffuse = 0.1 * diffuse_noise(rng, FS, FS, 0.2)
    high = lambda cues: np.nanmedian(cues.cdr[5:-5, cues.freqs > 1000])  # noqa: E731
    assert high(spatial_cues(direct, FS)) > 100
    assert high(spatial_cues(diffuse, FS)) < 0.5
    assert 0.5 < high(spatial_cues(direct + diffuse, FS)) < 2.5  # equal powers: CDR 1


@pytest.mark.parametrize("argument, value, match", [("mic_spacing", 0.0, "mic_spacing must be a distance"),
                                                    ("mic_spacing", "0.2", "mic_spacing must be a distance"),
                                                    ("head_shadow_db", -3.0, "head_shadow_db must be None")])
def test_geometry_arguments_are_checked(argument, value, match):
    with pytest.raises(ValueError, match=match):
        spatial_cues(np.stack([noise(), noise()]), FS, **{argument: value})


@pytest.mark.parametrize("waveform, sample_rate, error, match", [
    (np.zeros((2, 0)), FS, ValueError, "waveform is empty"),
    (np.array([0.1, np.nan, 0.2] * 100), FS, ValueError, "waveform contains NaN"),
    (np.array([0.1, np.inf, 0.2] * 100), FS, ValueError, "waveform contains NaN or infinite"),
    (np.zeros((3, 100)), FS, ValueError, "waveform must be"),
    (np.zeros((100, 2)), FS, ValueError, r"waveform must be .*needs \.T"),
    (np.zeros((1, 2, 100)), FS, ValueError, "waveform must be"),
    (np.array(["a", "b"]), FS, TypeError, "waveform must hold real numbers"),
    (np.zeros(100), 0, ValueError, "sample_rate must be in"),
    (np.zeros(100), -16000, ValueError, "sample_rate must be in"),
    (np.zeros(100), 1000, ValueError, "sample_rate must be in"),
    (np.zeros(100), 10 ** 7, ValueError, "sample_rate must be in"),
    (np.zeros(100), 16000.5, TypeError, "sample_rate must be an integer"),
    (np.zeros(100), "16000", TypeError, "sample_rate must be an integer"),
    (np.zeros(100), True, TypeError, "sample_rate must be an integer"),
])
def test_bad_audio_is_rejected_naming_the_argument(waveform, sample_rate, error, match):
    with pytest.raises(error, match=match):
        spatial_cues(waveform, sample_rate)


def test_load_wav_int16_float32_uint8(tmp_path):
    stereo = np.stack([sine(440.0, 0.1, 0.5), sine(660.0, 0.1, -0.25)])
    path = tmp_path / "int16.wav"
    scipy.io.wavfile.write(path, FS, np.round(stereo.T * 32768).astype(np.int16))
    waveform, rate = load_audio(path)
    assert rate == FS and waveform.shape == stereo.shape and waveform.dtype == np.float64
    np.testing.assert_allclose(waveform, stereo, atol=0.6 / 32768)
    scipy.io.wavfile.write(tmp_path / "f32.wav", 22050, stereo.T.astype(np.float32))
    np.testing.assert_allclose(load_audio(tmp_path / "f32.wav")[0], stereo, atol=1e-7)
    scipy.io.wavfile.write(tmp_path / "u8.wav", FS, (128 + np.round(stereo[0] * 128)).astype(np.uint8))
    mono, _ = load_audio(tmp_path / "u8.wav")
    assert mono.shape == (1, stereo.shape[1])
    np.testing.assert_allclose(mono[0], stereo[0], atol=0.6 / 128)


def test_load_through_pyav_matches_wav(tmp_path):
    stereo = np.stack([sine(440.0, 0.3), sine(880.0, 0.3, 0.2)])
    scipy.io.wavfile.write(tmp_path / "a.wav", FS, np.round(stereo.T * 32767).astype(np.int16))
    (tmp_path / "a.audio").write_bytes((tmp_path / "a.wav").read_bytes())  # not .wav: decoded by PyAV
    via_av, rate = load_audio(tmp_path / "a.audio")
    via_scipy, _ = load_audio(tmp_path / "a.wav")
    assert rate == FS
    np.testing.assert_array_equal(via_av, via_scipy)


@pytest.mark.parametrize("name", ["broken.wav", "broken.mp3"])
def test_unreadable_file_gets_a_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not audio at all")
    with pytest.raises(ValueError, match=f"audio path .*{name}.*cannot decode"):
        load_audio(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
