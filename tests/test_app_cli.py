"""Command-line limits and interruptions a hostile user reaches: a worker count beyond the
machine, a figure interrupted while it is written (never half a PNG), temporaries a killed
plot left.  In this process (:func:`conftest.run_command`)."""

from __future__ import annotations

import os

import pytest
from conftest import run_command
from matplotlib.figure import Figure
from test_plotting import synthetic_result

from fourdvar.app import cli, plotting
from fourdvar.app.atomic import temporary_name


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_worker_count_beyond_the_machine_is_refused_before_any_worker_starts(tmp_path, command):
    (tmp_path / "c.yaml").write_text("model: {type: lorenz96, n_state: 8}\n")
    limit = cli.WORKERS_PER_CORE * (os.cpu_count() or 1)
    result = run_command(command, "c.yaml", "--workers", str(10**6), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert f"--workers: expected at most {limit} ({cli.WORKERS_PER_CORE} per core" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    # negative control: the limit itself is accepted by the parser
    assert cli.build_parser().parse_args([command, "c.yaml", "--workers", str(limit)]).workers == limit


def test_a_figure_interrupted_while_written_leaves_no_half_png(tmp_path, monkeypatch):
    synthetic_result().to_netcdf(tmp_path / "result.nc")
    monkeypatch.setattr(plotting, "FIGURES", {"rmse": plotting.FIGURES["rmse"]})  # one figure is enough
    saved = Figure.savefig

    def interrupted(self, target, **options):
        if "rmse" in str(target):
            with open(target, "wb") as handle:
                handle.write(b"\x89PNG half a figure")
            raise KeyboardInterrupt  # SIGTERM arrives as this
        return saved(self, target, **options)

    monkeypatch.setattr(Figure, "savefig", interrupted)
    result = run_command("plot", "result.nc", "--output", "figs", cwd=tmp_path)
    assert result.returncode == cli.EXIT_INTERRUPTED
    assert not (tmp_path / "figs").exists()  # the directory this plot created goes with it
    (tmp_path / "figs").mkdir()
    result = run_command("plot", "result.nc", "--output", "figs", cwd=tmp_path)
    assert result.returncode == cli.EXIT_INTERRUPTED
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert "rmse.png" not in names and not [name for name in names if name.endswith(".tmp")], names
    monkeypatch.setattr(Figure, "savefig", saved)
    # a temporary a killed plot left is removed by the next plot, which writes every figure whole
    leftover = temporary_name(tmp_path / "figs" / "rmse.png")
    leftover.write_bytes(b"\x89PNG half")
    result = run_command("plot", "result.nc", "--output", "figs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not leftover.exists() and (tmp_path / "figs" / "rmse.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_sweep_interrupted_before_any_member_finished_says_nothing_was_kept(tmp_path, monkeypatch):
    from fourdvar.app import sweep

    def interrupted(*args, **options):
        raise KeyboardInterrupt  # SIGTERM before the first member ends

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    (tmp_path / "c.yaml").write_text("model: {type: lorenz96, n_state: 8}\nsweep: {seed: [1, 2]}\noutput: {file: out.nc}\n")
    result = run_command("sweep", "c.yaml", "--executor", "serial", "-q", cwd=tmp_path)
    assert result.returncode == cli.EXIT_INTERRUPTED
    assert result.stderr.strip() == "interrupted; no member had finished, so nothing was kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize("args, config, words", [
    (("run", "c.yaml", "--output", "~/x.nc"), "", ("--output: ~/x.nc", "starts with '~'", os.path.expanduser("~/x.nc"))),
    (("run", "c.yaml"), "output: {file: ~/results/r.nc}\n", ("c.yaml: output.file: ~/results/r.nc", "starts with '~'")),
    (("generate", "c.yaml", "--output", "~/obs.nc"), "", ("--output: ~/obs.nc", "starts with '~'")),
    (("sweep", "c.yaml", "--output", "~/sweep"), "sweep: {seed: [1, 2]}\n", ("--output: ~/sweep", "starts with '~'")),
])
def test_a_path_starting_with_a_tilde_is_refused_not_made_a_directory_named_tilde(tmp_path, args, config, words):
    """No shell expanded it (quoted, or in the YAML): it would name a directory '~' here."""
    (tmp_path / "c.yaml").write_text("model: {type: lorenz96, n_state: 8}\ntruth: {spinup_steps: 10}\n" + config)
    result = run_command(*args, "--executor", "serial", cwd=tmp_path) if args[0] == "sweep" else run_command(*args, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_run_in_progress_is_not_taken_for_an_interrupted_one(tmp_path):
    """Its checkpoint holds windows and its lock: a second run is told to wait, not to --resume, before any computation."""
    from fourdvar.app.checkpoint import Checkpoint

    (tmp_path / "c.yaml").write_text("model: {type: lorenz96, n_state: 8}\ntruth: {spinup_steps: 10000000}\noutput: {file: out.nc}\n")
    running = Checkpoint(tmp_path / "out.nc")
    running.acquire()
    try:
        (running.directory / "cycle_000000.nc").write_bytes(b"a window the running run saved")
        result = run_command("run", "c.yaml", cwd=tmp_path)
        assert result.returncode == 2 and "another fourdvar run is writing out.nc" in result.stderr, result.stderr
    finally:
        running.release()
    # negative control: the same windows without the lock are an interrupted run's
    result = run_command("run", "c.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "1 completed windows of an interrupted run" in result.stderr, result.stderr
