"""Many independent tasks: where they run (one :class:`Executor`), and how one member runs.

An :class:`Executor` runs the points of a sweep and the members of an ensemble's windows
alike: ``serial`` (one after another here), ``threads`` (a pool of threads here, each task
on its own copy, as a worker would receive it) or ``dask`` (dask.distributed, below).

A *member* is one ordinary run with its own result file (a sweep's point, an
ensemble member).  :func:`execute_member` runs it on whichever worker the
scheduler picks and writes its result file atomically (:mod:`fourdvar.app.atomic`),
so a worker killed mid-run leaves no half-written file: the scheduler reruns that member elsewhere and nothing else is lost.  A member
depends on nothing but its own description: the same member gives the same
numbers on any worker, bit for bit, since every worker runs with one thread and
BLAS limited to one thread.

Where members run (:func:`connect`):

* by default an *embedded* cluster on this machine, started and stopped here:
  one worker process per core (or ``n_workers``), one thread each, BLAS threads 1,
  scheduler and workers listening on 127.0.0.1 only, no dashboard, the workers
  forked ready-to-run from a server that imported their modules once
  (:func:`start_worker_server`);
* with ``scheduler="tcp://HOST:PORT"`` an existing cluster started with
  ``dask scheduler`` and ``dask worker`` (give the workers ``--nthreads 1``;
  their nannies set the BLAS variables to 1 before starting each worker);
* or a :class:`distributed.Client` the caller already has (``client=``).

:func:`run_members` submits every member, reports progress as members finish,
and skips members whose result file already exists (``resume``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import xarray as xr

from .atomic import remove_temporaries, write_atomic

__all__ = [
    "EXECUTORS", "Executor", "Member", "MemberOutcome", "connect", "distributed_map", "run_config", "embedded_cluster", "execute_member", "run_members",
    "start_worker_server", "PROVENANCE_ATTRIBUTES", "SINGLE_THREAD_ENVIRONMENT", "WORKER_PRELOAD",
]

#: Environment of every embedded worker process, set before it starts (numpy reads it on import).
SINGLE_THREAD_ENVIRONMENT = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
}

#: Modules an embedded worker needs before its first member, imported once by the server the workers are forked from.
WORKER_PRELOAD = ("numpy", "scipy", "pandas", "xarray", "dask.array", "netCDF4", "yaml", "fourdvar.app.run", "fourdvar.app.cluster")

#: How long a client tries to reach an existing scheduler before giving up.
CONNECT_TIMEOUT = "10s"

#: NetCDF (HDF5 underneath) is not thread-safe: members on threads read and write files one at a time.
NETCDF_LOCK = threading.RLock()

#: Result-file attributes that say when and how fast a run went, not what it computed.
PROVENANCE_ATTRIBUTES = ("created", "run_seconds")


@dataclass(frozen=True)
class Member:
    """One run: ``run()`` returns its result dataset, written to ``output`` with ``attributes`` added.

    ``run`` must be picklable (a module-level function or a :func:`functools.partial`
    of one) and depend only on what it carries, never on the worker it lands on.
    """

    name: str
    output: Path
    run: Callable[[], xr.Dataset]
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MemberOutcome:
    """What became of a member: written (``seconds`` of work, on ``worker``), skipped, or failed (``error``)."""

    name: str
    output: Path
    skipped: bool = False
    seconds: float = 0.0
    worker: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def execute_member(member: Member) -> MemberOutcome:
    """Run ``member`` and write its result file atomically; skip it when the file exists.

    Exceptions of the run or of the write are returned in the outcome's ``error``
    (one line), so one failing member does not stop the others; nothing is written for it.
    """
    import dask

    output = Path(member.output)
    worker = _worker_address()
    if output.exists():
        return MemberOutcome(member.name, output, skipped=True, worker=worker)
    started = time.perf_counter()
    # A member is one single-threaded run: nothing in it goes back to the cluster.  On a
    # worker, xarray would otherwise guard its NetCDF writes with a scheduler-wide lock,
    # a round trip to the scheduler per variable, for a file no other task touches.
    with dask.config.set(scheduler="synchronous"):
        try:
            dataset = member.run()
            dataset.attrs.update(member.attributes)
            output.parent.mkdir(parents=True, exist_ok=True)
            with NETCDF_LOCK:
                write_atomic(dataset, output)
        except Exception as error:  # reported per member, in one line (a failed write too)
            return MemberOutcome(member.name, output, worker=worker, error=f"{type(error).__name__}: {error}")
    return MemberOutcome(member.name, output, seconds=time.perf_counter() - started, worker=worker)


def run_config(config: dict, base_dir: str = ".", directories: Sequence[str] = ()) -> xr.Dataset:
    """The result dataset of one resolved configuration: its plan executed as ``fourdvar run`` does, no checkpoints
    (``directories``: where a ``module:Class`` it names may live, see :func:`fourdvar.registry.search_directories`)."""
    from ..registry import search_directories
    from .plan import Plan
    from .run import execute

    with search_directories(directories), NETCDF_LOCK:  # the plan may read observation and parameter files
        plan = Plan.from_config(config, base_dir=base_dir)
    return execute(plan)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


# --- where the members run -----------------------------------------------------------------------


#: How embedded workers start: forked by the server of :func:`start_worker_server` (spawned where there is none: Windows).
_FORK_SERVER = "forkserver" in multiprocessing.get_all_start_methods()
# A worker's event loop wakes for its periodic callbacks (statistical profiler every 10 ms, event-loop
# tick every 20 ms, system and memory monitors) and each wake takes the GIL from the member running
# in the worker's thread: a Lorenz-96 member of the sweep benchmark took 5.9 s on a worker against
# 4.4 s in-process, and 4.8 s with these callbacks off or rare (benchmarks/sweep.py measures the whole).
_WORKER_START = {
    "distributed.worker.multiprocessing-method": "forkserver" if _FORK_SERVER else "spawn",
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "5s",
}


def start_worker_server(preload: Sequence[str] = ()) -> None:
    """Start the process that embedded workers are forked from, in the background; returns at once.

    A worker spawned as a fresh interpreter pays, each, for importing distributed,
    numpy, xarray and fourdvar (a second of CPU), and at its exit for tearing them down.
    Instead a fork server (:mod:`multiprocessing.forkserver`) imports
    :data:`WORKER_PRELOAD` and ``preload`` once, with :data:`SINGLE_THREAD_ENVIRONMENT`
    set before numpy loads, and forks each worker from itself ready to run; a forked
    worker ends without a teardown.  The server lives as long as this process (later
    embedded clusters start in a fraction of a second), and only the first call's
    ``preload`` counts; the server and the workers ignore SIGINT (:func:`_interrupts_ignored`).  Call it early, e.g. before validating plans, so that its
    imports overlap that work; :func:`embedded_cluster` calls it in any case.
    """
    if not _FORK_SERVER:
        return
    import multiprocessing.forkserver

    # Nothing of distributed is imported here, so that the server's imports start at once and
    # overlap this process's.  (distributed later sets preloads of its own: unused, the server runs.)
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(dict.fromkeys(["distributed", *WORKER_PRELOAD, *preload])))
    with _environment(SINGLE_THREAD_ENVIRONMENT), _interrupts_ignored():
        multiprocessing.forkserver.ensure_running()


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile: a process started here (the fork server, and so every worker
    forked from it) keeps ignoring it, so Ctrl-C at a terminal, sent to the whole process
    group, reaches this process alone, which stops the workers in order."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _environment(variables: dict) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def embedded_cluster(n_workers: int | None = None, preload: Sequence[str] = ()) -> Iterator:
    """A :class:`distributed.Client` of a local cluster started here and stopped on exit.

    One worker process per core by default, one thread each, BLAS threads 1, on
    127.0.0.1 only, no dashboard, the cluster's logs silenced below critical (a member's
    error is reported in its outcome; what remains are the heartbeats a stopping
    cluster misses); the workers are forked from the server of
    :func:`start_worker_server` (``preload``: further modules it imports, if this call
    starts it).
    """
    start_worker_server(preload)
    import dask
    from distributed import Client, LocalCluster

    n_workers = n_workers or os.cpu_count() or 1
    with dask.config.set({"distributed.nanny.pre-spawn-environ": SINGLE_THREAD_ENVIRONMENT, **_WORKER_START}):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP endpoints: any free port
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            yield client


@contextlib.contextmanager
def connect(client=None, scheduler: str | None = None, n_workers: int | None = None) -> Iterator:
    """The client to run members with: ``client`` itself, a client of the cluster at ``scheduler``,
    or (neither given) of an :func:`embedded_cluster` of ``n_workers`` workers."""
    if client is not None:
        yield client
        return
    if scheduler is not None:
        from distributed import Client

        with Client(scheduler, timeout=CONNECT_TIMEOUT) as connected:
            yield connected
        return
    with embedded_cluster(n_workers) as embedded:
        yield embedded


#: Where an :class:`Executor` runs its tasks.
EXECUTORS = ("serial", "threads", "dask")


class Executor:
    """Runs independent tasks ``function(task)``: ``kind`` one of :data:`EXECUTORS`.

    ``threads``: ``workers`` threads (default: one per core), each task on a copy made by
    pickling, as a worker of a cluster receives it (a model is not shared between threads);
    ``dask``: the cluster of :func:`connect` (``client``, ``scheduler``, or an embedded one
    of ``workers`` processes on 127.0.0.1), started on entering the executor's context.
    Every kind gives the same results, bit for bit: a task depends on nothing but itself.

    Examples
    --------
    >>> with Executor("threads", workers=2) as executor:
    ...     executor.map(abs, [-1, 2, -3])
    [1, 2, 3]
    """

    def __init__(self, kind: str = "dask", workers: int | None = None, scheduler: str | None = None, client=None):
        if kind not in EXECUTORS:
            raise ValueError(f"executor: expected one of {', '.join(EXECUTORS)}, got {kind!r}")
        self.kind, self.workers, self.scheduler, self.client = kind, workers, scheduler, client
        self._stack, self._depth = None, 0

    def __enter__(self) -> "Executor":
        """Start the pool or the cluster (entering a running executor keeps it running)."""
        if self._stack is None:
            self._stack = contextlib.ExitStack()
            if self.kind == "dask" and self.client is None:
                self.client = self._stack.enter_context(connect(None, self.scheduler, self.workers))
                self._stack.callback(setattr, self, "client", None)
            elif self.kind == "threads":
                self._pool = self._stack.enter_context(concurrent.futures.ThreadPoolExecutor(self.workers or os.cpu_count() or 1))
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if not self._depth:
            stack, self._stack = self._stack, None
            stack.close()

    def map(self, function: Callable, tasks) -> list:
        """``[function(task) for task in tasks]``, in the tasks' order."""
        tasks = list(tasks)
        if self.kind == "serial":
            return [function(task) for task in tasks]
        futures = self._submit(function, tasks)
        return self.client.gather(futures) if self.kind == "dask" else [future.result() for future in futures]

    def completed(self, function: Callable, tasks) -> Iterator:
        """``function(task)`` for each task, as each finishes."""
        tasks = list(tasks)
        if self.kind == "serial":
            yield from map(function, tasks)
            return
        futures = self._submit(function, tasks)
        if self.kind == "dask":
            from distributed import as_completed
        else:
            as_completed = concurrent.futures.as_completed
        for future in as_completed(futures):
            yield future.result()

    def _submit(self, function: Callable, tasks: list) -> list:
        if self.kind == "threads":
            return [self._pool.submit(_on_a_copy, function, pickle.dumps(task)) for task in tasks]
        token = uuid.uuid4().hex[:8]  # keys unique on a shared scheduler
        return [self.client.submit(function, task, key=f"task-{_name(task, i)}-{token}", pure=False) for i, task in enumerate(tasks)]


