"""``baton-fast`` command line: one subcommand per module, imported only when used."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module that defines add_arguments(parser) and run(args) -> int, help)
SUBCOMMANDS = {
    "bench": ("baton_fast.bench.runner", "benchmarks: cost model, attention backends, machine code; results.json, report, plots"),
    "selftest": ("baton_fast.selftest", "check every kernel against the float64 reference (and --static machine code)"),
    "generate": ("baton_fast.generate", "prompts -> mp4 with its sound track, wav and JSON timing report (Baton pipeline)"),
    "plan-layout": ("baton_fast.spatial.cli", "plan a video scene layout (boxes per keyframe) from a stereo recording"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="baton-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module)
        if name in argv[:1]:  # only the chosen subcommand's module is imported
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(args._module).run(args) or 0
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:  # user errors: one line, non-zero exit
        print(f"baton-fast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
