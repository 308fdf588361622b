"""Terminal tables (rich) for the end of ``bench run`` and ``bench demo``."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def summary_table(summary: pd.DataFrame, title: str = "Certification summary") -> Table:
    """ACR, accuracy, s/image and LS-vs-IS speedup per (method, FoR, σ) from ``bench.report.summarize``."""
    table = Table(title=title)
    for name in ("Defense", "σ", "FoR", "images", "ACR", "Acc. (%)", "s/image", "speedup", "FLOP-ideal"):
        table.add_column(name, justify="left" if name == "Defense" else "right")
    for row in summary.itertuples(index=False):
        table.add_row(
            str(row.defense),
            f"{row.sigma:.2f}",
            f"{row.fors}/{row.fors_total}",
            str(row.images),
            _fmt(row.acr, ".3f"),
            _fmt(row.accuracy, ".2f"),
            _fmt(row.time_s if row.sigma > 0 else float("nan"), ".4f"),
            _fmt(row.speedup if row.method == "ls" and row.sigma > 0 else float("nan"), ".2f"),
            _fmt(row.flop_ideal if row.method == "ls" else float("nan"), ".2f"),
        )
    return table
