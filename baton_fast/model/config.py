"""Model configuration: dataclasses, per-run shapes and the named presets.

Presets:
- ``tiny``: a few hundred thousand DiT parameters; the CPU default, seconds per run.
- ``ovi-720p-5s``: Ovi's twin backbone at full size (Wan2.2-5B-style video tower, a symmetric
  audio tower), 720x720-area video (704x704, Ovi snaps to multiples of 32), 5 s; no planner.
- ``baton-paper``: the same backbone plus Baton's VA-Planner (Qwen3-8B sizes) and the cascaded
  plan cross-attention (SigLIP2 27x27x1152 keyframe features at 6 fps, WavTokenizer-width audio).

Full-size presets are meant for the meta device (parameter and FLOP counts) or a GPU with real
weights; they are described in ``docs/model.md`` with the choices the papers leave open.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

__all__ = ["BranchConfig", "VideoFormat", "AudioFormat", "PlannerConfig", "BatonConfig", "RunShape", "PRESETS",
           "get_preset"]


@dataclass(frozen=True)
class BranchConfig:
    """One DiT tower: Wan-style blocks of width ``dim``; ``patch`` is ``(pt, ph, pw)`` (video) or ``(pa,)`` (audio)."""

    dim: int
    num_heads: int
    num_layers: int
    ffn_dim: int
    latent_channels: int
    patch: tuple

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch)


@dataclass(frozen=True)
class VideoFormat:
    """Pixel format and the (causal) video VAE's compression: ``1 + tc * (F - 1)`` frames from ``F`` latents."""

    fps: float
    height: int
    width: int
    temporal_compression: int
    spatial_compression: int


@dataclass(frozen=True)
class AudioFormat:
    """Mono audio at ``sample_rate``; one audio latent covers ``samples_per_latent`` samples."""

    sample_rate: int
    samples_per_latent: int

    @property
    def latents_per_s(self) -> float:
        return self.sample_rate / self.samples_per_latent


@dataclass(frozen=True)
class PlannerConfig:
    """VA-Planner: the default causal LM (a Qwen3 configuration), the placeholders and the alignment towers.

    Video planned tokens: ``K`` keyframes at ``keyframe_fps``, a ``grid x grid`` grid each, width
    ``video_feature_dim``.  Audio planned tokens: one-second chunks of ``audio_tokens_per_chunk`` tokens,
    width ``audio_feature_dim``.
    """

    lm_hidden: int
    lm_layers: int
    lm_heads: int
    lm_kv_heads: int
    lm_head_dim: int
    lm_ffn: int
    lm_vocab: int
    lm_tie_embeddings: bool
    video_placeholders: int
    audio_placeholders: int
    tower_dim: int
    tower_heads: int
    tower_layers: int
    tower_ffn: int
    keyframe_fps: float
    grid: int
    video_feature_dim: int
    audio_tokens_per_chunk: int
    audio_feature_dim: int
    max_prompt_tokens: int

    @property
    def tower_head_dim(self) -> int:
        return self.tower_dim // self.tower_heads


@dataclass(frozen=True)
class RunShape:
    """Every size that follows from a preset and a duration (batch not included)."""

    seconds: float                 # the clip's duration: frames / fps
    frames: int                    # video frames of the clip (the decoder makes 1 + tc * (F - 1) >= frames)
    video_latent: tuple            # (C, F, H, W)
    video_grid: tuple              # token grid (f, h, w) after patchify
    audio_latents: int             # L
    audio_samples: int             # samples of the clip's sound track, round(seconds * sample_rate) <= L * spl
    keyframes: int                 # K (0 without a planner)
    chunks: int                    # M (0 without a planner)

    @property
    def video_tokens(self) -> int:
        return math.prod(self.video_grid)


