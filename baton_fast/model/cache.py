"""Step caching for the dual-branch sampler: skip the DiT's fusion blocks on evaluations where their input
changed little since the last evaluation that ran them, and reuse that evaluation's residual instead.

Two policies (``POLICIES``), each a small class that says what it measures and how:

- ``teacache`` (TeaCache, Liu et al. 2024): the indicator is the **timestep-modulated input of the first
  block's self-attention**, ``norm1(x) * (1 + scale) + shift``, per branch.  Each evaluation adds its relative
  L1 change against the previous evaluation, ``rescale(|m_k - m_{k-1}|_1 / |m_{k-1}|_1)``, to an accumulator;
  while the accumulator stays below the threshold the blocks are skipped and the output is
  ``input + residual`` (the residual ``blocks(input) - input`` of the last computed evaluation); when it
  reaches the threshold the blocks run and the accumulator restarts at 0.  ``rescale`` is a polynomial
  (``numpy.polyval`` order, highest power first) that TeaCache fits per trained model to map the input's
  change onto the output's.  The default is **none** (the identity): the weights here are random, so there
  is no trained model whose input/output relation a fit would capture, and published coefficients (fitted
  on Wan's or HunyuanVideo's outputs) would rescale by a curve that belongs to another network.  With real
  weights, fit one from an uncached run and pass it as ``SamplerOptions(cache_rescale=...)``.
- ``first-block`` (ParaAttention's first-block cache, diffusers' ``FirstBlockCache``): fusion block 0 always
  runs; the indicator is its residual ``block0(x) - x`` per branch, compared (relative L1, no
  accumulation) with the residual at the last evaluation that ran every block.  Below the threshold the
  other blocks are skipped and their cached residual is added to block 0's output.

**Per branch, coupled explicitly.**  Video and audio keep their own indicator, accumulator and cached
residual.  Each block's cross-modal attention reads the other branch's tokens *at that block* (after its
self-attention), so a branch can only run blocks ``1..N`` when the other branch's per-block tokens exist
for the same evaluation.  Rule: **the blocks run for both branches or for neither** — they run when either
branch's distance reaches the threshold (and then both accumulators restart).  Letting one branch skip
while the other computes would need the skipping branch's tokens at every block from its last computed
evaluation (stale keys for the cross-modal attention, ``N`` extra hidden states kept per branch: 5.5 GB in
bf16 for Ovi's video tower at 720p, 5 s), and would save little in the useful direction only: at Ovi sizes
the audio branch holds ~1 % of the tokens (157 of 15,161), so computing audio alone costs ~1 % of an
evaluation, and skipping audio while video computes saves ~1 %.  The report still records each branch's
distance and whether that branch asked for the computation.

**Guidance halves.**  The conditional and unconditional passes are rows of one batched forward
(``[cond; uncond]``).  Every row — each prompt's conditional and unconditional half — has its own
distance and its own cached residual (caching is per row, so the halves are cached separately; nothing is
reused across halves); since the rows run in one forward, the batch computes when any row's distance
reaches the threshold.

**Steps that always compute.**  The first ``first_steps`` and the last ``last_steps`` sampler steps (default
1 each; every evaluation of a Heun step), the first step after the SpA2V layout masks switch off (the
attention pattern, hence the function, changes there while the indicator does not see it), and any
evaluation without a cached residual.  A threshold of 0 never skips: it reproduces the uncached run bit for
bit.

The decision is taken on the host: one device-to-host read of the per-branch distances per evaluation.
The fusion blocks keep their regional ``torch.compile`` graphs (same shapes and inputs in every
evaluation), so caching adds no recompilation; a CUDA-graph replay of whole evaluations cannot branch on
the host and is refused together with a cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["POLICIES", "DEFAULT_THRESHOLDS", "BRANCHES", "check_cache_settings", "relative_l1", "TeaCachePolicy",
           "FirstBlockPolicy", "StepCache"]

POLICIES = ("none", "teacache", "first-block")
DEFAULT_THRESHOLDS = {"teacache": 0.1, "first-block": 0.1}  # from the sweep in BENCHMARKS.md
BRANCHES = ("video", "audio")


def check_cache_settings(policy, threshold, first_steps=1, last_steps=1, rescale=None) -> Optional[float]:
    """Validate cache settings (the ``cache*`` fields of :class:`~baton_fast.model.sampler.SamplerOptions`);
    returns the threshold to use (the policy's default when ``threshold`` is None; None for ``"none"``)."""
    if policy not in POLICIES:
        raise ValueError(f"cache: expected one of {', '.join(POLICIES)}, got {policy!r}")
    for name, value in (("cache_first_steps", first_steps), ("cache_last_steps", last_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    if policy == "none":
        for name, value in (("cache_threshold", threshold), ("cache_rescale", rescale)):
            if value is not None:
                raise ValueError(f"{name}: only used with a cache policy (cache is 'none')")
        return None
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[policy]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"cache_threshold: expected a finite number >= 0, got {threshold!r}")
    if rescale is not None:
        if policy != "teacache":
            raise ValueError(f"cache_rescale: only used by the teacache policy, not {policy!r}")
        if (not isinstance(rescale, (tuple, list)) or not rescale
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                           for c in rescale)):
            raise ValueError(f"cache_rescale: expected a non-empty sequence of finite polynomial coefficients "
                             f"(highest power first), got {rescale!r}")
    return float(threshold)


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per row: ``sum |current - previous| / sum |previous|`` over all but the first dim; float32 ``[rows]``."""
    current, previous = current.float().flatten(1), previous.float().flatten(1)
    return (current - previous).abs().sum(1) / previous.abs().sum(1).clamp_min(torch.finfo(torch.float32).tiny)


@dataclass
class BranchState:
    """One branch's cache state: the indicator it compares against, its distance (float32 ``[rows]``) and
    the residual ``[rows, N, dim]`` of the cached blocks at the last evaluation that ran them."""

    reference: Optional[torch.Tensor] = None
    distance: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None


class TeaCachePolicy:
    """TeaCache: accumulated (rescaled) relative L1 change of the first block's modulated input."""

    name = "teacache"
    cached_from = 0  # blocks 0.. are cached

    def __init__(self, rescale=None):
        self.rescale = tuple(float(c) for c in rescale) if rescale is not None else None

    def inputs_and_indicators(self, dit, video, audio, video_mod, audio_mod, ctx, layout):
        """``((video, audio) entering the cached blocks, (video, audio) indicators)``."""
        return (video, audio), dit.first_block_inputs(video, audio, video_mod, audio_mod)

    def update(self, state: BranchState, indicator: torch.Tensor) -> None:
        """Add this evaluation's change to the accumulated distance; the indicator becomes the reference."""
        if state.reference is not None:
            change = relative_l1(indicator, state.reference)
            if self.rescale is not None:
                change = sum(c * change ** p for p, c in enumerate(reversed(self.rescale)))
            state.distance = change if state.distance is None else state.distance + change
        state.reference = indicator

    def computed(self, state: BranchState, indicator: torch.Tensor) -> None:
        state.distance = torch.zeros_like(state.distance) if state.distance is not None else None


class FirstBlockPolicy:
    """First-block cache: relative L1 change of block 0's residual since the last fully computed evaluation."""

    name = "first-block"
    cached_from = 1  # block 0 always runs

    def inputs_and_indicators(self, dit, video, audio, video_mod, audio_mod, ctx, layout):
        first = dit.run_blocks(video, audio, video_mod, audio_mod, ctx, layout, stop=1)
        return first, (first[0] - video, first[1] - audio)

    def update(self, state: BranchState, indicator: torch.Tensor) -> None:
        if state.reference is not None:
            state.distance = relative_l1(indicator, state.reference)

    def computed(self, state: BranchState, indicator: torch.Tensor) -> None:
        state.reference = indicator


class StepCache:
    """Step caching for one sampling run (see the module docstring); build a new one per run.

    Args:
        policy: ``"teacache"`` or ``"first-block"``; threshold: the skip threshold (None: the policy's
            default); steps: the run's sampler steps; first_steps / last_steps: steps always computed at
            the start / end; rescale: teacache's polynomial coefficients, highest power first (None: identity).

    The sampler calls :meth:`begin` before each evaluation; the DiT then calls the instance in place of its
    block loop.  ``records`` holds one entry per evaluation (see :meth:`report`).
    """

    def __init__(self, policy: str, threshold: Optional[float] = None, *, steps: int, first_steps: int = 1,
                 last_steps: int = 1, rescale=None):
        threshold = check_cache_settings(policy, threshold, first_steps, last_steps, rescale)
        if policy == "none":
            raise ValueError("cache: 'none' runs without a StepCache")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected a positive integer, got {steps!r}")
        self.policy = TeaCachePolicy(rescale) if policy == "teacache" else FirstBlockPolicy()
        self.threshold, self.steps, self.first_steps, self.last_steps = threshold, steps, first_steps, last_steps
        self.states = {branch: BranchState() for branch in BRANCHES}
        self.records: list[dict] = []
        self._next: Optional[dict] = None

    @classmethod
    def from_options(cls, options) -> Optional["StepCache"]:
        """The cache that ``options`` (:class:`~baton_fast.model.sampler.SamplerOptions`) asks for, or None."""
        if options.cache == "none":
            return None
        return cls(options.cache, options.cache_threshold, steps=options.steps, first_steps=options.cache_first_steps,
                   last_steps=options.cache_last_steps, rescale=options.cache_rescale)

    def begin(self, step: int, evaluation: int, sigma: float, forced: Optional[str] = None) -> None:
        """Announce evaluation ``evaluation`` (0, or 1 for Heun's corrector) of sampler step ``step`` at noise
        level ``sigma``; ``forced`` names a reason the sampler has to compute it (e.g. a layout switch)."""
        if step < self.first_steps:
            forced = "first steps"
        elif step >= self.steps - self.last_steps:
            forced = "last steps"
        self._next = dict(step=step, evaluation=evaluation, sigma=float(sigma), forced=forced)

    def __call__(self, dit, video, audio, video_mod, audio_mod, ctx, layout=None):
        """Run or skip ``dit``'s cached blocks on the tokens ``video [B, Nv, dv]``, ``audio [B, Na, da]``."""
        if self._next is None:
            raise RuntimeError("StepCache: call begin(step, evaluation, sigma) before each evaluation "
                               "(baton_fast.model.sampler.sample does)")
        entry, self._next = self._next, None
        policy, states = self.policy, [self.states[b] for b in BRANCHES]
        inputs, indicators = policy.inputs_and_indicators(dit, video, audio, video_mod, audio_mod, ctx, layout)
        for state, indicator in zip(states, indicators):
            policy.update(state, indicator)
        known = all(s.residual is not None and s.distance is not None for s in states)
        distances = (torch.stack([s.distance.max() for s in states]).tolist() if known else [math.inf] * 2)
        wants = [d >= self.threshold for d in distances]
        compute = entry["forced"] is not None or any(wants)
        if compute:
            outputs = dit.run_blocks(*inputs, video_mod, audio_mod, ctx, layout, start=policy.cached_from)
            for state, indicator, x, y in zip(states, indicators, inputs, outputs):
                state.residual = y - x
                policy.computed(state, indicator)
        else:
            outputs = tuple(x + s.residual for x, s in zip(inputs, states))
        self.records.append(dict(entry, distance=dict(zip(BRANCHES, distances)), requested=dict(zip(BRANCHES, wants)),
                                 computed=dict.fromkeys(BRANCHES, compute),
                                 blocks=len(dit.blocks) if compute else policy.cached_from))
        return outputs

    def report(self) -> dict:
        """JSON-serialisable summary: settings, evaluations and full computations, and per evaluation its step,
        sigma, why it was forced (or null), each branch's distance (max over rows; inf before a reference
        exists), whether each branch asked to compute and was computed, and the fusion blocks run."""
        computed = sum(r["computed"]["video"] for r in self.records)
        return dict(policy=self.policy.name, threshold=self.threshold, first_steps=self.first_steps,
                    last_steps=self.last_steps, rescale=getattr(self.policy, "rescale", None),
                    evaluations=len(self.records), computed=computed,
                    evaluations_per_computed=len(self.records) / computed if computed else None,
                    steps=[dict(r, distance={b: (d if math.isfinite(d) else None) for b, d in r["distance"].items()})
                           for r in self.records])
