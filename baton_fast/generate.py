"""``baton-fast generate``: prompts -> mp4 with its sound track, a wav and a JSON timing report.

    baton-fast generate --video-prompt "a red ball bounces" --audio-prompt "a bouncing thud" \\
        --seconds 2 --steps 8 --preset tiny --seed 0 --out out.mp4

writes ``out.mp4``, ``out.wav`` and ``out.json``.

SpA2V grounding (``docs/spatial.md``)::

    baton-fast generate --audio stereo.wav --layout auto --names dog,car --out out.mp4

plans a video scene layout from the recording (``--layout auto``, the default with ``--audio``; or
``--layout vsl.json``), generates a clip of a span of the recording (from ``--offset``, ``--seconds``
long; by default the rest of the recording up to the preset's cap ``max_seconds``) with layout masks
during the first ``--layout-fraction`` of the steps, muxes that span of the **input** recording (not the
generated sound track, which goes to ``out.wav``) into ``out.mp4``, and also writes ``out.vsl.json`` and
``out.boxes.png``.  The prompts default to the layout's caption.

Every argument and output path is checked before any work; the files are written to temporary files
and moved into place together only after the whole run succeeded (:mod:`baton_fast.outputs`): a failure
or Ctrl-C leaves nothing at ``--out``.
The report's ``total`` runs from the subcommand's entry (after the interpreter and torch are
imported) to the files written; ``setup`` is the part before the models are built.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

from .model.layout import DEFAULT_LAYOUT_FRACTION

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    """Arguments of the ``generate`` subcommand (defaults: the tiny preset, Ovi's guidance)."""
    from .cli import finite_float, positive_int
    from .model.cache import DEFAULT_THRESHOLDS, POLICIES
    from .model.config import PRESETS
    from .kernels.quant_formats import SCHEMES
    from .model.sampler import SOLVERS

    caps = ", ".join(f"{name} {cfg.max_seconds:g} s" for name, cfg in PRESETS.items())
    parser.add_argument("--video-prompt", help="what the video shows (with a layout, its caption when left out)")
    parser.add_argument("--audio-prompt", help="what the sound track sounds like (with a layout, its caption when left out)")
    parser.add_argument("--video-negative-prompt", default="", help="steers the unconditional video pass")
    parser.add_argument("--audio-negative-prompt", default="", help="steers the unconditional audio pass")
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS),
                        help="model size: tiny runs on a CPU in seconds, the others are full size")
    parser.add_argument("--seconds", type=finite_float, default=None,
                        help=f"clip duration, rounded down to whole video frames (default 2; with --audio the recording "
                             f"from --offset on, up to the preset's cap: {caps})")
    parser.add_argument("--offset", type=finite_float, default=0.0,
                        help="--audio: start of the span used, in seconds into the recording")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps")
    parser.add_argument("--solver", default="euler", choices=SOLVERS, help="euler, or heun (second order)")
    parser.add_argument("--shift", type=finite_float, default=5.0, help="flow-matching timestep shift")
    parser.add_argument("--video-guidance", type=finite_float, default=4.0, help="CFG scale of the video branch")
    parser.add_argument("--audio-guidance", type=finite_float, default=3.0, help="CFG scale of the audio branch")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same output)")
    parser.add_argument("--out", required=True, help="output .mp4; the .wav and .json go next to it")
    parser.add_argument("--checkpoint", help="folder with dit.safetensors (and planner.safetensors)")
    parser.add_argument("--planner-lm", help="local transformers causal-LM folder for the VA-Planner")
    parser.add_argument("--text-encoder", help="local transformers encoder folder (default: MiniLM-L6)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES),
                        help="weights and activations (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                        help="torch CPU threads (the tiny preset's small matrices run fastest on one thread, "
                             "more so on a loaded machine)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile each fusion block (regional; BACKEND inductor when not given)")
    parser.add_argument("--cuda-graph", action="store_true", help="replay each denoise step from a CUDA graph (CUDA)")
    parser.add_argument("--sp-degree", type=positive_int, default=1, metavar="N",
                        help="sequence parallelism over N ranks: run under torchrun --nproc-per-node N; the video "
                             "tokens are split (docs/distributed.md) and rank 0 writes the files")
    parser.add_argument("--cache", default="none", choices=POLICIES,
                        help="step caching: skip the fusion blocks on evaluations whose input changed little "
                             "(docs/model.md)")
    parser.add_argument("--cache-threshold", type=finite_float, default=None,
                        help=f"--cache: skip while the change stays below this (default "
                             f"{', '.join(f'{p} {t:g}' for p, t in DEFAULT_THRESHOLDS.items())})")
    parser.add_argument("--quant", default=None, choices=SCHEMES,
                        help="quantised attention between the first and last --quant-full-steps steps "
                             "(docs/quantization.md); the report compares the final latents with a full-precision run")
    parser.add_argument("--quant-full-steps", type=int, default=1, metavar="N",
                        help="--quant: steps in full precision at the start and at the end (default 1)")
    parser.add_argument("--sparse-window", type=_sparse_window, default=None, metavar="T,H,W",
                        help="sliding-tile video self-attention: window in tiles of 2x4x4 latent tokens, three odd "
                             "numbers (docs/sparsity.md; default: dense); the report counts the key blocks visited")
    parser.add_argument("--sparse-dense-steps", type=int, default=0, metavar="N",
                        help="--sparse-window: dense steps before the sparse ones (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    spatial = parser.add_argument_group("SpA2V layout grounding")
    spatial.add_argument("--audio", help="recording (stereo for positions): plans the layout and is muxed into the mp4")
    spatial.add_argument("--layout", help="'auto' (plan from --audio; the default with --audio) or a VSL JSON file")
    spatial.add_argument("--names", help="--layout auto: comma-separated object names, loudest source first "
                                         "(default: the phrases of --video-prompt)")
    spatial.add_argument("--layout-fraction", type=finite_float, default=None,
                         help=f"share of the sampling steps run with layout masks (default {DEFAULT_LAYOUT_FRACTION})")
    spatial.add_argument("--layout-fps", type=finite_float, default=6.0, help="--layout auto: keyframes per second")
    spatial.add_argument("--mic-spacing", type=finite_float, default=None,
                         help=f"--layout auto: metres between the recording's two microphones, as plan-layout's "
                              f"(default {DEFAULT_MIC_SPACING}: a spaced pair, about a head)")


DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_MIC_SPACING = 0.2  # m, spatial.cues.DEFAULT_MIC_SPACING (not imported here: it pulls in scipy)
DEFAULT_THREADS = 1
SEED_RANGE = 2 ** 63  # torch.Generator.manual_seed takes [0, 2^63) for every seed this CLI gives it


AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def _outputs(out: str, with_layout: bool) -> dict:
    """``{name: path}`` of every file the run writes for ``--out``, each checked (suffix, folder, not a
    directory) before any work."""
    from .outputs import check_outputs

    mp4 = Path(out)
    if mp4.suffix.lower() != ".mp4":
        raise ValueError(f"--out: expected a path ending in .mp4, got {out!r}")
    files = {"mp4": mp4, "wav": mp4.with_suffix(".wav"), "report": mp4.with_suffix(".json")}
    if with_layout:
        files.update(vsl=mp4.with_suffix(".vsl.json"), boxes_png=mp4.with_suffix(".boxes.png"))
    check_outputs("--out", files.values())
    return files


def _flag_error(err: Exception) -> Exception:
    """A library error naming its argument (``steps: ...``) re-worded for the command line (``--steps: ...``)."""
    message = re.sub(r"^([a-z_]+):", lambda m: "--" + m[1].replace("_", "-") + ":", str(err))
    return type(err)(message)


class Recording(NamedTuple):
    """The span of ``--audio`` used: float64 ``[channels, samples]`` in ``[-1, 1]``, its rate, where it starts
    in the recording, how long it and the whole recording are (seconds), and whether the preset's cap
    shortened it."""

    waveform: object
    sample_rate: int
    offset: float
    seconds: float
    total: float
    capped: bool

    def describe(self, cfg) -> str:
        """What was used, e.g. ``0.00-4.00 s of the 7.31 s recording (...caps at 4 s...)``."""
        cap = (f" (preset {cfg.name!r} generates at most {cfg.max_seconds:g} s; pick the span with --offset "
               f"and --seconds)" if self.capped else "")
        return f"{self.offset:.2f}-{self.offset + self.seconds:.2f} s of the {self.total:.2f} s recording{cap}"


def _recording(path: str, cfg, offset: float, seconds) -> Recording:
    """The span of ``--audio`` that the clip covers: from ``offset``, ``seconds`` long (default the rest of
    the recording up to ``cfg.max_seconds``), rounded down to whole video frames."""
    from .spatial.cues import check_waveform, load_audio

    try:
        waveform, rate = check_waveform(*load_audio(path))
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--audio: {err}") from err
    total = waveform.shape[1] / rate
    if not 0 <= offset < total:
        raise ValueError(f"--offset: expected a start in [0, {total:.2f}) s (the recording's length), got {offset:g}")
    available = total - offset
    capped = seconds is None and available > cfg.max_seconds
    if seconds is None:
        seconds = min(available, cfg.max_seconds)
    elif seconds > available + 0.5 / rate:
        raise ValueError(f"--seconds: the recording has {available:.2f} s from --offset {offset:g} s on, "
                         f"got {seconds:g}")
    try:
        span = cfg.shape(seconds).seconds
    except ValueError as err:
        raise _flag_error(err) from None
    start = round(offset * rate)
    stop = min(waveform.shape[1], start + round(span * rate))
    return Recording(waveform[:, start:stop], rate, offset, (stop - start) / rate, total, capped)


def _mux_audio(waveform, rate: int):
    """The recording as the mp4's AAC track: float32 ``[C, samples]`` in ``[-1, 1]`` and its rate, resampled
    (polyphase) to the next AAC sample rate when ``rate`` is not one."""
    import math

    import numpy as np
    import scipy.signal
    import torch

    target = rate if rate in AAC_SAMPLE_RATES else min((r for r in AAC_SAMPLE_RATES if r > rate), default=96000)
    if target != rate:
        g = math.gcd(target, rate)
        waveform = scipy.signal.resample_poly(waveform, target // g, rate // g, axis=1)
    return torch.from_numpy(np.clip(waveform, -1.0, 1.0).astype(np.float32)), target


def _layout(args, sound: Recording | None):
    """``(vsl or None, source, fraction)``: the run's layout, where it came from ("auto" or the file) and
    the share of masked steps.  ``--layout auto`` (the default with ``--audio``) plans it from ``--audio``
    with the cue planner, naming the sources by ``--names`` or else by the phrases of ``--video-prompt``."""
    source = args.layout if args.layout is not None else ("auto" if sound is not None else None)
    fraction = DEFAULT_LAYOUT_FRACTION if args.layout_fraction is None else args.layout_fraction
    if source is None:
        for flag, value in (("--names", args.names), ("--layout-fraction", args.layout_fraction),
                            ("--mic-spacing", args.mic_spacing)):
            if value is not None:
                raise ValueError(f"{flag}: only used with --layout or --audio")
        return None, None, fraction
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--layout-fraction: expected a number in [0, 1], got {fraction}")
    if source != "auto":
        from .spatial.vsl import VSL

        for flag, value, why in (("--names", args.names, "a VSL file names its objects"),
                                 ("--mic-spacing", args.mic_spacing, "a VSL file is not planned from the recording")):
            if value is not None:
                raise ValueError(f"{flag}: only used with --layout auto ({why})")
        try:
            return VSL.load(source), source, fraction
        except (OSError, ValueError) as err:
            raise ValueError(f"--layout: {source!r}: {err}") from err
    if sound is None:
        raise ValueError("--layout auto: plans the layout from a recording; give --audio")
    from .spatial.cues import spatial_cues
    from .spatial.grounding import names_from_prompt
    from .spatial.planner import CuePlanner

    if args.names is not None:
        names = [name.strip() for name in args.names.split(",") if name.strip()]
    else:
        names = names_from_prompt(args.video_prompt) if args.video_prompt else []
    try:
        planner = CuePlanner(fps=args.layout_fps)
    except ValueError as err:
        raise ValueError(f"--layout-fps: {err}") from err
    mic_spacing = DEFAULT_MIC_SPACING if args.mic_spacing is None else args.mic_spacing
    try:
        cues = spatial_cues(sound.waveform, sound.sample_rate, mic_spacing=mic_spacing)
    except ValueError as err:
        if str(err).startswith("mic_spacing"):  # spatial_cues checks it first, as for plan-layout
            raise ValueError(f"--mic-spacing: {err}") from None
        raise
    return planner.plan(cues, names), source, fraction


def _sequence_parallel_rank(args):
    """This process's rank under ``--sp-degree N > 1`` (None for 1), checked before any work: torchrun must have
    started N processes, and the run takes no step cache, CUDA graph or torch.compile."""
    if args.sp_degree == 1:
        return None
    world = os.environ.get("WORLD_SIZE")
    if world != str(args.sp_degree) or "RANK" not in os.environ:
        raise ValueError(f"--sp-degree: expected to run under torchrun --nproc-per-node {args.sp_degree} "
                         f"(WORLD_SIZE={args.sp_degree}), got WORLD_SIZE={world}")
    if args.cache != "none" or args.cuda_graph or args.compile:
        raise ValueError("--sp-degree: not combined with --cache, --cuda-graph or --compile")
    return int(os.environ["RANK"])


def _sequence_mesh(cfg, device, degree: int):
    """The process group (NCCL on CUDA, gloo on CPU; collectives time out after 10 minutes) and the mesh: as much
    Ulysses as the heads allow, the rest as a ring."""
    import datetime

    import torch.distributed as dist

    from .distributed import init_sequence_mesh, mesh_degrees

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return init_sequence_mesh(*mesh_degrees(degree, cfg.video.num_heads))


def _device_and_dtype(device: str, dtype: str):
    """``(torch.device, torch.dtype)`` for ``--device`` / ``--dtype``: the device must exist here."""
    import torch

    expected = f"expected cpu, cuda or cuda:N, got {device!r}"
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: {expected}") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise ValueError(f"--device: {expected}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA requested but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device: {device} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    name = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return device, getattr(torch, name)


def _sparse_window(text: str) -> tuple:
    """argparse type of ``--sparse-window``: ``t,h,w`` odd integers (:func:`baton_fast.model.sparsity.parse_window`)."""
    from .model.sparsity import parse_window

    try:
        return parse_window(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _sampler_options(args):
    """``SamplerOptions`` from the flags; their checks' errors re-worded to name the flags."""
    from .model.sampler import SamplerOptions

    if args.sparse_window is not None and (args.layout or args.audio or args.sp_degree > 1):
        raise ValueError("--sparse-window: not supported with --audio / --layout (layout masks) or --sp-degree > 1")
    try:
        return SamplerOptions(steps=args.steps, solver=args.solver, shift=args.shift,
                              video_guidance=args.video_guidance, audio_guidance=args.audio_guidance,
                              compile_backend=args.compile, cuda_graph=args.cuda_graph, cache=args.cache,
                              cache_threshold=args.cache_threshold, quant=args.quant,
                              quant_full_steps=args.quant_full_steps, sparse_window=args.sparse_window,
                              sparse_dense_steps=args.sparse_dense_steps, progress=not args.no_progress)
    except (ValueError, TypeError) as err:
        raise _flag_error(err) from None


def _check_compile_backend(backend) -> None:
    if backend is None:
        return
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"--compile: expected one of {', '.join(known)}, got {backend!r}")


class _SetupProgress:
    """The set-up phase (from the arguments to the first denoising step) as one progress line on stderr."""

    def __init__(self, phases: list, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=len(phases), desc="setup", unit="phase", disable=not enabled, file=sys.stderr,
                        bar_format="{desc}: {n_fmt}/{total_fmt} phases, {elapsed}{postfix}")
        self.started = False

    def __call__(self, phase: str) -> None:
        """Mark the start of ``phase`` (the previous one is done); ``"denoise"`` ends the line."""
        if self.started:
            self.bar.update()
        self.started = True
        if phase == "denoise":
            self.bar.close()
        else:
            self.bar.set_postfix_str(phase)


def _check_memory(cfg, device, dtype) -> None:
    """Refuse presets whose weights cannot fit, before allocating them (counted from the configuration)."""
    import torch

    from .model.costs import parameter_counts

    need = parameter_counts(cfg)["total"] * dtype.itemsize
    if device.type == "cuda":
        have = torch.cuda.mem_get_info(device)[0]
    else:
        have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have:
        raise ValueError(f"--preset: {cfg.name!r} needs {need / 2**30:.1f} GiB for its weights in {dtype} on "
                         f"{device}, {have / 2**30:.1f} GiB available")


def _prompt(flag: str, value, layout) -> str:
    """``--video-prompt`` / ``--audio-prompt``, defaulting to the layout's caption."""
    if value is not None:
        return value
    if layout is None:
        raise ValueError(f"{flag}: required (or give --layout / --audio: the layout's caption is used)")
    if not layout.caption.strip():
        raise ValueError(f"{flag}: required (the layout has no caption)")
    return layout.caption


def run(args) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:  # callers in the same process (tests) keep their thread count
        torch.set_num_threads(threads)
        if args.sp_degree > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args) -> int:
    entered = time.perf_counter()
    from .model.config import get_preset

    layout_wanted = args.audio is not None or args.layout is not None
    sp_rank = _sequence_parallel_rank(args)
    progress = _SetupProgress(["arguments"] + ["layout"] * layout_wanted
                              + ["libraries", "models", "planner", "text encoder", "prepare"],
                              not args.no_progress and not sp_rank)
    progress("arguments")
    cfg = get_preset(args.preset)
    files = _outputs(args.out, layout_wanted)
    options = _sampler_options(args)
    if sp_rank:  # one progress display: rank 0's
        options = dataclasses.replace(options, progress=False)
    if not 0 <= args.seed < SEED_RANGE:
        raise ValueError(f"--seed: expected an integer in [0, 2^63), got {args.seed}")
    device, dtype = _device_and_dtype(args.device, args.dtype)
    if sp_rank is not None and device.type == "cuda":  # one GPU per rank
        import torch
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if options.cuda_graph and device.type != "cuda":
        raise ValueError("--cuda-graph: needs a CUDA device")
    _check_compile_backend(args.compile)
    for flag, path in (("--checkpoint", args.checkpoint), ("--planner-lm", args.planner_lm),
                       ("--text-encoder", args.text_encoder)):
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"{flag}: {path!r} is not a readable folder")
    if args.audio is None and args.offset:
        raise ValueError("--offset: only used with --audio")
    sound = _recording(args.audio, cfg, args.offset, args.seconds) if args.audio is not None else None
    try:
        shape = cfg.shape(sound.seconds if sound is not None else (2.0 if args.seconds is None else args.seconds))
    except ValueError as err:
        raise _flag_error(err) from None
    layout_start = time.perf_counter()
    if layout_wanted:
        progress("layout")
    layout, layout_source, layout_fraction = _layout(args, sound)
    layout_seconds = time.perf_counter() - layout_start
    video_prompt = _prompt("--video-prompt", args.video_prompt, layout)
    audio_prompt = _prompt("--audio-prompt", args.audio_prompt, layout)
    progress("libraries")
    _check_memory(cfg, device, dtype)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' too, when --planner-lm loads one
    from .model.media import write_mp4, write_wav
    from .model.pipeline import BatonPipeline
    from .outputs import atomic_paths

    setup = time.perf_counter() - entered  # argument checks, layout planning, memory check, imports
    progress("models")
    mesh = _sequence_mesh(cfg, device, args.sp_degree) if sp_rank is not None else None
    pipeline = BatonPipeline.build(cfg, device=device, dtype=dtype, checkpoint=args.checkpoint,
                                   planner_lm=args.planner_lm, text_encoder=args.text_encoder)
    result = pipeline.generate(video_prompt, audio_prompt, seconds=shape.seconds, seed=args.seed,
                               options=options, video_negative_prompt=args.video_negative_prompt,
                               audio_negative_prompt=args.audio_negative_prompt, layout=layout,
                               layout_fraction=layout_fraction, on_phase=progress, mesh=mesh)
    if sp_rank:  # every rank holds the result; rank 0 writes it
        return 0
    report, t = result.report, result.report["timings_s"]
    if sound is not None:
        track, track_rate = _mux_audio(sound.waveform, sound.sample_rate)
        report["mp4_audio"] = {"source": "input", "path": args.audio, "channels": track.shape[0],
                               "sample_rate": track_rate, "input_sample_rate": sound.sample_rate,
                               "offset": sound.offset, "seconds": sound.seconds, "recording_seconds": sound.total,
                               "wav": "the generated sound track"}
    else:
        track, track_rate = result.audio[0], result.sample_rate
        report["mp4_audio"] = {"source": "generated", "channels": 1, "sample_rate": track_rate}
    if layout is not None:
        report["layout"].update(source=layout_source, caption=layout.caption)
        if layout_source == "auto":
            report["layout"]["mic_spacing"] = DEFAULT_MIC_SPACING if args.mic_spacing is None else args.mic_spacing
        t["layout_plan"] = layout_seconds  # part of setup
    start = time.perf_counter()
    with atomic_paths(files) as tmp:
        write_mp4(tmp["mp4"], result.video[0], result.fps, track, track_rate)
        write_wav(tmp["wav"], result.audio[0], result.sample_rate)
        if layout is not None:
            from .spatial.draw import draw_vsl

            layout.save(tmp["vsl"])
            draw_vsl(layout, tmp["boxes_png"], frame_aspect=cfg.video_format.width / cfg.video_format.height)
        t["setup"], t["write"] = setup, time.perf_counter() - start
        t["total"] += setup + t["write"]
        report["files"] = {name: str(path) for name, path in files.items()}
        tmp["report"].write_text(json.dumps(report, indent=2) + "\n")
    outputs = report["outputs"]
    sound_line = (f"input audio ({track.shape[0]} ch, {sound.describe(cfg)}) muxed" if sound is not None
                  else f"{outputs['audio_seconds']:.2f} s of audio")
    print(f"wrote {', '.join(map(str, files.values()))}: {outputs['frames']} frames at {result.fps:g} fps "
          f"({outputs['video_seconds']:.2f} s), {sound_line}; {args.threads} thread(s), total {t['total']:.2f} s "
          f"(setup {t['setup']:.2f}, build {t['build']:.2f}, planner {t['planner']:.2f}, "
          f"text {t['text_encoder']:.2f}, denoise {t['denoise']:.2f}, decode {t['decode']:.2f}, "
          f"write {t['write']:.2f})")
    return 0
