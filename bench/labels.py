"""Names shared by the report's tables (:mod:`bench.report`, :mod:`bench.report_sequential`) and its
figures (:mod:`bench.plots`): the variant columns, the defense names and the labels of a configuration.

It imports nothing of ``bench``, so both sides can import it without importing each other.
"""

from __future__ import annotations

import math

import pandas as pd

#: Extra grouping columns of a run's rows besides (method, fors, sigma).
VARIANT_KEYS: tuple[str, ...] = ("dataset", "arch", "sampler", "certificate")
DEFENSES: dict[str, str] = {"is": "IS-RS", "ls": "LS-RS", "lip": "Lipschitz"}
LIP = "lip"  #: the deterministic Lipschitz-margin certificate: no sigma, certified at sigma 0


def variant_keys(df: pd.DataFrame) -> list[str]:
    """The :data:`VARIANT_KEYS` columns that take several values in ``df``."""
    return [k for k in VARIANT_KEYS if k in df.columns and df[k].nunique(dropna=False) > 1]


def fors_label(fors: int, total: float) -> str:
    """``9/18``, or ``9`` when the total is unknown."""
    return f"{int(fors)}/{int(total)}" if total == total and not math.isinf(total) else str(int(fors))


def config_label(method: str, fors: int, fors_total: float) -> str:
    """``IS-RS`` or ``LS-RS 9/18``."""
    defense = DEFENSES.get(method, str(method).upper())
    return defense if method == "is" else f"{defense} {fors_label(fors, fors_total)}"


def format_sigma(sigma: float) -> str:
    """sigma with 2 decimals as in the paper, more only where needed (0.125)."""
    text = f"{sigma:.2f}"
    return text if abs(float(text) - sigma) < 1e-9 else f"{sigma:g}"
