"""The documentation: every public name on an API reference page with a docstring, the
docstrings' examples run as doctests, the guide's examples run, the READMEs stay READMEs.

"Public" (``docs/api_pages.py``): a name in a package's or module's ``__all__``, or, without
one, a non-underscore class or function its ``__init__`` exports or its module defines.
The site itself (``mkdocs build --strict``, which runs the tutorials) is built by ``.ci/run``.
"""

from __future__ import annotations

import doctest
import importlib
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import api_pages  # noqa: E402

MODULES = [name for page in api_pages.PAGES for name in api_pages.page_modules(page)]


def test_every_package_has_a_reference_page_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [package for _, package, _ in api_pages.PAGES.values()] == ["fourdvar", "fourdvar.app", "models", "observations"]
    for page in api_pages.PAGES:
        assert f"reference/{page}.md" in nav


@pytest.mark.parametrize("page", list(api_pages.PAGES))
def test_every_public_name_is_on_a_reference_page_with_a_docstring(page):
    documented = set(MODULES)
    missing, homeless = [], []
    for name in api_pages.page_modules(page):
        module = importlib.import_module(name)
        assert (module.__doc__ or "").strip(), f"module {name} has no docstring"
        missing += api_pages.undocumented(module)
        for public in api_pages.public_names(module):
            value = getattr(module, public)
            if api_pages.needs_docstring(value) and api_pages.home_module(value, name) not in documented:
                homeless.append(f"{name}.{public} (defined in {api_pages.home_module(value, name)})")
    assert not missing, "public names without a docstring of their own: " + ", ".join(missing)
    assert not homeless, "public names defined in a module no reference page documents: " + ", ".join(homeless)


def test_an_undocumented_public_name_is_caught():
    """Negative control: a module exporting a class and a function without docstrings."""
    module = types.ModuleType("fake")
    module.__doc__ = "A module."

    class Bare:
        pass

    def bare():
        pass

    class Subclass(Bare):  # a docstring inherited from a base class is not its own
        pass

    Bare.__doc__ = None
    Bare.__module__ = bare.__module__ = Subclass.__module__ = "fake"
    module.Bare, module.bare, module.Subclass, module._private = Bare, bare, Subclass, bare
    assert api_pages.undocumented(module) == ["fake.Bare", "fake.bare", "fake.Subclass"]
    module.__all__ = ["bare"]
    assert api_pages.undocumented(module) == ["fake.bare"]


def doctests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    return [test for test in doctest.DocTestFinder(exclude_empty=True).find(module, name) if test.examples
            and (getattr(test, "lineno", None) is not None or test.name == name)]


def test_the_docstrings_carry_examples():
    counted = {name: sum(len(test.examples) for test in doctests(name)) for name in MODULES}
    assert sum(counted.values()) >= 40, counted


@pytest.mark.parametrize("name", [name for name in MODULES if doctests(name)])
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctests(name):
        test.globs = {"np": np, **test.globs}
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0 and results.attempted > 0


def test_a_wrong_docstring_example_fails():
    """Negative control: the runner of ``test_docstring_examples_run`` fails a wrong example."""

    def double(x):
        """
        >>> double(2)
        5
        """
        return 2 * x

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(double, "double", globs={"double": double}):
        runner.run(test, out=lambda text: None)
    assert runner.summarize(verbose=False) == (1, 1)


def test_python_guide_application_example_runs(tmp_path, monkeypatch):
    """The ``fourdvar.app`` example of the Python guide, on a shortened copy of the configuration it names."""
    guide = (ROOT / "docs" / "guide" / "python.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", guide, flags=re.DOTALL) if "load_config" in b]
    assert "execute(plan)" in block and 'load_config("configs/l96_state.yaml")' in block
    config = yaml.safe_load((ROOT / "configs" / "l96_state.yaml").read_text())
    config["window"]["cycles"] = 2
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "l96_state.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "python.md", "exec"), namespace)
    assert namespace["dataset"].sizes["cycle"] == 2
    assert (tmp_path / "results" / "l96_state.nc").read_bytes()[:4] == b"\x89HDF"


def test_readme_is_at_most_150_lines_and_its_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert len(links) >= 10
    for link in links:
        assert link.startswith("https://") or (ROOT / link).exists(), link


def test_the_configuration_page_generates_the_key_reference_from_the_schema():
    page = (ROOT / "docs" / "guide" / "configuration.md").read_text()
    assert '```python exec="on"\nfrom fourdvar.app.config import schema_markdown\nprint(schema_markdown())\n```' in page


def test_configs_readme_describes_every_shipped_configuration_and_cites_the_results_file():
    readme = (ROOT / "configs" / "README.md").read_text()
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        assert f"`{path.relative_to(ROOT / 'configs')}`" in readme, path.name
    assert "benchmarks/RESULTS.md" in readme
    for word in ("before", "today", "this round", "earlier"):
        assert not re.search(rf"\b{word}\b", readme), word
