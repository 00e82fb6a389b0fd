"""What many test files share: the ``fourdvar`` command run in this process, and the shipped
configurations run once per test process for every file that reads their results.

The suite runs on several processes (``python -m pytest -n 2``, pytest-xdist), each test
file on one of them (``--dist loadfile``): a module- or session-scoped fixture runs once
per process that needs it, so the tests that share an expensive fixture live in one file.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

# One BLAS/OpenMP thread per test process unless the user chose otherwise: the test processes
# already fill the cores (set before numpy is first imported; commands run here inherit it).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHIPPED = sorted(path.stem for path in CONFIGS.glob("*.yaml"))


def run_command(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``fourdvar ARGS`` run in this process in ``cwd``: its exit status and what it printed.

    The same as ``python -m fourdvar ARGS`` for everything the tests read (exit status,
    stdout, stderr), without starting Python: :func:`fourdvar.app.cli.main` in-process,
    ``--help``/``--version``/argument errors (``SystemExit``) turned into the status.
    Nothing of the command stays behind: the working directory, the environment,
    ``sys.path``, the warnings filters, the thread limits and signal handlers (restored by
    ``main``) and pyplot's figures are as before (test_cli checks it).
    """
    from fourdvar.app import cli

    out, err = io.StringIO(), io.StringIO()
    previous, environment, path = os.getcwd(), dict(os.environ), list(sys.path)
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            _fresh_interpreter_warnings()
            try:
                status = cli.main([str(arg) for arg in args])
            except SystemExit as exit_:  # as the interpreter exits with it
                status = _exit_status(exit_.code)
    finally:
        os.chdir(previous)
        os.environ.clear()
        os.environ.update(environment)
        sys.path[:] = path
        _close_figures()
    return subprocess.CompletedProcess(["fourdvar", *map(str, args)], status, out.getvalue(), err.getvalue())


def _exit_status(code) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _fresh_interpreter_warnings() -> None:
    """The warnings filters of a fresh ``python`` (not pytest's), warnings printed on ``sys.stderr``
    (not recorded by pytest): what a command prints is what it would print in its own process."""
    warnings.resetwarnings()
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = _show_on_stderr


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _close_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


# --- the shipped configurations, shortened --------------------------------------------------------------

#: Windows of a shortened shipped run: enough for a cycled P and a propagated background.
SHIPPED_CYCLES = 3
#: What a shortened shipped run keeps at most: the truth spin-up (the shipped ones run 500 to
#: 15,000 steps, to the developed flow the headline numbers need; the checks and the cycling
#: need a valid truth only), outer loops, inner iterations, ensemble members, and the samples
#: and iterations of a comparison run's offline fit (``compare[i].fit_correction``).
SHIPPED_SPINUP, SHIPPED_OUTER_LOOPS, SHIPPED_INNER_ITERATIONS, SHIPPED_MEMBERS = 100, 2, 10, 3
SHIPPED_FIT_SAMPLES, SHIPPED_FIT_ITERATIONS = 20, 20


def _at_most(node: dict, key: str, limit: int) -> None:
    node[key] = min(node.get(key, limit), limit)


def shortened(name: str) -> dict:
    """The raw shipped configuration ``name`` on :data:`SHIPPED_CYCLES` windows, with at most
    :data:`SHIPPED_SPINUP` spin-up steps, :data:`SHIPPED_OUTER_LOOPS` outer loops,
    :data:`SHIPPED_INNER_ITERATIONS` inner iterations, :data:`SHIPPED_MEMBERS` members and
    offline fits of :data:`SHIPPED_FIT_SAMPLES` samples and :data:`SHIPPED_FIT_ITERATIONS`
    iterations; everything else as shipped, its comparison runs and diagnostics included."""
    from fourdvar.app.config import load_raw

    raw = load_raw(CONFIGS / f"{name}.yaml")
    raw["window"]["cycles"] = SHIPPED_CYCLES
    _at_most(raw.setdefault("truth", {}), "spinup_steps", SHIPPED_SPINUP)
    assimilation = raw.setdefault("assimilation", {})
    _at_most(assimilation, "outer_loops", SHIPPED_OUTER_LOOPS)
    _at_most(assimilation.setdefault("inner", {}), "max_iterations", SHIPPED_INNER_ITERATIONS)
    if raw.get("ensemble"):
        _at_most(raw["ensemble"], "members", SHIPPED_MEMBERS)
    for entry in raw.get("compare") or []:
        if isinstance(entry.get("fit_correction"), dict):
            _at_most(entry["fit_correction"], "samples", SHIPPED_FIT_SAMPLES)
            _at_most(entry["fit_correction"], "max_iterations", SHIPPED_FIT_ITERATIONS)
    return raw


def write_shortened(name: str, directory: Path) -> Path:
    """:func:`shortened` as a YAML file in ``directory`` (the command line reads files)."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(shortened(name), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def shipped_run(tmp_path_factory):
    """``shipped_run(name)`` -> ``(command result, result file)``: ``fourdvar run`` of the
    :func:`shortened` shipped configuration ``name`` for :data:`SHIPPED_CYCLES` windows, run
    once per test process and configuration (its comparison runs included)."""
    done: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    def run(name: str) -> tuple[subprocess.CompletedProcess, Path]:
        if name not in done:
            directory = tmp_path_factory.mktemp(f"shipped_{name}")
            output = directory / "result.nc"
            config = write_shortened(name, directory)
            done[name] = run_command("run", config, "--output", output, "--quiet", cwd=directory), output
        return done[name]

    return run
