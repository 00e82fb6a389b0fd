"""Write the API reference pages when the site is built (run by the mkdocs-gen-files plugin).

One page per layer (``docs/api_pages.py`` lists them): the package's exports in a table
linked to where each is documented, then every module of the package rendered by
mkdocstrings from its docstrings.  A public name without a docstring of its own is
logged as a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_pages import PAGES, home_module, needs_docstring, page_modules, public_names, summary, undocumented  # noqa: E402

log = logging.getLogger("mkdocs.plugins.fourdvar_reference")


def exports_table(package: str) -> list[str]:
    module = importlib.import_module(package)
    rows = ["| name | documented in | summary |", "|---|---|---|"]
    for name in public_names(module):
        value = getattr(module, name)
        home = home_module(value, package)
        if inspect.ismodule(value):
            link = f"[`{name}`][{value.__name__}]"
        elif needs_docstring(value):
            link = f"[`{name}`][{home}.{value.__qualname__}]"
        else:  # a constant: described by its module
            link = f"`{name}`"
        rows.append(f"| {link} | `{home}` | {summary(value)} |")
    return rows


def module_warnings(name: str) -> None:
    module = importlib.import_module(name)
    for missing in undocumented(module):
        log.warning("API reference: %s has no docstring", missing)
    if not (module.__doc__ or "").strip():
        log.warning("API reference: module %s has no docstring", name)


def page_text(page: str) -> str:
    title, package, what = PAGES[page]
    lines = [f"# {title}: `{package}`", "", what, ""]
    modules = page_modules(page)
    lines += ["Modules: " + ", ".join(f"[`{name}`][{name}]" for name in modules), ""]
    if public_names(importlib.import_module(package)):
        lines += [f"## What `import {package}` offers", "", *exports_table(package), ""]
    for name in modules:
        module_warnings(name)
        options = "    options:\n      members: false\n" if name == package else ""
        lines += [f"::: {name}", options]
    return "\n".join(lines)


for page in PAGES:
    with mkdocs_gen_files.open(f"reference/{page}.md", "w") as handle:
        handle.write(page_text(page))
    mkdocs_gen_files.set_edit_path(f"reference/{page}.md", "gen_pages.py")
