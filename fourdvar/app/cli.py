"""The ``fourdvar`` command line: run, check, generate, plot.

    fourdvar run CONFIG [--output PATH] [--cycles N] [--seed S] [--overwrite] [--resume | --restart] [--quiet]
                        [--threads N] [--scheduler ADDRESS] [--workers N]
    fourdvar sweep CONFIG [--output DIR] [--scheduler ADDRESS] [--workers N] [--resume] [--quiet]
    fourdvar check CONFIG [--seed S] [--window-steps N] [--directions K] [--threads N]
    fourdvar generate CONFIG [--output PATH] [--cycles N] [--seed S] [--overwrite] [--threads N]
    fourdvar plot RESULT.nc [--output DIR]

``python -m fourdvar`` is the same command.  Relative paths in a configuration are
relative to the directory the command runs in.  Every command that reads a
configuration builds the same :class:`~fourdvar.app.plan.Plan`, so bad input (a
wrong configuration, file or output path) prints one line on stderr and exits with
status 2 before any computation and before anything is written; a failing
consistency check exits 1 (3 when none fails but one stays inconclusive); a
forecast that diverges exits 1 with the cycle, outer loop and step.  The
application's modules are imported late, by the commands that need them (``plot``
alone loads matplotlib).

Nothing is lost without being asked: an existing result is replaced only with
``--overwrite``, an interrupted run's checkpoint is continued with ``--resume`` or
discarded with ``--restart``.  Results (the headline numbers, "wrote ...") go to
stdout, progress to stderr; ``--quiet`` silences the progress only.  Ctrl-C and
SIGTERM end a command cleanly in one line, keeping what was finished.

BLAS and OpenMP run one thread for problems below :data:`THREADED_STATE_SIZE`
state variables or estimated parameters (small matrix products, where threads only synchronise, and on a shared machine
spin against the other jobs); ``--threads N`` or the user's own
``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` take precedence.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from .. import __version__

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CommandError(Exception):
    """A problem to report in one line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


# --- threads ------------------------------------------------------------------------------------------

#: Control size (state, or parameters when estimated) from which BLAS/OpenMP keep their own
#: thread count; below it one thread is faster (benchmarks/threads.py measures the shipped configurations).
THREADED_STATE_SIZE = 2000
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


class Threads:
    """The BLAS/OpenMP thread count of a command: ``--threads`` (0: the libraries' own), else the
    user's environment variables, else one thread until :meth:`fit` sees a problem of
    :data:`THREADED_STATE_SIZE` or more."""

    def __init__(self, given: int | None):
        self.given, self.limiter = given, None
        chosen = given if given is not None else (None if any(os.environ.get(name) for name in _THREAD_VARIABLES) else 1)
        if chosen:
            import numpy  # noqa: F401  (threadpoolctl limits the thread pools of loaded libraries:
            import scipy.linalg  # noqa: F401  numpy's and scipy's BLAS)
            from threadpoolctl import threadpool_limits

            self.limiter = threadpool_limits(limits=chosen)

    def fit(self, plan) -> None:
        """Give a large problem the libraries' own thread count (unless the user chose one): a
        state, or estimated parameters (dense covariances), of :data:`THREADED_STATE_SIZE` or more."""
        size = max(plan.model.n_state, plan.model.n_params if "params" in plan.control else 0)
        if self.given is None and self.limiter is not None and size >= THREADED_STATE_SIZE:
            self.limiter.restore_original_limits()
            self.limiter = None


# --- shared steps: the plan every command builds the same way ---------------------------------------


def _load(args):
    """The :class:`~fourdvar.app.experiment.Experiment` of ``args.config``, with ``--cycles`` and ``--seed`` set."""
    from .config import ConfigError
    from .experiment import load_experiment

    experiment = load_experiment(args.config)
    overrides = {}
    if getattr(args, "cycles", None) is not None:
        overrides["window.cycles"] = args.cycles
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if overrides:
        try:
            experiment = experiment.with_keys(overrides)
        except ConfigError as error:
            raise ConfigError(f"command line: {error}") from None
    return experiment


