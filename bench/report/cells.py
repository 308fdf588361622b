"""Table cells with their intervals: ``value [lo, hi]`` (the interval over the images at the report's
confidence), the same in markdown, LaTeX and the console."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pandas as pd

Format = str | Callable[[float], str]
INTERVAL_NOTE = "[lo, hi]: the {conf} interval over the images"


def _text(value: float, fmt: Format) -> str:
    return fmt(value) if callable(fmt) else fmt.format(value)


def _missing(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def with_interval(value: object, lo: object, hi: object, fmt: Format, na_rep: str = "-") -> str:
    """``value [lo, hi]`` through ``fmt``; ``value [n/a]`` when the interval is undefined, ``na_rep`` without a
    value."""
    if _missing(value):
        return na_rep
    text = _text(float(value), fmt)  # type: ignore[arg-type]
    if _missing(lo) or _missing(hi):
        return f"{text} [n/a]"
    return f"{text} [{_text(float(lo), fmt)}, {_text(float(hi), fmt)}]"  # type: ignore[arg-type]


def table_intervals(rows: pd.DataFrame, columns: Mapping[str, str]) -> dict[str, tuple[list, list]]:
    """{display column: (lows, highs)} for each display column whose summary metric has ``_lo``/``_hi`` in
    ``rows`` (a slice of the summary with intervals); nothing for a summary without them."""
    return {
        title: (rows[f"{metric}_lo"].astype(float).tolist(), rows[f"{metric}_hi"].astype(float).tolist())
        for title, metric in columns.items()
        if f"{metric}_lo" in rows.columns
    }


def confidence_text(confidence: float) -> str:
    """``95 %``."""
    return f"{100 * confidence:g} %"
