"""Intervals of the equal-time table (:mod:`bench.report.equal_time`): a paired bootstrap over the images.

An LS-RS value at equal time is a reading of its accuracy-time front at the IS-RS time per image B: both the
front's points (means over the images at each n) and B (a mean over the same images) are estimates. One
bootstrap resample draws the shared images with replacement and recomputes all of them: the IS-RS budget, the
LS-RS times and metrics at every n, the reading at the budget (linear in log time, as in
:func:`bench.report.equal_time.interpolate_log_time`) and its gain over IS-RS. The BCa interval (Efron 1987)
of the reading and of the gain follows; a resample whose budget leaves the front's measured times, or whose
times do not increase with n, has no reading, and then the interval is undefined rather than extrapolated.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from bench import certifiers
from bench.report.equal_time import (
    INTERPOLATED,
    MEASURED,
    TABLE_RADII,
    WITHIN,
    equal_time_frame,
    metric_columns,
)
from bench.report.intervals import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, DEFAULT_CONFIDENCE
from bench.report.labels import N_AXIS, config_label, format_sigma
from bench.report.paired import BOOTSTRAP
from bench.report.uncertainty import image_outcomes

_OUTCOMES = [*(f"_c{r}" for r in TABLE_RADII), "_credit"]  # per-image columns of metric_columns(TABLE_RADII)
_SCALE = np.array([*(100.0 for _ in TABLE_RADII), 1.0])  # certified accuracy in %, ACR as is


def read_front(log_t: np.ndarray, values: np.ndarray, log_budget: np.ndarray) -> np.ndarray:
    """Vectorised reading of fronts at budgets: ``log_t`` (..., K) increasing in K, ``values`` (..., K, M),
    ``log_budget`` (...); NaN where the budget is outside [t_0, t_K-1] or the times do not increase."""
    ok = (np.diff(log_t, axis=-1) > 0).all(axis=-1) & (log_budget >= log_t[..., 0]) & (log_budget <= log_t[..., -1])
    k = log_t.shape[-1]
    j = np.clip((log_t <= log_budget[..., None]).sum(axis=-1) - 1, 0, k - 2)
    t0 = np.take_along_axis(log_t, j[..., None], -1)[..., 0]
    t1 = np.take_along_axis(log_t, (j + 1)[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(t1 > t0, (log_budget - t0) / (t1 - t0), 0.0)
    v0 = np.take_along_axis(values, j[..., None, None], -2)[..., 0, :]
    v1 = np.take_along_axis(values, (j + 1)[..., None, None], -2)[..., 0, :]
    out = v0 + w[..., None] * (v1 - v0)
    return np.where(ok[..., None], out, np.nan)


def _matrices(work: pd.DataFrame, method: str, fors: int, sigma: float, is_n: int):
    """Per shared image: LS times (I, K), LS outcomes (I, K, M), IS time (I,), IS outcomes (I, M); or None."""
    ls = work[(work["method"] == method) & (work["fors"] == fors) & (work["sigma"] == sigma) & (work[N_AXIS] > 0)]
    base = work[(work["method"] == certifiers.reference_key()) & (work["sigma"] == sigma) & (work[N_AXIS] == is_n)]
    ns = sorted(ls[N_AXIS].unique())
    if len(ns) < 2 or base.empty:
        return None
    frames = [ls[ls[N_AXIS] == n].set_index("idx") for n in ns]
    base = base.set_index("idx")
    shared = base.index
    for f in frames:
        shared = shared.intersection(f.index)
    if len(shared) < 2:
        return None
    times = np.stack([f.loc[shared, "total_s"].to_numpy(float) for f in frames], axis=1)
    outcomes = np.stack([f.loc[shared, _OUTCOMES].to_numpy(float) for f in frames], axis=1)
    if not (np.isfinite(times).all() and np.isfinite(base.loc[shared, "total_s"]).all() and (times > 0).all()):
        return None
    return times, outcomes, base.loc[shared, "total_s"].to_numpy(float), base.loc[shared, _OUTCOMES].to_numpy(float)


def _bootstrap(mats, confidence: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, lo, hi), each of length 2M: the readings at the budget, then their gains over IS-RS."""
    times, outcomes, is_time, is_out = mats

    def statistic(pos: np.ndarray, axis: int = -1) -> np.ndarray:
        p = np.asarray(pos).astype(int)
        log_t = np.log(times[p].mean(axis=-2))
        reading = read_front(log_t, outcomes[p].mean(axis=-3), np.log(is_time[p].mean(axis=-1))) * _SCALE
        gain = reading - is_out[p].mean(axis=-2) * _SCALE
        return np.moveaxis(np.concatenate([reading, gain], axis=-1), -1, 0)

    positions = np.arange(len(is_time))
    point = statistic(positions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((positions,), statistic, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence,
                              method="BCa", vectorized=True, random_state=np.random.default_rng(seed))
    lo, hi = np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)
    degenerate = np.nanmax(res.bootstrap_distribution, axis=-1) == np.nanmin(res.bootstrap_distribution, axis=-1)
    lo, hi = np.where(degenerate & np.isnan(lo), point, lo), np.where(degenerate & np.isnan(hi), point, hi)
    return point, lo, hi


