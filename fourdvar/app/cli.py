"""The ``fourdvar`` command line: run, check, generate, plot.

    fourdvar run CONFIG [--output PATH] [--cycles N] [--seed S] [--resume] [--quiet]
    fourdvar check CONFIG [--seed S]
    fourdvar generate CONFIG [--output PATH] [--cycles N] [--seed S]
    fourdvar plot RESULT.nc [--output DIR]

Relative paths in a configuration are relative to the directory the command runs in.
Bad input (a wrong configuration or file) prints one line on stderr and exits
with status 2 before any long computation; a failing consistency check exits 1;
a forecast that diverges exits 1 with the cycle, outer loop and step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from .. import __version__, checks
from .config import ConfigError, load_config, resolve_config
from ..window import DivergenceError, forecast

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandError(Exception):
    """A problem to report in one line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


# --- shared steps ---------------------------------------------------------------------------


def _load(args) -> dict:
    config = load_config(args.config)
    overrides = {}
    if getattr(args, "cycles", None) is not None:
        overrides.setdefault("window", {})["cycles"] = args.cycles
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if overrides:
        merged = {**config, **{k: ({**config[k], **v} if isinstance(v, dict) else v) for k, v in overrides.items()}}
        try:
            config = resolve_config(merged, name=Path(args.config).stem)
        except ConfigError as error:
            raise ConfigError(f"command line: {error}") from None
    return config


def _experiment(config, args):
    from .experiment import Experiment

    try:
        return Experiment(config)
    except ConfigError as error:
        raise ConfigError(f"{args.config}: {error}") from None


