"""Output files of a command: checked before any work, written atomically as a set.

:func:`check_outputs` runs first (a bad ``--out`` fails in a second, naming the flag, not after the
work); :func:`atomic_paths` then hands out temporary files next to the destinations and, once every one
is written, moves them all into place: either every destination gets its new file, or (on an error or
Ctrl-C at any point, the final moves included) none changes and no temporary file is left.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["check_outputs", "check_output_folder", "atomic_paths", "atomic_path"]


def check_outputs(flag: str, paths) -> list[Path]:
    """``paths`` as :class:`Path` objects; ``ValueError`` naming ``flag`` unless each one's folder exists
    and is writable and the path itself is not a directory (or anything but a file)."""
    paths = [Path(p) for p in paths]
    for path in paths:
        folder = path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{flag}: folder {str(folder)!r} does not exist or is not writable")
        if path.exists() and not path.is_file():
            raise ValueError(f"{flag}: {str(path)!r} exists and is not a file"
                             + (" (it is a directory)" if path.is_dir() else ""))
    return paths


def check_output_folder(flag: str, folder) -> Path:
    """``folder`` as a :class:`Path`; ``ValueError`` naming ``flag`` unless it is a writable folder or can be
    created (its nearest existing ancestor is a writable folder).  Nothing is created here."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag}: {str(existing)!r} exists and is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: folder {str(existing)!r} is not writable")
    return folder


@contextlib.contextmanager
def _temporary(destination: Path):
    """A new empty file next to ``destination`` (same suffix, so writers that go by it pick the format);
    deleted on leaving unless it was moved away."""
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=destination.suffix, dir=destination.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _commit(moves: dict) -> None:
    """``os.replace`` every temporary file in ``moves`` (temporary -> destination) onto its destination; on
    any failure put back what was there before (kept as a hard link meanwhile) and re-raise."""
    umask = os.umask(0)
    os.umask(umask)
    backups, done = {}, []
    try:
        for tmp, destination in moves.items():
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
            if destination.exists():
                backups[destination] = tmp.with_name(tmp.name + ".old")  # unique: the temporary's name is
                os.link(destination, backups[destination])
            os.replace(tmp, destination)
            done.append(destination)
    except BaseException:
        for destination in done:
            if destination in backups:
                os.replace(backups.pop(destination), destination)
            else:
                destination.unlink()
        raise
    finally:
        for backup in backups.values():
            backup.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_paths(destinations: dict):
    """Yield ``{name: temporary path}`` for ``{name: destination}``; when the block succeeds, move them all
    into place as one set (see the module docstring)."""
    destinations = {name: Path(path) for name, path in destinations.items()}
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(_temporary(path)) for name, path in destinations.items()}
        yield tmp
        _commit({tmp[name]: destinations[name] for name in destinations})


@contextlib.contextmanager
def atomic_path(destination):
    """Yield a temporary path in ``destination``'s folder; on success rename it to ``destination``,
    on error delete it."""
    with atomic_paths({"file": destination}) as tmp:
        yield tmp["file"]
