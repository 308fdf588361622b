"""The closing summary table of ``bench demo`` shows each number's interval where the summary has one."""

from __future__ import annotations

import io
import math

import pandas as pd
from rich.console import Console

from bench.run.console import print_table, summary_table


def _summary() -> pd.DataFrame:
    rec = {"defense": "LS-RS", "method": "ls", "sigma": 0.25, "fors": 9, "fors_total": 18, "images": 90,
           "acr": 0.5, "acr_lo": 0.41, "acr_hi": 0.58, "accuracy": 80.0, "accuracy_lo": 70.21, "accuracy_hi": 87.67,
           "time_s": 0.1, "time_s_lo": math.nan, "time_s_hi": math.nan, "speedup": 3.2, "speedup_lo": 2.9,
           "speedup_hi": 3.5, "flop_ideal": 4.0, "confidence": 0.9}
    return pd.DataFrame([rec])


def test_summary_table_shows_intervals_and_their_confidence() -> None:
    buffer = io.StringIO()
    print_table(Console(file=buffer), summary_table(_summary(), title="Demo"))
    text = buffer.getvalue()
    assert "0.500 [0.410, 0.580]" in text and "80.00 [70.21, 87.67]" in text and "3.20 [2.90, 3.50]" in text
    assert "0.1000 [n/a]" in text and "90 % interval over the images" in text


def test_summary_without_intervals_prints_plain_values() -> None:
    buffer = io.StringIO()
    plain = _summary().drop(columns=[c for c in _summary().columns if c.endswith(("_lo", "_hi"))])
    print_table(Console(file=buffer), summary_table(plain))
    assert "0.500" in buffer.getvalue() and "[" not in buffer.getvalue()
