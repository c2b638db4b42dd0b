"""``baton-fast`` command line: one subcommand per module, imported only when used.

Every failure the user can fix ends in one line on stderr, ``baton-fast SUBCOMMAND: error: --flag: what
was expected``, and exit status 2: argparse's own errors (bad type, unknown choice, missing flag) and the
``ValueError`` / ``TypeError`` / ``OSError`` a subcommand raises (their messages start with the flag).
Ctrl-C prints ``baton-fast SUBCOMMAND: interrupted`` and exits with 130; the subcommands write their
outputs atomically, so an interrupted run leaves nothing behind.
"""
from __future__ import annotations

import argparse
import importlib
import math
import re
import sys

# subcommand -> (module that defines add_arguments(parser) and run(args) -> int, help)
SUBCOMMANDS = {
    "bench": ("baton_fast.bench.runner", "benchmarks: cost model, attention backends, machine code; results.json, report, plots"),
    "selftest": ("baton_fast.selftest", "check every kernel against the float64 reference (and --static machine code)"),
    "generate": ("baton_fast.generate", "prompts -> mp4 with its sound track, wav and JSON timing report (Baton pipeline)"),
    "plan-layout": ("baton_fast.spatial.cli", "plan a video scene layout (boxes per keyframe) from a stereo recording"),
    "gpu-check": ("baton_fast.gpu_check.command", "on a CUDA GPU: native numerics of every kernel and shipped tile, "
                  "CUDA-graph replay, attention timings; results JSON for bench.report"),
}

USAGE_ERROR, INTERRUPTED = 2, 130  # exit statuses


class UsageError(Exception):
    """A bad command line, reported as one line (see the module docstring)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every default, except where the help text already says it or there is none."""

    def _get_help_string(self, action):
        no_default = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
        if no_default or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`UsageError` with the flag first (``--steps: invalid int value``)."""

    def error(self, message):
        raise UsageError(self.prog, flag_first(message))


def flag_first(message: str) -> str:
    """argparse's wording with the flag first: ``argument --steps: x`` -> ``--steps: x``,
    ``the following arguments are required: --out`` -> ``--out: required``."""
    if match := re.fullmatch(r"argument ([^:]+): (.*)", message, re.S):
        return f"{match[1].split('/')[-1]}: {match[2].replace('argument ', '')}"
    if match := re.fullmatch(r"the following arguments are required: (.*)", message, re.S):
        return f"{match[1]}: required"
    return message


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--threads``, ``--max-sources``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf``, which ``float`` takes, are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _parser(argv) -> tuple[Parser, dict]:
    parser = Parser(prog="baton-fast", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    subparsers = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = subparsers[name] = sub.add_parser(name, help=help_text, formatter_class=DefaultsHelpFormatter)
        p.set_defaults(_module=module)
        if name in argv[:1]:  # only the chosen subcommand's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser, subparsers


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = f"baton-fast {argv[0]}" if argv and argv[0] in SUBCOMMANDS else "baton-fast"
    try:
        parser, subparsers = _parser(argv)
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            subparsers[args.command].error(f"{unknown[0]}: unrecognized argument")
        return importlib.import_module(args._module).run(args) or 0
    except UsageError as err:
        print(f"{err.prog}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except (ValueError, TypeError, OSError) as err:  # user errors: one line, named by the subcommand's flag
        print(f"{prog}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _close_progress_bars() -> None:
    """End the progress bars an interruption left open, so that the message gets a line of its own."""
    if "tqdm" in sys.modules:
        for bar in list(sys.modules["tqdm"].tqdm._instances):
            bar.close()


if __name__ == "__main__":
    sys.exit(main())
