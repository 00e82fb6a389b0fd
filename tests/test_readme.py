"""The README's Python example runs as written and its set-up commands are the CI's."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs_and_recovers_the_forcing(capsys):
    (block,) = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert abs(result.p[0] - 8.0) < 0.5  # from a first guess of 7
    assert result.final.J < result.outer[0]["J"]


def test_readme_opens_with_install_and_test_commands_that_ci_runs():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.DOTALL).group(1).strip().splitlines()
    assert first_block == ['python -m pip install -e ".[test]"', "python -m pytest -n 2"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pip install --quiet -e ".[test]"' in ci and "\npython -m pytest -n 2\n" in ci

