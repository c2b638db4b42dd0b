"""``baton-fast generate``: prompts -> mp4 with its sound track, a wav and a JSON timing report.

    baton-fast generate --video-prompt "a red ball bounces" --audio-prompt "a bouncing thud" \\
        --seconds 2 --steps 8 --preset tiny --seed 0 --out out.mp4

writes ``out.mp4``, ``out.wav`` and ``out.json``.

SpA2V grounding (``docs/spatial.md``)::

    baton-fast generate --audio stereo.wav --layout auto --names dog,car --out out.mp4

plans a video scene layout from the recording (``--layout auto``, the default with ``--audio``; or
``--layout vsl.json``), generates a clip of the recording's length with layout masks during the first
``--layout-fraction`` of the steps, muxes the **input** recording (not the generated sound track, which
goes to ``out.wav``) into ``out.mp4``, and also writes ``out.vsl.json`` and ``out.boxes.png``.  The
prompts default to the layout's caption.

All files are written to temporary files first and renamed into place only after the whole run
succeeded: a failure leaves nothing at ``--out``.
The report's ``total`` runs from the subcommand's entry (after the interpreter and torch are
imported) to the files written; ``setup`` is the part before the models are built.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from .model.layout import DEFAULT_LAYOUT_FRACTION

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    """Arguments of the ``generate`` subcommand (defaults: the tiny preset, Ovi's guidance)."""
    from .model.cache import DEFAULT_THRESHOLDS, POLICIES

    parser.add_argument("--video-prompt", help="what the video shows (default with a layout: its caption)")
    parser.add_argument("--audio-prompt", help="what the sound track sounds like (default with a layout: its caption)")
    parser.add_argument("--video-negative-prompt", default="", help="steers the unconditional video pass")
    parser.add_argument("--audio-negative-prompt", default="", help="steers the unconditional audio pass")
    parser.add_argument("--preset", default="tiny", help="tiny (CPU default), ovi-720p-5s or baton-paper")
    parser.add_argument("--seconds", type=float, default=None,
                        help="clip duration in seconds (default 2; with --audio the recording's length)")
    parser.add_argument("--steps", type=int, default=8, help="sampling steps")
    parser.add_argument("--solver", default="euler", help="euler or heun (second order)")
    parser.add_argument("--shift", type=float, default=5.0, help="flow-matching timestep shift")
    parser.add_argument("--video-guidance", type=float, default=4.0, help="CFG scale of the video branch")
    parser.add_argument("--audio-guidance", type=float, default=3.0, help="CFG scale of the audio branch")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same output)")
    parser.add_argument("--out", required=True, help="output .mp4; the .wav and .json go next to it")
    parser.add_argument("--checkpoint", help="folder with dit.safetensors (and planner.safetensors)")
    parser.add_argument("--planner-lm", help="local transformers causal-LM folder for the VA-Planner")
    parser.add_argument("--text-encoder", help="local transformers encoder folder (default: MiniLM-L6)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile each fusion block (regional; default backend inductor)")
    parser.add_argument("--cuda-graph", action="store_true", help="replay each denoise step from a CUDA graph (CUDA)")
    parser.add_argument("--cache", default="none", choices=POLICIES,
                        help="step caching: skip the fusion blocks on evaluations whose input changed little "
                             "(docs/model.md)")
    parser.add_argument("--cache-threshold", type=float, default=None,
                        help=f"--cache: skip while the change stays below this (default "
                             f"{', '.join(f'{p} {t:g}' for p, t in DEFAULT_THRESHOLDS.items())})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    spatial = parser.add_argument_group("SpA2V layout grounding")
    spatial.add_argument("--audio", help="recording (stereo for positions): plans the layout and is muxed into the mp4")
    spatial.add_argument("--layout", help="'auto' (plan from --audio; the default with --audio) or a VSL JSON file")
    spatial.add_argument("--names", help="--layout auto: comma-separated object names, loudest source first "
                                         "(default: the phrases of --video-prompt)")
    spatial.add_argument("--layout-fraction", type=float, default=None,
                         help=f"share of the sampling steps run with layout masks (default {DEFAULT_LAYOUT_FRACTION})")
    spatial.add_argument("--layout-fps", type=float, default=6.0,
                         help="--layout auto: keyframes per second (default 6)")


AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def _outputs(out: str):
    """``(mp4, wav, json)`` paths for ``--out``; checks the suffix and that the folder is writable."""
    mp4 = Path(out)
    if mp4.suffix.lower() != ".mp4":
        raise ValueError(f"--out: expected a path ending in .mp4, got {out!r}")
    folder = mp4.parent if str(mp4.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"--out: folder {str(folder)!r} does not exist or is not writable")
    return mp4, mp4.with_suffix(".wav"), mp4.with_suffix(".json")


class Recording(NamedTuple):
    """The ``--audio`` input: float64 ``[channels, samples]`` in ``[-1, 1]``, its rate and length."""

    waveform: object
    sample_rate: int
    seconds: float


def _recording(path: str, cfg) -> Recording:
    """Read ``--audio``; the clip must fit the preset."""
    from .spatial.cues import check_waveform, load_audio

    try:
        waveform, rate = check_waveform(*load_audio(path))
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"--audio: {err}") from err
    seconds = waveform.shape[1] / rate
    if seconds > cfg.max_seconds:
        raise ValueError(f"--audio: the recording lasts {seconds:.2f} s; preset {cfg.name!r} generates at most "
                         f"{cfg.max_seconds:g} s (trim it)")
    return Recording(waveform, rate, seconds)


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
    from .spatial.vsl import VSL

    source = args.layout if args.layout is not None else ("auto" if sound is not None else None)
    fraction = DEFAULT_LAYOUT_FRACTION if args.layout_fraction is None else args.layout_fraction
    if source is None:
        for flag, value in (("--names", args.names), ("--layout-fraction", args.layout_fraction)):
            if value is not None:
                raise ValueError(f"{flag}: only used with --layout or --audio")
        return None, None, fraction
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--layout-fraction: expected a number in [0, 1], got {fraction}")
    if source != "auto":
        if args.names is not None:
            raise ValueError("--names: only used with --layout auto (a VSL file names its objects)")
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
    return planner.plan(spatial_cues(sound.waveform, sound.sample_rate), names), source, fraction


