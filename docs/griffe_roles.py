"""A griffe extension for the API reference: Sphinx roles in docstrings as code.

The docstrings write cross-references the Sphinx way (``:func:`fourdvar.checks.check_model```,
``:class:`~fourdvar.covariances.Diagonal```); MkDocs renders Markdown, where the role would
show as text.  Each becomes the name in code font (the ``~`` form its last part).
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|ref):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    name = match.group(2)
    return f"`{name.rsplit('.', 1)[-1] if match.group(1) else name}`"


class SphinxRolesAsCode(griffe.Extension):
    """Rewrite every Sphinx role of a docstring as inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