def equal_time_uncertainty(
    df: pd.DataFrame, summary: pd.DataFrame, confidence: float = DEFAULT_CONFIDENCE, seed: int = BOOTSTRAP_SEED
) -> tuple[dict[str, tuple[list, list]], list[dict]]:
    """Intervals of the equal-time table's metric cells ({display column: (lows, highs)}, in the table's row
    order) and ``paired.csv`` records of each LS-RS reading's gain over IS-RS at equal time.

    IS-RS and Lipschitz rows take the summary's intervals of their measured values; LS-RS readings the paired
    bootstrap of this module."""
    frame = equal_time_frame(summary)
    metrics = metric_columns(TABLE_RADII)
    titles = [*(f"r = {r:.2f}" for r in TABLE_RADII), "ACR"]
    lows = np.full((len(frame), len(metrics)), np.nan)
    highs = np.full((len(frame), len(metrics)), np.nan)
    records: list[dict] = []
    if frame.empty or N_AXIS not in df.columns:
        return {t: (list(lows[:, i]), list(highs[:, i])) for i, t in enumerate(titles)}, records
    work = image_outcomes(df, TABLE_RADII)
    work[N_AXIS] = pd.to_numeric(df[N_AXIS], errors="coerce").to_numpy()
    for i, rec in enumerate(frame.to_dict("records")):
        if rec["status"] not in (MEASURED, INTERPOLATED, WITHIN):
            continue
        if certifiers.has_fors_axis(rec["method"]):
            mats = _matrices(work, rec["method"], int(rec["fors"]), float(rec["sigma"]), int(rec["is_n"]))
            if mats is None:
                continue
            point, lo, hi = _bootstrap(mats, confidence, seed)
            m = len(metrics)
            lows[i], highs[i] = lo[:m], hi[:m]
            records += _gain_records(rec, point, lo, hi, m, len(mats[2]))
        else:
            lows[i], highs[i] = _summary_interval(summary, rec, metrics)
    return {t: (list(lows[:, i]), list(highs[:, i])) for i, t in enumerate(titles)}, records


def _summary_interval(summary: pd.DataFrame, rec: dict, metrics: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The summary's interval of a measured row (IS-RS at its n, the Lipschitz twin)."""
    rows = summary[(summary["method"] == rec["method"]) & (summary["fors"] == rec["fors"])]
    if certifiers.uses_noise(rec["method"]):
        rows = rows[(rows["sigma"] == rec["sigma"]) & (rows[N_AXIS] == rec["is_n"])]
    if rows.empty or f"{metrics[0]}_lo" not in rows.columns:
        return np.full(len(metrics), np.nan), np.full(len(metrics), np.nan)
    row = rows.iloc[0]
    return (np.array([row[f"{m}_lo"] for m in metrics], float), np.array([row[f"{m}_hi"] for m in metrics], float))


def _gain_records(rec: dict, point, lo, hi, m: int, images: int) -> list[dict]:
    setting = f"σ = {format_sigma(float(rec['sigma']))}, IS-RS n = {int(rec['is_n']):,}"
    label_a = f"{config_label(rec['method'], int(rec['fors']), rec['fors_total'])} at equal time, {setting}"
    label_b = f"{config_label(certifiers.reference_key(), 0, rec['fors_total'])}, {setting}"
    out = []
    for j, r in enumerate([*TABLE_RADII, math.nan]):
        metric = "equal_time_acr" if j == m - 1 else "equal_time_certified_accuracy"
        out.append({
            "config_a": label_a, "config_b": label_b, "metric": metric, "radius": r, "value_a": point[j],
            "value_b": point[j] - point[m + j], "diff": point[m + j], "diff_lo": lo[m + j], "diff_hi": hi[m + j],
            "ratio": math.nan, "ratio_lo": math.nan, "ratio_hi": math.nan, "p_value": math.nan, "test": BOOTSTRAP,
            "images": images,
        })  # fmt: skip
    return out
