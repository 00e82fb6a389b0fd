"""Execute every ``notebooks/*.ipynb`` top to bottom, without Jupyter.

Each notebook is read with :mod:`json`; its code cells run in order in one fresh
namespace, each compiled under the name ``<notebook path>:cell<i>`` so that a
traceback names the cell.  Matplotlib draws on the non-interactive Agg backend and
every figure is closed afterwards.  The working directory is the notebooks folder;
the temporary-file directory is a pytest ``tmp_path``, so anything a notebook writes
through :mod:`tempfile` is cleaned up.  Each notebook ends with ``assert`` statements
on its own results, so an executed notebook is a test of what it shows.

A second test checks that the notebooks are stored clean: valid nbformat 4.5, no
outputs or execution counts, a cell ``id`` on every cell and no IPython-only syntax
(``%magic``, ``!shell``), which plain ``exec`` could not run.
"""

from __future__ import annotations

import json
import linecache
import re
import tempfile
import time
import traceback
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
IPYTHON_ONLY = re.compile(r"^\s*[%!]", re.MULTILINE)


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def source_of(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def code_cells(path: Path) -> list[tuple[int, str]]:
    """``(cell number, source)`` of the code cells; numbers count all cells, markdown included, from 0."""
    return [(i, source_of(cell)) for i, cell in enumerate(load(path)["cells"]) if cell["cell_type"] == "code"]


def run_notebook(path: Path) -> None:
    """Execute the code cells of ``path`` in order in a fresh namespace; fail naming the cell."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    namespace = {"__name__": "__main__", "__file__": str(path)}
    cells = code_cells(path)
    for n, (i, source) in enumerate(cells, start=1):
        filename = f"{path}:cell{i}"
        # let the traceback show the cell's source lines
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        error = None
        try:
            exec(compile(source, filename, "exec"), namespace)
        except Exception:
            error = traceback.format_exc()
        finally:
            plt.close("all")
        if error is not None:
            pytest.fail(f"{path.name}: cell {i} (code cell {n} of {len(cells)}) raised\n{error}", pytrace=False)


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive:UserWarning")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(path.parent)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(tmp_path))
    start = time.perf_counter()
    run_notebook(path)
    print(f"{path.name} executed in {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_stored_clean(path: Path):
    notebook = load(path)
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 5
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert all(isinstance(cell_id, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cell_id) for cell_id in ids), ids
    assert len(set(ids)) == len(ids), "cell ids must be unique"
    for i, cell in enumerate(notebook["cells"]):
        assert cell["cell_type"] in ("markdown", "code"), (i, cell["cell_type"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {i} is stored with outputs"
            assert not IPYTHON_ONLY.search(source_of(cell)), f"cell {i} uses IPython-only syntax (% or !)"
