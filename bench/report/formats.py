"""The table formats of ``bench report`` and their file suffixes; importable without torch or pandas, so that
``bench report --help`` lists them quickly."""

from __future__ import annotations

FORMATS: dict[str, str] = {"latex": ".tex", "markdown": ".md", "csv": ".csv"}
