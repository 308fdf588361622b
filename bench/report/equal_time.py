"""Equal time, not equal n: what each method certifies in the time IS-RS spends per image.

A run with an n axis (``bench run --n 1000,4000,16000``) measures, per (method, FoR, σ), certified accuracy
and ACR at several n together with the mean seconds per image ``t(n)`` (``total_s``). These points are the
method's **accuracy-time front** (:func:`front_figure`). The **equal-time table** (:func:`equal_time_table`)
takes each IS-RS point (σ, n) as a budget B = t_IS(n) seconds per image and gives what every LS-RS FoR (and
the Lipschitz twin) reaches within B:

* LS-RS: its front read at B, linear in log time between the two measured points around B (consecutive in
  n): with ``t_j <= B <= t_{j+1}`` and ``w = (ln B - ln t_j) / (ln t_{j+1} - ln t_j)``,
  ``y(B) = y_j + w (y_{j+1} - y_j)`` for each metric y, and the n at equal time ``exp(ln n_j + w (ln n_{j+1} -
  ln n_j))``. A budget outside ``[min t_j, max t_j]`` is never extrapolated: the row is marked ``below
  range`` / ``above range`` and its values left empty. Where the measured times do not increase with n (the
  timing noise is larger than the time the extra samples take: more images or more widely spaced n resolve
  it), the front is not a function of time and every reading of that configuration is left empty
  (``times not increasing with n``).
* Lipschitz: one forward pass, no n; its measured values stand where its time fits the budget (``within
  budget``), else the row is ``over budget``. Spending more time would not change its certificate.

What the numbers are. A measured point is the certified accuracy of certificates that are each valid on
their own (Cohen et al. 2019, CERTIFY at that n; for LS-RS Theorem 1 of the paper). An interpolated value is
a reading of the front between two such measurements, an estimate of what an n between them would certify,
not a certificate of any image; nothing here picks, per image, the n (or method) that did best. Times are
those of the run's device and load: compare within one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench import certifiers
from bench.report.labels import (
    N_AXIS,
    cert_acc_column,
    config_label,
    format_sigma,
    fors_axis_mask,
    fors_label,
    noise_mask,
    reference_mask,
)

TABLE_NAME = "equal_time"
FIGURE_NAME = "accuracy_time_front"
TABLE_RADII: tuple[float, ...] = (0.0, 0.25, 0.5)
FRONT_RADII: tuple[float, ...] = (0.25, 0.5)
MEASURED, INTERPOLATED, BELOW, ABOVE = "measured", "interpolated", "below range", "above range"
NOT_MONOTONE = "times not increasing with n"
WITHIN, OVER = "within budget", "over budget"
FRONT_CAPTION = (
    "Accuracy-time front: certified accuracy at r and ACR against mean seconds per image (log scale), one line "
    "per method / FoR / σ through its n values, with interval bars over the images on both axes; the Lipschitz "
    "twin (one forward pass) is a single point."
)


def metric_columns(radii: Sequence[float] = TABLE_RADII) -> list[str]:
    """The summary columns the table and the front read: certified accuracy at each radius, then ACR."""
    return [*(cert_acc_column(r) for r in radii), "acr"]


def interpolate_log_time(times: Sequence[float], values: Sequence[float], budget: float) -> tuple[float, str]:
    """``values`` read at ``budget`` seconds, linear in log time between the measured ``times``.

    Returns (value, status): status ``measured`` when ``budget`` equals a measured time, ``interpolated``
    between two, and ``below range`` / ``above range`` (value NaN) outside ``[min(times), max(times)]``:
    never extrapolated. The points are given in n order; times must be > 0 and strictly increasing
    (else NaN and ``times not increasing with n``).
    """
    t = np.asarray(times, dtype=float)
    y = np.asarray(values, dtype=float)
    if t.size == 0 or not math.isfinite(budget) or budget <= 0:
        return float("nan"), BELOW
    if (t <= 0).any() or not np.isfinite(t).all():
        raise ValueError(f"times must be finite and > 0, got {list(t)}")
    if (np.diff(t) <= 0).any():
        return float("nan"), NOT_MONOTONE
    if budget < t[0]:
        return float("nan"), BELOW
    if budget > t[-1]:
        return float("nan"), ABOVE
    exact = np.flatnonzero(t == budget)
    if exact.size:
        return float(y[exact[0]]), MEASURED
    return float(np.interp(math.log(budget), np.log(t), y)), INTERPOLATED


def _points(summary: pd.DataFrame, method: str, fors: int, sigma: float) -> pd.DataFrame:
    rows = summary[(summary["method"] == method) & (summary["fors"] == fors) & (summary["sigma"] == sigma)]
    return rows[rows[N_AXIS] > 0].dropna(subset=["time_s"]).sort_values(N_AXIS)


def _ls_row(points: pd.DataFrame, budget: float, metrics: list[str]) -> dict:
    """An LS-RS configuration's front read at ``budget``: metrics, n at equal time, status."""
    times = points["time_s"].to_numpy(float)
    out = {m: interpolate_log_time(times, points[m].to_numpy(float), budget)[0] for m in metrics}
    log_n, status = interpolate_log_time(times, np.log(points[N_AXIS].to_numpy(float)), budget)
    out["n_equal"] = math.exp(log_n) if status in (MEASURED, INTERPOLATED) else float("nan")
    if status == BELOW:
        status = f"{BELOW} (its n = {int(points[N_AXIS].min()):,} takes {times.min():.3g} s)"
    elif status == ABOVE:
        status = f"{ABOVE} (its n = {int(points[N_AXIS].max()):,} takes {times.max():.3g} s)"
    out["status"] = status
    return out