def _on_a_copy(function: Callable, task: bytes):
    return function(pickle.loads(task))


def _name(task, index: int) -> str:
    return f"member-{task.name}" if isinstance(task, Member) else str(index)


def distributed_map(client) -> Callable[[Callable, Sequence], list]:
    """``map_members(function, tasks)`` on the cluster of ``client``: the results in the tasks' order
    (each task its own future: a lost worker's task is rerun elsewhere)."""
    return Executor("dask", client=client).map


def run_members(
    members: Sequence[Member], client=None, scheduler: str | None = None, n_workers: int | None = None,
    progress: Callable[[int, int, MemberOutcome], None] | None = None, executor: Executor | None = None,
) -> list[MemberOutcome]:
    """Run every member with ``executor`` (default: on the cluster of :func:`connect`, from
    ``client``, ``scheduler`` or ``n_workers``); outcomes in the members' order.

    A member whose result file exists is skipped without being submitted (so a
    rerun resumes); ``progress(done, total, outcome)`` after each member.  A worker
    lost mid-run costs the rerun of its member only: the scheduler resubmits it,
    and the temporary file the lost attempt left is removed at the end.
    """
    names = [member.name for member in members]
    if len(set(names)) != len(names):
        raise ValueError("run_members: member names must be unique")
    outcomes: dict[str, MemberOutcome] = {}
    pending = []
    for member in members:
        remove_temporaries(member.output)
        if Path(member.output).exists():
            outcomes[member.name] = MemberOutcome(member.name, Path(member.output), skipped=True)
        else:
            pending.append(member)
    done = 0
    for outcome in outcomes.values():
        done += 1
        if progress is not None:
            progress(done, len(members), outcome)
    if pending:
        with executor or Executor("dask", n_workers, scheduler, client) as active:
            for outcome in active.completed(execute_member, pending):
                outcomes[outcome.name] = outcome
                done += 1
                if progress is not None:
                    progress(done, len(members), outcome)
        for member in pending:  # what attempts on lost workers left
            remove_temporaries(member.output)
    return [outcomes[name] for name in names]
