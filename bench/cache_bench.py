"""Step-caching sweep: ``run(quick)``, the ``cache`` section of ``baton-fast bench``.

Measured on this machine through :meth:`~baton_fast.model.pipeline.BatonPipeline.generate` (one prompt pair,
classifier-free guidance: every DiT evaluation runs on a batch of 2; 2 s of video; :data:`STEPS` Euler
steps), **random weights** (seed 0): the final-latent difference is a check of the mechanism, not a
statement about the quality of a trained model.  Two presets:

- ``tiny``: 2 fusion layers of width 64, where a DiT evaluation is mostly fixed per-op overhead;
- ``tiny-deep`` (:func:`deep_preset`, defined here only): the tiny preset with 6 fusion layers of width 128
  (FFN 512), where the fusion blocks dominate an evaluation, as they do at full size.

Per preset: an untimed warm-up, then per round one uncached run and one run per policy and threshold
(:data:`THRESHOLDS`); records per run: evaluations that ran every block (of all evaluations), how many times
fewer than uncached, the time spent in the DiT's forwards (wall clock and, on a CPU, process CPU time;
median over the rounds) and its speed-up over uncached, and the relative L2 distance of the final video
and audio latents to the uncached run's.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch
from tqdm.auto import tqdm

from baton_fast.model.bench import _device_and_dtype, _dit_windows, _synchronize

__all__ = ["run", "presets", "deep_preset", "SECTION", "STEPS", "SECONDS", "THRESHOLDS", "ROUNDS", "POLICIES"]

SECTION = "cache"
STEPS = 20
SECONDS = 2.0
POLICIES = ("teacache", "first-block")
THRESHOLDS = {True: (0.05, 0.1, 0.2), False: (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6)}
ROUNDS = {True: 1, False: 3}
PROMPTS = ("a red ball bounces on a wooden floor", "a rubber ball bouncing, soft thuds")
NOTES = ("random weights (seed 0): the latent difference checks the mechanism, it says nothing about quality; "
         "1 prompt pair with classifier-free guidance (DiT batch 2); DiT time = the sum over a run's DiT "
         "forwards (caching decisions included; planner, text encoder and decoder excluded), wall clock and "
         "process CPU time (on a CPU shared with other jobs the CPU time is the steadier of the two)")


def deep_preset():
    """The ``tiny`` preset with 6 fusion layers of width 128: the fusion blocks dominate an evaluation."""
    from baton_fast.model.config import get_preset

    tiny = get_preset("tiny")
    wider = dict(dim=128, num_heads=2, num_layers=6, ffn_dim=512)
    return dataclasses.replace(tiny, name="tiny-deep", video=dataclasses.replace(tiny.video, **wider),
                               audio=dataclasses.replace(tiny.audio, **wider))


def presets() -> list:
    """The presets swept, in order: ``tiny`` and :func:`deep_preset`."""
    from baton_fast.model.config import get_preset

    return [get_preset("tiny"), deep_preset()]


def _relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference.double()).norm() / reference.double().norm())


def _label(policy: str, threshold, default: bool) -> str:
    return "uncached" if policy == "none" else f"{policy}, threshold {threshold:g}" + (" (default)" * default)


class _DiTClock:
    """Wall and process CPU time spent inside the DiT's forwards (the cache's own work included)."""

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu, self._start = device, 0.0, 0.0, None

    def enter(self):
        _synchronize(self.device)
        self._start = (time.perf_counter(), time.process_time())

    def exit(self):
        _synchronize(self.device)
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]


def run(quick: bool) -> list[dict]:
    """Measure the sweep (see the module docstring); returns the records of the ``cache`` section."""
    from baton_fast.model.cache import DEFAULT_THRESHOLDS
    from baton_fast.model.pipeline import BatonPipeline
    from baton_fast.model.sampler import SamplerOptions

    if not isinstance(quick, bool):
        raise TypeError(f"quick: expected a bool, got {type(quick).__name__}")
    device, dtype = _device_and_dtype()
    where = "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"
    settings = [("none", None)] + [(p, t) for p in POLICIES
                                   for t in sorted({*THRESHOLDS[quick], DEFAULT_THRESHOLDS[p]})]
    records = []
    for cfg in presets():
        pipeline = BatonPipeline.build(cfg, device=device, dtype=dtype)

        def generate(policy, threshold):
            """``(generation, DiT wall s, DiT CPU s)`` of one run."""
            options = SamplerOptions(steps=STEPS, cache=policy, cache_threshold=threshold, progress=False)
            clock = _DiTClock(device)
            with _dit_windows(pipeline.dit, clock.enter, clock.exit):
                generation = pipeline.generate([PROMPTS[0]], [PROMPTS[1]], seconds=SECONDS, seed=0, options=options)
            return generation, clock.wall, clock.cpu

        generate("none", None)  # warm-up
        runs = {}
        for _ in range(ROUNDS[quick]):
            for setting in tqdm(settings, desc=f"cache sweep {cfg.name}", leave=False):
                runs.setdefault(setting, []).append(generate(*setting))
        reference = runs[("none", None)][0][0]
        uncached = [statistics.median(run[i] for run in runs[("none", None)]) for i in (1, 2)]
        report = reference.report
        shape = dict(preset=cfg.name, seconds=SECONDS, steps=STEPS, solver="euler", fusion_layers=cfg.video.num_layers,
                     width=cfg.video.dim, dit_batch=2, video_tokens=report["tokens"]["video"],
                     audio_tokens=report["tokens"]["audio"])
        case = f"{cfg.name}, {SECONDS:g} s, {STEPS} Euler steps"
        for (policy, threshold), timed in runs.items():
            default = policy != "none" and threshold == DEFAULT_THRESHOLDS[policy]
            last = timed[-1][0]
            evaluations = last.report["evaluations"]
            computed = last.report["cache"].get("computed", evaluations)
            wall, cpu = (statistics.median(run[i] for run in timed) for i in (1, 2))
            extra = dict(policy=policy, threshold=threshold, default=default, evaluations=evaluations,
                         rounds=len(timed), timer="perf_counter and process_time around each DiT forward",
                         torch_threads=torch.get_num_threads())

            def record(metric, value, unit):
                records.append(dict(section=SECTION, case=case, backend=_label(policy, threshold, default),
                                    device=where, kind="measured", measured=True, metric=metric, value=value,
                                    unit=unit, shape=shape, dtype=str(dtype).removeprefix("torch."), notes=NOTES,
                                    extra=extra))

            record("evaluations computed", computed, f"of {evaluations}")
            record("fewer evaluations", evaluations / computed, "x")
            record("DiT wall time", wall * 1e3, "ms")
            record("DiT wall-time speed-up", uncached[0] / wall, "x")
            if device.type == "cpu":
                record("DiT CPU time", cpu * 1e3, "ms")
                record("DiT CPU-time speed-up", uncached[1] / cpu, "x")
            record("final-latent rel. L2 (video)", _relative_l2(last.video_latents, reference.video_latents), "")
            record("final-latent rel. L2 (audio)", _relative_l2(last.audio_latents, reference.audio_latents), "")
    return records
