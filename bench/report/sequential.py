"""Report tables for certification beyond fixed n: samples used by the sampler, and anytime-valid decisions.

* ``sampling``: per configuration, mean noise samples drawn against the fixed-n budget ``n0 + n`` (the share
  saved by ``--sampler curtail``), beside ACR and accuracy (``--certificate`` binary or multiclass).
* ``decisions``: per configuration and asked radius r, the share of images ``decide`` certified at r, beside the
  fixed-n certified accuracy at r of the *same* images from the same run, the share left undecided at
  ``max_n``, mean samples and mean seconds of a decision against those of a fixed-n certificate.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import store
from bench.report.labels import DEFENSES, at_largest_n

KEYS = ["method", "fors", "sigma"]


def _label(frame: pd.DataFrame) -> pd.DataFrame:
    fors = frame["fors"].astype(int).astype(str)
    if "fors_total" in frame.columns:  # without the column (an old store) the FoR alone
        fors = fors + "/" + frame["fors_total"].astype(int).astype(str)
    return pd.DataFrame({
        "Defense": frame["method"].map(DEFENSES).tolist(),
        "σ": frame["sigma"].astype(float).tolist(),
        "FoR": fors.tolist(),
    })


def sampling_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Samples used vs the fixed-n budget per (method, fors, sigma, sampler, certificate); sigma > 0 only."""
    rows = df[df["sigma"] > 0].copy()
    rows["_budget"] = rows["n0"] + rows["n"]
    rows["_credit"] = rows["radius"].where(rows["correct"].astype(bool), 0.0)
    keys = [*KEYS, "sampler", "certificate"]
    out = rows.groupby(keys, sort=True).agg(
        images=("idx", "size"), acr=("_credit", "mean"), accuracy=("correct", "mean"),
        samples=("samples_used", "mean"), budget=("_budget", "mean"), time_s=("total_s", "mean"),
        fors_total=("fors_total", "max"),
    ).reset_index()
    out["accuracy"] *= 100.0
    out["saved"] = 100.0 * (1.0 - out["samples"] / out["budget"])
    return out


def decision_summary(decisions: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Decided vs fixed-n certified accuracy at each asked radius, on the same images of the same run."""
    cert = df[df["sigma"] > 0][[*KEYS, "idx", "radius", "correct", "total_s", "n0", "n"]].rename(
        columns={"radius": "cert_radius", "correct": "cert_correct", "total_s": "cert_s"}
    )
    merged = decisions.merge(cert, on=[*KEYS, "idx"], how="inner")
    merged["_decided_ok"] = merged["certified"].fillna(False).astype(bool) & merged["correct"].astype(bool)
    merged["_fixed_ok"] = merged["cert_correct"].astype(bool) & (merged["cert_radius"] >= merged["radius"])
    merged["_undecided"] = merged["certified"].isna()
    merged["_budget"] = merged["n0"] + merged["n"]
    out = merged.groupby([*KEYS, "radius"], sort=True).agg(
        images=("idx", "size"), decided=("_decided_ok", "mean"), fixed=("_fixed_ok", "mean"),
        undecided=("_undecided", "mean"), samples=("samples_used", "mean"), budget=("_budget", "mean"),
        decide_s=("total_s", "mean"), fixed_s=("cert_s", "mean"), fors_total=("fors_total", "max"),
    ).reset_index()
    for col in ("decided", "fixed", "undecided"):
        out[col] *= 100.0
    return out


def read_decisions(run_dir: Path) -> pd.DataFrame:
    return store.read_rows(Path(run_dir) / store.DECISIONS_DIR)


def sequential_tables(run_dir: Path, df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame, dict[str, str]]]:
    """(name, caption, display frame, formats) of the tables this run supports (none for a plain fixed-n run);
    with an n axis, at its largest n (a decision has no n)."""
    df = at_largest_n(df)
    tables = []
    needed = {"samples_used", "sampler", "certificate", "n0", "n"}
    if needed <= set(df.columns) and (df["sigma"] > 0).any():
        plain = (df["sampler"].isin(["fixed"]) & df["certificate"].isin(["binary"])).all()
        if not plain:
            s = sampling_summary(df)
            data = _label(s).assign(
                Sampler=s["sampler"].tolist(), Certificate=s["certificate"].tolist(), ACR=s["acr"].tolist(),
                **{"Accuracy (%)": s["accuracy"].tolist(), "samples used": s["samples"].tolist(),
                   "fixed n0 + n": s["budget"].tolist(), "saved (%)": s["saved"].tolist(),
                   "time (s/example)": s["time_s"].tolist()},
            )
            formats = {"σ": "{:.2f}", "ACR": "{:.3f}", "Accuracy (%)": "{:.2f}", "samples used": "{:.0f}",
                       "fixed n0 + n": "{:.0f}", "saved (%)": "{:.1f}", "time (s/example)": "{:.3f}"}
            tables.append(("sampling", "Noise samples drawn per image against the fixed-n budget "
                           "(--sampler curtail stops once abstention is certain; same certificates).", data, formats))
    decisions = read_decisions(run_dir)
    if not decisions.empty:
        d = decision_summary(decisions, df)
        data = _label(d).assign(
            r=d["radius"].tolist(),
            **{"decided (%)": d["decided"].tolist(), "fixed-n (%)": d["fixed"].tolist(),
               "undecided (%)": d["undecided"].tolist(), "samples": d["samples"].tolist(),
               "fixed n0 + n": d["budget"].tolist(), "s/decision": d["decide_s"].tolist(),
               "s/certificate": d["fixed_s"].tolist()},
        )
        formats = {"σ": "{:.2f}", "r": "{:.2f}", "decided (%)": "{:.2f}", "fixed-n (%)": "{:.2f}", "undecided (%)": "{:.1f}",
                   "samples": "{:.0f}", "fixed n0 + n": "{:.0f}", "s/decision": "{:.4f}", "s/certificate": "{:.4f}"}
        tables.append(("decisions", "Anytime-valid decisions at radius r against fixed-n certified accuracy at r "
                       "on the same images (decided = certified robust at r and correct).", data, formats))
    return tables