@dataclass(frozen=True)
class BatonConfig:
    """The whole model: two DiT towers, media formats, text width, optional planner."""

    name: str
    video: BranchConfig
    audio: BranchConfig
    video_format: VideoFormat
    audio_format: AudioFormat
    text_dim: int                  # width of the text encoder's hidden states
    text_max_tokens: int
    audio_rope_scale: float        # audio-index -> video-latent-frame scale of the temporal RoPE (Ovi: 0.19676)
    max_seconds: float
    planner: Optional[PlannerConfig] = None
    freq_dim: int = 256            # sinusoidal timestep embedding width
    eps: float = 1e-6

    def __post_init__(self):
        vf, pt_ph_pw = self.video_format, self.video.patch
        if len(pt_ph_pw) != 3 or pt_ph_pw[0] != 1 or len(self.audio.patch) != 1:
            raise ValueError("patch: expected (1, ph, pw) for video (the causal VAE's first latent frame stands "
                             "alone, as in Wan) and (pa,) for audio")
        for name, branch in (("video", self.video), ("audio", self.audio)):
            if branch.dim % branch.num_heads or branch.head_dim % 2:
                raise ValueError(f"{name}: dim {branch.dim} must split into {branch.num_heads} heads of even size")
        lat_h, lat_w = vf.height // vf.spatial_compression, vf.width // vf.spatial_compression
        if (vf.height % vf.spatial_compression or vf.width % vf.spatial_compression
                or lat_h % pt_ph_pw[1] or lat_w % pt_ph_pw[2]):
            raise ValueError(f"video_format: {vf.height}x{vf.width} px must give latents divisible by the patch "
                             f"{pt_ph_pw[1:]} after {vf.spatial_compression}x compression")

    # ------------------------------------------------------------------ per-run shapes
    @property
    def video_latent_fps(self) -> float:
        """Video latent frames per second (the time unit of the video RoPE)."""
        return self.video_format.fps / self.video_format.temporal_compression

    def keyframes(self, seconds: float) -> int:
        """Planned keyframes for ``seconds``: ``floor(seconds * keyframe_fps) + 1`` (0 without a planner)."""
        return int(math.floor(seconds * self.planner.keyframe_fps + 1e-9)) + 1 if self.planner else 0

    def shape(self, seconds: float) -> RunShape:
        """Shapes for a clip of ``seconds`` (``0 < seconds <= max_seconds``).

        The clip is ``frames = floor(seconds * fps)`` video frames (at least one), and its sound track
        exactly as long, to the nearest sample: ``audio_samples = round(frames / fps * sample_rate)``.
        The latents cover at least that much (``1 + tc * (F - 1) >= frames`` decoded frames, at least two
        latent frames; ``L * samples_per_latent >= audio_samples``, ``L`` a multiple of the audio patch);
        the pipeline trims the decoded media to ``frames`` and ``audio_samples``.
        """
        is_number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
        if not is_number or not math.isfinite(seconds) or not 0 < seconds <= self.max_seconds:
            raise ValueError(f"seconds: expected a duration in (0, {self.max_seconds:g}] for preset {self.name!r}, "
                             f"got {seconds!r}")
        vf, af = self.video_format, self.audio_format
        _, ph, pw = self.video.patch
        frames = max(1, math.floor(seconds * vf.fps + 1e-6))
        duration = frames / vf.fps
        latent_frames = 1 + max(1, math.ceil((frames - 1) / vf.temporal_compression))
        lat_h, lat_w = vf.height // vf.spatial_compression, vf.width // vf.spatial_compression
        pa = self.audio.patch[0]
        audio_samples = round(duration * af.sample_rate)
        audio_latents = pa * math.ceil(math.ceil(audio_samples / af.samples_per_latent) / pa)
        return RunShape(
            seconds=duration,
            frames=frames,
            video_latent=(self.video.latent_channels, latent_frames, lat_h, lat_w),
            video_grid=(latent_frames, lat_h // ph, lat_w // pw),
            audio_latents=audio_latents,
            audio_samples=audio_samples,
            keyframes=self.keyframes(duration),
            chunks=math.ceil(duration - 1e-9) if self.planner else 0,
        )


# ---------------------------------------------------------------------- presets
_TINY = BatonConfig(
    name="tiny",
    video=BranchConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, latent_channels=4, patch=(1, 2, 2)),
    audio=BranchConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, latent_channels=4, patch=(1,)),
    video_format=VideoFormat(fps=8.0, height=64, width=64, temporal_compression=4, spatial_compression=8),
    audio_format=AudioFormat(sample_rate=16000, samples_per_latent=2000),
    text_dim=384,                      # MiniLM-L6
    text_max_tokens=64,
    audio_rope_scale=0.25,             # 2 video latent frames/s over 8 audio latents/s
    max_seconds=4.0,
    planner=PlannerConfig(
        lm_hidden=64, lm_layers=2, lm_heads=4, lm_kv_heads=2, lm_head_dim=16, lm_ffn=128, lm_vocab=30528,
        lm_tie_embeddings=True, video_placeholders=8, audio_placeholders=4,
        tower_dim=64, tower_heads=2, tower_layers=1, tower_ffn=128,
        keyframe_fps=2.0, grid=2, video_feature_dim=32, audio_tokens_per_chunk=4, audio_feature_dim=16,
        max_prompt_tokens=64),
)

_OVI_VIDEO = BranchConfig(dim=3072, num_heads=24, num_layers=30, ffn_dim=14336, latent_channels=48, patch=(1, 2, 2))
_OVI_AUDIO = BranchConfig(dim=3072, num_heads=24, num_layers=30, ffn_dim=14336, latent_channels=20, patch=(1,))

_OVI = BatonConfig(
    name="ovi-720p-5s",
    video=_OVI_VIDEO,
    audio=_OVI_AUDIO,
    video_format=VideoFormat(fps=24.0, height=704, width=704, temporal_compression=4, spatial_compression=16),
    audio_format=AudioFormat(sample_rate=16000, samples_per_latent=512),   # MMAudio 16 kHz VAE: 31.25 latents/s
    text_dim=4096,                     # UMT5-XXL, as Ovi
    text_max_tokens=512,
    audio_rope_scale=0.19676,          # Ovi's constant (~31 / 157.5)
    max_seconds=5.0,
)

_BATON = BatonConfig(
    name="baton-paper",
    video=_OVI_VIDEO,
    audio=_OVI_AUDIO,
    video_format=_OVI.video_format,
    audio_format=_OVI.audio_format,
    text_dim=4096,
    text_max_tokens=512,
    audio_rope_scale=0.19676,
    max_seconds=5.0,
    planner=PlannerConfig(
        lm_hidden=4096, lm_layers=36, lm_heads=32, lm_kv_heads=8, lm_head_dim=128, lm_ffn=12288, lm_vocab=151936,
        lm_tie_embeddings=False,       # Qwen3-8B
        video_placeholders=256, audio_placeholders=64,
        tower_dim=1024, tower_heads=16, tower_layers=2, tower_ffn=4096,
        keyframe_fps=6.0, grid=27, video_feature_dim=1152,     # SigLIP2 patch features
        audio_tokens_per_chunk=40, audio_feature_dim=512,      # WavTokenizer, 40 tokens/s
        max_prompt_tokens=512),
)

PRESETS = {c.name: c for c in (_TINY, _OVI, _BATON)}


def get_preset(name: str) -> BatonConfig:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]
