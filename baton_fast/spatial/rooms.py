"""Physically simulated stereo recordings: a spaced microphone pair in a shoebox room.

Early reflections come from pyroomacoustics' image-source method (``ism_order`` reflections, wall
absorption from Sabine's formula for the asked RT60) up to ``mix_seconds`` after the direct sound; the
late tail, which a full image-source run would need thousands of images for (minutes per clip at
RT60 0.9 s), is the statistical one: noise with an exponential decay of 60 dB per RT60, starting at the
image sources' energy density there, with the two microphones' diffuse coherence ``sinc(2 f d / c)``.
A moving source is rendered block by block (Hann cross-fades, one room impulse response per block
position; no Doppler shift).

Coordinates: metres; the array looks along +x, its left microphone (channel 0) is at +y. Azimuth is
measured from the look direction, positive to the left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.signal

SPEED_OF_SOUND = 343.0


@dataclass(frozen=True)
class Room:
    """A shoebox room with a two-microphone pair. ``rt60=None`` is anechoic (direct sound only)."""
    rt60: float | None = 0.4
    dimensions: tuple[float, float, float] = (9.0, 8.0, 3.2)
    array_centre: tuple[float, float, float] = (2.5, 4.0, 1.5)
    mic_spacing: float = 0.2
    ism_order: int = 8
    mix_seconds: float = 0.06  # where the statistical tail takes over from the image sources

    def position(self, azimuth_deg: float, distance: float) -> np.ndarray:
        """The point at ``azimuth_deg`` (positive: left) and ``distance`` metres from the array centre."""
        angle = math.radians(azimuth_deg)
        x0, y0, z0 = self.array_centre
        return np.array([x0 + distance * math.cos(angle), y0 + distance * math.sin(angle), z0])

    def microphones(self) -> np.ndarray:
        """float64 ``[3, 2]``: left microphone (+y) first."""
        x0, y0, z0 = self.array_centre
        half = self.mic_spacing / 2
        return np.array([[x0, x0], [y0 + half, y0 - half], [z0, z0]])


def _import_pyroomacoustics():
    try:
        import pyroomacoustics
    except ImportError as err:
        raise ImportError("the room simulator needs pyroomacoustics: pip install pyroomacoustics "
                          "(or pip install -e '.[test]')") from err
    return pyroomacoustics


def impulse_responses(room: Room, positions: np.ndarray, sample_rate: int, tail_noise: np.ndarray | None = None
                      ) -> np.ndarray:
    """Room impulse responses from each of ``positions`` (float64 ``[P, 3]``) to both microphones:
    float64 ``[P, 2, taps]``. ``tail_noise`` (float64 ``[2, n]``, unit variance, diffuse-coherent) is the
    late tail's noise, shared by every position of one source (the tail hardly depends on where it is)."""
    pra = _import_pyroomacoustics()
    positions = np.atleast_2d(positions)
    if room.rt60 is None:
        materials, order = pra.Material(1.0), 0
    else:
        absorption, _ = pra.inverse_sabine(room.rt60, list(room.dimensions))
        materials, order = pra.Material(absorption), room.ism_order
    simulated = pra.ShoeBox(list(room.dimensions), fs=sample_rate, materials=materials, max_order=order,
                            air_absorption=False)
    simulated.add_microphone_array(room.microphones())
    for position in positions:
        simulated.add_source(position)
    simulated.compute_rir()
    early = [[np.asarray(simulated.rir[m][s]) for m in range(2)] for s in range(len(positions))]
    taps = max(len(h) for pair in early for h in pair)
    if room.rt60 is not None:
        taps = max(taps, round((room.rt60 * 1.2 + 0.05) * sample_rate))
    responses = np.zeros((len(positions), 2, taps))
    for s, pair in enumerate(early):
        for m, h in enumerate(pair):
            responses[s, m, :len(h)] = h
    if room.rt60 is not None:
        if tail_noise is None:
            tail_noise = diffuse_noise(np.random.default_rng(0), taps, sample_rate, room.mic_spacing)
        responses += _late_tail(room, responses, sample_rate, tail_noise)
    return responses


