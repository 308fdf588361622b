"""MkDocs hook: the Sphinx roles of the docstrings (``:func:`x```, ``:class:`~a.b.C```) shown as plain code.

The docstrings of ``lsrs`` and ``bench`` cross-reference with Sphinx roles; mkdocstrings renders the role's
target as code and leaves the role's name in front of it. This hook drops the name, and the ``~`` that asks
Sphinx for the last component only shows that component.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):(<code>)(~)?([^<]*)(</code>)")


def _shorten(match: re.Match[str]) -> str:
    target = match[3].rsplit(".", 1)[-1] if match[2] else match[3]
    return f"{match[1]}{target}{match[4]}"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Strip the role names from the rendered API pages."""
    return ROLE.sub(_shorten, html)
