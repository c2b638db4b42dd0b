"""``baton-fast plan-layout``: stereo recording -> Video Scene Layout JSON (and a boxes PNG).

The output paths are checked before the recording is read, and the JSON and the PNG are written as one
set (:mod:`baton_fast.outputs`): a failure leaves neither behind.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli import finite_float, positive_int

    parser.add_argument("audio", help="recording to plan from (wav, or anything PyAV decodes); stereo for positions")
    parser.add_argument("--out", required=True, help="where to write the VSL JSON")
    parser.add_argument("--png", help="also draw the boxes per keyframe to this PNG")
    parser.add_argument("--names", default="",
                        help="comma-separated object names, loudest source first (none given: 'sound source')")
    parser.add_argument("--fps", type=finite_float, default=6.0, help="keyframes per second")
    parser.add_argument("--mic-spacing", type=finite_float, default=0.2,
                        help="metres between the recording's two microphones (default 0.2: a spaced pair, about a head)")
    parser.add_argument("--max-sources", type=positive_int, default=4, help="keep at most this many sources")


def run(args: argparse.Namespace) -> int:
    from ..outputs import atomic_paths, check_outputs
    from .cues import load_audio, spatial_cues
    from .planner import CuePlanner

    files = {"out": check_outputs("--out", [args.out])[0]}
    if args.png:
        if not args.png.lower().endswith(".png"):
            raise ValueError(f"--png: expected a path ending in .png, got {args.png!r}")
        files["png"] = check_outputs("--png", [args.png])[0]
    if len(set(files.values())) < len(files):
        raise ValueError("--png: the same path as --out")
    names = [name.strip() for name in args.names.split(",") if name.strip()]
    try:  # --max-sources is checked by its type; what the planner can still refuse is the fps
        planner = CuePlanner(fps=args.fps, max_sources=args.max_sources)
    except ValueError as err:
        raise ValueError(f"--fps: {err}") from None
    try:
        cues = spatial_cues(*load_audio(args.audio), mic_spacing=args.mic_spacing)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"audio: {err}") from None
    vsl = planner.plan(cues, names)
    with atomic_paths(files) as tmp:
        vsl.save(tmp["out"])
        if args.png:
            from .draw import draw_vsl

            draw_vsl(vsl, tmp["png"])
    print(f"{args.audio}: {'stereo' if cues.is_stereo else 'mono (no spatial cue)'}, {cues.duration:.2f} s, "
          f"{len(vsl.object_ids())} source(s), {len(vsl.frames)} keyframes")
    print(vsl.caption)
    print(f"wrote {', '.join(map(str, files.values()))}")
    return 0
