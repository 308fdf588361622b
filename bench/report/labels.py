"""Names shared by the report's tables (:mod:`bench.report.writer`, :mod:`bench.report.sequential`) and its
figures (:mod:`bench.report.plots`): the variant columns, the defense names and the labels of a configuration.

It imports only the certifier registry of ``bench`` (:mod:`bench.certifiers`, which imports no report or
figure code), so both sides can import it without importing each other. Which rows a certifier's columns
apply to comes from its registry record: the masks below (:func:`noise_mask`, ...) instead of method strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import pandas as pd

from bench import certifiers

#: Extra grouping columns of a run's rows besides (method, fors, sigma); ``n`` is the n axis of ``bench run --n``.
VARIANT_KEYS: tuple[str, ...] = ("dataset", "arch", "sampler", "certificate", "n")
N_AXIS = "n"  #: the variant column of the n axis (0 on rows that sample nothing: sigma = 0, ``lip``)


class _Defenses(Mapping[str, str]):
    """Method key -> defense name, read live from the certifier registry (a registered certifier shows up)."""

    def __getitem__(self, key: str) -> str:
        if key not in certifiers.list_certifiers():
            raise KeyError(key)
        return certifiers.defense(key)

    def __iter__(self) -> Iterator[str]:
        return iter(certifiers.list_certifiers())

    def __len__(self) -> int:
        return len(certifiers.list_certifiers())


DEFENSES: Mapping[str, str] = _Defenses()


def noise_mask(df: pd.DataFrame) -> pd.Series:
    """Rows of a certifier that smooths at σ (IS-RS, LS-RS): σ and n apply, and σ = 0 is clean accuracy."""
    return df["method"].map(certifiers.uses_noise).astype(bool)


def reference_mask(df: pd.DataFrame) -> pd.Series:
    """Rows of the reference certifier of the speedups (IS-RS)."""
    return df["method"].map(certifiers.is_reference).astype(bool)


def fors_axis_mask(df: pd.DataFrame) -> pd.Series:
    """Rows of a certifier with one configuration per FoR (LS-RS: the FoR ablation)."""
    return df["method"].map(certifiers.has_fors_axis).astype(bool)


def certified_mask(df: pd.DataFrame) -> pd.Series:
    """Rows with a certificate: σ > 0, or a certifier without noise (the Lipschitz margin, stored at σ = 0)."""
    return (df["sigma"] > 0) | ~noise_mask(df)


def clean_mask(df: pd.DataFrame) -> pd.Series:
    """The clean-accuracy rows: σ = 0 of a certifier that smooths (no certificate, no time)."""
    return (df["sigma"] == 0) & noise_mask(df)


def method_order(methods: pd.Series) -> pd.Series:
    """Sort key of each method: the registry's order (IS-RS, LS-RS, Lipschitz), unregistered ones last."""
    return methods.map(certifiers.order)


def variant_keys(df: pd.DataFrame) -> list[str]:
    """The :data:`VARIANT_KEYS` columns that take several values in ``df`` (``n`` among the sampled rows only:
    the n = 0 of sigma = 0 and ``lip`` rows does not make a one-n run a multi-n run)."""
    def varies(k: str) -> bool:
        values = df[k]
        if k == N_AXIS and "sigma" in df.columns and "method" in df.columns:
            values = values[(df["sigma"] > 0) & noise_mask(df)]
        return values.nunique(dropna=False) > 1
    return [k for k in VARIANT_KEYS if k in df.columns and varies(k)]


def variant_text(key: str, value: object) -> str:
    """A variant value for display: ``n`` with thousands separators ("-" where nothing is sampled)."""
    if key == N_AXIS:
        if pd.isna(value):
            return "unknown"  # an imported log that does not declare its n
        return f"{int(value):,}" if int(value) > 0 else "-"  # type: ignore[call-overload]
    return str(value)


def cert_acc_column(radius: float) -> str:
    """Name of the summary column holding certified accuracy (%) at ``radius``, e.g. ``cert_acc_r0.25``."""
    return f"cert_acc_r{radius:g}"


def fors_label(fors: int, total: float) -> str:
    """``9/18``, or ``9`` when the total is unknown."""
    return f"{int(fors)}/{int(total)}" if total == total and not math.isinf(total) else str(int(fors))


def config_label(method: str, fors: int, fors_total: float) -> str:
    """``IS-RS`` (the reference certifier) or ``LS-RS 9/18``."""
    defense = certifiers.defense(method)
    return defense if certifiers.is_reference(method) else f"{defense} {fors_label(fors, fors_total)}"


def format_sigma(sigma: float) -> str:
    """sigma with 2 decimals as in the paper, more only where needed (0.125)."""
    text = f"{sigma:.2f}"
    return text if abs(float(text) - sigma) < 1e-9 else f"{sigma:g}"


def at_largest_n(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s rows at the largest n of its n axis, with the rows that sample nothing (n = 0); all rows
    when it has no ``n`` column, and the rows whose n is unknown (an imported log that does not declare it).
    The paper-style figures of a multi-n run show that n."""
    if N_AXIS not in frame.columns or frame.empty:
        return frame
    n = pd.to_numeric(frame[N_AXIS], errors="coerce")
    return frame[(n == n.max()) | (n == 0) | n.isna()]
