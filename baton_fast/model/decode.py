"""Latents -> RGB frames and a waveform.

No pretrained VAE is available offline, so the default is a **linear preview decoder** (fixed
weights, documented here and in ``docs/model.md``); any diffusers VAE object can be passed instead.

Video preview, latents ``[B, C, F, h, w]``:
  colour ``k`` of a latent pixel is the mean of channels ``c = k (mod 3)`` scaled to unit variance,
  mapped to ``0.5 + 0.25 * value`` and clamped to ``[0, 1]``; latent frame 0 gives pixel frame 0 and
  latent frame ``i >= 1`` gives the next ``temporal_compression`` frames (causal VAE layout:
  ``1 + tc * (F - 1)`` frames); each latent pixel becomes a ``spatial_compression`` square.
Audio preview, latents ``[B, L, C]``:
  an oscillator bank: channel ``c`` drives a sine at ``f_c`` (log-spaced 110 Hz .. 3.52 kHz) with an
  amplitude linearly interpolated between latents at ``samples_per_latent`` samples per latent,
  summed, scaled by ``0.25 / sqrt(C)`` and clamped to ``[-1, 1]``.
Both are linear in the latents up to the final clamp.

A diffusers video VAE (e.g. ``AutoencoderKLWan``) is called as ``vae.decode(latents).sample`` ->
``[B, 3, T, H, W]`` in ``[-1, 1]``; a diffusers audio VAE (e.g. ``AutoencoderOobleck``) as
``vae.decode(latents [B, C, L]).sample`` -> ``[B, channels, samples]`` (mixed down to mono; convolution
edge effects of less than one latent are trimmed or zero-padded to ``L * samples_per_latent``).
"""
from __future__ import annotations

import math

import torch

from .config import BatonConfig

__all__ = ["Decoder"]


class Decoder:
    """Decode video and audio latents with the preview decoder or the given diffusers VAEs."""

    def __init__(self, cfg: BatonConfig, video_vae=None, audio_vae=None):
        self.cfg, self.video_vae, self.audio_vae = cfg, video_vae, audio_vae

    # ---------------------------------------------------------------- video
    def video(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, F, h, w]`` -> uint8 frames ``[B, 1 + tc*(F-1), H, W, 3]`` on the CPU."""
        vf = self.cfg.video_format
        if self.video_vae is not None:
            vae_dtype = next(self.video_vae.parameters()).dtype
            rgb = self.video_vae.decode(latents.to(vae_dtype)).sample.float()  # [B, 3, T, H, W] in [-1, 1]
            frames = ((rgb + 1) / 2).permute(0, 2, 3, 4, 1)
        else:
            frames = self.preview_rgb(latents.float())
        expected = (latents.shape[0], 1 + vf.temporal_compression * (latents.shape[2] - 1), vf.height, vf.width, 3)
        if tuple(frames.shape) != expected:
            raise ValueError(f"video_vae: expected decoded frames {expected} (B, T, H, W, RGB), got {tuple(frames.shape)}")
        return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def preview_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """The linear preview: float32 ``[B, T, H, W, 3]`` before clamping."""
        vf, channels = self.cfg.video_format, latents.shape[1]
        colour = torch.arange(channels, device=latents.device) % 3
        weights = torch.nn.functional.one_hot(colour, 3).float()
        weights = weights / weights.sum(0).clamp(min=1).sqrt()  # unit variance per colour
        rgb = 0.5 + 0.25 * torch.einsum("bcfhw,ck->bfhwk", latents, weights)
        repeats = torch.full((rgb.shape[1],), vf.temporal_compression, device=rgb.device)
        repeats[0] = 1
        rgb = rgb.repeat_interleave(repeats, dim=1)
        s = vf.spatial_compression
        return rgb.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)

    # ---------------------------------------------------------------- audio
    def audio(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` -> float32 mono waveform ``[B, L * samples_per_latent]`` in ``[-1, 1]`` on the CPU."""
        af = self.cfg.audio_format
        if self.audio_vae is not None:
            vae_dtype = next(self.audio_vae.parameters()).dtype
            wave = self.audio_vae.decode(latents.transpose(1, 2).to(vae_dtype)).sample.float().mean(1)
        else:
            wave = self.preview_wave(latents.float())
        samples = latents.shape[1] * af.samples_per_latent
        if wave.dim() != 2 or wave.shape[0] != latents.shape[0] or abs(wave.shape[1] - samples) >= af.samples_per_latent:
            raise ValueError(f"audio_vae: expected a waveform of about [{latents.shape[0]}, {samples}] (B, samples), "
                             f"got {tuple(wave.shape)}")
        wave = torch.nn.functional.pad(wave[:, :samples], (0, max(0, samples - wave.shape[1])))
        return wave.clamp(-1, 1).cpu()

    def preview_wave(self, latents: torch.Tensor) -> torch.Tensor:
        """The oscillator-bank preview: float32 ``[B, L * samples_per_latent]`` before clamping."""
        af = self.cfg.audio_format
        B, L, C = latents.shape
        n = L * af.samples_per_latent
        # amplitude of each channel at every sample: linear interpolation between latent centres
        amplitude = torch.nn.functional.interpolate(latents.transpose(1, 2), size=n, mode="linear",
                                                    align_corners=False)  # [B, C, n]
        freqs = 110.0 * 2.0 ** (5.0 * torch.arange(C, device=latents.device) / max(C - 1, 1))
        t = torch.arange(n, device=latents.device, dtype=torch.float64) / af.sample_rate
        carriers = torch.sin(2 * math.pi * freqs.double()[:, None] * t).float()  # [C, n]
        return 0.25 / math.sqrt(C) * (amplitude * carriers).sum(1)
