"""Sweeps: one configuration, a ``sweep:`` block of dotted keys mapped to lists, one run per combination.

::

    sweep:
      seed: [1, 2, 3]
      background.state.error_std: [0.3, 0.5]

gives 6 members, the cartesian product in the order the keys are written.  Each
member is the configuration with those keys set, validated whole (resolved and
built, as ``fourdvar run`` would) before anything runs, and run as an ordinary
run: the same code path and result file as ``fourdvar run``, the member's
settings in its attributes (``sweep_<key>``), in the sweep's directory.  The
members run through one :class:`~fourdvar.app.cluster.Executor`, as an ensemble's
members do: on dask.distributed by default (an embedded cluster, an existing one by
``scheduler`` address or ``client``), or serially or on threads here.
Paths are made absolute before the members leave this process: the workers of an
existing cluster must see the same file system (a shared directory on a cluster).
A finished member's file is never rewritten: ``resume`` runs only what is missing.

``summary.nc`` in the directory holds every member's headline numbers along the
sweep's dimensions (one per key, NaN where a member failed), and
:func:`summary_table` gives their mean and spread over seeds.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from .atomic import remove_temporaries, write_atomic
from .cluster import Executor, Member, MemberOutcome, run_config, run_members
from .config import ConfigError, load_raw, resolve_config, short

__all__ = ["SweepMember", "Sweep", "run_sweep", "summary_dataset", "summary_table", "SUMMARY_FILE"]

SUMMARY_FILE = "summary.nc"
#: The most members a sweep may have (each is resolved, validated and run as a whole experiment).
MAX_MEMBERS = 10_000


@dataclass(frozen=True)
class SweepMember:
    """One combination: its settings ``{dotted key: value}``, resolved configuration and result file."""

    index: int
    settings: dict
    config: dict
    output: Path

    @property
    def name(self) -> str:
        return self.output.stem

    def member(self, base_dir: str = ".", directories: tuple = ()) -> Member:
        attributes = {f"sweep_{key}": _attribute(value) for key, value in self.settings.items()}
        return Member(self.name, self.output, functools.partial(run_config, self.config, base_dir, directories), attributes)


def _refuse_twins(members: list[SweepMember]) -> None:
    """Two members with the same resolved configuration (``[1, 1.0]``, say) are one experiment run twice."""
    seen = {}
    for member in members:
        key = repr(_numbers_as_floats({**member.config, "output": {**member.config["output"], "file": None}}))
        if key in seen:
            first = ", ".join(f"{k}={short(v, 30)}" for k, v in seen[key].settings.items())
            second = ", ".join(f"{k}={short(v, 30)}" for k, v in member.settings.items())
            raise ConfigError(f"sweep: the members {first} and {second} are the same configuration; list each value once")
        seen[key] = member


def _numbers_as_floats(value):
    if isinstance(value, dict):
        return {key: _numbers_as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers_as_floats(item) for item in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _attribute(value):
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else repr(value)


def _set_dotted(config: dict, key: str, value, where: str) -> None:
    *parents, last = key.split(".")
    node = config
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parents[: i + 1])} is not a mapping, so {key} cannot be set")
        node = child
    node[last] = copy.deepcopy(value)


def _file_name(index: int, settings: dict) -> str:
    label = "_".join(f"{key}-{value}" for key, value in settings.items())
    return f"{index:03d}_" + re.sub(r"[^A-Za-z0-9.=+-]+", "_", label)[:120] + ".nc"


class Sweep:
    """The members of a sweep configuration, every one resolved; raises :class:`ConfigError` for any invalid member."""

    def __init__(self, raw: dict, name: str, output: str | Path | None = None, base_dir: str | Path = ".", config_dir: str | Path = "."):
        base = resolve_config(raw, name=name)
        self.directories = (str(Path(config_dir).absolute()),)  # where a module:Class of the configuration may live
        self.keys = list(base["sweep"])
        if not self.keys:
            raise ConfigError("sweep: the configuration has no sweep block (or it is empty); run it with 'fourdvar run'")
        for key in self.keys:
            inner = next((other for other in self.keys if other.startswith(key + ".")), None)
            if inner is not None:
                raise ConfigError(f"sweep: {key} and {inner} both set {inner}; sweep one of them")
        self.name = name
        # absolute: a worker of an existing cluster runs in a directory of its own
        self.base_dir = str(Path(base_dir).absolute())
        directory = Path(output) if output is not None else Path(base["output"]["file"]).with_suffix("")
        from .plan import check_not_home_shorthand

        check_not_home_shorthand(str(directory), "--output" if output is not None else "output.file")
        self.directory = directory.absolute()
        self.values = [base["sweep"][key] for key in self.keys]
        if (count := math.prod(map(len, self.values))) > MAX_MEMBERS:  # before each member's configuration is built
            raise ConfigError(f"sweep: {' x '.join(str(len(values)) for values in self.values)} = {count} members; at most {MAX_MEMBERS}")
        self.members = []
        for index, combination in enumerate(itertools.product(*self.values)):
            settings = dict(zip(self.keys, combination))
            self.members.append(self._member(raw, index, settings))
        _refuse_twins(self.members)

    @classmethod
    def from_file(cls, path: str | Path, output: str | Path | None = None) -> "Sweep":
        path = Path(path)
        try:
            return cls(load_raw(path), path.stem, output, config_dir=path.parent)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def _member(self, raw: dict, index: int, settings: dict) -> SweepMember:
        where = "sweep member " + ", ".join(f"{key}={short(value, 30)}" for key, value in settings.items())
        member_raw = copy.deepcopy(raw)
        del member_raw["sweep"]
        for key, value in settings.items():
            _set_dotted(member_raw, key, value, where)
        output = self.directory / _file_name(index, settings)
        member_raw.setdefault("output", {})
        if isinstance(member_raw["output"], dict):
            member_raw["output"]["file"] = str(output)
        try:
            config = resolve_config(member_raw, name=self.name)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        return SweepMember(index, settings, config, output)

    def validate(self, inputs=()) -> None:
        """Every member's :class:`~fourdvar.app.plan.Plan`, as its run builds it first (its output
        checked against ``inputs`` and the files it reads), and the summary file against all of them."""
        from ..registry import search_directories
        from .plan import Plan

        self.check_summary(inputs)
        for member in self.members:
            try:
                with search_directories(self.directories):
                    Plan.from_config(member.config, base_dir=self.base_dir, output=member.output, inputs=tuple(inputs))
            except ConfigError as error:
                where = ", ".join(f"{key}={short(value, 30)}" for key, value in member.settings.items())
                raise ConfigError(f"sweep member {where}: {error}") from None

    def check_summary(self, inputs=()) -> None:
        """The summary file must be none of ``inputs`` and of the files the members read."""
        from .plan import Plan, check_output

        read = [*inputs, *(path for member in self.members for path in Plan.declared_inputs(member.config, self.base_dir))]
        check_output(self.directory / SUMMARY_FILE, read, what="the sweep summary")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(values) for values in self.values)


def run_sweep(
    sweep: Sweep, client=None, scheduler: str | None = None, n_workers: int | None = None,
    progress: Callable[[int, int, MemberOutcome], None] | None = None, serial: bool = False,
    executor: Executor | None = None,
) -> tuple[list[MemberOutcome], xr.Dataset]:
    """Run the members that have no result file yet, then write and return the summary.

    With ``executor`` (:class:`fourdvar.app.cluster.Executor`), else on the cluster of
    ``client``, ``scheduler`` or an embedded one of ``n_workers``, or with ``serial`` one
    after another here.
    """
    members = [member.member(sweep.base_dir, sweep.directories) for member in sweep.members]
    executor = executor or Executor("serial" if serial else "dask", n_workers, scheduler, client)
    outcomes = run_members(members, progress=progress, executor=executor)
    summary = summary_dataset(sweep)
    remove_temporaries(sweep.directory / SUMMARY_FILE)
    write_atomic(summary, sweep.directory / SUMMARY_FILE)
    return outcomes, summary


def summary_dataset(sweep: Sweep) -> xr.Dataset:
    """Every member's headline numbers (``headline_*`` attributes) along the sweep's dimensions."""
    headlines: dict[str, np.ndarray] = {}
    files = np.full(sweep.shape, "", dtype=object)
    for member, position in zip(sweep.members, itertools.product(*(range(n) for n in sweep.shape))):
        if not member.output.exists():
            continue
        files[position] = member.output.name
        with xr.open_dataset(member.output, engine="netcdf4") as result:
            for key, value in result.attrs.items():
                if key.startswith("headline_"):
                    headlines.setdefault(key.removeprefix("headline_"), np.full(sweep.shape, np.nan))[position] = float(value)
    coords = {key: _coordinate(values) for key, values in zip(sweep.keys, sweep.values)}
    dataset = xr.Dataset(
        {name: (tuple(sweep.keys), values, {"long_name": name.replace("_", " ")}) for name, values in sorted(headlines.items())},
        coords=coords,
    )
    dataset["member_file"] = (tuple(sweep.keys), files.astype(str), {"long_name": "result file of the member (empty: not run)"})
    dataset.attrs.update(title=f"sweep {sweep.name}", sweep_keys=" ".join(sweep.keys), members=len(sweep.members))
    return dataset


def _coordinate(values: list) -> np.ndarray:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=float if any(isinstance(v, float) for v in values) else int)
    return np.asarray([str(v) for v in values])


#: Width of the table ``fourdvar sweep`` prints; what does not fit stays in the summary file.
TABLE_WIDTH = 100


def summary_table(summary: xr.Dataset, width: int = TABLE_WIDTH) -> str:
    """Each headline number's mean and spread (sample std) over ``seed`` for each other combination
    (each member's values when the sweep has no ``seed`` key), as many columns as fit in
    ``width`` characters, the RMSEs first; a last line names the file holding the rest."""
    names = [name for name in summary.data_vars if name != "member_file"]
    if not names:
        return "no member has headline numbers"
    over_seeds = "seed" in summary.dims and summary.sizes["seed"] > 1
    others = [dim for dim in summary.dims if dim != "seed"] if over_seeds else list(summary.dims)
    positions = list(itertools.product(*(range(summary.sizes[dim]) for dim in others)))
    columns = [[_clip(str(dim))] + [_clip(str(summary[dim].values[p[i]])) for p in positions] for i, dim in enumerate(others)]
    shown = 0
    for name in sorted(names, key=lambda name: ("rmse" not in name, names.index(name))):
        cells = [_cell(summary[name].isel(dict(zip(others, p))).values, over_seeds) for p in positions]
        column = [name, *cells]
        if sum(max(map(len, c)) + 2 for c in [*columns, column]) - 2 > width:
            continue
        columns.append(column)
        shown += 1
    widths = [max(map(len, column)) for column in columns]
    lines = ["  ".join(column[row].ljust(w) for column, w in zip(columns, widths)).rstrip() for row in range(len(positions) + 1)]
    notes = [f"mean +- std over {summary.sizes['seed']} seeds"] if over_seeds else []
    if shown < len(names):
        notes.append(f"{len(names) - shown} more headline numbers in {SUMMARY_FILE}")
    return "\n".join([lines[0], "-" * min(len(lines[0]), width), *lines[1:], *(f"({note})" for note in notes)])


def _clip(text: str, limit: int = 32) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(values: np.ndarray, over_seeds: bool) -> str:
    if over_seeds:
        finite = values[np.isfinite(values)]
        return f"{finite.mean():.4g} +- {finite.std(ddof=1):.2g}" if finite.size > 1 else (f"{finite[0]:.4g}" if finite.size else "-")
    return f"{float(values):.4g}" if np.isfinite(values) else "-"
