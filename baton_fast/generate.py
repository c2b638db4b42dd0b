"""``baton-fast generate``: prompts -> mp4 with its sound track, a wav and a JSON timing report.

    baton-fast generate --video-prompt "a red ball bounces" --audio-prompt "a bouncing thud" \\
        --seconds 2 --steps 8 --preset tiny --seed 0 --out out.mp4

writes ``out.mp4``, ``out.wav`` and ``out.json``.  All three are written to temporary files first and
renamed into place only after the whole run succeeded: a failure leaves nothing at ``--out``.
The report's ``total`` runs from the subcommand's entry (after the interpreter and torch are
imported) to the files written; ``setup`` is the part before the models are built.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser) -> None:
    """Arguments of the ``generate`` subcommand (defaults: the tiny preset, Ovi's guidance)."""
    parser.add_argument("--video-prompt", required=True, help="what the video shows")
    parser.add_argument("--audio-prompt", required=True, help="what the sound track sounds like")
    parser.add_argument("--video-negative-prompt", default="", help="steers the unconditional video pass")
    parser.add_argument("--audio-negative-prompt", default="", help="steers the unconditional audio pass")
    parser.add_argument("--preset", default="tiny", help="tiny (CPU default), ovi-720p-5s or baton-paper")
    parser.add_argument("--seconds", type=float, default=2.0, help="clip duration in seconds")
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
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _outputs(out: str):
    """``(mp4, wav, json)`` paths for ``--out``; checks the suffix and that the folder is writable."""
    mp4 = Path(out)
    if mp4.suffix.lower() != ".mp4":
        raise ValueError(f"--out: expected a path ending in .mp4, got {out!r}")
    folder = mp4.parent if str(mp4.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"--out: folder {str(folder)!r} does not exist or is not writable")
    return mp4, mp4.with_suffix(".wav"), mp4.with_suffix(".json")


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


def run(args) -> int:
    entered = time.perf_counter()
    from .model.config import get_preset
    from .model.sampler import SamplerOptions

    cfg = get_preset(args.preset)
    cfg.shape(args.seconds)  # validate the duration before loading anything
    options = SamplerOptions(steps=args.steps, solver=args.solver, shift=args.shift,
                             video_guidance=args.video_guidance, audio_guidance=args.audio_guidance,
                             compile_backend=args.compile, cuda_graph=args.cuda_graph, progress=not args.no_progress)
    mp4, wav, report_path = _outputs(args.out)
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
    setup = time.perf_counter() - entered  # argument checks, meta-device memory check, transformers import
    pipeline = BatonPipeline.build(cfg, device=device, dtype=dtype, checkpoint=args.checkpoint,
                                   planner_lm=args.planner_lm, text_encoder=args.text_encoder)
    result = pipeline.generate(args.video_prompt, args.audio_prompt, seconds=args.seconds, seed=args.seed,
                               options=options, video_negative_prompt=args.video_negative_prompt,
                               audio_negative_prompt=args.audio_negative_prompt)
    t = result.report["timings_s"]
    start = time.perf_counter()
    with atomic_path(mp4) as tmp_mp4, atomic_path(wav) as tmp_wav, atomic_path(report_path) as tmp_report:
        write_mp4(tmp_mp4, result.video[0], result.fps, result.audio[0], result.sample_rate)
        write_wav(tmp_wav, result.audio[0], result.sample_rate)
        t["setup"], t["write"] = setup, time.perf_counter() - start
        t["total"] += setup + t["write"]
        result.report["files"] = {"mp4": str(mp4), "wav": str(wav), "report": str(report_path)}
        tmp_report.write_text(json.dumps(result.report, indent=2) + "\n")
    print(f"wrote {mp4}, {wav}, {report_path}: {result.report['outputs']['frames']} frames at {result.fps:g} fps, "
          f"{result.audio.shape[1] / result.sample_rate:.2f} s of audio; total {t['total']:.2f} s "
          f"(planner {t['planner']:.2f}, text {t['text_encoder']:.2f}, denoise {t['denoise']:.2f}, "
          f"decode {t['decode']:.2f})")
    return 0