def _output(args, experiment, default: str | None = None) -> tuple[Path, str]:
    """The output path and what to call it in messages (``--output`` or the config key)."""
    given = getattr(args, "output", None)
    text, what = (given, "--output") if given is not None else (default or experiment.output.file, f"{args.config}: {experiment.output.key('file')}")
    if text.endswith(os.sep):  # a Path would drop the separator and write a file of the directory's name
        raise CommandError(f"{what}: {text[-80:]} ends with '{os.sep}', a directory; give a file name")
    return Path(text) if text else text, what


def _plan(args, experiment, output, what: str, replacing=None):
    """The validated plan of ``config`` writing ``output``: every problem is one line
    before anything is computed or written.  ``replacing()``, called once the output path
    is checked, refuses to replace what is there (an earlier result, an interrupted run's windows)."""
    from .config import ConfigError
    from .plan import Plan, check_output

    try:
        check_output(output, [args.config, *Plan.declared_inputs(experiment)], what=what)
    except ConfigError as error:
        raise CommandError(str(error)) from None
    if replacing is not None:
        replacing()
    from ..registry import search_directories

    try:
        with search_directories([Path(args.config).parent]):
            return Plan.from_config(experiment, output=output, inputs=[args.config])
    except ConfigError as error:
        raise ConfigError(f"{args.config}: {error}") from None


def _open_dataset(path: Path, what: str):
    import xarray as xr

    if not path.exists():
        raise CommandError(f"{what}: {path}: no such file")
    if not path.is_file():
        raise CommandError(f"{what}: {path}: not a file")
    from ..registry import observation_set_class

    if observation_set_class().file_format(path) == "csv":
        raise CommandError(f"{what}: {path}: a CSV (text) file; a NetCDF file is expected here")
    from .plan import check_netcdf_size

    check_netcdf_size(path, what)
    try:
        return xr.load_dataset(path, engine="netcdf4")
    except Exception as error:  # whatever a damaged or foreign file makes the reader raise
        raise CommandError(f"{what}: {path}: not a readable NetCDF file ({_one_line(error)})") from None


# --- progress ------------------------------------------------------------------------------------


def quality_note(row: dict, params_kept: bool) -> str:
    """What the progress line says about a window's observations: how many quality control
    rejected, and, loudly, a chi2 = 2 J / n_obs far above 1."""
    from .diagnostics import CHI2_FAR_ABOVE_1

    note = f" qc_rejected={row['qc']['reason'].size}" if row.get("qc") is not None and row["qc"]["reason"].size else ""
    chi2 = row["departures"]["chi2"]
    if chi2 > CHI2_FAR_ABOVE_1:
        note += f" !! chi2={chi2:.1f} FAR ABOVE 1" + (": parameter update not taken" if params_kept else "")
    return note


class Progress:
    """A progress bar on a terminal, plain lines otherwise, nothing with ``--quiet``."""

    def __init__(self, total: int, stream=None, quiet: bool = False, label: str = ""):
        self.total, self.quiet, self.start_cycle = total, quiet, None
        self.label = f"{label} " if label else ""  # e.g. a comparison run's name before "cycle i/N"
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, outcome, recorder) -> None:
        if self.quiet:
            return
        import numpy as np

        cycle, total = outcome.cycle, self.total
        if self.start_cycle is None:  # a resumed run starts later
            self.start_cycle = cycle
        done = cycle + 1
        elapsed = time.perf_counter() - self.started
        rate = elapsed / max(done - self.start_cycle, 1)
        eta = rate * (total - done)
        ds_row = recorder.rows[-1]
        truth = recorder.plan.truth
        text = f"J={outcome.result.final.J:.5g}"
        if truth is not None:
            rmse = float(np.sqrt(np.mean((ds_row["analysis"][0] - truth["trajectory"][recorder.plan.window_start(cycle)]) ** 2)))
            text += f" rmse_a={rmse:.3f}"
        if outcome.p.size == 1:
            text += f" p={outcome.p[0]:.4f}"
        text += quality_note(ds_row, outcome.rejected_cost is not None)
        timing = f"{elapsed:.0f}s, eta {eta:.0f}s"
        write_progress(self.stream, self.tty, done, total, f"{self.label}cycle {done}/{total} {text} ({timing})")


