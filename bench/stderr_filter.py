"""Drop the lines a C library prints on the process's stderr that the user has no use for.

The torch profiler (kineto), which the memory measurements use, writes ``USDT: ... profiler_start`` /
``profiler_stop`` lines straight to file descriptor 2 at every start and stop, whatever its log level.
:func:`filtered_stderr` points descriptor 2 at a pipe for the duration of a block and forwards everything
else (progress bars included) to the real stderr as it arrives.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

__all__ = ["filtered_stderr", "NOISE_PREFIX"]

NOISE_PREFIX = b"USDT:"  # kineto's lines: "USDT:<date> <time> <pid>:<tid> <file>:<line>] profiler_start"


def _forward(read_fd: int, write_fd: int) -> None:
    """Copy ``read_fd`` to ``write_fd`` until EOF, without the lines that start with :data:`NOISE_PREFIX`.
    Output is passed on as it arrives (progress bars redraw with ``\\r``, without newlines); only the start
    of a line that may still turn out to be such a line waits for more input."""
    held, at_line_start = b"", True
    while chunk := os.read(read_fd, 65536):
        for piece in re.split(rb"(?<=[\n\r])", chunk):  # pieces end at a line break, but maybe the last
            if not held and not at_line_start:
                os.write(write_fd, piece)
                at_line_start = piece.endswith((b"\n", b"\r"))
                continue
            held += piece
            if held.startswith(NOISE_PREFIX):
                if held.endswith(b"\n"):
                    held, at_line_start = b"", True
            elif not NOISE_PREFIX.startswith(held):
                os.write(write_fd, held)
                held, at_line_start = b"", held.endswith((b"\n", b"\r"))
    os.write(write_fd, held)


@contextlib.contextmanager
def filtered_stderr():
    """Within the block, the lines of file descriptor 2 that start with :data:`NOISE_PREFIX` are dropped;
    the rest is passed on (child processes started in the block write through the filter too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    forwarder = threading.Thread(target=_forward, args=(read_fd, saved), daemon=True)
    forwarder.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end here: the forwarder reads EOF
        forwarder.join()
        os.close(read_fd)
        os.close(saved)