def diffuse_noise(rng: np.random.Generator, samples: int, sample_rate: int, mic_spacing: float) -> np.ndarray:
    """Two unit-variance noises with the diffuse-field coherence ``sinc(2 f d / c)``: float64 ``[2, samples]``."""
    spectra = np.fft.rfft(rng.standard_normal((2, samples)), axis=1)
    coherence = np.sinc(2 * np.fft.rfftfreq(samples, 1 / sample_rate) * mic_spacing / SPEED_OF_SOUND)
    right = coherence * spectra[0] + np.sqrt(1 - coherence ** 2) * spectra[1]
    return np.fft.irfft(np.stack([spectra[0], right]), n=samples, axis=1)


def _late_tail(room: Room, responses: np.ndarray, sample_rate: int, tail_noise: np.ndarray) -> np.ndarray:
    """The statistical late reverberation after ``mix_seconds`` past each response's direct sound: it
    continues the image sources' energy density over the 20 ms before that point and decays by 60 dB
    per RT60."""
    decay = 6 * math.log(10) / room.rt60  # energy decay rate, 1/s (60 dB per RT60)
    taps = responses.shape[2]
    window = round(0.02 * sample_rate)
    tail = np.zeros_like(responses)
    for s in range(len(responses)):
        direct = int(np.abs(responses[s]).max(axis=0).argmax())
        start = direct + round(room.mix_seconds * sample_rate)
        density = float(np.mean(responses[s, :, start - window:start] ** 2))  # energy per sample at the join
        tau = (np.arange(start, taps) - start) / sample_rate
        tail[s, :, start:] = np.sqrt(density * np.exp(-decay * tau)) * tail_noise[:, :taps - start]
        responses[s, :, start:] = 0.0  # the image sources beyond the join are incomplete: replaced
    return tail


def render(room: Room, signal: np.ndarray, path: np.ndarray, sample_rate: int, rng: np.random.Generator,
           block_seconds: float = 0.1) -> np.ndarray:
    """``signal`` (float64 ``[samples]``) at the microphones while its source follows ``path``
    (float64 ``[P, 3]``: positions evenly spread over the clip, ``P = 1`` for a static source):
    float64 ``[2, samples]``."""
    path = np.atleast_2d(path)
    samples = len(signal)
    hop = round(block_seconds * sample_rate)
    static = len(path) == 1 or np.allclose(path, path[0])
    tail_taps = round(((room.rt60 or 0) * 1.2 + 0.05) * sample_rate)
    tail_noise = diffuse_noise(rng, max(tail_taps, 1), sample_rate, room.mic_spacing)
    if static:
        h = impulse_responses(room, path[:1], sample_rate, tail_noise)[0]
        return scipy.signal.fftconvolve(signal[None], h, axes=1)[:, :samples]
    centres = np.arange(0, samples + hop, hop)
    along = np.linspace(0.0, 1.0, len(path))
    at = np.clip(centres / max(samples - 1, 1), 0.0, 1.0)
    positions = np.stack([np.interp(at, along, path[:, axis]) for axis in range(3)], axis=1)
    responses = impulse_responses(room, positions, sample_rate, tail_noise)
    out = np.zeros((2, samples + responses.shape[2]))
    window = np.hanning(2 * hop + 1)[1:]  # periodic Hann: windows at every hop sum to 1
    for centre, h in zip(centres, responses):
        first = max(0, centre - hop)
        last = min(samples, centre + hop)
        if last <= first:
            continue
        block = signal[first:last] * window[first - (centre - hop):last - (centre - hop)]
        out[:, first:first + (last - first) + h.shape[1] - 1] += scipy.signal.fftconvolve(block[None], h, axes=1)
    return out[:, :samples]


def add_noise(stereo: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Independent white noise per microphone at ``snr_db`` below the recording's mean power."""
    power = float(np.mean(stereo ** 2))
    return stereo + math.sqrt(power / 10 ** (snr_db / 10)) * rng.standard_normal(stereo.shape)