def write_progress(stream, tty: bool, done: int, total: int, line: str, width: int = 24) -> None:
    """``line`` as a progress report: redrawn in place behind a bar of ``width`` on a terminal, one line each otherwise."""
    if tty:
        filled = int(width * done / total)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}  " + ("\n" if done == total else ""))
    else:
        stream.write(line + "\n")
    stream.flush()


# --- commands ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _members_map(experiment, args):
    """How an ensemble's members run: on the Dask cluster (``--scheduler`` or an embedded one); ``map`` without an ensemble."""
    if not experiment.method.ensemble.members:
        yield map
        return
    with contextlib.ExitStack() as stack:  # the executor of --executor (a Dask cluster by default)
        try:
            stack.enter_context(args.executor)
        except OSError as error:
            if args.scheduler is None:
                raise
            raise CommandError(f"--scheduler: cannot reach {args.scheduler}: {_one_line(error)}", EXIT_FAILED) from None
        yield args.executor.map


def _executor(args):
    """The :class:`~fourdvar.app.cluster.Executor` of ``--executor``, ``--workers`` and ``--scheduler``."""
    from .cluster import Executor

    if args.scheduler is not None and args.executor != "dask":
        raise CommandError(f"--scheduler: a Dask scheduler serves --executor dask, not --executor {args.executor}")
    return Executor(args.executor, args.workers, args.scheduler)