def equal_time_frame(summary: pd.DataFrame, radii: Sequence[float] = TABLE_RADII) -> pd.DataFrame:
    """One row per (σ, IS-RS n, competitor): IS-RS itself (measured), each LS-RS FoR at the same σ (its front
    read at the IS-RS time) and the Lipschitz twin; empty without an n axis (no ``n`` column in ``summary``)
    or without IS-RS rows. Columns: sigma, is_n, budget_s, method, fors, fors_total, n_equal, the metrics
    (:func:`metric_columns`), status."""
    metrics = metric_columns(radii)
    if N_AXIS not in summary.columns or not reference_mask(summary).any():
        return pd.DataFrame(columns=["sigma", "is_n", "budget_s", "method", "fors", "fors_total", "n_equal",
                                     *metrics, "status"])
    lip = summary[~noise_mask(summary) & summary["time_s"].notna()].to_dict("records")  # no noise: one point
    records = []
    for is_rec in _is_budgets(summary).to_dict("records"):
        sigma, budget = float(is_rec["sigma"]), float(is_rec["time_s"])
        base = {"sigma": sigma, "is_n": int(is_rec[N_AXIS]), "budget_s": budget}
        records.append({**base, "method": is_rec["method"], "fors": 0, "fors_total": is_rec["fors_total"],
                        "n_equal": float(is_rec[N_AXIS]), **{m: is_rec[m] for m in metrics}, "status": MEASURED})
        ls = summary[fors_axis_mask(summary) & (summary["sigma"] == sigma)]
        for method, fors in ls[["method", "fors"]].drop_duplicates().sort_values("fors").itertuples(index=False):
            points = _points(summary, method, int(fors), sigma)
            if len(points):
                records.append({**base, "method": method, "fors": int(fors), "fors_total": points["fors_total"].max(),
                                **_ls_row(points, budget, metrics)})
        for lip_rec in lip:
            fits = float(lip_rec["time_s"]) <= budget
            records.append({**base, "method": lip_rec["method"], "fors": int(lip_rec["fors"]), "fors_total": lip_rec["fors_total"],
                            "n_equal": float("nan"), **{m: lip_rec[m] if fits else float("nan") for m in metrics},
                            "status": WITHIN if fits else f"{OVER} (it takes {float(lip_rec['time_s']):.3g} s)"})
    return pd.DataFrame.from_records(records)


def _is_budgets(summary: pd.DataFrame) -> pd.DataFrame:
    rows = summary[reference_mask(summary) & (summary["sigma"] > 0) & (summary[N_AXIS] > 0)]
    return rows.dropna(subset=["time_s"]).sort_values(["sigma", N_AXIS])


def equal_time_table(summary: pd.DataFrame) -> tuple[str, str, pd.DataFrame, dict] | None:
    """(name, caption, display frame, formats) of the equal-time table, or None when the run has no n axis."""
    frame = equal_time_frame(summary)
    if frame.empty:
        return None
    data = pd.DataFrame({
        "σ": frame["sigma"].tolist(),
        "IS-RS n": [f"{int(n):,}" for n in frame["is_n"]],
        "budget (s/example)": frame["budget_s"].tolist(),
        "Defense": frame["method"].map(certifiers.defense).tolist(),
        "FoR": [fors_label(k, t) for k, t in zip(frame["fors"], frame["fors_total"], strict=True)],
        "n at equal time": frame["n_equal"].tolist(),
        **{f"r = {r:.2f}": frame[cert_acc_column(r)].astype(float).tolist() for r in TABLE_RADII},
        "ACR": frame["acr"].astype(float).tolist(),
        "reading": frame["status"].tolist(),
    })
    formats = {"σ": format_sigma, "budget (s/example)": "{:.4f}", "n at equal time": "{:,.0f}", "ACR": "{:.3f}",
               **{f"r = {r:.2f}": "{:.2f}" for r in TABLE_RADII}}
    caption = (
        "Equal time, not equal n: for each σ and IS-RS n, the certified accuracy (%) at l2 radius r and the ACR "
        "that each LS-RS FoR and the Lipschitz twin reach in the IS-RS time per image (budget); LS-RS values are "
        "read on its accuracy-time front, linear in log time between its measured n, never extrapolated "
        "(outside its measured times the row is marked and left empty)."
    )
    return TABLE_NAME, caption, data, formats


