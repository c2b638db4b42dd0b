"""``baton-fast plan-layout``: stereo recording -> Video Scene Layout JSON (and a boxes PNG)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="recording to plan from (wav, or anything PyAV decodes); stereo for positions")
    parser.add_argument("--out", required=True, help="where to write the VSL JSON")
    parser.add_argument("--png", help="also draw the boxes per keyframe to this PNG")
    parser.add_argument("--names", default="",
                        help="comma-separated object names, loudest source first (default: 'sound source')")
    parser.add_argument("--fps", type=float, default=6.0, help="keyframes per second (default 6)")
    parser.add_argument("--max-sources", type=int, default=4, help="keep at most this many sources (default 4)")


def run(args: argparse.Namespace) -> int:
    from .cues import load_audio, spatial_cues
    from .planner import CuePlanner

    names = [name.strip() for name in args.names.split(",") if name.strip()]
    planner = CuePlanner(fps=args.fps, max_sources=args.max_sources)
    cues = spatial_cues(*load_audio(args.audio))
    vsl = planner.plan(cues, names)
    vsl.save(args.out)
    print(f"{args.audio}: {'stereo' if cues.is_stereo else 'mono (no spatial cue)'}, {cues.duration:.2f} s, "
          f"{len(vsl.object_ids())} source(s), {len(vsl.frames)} keyframes")
    print(vsl.caption)
    print(f"wrote {args.out}")
    if args.png:
        from .draw import draw_vsl

        draw_vsl(vsl, args.png)
        print(f"wrote {args.png}")
    return 0
