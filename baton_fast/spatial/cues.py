"""Spatial auditory cues from a stereo (or mono) waveform: what SpA2V's planner reads.

Per analysis frame (a Hann-windowed STFT frame, ``scipy.signal.stft``):

- loudness per channel (dBFS of the frame's mean square; a full-scale sine reads -3.01 dB),
- interaural level difference (ILD, left over right, dB) per log-spaced frequency band,
- interaural time difference (ITD) by GCC-PHAT, positive when the left channel leads
  (the source is on the left), searched within the pair's own range ``mic_spacing / c``,
- spectral centroid and dominant pitch (the strongest spectral peak) of the channel mean;

and per time-frequency bin (what :mod:`.tfcues` turns into positions):

- the cross-spectrum ``left * conj(right)`` (its phase is the bin's time difference),
- a precedence weight in [0, 1]: how much of the bin's power is new, i.e. direct sound arriving
  (onsets weigh 1, a steady partial about 0.6, a reverberant decay 0),
- the coherent-to-diffuse ratio (CDR) of the two microphones' recursively averaged spectra (on a 16 ms
  STFT, so that early reflections do not count as direct sound), against the diffuse-field coherence
  ``sinc(2 f d / c)`` of the pair (Schwarz & Kellermann's DOA-independent estimator): the
  direct-to-reverberant power ratio of that bin.

A mono recording gives ``ild_db = itd_s = cross = cdr = None``: "no spatial cue".
Channel 0 is the left channel, channel 1 the right one (the WAV convention).
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.io.wavfile
import scipy.signal

MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
SPEED_OF_SOUND = 343.0  # m/s, air at 20 degrees C
DEFAULT_MIC_SPACING = 0.2  # m: a spaced (A-B) pair, and about where a head's ears are (0.18 m)
MIN_SECONDS = 0.25  # shorter recordings cannot show a trend or a stable position


@dataclass(frozen=True)
class SpatialCues:
    """Cues of one recording; ``F`` analysis frames, ``K`` STFT bins, ``B`` bands, ``C`` channels (1 or 2).

    sample_rate, duration (seconds of the input), max_itd_seconds (GCC-PHAT search range) and
    silence_db (the dBFS floor below which a frame or band counts as silent) are plain numbers.
    times          float64 [F]     analysis frame centres, seconds
    freqs          float64 [K]     STFT bin frequencies, Hz
    power          float32 [F,K,C] per-channel power spectrum, scaled so that summing over K gives the
                                   frame's mean square (Parseval)
    loudness_db    float64 [F, C]  per-channel frame loudness, dBFS
    band_edges_hz  float64 [B+1]   band edges (log spaced, merged so that every band holds a bin)
    ild_db         float64 [F, B]  left-over-right level difference per band; NaN where the band is silent;
                                   None for mono
    itd_s          float64 [F]     GCC-PHAT time difference, seconds, > 0 when left leads; NaN for silent
                                   frames; None for mono
    itd_strength   float64 [F]     normalised GCC-PHAT peak in [0, 1] (1: one clean delay); None for mono
    centroid_hz    float64 [F]     spectral centroid of the channel mean; NaN for silent frames
    pitch_hz       float64 [F]     dominant pitch (strongest peak, parabolically refined); NaN when silent
    cross          complex64 [F,K] cross-spectrum left * conj(right), power-scaled like ``power``; None for mono
    direct_weight  float32 [F, K]  precedence weight in [0, 1] of the channel-mean power
    cdr            float32 [F, K]  coherent-to-diffuse (direct-to-reverberant) power ratio, >= 0; NaN where the
                                   pair's diffuse coherence is too close to 1 to tell (low frequencies); None
                                   for mono
    """

    sample_rate: int
    duration: float
    times: np.ndarray
    freqs: np.ndarray
    power: np.ndarray
    loudness_db: np.ndarray
    band_edges_hz: np.ndarray
    ild_db: np.ndarray | None
    itd_s: np.ndarray | None
    itd_strength: np.ndarray | None
    centroid_hz: np.ndarray
    pitch_hz: np.ndarray
    max_itd_seconds: float
    silence_db: float
    cross: np.ndarray | None = None
    direct_weight: np.ndarray | None = None
    cdr: np.ndarray | None = None
    mic_spacing: float = DEFAULT_MIC_SPACING
    head_shadow_db: float | None = None

    @property
    def is_stereo(self) -> bool:
        return self.power.shape[2] == 2

    @functools.cached_property
    def mono_power(self) -> np.ndarray:
        """Channel-mean power spectrum, float64 ``[F, K]`` (computed once; read-only)."""
        mono = self.power.mean(axis=2, dtype=np.float64)
        mono.flags.writeable = False
        return mono

    @property
    def active(self) -> np.ndarray:
        """Frames whose channel-mean loudness is above ``silence_db``: bool ``[F]``."""
        return to_db(self.mono_power.sum(axis=1)) > self.silence_db


def to_db(power: np.ndarray, floor_db: float = -120.0) -> np.ndarray:
    """``10 log10(power)`` clipped below at ``floor_db`` (silence gives the floor, never -inf)."""
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (floor_db / 10.0)))


def level_difference_db(left: np.ndarray, right: np.ndarray, silence_db: float) -> np.ndarray:
    """``10 log10(left / right)`` of two powers, finite for a silent channel.

    Both powers get ``60 dB`` less than the silence floor added: negligible wherever either channel is
    audible, and a hard-panned source reads a large but finite difference.
    """
    regulariser = 10.0 ** ((silence_db - 60.0) / 10.0)
    return 10.0 * np.log10((left + regulariser) / (right + regulariser))


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file: ``(waveform float64 [channels, samples] in [-1, 1], sample_rate)``.

    WAV files go through ``scipy.io.wavfile``; anything else (flac, mp3, mp4, ...) through PyAV.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio path {path!r}: no such file")
    try:
        if path.lower().endswith(".wav"):
            return _read_wav(path)
        return _read_with_av(path)
    except (ValueError, EOFError, OSError, IndexError) as err:  # scipy and PyAV report bad data this way
        raise ValueError(f"audio path {path!r}: cannot decode audio ({err})") from err


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    with warnings.catch_warnings():  # a truncated or odd header: the duration check below reports it
        warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
        sample_rate, data = scipy.io.wavfile.read(path)
    data = data.reshape(len(data), -1).T  # [samples(, channels)] -> [channels, samples]
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        midpoint = (int(info.max) + int(info.min) + 1) / 2  # 128 for unsigned 8-bit, 0 otherwise
        data = (data.astype(np.float64) - midpoint) / (info.max - midpoint + 1)
    return data.astype(np.float64), int(sample_rate)


def _read_with_av(path: str) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            chunks = []
            for frame in container.decode(stream):
                samples = frame.to_ndarray()
                if frame.format.is_packed:  # interleaved [1, samples * channels]
                    samples = samples.reshape(-1, len(frame.layout.channels)).T
                if np.issubdtype(samples.dtype, np.integer):
                    samples = samples / 2.0 ** (8 * samples.dtype.itemsize - 1)
                chunks.append(samples.astype(np.float64))
            sample_rate = int(stream.rate)
    except av.FFmpegError as err:
        raise ValueError(str(err)) from err
    if not chunks:
        raise ValueError("no decodable audio frames")
    return np.concatenate(chunks, axis=1), sample_rate


def check_waveform(waveform, sample_rate, *, min_seconds: float = MIN_SECONDS) -> tuple[np.ndarray, int]:
    """Validate ``waveform`` (``[samples]`` or ``[channels, samples]``, 1 or 2 channels, at least
    ``min_seconds`` long) and ``sample_rate``.

    Returns ``(float64 [channels, samples], sample_rate)``; raises ValueError/TypeError naming the argument.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise TypeError(f"sample_rate must be an integer number of samples per second, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz, got {sample_rate}")
    if hasattr(waveform, "detach"):  # torch tensor
        waveform = waveform.detach().cpu().numpy()
    waveform = np.asarray(waveform)
    if not (np.issubdtype(waveform.dtype, np.floating) or np.issubdtype(waveform.dtype, np.integer)):
        raise TypeError(f"waveform must hold real numbers, got dtype {waveform.dtype}")
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2 or waveform.shape[0] not in (1, 2):
        raise ValueError(f"waveform must be [samples] or [channels, samples] with 1 or 2 channels, "
                         f"got shape {tuple(waveform.shape)} (a [samples, channels] array needs .T)")
    if waveform.shape[1] == 0:
        raise ValueError("waveform is empty (0 samples)")
    waveform = waveform.astype(np.float64)
    if not np.all(np.isfinite(waveform)):
        raise ValueError("waveform contains NaN or infinite samples")
    if waveform.shape[1] < min_seconds * sample_rate:
        raise ValueError(f"waveform lasts {waveform.shape[1] / sample_rate:.3f} s, too short to analyse: "
                         f"at least {min_seconds:g} s needed")
    return waveform, int(sample_rate)


