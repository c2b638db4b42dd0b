"""Prompts -> VA-Planner -> text encoder -> flow-matching sampler -> decode, with a timing report.

Classifier-free guidance batches the conditional and unconditional passes: the planner and the text
encoder read the prompts and the negative prompts together, and every DiT evaluation runs on
``[cond; uncond]``.  The unconditional pass is steered by the plan of the negative prompts.

With a ``layout`` (a SpA2V :class:`~baton_fast.spatial.vsl.VSL`), the video prompts are grounded
(object names appended when missing) and the first steps run with layout masks
(:mod:`baton_fast.spatial.grounding`, :mod:`baton_fast.model.layout`).
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from .checkpoint import load_checkpoint
from .config import BatonConfig
from .decode import Decoder
from .dit import DualBranchDiT
from .cache import StepCache
from .layout import DEFAULT_LAYOUT_FRACTION
from .planner import VAPlanner, load_language_model
from .sampler import GuidedVelocity, SamplerOptions, compile_blocks, full_precision_difference, sample
from .text_encoder import TextEncoder

__all__ = ["Generation", "BatonPipeline"]


@dataclass
class Generation:
    """Output of :meth:`BatonPipeline.generate` for a batch of ``B`` prompt pairs.

    Attributes:
        video: uint8 ``[B, T, H, W, 3]``; audio: float32 ``[B, samples]`` in ``[-1, 1]``.
        video_latents, audio_latents: the denoised latents (float32).
        report: the timing report (JSON-serialisable; see ``docs/model.md``).
    """

    video: torch.Tensor
    audio: torch.Tensor
    fps: float
    sample_rate: int
    video_latents: torch.Tensor
    audio_latents: torch.Tensor
    report: dict = field(default_factory=dict)


class _Stopwatch:
    """Wall-clock sections; synchronises CUDA before each reading so GPU work is attributed correctly."""

    def __init__(self, device: torch.device):
        self.device = device
        self.last = self.start = self.now()

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> float:
        now = self.now()
        elapsed, self.last = now - self.last, now
        return elapsed


def peak_memory(device: torch.device) -> dict:
    """Peak memory so far: CUDA allocator peak on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_memory_kind": "cuda_max_allocated"}
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process_max_rss"}


