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

__all__ = ["filtered_stderr", "NOISE"]

# kineto's lines, "USDT:<date> <time> <pid>:<tid> <file>:<line>] profiler_start", which may follow a progress bar's
# text on the same line (tqdm ends nothing with a line break), and the profiler's allocator warning
NOISE = re.compile(rb"USDT:\d{4}-\d\d-\d\d [^\n]*\n|\[W\d{4} [^\n]*Memory block of unknown size[^\n]*\n")
_MARKERS = (b"USDT:", b"[W")


def _unfinished_noise_start(buf: bytes) -> int:
    """Where the part of ``buf`` starts that may still become a noise line (a marker with no line break after
    it, or the start of a marker cut at the end); ``len(buf)`` when nothing needs holding back."""
    starts = [i for i in (buf.rfind(m) for m in _MARKERS) if i >= 0 and b"\n" not in buf[i:]]
    starts += [len(buf) - k for m in _MARKERS for k in range(1, len(m)) if buf.endswith(m[:k])]
    return min(starts, default=len(buf))


def _forward(read_fd: int, write_fd: int) -> None:
    """Copy ``read_fd`` to ``write_fd`` until EOF, without :data:`NOISE`.  Output is passed on as it arrives
    (progress bars redraw with ``\\r``, without newlines); only what may still turn out to be noise waits."""
    held = b""
    while chunk := os.read(read_fd, 65536):
        held = NOISE.sub(b"", held + chunk)
        cut = _unfinished_noise_start(held)
        os.write(write_fd, held[:cut])
        held = held[cut:]
    os.write(write_fd, NOISE.sub(b"", held))


@contextlib.contextmanager
def filtered_stderr():
    """Within the block, :data:`NOISE` is dropped from file descriptor 2;
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
        os.dup2(saved, 2)  # closes this process's write end of the pipe: the forwarder reads EOF ...
        forwarder.join(timeout=2.0)
        if not forwarder.is_alive():  # ... unless a child that outlives the block (a forkserver) holds one:
            os.close(read_fd)  # then the forwarder (a daemon thread) keeps passing that child's lines on
            os.close(saved)
