"""Regenerate the figure gallery, docs/gallery/ and docs/gallery.md, with the real command line.

    python docs/make_gallery.py

Each case is a short run (``fourdvar run CONFIG --cycles N``, or ``fourdvar sweep``)
followed by ``fourdvar plot``; the figures the case is there to show are copied to
``docs/gallery/<case>_<figure>.png`` and listed in ``docs/gallery.md`` under it (the
others ``fourdvar plot`` writes are left out, to keep the gallery small).  A case's
configuration is a shipped one with a few keys changed (``changes``), or a mapping.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GALLERY = DOCS / "gallery"

SMALL_STATE = {
    "title": "Lorenz-96 with five variables, state only",
    "seed": 1,
    "model": {"type": "lorenz96", "n_state": 5, "forcing": 8.0, "dt": 0.05},
    "truth": {"spinup_steps": 500},
    "observations": {"every": 2, "operator": {"type": "subset", "indices": [0, 2, 4]}, "error_std": 1.0},
    "background": {"state": {"error_std": 1.0}},
    "window": {"steps": 8, "cycles": 12},
    "output": {"file": "result.nc"},
}


@dataclass(frozen=True)
class Case:
    config: str | dict  # a file under configs/ or a whole configuration
    cycles: int
    figures: tuple[str, ...]  # the figures shown
    what: str
    changes: dict = field(default_factory=dict)  # keys of the shipped configuration replaced (nested mappings)
    options: tuple = ()  # more options of fourdvar run / sweep
    sweep: bool = False


CASES = {
    "forcing": Case("l96_forcing.yaml", 12, ("params", "obs"), "Lorenz-96 with its forcing estimated (one parameter, named F "
                    "by `background.params.names`): the estimate with the prior (P) and posterior (P^a) std bands of each "
                    "window; observation space: O-B and O-A per window, chi2 against its expected 1",
                    changes={"background": {"params": {"names": ["F"]}}}),
    "surrogate": Case("l96_surrogate.yaml", 6, ("params",), "a LocalMLP surrogate learned online: the weights summary "
                      "instead of a single norm, with the std of P (prior) and P^a (posterior) over the weights"),
    "hybrid": Case("l96_hybrid.yaml", 10, ("rmse", "forecast", "correction"), "Lorenz-96 with a missing term and a LocalMLP "
                   "correction learned online, against the two declared comparison runs (physics alone, perfect model): "
                   "RMSE per window, forecast error against lead time, the learned correction against the missing tendency"),
    "small_state": Case(SMALL_STATE, 12, ("timeseries",), "a state of five variables, three of them observed: line plots "
                        "with the observations and the window starts instead of a Hovmoeller image"),
    "eda": Case("l96_sakov2008_eda.yaml", 16, ("spread", "rmse"), "an ensemble of data assimilations (4 members here) on "
                "overlapping windows, the first 6 windows burn-in (shaded): spread against error, and a long title wrapped",
                changes={"title": "Lorenz-96 sakov2008 (DAPPER): hybrid EDA-4D-Var, 4 members, 4-interval windows shifted by 2, "
                         "against static B", "ensemble": {"members": 4}, "diagnostics": {"burn_in_cycles": 6}},
                options=("--workers", 1)),
    "sweep": Case("l96_state.yaml", 4, ("sweep",), "a sweep of the state's background error std over three seeds "
                  "(`fourdvar plot summary.nc`): each headline number against the setting, mean +- std over the seeds",
                  changes={"sweep": {"background.state.error_std": [0.5, 1.0, 2.0], "seed": [1, 2, 3]}},
                  options=("--workers", 1), sweep=True),
}


def fourdvar(*args, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "fourdvar", *map(str, args)], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def _merged(base: dict, changes: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        merged[key] = _merged(merged.get(key) or {}, value) if isinstance(value, dict) and key != "sweep" else value
    return merged


def configuration(name: str, case: Case, work: Path) -> Path:
    """The case's configuration file in ``work`` (its cycles set, its output there)."""
    base = case.config if isinstance(case.config, dict) else yaml.safe_load((ROOT / "configs" / case.config).read_text())
    config = _merged(base, case.changes)
    config["window"]["cycles"] = case.cycles
    config["output"] = {"file": f"{name}.nc"}
    path = work / (Path(case.config).name if isinstance(case.config, str) else f"{name}.yaml")  # a sweep is named after it
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make_case(name: str, case: Case, work: Path) -> list[str]:
    config = configuration(name, case, work)
    if case.sweep:
        fourdvar("sweep", config, "--output", work / name, "--quiet", *case.options, cwd=work)
        result = work / name / "summary.nc"
    else:
        result = work / f"{name}.nc"
        fourdvar("run", config, "--output", result, "--quiet", *case.options, cwd=work)
    figures = work / f"{name}_figures"
    fourdvar("plot", result, "--output", figures, cwd=work)
    written = []
    for stem in case.figures:
        target = GALLERY / f"{name}_{stem}.png"
        shutil.copyfile(figures / f"{stem}.png", target)
        written.append(target.name)
    return written


def main() -> None:
    if GALLERY.exists():
        shutil.rmtree(GALLERY)
    GALLERY.mkdir()
    lines = ["# Figure gallery", "", "What `fourdvar plot` draws, regenerated by `python docs/make_gallery.py`", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            source = f"configs/{case.config}" if isinstance(case.config, str) else "docs/make_gallery.py (SMALL_STATE)"
            changed = f" with {yaml.safe_dump(case.changes, default_flow_style=True, width=1000).strip()}" if case.changes else ""
            lines += [f"## {name}: {case.what}", "", f"`{source}`{changed}, {case.cycles} cycles.", ""]
            for image in make_case(name, case, Path(tmp)):
                lines += [f"![{name}: {image}](gallery/{image})", ""]
    (DOCS / "gallery.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
