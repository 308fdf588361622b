"""Intervals of a run's aggregates: ``summary.csv``'s ``M_lo`` / ``M_hi`` columns.

For each configuration row of :func:`bench.report.writer.summarize`: Clopper--Pearson on the image counts
for the percentages (accuracy, certified accuracy at r), a BCa bootstrap over the images for the means (ACR,
seconds per image, encode and sampling seconds; :mod:`bench.report.intervals`) and, for the speedup, a
paired BCa bootstrap of t_IS / t_row over the images both certified (:mod:`bench.report.paired`). Where the
data do not define an interval (one image, no time, no IS-RS row) both ends are NaN ("n/a").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.intervals import BOOTSTRAP_SEED, DEFAULT_CONFIDENCE, bootstrap_mean, clopper_pearson_bounds
from bench.report.labels import N_AXIS, cert_acc_column, noise_mask, reference_mask, variant_keys
from bench.report.paired import compare_means
from lsrs.smoothing import ABSTAIN

SIGMA_DECIMALS = 6
TIME_COLUMNS: tuple[str, ...] = ("total_s", "encode_s", "sample_s")
MEAN_METRICS: dict[str, str] = {"acr": "_credit", "time_s": "total_s", "encode_s": "encode_s", "sample_s": "sample_s"}


def image_outcomes(df: pd.DataFrame, radii: tuple[float, ...]) -> pd.DataFrame:
    """One row per result row: the grouping keys, ``_correct`` (right and not abstained), ``_credit`` (the
    radius where correct, else 0), ``_c<r>`` (certified at r) and the times (NaN where not stored)."""
    keys = ["method", "fors", "sigma", *variant_keys(df)]
    work = pd.DataFrame({k: df[k] for k in keys})
    work["sigma"] = work["sigma"].round(SIGMA_DECIMALS)
    # without image indices every row gets its own id: nothing pairs, so no paired comparison is made up
    work["idx"] = df["idx"] if "idx" in df.columns else np.arange(len(df))
    correct = df["correct"].astype(bool)
    if "prediction" in df.columns:
        correct = correct & (pd.to_numeric(df["prediction"], errors="coerce") != ABSTAIN)
    radius = df["radius"].astype(float).fillna(0.0)
    work["_credit"] = np.where(correct, radius, 0.0)
    work["_correct"] = correct.astype(float)
    for r in radii:
        work[f"_c{r}"] = (correct & (radius >= r)).astype(float)
    for col in TIME_COLUMNS:
        work[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    return work


def metric_names(radii: tuple[float, ...]) -> list[str]:
    """The summary columns that get an interval."""
    return ["acr", "accuracy", *(cert_acc_column(r) for r in radii), "time_s", "encode_s", "sample_s", "speedup"]


def _group_key(rec: dict, keys: list[str]) -> tuple:
    return tuple(round(float(rec[k]), SIGMA_DECIMALS) if k == "sigma" else rec[k] for k in keys)


def _proportion_bounds(summary: pd.DataFrame, confidence: float, radii: tuple[float, ...]) -> dict[str, tuple]:
    """Clopper--Pearson bounds (%) of accuracy and certified accuracy, from the rounded percentages x images."""
    n = summary["images"].to_numpy(float)
    out = {}
    for col in ["accuracy", *(cert_acc_column(r) for r in radii)]:
        pct = summary[col].to_numpy(float)
        lo, hi = clopper_pearson_bounds(np.rint(pct * n / 100.0), n, confidence)
        out[col] = (np.where(np.isnan(pct), np.nan, 100 * lo), np.where(np.isnan(pct), np.nan, 100 * hi))
    return out


def add_intervals(
    summary: pd.DataFrame,
    df: pd.DataFrame,
    radii: tuple[float, ...],
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """``summary`` with ``M_lo`` and ``M_hi`` after each metric M of :func:`metric_names`, then ``confidence``
    and ``bootstrap_seed``. ``df`` is the run's rows that ``summary`` aggregates."""
    out = summary.copy()
    bounds = _proportion_bounds(out, confidence, radii)
    work = image_outcomes(df, radii)
    keys = ["method", "fors", "sigma", *variant_keys(df)]
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in work.groupby(keys, sort=False, dropna=False)}
    records = out.to_dict("records")
    for metric, column in MEAN_METRICS.items():
        ends = [_mean_interval(groups.get(_group_key(rec, keys)), column, rec[metric], confidence, seed)
                for rec in records]  # fmt: skip
        bounds[metric] = (np.array([e[0] for e in ends]), np.array([e[1] for e in ends]))
    bounds["speedup"] = _speedup_bounds(out, groups, keys, confidence, seed)
    for metric in metric_names(radii):
        lo, hi = bounds[metric]
        out[f"{metric}_lo"], out[f"{metric}_hi"] = lo, hi
    out["confidence"] = confidence
    out["bootstrap_seed"] = seed
    order = [c for m in summary.columns for c in ((m, f"{m}_lo", f"{m}_hi") if f"{m}_lo" in out else (m,))]
    return out[[*order, "confidence", "bootstrap_seed"]]