def spatial_cues(waveform, sample_rate: int, *, mic_spacing: float = DEFAULT_MIC_SPACING,
                 head_shadow_db: float | None = None, frame_seconds: float = 0.064, hop_seconds: float = 0.032,
                 bands_per_octave: int = 3, min_frequency_hz: float = 50.0, max_itd_seconds: float | None = None,
                 silence_db: float = -80.0, coherence_seconds: float = 0.2) -> SpatialCues:
    """Compute :class:`SpatialCues` of ``waveform`` (see :func:`check_waveform` for accepted layouts).

    ``mic_spacing``: metres between the two microphones (sets the time-difference range ``d / c`` and the
    diffuse coherence); ``head_shadow_db``: the level difference of a source at 90 degrees when a head or
    baffle sits between them (None: the pair is free-field, so large level differences come from
    amplitude panning); ``max_itd_seconds``: the GCC-PHAT search range (default ``1.1 d / c``);
    ``coherence_seconds``: the time constant of the spectra averaged for the CDR.
    """
    waveform, sample_rate = check_waveform(waveform, sample_rate)
    if not 0 < hop_seconds <= frame_seconds:
        raise ValueError(f"hop_seconds must be in (0, frame_seconds={frame_seconds}], got {hop_seconds}")
    if isinstance(mic_spacing, bool) or not isinstance(mic_spacing, (int, float)) or not 0.005 <= mic_spacing <= 2.0:
        raise ValueError(f"mic_spacing must be a distance in [0.005, 2] metres, got {mic_spacing!r}")
    if head_shadow_db is not None and not (isinstance(head_shadow_db, (int, float)) and head_shadow_db > 0):
        raise ValueError(f"head_shadow_db must be None or a positive level difference in dB, got {head_shadow_db!r}")
    if max_itd_seconds is None:
        max_itd_seconds = 1.1 * mic_spacing / SPEED_OF_SOUND
    frame = max(16, round(frame_seconds * sample_rate))
    hop = max(1, round(hop_seconds * sample_rate))
    duration = waveform.shape[1] / sample_rate
    if waveform.shape[1] < frame:
        waveform = np.pad(waveform, ((0, 0), (0, frame - waveform.shape[1])))
    freqs, times, spectrum = scipy.signal.stft(waveform, sample_rate, window="hann", nperseg=frame,
                                               noverlap=frame - hop, boundary=None, padded=True, scaling="psd")
    spectrum = spectrum.transpose(2, 1, 0)  # [C, K, F] -> [F, K, C]
    scale = _one_sided_weights(len(freqs), frame)[None, :] * (sample_rate / frame)
    power = scale[..., None] * np.abs(spectrum) ** 2

    mono = power.mean(axis=2)
    frame_active = to_db(mono.sum(axis=1)) > silence_db
    edges = _band_edges(freqs, bands_per_octave, min_frequency_hz)
    stereo = power.shape[2] == 2
    cross = cdr = None
    if stereo:
        itd, strength = _gcc_phat_itd(spectrum, power, sample_rate, frame, max_itd_seconds, silence_db)
        itd[~frame_active] = np.nan
        ild = _band_ild(power, freqs, edges, silence_db)
        cross = scale * spectrum[..., 0] * np.conj(spectrum[..., 1])
        cdr = _coherent_to_diffuse(waveform, sample_rate, times, freqs, mic_spacing, coherence_seconds)
    else:
        itd = strength = ild = None
    usable = freqs >= min_frequency_hz
    return SpatialCues(
        sample_rate=sample_rate, duration=duration, times=times, freqs=freqs, power=power.astype(np.float32),
        loudness_db=to_db(power.sum(axis=1)), band_edges_hz=edges, ild_db=ild, itd_s=itd, itd_strength=strength,
        centroid_hz=np.where(frame_active, (mono * freqs).sum(1) / np.maximum(mono.sum(1), 1e-30), np.nan),
        pitch_hz=np.where(frame_active, _dominant_pitch(mono[:, usable], freqs[usable]), np.nan),
        max_itd_seconds=max_itd_seconds, silence_db=silence_db,
        cross=None if cross is None else cross.astype(np.complex64),
        direct_weight=_precedence_weight(mono, hop_seconds).astype(np.float32),
        cdr=None if cdr is None else cdr.astype(np.float32), mic_spacing=float(mic_spacing),
        head_shadow_db=head_shadow_db)


