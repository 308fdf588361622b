"""The closing summary table of ``bench run`` / ``bench demo`` printed whole off a terminal (CI logs)."""

from __future__ import annotations

import io

import pandas as pd
from rich.console import Console

from bench.run.console import print_table, summary_table

HEADERS = ("Defense", "σ", "FoR", "images", "ACR", "Acc. (%)", "s/image", "speedup", "FLOP-ideal")


def _summary() -> pd.DataFrame:
    rows = [("IS-RS (baseline)", "is", 0), ("LS-RS (FoR 13 of 18, orthogonal)", "ls", 13)]
    return pd.DataFrame([
        {"defense": name, "method": method, "sigma": 0.25, "fors": k, "fors_total": 18, "images": 60,
         "acr": 0.512345, "accuracy": 93.3333, "time_s": 0.123456, "speedup": 3.21, "flop_ideal": 4.56}
        for name, method, k in rows
    ])


def test_summary_table_is_printed_whole_into_a_non_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer)
    assert not console.is_terminal and console.width == 80
    print_table(console, summary_table(_summary(), title="Demo"))
    text = buffer.getvalue()
    assert "…" not in text
    header = next(line for line in text.splitlines() if "Defense" in line)
    assert all(name in header for name in HEADERS)
    assert "LS-RS (FoR 13 of 18, orthogonal)" in text and "0.1235" in text and "4.56" in text
    assert max(len(line) for line in text.splitlines()) > 80  # wider than rich's default for a file


def test_summary_table_on_a_terminal_is_left_to_the_terminal_width() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=60, color_system=None)
    print_table(console, summary_table(_summary()))
    assert max(len(line) for line in buffer.getvalue().splitlines()) <= 60


def test_progress_lines_in_a_log_are_not_cut_at_80_columns() -> None:
    from bench.run.console import grid_progress

    log = io.StringIO()
    with grid_progress(Console(file=log, width=80), quiet=False) as progress:
        task = progress.add_task("LS-RS FoR 16 σ=0.25", total=45, summary="acc 100.0%  ACR 0.000  0.002 s/img")
        progress.update(task, completed=45)
    line = next(line for line in log.getvalue().splitlines() if "LS-RS FoR 16" in line)
    assert "45/45" in line and "0.002 s/img" in line and "…" not in line
