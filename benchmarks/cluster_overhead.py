"""Where an embedded cluster's time goes besides the members' own work, two ways of starting workers compared.

    python benchmarks/cluster_overhead.py              # 5 repeats of each, about 2 minutes on an idle machine
    python benchmarks/cluster_overhead.py --repeats 3

Each repeat runs, in a fresh Python process per way (imports done before the clock
starts, as in ``benchmarks/sweep.py``), one embedded 2-worker cluster and times

    start         entering the cluster until its client is ready (a fork server's start included)
    start cpu     CPU seconds on the way to a ready worker: the worker's own until then (the
                  slowest one), plus the fork server's imports
    round trip    one no-op task submitted and its result back (median of 10)
    first extra   a short member's first run on a fresh worker minus its second run there
                  (the worker's first imports and compiled-kernel loading), worst worker;
                  also in CPU seconds
    per member    the same member's warm run on a worker minus its warm run in the
                  calling process (what a member pays for running on a worker); also in CPU
    main cpu      CPU seconds the calling process spends while the workers run two members
    stop          leaving the cluster until it is closed

On a busy machine the wall-clock rows stretch with the load; the CPU rows do not.

for the two ways:

    spawn         dask's default: each worker a fresh interpreter (spawned), members
                  writing NetCDF under xarray's default lock (on a worker: the scheduler's)
    forkserver    :func:`fourdvar.app.cluster.embedded_cluster`: workers forked from a server
                  that imported their modules once, members writing without the scheduler

The table shows medians over the repeats (and every value).  A member here is the
sweep benchmark's Lorenz-96 run shortened to ``--cycles`` windows.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("timing", os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing.py"))
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)

from fourdvar.app.cluster import (  # noqa: E402
    SINGLE_THREAD_ENVIRONMENT, Member, MemberOutcome, embedded_cluster, execute_member, run_config,
)
from fourdvar.app.atomic import write_atomic  # noqa: E402
from fourdvar.app.config import resolve_config  # noqa: E402

WAYS = ("spawn", "forkserver")
COMPONENTS = ("start", "start_cpu", "round_trip", "first_extra", "first_extra_cpu", "per_member", "per_member_cpu", "main_cpu", "stop")


def member_config(cycles: int) -> dict:
    return resolve_config({
        "seed": 1, "model": {"type": "lorenz96", "n_state": 40}, "truth": {"spinup_steps": 500},
        "observations": {"every": 4, "operator": {"type": "subset", "indices": "all"}, "error_std": 1.0},
        "background": {"state": {"error_std": 1.0}}, "window": {"steps": 8, "cycles": cycles},
        "assimilation": {"control": ["state"], "outer_loops": 3, "inner": {"max_iterations": 50}},
    }, name="overhead")


def execute_with_default_lock(member: Member) -> MemberOutcome:
    """:func:`execute_member` as it would run under dask's defaults (xarray picks its write lock from the active scheduler)."""
    started = time.perf_counter()
    dataset = member.run()
    write_atomic(dataset, Path(member.output))
    return MemberOutcome(member.name, Path(member.output), seconds=time.perf_counter() - started)


@contextlib.contextmanager
def spawned_cluster(n_workers: int):
    """A local cluster of spawned workers, otherwise as :func:`embedded_cluster`."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": SINGLE_THREAD_ENVIRONMENT, "distributed.worker.multiprocessing-method": "spawn"}):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                          scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(execute, member: Member) -> tuple[MemberOutcome, float]:
    """The member's outcome and the CPU seconds its run took."""
    started = time.process_time()
    outcome = execute(member)
    return outcome, time.process_time() - started


def fork_server_cpu() -> float:
    """CPU seconds of this process's fork server (0 without one)."""
    import psutil

    servers = [child for child in psutil.Process().children() if "multiprocessing.forkserver" in " ".join(child.cmdline())]
    return sum(sum(server.cpu_times()[:2]) for server in servers)


def one_cluster(way: str, cycles: int, directory: Path) -> dict:
    cluster, execute = (spawned_cluster, execute_with_default_lock) if way == "spawn" else (embedded_cluster, execute_member)
    member = lambda name: Member(name, directory / f"{name}.nc", functools.partial(run_config, member_config(cycles)))  # noqa: E731
    execute_member(member("here-warm-up"))
    in_process, in_process_cpu = timed(execute_member, member("here"))
    times = {}
    started = time.perf_counter()
    context = cluster(2)
    client = context.__enter__()
    times["start"] = time.perf_counter() - started
    times["start_cpu"] = max(client.run(cpu_seconds).values()) + fork_server_cpu()
    try:
        trips = []
        for _ in range(10):
            sent = time.perf_counter()
            client.submit(int, 0, pure=False).result()
            trips.append(time.perf_counter() - sent)
        times["round_trip"] = statistics.median(trips)
        workers = list(client.scheduler_info()["workers"])
        on_each = lambda label: client.gather([client.submit(timed, execute, member(f"{label}{i}"), workers=[w], pure=False)  # noqa: E731
                                               for i, w in enumerate(workers)])
        first = on_each("first")
        cpu = cpu_seconds()
        warm = on_each("warm")
        times["main_cpu"] = cpu_seconds() - cpu
        times["first_extra"] = max(f.seconds - w.seconds for (f, _), (w, _) in zip(first, warm))
        times["first_extra_cpu"] = max(f - w for (_, f), (_, w) in zip(first, warm))
        times["per_member"] = statistics.median(w.seconds for w, _ in warm) - in_process.seconds
        times["per_member_cpu"] = statistics.median(w for _, w in warm) - in_process_cpu
    finally:
        stopping = time.perf_counter()
        context.__exit__(None, None, None)
        times["stop"] = time.perf_counter() - stopping
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=100, help="windows of the short member (100: about 0.4 s here)")
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)  # one cluster, in its own process
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as directory:
            print(json.dumps(one_cluster(args.one, args.cycles, Path(directory))))
        return
    print(timing.machine_header())
    print(f"embedded 2-worker cluster, members of {args.cycles} windows; {args.repeats} repeats, the two ways alternating, each in a new process")
    rows = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            result = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", way, "--cycles", str(args.cycles)],
                                    check=True, capture_output=True, text=True)
            rows[way].append(json.loads(result.stdout.splitlines()[-1]))
    print(f"{'seconds (median)':18s}" + "".join(f"{way:>12s}" for way in WAYS) + "   every value (spawn | forkserver)")
    for name in COMPONENTS:
        medians = [statistics.median(row[name] for row in rows[way]) for way in WAYS]
        values = " | ".join(" ".join(f"{row[name]:.3f}" for row in rows[way]) for way in WAYS)
        print(f"{name:18s}" + "".join(f"{m:12.3f}" for m in medians) + f"   {values}")


if __name__ == "__main__":
    main()
