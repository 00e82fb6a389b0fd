"""The engine's size: raw and code lines of ``fourdvar/*.py`` (outside ``app/``) against a baseline commit.

Each line of a file is one of: blank, docstring (inside the first string statement of the
module, a class or a function, found with :mod:`ast`), comment (only a ``#`` comment), or
code (the rest).  The totals are given for the whole engine and without the modules added
for features the baseline did not have (``qc.py``, ``covariances2d.py``), with the change in
per cent against the baseline read with ``git show``.

    python benchmarks/engine_size.py [--baseline 4559583] [--no-record]
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

from results import record

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "4559583"
LATER_FEATURES = ("qc.py", "covariances2d.py")
KINDS = ("raw", "code", "docstring", "comment", "blank")


def line_kinds(source: str) -> dict[str, int]:
    """``{kind: number of lines}`` for one module's source."""
    lines = source.splitlines()
    docstring = set()
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, owners) and ast.get_docstring(node) is not None:
            first = node.body[0]
            docstring.update(range(first.lineno, first.end_lineno + 1))
    counts = dict.fromkeys(KINDS, 0)
    counts["raw"] = len(lines)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            kind = "blank"
        elif number in docstring:
            kind = "docstring"
        elif line.strip().startswith("#"):
            kind = "comment"
        else:
            kind = "code"
        counts[kind] += 1
    return counts


def engine_sources(revision: str | None) -> dict[str, str]:
    """``{file name: source}`` of ``fourdvar/*.py`` at ``revision`` (the working tree when ``None``)."""
    if revision is None:
        return {path.name: path.read_text() for path in sorted((ROOT / "fourdvar").glob("*.py"))}

    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    names = git("ls-tree", "--name-only", f"{revision}:fourdvar").split()
    return {name: git("show", f"{revision}:fourdvar/{name}") for name in sorted(names) if name.endswith(".py")}


def total(counts: dict[str, dict[str, int]], leave_out: tuple = ()) -> dict[str, int]:
    return {kind: sum(c[kind] for name, c in counts.items() if name not in leave_out) for kind in KINDS}


def table(baseline: str) -> str:
    before = {name: line_kinds(source) for name, source in engine_sources(baseline).items()}
    after = {name: line_kinds(source) for name, source in engine_sources(None).items()}
    rows = ["| file | raw (baseline) | raw | code (baseline) | code | docstring | comment | blank |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name, dict.fromkeys(KINDS, 0)), after.get(name, dict.fromkeys(KINDS, 0))
        counts = (b["raw"], a["raw"], b["code"], a["code"], a["docstring"], a["comment"], a["blank"])
        rows.append(f"| {name} | " + " | ".join(map(str, counts)) + " |")
    lines = ["\n".join(rows), "", "| engine | raw | code | raw change | code change |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for label, leave_out in (("all files", ()), ("without " + " and ".join(LATER_FEATURES), LATER_FEATURES)):
        b, a = total(before, leave_out), total(after, leave_out)
        lines.append(f"| baseline {baseline}, {label} | {b['raw']} | {b['code']} | | |")
        lines.append(f"| working tree, {label} | {a['raw']} | {a['code']} | {100 * (a['raw'] / b['raw'] - 1):+.1f} % "
                     f"| {100 * (a['code'] / b['code'] - 1):+.1f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument("--no-record", action="store_true", help="print only, RESULTS.md left as it is")
    args = parser.parse_args()
    text = table(args.baseline)
    print(text)
    if not args.no_record:
        record("Engine size", "Lines of `fourdvar/*.py` (outside `app/`); code lines exclude docstrings (by `ast`), "
               "comments and blank lines.\n\n" + text)


if __name__ == "__main__":
    main()