def front_figure(summary: pd.DataFrame):
    """Certified accuracy at :data:`FRONT_RADII` and ACR (rows) against mean s/image (log x), one panel
    column per σ > 0: one line per method / FoR through its n (IS-RS dashed), the Lipschitz twin a point."""
    import seaborn as sns
    from matplotlib.figure import Figure

    from bench.report import plots

    if N_AXIS not in summary.columns:
        raise plots.NothingToPlot("the run has one n: no accuracy-time front")
    sampled = summary[(summary["sigma"] > 0) & noise_mask(summary) & (summary[N_AXIS] > 0)]
    sampled = sampled.dropna(subset=["time_s"])
    if sampled.empty:
        raise plots.NothingToPlot("no timed sigma > 0 rows")
    lip = summary[~noise_mask(summary) & summary["time_s"].notna()]
    sigmas = sorted(sampled["sigma"].unique())
    metrics = metric_columns(FRONT_RADII)
    titles = [f"cert. acc. (%), r = {r:g}" for r in FRONT_RADII] + [plots.ACR_LABEL]
    configs = sampled[["method", "fors"]].drop_duplicates().sort_values(["method", "fors"])
    ls_fors = sorted(configs.loc[fors_axis_mask(configs), "fors"])
    colors = dict(zip(ls_fors, sns.color_palette("viridis", max(len(ls_fors), 1)), strict=False))
    with plots.theme():
        fig = Figure(figsize=(plots.COLUMN_WIDTH_IN, 0.8 + 1.35 * len(metrics)), layout="constrained")
        axes = fig.subplots(len(metrics), len(sigmas), sharex="col", squeeze=False)
        handles: dict[str, object] = {}
        for col, sigma in enumerate(sigmas):
            for row, metric in enumerate(metrics):
                ax = axes[row][col]
                for rec in configs.itertuples(index=False):
                    pts = _points(summary, rec.method, int(rec.fors), sigma)
                    if pts.empty:
                        continue
                    label = config_label(rec.method, int(rec.fors), pts["fors_total"].max())
                    (line,) = ax.plot(pts["time_s"], pts[metric], marker="o", markersize=3, lw=1.1,
                                      ls=certifiers.line_style(rec.method),
                                      color=certifiers.color(rec.method) or colors.get(rec.fors, "grey"))
                    handles.setdefault(label, line)
                    _interval_bars(ax, pts, metric, line.get_color())
                for rec in lip.to_dict("records"):
                    (dot,) = ax.plot([rec["time_s"]], [rec[metric]], marker="D", markersize=4, ls="none",
                                     color=certifiers.color(rec["method"]) or "grey")
                    handles.setdefault(config_label(rec["method"], int(rec["fors"]), rec["fors_total"]), dot)
                    _interval_bars(ax, pd.DataFrame([rec]), metric, dot.get_color())
                plots.log_seconds_axis(ax)
                if row == 0:
                    ax.set_title(f"σ = {format_sigma(sigma)}")
                if row == len(metrics) - 1:
                    ax.set_xlabel(plots.TIME_LABEL)
                ax.set_ylabel(titles[row] if col == 0 else "", fontsize="x-small")
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(3, len(handles)),
                   fontsize="small")
    return fig


def _error(points: pd.DataFrame, column: str) -> np.ndarray | None:
    """(below, above) distances from each value to its interval's ends (0 where undefined), or None."""
    if f"{column}_lo" not in points.columns:
        return None
    value = points[column].to_numpy(float)
    below = np.nan_to_num(value - points[f"{column}_lo"].to_numpy(float), nan=0.0).clip(min=0)
    above = np.nan_to_num(points[f"{column}_hi"].to_numpy(float) - value, nan=0.0).clip(min=0)
    return np.vstack([below, above])


def _interval_bars(ax, points: pd.DataFrame, metric: str, color) -> None:
    """Interval bars on both axes of a front's points (time: bootstrap; metric: Clopper-Pearson or bootstrap),
    when the summary carries intervals (``bench report`` adds them)."""
    xerr, yerr = _error(points, "time_s"), _error(points, metric)
    if xerr is None and yerr is None:
        return
    ax.errorbar(points["time_s"], points[metric], xerr=xerr, yerr=yerr, fmt="none", ecolor=color, lw=0.6,
                capsize=1.5)


def front_figures(summary: pd.DataFrame, out_dir: Path, formats: Sequence[str] | None = None) -> tuple[list, list[str]]:
    """Save :func:`front_figure` as PNG + PDF (or ``formats``, :func:`bench.report.plots.save_figure`) when the run has an n axis: (figure files, notes)."""
    if N_AXIS not in summary.columns:
        return [], []
    from bench.report import plots

    try:
        fig = front_figure(summary)
    except plots.NothingToPlot as exc:
        return [], [f"figure {FIGURE_NAME} not drawn: {exc}"]
    return [plots.FigureFile(FIGURE_NAME, FRONT_CAPTION, plots.save_figure(fig, Path(out_dir) / FIGURE_NAME, formats), fig)], []