def _require_writable_directory(path: Path, what: str) -> None:
    """Fail now, before any computation, if ``path`` could not be written later.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        raise CommandError(f"{what}: cannot write {path}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CommandError(f"{what}: cannot write {path}: directory {directory} is not writable")


def _open_dataset(path: Path, what: str) -> xr.Dataset:
    if not path.exists():
        raise CommandError(f"{what}: {path}: no such file")
    try:
        return xr.load_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as error:
        raise CommandError(f"{what}: {path}: not a readable NetCDF file ({error})") from None


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """A progress bar on a terminal, plain lines otherwise, nothing with ``--quiet``."""

    def __init__(self, total: int, stream=None, quiet: bool = False, start_cycle: int = 0):
        self.total, self.quiet, self.start_cycle = total, quiet, start_cycle
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, cycle: int, total: int, outcome, recorder) -> None:
        if self.quiet:
            return
        done = cycle + 1
        elapsed = time.perf_counter() - self.started
        rate = elapsed / max(done - self.start_cycle, 1)
        eta = rate * (total - done)
        ds_row = recorder.rows[-1]
        truth = getattr(recorder.experiment, "truth", None)
        text = f"J={outcome.result.final.J:.5g}"
        if truth is not None:
            L = recorder.experiment.n_steps
            rmse = float(np.sqrt(np.mean((ds_row["analysis"][0] - truth["trajectory"][cycle * L]) ** 2)))
            text += f" rmse_a={rmse:.3f}"
        if outcome.p.size == 1:
            text += f" p={outcome.p[0]:.4f}"
        timing = f"{elapsed:.0f}s, eta {eta:.0f}s"
        if self.tty:
            width = 24
            filled = int(width * done / total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] cycle {done}/{total} {text} ({timing})  ")
            if done == total:
                self.stream.write("\n")
        else:
            self.stream.write(f"cycle {done}/{total} {text} ({timing})\n")
        self.stream.flush()


# --- commands ---------------------------------------------------------------------------------------


def _checkpoint_path(output: Path) -> Path:
    return output.with_name(output.stem + ".checkpoint.nc")


def command_run(args) -> int:
    from .results import config_text, write_atomic

    config = _load(args)
    output = Path(args.output or config["output"]["file"])
    config["output"]["file"] = str(output)
    _require_writable_directory(output, "--output" if args.output else f"{args.config}: output.file")
    experiment = _experiment(config, args)
    checkpoint = _checkpoint_path(output)
    resume_from = None
    if args.resume and checkpoint.exists():
        resume_from = _open_dataset(checkpoint, "--resume")
        if resume_from.attrs.get("config") != config_text(config):
            raise CommandError(f"--resume: {checkpoint} was written by a different configuration; remove it or drop --resume")
        if not args.quiet:
            print(f"resuming from {checkpoint}: {resume_from.attrs['completed_cycles']} of {experiment.n_cycles} cycles done", file=sys.stderr)
    elif args.resume and not args.quiet:
        print(f"--resume: no checkpoint {checkpoint}; starting from cycle 0", file=sys.stderr)

    start = int(resume_from.attrs["completed_cycles"]) if resume_from is not None else 0
    progress = Progress(experiment.n_cycles, quiet=args.quiet, start_cycle=start)
    try:
        message = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
        write_checkpoint = (lambda ds: write_atomic(ds, checkpoint)) if config["output"]["checkpoint"] else None
        dataset = experiment.run(checkpoint=write_checkpoint, resume_from=resume_from, progress=progress, progress_message=message)
        write_atomic(dataset, output)
    except KeyboardInterrupt:
        if config["output"]["checkpoint"]:
            print(f"\ninterrupted; completed cycles are saved in {checkpoint}; continue with --resume", file=sys.stderr)
        else:
            print("\ninterrupted; no checkpoint (output.checkpoint: false)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DivergenceError as error:
        raise CommandError(f"the run diverged: {error}", EXIT_FAILED) from None
    checkpoint.unlink(missing_ok=True)
    if not args.quiet:
        print(f"wrote {output} ({experiment.n_cycles} cycles, {dataset.attrs['run_seconds']:.1f} s)", file=sys.stderr)
        for key, value in dataset.attrs.items():
            if key.startswith("headline_"):
                print(f"{key.removeprefix('headline_')}: {value:.4g}", file=sys.stderr)
    return EXIT_OK


def command_check(args) -> int:
    from ..cost import FourDVarCost

    config = _load(args)
    experiment = _experiment(config, args)
    rng = np.random.default_rng(config["seed"])
    model, x, p = experiment.model, experiment.xb0, experiment.pb0
    n_steps = experiment.n_steps
    sections = [(f"model {model!r}", checks.check_model(model, x, p, rng, n_steps=n_steps))]

    slots = list(experiment.observations.window(0, n_steps, include_end=False))
    states = experiment.truth["trajectory"] if experiment.truth is not None else forecast(model, x, p, n_steps)
    seen = set()
    for slot in slots:
        if id(slot.operator) in seen:
            continue
        seen.add(id(slot.operator))
        x_obs = states[slot.step]
        sections.append((f"observation operator {slot.operator!r}", [
            checks.operator_adjoint_test(slot.operator, x_obs, rng),
            checks.operator_taylor_test(slot.operator, x_obs, rng),
        ]))
    covariances = [("B", experiment.B0)] + ([("P", experiment.P0)] if experiment.P0 is not None else [])
    if slots:
        covariances.append(("R (first observation time)", slots[0].covariance))
    for name, covariance in covariances:
        sections.append((f"covariance {name}", [checks.covariance_sqrt_adjoint_test(covariance, rng), checks.covariance_inverse_test(covariance, rng)]))
    P = experiment.P0 if "params" in experiment.control else None
    cost = FourDVarCost(model, slots, x, B=experiment.B0, pb=p, P=P, n_steps=n_steps)
    sections.append((f"cost of the first window (control: {', '.join(experiment.control)})",
                     checks.check_cost(cost, x, p, experiment.control, rng, transform=config["assimilation"]["transform"])))

    failed = 0
    for title, results in sections:
        print(f"== {title}")
        print(checks.format_table(results))
        print()
        failed += sum(not r.passed for r in results)
    total = sum(len(results) for _, results in sections)
    print(f"{total - failed} passed, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


def command_generate(args) -> int:
    from .results import config_text, write_atomic

    config = _load(args)
    if config["observations"]["file"] is not None:
        raise CommandError("observations.file: the observations come from a file; there is nothing to generate")
    output = Path(args.output or Path(config["output"]["file"]).with_name(Path(args.config).stem + "_data.nc"))
    _require_writable_directory(output, "--output" if args.output else "output file")
    experiment = _experiment(config, args)
    dataset = experiment.observations.to_dataset()
    truth = experiment.truth["trajectory"]
    dataset["truth"] = (("time_step", "x"), truth, {"long_name": "truth trajectory (model state) from the start of cycle 0", "units": "1"})
    dataset = dataset.assign_coords(time_step=np.arange(truth.shape[0]), x=np.arange(truth.shape[1]))
    dataset.attrs.update(config=config_text(config), fourdvar_version=__version__, window_steps=experiment.n_steps,
                         title=config["title"] or "fourdvar truth and observations")
    write_atomic(dataset, output)
    print(f"wrote {output} ({experiment.observations.n_obs} observations at {len(experiment.observations)} times, truth of {truth.shape[0]} steps)", file=sys.stderr)
    return EXIT_OK


def command_plot(args) -> int:
    from .plotting import plot_results

    path = Path(args.result)
    dataset = _open_dataset(path, "RESULT")
    if "analysis" not in dataset:
        raise CommandError(f"RESULT: {path} is not a fourdvar result file (no 'analysis' variable)")
    output = Path(args.output) if args.output else path.with_name(path.stem + "_figures")
    _require_writable_directory(output / "figure.png", "--output")
    written = plot_results(dataset, output)
    for figure in written:
        print(figure)
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourdvar", description="Incremental 4D-Var with hand-coded tangent-linear and adjoint models.")
    parser.add_argument("--version", action="version", version=f"fourdvar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a cycled 4D-Var experiment and write its NetCDF result", description="Run the experiment a YAML file describes and write one NetCDF result file.")
    run.add_argument("config", help="the experiment's YAML file")
    run.add_argument("--output", "-o", help="result file (default: the config's output.file)")
    run.add_argument("--cycles", type=_positive_int, help="number of windows (overrides window.cycles)")
    run.add_argument("--seed", type=int, help="random seed (overrides seed)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    run.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    run.set_defaults(handler=command_run)

    check = commands.add_parser("check", help="run the adjoint, tangent-linear and gradient tests on a config's model, operators and cost", description="Adjoint (dot-product), tangent-linear (Taylor) and gradient tests of everything a configuration uses; exit status 1 if any fails.")
    check.add_argument("config", help="the experiment's YAML file")
    check.add_argument("--seed", type=int, help="random seed (overrides seed)")
    check.set_defaults(handler=command_check)

    generate = commands.add_parser("generate", help="write the truth run and the observations alone to NetCDF", description="Write the truth run and the synthetic observations of a configuration to one NetCDF file (readable as observations.file).")
    generate.add_argument("config", help="the experiment's YAML file")
    generate.add_argument("--output", "-o", help="output file (default: results/<config name>_data.nc)")
    generate.add_argument("--cycles", type=_positive_int, help="number of windows (overrides window.cycles)")
    generate.add_argument("--seed", type=int, help="random seed (overrides seed)")
    generate.set_defaults(handler=command_generate)

    plot = commands.add_parser("plot", help="write PNG figures of a result file", description="Cost reduction, RMSE per cycle, Hovmoeller diagram and parameter trajectory of a result file, as PNG.")
    plot.add_argument("result", help="a result file written by 'fourdvar run'")
    plot.add_argument("--output", "-o", help="directory for the figures (default: <result name>_figures next to the file)")
    plot.set_defaults(handler=command_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"fourdvar: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CommandError as error:
        print(f"fourdvar: error: {error}", file=sys.stderr)
        return error.status


if __name__ == "__main__":
    sys.exit(main())
