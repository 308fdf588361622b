"""Paired comparisons of a run (``paired.csv``), the sentences that say them and the note on α.

Every LS-RS configuration is compared with the IS-RS baseline at its σ (and n, sampler, ... where the run
has several) on the images both certified: certified accuracy at each radius (difference with Newcombe's
paired interval, exact McNemar test), ACR (paired bootstrap of the difference and of the ratio LS / IS) and
time per image (rows with IS-RS as configuration A, so that the ratio is the speedup t_IS / t_LS);
:mod:`bench.report.paired` has the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench import certifiers
from bench.report.intervals import BOOTSTRAP_SEED, DEFAULT_CONFIDENCE
from bench.report.labels import (
    N_AXIS,
    config_label,
    format_sigma,
    fors_axis_mask,
    noise_mask,
    reference_mask,
    variant_keys,
)
from bench.report.paired import Paired, compare_means, compare_proportions
from bench.report.uncertainty import image_outcomes

PAIRED_COLUMNS: tuple[str, ...] = (
    "config_a", "config_b", "metric", "radius", "value_a", "value_b", "diff", "diff_lo", "diff_hi", "ratio",
    "ratio_lo", "ratio_hi", "p_value", "test", "images",
)  # fmt: skip
CERT_ACC = "certified_accuracy"


def _setting(key: dict, variants: list[str]) -> str:
    """``σ = 0.25, n = 1,000``: what both configurations of a comparison share."""
    parts = [f"σ = {format_sigma(float(key['sigma']))}"]
    for v in variants:
        value = key[v]
        parts.append(f"n = {int(value):,}" if v == N_AXIS and value == value else f"{v} = {value}")
    return ", ".join(parts)


def _row(a: str, b: str, metric: str, radius: float, p: Paired, scale: float = 1.0) -> dict:
    return {
        "config_a": a, "config_b": b, "metric": metric, "radius": radius, "value_a": scale * p.value_a,
        "value_b": scale * p.value_b, "diff": scale * p.diff, "diff_lo": scale * p.diff_ci.lo,
        "diff_hi": scale * p.diff_ci.hi, "ratio": p.ratio, "ratio_lo": p.ratio_ci.lo, "ratio_hi": p.ratio_ci.hi,
        "p_value": p.p_value, "test": p.test, "images": p.images,
    }  # fmt: skip


def compare_groups(rows: pd.DataFrame, base: pd.DataFrame, label_a: str, label_b: str, radii: Sequence[float],
                   confidence: float, seed: int) -> list[dict]:
    """``paired.csv`` records of configuration A (``rows``, from :func:`bench.report.uncertainty.image_outcomes`)
    against B (``base``) on the images both hold (matched by ``idx``); none without shared images."""
    both = rows.merge(base, on="idx", suffixes=("_a", "_b"))
    if both.empty:
        return []
    records = []
    for r in radii:
        p = compare_proportions(both[f"_c{r}_a"].to_numpy(bool), both[f"_c{r}_b"].to_numpy(bool), confidence)
        records.append(_row(label_a, label_b, CERT_ACC, r, p, scale=100.0))
    p = compare_means(both["_credit_a"].to_numpy(float), both["_credit_b"].to_numpy(float), confidence, seed)
    records.append(_row(label_a, label_b, "acr", math.nan, p))
    p = compare_means(both["total_s_b"].to_numpy(float), both["total_s_a"].to_numpy(float), confidence, seed)
    records.append(_row(label_b, label_a, "time_s", math.nan, p))
    return records


def paired_frame(
    df: pd.DataFrame,
    radii: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """``paired.csv``: one row per (LS-RS configuration, IS-RS at its σ and variant, metric[, radius]) over
    the images both hold (matched by ``idx``); percentages in %, differences in points. Empty (with its
    columns) when the run has no IS-RS or no LS-RS rows with σ > 0."""
    radii = tuple(radii)
    work = image_outcomes(df, radii)
    work = work[work["sigma"] > 0]
    variants = variant_keys(df)
    keys = ["sigma", *variants]
    total = _fors_total(df)
    records: list[dict] = []
    base_rows = work[reference_mask(work)]
    for rows_key, rows in work[fors_axis_mask(work)].groupby(["method", "fors", *keys], sort=True, dropna=False):
        method, fors, *shared = rows_key
        key = dict(zip(keys, shared, strict=True))
        base = base_rows
        for k, v in key.items():
            base = base[base[k] == v]
        if base.empty:
            continue
        setting = _setting(key, variants)
        ls = f"{config_label(method, int(fors), total)}, {setting}"
        ref = f"{config_label(certifiers.reference_key(), 0, total)}, {setting}"
        records += compare_groups(rows, base, ls, ref, radii, confidence, seed)
    return pd.DataFrame.from_records(records, columns=list(PAIRED_COLUMNS))


def _fors_total(df: pd.DataFrame) -> float:
    return float(pd.to_numeric(df["fors_total"], errors="coerce").max()) if "fors_total" in df else math.nan


def paired_between_runs(
    runs: Sequence[tuple[str, pd.DataFrame]],
    radii: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """``paired.csv`` of a comparison report: for every pair of runs (in order) and every pair of their
    certified configurations at the same σ, A against B on the images both certified (by ``idx``)."""
    radii = tuple(radii)
    groups = []
    for name, df in runs:
        work = image_outcomes(df, radii)
        work = work[(work["sigma"] > 0) & noise_mask(work)]
        total = _fors_total(df)
        for (method, fors, sigma), rows in work.groupby(["method", "fors", "sigma"], sort=True):
            label = f"{name}: {config_label(method, int(fors), total)}, σ = {format_sigma(float(sigma))}"
            groups.append((name, float(sigma), label, rows))
    records: list[dict] = []
    for i, (run_a, sigma_a, label_a, rows_a) in enumerate(groups):
        for run_b, sigma_b, label_b, rows_b in groups[i + 1:]:
            if run_a != run_b and sigma_a == sigma_b:
                records += compare_groups(rows_a, rows_b, label_a, label_b, radii, confidence, seed)
    return pd.DataFrame.from_records(records, columns=list(PAIRED_COLUMNS))


def _num(x: float, decimals: int) -> str:
    return "n/a" if x != x else f"{x:.{decimals}f}"


def _p_text(p: float) -> str:
    return "n/a" if p != p else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def detectable(rec: dict, confidence: float) -> bool:
    """A difference in certified accuracy is called detectable when its exact McNemar test rejects equality at
    level 1 - confidence and its interval excludes 0 (both agree in all but borderline cases)."""
    p, lo, hi = rec["p_value"], rec["diff_lo"], rec["diff_hi"]
    return p == p and p < 1 - confidence and lo == lo and (lo > 0 or hi < 0)


def _short(config: str) -> str:
    """``FoR 9`` for an LS-RS label ``LS-RS 9/18, σ = ...``; the label itself otherwise."""
    head = config.split(",")[0]
    return "FoR " + head.split()[-1].split("/")[0] if head.startswith("LS-RS ") else head


def certified_sentence(rec: dict, confidence: float) -> str:
    """One certified-accuracy row of ``paired.csv`` in words (differences of A against B, in points)."""
    conf = f"{100 * confidence:g} %"
    setting = rec["config_a"].split(", ", 1)[1] if ", " in rec["config_a"] else ""
    head = f"{setting}: " if setting else ""
    r = f"r = {rec['radius']:g}"
    if detectable(rec, confidence):
        fewer = rec["diff"] < 0
        d, lo, hi = (-rec["diff"], -rec["diff_hi"], -rec["diff_lo"]) if fewer else (rec["diff"], rec["diff_lo"], rec["diff_hi"])
        return (f"{head}{_short(rec['config_a'])} certifies {_num(d, 1)} points {'fewer' if fewer else 'more'} at {r} "
                f"({conf} CI {_num(lo, 1)} to {_num(hi, 1)}, exact McNemar p = {_p_text(rec['p_value'])}).")
    return (f"{head}{_short(rec['config_a'])} against {_short(rec['config_b'])} at {r}: no difference detectable on "
            f"{int(rec['images'])} images: the {conf} CI of the difference is {_num(rec['diff_lo'], 1)} to "
            f"{_num(rec['diff_hi'], 1)} points (exact McNemar p = {_p_text(rec['p_value'])}; smallest detectable "
            f"difference about {_num((rec['diff_hi'] - rec['diff_lo']) / 2, 1)} points).")


def acr_sentence(rec: dict, confidence: float) -> str:
    """The ACR row of one comparison in words: difference and ratio with their paired intervals."""
    conf = f"{100 * confidence:g} %"
    return (f"{rec['config_a'].split(', ', 1)[-1]}: {_short(rec['config_a'])} has ACR {_num(rec['value_a'], 3)} against "
            f"{_num(rec['value_b'], 3)}, a difference of {_num(rec['diff'], 3)} ({conf} CI {_num(rec['diff_lo'], 3)} to "
            f"{_num(rec['diff_hi'], 3)}) and a ratio of {_num(rec['ratio'], 3)} ({conf} CI {_num(rec['ratio_lo'], 3)} to "
            f"{_num(rec['ratio_hi'], 3)}; paired bootstrap over {int(rec['images'])} images).")


def paired_sentences(paired: pd.DataFrame, confidence: float) -> list[str]:
    """Every comparison of ``paired`` in words, in its order (certified accuracy per radius, then ACR)."""
    out = []
    for rec in paired.to_dict("records"):
        if rec["metric"] == CERT_ACC:
            out.append(certified_sentence(rec, confidence))
        elif rec["metric"] == "acr":
            out.append(acr_sentence(rec, confidence))
    return out


def headline_sentences(paired: pd.DataFrame, confidence: float, radius: float = 0.25) -> list[str]:
    """The sentences of certified accuracy at ``radius`` and of ACR, at the largest n where the run has an n
    axis: a short summary of ``paired`` for a console."""
    if paired.empty:
        return []
    n = paired["config_a"].str.extract(r"n = ([\d,]+)")[0].str.replace(",", "").astype(float)
    rows = paired[(n == n.max()) | n.isna()] if n.notna().any() else paired
    rows = rows[((rows["metric"] == CERT_ACC) & (rows["radius"] == radius)) | (rows["metric"] == "acr")]
    return paired_sentences(rows, confidence)


def power_line(paired: pd.DataFrame, confidence: float) -> str | None:
    """The smallest detectable difference in certified accuracy of the run's comparisons (median and range of
    the half-widths of their paired intervals), or None without comparisons."""
    rows = paired[(paired["metric"] == CERT_ACC)]
    half = ((rows["diff_hi"] - rows["diff_lo"]) / 2).dropna()
    if half.empty:
        return None
    images = int(rows["images"].max())
    return (f"- **Power**: on {images} images a difference in certified accuracy is detectable only when it is larger "
            f"than the half-width of its paired {100 * confidence:g} % interval: {np.median(half):.1f} points (median "
            f"over the run's comparisons; {half.min():.1f} to {half.max():.1f}). `bench run --help` gives the images "
            "needed for a given precision.")


def alpha_note(df: pd.DataFrame, confidence: float) -> list[str]:
    """What the certificates' own failure probability α adds to the intervals over images, with the run's counts.

    Each certificate is wrong with probability at most α over the noise it drew (Cohen et al. 2019, Theorem 1
    with the one-sided Clopper--Pearson bound in CERTIFY). By linearity of expectation, M certificates hold at
    most α M wrong ones in expectation, whatever their dependence; Markov's inequality gives
    P(at least k wrong) <= α M / k, and k = 1 is the union bound P(any wrong) <= α M. An interval over images
    is computed as if every certificate were right; by the union bound the interval and all M certificates of a
    configuration hold together with probability at least confidence - α M.
    """
    if "alpha" not in df.columns or "sigma" not in df.columns:
        return []
    alpha = pd.to_numeric(df["alpha"], errors="coerce")
    certified = (df["sigma"] > 0) & df["correct"].astype(bool) & (pd.to_numeric(df["radius"], errors="coerce") > 0)
    if "prediction" in df.columns:
        certified &= pd.to_numeric(df["prediction"], errors="coerce") != -1
    a = float(alpha[certified].max()) if certified.any() else math.nan
    if a != a:
        return []
    total = int(certified.sum())
    keys = ["method", "fors", "sigma", *variant_keys(df)]
    per_config = int(certified.groupby([df[k] for k in keys], dropna=False).sum().max())
    joint = confidence - a * per_config
    return [
        f"- **What α adds**: each certificate is wrong with probability at most α = {a:g} (Cohen et al. 2019). "
        f"The run issued {total:,} certificates (correct, radius > 0): in expectation at most α·M = {a * total:.3g} "
        f"of them are wrong (linearity of expectation), and P(k or more wrong) ≤ {a * total:.3g}/k (Markov). A "
        f"configuration holds at most {per_config:,} certificates, so its {100 * confidence:g} % interval over images "
        f"and all its certificates hold together with probability at least {100 * confidence:g} % − "
        f"{100 * a * per_config:.3g} % = {100 * joint:.3g} % (union bound). The intervals treat every certificate "
        "as right; a wrong one can only lower the true certified accuracy, by at most α in expectation."
    ]