def _device_and_dtype(device: str, dtype: str):
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA requested but no CUDA device is available")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    name = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if name not in dtypes:
        raise ValueError(f"--dtype: expected one of {', '.join(dtypes)}, got {name!r}")
    return device, dtypes[name]


def _check_memory(cfg, device, dtype) -> None:
    """Refuse presets whose weights cannot fit, before allocating them (counted on the meta device)."""
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
    entered = time.perf_counter()
    from .model.config import get_preset
    from .model.sampler import SamplerOptions

    cfg = get_preset(args.preset)
    mp4, wav, report_path = _outputs(args.out)
    sound = _recording(args.audio, cfg) if args.audio is not None else None
    if sound is not None and args.seconds is not None:
        raise ValueError(f"--seconds: the duration follows --audio ({sound.seconds:.2f} s); leave --seconds out")
    seconds = sound.seconds if sound is not None else (2.0 if args.seconds is None else args.seconds)
    cfg.shape(seconds)  # validate the duration before loading anything
    options = SamplerOptions(steps=args.steps, solver=args.solver, shift=args.shift,
                             video_guidance=args.video_guidance, audio_guidance=args.audio_guidance,
                             compile_backend=args.compile, cuda_graph=args.cuda_graph, cache=args.cache,
                             cache_threshold=args.cache_threshold, progress=not args.no_progress)
    layout_start = time.perf_counter()
    layout, layout_source, layout_fraction = _layout(args, sound)
    layout_seconds = time.perf_counter() - layout_start
    video_prompt = _prompt("--video-prompt", args.video_prompt, layout)
    audio_prompt = _prompt("--audio-prompt", args.audio_prompt, layout)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    if options.cuda_graph and device.type != "cuda":
        raise ValueError("--cuda-graph: needs a CUDA device")
    for flag, path in (("--checkpoint", args.checkpoint), ("--planner-lm", args.planner_lm),
                       ("--text-encoder", args.text_encoder)):
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"{flag}: {path!r} is not a readable folder")
    _check_memory(cfg, device, dtype)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    from .model.media import atomic_path, write_mp4, write_wav
    from .model.pipeline import BatonPipeline

    transformers.utils.logging.disable_progress_bar()
    setup = time.perf_counter() - entered  # argument checks, layout planning, memory check, transformers import
    pipeline = BatonPipeline.build(cfg, device=device, dtype=dtype, checkpoint=args.checkpoint,
                                   planner_lm=args.planner_lm, text_encoder=args.text_encoder)
    result = pipeline.generate(video_prompt, audio_prompt, seconds=seconds, seed=args.seed,
                               options=options, video_negative_prompt=args.video_negative_prompt,
                               audio_negative_prompt=args.audio_negative_prompt, layout=layout,
                               layout_fraction=layout_fraction)
    report, t = result.report, result.report["timings_s"]
    if sound is not None:
        track, track_rate = _mux_audio(sound.waveform, sound.sample_rate)
        report["mp4_audio"] = {"source": "input", "path": args.audio, "channels": track.shape[0],
                               "sample_rate": track_rate, "input_sample_rate": sound.sample_rate,
                               "seconds": sound.seconds,
                               "wav": "the generated sound track"}
    else:
        track, track_rate = result.audio[0], result.sample_rate
        report["mp4_audio"] = {"source": "generated", "channels": 1, "sample_rate": track_rate}
    files = {"mp4": mp4, "wav": wav, "report": report_path}
    if layout is not None:
        files.update(vsl=mp4.with_suffix(".vsl.json"), boxes_png=mp4.with_suffix(".boxes.png"))
        report["layout"].update(source=layout_source, caption=layout.caption)
        t["layout_plan"] = layout_seconds  # part of setup
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(path)) for name, path in files.items()}
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
    extra = f", {files['vsl']}, {files['boxes_png']}" if layout is not None else ""
    sound_line = (f"input audio ({track.shape[0]} ch, {sound.seconds:.2f} s) muxed" if sound is not None
                  else f"{result.audio.shape[1] / result.sample_rate:.2f} s of audio")
    print(f"wrote {mp4}, {wav}, {report_path}{extra}: {report['outputs']['frames']} frames at {result.fps:g} fps, "
          f"{sound_line}; total {t['total']:.2f} s (setup {t['setup']:.2f}, planner {t['planner']:.2f}, "
          f"text {t['text_encoder']:.2f}, denoise {t['denoise']:.2f}, decode {t['decode']:.2f}, "
          f"write {t['write']:.2f})")
    return 0