def _one_line(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def command_run(args) -> int:
    """``fourdvar run``: the experiment of ``args.config`` to its result file; the exit status."""
    from .checkpoint import CheckpointError
    from .results import WriteError
    from .run import RunDiverged, run_to_file

    experiment = _load(args)
    if experiment.sweep:
        raise CommandError(f"{args.config}: sweep: this configuration is a sweep; run it with 'fourdvar sweep {args.config}'")
    output, what = _output(args, experiment)
    experiment = experiment.with_output(str(output))
    if experiment.method.ensemble.members and args.scheduler is None and args.executor.kind == "dask":
        from .cluster import start_worker_server

        start_worker_server()  # the workers' imports, in the background while the plan is validated
    plan = _plan(args, experiment, output, what, replacing=lambda: _check_replacing(output, args))
    args.threads_in_use.fit(plan)
    say = None if args.quiet else (lambda line: _say(args, line))
    try:
        with _members_map(experiment, args) as map_members:
            dataset = run_to_file(plan, resume=args.resume, progress=Progress(plan.n_cycles, quiet=args.quiet), message=say,
                                  comparison_progress=lambda name, n_cycles: Progress(n_cycles, quiet=args.quiet, label=f"'{name}'"),
                                  map_members=map_members, overwrite=args.overwrite, restart=args.restart)
    except CheckpointError as error:
        raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        if experiment.output.checkpoint:
            print(f"\ninterrupted; completed cycles are saved in {output.with_name(output.stem + '.checkpoint')}; continue with --resume", file=sys.stderr)
        else:
            print("\ninterrupted; nothing was saved (output.checkpoint is false, so this run cannot be resumed)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunDiverged as error:
        raise CommandError(f"the run diverged: {error}", EXIT_FAILED) from None
    except WriteError as error:
        saved = output.with_name(output.stem + ".checkpoint")
        hint = f"; the completed windows are kept in {saved}: continue with --resume" if saved.is_dir() else ""
        raise CommandError(f"{error.strerror}{hint}") from None
    print(f"wrote {output} ({plan.n_cycles} cycles, {dataset.attrs['run_seconds']:.1f} s)", flush=True)
    for line in headline_lines(dataset):
        print(line, flush=True)
    return EXIT_OK


def _check_replacing(output: Path, args) -> None:
    """``fourdvar run`` replaces an earlier result only with ``--overwrite``, and starts over an interrupted run's windows only with ``--restart``."""
    from .checkpoint import CheckpointError
    from .run import check_replacing

    try:
        check_replacing(output, args.resume, args.restart, args.overwrite)
    except CheckpointError as error:
        raise CommandError(str(error)) from None


#: Parameter estimates up to this many are part of the headline.
HEADLINE_PARAMS = 6


def headline_lines(dataset) -> list[str]:
    """The headline numbers of a result, and its last analysed parameters when there are few."""
    lines = [f"{key.removeprefix('headline_')}: {value:.4g}" for key, value in dataset.attrs.items() if key.startswith("headline_")]
    if "params_analysis" in dataset and 0 < dataset.sizes.get("param", 0) <= HEADLINE_PARAMS:
        names = dataset["param"].values if "param" in dataset.coords and dataset["param"].dtype.kind in "OU" else None
        values = dataset["params_analysis"].values[-1]
        estimates = ", ".join(f"{names[i] if names is not None else f'p[{i}]'} = {value:.4g}" for i, value in enumerate(values))
        lines.append(f"parameters (last analysis): {estimates}")
    return lines


def _say(args, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr, flush=True)


class MemberProgress:
    """Progress over the members of a sweep: a bar on a terminal, plain lines otherwise."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream, self.quiet = stream or sys.stderr, quiet
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int, outcome) -> None:
        if self.quiet:
            return
        state = "skipped (done before)" if outcome.skipped else (f"FAILED: {outcome.error}" if outcome.error else f"{outcome.seconds:.1f} s")
        elapsed = time.perf_counter() - self.started
        write_progress(self.stream, self.stream.isatty(), done, total, f"member {done}/{total} {outcome.name}: {state} ({elapsed:.0f}s)")


def command_sweep(args) -> int:
    """``fourdvar sweep``: every member of the configuration's ``sweep:`` block on a Dask cluster, and ``summary.nc``."""
    from .sweep import SUMMARY_FILE, Sweep, run_sweep, summary_table

    from .config import ConfigError
    from .plan import check_directory

    sweep = Sweep.from_file(args.config, args.output)
    try:
        check_directory(sweep.directory, "--output" if args.output else f"{args.config}: sweep directory")
        sweep.check_summary(inputs=[args.config])
    except ConfigError as error:
        raise CommandError(str(error)) from None
    finished = [member.output for member in sweep.members if member.output.exists()]
    summary_path = sweep.directory / SUMMARY_FILE
    if (finished or summary_path.exists()) and not args.resume:
        held = f"{len(finished)} member results of a sweep" if finished else f"the sweep summary {SUMMARY_FILE}"
        raise CommandError(f"{sweep.directory} already holds {held}; add --resume to run only the missing members, or choose another --output")
    if args.scheduler is None and args.executor.kind == "dask" and len(finished) < len(sweep.members):
        from .cluster import start_worker_server

        start_worker_server()  # the workers' imports, in the background while the plans are validated
    try:
        sweep.validate(inputs=[args.config])
    except ConfigError as error:
        raise ConfigError(f"{args.config}: {error}") from None
    if not args.quiet:
        where = args.scheduler or (f"an embedded cluster of {args.workers or os.cpu_count()} workers" if args.executor.kind == "dask" else f"{args.executor.kind} here")
        print(f"sweep of {len(sweep.members)} members ({len(finished)} done before) over {', '.join(sweep.keys)} on {where}", file=sys.stderr)
    progress = MemberProgress(quiet=args.quiet)
    try:
        outcomes, summary = run_sweep(sweep, progress=progress, executor=args.executor)
    except OSError as error:
        raise CommandError(f"--scheduler: cannot reach {args.scheduler}: {_one_line(error)}", EXIT_FAILED) from None
    except KeyboardInterrupt:
        kept = sum(member.output.exists() for member in sweep.members)
        where = (f"{kept} of {len(sweep.members)} member results are kept in {sweep.directory}; run the rest with --resume" if kept
                 else "no member had finished, so nothing was kept")
        print(f"{chr(10) if progress.stream.isatty() else ''}interrupted; {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [outcome for outcome in outcomes if outcome.error]
    print(f"wrote {summary_path}", flush=True)
    print(summary_table(summary), flush=True)
    for outcome in failed:
        print(f"fourdvar: member {outcome.name} failed: {outcome.error}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def command_check(args) -> int:
    """Every check of :mod:`fourdvar.checks` on what the configuration uses (see
    :func:`fourdvar.app.checking.check_plan`); exit status 1 if one fails, 3 if
    none fails but one stays inconclusive, 0 if all pass."""
    from .. import checks
    from .checking import check_plan

    experiment = _load(args)
    output, what = _output(args, experiment)
    plan = _plan(args, experiment, output, what)
    if args.window_steps is not None:
        _check_window_memory(plan, args.window_steps)
    args.threads_in_use.fit(plan)
    counts = check_plan(plan, n_steps=args.window_steps, directions=args.directions)
    if counts[checks.FAIL]:
        return EXIT_FAILED
    return EXIT_INCONCLUSIVE if counts[checks.INCONCLUSIVE] else EXIT_OK


#: Trajectories of a window the checks hold at once (forecasts, linearisations, perturbed runs).
CHECK_TRAJECTORIES = 16


def _check_window_memory(plan, n_steps: int) -> None:
    from .plan import memory_available

    needed = 8.0 * CHECK_TRAJECTORIES * (n_steps + 1) * plan.model.n_state
    if needed > memory_available():
        raise CommandError(f"--window-steps: a window of {n_steps} steps needs about {needed / 2**30:.3g} GiB for the checks; "
                           f"this machine allows {memory_available() / 2**30:.3g} GiB")


def command_generate(args) -> int:
    """``fourdvar generate``: the truth run and the synthetic observations alone, to one NetCDF file."""
    import numpy as np

    from .atomic import WriteError, remove_temporaries, write_atomic
    from .results import config_text

    experiment = _load(args)
    observations = experiment.problem.observations
    if observations.file is not None:
        raise CommandError(f"{args.config}: {observations.key('file')}: the observations come from a file; there is nothing to generate")
    default = str(Path(experiment.output.file).with_name(Path(args.config).stem + "_data.nc"))
    output, what = _output(args, experiment, default)
    if what != "--output":
        what = f"{args.config}: the observation file derived from output.file"
    plan = _plan(args, experiment, output, what, replacing=lambda: _refuse_existing(output, args.overwrite))
    try:
        dataset = plan.observations.to_dataset()
    except ValueError as error:
        raise CommandError(f"{args.config}: observations.operator: cannot be written to an observation file ({error})") from None
    truth = plan.truth["trajectory"]
    dataset["truth"] = (("time_step", "x"), truth, {"long_name": "truth trajectory (model state) from the start of cycle 0", "units": "1"})
    dataset = dataset.assign_coords(time_step=np.arange(truth.shape[0]), x=np.arange(truth.shape[1]))
    dataset.attrs.update(config=config_text(experiment), fourdvar_version=__version__, window_steps=plan.n_steps,
                         title=experiment.title or "fourdvar truth and observations")
    try:
        remove_temporaries(output)
        write_atomic(dataset, output)
    except WriteError as error:
        raise CommandError(str(error.strerror)) from None
    print(f"wrote {output} ({plan.observations.n_obs} observations at {len(plan.observations)} times, truth of {truth.shape[0]} steps)")
    return EXIT_OK


def _refuse_existing(output: Path, overwrite: bool) -> None:
    if Path(output).exists() and not overwrite:
        raise CommandError(f"{output} exists; add --overwrite to replace it, or choose another --output")


def command_plot(args) -> int:
    """``fourdvar plot``: every figure a result file supports, as PNG."""
    from .config import ConfigError
    from .plan import check_directory

    path = Path(args.result)
    dataset = _open_dataset(path, "RESULT")
    summary = "sweep_keys" in dataset.attrs  # a sweep's summary.nc: its settings against their metrics
    if not summary and ("analysis" not in dataset or dataset["analysis"].dims != ("cycle", "step", "x") or not dataset.sizes["cycle"]):
        raise CommandError(f"RESULT: {path} is not a fourdvar result file (no 'analysis' over cycle, step, x)")
    from .plotting import TimeRange, TimeRangeError, select_time_range

    try:
        dataset = select_time_range(dataset, None if args.time_range is None else TimeRange.parse(args.time_range))
    except TimeRangeError as error:
        raise CommandError(str(error)) from None
    output = Path(args.output) if args.output is not None else path.with_name(path.stem + "_figures")
    try:
        check_directory(args.output if args.output is not None else output, "--output")
    except ConfigError as error:
        raise CommandError(str(error)) from None
    from .atomic import remove_temporaries
    from .plotting import plot_results

    remove_temporaries(output, everything_in=True)  # what a killed plot left
    with _removed_unless_written(output):
        try:
            written = plot_results(dataset, output)
        except Exception as error:  # a result file with odd contents, a full disk: say so in one line
            raise CommandError(f"RESULT: {path}: cannot plot it ({_one_line(error)})") from None
        if not written:
            raise CommandError(f"RESULT: {path}: nothing to plot (no variable the figures need)")
    for figure in written:
        print(figure)
    return EXIT_OK


@contextlib.contextmanager
def _removed_unless_written(directory: Path):
    """The directories of ``directory``'s path this block creates are removed if it fails
    (a failed command leaves no empty or half-filled directory of its own)."""
    top = None
    missing = Path(os.path.abspath(directory))
    while not missing.exists() and missing != missing.parent:
        top, missing = missing, missing.parent
    try:
        yield
    except BaseException:
        if top is not None and top.is_dir():
            import shutil

            shutil.rmtree(top, ignore_errors=True)
        raise


# --- the parser ---------------------------------------------------------------------------------------


def _integer_parser(minimum: int, expected: str, maximum: float = math.inf, why: str = ""):
    """An argparse ``type``: an integer in [``minimum``, ``maximum``], else an error saying ``expected``
    (and ``why`` there is a maximum)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text[:40]!r}") from None
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected at most {maximum}{f' ({why})' if why else ''}, got {value}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


_seed = _integer_parser(0, "an integer >= 0")
_threads = _integer_parser(0, "an integer >= 0 (0: the BLAS/OpenMP libraries' own count)")


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_threads, help=f"BLAS/OpenMP threads (default: 1 below {THREADED_STATE_SIZE} state variables or estimated parameters, "
                                                         "else the libraries' own; OMP_NUM_THREADS etc. when set; 0: the libraries' own)")


def _file_writing_options(parser: argparse.ArgumentParser, output_help: str, replaced: str) -> None:
    """The config argument and the options of a subcommand that runs a configuration into one file."""
    parser.add_argument("config", help="the experiment's YAML file")
    parser.add_argument("--output", "-o", help=output_help)
    parser.add_argument("--cycles", type=_positive_int, help="number of windows (overrides window.cycles)")
    parser.add_argument("--seed", type=_seed, help="random seed (overrides seed)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace {replaced} (refused without it)")


_positive_int = _integer_parser(1, "a positive integer")
#: Workers per core at most: each is a process (or a thread) running members, and more only wait for one another.
WORKERS_PER_CORE = 4
_workers = _integer_parser(1, "a positive integer", WORKERS_PER_CORE * (os.cpu_count() or 1),
                           f"{WORKERS_PER_CORE} per core of this machine's {os.cpu_count() or 1}; more only wait for one another")
#: Random directions per check at most: each costs a tangent-linear or adjoint sweep, and more than this tell nothing new.
MAX_DIRECTIONS = 1000
_directions = _integer_parser(1, "a positive integer", MAX_DIRECTIONS)


class _OneLineParser(argparse.ArgumentParser):
    """Command-line mistakes are one line too (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``fourdvar`` command and its subcommands (``fourdvar SUBCOMMAND --help``)."""
    parser = _OneLineParser(prog="fourdvar", description="Incremental 4D-Var with hand-coded tangent-linear and adjoint models.")
    parser.add_argument("--version", action="version", version=f"fourdvar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a cycled 4D-Var experiment and write its NetCDF result", description="Run the experiment a YAML file describes and write one NetCDF result file.")
    _file_writing_options(run, "result file (default: the config's output.file)", "an existing result file")
    restart = run.add_mutually_exclusive_group()
    restart.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    restart.add_argument("--restart", action="store_true", help="discard an interrupted run's checkpoint and start again (without --resume or --restart a run leaves a checkpoint alone and stops)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (the results still go to stdout)")
    _threads_option(run)
    run.add_argument("--scheduler", help="with an ensemble: address of an existing Dask scheduler for the members, tcp://HOST:PORT (default: an embedded cluster)")
    run.add_argument("--workers", type=_workers, help=f"with an ensemble: worker processes of the embedded cluster, or threads (default: one per core; at most {WORKERS_PER_CORE} per core)")
    run.add_argument("--executor", choices=("serial", "threads", "dask"), default="dask", help="with an ensemble: where the members of each window run: one after another, on threads, or on a Dask cluster (default)")
    run.set_defaults(handler=command_run)

    check = commands.add_parser("check", help="run the adjoint, tangent-linear and gradient tests on a config's model, operators and cost",
                                description="Adjoint (dot-product), tangent-linear (Taylor) and gradient tests of everything a configuration uses, "
                                            "the model's batched window (linearize_window) against its per-step chain included; exit status 1 if "
                                            "any fails, 3 if none fails but one stays inconclusive (no direction tried showed the order of its "
                                            "Taylor remainder), 0 if all pass.")
    check.add_argument("config", help="the experiment's YAML file")
    check.add_argument("--seed", type=_seed, help="random seed (overrides seed)")
    check.add_argument("--window-steps", type=_positive_int, help="steps of the window checked (default: the config's window length)")
    check.add_argument("--directions", type=_directions, default=1, help=f"random directions per test (default 1, at most {MAX_DIRECTIONS}; an inconclusive one is retried with up to 4 more)")
    _threads_option(check)
    check.set_defaults(handler=command_check)

    generate = commands.add_parser("generate", help="write the truth run and the observations alone to NetCDF", description="Write the truth run and the synthetic observations of a configuration to one NetCDF file (readable as observations.file).")
    _file_writing_options(generate, "output file (default: results/<config name>_data.nc)", "an existing file")
    _threads_option(generate)
    generate.set_defaults(handler=command_generate)

    sweep = commands.add_parser("sweep", help="run every combination of a config's sweep: block on a Dask cluster", description="Run one ordinary run per combination of the sweep: block (dotted keys mapped to lists) and write summary.nc with their headline numbers along the sweep's dimensions.")
    sweep.add_argument("config", help="the experiment's YAML file, with a sweep: block")
    sweep.add_argument("--output", "-o", help="directory for the members' result files and summary.nc (default: output.file without its .nc, e.g. results/<config name>)")
    sweep.add_argument("--scheduler", help="address of an existing Dask scheduler, tcp://HOST:PORT (default: an embedded cluster on this machine)")
    sweep.add_argument("--workers", type=_workers, help=f"worker processes of the embedded cluster, or threads (default: one per core; at most {WORKERS_PER_CORE} per core)")
    sweep.add_argument("--executor", choices=("serial", "threads", "dask"), default="dask", help="where the members run: one after another, on threads, or on a Dask cluster (default)")
    sweep.add_argument("--resume", action="store_true", help="run only the members whose result file is missing")
    sweep.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (the table still goes to stdout)")
    sweep.set_defaults(handler=command_sweep)

    plot = commands.add_parser("plot", help="write PNG figures of a result file", description="Cost reduction, RMSE per cycle, Hovmoeller diagram and parameter trajectory of a result file, as PNG.")
    plot.add_argument("result", help="a result file written by 'fourdvar run'")
    plot.add_argument("--output", "-o", help="directory for the figures (default: <result name>_figures next to the file)")
    plot.add_argument("--time-range", help="what the time-axis figures show: START:END (cycles, both included), cycles=START:END or time=START:END (model time)")
    plot.set_defaults(handler=command_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``fourdvar`` command: parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return the exit status.

    Bad input is one line on stderr and exit status 2, before any computation.
    """
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    warnings.simplefilter("ignore", RuntimeWarning)  # overflow on the way to a divergence: the error says where
    previous = _sigterm_interrupts()
    try:
        if args.command in ("run", "check", "generate"):
            args.threads_in_use = Threads(args.threads)
        if args.command in ("run", "sweep"):
            args.executor = _executor(args)  # before any computation
        return args.handler(args)
    except ConfigError as error:
        print(f"fourdvar: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CommandError as error:
        print(f"fourdvar: error: {error}", file=sys.stderr)
        return error.status
    except BrokenPipeError:  # the reader of our output went away (``| head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:  # before a command could say what it keeps
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        limiter = getattr(getattr(args, "threads_in_use", None), "limiter", None)
        if limiter is not None:
            limiter.restore_original_limits()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_interrupts():
    """SIGTERM ends a command as Ctrl-C does (what it finished is kept); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(number, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    sys.exit(main())
