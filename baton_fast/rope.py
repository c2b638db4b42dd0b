"""Coordinate RoPE: the rope table and the coordinate builders (DESIGN.md §2).

Every token ``i`` carries float32 coordinates ``c_i`` (``A`` axes).  A table gives,
for each head ``h`` and rotary pair ``j < D/2``, a frequency ``f[h, j] >= 0`` and an
axis ``a[h, j]``; the angle is ``phi_i[h, j] = c_i[a[h, j]] * f[h, j]`` and pair ``j``
is rotated by ``phi``.  Pair ``j`` is dims ``(2j, 2j+1)`` when ``interleaved`` and
``(j, j + D/2)`` otherwise.  Tables with one row are shared by all heads.

Affine maps of coordinates (LTX-2's ``2c/max - 1``) are applied here, on the host,
on ``A`` floats per token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "RopeTable",
    "video_grid_coords",
    "audio_coords",
    "ltx2_video_coords",
    "ltx2_audio_coords",
    "plan_video_coords",
    "plan_audio_coords",
]


def _axis_freqs(axis_dim: int, theta: float) -> torch.Tensor:
    """Wan's ``1 / theta^(2k / axis_dim)`` for ``k < axis_dim / 2``, computed in float64."""
    k = torch.arange(0, axis_dim, 2, dtype=torch.float64)[: axis_dim // 2]
    return 1.0 / theta ** (k / axis_dim)


@dataclass(frozen=True)
class RopeTable:
    """Per-head rotary table.

    Attributes:
        freqs: float32 ``[1 or H, D/2]``, ``>= 0``; ``0`` marks an identity pair.
        axes: int32 ``[1 or H, D/2]``, the coordinate axis each pair reads.
        interleaved: pair ``j`` is dims ``(2j, 2j+1)`` if True, ``(j, j+D/2)`` if False.
    """

    freqs: torch.Tensor
    axes: torch.Tensor
    interleaved: bool = True

    def __post_init__(self):
        f, a = self.freqs, self.axes
        if not isinstance(f, torch.Tensor) or f.dtype != torch.float32 or f.dim() != 2:
            raise TypeError(f"RopeTable.freqs: expected a float32 tensor [1 or H, D/2], got {_describe(f)}")
        if not isinstance(a, torch.Tensor) or a.dtype.is_floating_point or a.is_complex() or a.dtype == torch.bool:
            raise TypeError(f"RopeTable.axes: expected an integer tensor [1 or H, D/2], got {_describe(a)}")
        if a.shape != f.shape:
            raise ValueError(f"RopeTable.axes: expected shape {tuple(f.shape)} (same as freqs), got {tuple(a.shape)}")
        if f.shape[0] < 1 or f.shape[1] < 1:
            raise ValueError(f"RopeTable.freqs: expected at least one row and one rotary pair (D/2 >= 1), "
                             f"got shape {tuple(f.shape)}")
        if a.device != f.device:
            raise ValueError(f"RopeTable: freqs on {f.device} but axes on {a.device}")
        if not bool(torch.isfinite(f).all()) or bool((f < 0).any()):
            raise ValueError("RopeTable.freqs: expected finite frequencies >= 0")
        if bool((a < 0).any()):
            raise ValueError("RopeTable.axes: expected axis indices >= 0")
        object.__setattr__(self, "axes", a.to(torch.int32))
        # cached as a Python int so that checks under torch.compile read no tensor data
        object.__setattr__(self, "_num_axes", int(a.max()) + 1)

    # ------------------------------------------------------------------ properties
    @property
    def head_dim(self) -> int:
        return 2 * self.freqs.shape[1]

    @property
    def num_heads(self) -> int:
        """Rows of the table: 1 (shared by all heads) or the number of heads."""
        return self.freqs.shape[0]

    @property
    def num_axes(self) -> int:
        """Smallest number of coordinate axes this table can read."""
        return self._num_axes

    def to(self, device) -> "RopeTable":
        """This table on ``device``; the values were checked at construction, so no re-check (no device sync)."""
        return RopeTable.trusted(self.freqs.to(device), self.axes.to(device), self.interleaved, self._num_axes)

    @classmethod
    def trusted(cls, freqs: torch.Tensor, axes: torch.Tensor, interleaved: bool, num_axes: int) -> "RopeTable":
        """Wrap tensors that were already validated (an op's table arguments) without reading their values."""
        table = object.__new__(cls)
        for name, value in (("freqs", freqs), ("axes", axes), ("interleaved", interleaved), ("_num_axes", num_axes)):
            object.__setattr__(table, name, value)
        return table

    def check(self, name: str, num_heads: int, head_dim: int, num_axes: int) -> None:
        """Raise unless this table fits ``num_heads`` heads of ``head_dim`` and coords with ``num_axes`` axes."""
        if self.head_dim != head_dim:
            raise ValueError(f"{name}: table has D/2={self.freqs.shape[1]} pairs, expected D/2={head_dim // 2} for head dim {head_dim}")
        if self.num_heads not in (1, num_heads):
            raise ValueError(f"{name}: table has {self.num_heads} rows, expected 1 (shared) or {num_heads} (one per head)")
        if self.num_axes > num_axes:
            raise ValueError(f"{name}: table reads axis {self.num_axes - 1} but coordinates have only {num_axes} axes")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_bands(cls, bands, head_dim: int, interleaved: bool = True, pad_first: bool = False) -> "RopeTable":
        """Concatenate ``(axis, freqs)`` bands; the rest of the ``D/2`` pairs are identity.

        ``pad_first`` puts the identity pairs before the bands (LTX-2), else after.
        """
        freqs = torch.cat([torch.as_tensor(f, dtype=torch.float64) for _, f in bands])
        axes = torch.cat([torch.full((len(f),), ax, dtype=torch.int32) for ax, f in bands])
        pad = head_dim // 2 - len(freqs)
        if head_dim % 2 or pad < 0:
            raise ValueError(f"head_dim: expected an even number >= {2 * len(freqs)}, got {head_dim}")
        zf, za = torch.zeros(pad, dtype=torch.float64), torch.zeros(pad, dtype=torch.int32)
        freqs = torch.cat([zf, freqs] if pad_first else [freqs, zf])
        axes = torch.cat([za, axes] if pad_first else [axes, za])
        return cls(freqs.float()[None], axes[None], interleaved)

    @classmethod
    def identity(cls, head_dim: int, device=None) -> "RopeTable":
        """No rotation: every pair has frequency 0 (text tokens, already-rotated sides).  Built on
        ``device`` (no host-to-device copy per call, which CUDA-graph capture forbids)."""
        if head_dim % 2 or head_dim < 2:
            raise ValueError(f"head_dim: expected an even number >= 2, got {head_dim}")
        half = head_dim // 2  # built unchecked: nothing to check, and no tensor read under torch.compile
        return cls.trusted(torch.zeros(1, half, device=device), torch.zeros(1, half, dtype=torch.int32, device=device),
                           True, 1)

    @classmethod
    def wan(cls, head_dim: int = 128, theta: float = 10000.0) -> "RopeTable":
        """Wan / Ovi video self-attention: axes (t, h, w); D=128 gives 22, 21, 21 pairs; interleaved."""
        hw = 2 * (head_dim // 6)
        t = head_dim - 2 * hw
        return cls.from_bands([(0, _axis_freqs(t, theta)), (1, _axis_freqs(hw, theta)), (2, _axis_freqs(hw, theta))], head_dim)

    @classmethod
    def ovi_temporal(cls, head_dim: int = 128, scale: float = 1.0, theta: float = 10000.0) -> "RopeTable":
        """Ovi temporal RoPE: only Wan's temporal pairs (axis 0), frequencies times ``scale``.

        ``scale=0.19676`` (~31/157.5) for audio tokens indexed by audio latent, ``1.0`` for
        video tokens indexed by latent frame (Ovi's audio<->video cross-attention).
        """
        t = head_dim - 4 * (head_dim // 6)
        return cls.from_bands([(0, _axis_freqs(t, theta) * scale)], head_dim)

    @classmethod
    def ltx2(cls, inner_dim: int, num_heads: int, num_axes: int = 3, theta: float = 10000.0,
             interleaved: bool = True) -> "RopeTable":
        """LTX-2: ``omega_k = theta^linspace(0, 1, n) * pi/2``, ``n = inner_dim // (2 A)``, over the whole
        inner dim with axes interleaved per frequency and identity padding pairs first; split per head.

        Coordinates come from :func:`ltx2_video_coords` / :func:`ltx2_audio_coords` (already mapped
        to ``2 c / max - 1``).  Returns a per-head table ``[num_heads, inner_dim / num_heads / 2]``.
        """
        if num_axes < 1:
            raise ValueError(f"num_axes: expected at least one coordinate axis, got {num_axes}")
        if inner_dim % num_heads or (inner_dim // num_heads) % 2:
            raise ValueError(f"inner_dim: expected a multiple of 2*num_heads={2 * num_heads}, got {inner_dim}")
        n = inner_dim // (2 * num_axes)
        omega = (theta ** torch.linspace(0.0, 1.0, n, dtype=torch.float64) * (math.pi / 2)).float().double()
        freqs = omega.repeat_interleave(num_axes)  # pair k*A + a reads axis a at omega_k
        axes = torch.arange(num_axes, dtype=torch.int32).repeat(n)
        pad = inner_dim // 2 - n * num_axes
        freqs = torch.cat([torch.zeros(pad, dtype=torch.float64), freqs]).float()
        axes = torch.cat([torch.zeros(pad, dtype=torch.int32), axes])
        half = inner_dim // num_heads // 2
        return cls(freqs.view(num_heads, half).contiguous(), axes.view(num_heads, half).contiguous(), interleaved)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# ------------------------------------------------------------------ coordinates
def video_grid_coords(frames: int, height: int, width: int, device=None) -> torch.Tensor:
    """Integer latent grid ``(t, h, w)`` in row-major token order: float32 ``[frames*height*width, 3]``."""
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float32, device=device) for n in (frames, height, width)),
                             indexing="ij")
    return torch.stack([t, h, w], -1).reshape(-1, 3)


def audio_coords(length: int, device=None) -> torch.Tensor:
    """Audio latent index ``i``: float32 ``[length, 1]``."""
    return torch.arange(length, dtype=torch.float32, device=device)[:, None]


def ltx2_video_coords(frames: int, height: int, width: int, *, patch_size: int = 1, patch_size_t: int = 1,
                      scale_factors=(8, 32, 32), causal_offset: int = 1, fps: float = 24.0,
                      base=(20, 2048, 2048), device=None) -> torch.Tensor:
    """LTX-2 video coordinates: patch midpoints in (seconds, px, px) mapped to ``2 c / base - 1``.

    ``frames, height, width`` are latent sizes.  Returns float32 ``[N, 3]`` in the token order of
    diffusers' ``LTX2AudioVideoRotaryPosEmbed.prepare_video_coords``.
    """
    sizes = (patch_size_t, patch_size, patch_size)
    starts = [torch.arange(0, n, p, dtype=torch.float32, device=device) for n, p in zip((frames, height, width), sizes)]
    mids = []
    for axis, (s, p, scale) in enumerate(zip(starts, sizes, scale_factors)):
        lo, hi = s * scale, (s + p) * scale
        if axis == 0:  # causal VAE: the first frame has temporal stride 1
            lo = (lo + causal_offset - scale).clamp(min=0) / fps
            hi = (hi + causal_offset - scale).clamp(min=0) / fps
        mids.append((lo + hi) / 2 / base[axis] * 2 - 1)
    t, h, w = torch.meshgrid(*mids, indexing="ij")
    return torch.stack([t, h, w], -1).reshape(-1, 3)


def ltx2_audio_coords(frames: int, *, patch_size_t: int = 1, scale_factor: int = 4, causal_offset: int = 1,
                      sampling_rate: int = 16000, hop_length: int = 160, base_frames: int = 20, shift: int = 0,
                      device=None) -> torch.Tensor:
    """LTX-2 audio coordinates: latent-frame midpoints in seconds mapped to ``2 c / base - 1``: float32 ``[N, 1]``."""
    g = torch.arange(shift, frames + shift, patch_size_t, dtype=torch.float32, device=device)

    def seconds(mel):
        return (mel + causal_offset - scale_factor).clip(min=0) * hop_length / sampling_rate

    mid = (seconds(g * scale_factor) + seconds((g + patch_size_t) * scale_factor)) / 2
    return (mid / base_frames * 2 - 1)[:, None]


def plan_video_coords(keyframes: int, grid: int, latent_height: int, latent_width: int, *,
                      latent_fps: float, keyframe_fps: float = 6.0, device=None) -> torch.Tensor:
    """Baton RS-RoPE coordinates of video planned tokens (keyframe ``k``, cell ``r, s`` of an S x S grid).

    ``t = k * latent_fps / keyframe_fps``, ``h = (r + 0.5) * H_lat / S - 0.5``, ``w = (s + 0.5) * W_lat / S - 0.5``:
    float32 ``[keyframes * grid * grid, 3]`` on the latent grid of the video they steer.
    """
    k = torch.arange(keyframes, dtype=torch.float64) * (latent_fps / keyframe_fps)
    cell = torch.arange(grid, dtype=torch.float64) + 0.5
    h = cell * latent_height / grid - 0.5
    w = cell * latent_width / grid - 0.5
    t, hh, ww = torch.meshgrid(k, h, w, indexing="ij")
    return torch.stack([t, hh, ww], -1).reshape(-1, 3).to(torch.float32).to(device)


def plan_audio_coords(chunks: int, tokens_per_chunk: int, *, audio_latents_per_s: float, device=None) -> torch.Tensor:
    """Baton RS-RoPE coordinates of audio planned tokens: token ``n`` of 1-second chunk ``m`` sits at
    ``t = (m + (n + 0.5) / M) * audio_latents_per_s - 0.5`` on the audio latent axis: float32 ``[chunks*M, 1]``."""
    m = torch.arange(chunks, dtype=torch.float64)[:, None]
    n = torch.arange(tokens_per_chunk, dtype=torch.float64)[None, :]
    t = (m + (n + 0.5) / tokens_per_chunk) * audio_latents_per_s - 0.5
    return t.reshape(-1, 1).to(torch.float32).to(device)
