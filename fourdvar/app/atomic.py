"""Atomic file writes and the clean-up of what killed writers left behind.

A file ``DIR/NAME`` is written as the hidden temporary ``DIR/.NAME.XXXXXXXX.tmp``
(8 random hex digits: no two attempts share a name) and renamed onto ``DIR/NAME``
once complete, so a reader sees the old file or the new one, never half of one.
A writer killed between the two leaves its temporary; every writer of the
application (a run's result and checkpoint windows, a sweep's members and summary,
``generate``, the figures) names its temporaries the same way, so one clean-up,
:func:`remove_temporaries`, finds all of them: the next command on the same file
calls it before it writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import secrets
import signal
import threading
from pathlib import Path
from typing import Callable

__all__ = ["WriteError", "temporary_name", "remove_temporaries", "interrupts_deferred", "write_atomic", "write_file_atomic"]

_TOKEN = re.compile(r"\.[0-9a-f]{8}\.tmp")


class WriteError(OSError):
    """A file could not be written; ``str()`` is one line naming the path and why."""


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for writing it atomically (``.NAME.XXXXXXXX.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _is_temporary(name: str, of: str | None = None) -> bool:
    """Whether ``name`` is a temporary of :func:`temporary_name` (of the file named ``of``, if given)."""
    if not (name.startswith(".") and _TOKEN.fullmatch(name[-13:] if len(name) > 13 else "")):
        return False
    return of is None or name[1:-13] == of


def remove_temporaries(path: str | Path, everything_in: bool = False) -> list[Path]:
    """Delete what killed writers of ``path`` left (its ``.NAME.XXXXXXXX.tmp`` files);
    with ``everything_in``, ``path`` is a directory and every temporary in it goes."""
    path = Path(path)
    directory, of = (path, None) if everything_in else (path.parent, path.name)
    removed = []
    if directory.is_dir():
        for leftover in directory.iterdir():
            if _is_temporary(leftover.name, of):
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed


@contextlib.contextmanager
def interrupts_deferred():
    """Hold SIGINT and SIGTERM until the block ends, then act on them as usual.

    A KeyboardInterrupt raised in the middle of a NetCDF write can leave the process
    hung at exit: the write finishes first, then the interrupt is raised.  Outside
    the main thread (a Dask worker's task) signals are not ours to hold.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {sig: signal.signal(sig, lambda number, frame: received.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def write_file_atomic(path: str | Path, write: Callable[[Path], None], size_hint: int = 0) -> Path:
    """``write(temporary)`` to a temporary file beside ``path``, then rename it onto ``path``.

    A crash leaves either the old file or the new one, never half a file; the
    directory is created if needed.  A failed write (a full disk, say) is a
    :class:`WriteError` naming the path, the space needed (``size_hint`` bytes) and
    the space free, and leaves no temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with interrupts_deferred():
            write(temporary)
            os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        raise write_error(path, size_hint, error) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_atomic(dataset, path: str | Path) -> Path:
    """Write the :class:`xarray.Dataset` ``dataset`` as NetCDF-4 to ``path`` atomically
    (:func:`write_file_atomic`)."""
    return write_file_atomic(path, lambda temporary: dataset.to_netcdf(temporary, engine="netcdf4"), dataset.nbytes)


def write_error(path: Path, needed: int, error: Exception) -> WriteError:
    """The one-line :class:`WriteError` of a failed write of ``needed`` bytes to ``path``."""
    try:
        status = os.statvfs(path.parent)
        free = status.f_bavail * status.f_frsize
    except OSError:
        free = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < needed + (1 << 16))
    if full:
        space = f"needs about {_size(needed)}, {_size(free) if free is not None else 'unknown'} free"
        return WriteError(errno.ENOSPC, f"cannot write {path}: no space left on the device ({space})")
    reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:200]
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        reason += f" (the file-size limit, ulimit -f, is {_size(limit)})"
    return WriteError(getattr(error, "errno", None) or errno.EIO, f"cannot write {path}: {reason}")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