class BatonPipeline:
    """The whole generation path.  Build with :meth:`build`; call :meth:`generate`."""

    def __init__(self, cfg: BatonConfig, dit: DualBranchDiT, text_encoder: TextEncoder,
                 planner: Optional[VAPlanner] = None, decoder: Optional[Decoder] = None):
        _check_text_width(cfg, text_encoder)
        self.cfg, self.dit, self.text_encoder, self.planner = cfg, dit, text_encoder, planner
        self.decoder = decoder if decoder is not None else Decoder(cfg)
        self.build_seconds = 0.0
        self.compiled_backend = None  # torch.compile backend of the blocks, once compiled (stays for later runs)

    @classmethod
    def build(cls, cfg: BatonConfig, *, device="cpu", dtype=torch.float32, checkpoint=None, planner_lm=None,
              text_encoder=None, init_seed: int = 0, video_vae=None, audio_vae=None) -> "BatonPipeline":
        """Instantiate every part on ``device`` in ``dtype``.

        Weights are random (seeded by ``init_seed``) unless ``checkpoint`` (a folder from
        :func:`save_checkpoint`) is given; ``planner_lm`` is a local causal-LM folder (default: the
        preset's Qwen3 configuration, random, as :class:`~baton_fast.model.qwen3.Qwen3LM` with the MiniLM
        tokenizer: neither imports ``transformers``); ``text_encoder`` a local encoder folder (default: MiniLM-L6).
        """
        start = time.perf_counter()
        device = torch.device(device)
        encoder = TextEncoder(text_encoder, max_tokens=cfg.text_max_tokens).to(device, dtype).eval()
        _check_text_width(cfg, encoder)  # before building the big parts
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
            torch.manual_seed(init_seed)
            planner = None
            if cfg.planner is not None:
                lm, tokenizer = load_language_model(planner_lm) if planner_lm is not None else (None, None)
                planner = VAPlanner(cfg, lm, tokenizer)  # default: planner.default_language_model / default_tokenizer
            dit = DualBranchDiT(cfg)
        if checkpoint is not None:
            load_checkpoint(checkpoint, cfg, dit, planner)
        pipeline = cls(cfg, dit.to(device, dtype).eval(), encoder,
                       planner.to(device, dtype).eval() if planner is not None else None,
                       Decoder(cfg, video_vae, audio_vae))
        pipeline.build_seconds = time.perf_counter() - start
        return pipeline

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @torch.inference_mode()
    def generate(self, video_prompts, audio_prompts, *, seconds: float, seed: int = 0,
                 options: SamplerOptions = SamplerOptions(), video_negative_prompt: str = "",
                 audio_negative_prompt: str = "", layout=None,
                 layout_fraction: float = DEFAULT_LAYOUT_FRACTION, on_phase=None, mesh=None) -> Generation:
        """Generate ``len(video_prompts)`` clips of ``seconds`` (rounded down to whole video frames) with
        their sound tracks, as long as the video to the sample.

        ``layout``: an optional VSL that every clip follows, applied as layout masks during the first
        ``layout_fraction`` of the steps.  The same ``seed`` (and the same weights) gives the same output.
        ``on_phase(name)``, when given, is called as each phase starts: ``"planner"``, ``"text encoder"``,
        ``"prepare"``, ``"denoise"``, ``"decode"`` (a progress display).
        ``mesh``: a :class:`~baton_fast.distributed.SequenceMesh`: every rank of it calls with the same arguments
        and the DiT runs sharded over it (``docs/distributed.md``); every rank returns the whole result.
        """
        cfg, device = self.cfg, self.device
        if mesh is not None and (options.cache != "none" or options.cuda_graph or options.compile_backend):
            raise ValueError("mesh: a sequence-parallel run takes no step cache, CUDA graph or torch.compile "
                             "(options.cache, options.cuda_graph, options.compile_backend)")
        video_prompts, audio_prompts = _prompts("video_prompts", video_prompts), _prompts("audio_prompts", audio_prompts)
        if len(audio_prompts) != len(video_prompts):
            raise ValueError(f"audio_prompts: expected {len(video_prompts)} prompts (one per video prompt), "
                             f"got {len(audio_prompts)}")
        for name, value in (("video_negative_prompt", video_negative_prompt),
                            ("audio_negative_prompt", audio_negative_prompt)):
            if not isinstance(value, str):
                raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
        shape = cfg.shape(seconds)
        B = len(video_prompts)
        if layout is not None:
            from baton_fast.spatial.grounding import ground_prompt, layout_names
            video_prompts = [ground_prompt(prompt, layout_names(layout)) for prompt in video_prompts]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        clock = _Stopwatch(device)
        timings = {"build": self.build_seconds}

        on_phase = on_phase or (lambda name: None)
        on_phase("planner")
        plan = None
        if self.planner is not None:
            plan = self.planner(video_prompts + [video_negative_prompt] * B, audio_prompts + [audio_negative_prompt] * B,
                                shape)
        timings["planner"] = clock.lap()
        on_phase("text encoder")

        texts = video_prompts + audio_prompts + [video_negative_prompt] * B + [audio_negative_prompt] * B
        hidden, lens = (x.unflatten(0, (4, B)) for x in self.text_encoder(texts))  # video, audio, their negatives
        video_text, audio_text = torch.cat([hidden[0], hidden[2]]), torch.cat([hidden[1], hidden[3]])
        video_lens, audio_lens = torch.cat([lens[0], lens[2]]), torch.cat([lens[1], lens[3]])
        timings["text_encoder"] = clock.lap()
        on_phase("prepare")

        ctx = self.dit.prepare(shape, video_text, video_lens, audio_text, audio_lens, plan, mesh=mesh,
                               sparse_window=options.sparse_window)
        guidance = None
        if layout is not None:
            from baton_fast.spatial.grounding import layout_guidance
            guidance = layout_guidance(layout, cfg, shape, self.text_encoder.tokenizer, video_prompts,
                                       video_text.shape[1], max_tokens=self.text_encoder.max_tokens,
                                       fraction=layout_fraction, device=device)
        if options.compile_backend and options.compile_backend != self.compiled_backend:
            if self.compiled_backend is not None:
                raise ValueError(f"options.compile_backend: the blocks are already compiled with "
                                 f"{self.compiled_backend!r}; build a new pipeline for {options.compile_backend!r}")
            compile_blocks(self.dit, options.compile_backend)
            self.compiled_backend = options.compile_backend
        timings["prepare"] = clock.lap()
        on_phase("denoise")

        generator = torch.Generator(device).manual_seed(seed)
        video_noise = torch.randn((B, *shape.video_latent), generator=generator, device=device)
        audio_noise = torch.randn((B, shape.audio_latents, cfg.audio.latent_channels), generator=generator,
                                  device=device)
        cache = StepCache.from_options(options)
        velocity = GuidedVelocity(self.dit, ctx, options.video_guidance, options.audio_guidance, cache)
        step_seconds = []
        video_latents, audio_latents = sample(velocity, video_noise, audio_noise, options,
                                              on_step=lambda i: step_seconds.append(clock.lap()), layout=guidance,
                                              cache=cache)
        timings["steps"] = step_seconds
        timings["denoise"] = sum(step_seconds)
        quant_report = None
        if options.quant is not None:  # the same run all in full precision, for the report
            reference = GuidedVelocity(self.dit, ctx, options.video_guidance, options.audio_guidance,
                                       StepCache.from_options(options))
            quant_report = full_precision_difference(reference, video_noise, audio_noise, options, video_latents,
                                                     audio_latents, layout=guidance, cache=reference.cache)
            timings["denoise_full_precision"] = clock.lap()

        on_phase("decode")
        # the decoders cover the latents (1 + tc * (F - 1) frames, L * samples_per_latent samples); the clip
        # is shape.frames long and its sound track as long, to the sample (BatonConfig.shape)
        video = self.decoder.video(video_latents)[:, :shape.frames].contiguous()
        audio = self.decoder.audio(audio_latents)[:, :shape.audio_samples].contiguous()
        timings["decode"] = clock.lap()
        timings["total"] = timings["build"] + (clock.last - clock.start)

        report = {
            "preset": cfg.name, "device": str(device), "dtype": str(self.dit.dtype).removeprefix("torch."),
            "attention_backend": _backend(device), "batch": B, "seconds": shape.seconds, "steps": options.steps,
            "solver": options.solver, "evaluations": options.evaluations,
            "tokens": {"video": shape.video_tokens, "audio": shape.audio_latents // cfg.audio.patch[0],
                       "text": int(hidden.shape[2]),
                       "video_plan": 0 if plan is None else plan.video.shape[1],
                       "audio_plan": 0 if plan is None else plan.audio.shape[1]},
            "outputs": {"frames": video.shape[1], "height": video.shape[2], "width": video.shape[3],
                        "fps": cfg.video_format.fps, "audio_samples": audio.shape[1],
                        "sample_rate": cfg.audio_format.sample_rate,
                        "video_seconds": video.shape[1] / cfg.video_format.fps,
                        "audio_seconds": audio.shape[1] / cfg.audio_format.sample_rate},
            "timings_s": timings, **peak_memory(device),
        }
        blocks = len(self.dit.blocks)
        if guidance is not None:
            masked_steps = range(guidance.masked_steps(options.steps))
            report["layout"] = dict(_layout_report(layout, guidance, video_prompts, options.steps),
                                    self_attention=guidance.block_report(_evaluations(options, masked_steps), blocks))
        report["cache"] = cache.report() if cache is not None else {"policy": "none"}
        if quant_report is not None:
            report["quant"] = quant_report
        if ctx.sparsity is not None:
            report["sparse_attention"] = dict(ctx.sparsity.report(_evaluations(options, options.sparse_steps), blocks),
                                              dense_steps=options.sparse_dense_steps, sparse_steps=options.sparse_steps)
        if mesh is not None:
            report["sequence_parallel"] = {"degree": mesh.size, "ulysses": mesh.ulysses_degree,
                                           "ring": mesh.ring_degree}
        return Generation(video, audio, cfg.video_format.fps, cfg.audio_format.sample_rate, video_latents.cpu(),
                          audio_latents.cpu(), report)


