"""Terminal output (rich): the grid's progress display and the tables at the end of ``bench run`` and ``bench demo``."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bench import certifiers

UNBOUNDED = 100_000  # columns offered to a table that is measured for a file or a log


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _with_ci(row: object, metric: str, spec: str, show: bool = True) -> str:
    """``value [lo, hi]`` when the summary has the metric's interval (``bench report`` adds them), else the value."""
    value = getattr(row, metric) if show else float("nan")
    text = _fmt(value, spec)
    lo, hi = getattr(row, f"{metric}_lo", None), getattr(row, f"{metric}_hi", None)
    if text == "-" or lo is None:
        return text
    return escape(f"{text} [n/a]" if math.isnan(lo) or math.isnan(hi) else f"{text} [{lo:{spec}}, {hi:{spec}}]")


def summary_table(summary: pd.DataFrame, title: str = "Certification summary") -> Table:
    """ACR, accuracy, s/image and speedup over IS-RS per (method, FoR, σ) from ``bench.report.writer.summarize``;
    with the intervals of ``bench.report.uncertainty.add_intervals`` where the summary has them."""
    table = Table(title=title)
    if "acr_lo" in summary and len(summary):
        conf = float(summary["confidence"].iloc[0]) if "confidence" in summary else 0.95
        table.caption = escape(f"[lo, hi]: {100 * conf:g} % interval over the images")
    n_axis = "n" in summary.columns  # a run with an n axis (bench run --n 1000,4000): one row per n
    for name in ("Defense", "σ", "FoR", *(["n"] if n_axis else []), "images", "ACR", "Acc. (%)", "s/image", "speedup",
                 "FLOP-ideal"):
        table.add_column(name, justify="left" if name == "Defense" else "right")
    for row in summary.itertuples(index=False):
        noise = certifiers.uses_noise(row.method)  # the Lipschitz twin certifies without noise: timed at σ = 0
        timed = row.sigma > 0 or not noise
        table.add_row(
            str(row.defense),
            f"{row.sigma:.2f}" if noise else "-",
            f"{row.fors}/{row.fors_total}",
            *([f"{row.n:,}" if row.n else "-"] if n_axis else []),
            str(row.images),
            _with_ci(row, "acr", ".3f"),
            _with_ci(row, "accuracy", ".2f"),
            _with_ci(row, "time_s", ".4f", timed),
            _with_ci(row, "speedup", ".2f", not certifiers.is_reference(row.method) and timed),
            _fmt(row.flop_ideal if certifiers.has_fors_axis(row.method) else float("nan"), ".2f"),
        )
    return table


def grid_progress(console: Console | None, quiet: bool) -> Progress:
    """The progress display of a certification grid (one process, local workers or Ray): one bar per task with
    its running summary; off a terminal (a log) at :data:`LOG_WIDTH` columns rather than cut to rich's 80."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[summary]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=_log_wide(console), disable=quiet,
    )


LOG_WIDTH = 160
"""Columns of a progress line written to a file or log: room for the label, bar, summary and both times."""


def _log_wide(console: Console | None) -> Console | None:
    """``console`` on a terminal; off one, a console on the same file at least :data:`LOG_WIDTH` columns wide."""
    if console is None or console.is_terminal or console.width >= LOG_WIDTH:
        return console
    return Console(file=console.file, width=LOG_WIDTH, color_system=console.color_system, quiet=console.quiet,
                   force_terminal=False)


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` on ``console``; off a terminal (CI logs, redirected output) at its full natural width
    rather than cut to the 80 columns rich assumes there."""
    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(UNBOUNDED), table).maximum
    wide = Console(file=console.file, width=max(natural, console.width), color_system=console.color_system,
                   quiet=console.quiet, force_terminal=False)
    wide.print(table)
