"""Flow-matching sampler: shifted sigmas, Euler or Heun, classifier-free guidance with separate video
and audio scales, the conditional and unconditional passes batched in one forward.

Flow matching: ``x_sigma = (1 - sigma) x_0 + sigma * noise``, the model predicts the velocity
``noise - x_0`` at timestep ``1000 * sigma``; sampling integrates ``dx/dsigma`` from ``sigma = 1`` to
``0``.  The shift ``s`` (Ovi/Wan: 5.0) spends more steps at high noise:
``sigma' = s * sigma / (1 + (s - 1) * sigma)``.

Speed options (all off by default, and documented in ``docs/model.md``):
- ``compile_backend``: regional ``torch.compile(fullgraph=True)`` of each fusion block (one graph,
  reused by every block); on CPU it only pays off for long runs.
- ``cuda_graph``: CUDA only; one guided velocity evaluation is captured in a CUDA graph with static
  input/output buffers and replayed every step (no launch overhead).
- ``cache``: step caching (:mod:`baton_fast.model.cache`): ``teacache`` or ``first-block`` skip the fusion
  blocks on evaluations whose input changed by less than ``cache_threshold``.
- ``quant``: the hybrid schedule of quantised attention (:mod:`baton_fast.quant`, what xDiT and SageAttention3
  recommend for video): full precision for the first and last ``quant_full_steps`` steps, ``quant``
  (``"fp8"``, ``"int8"`` or ``"int8+fp8"``) in between.
- ``sparse_window``: sliding-tile attention on the video self-attention (:mod:`baton_fast.model.sparsity`; the
  run context must be prepared with the same window), dense for the first ``sparse_dense_steps`` steps as STA does.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..quant import attention_quant, check_scheme
from .cache import StepCache, check_cache_settings
from .dit import DualBranchDiT, RunContext
from .layout import LayoutGuidance

__all__ = ["SOLVERS", "SamplerOptions", "flow_sigmas", "GuidedVelocity", "CudaGraphVelocity", "compile_blocks",
           "sample", "full_precision_difference"]

SOLVERS = ("euler", "heun")


@dataclass(frozen=True)
class SamplerOptions:
    """Sampling settings (defaults: Ovi's guidance scales and shift)."""

    steps: int = 50
    solver: str = "euler"
    shift: float = 5.0
    video_guidance: float = 4.0
    audio_guidance: float = 3.0
    compile_backend: Optional[str] = None
    cuda_graph: bool = False
    cache: str = "none"
    cache_threshold: Optional[float] = None  # None: the policy's default (cache.DEFAULT_THRESHOLDS)
    cache_first_steps: int = 1               # steps always computed at the start ...
    cache_last_steps: int = 1                # ... and at the end
    cache_rescale: Optional[tuple] = None    # teacache: polynomial on the input change (None: identity)
    quant: Optional[str] = None              # quantised attention between the full-precision steps
    quant_full_steps: int = 1                # full-precision steps at the start and at the end
    sparse_window: Optional[tuple] = None    # (wt, wh, ww) in tiles: sliding-tile video self-attention
    sparse_dense_steps: int = 0              # dense steps before the sparse ones
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: expected a positive integer, got {self.steps!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if not self.shift > 0:
            raise ValueError(f"shift: expected a positive number, got {self.shift!r}")
        for name in ("video_guidance", "audio_guidance"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        check_cache_settings(self.cache, self.cache_threshold, self.cache_first_steps, self.cache_last_steps,
                             self.cache_rescale)
        if self.cuda_graph and self.cache != "none":
            raise ValueError(f"cache: {self.cache!r} decides per evaluation on the host; it cannot run inside a "
                             f"CUDA-graph replay (cuda_graph=True)")
        if self.quant is not None:
            check_scheme(self.quant)
            if self.cuda_graph:
                raise ValueError("quant: the hybrid schedule switches precision per step; one CUDA graph cannot "
                                 "(cuda_graph=True)")
        if isinstance(self.quant_full_steps, bool) or not isinstance(self.quant_full_steps, int) or \
                self.quant_full_steps < 0:
            raise ValueError(f"quant_full_steps: expected an integer >= 0, got {self.quant_full_steps!r}")
        if isinstance(self.sparse_dense_steps, bool) or not isinstance(self.sparse_dense_steps, int) or \
                self.sparse_dense_steps < 0:
            raise ValueError(f"sparse_dense_steps: expected an integer >= 0, got {self.sparse_dense_steps!r}")
        if self.sparse_window is not None and (self.cuda_graph or self.cache != "none"):
            raise ValueError("sparse_window: not supported with a CUDA graph or step caching (the attention "
                             "pattern switches per step)")

    @property
    def evaluations(self) -> int:
        """Guided velocity evaluations per run (Heun: two per step, one on the last step)."""
        return self.steps if self.solver == "euler" else 2 * self.steps - 1

    @property
    def quantized_steps(self) -> list:
        """The steps whose attention runs quantised (both evaluations of a Heun step): none without ``quant``."""
        if self.quant is None:
            return []
        return list(range(self.quant_full_steps, self.steps - self.quant_full_steps))

    @property
    def sparse_steps(self) -> list:
        """The steps whose video self-attention runs on the sliding-tile window: none without ``sparse_window``."""
        return [] if self.sparse_window is None else list(range(self.sparse_dense_steps, self.steps))


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """Shifted noise levels, float64 ``[steps + 1]`` from 1 down to 0."""
    sigma = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * sigma / (1 + (shift - 1) * sigma)


class GuidedVelocity:
    """Guided velocity of both modalities: one DiT forward on ``[cond; uncond]``.

    ``ctx`` was prepared for a batch of ``2B``: rows ``:B`` with the prompts (and their plan), rows
    ``B:`` with the negative prompts (and their plan).  ``__call__(video [B, ...], audio [B, ...],
    sigma, layout=None, sparse=False)`` returns float32 ``uncond + scale * (cond - uncond)`` per modality.  With a
    ``cache`` (:class:`~baton_fast.model.cache.StepCache`), the DiT runs its blocks through it.  A layout
    masks both passes alike (the layout is a constraint on the picture, not part of the prompt: masking
    only the conditional pass would make guidance amplify the masked-minus-unmasked difference).
    """

    def __init__(self, dit: DualBranchDiT, ctx: RunContext, video_guidance: float, audio_guidance: float,
                 cache: Optional[StepCache] = None):
        if ctx.batch % 2:
            raise ValueError(f"ctx: expected a batch of 2B (conditional then unconditional), got {ctx.batch}")
        self.dit, self.ctx, self.cache = dit, ctx, cache
        self.video_guidance, self.audio_guidance = video_guidance, audio_guidance

    def __call__(self, video: torch.Tensor, audio: torch.Tensor, sigma: torch.Tensor,
                 layout: Optional[LayoutGuidance] = None, sparse: bool = False):
        timesteps = (sigma * 1000.0).float().expand(2 * video.shape[0])
        vel_video, vel_audio = self.dit(torch.cat([video, video]), torch.cat([audio, audio]), timesteps, self.ctx,
                                        layout, cache=self.cache, **({"sparse": True} if sparse else {}))
        return (_guide(vel_video.float(), self.video_guidance), _guide(vel_audio.float(), self.audio_guidance))


def _guide(velocity: torch.Tensor, scale: float) -> torch.Tensor:
    cond, uncond = velocity.chunk(2)
    return uncond + scale * (cond - uncond)


class CudaGraphVelocity:
    """A velocity callable replayed from a CUDA graph (CUDA only).

    The first evaluations run eagerly on a side stream (kernel autotuning, allocator warm-up), then one
    evaluation is captured with static ``video``, ``audio`` and ``sigma`` buffers.  Each call copies its
    inputs into those buffers, replays the graph and returns copies of the static outputs.
    """

    def __init__(self, velocity: Callable, video: torch.Tensor, audio: torch.Tensor, sigma: torch.Tensor,
                 warmup: int = 2):
        if video.device.type != "cuda":
            raise ValueError(f"cuda_graph: expected CUDA tensors, got {video.device}")
        self.inputs = (video.clone(), audio.clone(), sigma.clone())
        side = torch.cuda.Stream(video.device)
        side.wait_stream(torch.cuda.current_stream(video.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                velocity(*self.inputs)
        torch.cuda.current_stream(video.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = velocity(*self.inputs)

    def __call__(self, video, audio, sigma):
        for buffer, value in zip(self.inputs, (video, audio, sigma)):
            buffer.copy_(value)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)


def compile_blocks(dit: DualBranchDiT, backend: str = "inductor") -> None:
    """Regional compilation: ``torch.compile(fullgraph=True)`` of each fusion block, in place."""
    for block in dit.blocks:
        block.compile(backend=backend, fullgraph=True, dynamic=False)


def sample(velocity: Callable, video_noise: torch.Tensor, audio_noise: torch.Tensor, options: SamplerOptions,
           on_step: Optional[Callable[[int], None]] = None, layout: Optional[LayoutGuidance] = None,
           cache: Optional[StepCache] = None):
    """Integrate from noise (``sigma = 1``) to data with ``options.steps`` Euler or Heun steps.

    ``velocity(video, audio, sigma[, layout=...])`` returns float32 velocities; ``video_noise [B, C, F, H, W]``
    and ``audio_noise [B, L, C]`` are float32.  With a ``layout``, the first ``layout.masked_steps(steps)``
    steps (both evaluations of a Heun step) call ``velocity(..., layout=layout)``, the others run
    unmasked.  ``on_step(i)`` runs after step ``i``.  ``cache``: the :class:`~baton_fast.model.cache.StepCache`
    that ``velocity`` runs its DiT through (the same object); each evaluation is announced to it first (the
    first unmasked step after masked ones is forced to compute).  The steps of ``options.quantized_steps`` run
    their attention quantised (:func:`baton_fast.quant.attention_quant`), those of ``options.sparse_steps`` call
    ``velocity(..., sparse=True)``.  Returns the denoised ``(video, audio)``
    latents (float32).
    """
    from tqdm.auto import tqdm

    sigmas = flow_sigmas(options.steps, options.shift).to(torch.float32)
    levels = [s.to(video_noise.device) for s in sigmas]  # 0-d tensors: static inputs for a CUDA graph
    masked_steps = layout.masked_steps(options.steps) if layout is not None else 0
    masked = functools.partial(velocity, layout=layout) if masked_steps else None
    if options.cuda_graph:  # one graph per attention pattern
        velocity = CudaGraphVelocity(velocity, video_noise, audio_noise, levels[0])
        if masked is not None:
            masked = CudaGraphVelocity(masked, video_noise, audio_noise, levels[0])
    video, audio = video_noise, audio_noise
    quantized, sparse = set(options.quantized_steps), set(options.sparse_steps)
    sparse_velocity = functools.partial(velocity, sparse=True) if sparse else None
    for i in tqdm(range(options.steps), desc="denoise", disable=not options.progress, leave=False):
        step_velocity = masked if i < masked_steps else sparse_velocity if i in sparse else velocity
        with attention_quant(options.quant if i in quantized else None):
            video, audio = _step(i, video, audio, sigmas, levels, options, step_velocity,
                                 "layout switch" if 0 < masked_steps == i else None, cache)
        if on_step is not None:
            on_step(i)
    return video, audio


def _step(i, video, audio, sigmas, levels, options, step_velocity, forced, cache):
    """Step ``i`` of :func:`sample` (Euler, or Heun before the last step): the new ``(video, audio)``."""
    dt = float(sigmas[i + 1] - sigmas[i])
    if cache is not None:
        cache.begin(i, 0, sigmas[i], forced)
    d_video, d_audio = step_velocity(video, audio, levels[i])
    if options.solver == "heun" and i + 1 < options.steps:  # the last step ends at sigma = 0: Euler
        if cache is not None:
            cache.begin(i, 1, sigmas[i + 1], forced)
        e_video, e_audio = step_velocity(video + dt * d_video, audio + dt * d_audio, levels[i + 1])
        d_video, d_audio = (d_video + e_video) / 2, (d_audio + e_audio) / 2
    return video + dt * d_video, audio + dt * d_audio


def full_precision_difference(velocity: Callable, video_noise: torch.Tensor, audio_noise: torch.Tensor,
                              options: SamplerOptions, video: torch.Tensor, audio: torch.Tensor,
                              layout: Optional[LayoutGuidance] = None, cache: Optional[StepCache] = None) -> dict:
    """What the hybrid schedule changed: sample again from the same noise with every step in full precision and
    compare the final latents ``video``, ``audio`` of the ``options.quant`` run with them.  ``velocity`` / ``cache``
    as in :func:`sample` (a fresh cache: it keeps state).  Returns the report entry: scheme, full-precision steps,
    the quantised steps and, per modality, the max abs and relative L2 difference of the final latents."""
    ref_video, ref_audio = sample(velocity, video_noise, audio_noise,
                                  dataclasses.replace(options, quant=None, progress=False), layout=layout, cache=cache)

    def difference(x, ref):
        x, ref = x.double(), ref.double()
        return {"max_abs": float((x - ref).abs().max()), "rel_l2": float((x - ref).norm() / ref.norm().clamp_min(1e-30))}

    return {"scheme": options.quant, "full_precision_steps": options.quant_full_steps,
            "quantized_steps": options.quantized_steps,
            "final_latent_difference_vs_full_precision": {"video": difference(video, ref_video),
                                                          "audio": difference(audio, ref_audio)}}
