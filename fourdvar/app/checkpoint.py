"""The checkpoint of a run: one file per completed window, and the lock on the output.

For the output ``DIR/NAME.nc`` the checkpoint is the directory
``DIR/NAME.checkpoint/`` holding ``cycle_000000.nc``, ``cycle_000001.nc``, ...: each
the window's record and the cycling state after it
(:func:`fourdvar.app.results.window_dataset`), written atomically once.  Saving a
window therefore costs the same at the 500th window as at the 10th.

While a run holds the checkpoint it holds an exclusive ``flock`` on the directory:
a second run on the same output is refused, and the kernel releases the lock when
the first one ends, however it ends.  On acquiring it a run removes what killed
runs left behind (temporary files), and ``--resume`` continues from the windows
there.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from .atomic import remove_temporaries, write_atomic
from .results import window_dataset, window_row

__all__ = ["Checkpoint", "CheckpointError", "checkpoint_directory"]

_WINDOW = re.compile(r"cycle_(\d{6})\.nc")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; ``str()`` is one line."""


def checkpoint_directory(output: Path) -> Path:
    """The checkpoint directory of the result file ``output``: ``out/result.nc -> out/result.checkpoint``.

    Examples
    --------
    >>> checkpoint_directory(Path("out/result.nc")).as_posix()
    'out/result.checkpoint'
    """
    return output.with_name(output.stem + ".checkpoint")


class Checkpoint:
    """The per-window checkpoint of the run writing ``output``."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.directory = checkpoint_directory(self.output)
        self._lock: int | None = None
        self._created: list[Path] = []  # directories this run created, deepest first

    # --- the lock -----------------------------------------------------------------------------

    def acquire(self) -> None:
        """Create the directory if needed and lock it; clean up after killed runs."""
        missing = self.directory
        while not missing.exists() and missing != missing.parent:
            self._created.append(missing)
            missing = missing.parent
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise CheckpointError(f"cannot create the checkpoint {self.directory}: {error.strerror}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise self._busy() from None
        if os.fstat(descriptor).st_ino != os.stat(self.directory).st_ino:  # removed by the run that just finished
            os.close(descriptor)
            return self.acquire()
        self._lock = descriptor
        remove_temporaries(self.directory, everything_in=True)
        remove_temporaries(self.output)

    def check_free(self) -> None:
        """Raise the :class:`CheckpointError` of :meth:`acquire` if another run holds the lock; takes nothing."""
        try:
            descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return  # no checkpoint directory: nobody writes this output
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy() from None
        finally:
            os.close(descriptor)  # releases the probe's shared lock

    def _busy(self) -> CheckpointError:
        return CheckpointError(f"another fourdvar run is writing {self.output} (it holds {self.directory}); wait for it or choose another output")

    def release(self) -> None:
        """Unlock; an empty checkpoint directory is removed, and so are the empty
        directories :meth:`acquire` created (a failed run leaves nothing behind)."""
        if self._lock is None:
            return
        for directory in dict.fromkeys([self.directory, *self._created]):
            try:
                directory.rmdir()  # only if empty
            except OSError:
                pass
        os.close(self._lock)
        self._lock = None

    # --- windows ----------------------------------------------------------------------------------

    def window_files(self) -> list[Path]:
        """The completed windows' files, in cycle order; they must be cycles 0, 1, 2, ..."""
        files = sorted(path for path in self.directory.glob("cycle_*.nc") if _WINDOW.fullmatch(path.name))
        for expected, path in enumerate(files):
            if int(_WINDOW.fullmatch(path.name).group(1)) != expected:
                raise CheckpointError(f"{self.directory}: window files are not consecutive (no cycle_{expected:06d}.nc); remove it, or use --restart to discard it")
        return files

    def save(self, row: dict, state_variables: dict, cycle: int, config: str) -> None:
        write_atomic(window_dataset(row, cycle, state_variables, config), self.directory / f"cycle_{cycle:06d}.nc")

    def load(self, config: str) -> list[tuple[dict, xr.Dataset]]:
        """The completed windows as ``(row, dataset)``, each checked before a resume trusts it:
        written by ``config``, at its position (its ``cycle`` attribute), its state and analysis finite."""
        windows = []
        for position, path in enumerate(self.window_files()):
            try:
                dataset = xr.load_dataset(path, engine="netcdf4")
            except Exception as error:  # a damaged or hand-edited file, whatever it breaks
                raise self._unusable(path, f"not a readable checkpoint window ({_cut(error)})") from None
            if dataset.attrs.get("config") != config:
                raise CheckpointError(f"--resume: {self.directory} was written by a different configuration; remove it, or use --restart to discard it")
            try:
                row = window_row(dataset)
                problem = _window_problem(dataset, position)
            except Exception as error:
                raise self._unusable(path, f"not a readable checkpoint window ({_cut(error)})") from None
            if problem:
                raise self._unusable(path, problem)
            windows.append((row, dataset))
        return windows

    def _unusable(self, path: Path, problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: {problem}; remove {self.directory}, or use --restart to discard it")

    def count(self) -> int:
        """How many window files the checkpoint holds (unchecked)."""
        return len(self.window_files_unchecked())

    def clear(self) -> None:
        """Forget the windows of an earlier run (a fresh start)."""
        for path in self.window_files_unchecked():
            path.unlink(missing_ok=True)

    def window_files_unchecked(self) -> list[Path]:
        return [path for path in self.directory.glob("cycle_*.nc") if _WINDOW.fullmatch(path.name)]

    def remove(self) -> None:
        """The run is complete: delete the windows and the directory."""
        self.clear()
        self.release()


def _window_problem(dataset: xr.Dataset, position: int) -> str | None:
    """What makes a checkpoint window unfit to resume from, or ``None``."""
    cycle = dataset.attrs.get("cycle")
    if not (isinstance(cycle, (int, np.integer)) and int(cycle) == position):
        return f"its 'cycle' attribute is {_cut(str(cycle), 40)}, but it is window {position} of the checkpoint"
    for name in ("state_xb", "analysis", "background"):
        if name not in dataset:
            return f"it has no variable '{name}'"
        if not np.all(np.isfinite(dataset[name].values)):
            return f"'{name}' holds a non-finite value"
    if dataset["state_xb"].shape != dataset["analysis"].shape[-1:]:
        return f"'state_xb' has shape {dataset['state_xb'].shape}, the analysis states {dataset['analysis'].shape[-1:]}"
    return None


def _cut(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