def _precedence_weight(power: np.ndarray, hop_seconds: float, decay_db_per_s: float = 120.0) -> np.ndarray:
    """Share of each bin's power ``[F, K]`` that is new: ``1 - g * P[f-1] / P[f]`` clipped to [0, 1], where
    ``g`` is the decay of a reverberant tail over one hop (120 dB/s: RT60 0.5 s). Onsets read 1, a steady
    partial ``1 - g`` (0.41 at a 32 ms hop), a decaying tail 0 (the precedence effect: the first wavefront
    tells the direction)."""
    g = 10.0 ** (-decay_db_per_s * hop_seconds / 10.0)
    previous = np.concatenate([np.zeros_like(power[:1]), power[:-1]])
    return np.clip(1.0 - g * previous / np.maximum(power, 1e-30), 0.0, 1.0)


def _coherent_to_diffuse(waveform: np.ndarray, sample_rate: int, times: np.ndarray, freqs: np.ndarray,
                         mic_spacing: float, coherence_seconds: float, frame_seconds: float = 0.016) -> np.ndarray:
    """CDR at the analysis frames ``times`` and bins ``freqs``: float64 ``[F, K]``.

    Measured on a short STFT (``frame_seconds``, half-overlapping): within one frame any echo shorter than
    the frame is part of a fixed per-bin transfer function and so as coherent as the direct sound; 16 ms
    keeps most early reflections out. Auto- and cross-spectra are averaged over time by a centred
    Gaussian of standard deviation ``coherence_seconds``, evaluated at the analysis frames only (a causal
    average lags behind a moving source and makes receding read stronger than approaching), then
    Schwarz & Kellermann's (2015) DOA-independent estimator against the diffuse coherence of two omni microphones
    ``sinc(2 f d / c)``; each analysis bin takes the nearest short frame and bin. NaN where that
    coherence exceeds 0.9: at low frequencies a diffuse field is as coherent as a direct wave.
    """
    frame = max(16, round(frame_seconds * sample_rate))
    short_freqs, short_times, spectrum = scipy.signal.stft(waveform, sample_rate, window="hann", nperseg=frame,
                                                           noverlap=frame // 2, boundary=None, padded=True)
    left, right = spectrum[0].T, spectrum[1].T  # [T, Ks]
    rows = np.clip(np.searchsorted(short_times, times), 0, len(short_times) - 1)
    smooth = _gaussian_rows(len(short_times), rows, coherence_seconds / ((frame // 2) / sample_rate))
    auto_left, auto_right = smooth @ (np.abs(left) ** 2), smooth @ (np.abs(right) ** 2)
    gamma = (smooth @ (left * np.conj(right))) / np.sqrt(np.maximum(auto_left * auto_right, 1e-60))
    diffuse = np.sinc(2 * short_freqs * mic_spacing / SPEED_OF_SOUND)[None, :]
    real, squared = gamma.real, np.minimum(np.abs(gamma) ** 2, 1 - 1e-6)
    root = np.sqrt(np.maximum(diffuse ** 2 * real ** 2 - diffuse ** 2 * squared + diffuse ** 2
                              - 2 * diffuse * real + squared, 0.0))
    ratio = np.where(np.abs(diffuse) <= 0.9, np.clip((diffuse * real - squared - root) / (squared - 1), 0.0, 1e4),
                     np.nan)
    columns = np.clip(np.rint(freqs / short_freqs[1]).astype(np.int64), 0, len(short_freqs) - 1)
    return ratio[:, columns]


def _gaussian_rows(length: int, rows: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The rows ``rows`` of the ``[length, length]`` matrix of a Gaussian smoothing along axis 0 with
    nearest-edge padding (``scipy.ndimage.gaussian_filter1d(..., mode="nearest")``, whose output is
    needed only at those rows): float64 ``[len(rows), length]``."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    matrix = np.zeros((len(rows), length))
    sources = np.clip(rows[:, None] + offsets[None, :], 0, length - 1)
    np.add.at(matrix, (np.repeat(np.arange(len(rows)), len(offsets)), sources.ravel()), np.tile(kernel, len(rows)))
    return matrix


def _one_sided_weights(bins: int, length: int) -> np.ndarray:
    """How often each bin of a one-sided spectrum of a ``length``-point FFT counts in the full spectrum."""
    weights = np.full(bins, 2.0)
    weights[0] = 1.0
    if length % 2 == 0 and bins == length // 2 + 1:
        weights[-1] = 1.0
    return weights


def _band_edges(freqs: np.ndarray, bands_per_octave: int, min_frequency_hz: float) -> np.ndarray:
    """Log-spaced edges from ``min_frequency_hz`` to Nyquist, merged so every band holds at least one bin."""
    if bands_per_octave < 1:
        raise ValueError(f"bands_per_octave must be >= 1, got {bands_per_octave}")
    nyquist = freqs[-1]
    octaves = math.log2(nyquist / min_frequency_hz)
    nominal = min_frequency_hz * 2.0 ** (np.arange(math.ceil(octaves * bands_per_octave) + 1) / bands_per_octave)
    first_bins = np.unique(np.searchsorted(freqs, np.minimum(nominal, nyquist)))
    return np.append(freqs[first_bins[first_bins < len(freqs) - 1]], nyquist + freqs[1] / 2)


def _band_ild(power: np.ndarray, freqs: np.ndarray, edges: np.ndarray, silence_db: float) -> np.ndarray:
    """Left-over-right level difference per band, dB ``[F, B]``; NaN where both channels are silent."""
    band_of_bin = np.searchsorted(edges, freqs, side="right") - 1
    in_bands = (band_of_bin >= 0) & (band_of_bin < len(edges) - 1)
    band_power = np.zeros((power.shape[0], len(edges) - 1, 2))
    np.add.at(band_power, (slice(None), band_of_bin[in_bands]), power[:, in_bands, :])
    ild = level_difference_db(band_power[..., 0], band_power[..., 1], silence_db)
    return np.where(band_power.max(axis=2) > 10.0 ** (silence_db / 10.0), ild, np.nan)


def _gcc_phat_itd(spectrum: np.ndarray, power: np.ndarray, sample_rate: int, frame: int, max_itd_seconds: float,
                  silence_db: float, upsample: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """GCC-PHAT per frame on the STFT ``spectrum [F, K, 2]``: (ITD seconds ``[F]``, peak strength ``[F]``).

    The cross-spectrum is whitened (PHAT) over the bins above the silence floor and its inverse transform
    evaluated at the lags within ``+-max_itd_seconds``, ``upsample`` times finer than one sample (the
    inverse FFT of the zero-padded spectrum at those lags only, as one matrix product); the peak gives
    the lag.
    """
    audible = power.min(axis=2) > 10.0 ** (silence_db / 10.0)
    n = frame * upsample
    max_lag = max(1, int(max_itd_seconds * sample_rate * upsample))
    lags = np.arange(-max_lag, max_lag + 1)
    # after zero-padding to n points the last STFT bin is no longer a Nyquist bin: it counts twice
    weights = _one_sided_weights(spectrum.shape[1], n)
    steering = (weights[:, None] * np.exp(2j * np.pi * np.arange(spectrum.shape[1])[:, None] * lags[None, :] / n))
    cross = spectrum[..., 0] * np.conj(spectrum[..., 1])
    whitened = np.where(audible, cross / np.maximum(np.abs(cross), 1e-30), 0.0).astype(np.complex64)
    correlation = (whitened @ steering.astype(np.complex64)).real  # [F, lags], lag unit: 1/upsample sample
    best = correlation.argmax(axis=1)
    peak_lag, peak_value = lags[best], correlation[np.arange(len(best)), best]
    used = (audible * weights).sum(axis=1)
    strength = np.where(used > 0, peak_value / np.maximum(used, 1e-30), 0.0)
    # correlation peaks at lag -d when the right channel is the left one delayed by d: left leads -> ITD > 0
    itd = -peak_lag / (sample_rate * upsample)
    return np.where(used > 0, itd, np.nan), np.clip(strength, 0.0, 1.0)


def _dominant_pitch(power: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Frequency of the strongest bin per frame, refined by a parabola through the log power: ``[F]``."""
    peak = np.clip(power.argmax(axis=1), 1, len(freqs) - 2)
    rows = np.arange(len(peak))
    left, centre, right = (to_db(power[rows, peak + offset]) for offset in (-1, 0, 1))
    curvature = left - 2 * centre + right
    shift = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    return freqs[peak] + np.clip(shift, -0.5, 0.5) * (freqs[1] - freqs[0])


def cue_report(cues: SpatialCues, *, seconds_per_row: float = 0.5) -> str:
    """Readable summary of ``cues`` (the cue report handed to a layout planner), one row per segment."""
    lines = [f"duration {cues.duration:.2f} s, sample rate {cues.sample_rate} Hz, "
             f"{'stereo' if cues.is_stereo else 'mono'}"]
    if not cues.is_stereo:
        lines.append("spatial cue: none (mono recording: no spatial cue, left/right position is unknown)")
    else:
        lines.append("spatial cue: stereo; ILD = left minus right level (dB, > 0: louder on the left); "
                     "ITD = GCC-PHAT delay (ms, > 0: left channel leads, source on the left)")
    header = "time_s  left_db  right_db  ild_db  itd_ms  centroid_hz  pitch_hz" if cues.is_stereo \
        else "time_s  level_db  centroid_hz  pitch_hz"
    lines.append(header)
    active = cues.active
    segment = np.floor(cues.times / seconds_per_row).astype(int)
    for index in np.unique(segment):
        rows = (segment == index) & active
        start = index * seconds_per_row
        if not rows.any():
            lines.append(f"{start:6.2f}  silent")
            continue
        loud = to_db((10.0 ** (cues.loudness_db[rows] / 10.0)).mean(axis=0))
        centroid = np.nanmean(cues.centroid_hz[rows])
        pitch = np.nanmedian(cues.pitch_hz[rows])
        if cues.is_stereo:
            ild = loud[0] - loud[1]
            itd_ms = 1e3 * np.nanmedian(cues.itd_s[rows])
            lines.append(f"{start:6.2f}  {loud[0]:7.1f}  {loud[1]:8.1f}  {ild:6.1f}  {itd_ms:6.3f}  "
                         f"{centroid:11.0f}  {pitch:8.1f}")
        else:
            lines.append(f"{start:6.2f}  {loud[0]:8.1f}  {centroid:11.0f}  {pitch:8.1f}")
    if cues.is_stereo and active.any():
        measured = np.isfinite(cues.ild_db[active])
        mean_ild = np.where(measured.any(axis=0), np.nansum(cues.ild_db[active], axis=0) /
                            np.maximum(measured.sum(axis=0), 1), np.nan)
        bands = [f"{lo:.0f}-{hi:.0f} Hz: {ild:+.1f}" for lo, hi, ild in
                 zip(cues.band_edges_hz[:-1], cues.band_edges_hz[1:], mean_ild) if np.isfinite(ild)]
        lines.append("mean ILD per band (dB): " + "; ".join(bands))
    return "\n".join(lines)
