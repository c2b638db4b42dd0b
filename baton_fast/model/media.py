"""Media files: an mp4 (H.264 video + mono or stereo AAC audio, PyAV) and a 16-bit PCM mono wav; atomic writes.

Writers write to a temporary file next to the destination and rename it into place only when the
whole file is written (:func:`baton_fast.outputs.atomic_path`), so a failure never leaves a half-written
file at the destination.
"""
from __future__ import annotations

import wave

import numpy as np
import torch

from ..outputs import atomic_path

__all__ = ["atomic_path", "write_mp4", "write_wav"]


def _check_media(frames, audio, fps, sample_rate, max_channels: int = 1):
    if frames is not None and (frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3):
        raise TypeError(f"frames: expected uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    channels_ok = audio.dim() == 1 or (max_channels > 1 and audio.dim() == 2 and 1 <= audio.shape[0] <= max_channels)
    if not channels_ok or not audio.dtype.is_floating_point:
        expected = "[samples]" + (f" or [channels <= {max_channels}, samples]" if max_channels > 1 else "")
        raise TypeError(f"audio: expected a float waveform {expected}, got {audio.dtype} {tuple(audio.shape)}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise ValueError(f"sample_rate: expected a positive integer, got {sample_rate!r}")


def write_mp4(path, frames: torch.Tensor, fps: float, audio: torch.Tensor, sample_rate: int) -> None:
    """Write ``frames`` uint8 ``[T, H, W, 3]`` (H.264, yuv420p; even ``H``, ``W``) at ``fps`` with ``audio``
    float in ``[-1, 1]``, mono ``[samples]`` or ``[channels, samples]`` with 1 or 2 channels (AAC), to
    ``path``, atomically."""
    import av
    from fractions import Fraction

    _check_media(frames, audio, fps, sample_rate, max_channels=2)
    audio = audio if audio.dim() == 2 else audio[None]
    layout = "stereo" if audio.shape[0] == 2 else "mono"
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frames: H.264 yuv420p needs an even height and width, got {tuple(frames.shape[1:3])}")
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout=layout)
        for frame in frames.numpy():
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        samples = av.AudioFrame.from_ndarray(audio.float().contiguous().numpy(), format="fltp", layout=layout)
        samples.sample_rate = sample_rate
        container.mux(sound.encode(samples))
        container.mux(sound.encode())


def write_wav(path, audio: torch.Tensor, sample_rate: int) -> None:
    """Write the mono ``audio`` float ``[samples]`` in ``[-1, 1]`` as 16-bit PCM to ``path``, atomically."""
    _check_media(None, audio, None, sample_rate)
    pcm = (audio.float().clamp(-1, 1).numpy() * 32767).round().astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.ascontiguousarray(pcm).tobytes())