def _mean_interval(rows: pd.DataFrame | None, column: str, value: float, confidence: float, seed: int) -> tuple:
    if rows is None or value != value:  # NaN in the summary (σ = 0 times): no interval either
        return (np.nan, np.nan)
    return tuple(bootstrap_mean(rows[column].to_numpy(float), confidence, seed))


def _speedup_bounds(summary: pd.DataFrame, groups: dict, keys: list[str], confidence: float, seed: int) -> tuple:
    """Paired bootstrap interval of t_IS / t_row over shared images; [1, 1] on the IS-RS rows themselves; NaN
    without an IS-RS row at the row's σ and variant, without times, or for a certifier without noise."""
    lo, hi = np.full(len(summary), np.nan), np.full(len(summary), np.nan)
    is_row = reference_mask(summary).to_numpy()
    noise = noise_mask(summary).to_numpy()
    for i, rec in enumerate(summary.to_dict("records")):
        if rec["speedup"] != rec["speedup"]:
            continue
        if is_row[i]:
            lo[i] = hi[i] = 1.0
            continue
        key = _group_key(rec, keys)
        rows = groups.get(key)
        base = _is_times(summary, is_row, groups, keys, key, noise[i])
        if base is None or rows is None:
            continue
        both = base.merge(rows[["idx", "total_s"]], on="idx", suffixes=("_b", "_a"))
        ci = compare_means(both["total_s_b"].to_numpy(float), both["total_s_a"].to_numpy(float), confidence,
                           seed).ratio_ci
        lo[i], hi[i] = ci
    return lo, hi


def _is_times(summary: pd.DataFrame, is_row: np.ndarray, groups: dict, keys: list[str], key: tuple,
              noise: bool) -> pd.DataFrame | None:
    """Per image (``idx``, ``total_s``): the IS-RS time a row's speedup divides, at the row's σ and variant; for a
    certifier without noise (``lip``) the mean over the IS-RS σ > 0 (at the largest n), as
    :func:`bench.report.writer._lip_speedup` does for the means."""
    ref = summary[is_row & ((summary["sigma"].round(SIGMA_DECIMALS) == key[2]) if noise else (summary["sigma"] > 0))]
    for k, v in zip(keys[3:], key[3:], strict=True):
        if k == N_AXIS and not noise:
            ref = ref[ref[k] == ref[k].max()]
        else:
            ref = ref[ref[k] == v]
    frames = [groups.get(_group_key(r, keys)) for r in ref.to_dict("records")]
    frames = [f[["idx", "total_s"]].set_index("idx")["total_s"] for f in frames if f is not None]
    if not frames:
        return None
    joined = pd.concat(frames, axis=1, join="inner")
    return pd.DataFrame({"idx": joined.index, "total_s": joined.mean(axis=1).to_numpy()})
