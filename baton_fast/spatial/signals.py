"""Synthetic source signals for the room benchmark: tones, barks, band-limited noise and speech-like voice.

Every generator takes a numpy ``Generator``, a duration and a sample rate and returns float64 ``[samples]``
at RMS 0.1 (over the whole clip, pauses included). Nothing is downloaded: the "speech" is a glottal pulse
train with a moving pitch contour through per-syllable formant filters.
"""
from __future__ import annotations

import numpy as np
import scipy.signal

RMS = 0.1


def _normalised(signal: np.ndarray) -> np.ndarray:
    return RMS * signal / max(float(np.sqrt(np.mean(signal ** 2))), 1e-12)


def harmonic_tone(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """A hum: 5 harmonics (amplitude 1/k) of f0 in [150, 400] Hz, amplitude-modulated at 1-3 Hz."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    f0, rate, phase = rng.uniform(150, 400), rng.uniform(1, 3), rng.uniform(0, np.pi)
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    return _normalised(tone * (0.3 + 0.7 * np.sin(np.pi * rate * t + phase) ** 2))


def barks(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """Bursts of 0.12-0.2 s every 0.3-0.6 s: 4 harmonics of a falling pitch starting in [400, 700] Hz."""
    out = np.zeros(round(seconds * sample_rate))
    start = rng.uniform(0.0, 0.2)
    while start < seconds - 0.1:
        length = rng.uniform(0.12, 0.2)
        t = np.arange(round(length * sample_rate)) / sample_rate
        f0 = rng.uniform(400, 700) * (1 - 0.25 * t / length)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        burst = sum(np.sin(k * phase) / k for k in range(1, 5)) * np.sin(np.pi * t / length) ** 0.5
        first = round(start * sample_rate)
        out[first:first + len(burst)] += burst[:len(out) - first]
        start += length + rng.uniform(0.18, 0.4)
    return _normalised(out)


def band_noise(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """White noise band-passed (4th-order Butterworth) to [200-600, 2000-5000] Hz, slowly modulated."""
    n = round(seconds * sample_rate)
    low, high = rng.uniform(200, 600), min(rng.uniform(2000, 5000), 0.45 * sample_rate)
    sos = scipy.signal.butter(4, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    t = np.arange(n) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 2 * np.pi)) ** 2
    return _normalised(scipy.signal.sosfilt(sos, rng.standard_normal(n)) * envelope)


_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240),
           (660, 1720, 2410), (490, 1350, 1690))  # formants (Hz) of a, i, e, o, u, ae, er (Peterson & Barney)


def speech_like(rng: np.random.Generator, seconds: float, sample_rate: int) -> np.ndarray:
    """Syllables of 0.12-0.3 s with pauses: a glottal pulse train whose pitch glides (base 100-220 Hz,
    +-25 % per syllable, 1 % jitter), spectral tilt -12 dB/octave, through the 3 formants of a vowel
    chosen per syllable; a short noise burst (a consonant) starts some syllables."""
    n = round(seconds * sample_rate)
    out = np.zeros(n)
    base = rng.uniform(100, 220)
    tilt = scipy.signal.butter(2, 300, fs=sample_rate, output="sos")
    start = rng.uniform(0.0, 0.15)
    while start < seconds - 0.1:
        length = rng.uniform(0.12, 0.3)
        samples = round(length * sample_rate)
        f0 = base * np.linspace(rng.uniform(1.0, 1.25), rng.uniform(0.75, 1.0), samples)
        f0 *= 1 + 0.01 * rng.standard_normal(samples)
        pulses = np.diff(np.floor(np.cumsum(f0) / sample_rate), prepend=0.0)  # 1 where a period starts
        voice = scipy.signal.sosfilt(tilt, pulses)
        for formant, bandwidth in zip(_VOWELS[rng.integers(len(_VOWELS))], (80, 100, 150)):
            radius = np.exp(-np.pi * bandwidth / sample_rate)
            angle = 2 * np.pi * formant * rng.uniform(0.95, 1.05) / sample_rate
            voice = scipy.signal.lfilter([1 - radius], [1, -2 * radius * np.cos(angle), radius ** 2], voice)
        voice /= max(np.abs(voice).max(), 1e-12)
        if rng.random() < 0.4:  # consonant: 30 ms of high-passed noise before the vowel
            burst = scipy.signal.sosfilt(scipy.signal.butter(2, 2500, "highpass", fs=sample_rate, output="sos"),
                                         rng.standard_normal(round(0.03 * sample_rate))) * 0.3
            voice = np.concatenate([burst, voice])
        ramp = np.minimum(1.0, np.minimum(np.arange(len(voice)), np.arange(len(voice))[::-1]) / (0.01 * sample_rate))
        first = round(start * sample_rate)
        out[first:first + len(voice)] += (voice * ramp)[:max(0, n - first)]
        start += len(voice) / sample_rate + rng.uniform(0.03, 0.12) + (0.3 if rng.random() < 0.15 else 0.0)
    return _normalised(out)


GENERATORS = {"tone": harmonic_tone, "barks": barks, "noise": band_noise, "speech": speech_like}
