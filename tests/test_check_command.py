"""``fourdvar check``: the window length and the number of directions from the command
line, the batched window of a model that has one, and the exit status of each verdict
(0 all pass, 1 a failure, 3 inconclusive without a failure)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from conftest import run_command

from fourdvar import checks
from fourdvar.app import cli

CONFIG = {
    "seed": 2,
    "model": {"type": "mlp", "layer_sizes": [6, 10, 6], "activations": ["tanh", "identity"], "residual": True},
    "truth": {"model": {"type": "lorenz96", "n_state": 6}, "spinup_steps": 50},
    "window": {"steps": 5, "cycles": 1},
    "assimilation": {"control": ["state", "params"]},
    "output": {"file": "out/result.nc"},
}


def rows(stdout: str) -> dict[str, list[str]]:
    """Table rows by test name: the columns after the name."""
    table = {}
    for line in stdout.splitlines():
        match = re.match(r"^(\S.*?)((?:\s+\S+){4})\s+(PASS|FAIL|INCONCLUSIVE)\s*$", line)
        if match:
            table.setdefault(match.group(1), match.group(2).split() + [match.group(3)])
    return table


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    directory = tmp_path_factory.mktemp("check")
    (directory / "experiment.yaml").write_text(yaml.safe_dump(CONFIG))
    return run_command("check", "experiment.yaml", "--window-steps", "7", "--directions", "2", cwd=directory)


def test_check_takes_the_window_length_and_the_directions(checked):
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "window of 7 steps" in checked.stdout and "cost of the first 7 steps" in checked.stdout
    table = rows(checked.stdout)
    assert {"adjoint, 7 steps", "tangent-linear, 7 steps"} <= set(table)
    assert "window of 7 steps, 2 random directions per test" in checked.stdout
    assert re.search(r"^tangent-linear, 7 steps: the remainder falls as a\^(1\.9\d|2\.0\d) over", checked.stdout, re.MULTILINE)
    assert "(2 directions tried; shown: the one with the largest relative error)" in checked.stdout
    n_rows = sum(line.endswith("  PASS") for line in checked.stdout.splitlines())
    assert checked.stdout.strip().splitlines()[-1] == f"{n_rows} passed, 0 failed, 0 inconclusive"


def test_check_covers_the_batched_window_against_the_per_step_chain(checked):
    table = rows(checked.stdout)
    comparison = table["batched window == per step, 7 steps"]
    assert comparison[-1] == "PASS" and float(comparison[0]) < 1e-12 and comparison[1] == "1e-10"
    assert table["adjoint, batched window of 7 steps"][-1] == "PASS"


def test_check_explains_its_columns(checked):
    assert checks.LEGEND in checked.stdout
    header = next(line for line in checked.stdout.splitlines() if line.startswith("test "))
    assert header.split() == ["test", "rel.", "error", "tolerance", "order", "minimum", "verdict"]


def verdicts(status):
    def fake(*args, **kwargs):
        return [checks.CheckResult("adjoint, one step", checks.PASS, error=1e-16, error_tolerance=1e-12),
                checks.CheckResult("tangent-linear, one step", status, min_order=checks.MIN_ORDER, details="a made-up verdict")]
    return fake


@pytest.mark.parametrize("status, code", [(checks.PASS, 0), (checks.FAIL, 1), (checks.INCONCLUSIVE, 3)])
def test_exit_status_of_each_verdict(status, code, tmp_path, monkeypatch, capsys):
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checks, "check_model", verdicts(status))
    assert cli.main(["check", "experiment.yaml", "--window-steps", "2"]) == code
    last = capsys.readouterr().out.strip().splitlines()[-1]
    failed, inconclusive = int(status == checks.FAIL), int(status == checks.INCONCLUSIVE)
    assert last.endswith(f" passed, {failed} failed, {inconclusive} inconclusive")


@pytest.mark.parametrize("option", ["--window-steps", "--directions"])
def test_a_bad_option_value_is_refused_before_any_check(option, tmp_path):
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(CONFIG))
    result = run_command("check", "experiment.yaml", option, "0", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert option in result.stderr and "expected a positive integer, got 0" in result.stderr


def test_inconclusive_never_counts_as_failed():
    results = [checks.CheckResult("a", checks.INCONCLUSIVE), checks.CheckResult("b", checks.PASS)]
    assert checks.summarize(results) == {"PASS": 1, "FAIL": 0, "INCONCLUSIVE": 1}
    assert not any(r.failed for r in results) and not results[0].passed
    np.testing.assert_equal(results[0].error, np.nan)


@pytest.mark.parametrize("at_end, expected_steps", [(False, [0, 2, 4]), (True, [2, 4, 6])])
def test_check_uses_the_observation_times_of_the_run(at_end, expected_steps, tmp_path, monkeypatch, capsys):
    """With ``window.observations_at_end`` the checked cost sees the window's end, as the run does."""
    config = dict(CONFIG, observations={"every": 2}, window={"steps": 6, "cycles": 1, "observations_at_end": at_end})
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    seen = []
    check_cost = checks.check_cost

    def spy(cost, *args, **kwargs):
        seen.append([slot.step for slot in cost.slots])
        return check_cost(cost, *args, **kwargs)

    monkeypatch.setattr(checks, "check_cost", spy)
    assert cli.main(["check", "experiment.yaml"]) == 0
    assert seen == [expected_steps]
