"""Members on dask.distributed: an embedded cluster gives the same files as serial runs,
bit for bit; existing result files are skipped; a cluster of a `dask scheduler` and two
`dask worker` processes on 127.0.0.1 loses a worker midway and still delivers every
member, identical, with nothing half-written."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
import xarray as xr

from fourdvar.app.atomic import temporary_name
from fourdvar.app.cluster import (
    Member, embedded_cluster, execute_member, run_config, run_members,
)
from fourdvar.app.config import resolve_config
from tests.test_ensemble_run import assert_identical_results



def l96_config(seed: int, cycles: int = 12) -> dict:
    return resolve_config({
        "seed": seed, "model": {"type": "lorenz96", "n_state": 40}, "truth": {"spinup_steps": 500},
        "observations": {"every": 4, "operator": {"type": "subset", "indices": "all"}, "error_std": 1.0},
        "background": {"state": {"error_std": 1.0}}, "window": {"steps": 8, "cycles": cycles},
        "assimilation": {"control": ["state"], "outer_loops": 2, "inner": {"max_iterations": 30}},
    }, name=f"seed{seed}")


def members(directory: Path, seeds, cycles: int = 12) -> list[Member]:
    return [Member(f"seed{s}", directory / f"seed{s}.nc", functools.partial(run_config, l96_config(s, cycles)), {"member_seed": s})
            for s in seeds]


def assert_same_result(path_a: Path, path_b: Path) -> None:
    """Every variable bit for bit, every attribute but the provenance (creation time, run time)."""
    with xr.open_dataset(path_a) as a, xr.open_dataset(path_b) as b:
        assert_identical_results(a, b)


def frequent_callbacks(dask_worker) -> list[str]:
    """The worker's periodic callbacks that run more often than once a second, but its heartbeat:
    the scheduler sets that one to 0.5 s for up to ten workers with its first reply (no setting
    changes it), so whether it is seen depends only on when this runs."""
    return sorted(name for name, callback in dask_worker.periodic_callbacks.items() if callback.callback_time < 1000 and name != "heartbeat")


def blas_threads() -> int:
    """Threads of the OpenBLAS this process loaded (numpy's), asked through its own C API."""
    with open("/proc/self/maps") as maps:
        libraries = {line.split()[-1] for line in maps if "openblas" in line.split()[-1].lower()}
    for library in sorted(libraries):
        for symbol in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            function = getattr(ctypes.CDLL(library), symbol, None)
            if function is not None:
                return function()
    raise AssertionError(f"no OpenBLAS thread count found in {sorted(libraries)}")


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """Reference files: each member run in this process, one after the other."""
    directory = tmp_path_factory.mktemp("serial")
    for member in members(directory, range(1, 7)):
        assert execute_member(member).ok
    return directory


def test_members_on_the_embedded_cluster_equal_serial_runs_bit_for_bit(tmp_path, serial):
    seen = []
    with embedded_cluster(2) as client:
        assert all(env == "1" for env in client.run(lambda: os.environ["OPENBLAS_NUM_THREADS"]).values())
        assert list(client.run(blas_threads).values()) == [1, 1]  # the variable alone is read too late once numpy is loaded
        assert all(address.startswith("tcp://127.0.0.1:") for address in [client.scheduler.address, *client.scheduler_info()["workers"]])
        # each wake of a worker's event loop takes the GIL from the member: nothing wakes it more than once a second
        assert list(client.run(frequent_callbacks).values()) == [[], []]
        assert list(client.run(lambda: dask.config.get("distributed.worker.profile.enabled")).values()) == [False, False]
        outcomes = run_members(members(tmp_path, range(1, 5)), client=client, progress=lambda done, total, outcome: seen.append((done, total)))
        # each write guarded by a lock in the worker, none on the scheduler (xarray's default there: a round trip per variable)
        assert client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.extensions["semaphores"].max_leases)) == []
    assert [o.name for o in outcomes] == ["seed1", "seed2", "seed3", "seed4"] and all(o.ok and not o.skipped for o in outcomes)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for s in range(1, 5):
        assert_same_result(tmp_path / f"seed{s}.nc", serial / f"seed{s}.nc")
        with xr.open_dataset(tmp_path / f"seed{s}.nc") as ds:
            assert ds.attrs["member_seed"] == s
    # negative control: different members differ
    with pytest.raises(AssertionError):
        assert_same_result(tmp_path / "seed1.nc", serial / "seed2.nc")


def test_existing_result_files_are_skipped_and_only_missing_members_run(tmp_path):
    done_before = members(tmp_path, [1, 2], cycles=3)
    for member in done_before:
        execute_member(member)
    stamps = {m.name: m.output.stat().st_mtime_ns for m in done_before}
    temporary_name(tmp_path / "seed3.nc").write_bytes(b"half a file")  # left by a killed attempt
    outcomes = run_members(members(tmp_path, [1, 2, 3], cycles=3), n_workers=1)
    assert [o.skipped for o in outcomes] == [True, True, False]
    assert {name: (tmp_path / f"{name}.nc").stat().st_mtime_ns for name in stamps} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed1.nc", "seed2.nc", "seed3.nc"]


def test_a_member_that_fails_is_reported_and_the_others_are_written(tmp_path):
    bad = l96_config(1, cycles=3)
    bad["window"]["steps"] = -1  # the run raises
    good = members(tmp_path, [2], cycles=3)[0]
    outcomes = run_members([Member("bad", tmp_path / "bad.nc", functools.partial(run_config, bad)), good], n_workers=1)
    assert outcomes[0].error and not (tmp_path / "bad.nc").exists()
    assert outcomes[1].ok and good.output.exists()


# --- a cluster started by hand (the test through it is in test_sweep.py) --------------------------------


def start_scheduler_and_workers(directory: Path, n_workers: int = 2) -> tuple[str, list[subprocess.Popen]]:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1 (each its own session): ``(address, processes)``."""
    bin_dir = Path(sys.executable).parent
    scheduler_file = directory / "scheduler.json"
    processes = [_start([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                         "--scheduler-file", str(scheduler_file)], directory / "scheduler.log")]
    try:
        _wait_for(scheduler_file.exists, 60, "the scheduler did not start")
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(n_workers):
            processes.append(_start([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                     "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"], directory / f"worker{i}.log"))
    except BaseException:
        for process in reversed(processes):
            _stop(process)
        raise
    return address, processes


def _start(arguments, log: Path) -> subprocess.Popen:
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stream:
        return subprocess.Popen(arguments, stdout=stream, stderr=subprocess.STDOUT, env=environment, cwd=log.parent, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)