def _evaluations(options, steps) -> int:
    """DiT evaluations of the sampling ``steps`` (indices): one per Euler step, two per Heun step but the last."""
    return sum(1 if options.solver == "euler" or i + 1 == options.steps else 2 for i in steps)


def _layout_report(layout, guidance, video_prompts, steps: int) -> dict:
    """What the layout masks did: grounded prompts, masked steps, and per group bit (0 background, ``i + 1``
    object ``i``) its video tokens and its phrase tokens in each prompt."""
    from baton_fast.spatial.grounding import layout_names

    video_groups, text_groups = guidance.video_groups[0].cpu(), guidance.text_groups[:len(video_prompts)].cpu()
    groups = []
    for bit, name in enumerate(["background", *layout_names(layout)]):
        entry = {"bit": bit, "name": name, "video_tokens": int(((video_groups >> bit) & 1).sum())}
        if bit:
            entry["phrase_tokens"] = [int(((row != -1) & (((row >> bit) & 1) == 1)).sum()) for row in text_groups]
        groups.append(entry)
    return {"video_prompts": video_prompts, "fraction": guidance.fraction,
            "masked_steps": guidance.masked_steps(steps), "groups": groups}


def _check_text_width(cfg: BatonConfig, encoder: TextEncoder) -> None:
    if encoder.hidden_size != cfg.text_dim:
        raise ValueError(f"text_encoder: preset {cfg.name!r} reads text states of width {cfg.text_dim}, "
                         f"the encoder gives {encoder.hidden_size}")


def _prompts(name: str, prompts) -> list:
    """A prompt or a non-empty list of prompts, as a list of strings."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name}: expected a string or a non-empty list of strings, got {prompts!r}")
    return list(prompts)


def _backend(device: torch.device) -> str:
    from baton_fast.ops import backend_for
    return backend_for(device)

