"""Aggregate a run's results into the paper's tables (and call :mod:`bench.report.plots` for its figures).

Metrics, per configuration (method, FoR, sigma), over every image of the run (paper, Section 4):

- **ACR** (average certified radius): mean of ``radius`` where the prediction is correct, 0 where it is
  wrong or abstained.
- **Accuracy (%)**: certified accuracy at radius 0, i.e. the share of correct (non-abstained) predictions;
  at sigma = 0 it is the clean accuracy of the base network.
- **Certified accuracy at r (%)**: share of images predicted correctly with ``radius >= r`` (Cohen et al.
  2019); not defined at sigma = 0 (no certificate), shown as "-".
- **time (s/example)**: mean ``total_s`` per image; not reported at sigma = 0 (shown as "-", as in the paper).
- **Speedup**: time of IS-RS at the same sigma divided by the row's time (1 for IS-RS rows). The
  Lipschitz-margin rows (method ``lip``, one forward pass, stored at sigma 0 since no noise is involved)
  are divided into the mean IS-RS time over the run's sigma > 0, and keep their certified accuracies and
  times although their sigma is 0.
- **FLOP-ideal**: FLOPs per sample of what IS-RS runs (the baseline, ``manifest["models"]["0"]``, else the
  LS model's ``flops_baseline``, else its ``flops_total``) / ``flops_classifier`` of the LS model,
  the speedup if time were proportional to the FLOPs spent per noise sample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import certifiers
from bench.errors import UsageError
from bench.report.caveats import protocol_text, protocol_warning, run_protocol, trusted_caveat
from bench.report.cells import INTERVAL_NOTE, confidence_text, table_intervals, with_interval
from bench.report.comparisons import alpha_note, paired_frame, paired_sentences, power_line
from bench.report.equal_time import TABLE_NAME as EQUAL_TIME
from bench.report.equal_time import equal_time_table, front_figures
from bench.report.equal_time_intervals import equal_time_uncertainty
from bench.report.formats import FORMATS
from bench.report.intervals import BOOTSTRAP_SEED, DEFAULT_CONFIDENCE, check_confidence
from bench.report.labels import (
    N_AXIS,
    VARIANT_KEYS,
    cert_acc_column,
    certified_mask,
    clean_mask,
    config_label,
    format_sigma,
    fors_axis_mask,
    fors_label,
    method_order,
    noise_mask,
    reference_mask,
    variant_keys,
    variant_text,
)
from bench.report.notes import run_notes
from bench.report.paper_data import ABLATION_TABLE, MAIN_TABLE, paper_values, reference_dataset
from bench.report.sequential import sequential_tables
from bench.report.uncertainty import SIGMA_DECIMALS, add_intervals, image_outcomes
from bench.store import MANIFEST
from lsrs.architectures import get_architecture
from lsrs.datasets import dataset_title

RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
REQUIRED_COLUMNS: tuple[str, ...] = ("method", "fors", "sigma", "correct", "radius")
MANIFEST_NAMES: tuple[str, ...] = (MANIFEST, "manifest.json")


# --------------------------------------------------------------------------------------------- loading


def load_run(run_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read ``run_dir``'s ``part-*.parquet`` files and its manifest (``{}`` if there is none).

    The manifest is ``_manifest.json`` (:data:`bench.store.MANIFEST`); a plain ``manifest.json`` is accepted too.

    Rows repeated for the same (idx, method, fors, sigma, variant) -- e.g. after a resumed chunk -- are kept
    once (the last); how many were dropped is in ``df.attrs["duplicates_dropped"]``.
    Raises :class:`UsageError` when the directory is missing, holds no readable rows, lacks a required
    column, or its manifest is not a JSON object.
    """
    path = Path(run_dir)
    if not path.exists():
        raise UsageError(
            f"{path}: no such run directory (expected results/<run> written by `bench run`)"
        )
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory (expected results/<run> written by `bench run`)")
    parts = sorted(path.glob("part-*.parquet")) or sorted(path.glob("*.parquet"))
    if not parts:
        raise UsageError(
            f"{path}: no part-*.parquet files; is this a run directory written by `bench run`?"
        )
    frames = []
    for part in parts:
        try:
            frame = pd.read_parquet(part)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"{part}: not a readable parquet file ({first}); the same bench run on this folder "
                                  "moves it aside and certifies its rows again") from None
        if len(frame):
            frames.append(frame)
    if not frames:
        raise UsageError(f"{path}: the parquet parts hold no rows; has `bench run` finished any chunk?")
    df = pd.concat(frames, ignore_index=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UsageError(
            f"{path}: results lack column(s) {', '.join(missing)} (see docs/results-schema.md)"
        )

    manifest: dict = {}
    manifest_path = next((path / n for n in MANIFEST_NAMES if (path / n).exists()), None)
    if manifest_path is not None:
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{manifest_path}: not valid JSON ({exc}); bench run on this folder moves it aside "
                                  "(and resumes the rows of its configuration)") from None
        if not isinstance(manifest, dict):
            raise UsageError(f"{manifest_path}: expected a JSON object at the top level")

    df["method"] = df["method"].astype(str).str.lower()
    df["fors"] = pd.to_numeric(df["fors"], errors="coerce").fillna(0).astype(int)
    df["sigma"] = pd.to_numeric(df["sigma"], errors="coerce").astype(float)
    df["correct"] = df["correct"].fillna(False).astype(bool)
    df["radius"] = pd.to_numeric(df["radius"], errors="coerce").astype(float)
    dropped = 0
    if "idx" in df.columns:
        key = ["idx", "method", "fors", "sigma", *[k for k in VARIANT_KEYS if k in df.columns]]
        before = len(df)
        df = df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
        dropped = before - len(df)
    df.attrs["duplicates_dropped"] = dropped
    return df, manifest


# ------------------------------------------------------------------------------------------ aggregates


def _architecture_of(df: pd.DataFrame, manifest: dict):
    """The registry record of the run's architecture, or None (none recorded, or a plugin not installed here)."""
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    arch = None
    if "arch" in df.columns and len(df):
        arch = str(df["arch"].iloc[0])
    arch = arch or config.get("arch")
    try:
        return get_architecture(str(arch))
    except ValueError:
        return None


def _fors_total_default(df: pd.DataFrame, manifest: dict) -> float:
    record = _architecture_of(df, manifest)
    return np.nan if record is None else float(record.fors_total)


def _flop_ideal(method: str, fors: int, models: dict) -> float:
    if certifiers.is_reference(method):
        return 1.0
    entry = models.get(str(fors)) if isinstance(models, dict) else None
    if not isinstance(entry, dict):
        return float("nan")
    baseline = models.get("0") if isinstance(models.get("0"), dict) else {}
    try:
        total = float(baseline.get("flops_total") or entry.get("flops_baseline") or entry["flops_total"])
        classifier = float(entry["flops_classifier"])
    except (KeyError, TypeError, ValueError):
        return float("nan")
    return total / classifier if classifier > 0 else float("nan")


def summary_columns(variants: Iterable[str] = ()) -> list[str]:
    """Column order of :func:`summarize`'s table."""
    return [
        "defense", "method", "fors", "fors_total", "sigma", *variants, "images", "acr", "accuracy",
        *[cert_acc_column(r) for r in RADII], "time_s", "encode_s", "sample_s", "speedup", "flop_ideal",
    ]  # fmt: skip


def summarize(df: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """One row per (method, fors, sigma) -- and per sampler etc. where a run mixes several -- with the
    paper's metrics (see the module docstring). Percentages are in [0, 100]; times are NaN at sigma = 0."""
    variants = variant_keys(df)
    keys = ["method", "fors", "sigma", *variants]
    if df.empty:
        return pd.DataFrame(columns=summary_columns(variants))
    work = image_outcomes(df, RADII)  # the per-row outcomes the intervals are computed from
    work["fors_total"] = (
        pd.to_numeric(df["fors_total"], errors="coerce") if "fors_total" in df.columns else np.nan
    )

    agg = {
        "images": ("_correct", "size"),
        "acr": ("_credit", "mean"),
        "accuracy": ("_correct", "mean"),
        "time_s": ("total_s", "mean"),
        "encode_s": ("encode_s", "mean"),
        "sample_s": ("sample_s", "mean"),
        "fors_total": ("fors_total", "max"),
        **{cert_acc_column(r): (f"_c{r}", "mean") for r in RADII},
    }
    out = work.groupby(keys, sort=False, dropna=False).agg(**agg).reset_index()
    out["accuracy"] *= 100.0
    clean = clean_mask(out)
    for r in RADII:
        col = cert_acc_column(r)
        out[col] *= 100.0
        if r > 0:
            out.loc[clean, col] = np.nan
    out.loc[clean, ["time_s", "encode_s", "sample_s"]] = np.nan
    out["fors_total"] = out["fors_total"].fillna(_fors_total_default(df, manifest))
    out["defense"] = out["method"].map(certifiers.defense)

    match = ["sigma", *variants]
    is_time = (
        out.loc[reference_mask(out), [*match, "time_s"]]
        .drop_duplicates(match)
        .rename(columns={"time_s": "_is_time"})
    )
    out = out.merge(is_time, on=match, how="left")
    out["speedup"] = out["_is_time"] / out["time_s"]
    out = _lip_speedup(out, variants)
    models = manifest.get("models") or {}
    out["flop_ideal"] = [
        _flop_ideal(m, int(k), models) for m, k in zip(out["method"], out["fors"], strict=True)
    ]

    out["_m"] = method_order(out["method"])
    out = out.sort_values(["_m", "fors", *variants, "sigma"], kind="stable").drop(columns="_m")
    out["images"] = out["images"].astype(int)
    return out[summary_columns(variants)].reset_index(drop=True)


def _lip_speedup(out: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """Speedup of the ``lip`` rows: mean IS-RS time over sigma > 0 (same variant) / the row's time; with an
    n axis, the IS-RS times at its largest n (the ``lip`` row samples nothing: n = 0)."""
    lip = ~noise_mask(out)  # the rows of a certifier without noise (``lip``)
    if not lip.any():
        return out
    is_rows = out[reference_mask(out) & (out["sigma"] > 0)]
    if N_AXIS in variants:
        is_rows = is_rows[is_rows[N_AXIS] == is_rows[N_AXIS].max()]
        variants = [v for v in variants if v != N_AXIS]
    if variants:
        mean = is_rows.groupby(variants, dropna=False)["time_s"].mean().rename("_is_mean").reset_index()
        is_mean = out[variants].merge(mean, on=variants, how="left")["_is_mean"].to_numpy()
    else:
        is_mean = np.full(len(out), is_rows["time_s"].mean())
    out.loc[lip, "speedup"] = is_mean[lip.to_numpy()] / out.loc[lip, "time_s"]
    return out


# ------------------------------------------------------------------------------------- table building


@dataclass
class Table:
    """A display table: numeric cells plus one format string per numeric column (NaN shows as "-")."""

    name: str
    caption: str
    data: pd.DataFrame
    formats: dict[str, str | Callable[[float], str]]
    latex_caption: str = ""
    intervals: dict[str, tuple[list, list]] = field(default_factory=dict)  #: column -> (lows, highs)


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: every path, the index, and what the run was missing."""

    out_dir: Path
    paths: list[Path] = field(default_factory=list)
    index: Path | None = None
    missing: list[str] = field(default_factory=list)
    main_fors: int | None = None
    summary: pd.DataFrame | None = None
    tables: list[Table] = field(default_factory=list)
    paired: pd.DataFrame | None = None  #: ``paired.csv``
    sentences: list[str] = field(default_factory=list)  #: the paired comparisons in words
    caveats: list[str] = field(default_factory=list)  # what the numbers rest on (bench.report.caveats)


_METRIC_FORMATS: dict[str, str | Callable[[float], str]] = {
    "σ": format_sigma,
    "ACR": "{:.3f}",
    "Accuracy (%)": "{:.2f}",
    "time (s/example)": "{:.3f}",
    "Speedup": "{:.2f}",
    "FLOP-ideal": "{:.2f}",
}
PAPER_SUFFIX = " (paper)"


def _base_display(rows: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    data = {
        "Defense": rows["defense"].tolist(),
        "σ": rows["sigma"].where(noise_mask(rows)).tolist(),  # no noise: "-"
        "FoR": [fors_label(k, t) for k, t in zip(rows["fors"], rows["fors_total"], strict=True)],
    }
    for v in variants:
        data[v if v == N_AXIS else v.capitalize()] = [variant_text(v, x) for x in rows[v]]
    return pd.DataFrame(data)


def _main_display(rows: pd.DataFrame, variants: list[str], paper: pd.DataFrame | None) -> pd.DataFrame:
    out = _base_display(rows, variants)
    metrics = {
        "ACR": ("acr", "acr"),
        "Accuracy (%)": ("accuracy", "accuracy"),
        "time (s/example)": ("time_s", "time_s"),
        "Speedup": ("speedup", "speedup"),
        "FLOP-ideal": ("flop_ideal", None),
    }
    if paper is not None:
        ref = paper.assign(sigma=paper["sigma"].round(SIGMA_DECIMALS)).set_index(["method", "fors", "sigma"])
        keys = pd.MultiIndex.from_arrays(
            [rows["method"], rows["fors"].astype(int), rows["sigma"].round(SIGMA_DECIMALS)]
        )
    for title, (ours, theirs) in metrics.items():
        out[title] = rows[ours].astype(float).tolist()
        if paper is not None and theirs is not None:
            out[title + PAPER_SUFFIX] = ref[theirs].reindex(keys).astype(float).tolist()
    return out


def _formats_for(columns: Iterable[str]) -> dict[str, str | Callable[[float], str]]:
    fmts = {}
    for c in columns:
        base = c.removesuffix(PAPER_SUFFIX)
        if base in _METRIC_FORMATS:
            fmts[c] = _METRIC_FORMATS[base]
        elif c.startswith("r = "):
            fmts[c] = "{:.2f}"
    return fmts


def _dataset_of(df: pd.DataFrame, manifest: dict) -> str:
    if "dataset" in df.columns and df["dataset"].notna().any():
        values = df["dataset"].dropna().astype(str).unique()
        return values[0] if len(values) == 1 else "mixed"
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    return str(config.get("dataset", "unknown"))


def choose_main_fors(available: Iterable[int], requested: int) -> tuple[int | None, str | None]:
    """``requested`` if the run has it, else the middle available LS FoR, with a message saying so."""
    fors = sorted(set(int(k) for k in available))
    if not fors:
        return None, "no LS-RS rows: the main table shows IS-RS only"
    if requested in fors:
        return requested, None
    chosen = fors[len(fors) // 2]
    listed = ", ".join(str(k) for k in fors)
    return (
        chosen,
        f"main FoR {requested} is not in the run (LS-RS FoRs: {listed}); the main table uses FoR {chosen}",
    )


def _latex_text(text: str) -> str:
    """Plain caption text made safe for LaTeX (special characters escaped, sigma and l2 as math)."""
    for char in "&%#_":
        text = text.replace(char, "\\" + char)
    return text.replace("σ", r"$\sigma$").replace("l2", r"$\ell_2$")


def build_tables(
    summary: pd.DataFrame, dataset: str, main_fors: int | None, compare_paper: bool = False
) -> tuple[list[Table], list[str]]:
    """The main table (paper Table 1, or 3 for ImageNet), the FoR ablation (Table 2) and certified accuracy."""
    notes: list[str] = []
    variants = [c for c in VARIANT_KEYS if c in summary.columns]
    name = dataset_title(dataset)
    ref_ds = reference_dataset(dataset)
    main_no = MAIN_TABLE[ref_ds]  # the paper's table this run's main table stands for (Table 3 for ImageNet)
    ref_name = dataset_title(ref_ds)
    paper_main = paper_abl = None
    main_note = abl_note = ""
    if compare_paper:
        main_t = MAIN_TABLE[ref_ds]
        abl_t = ABLATION_TABLE.get(ref_ds)
        paper_main = paper_values(ref_ds, (main_t,))
        paper_abl = paper_values(ref_ds, (abl_t, main_t) if abl_t else (main_t,))
        if ref_ds != dataset:
            notes.append(f"the paper has no {name} results; --compare-paper shows its {ref_name} values")
        main_note = f" Paper columns: Table {main_t} of the paper ({ref_name})."
        abl_note = (
            f" Paper columns: Table {abl_t} of the paper ({ref_name}); speedups use Table {main_t}'s IS-RS times."
            if abl_t
            else f" Paper columns: Table {main_t} of the paper ({ref_name}), which has no FoR ablation."
        )

    tables: list[Table] = []
    is_rows = summary[reference_mask(summary)]
    ls_rows = summary[fors_axis_mask(summary)]
    lip_rows = summary[~reference_mask(summary) & ~fors_axis_mask(summary)]  # e.g. the Lipschitz margin
    main_rows = pd.concat(
        [is_rows, ls_rows[ls_rows["fors"] == main_fors] if main_fors is not None else ls_rows.iloc[:0], lip_rows]
    )
    if len(main_rows):
        fors_txt = (
            "" if main_fors is None else f" at FoR {fors_label(main_fors, ls_rows['fors_total'].max())}"
        )
        others = [certifiers.get_certifier(m) if m in certifiers.list_certifiers() else None for m in dict.fromkeys(lip_rows["method"])]
        lip_txt = "".join(f", and {c.caption or c.defense}" for c in others if c is not None)
        caption = (
            f"Efficiency and robustness on {name}: IS-RS and LS-RS{fors_txt}{lip_txt} "
            f"(layout of the paper's Table {main_no})."
        )
        data = _main_display(main_rows, variants, paper_main)
        tables.append(Table(f"table{main_no}", caption + main_note, data, _formats_for(data.columns),
                            intervals=table_intervals(main_rows, _MAIN_INTERVALS)))

    if len(ls_rows):
        caption = f"Depth of the latent space (FoR ablation) on {name}, every LS-RS FoR in the run (layout of the paper's Table 2)."
        data = _main_display(ls_rows, variants, paper_abl)
        tables.append(Table("table2", caption + abl_note, data, _formats_for(data.columns),
                            intervals=table_intervals(ls_rows, _MAIN_INTERVALS)))
    else:
        notes.append("no LS-RS rows: the FoR ablation table (Table 2) is not written")

    certified = summary[certified_mask(summary)]
    if len(certified):
        data = _base_display(certified, variants)
        for r in RADII:
            data[f"r = {r:.2f}"] = certified[cert_acc_column(r)].astype(float).tolist()
        caption = f"Certified accuracy (%) on {name} at l2 radius r (Cohen et al. 2019); r = 0 is the Accuracy column."
        intervals = table_intervals(certified, {f"r = {r:.2f}": cert_acc_column(r) for r in RADII})
        tables.append(Table("certified_accuracy", caption, data, _formats_for(data.columns), intervals=intervals))
    else:
        notes.append("no sigma > 0 rows: nothing was certified, the certified-accuracy table is not written")
    for t in tables:
        if t.intervals:
            t.caption += f" Cells: value {INTERVAL_NOTE.format(conf=confidence_text(_confidence(summary)))}."
        t.latex_caption = _latex_text(t.caption)
    return tables, notes


_MAIN_INTERVALS = {"ACR": "acr", "Accuracy (%)": "accuracy", "time (s/example)": "time_s", "Speedup": "speedup"}


def _confidence(summary: pd.DataFrame) -> float:
    return float(summary["confidence"].iloc[0]) if "confidence" in summary and len(summary) else DEFAULT_CONFIDENCE


# ------------------------------------------------------------------------------------------ rendering


def format_cell(value: object, fmt: str | Callable[[float], str] | None, na_rep: str = "-") -> str:
    """One display cell: NaN/None as ``na_rep``, numbers through ``fmt``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return na_rep
    if fmt is not None and isinstance(value, (int, float, np.number)):
        return fmt(value) if callable(fmt) else fmt.format(value)
    return str(value)


def display_cells(table: Table) -> list[list[str]]:
    """Every body cell as text: ``value [lo, hi]`` in the columns with intervals, else :func:`format_cell`."""
    cols = list(table.data.columns)
    out = []
    for i, rec in enumerate(table.data.itertuples(index=False, name=None)):
        row = []
        for c, v in zip(cols, rec, strict=True):
            if c in table.intervals:
                lows, highs = table.intervals[c]
                row.append(with_interval(v, lows[i], highs[i], table.formats[c]))
            else:
                row.append(format_cell(v, table.formats.get(c)))
        out.append(row)
    return out


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured pipe table: text columns left-aligned, numeric ones right-aligned, padded."""
    cols = list(table.data.columns)
    rows = [[cell.replace("|", r"\|") for cell in row] for row in display_cells(table)]
    numeric = [c in table.formats for c in cols]
    widths = [max(3, len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells: list[str]) -> str:
        padded = [x.rjust(w) if num else x.ljust(w) for x, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cols), rule, *(line(r) for r in rows)]) + "\n"


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment via :meth:`pandas.io.formats.style.Styler.to_latex`."""
    data = table.data.copy()
    cells = display_cells(table)
    for j, c in enumerate(table.data.columns):
        if c in table.intervals:
            data[c] = [row[j] for row in cells]
    data = data.rename(columns=lambda c: c.replace("σ", r"$\sigma$"))
    col_format = "".join("r" if c in table.formats else "l" for c in table.data.columns)
    formats = {c.replace("σ", r"$\sigma$"): f for c, f in table.formats.items() if c not in table.intervals}
    styler = (
        data.style.hide(axis="index")
        .format(formats, na_rep="-", escape="latex")
        .format_index(escape="latex-math", axis=1)
    )
    return styler.to_latex(
        hrules=True,
        column_format=col_format,
        caption=table.latex_caption or table.caption,
        label=f"tab:{table.name}",
        position_float="centering",
    )


def to_csv(table: Table) -> str:
    """The table's numbers rounded as displayed; NaN as an empty field."""
    data = table.data.copy()
    for c, fmt in table.formats.items():
        if isinstance(fmt, str) and "." in fmt:
            data[c] = data[c].astype(float).round(int(fmt.split(".")[1][0]))
            if c in table.intervals:
                at = data.columns.get_loc(c) + 1
                digits = int(fmt.split(".")[1][0])
                data.insert(at, f"{c} lo", np.round(np.asarray(table.intervals[c][0], float), digits))
                data.insert(at + 1, f"{c} hi", np.round(np.asarray(table.intervals[c][1], float), digits))
    return data.to_csv(index=False)


def render(table: Table, fmt: str) -> str:
    """``table`` as ``latex``, ``markdown`` or ``csv`` text."""
    if fmt == "latex":
        return to_latex(table)
    if fmt == "markdown":
        return f"**{table.caption}**\n\n" + to_markdown(table)
    if fmt == "csv":
        return to_csv(table)
    raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------------- missing configs


def missing_configs(summary: pd.DataFrame, manifest: dict, df: pd.DataFrame | None = None) -> list[str]:
    """Human-readable notes on configurations the run lacks or holds only partly."""
    notes: list[str] = []
    if not manifest:
        notes.append(f"no {MANIFEST}: FLOP-ideal speedups and run metadata are not available")
    if df is not None and df.attrs.get("duplicates_dropped"):
        notes.append(f"{df.attrs['duplicates_dropped']} repeated result row(s) were counted once")
    if summary.empty:
        return notes + ["the run holds no results"]
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}

    def _numbers(key: str, cast: type) -> list | None:
        values = config.get(key)
        if isinstance(values, (list, tuple)):
            try:
                return [cast(v) for v in values]
            except (TypeError, ValueError):
                return None
        return None

    sigmas = set(summary["sigma"].round(SIGMA_DECIMALS))
    cfg_sigmas = _numbers("sigmas", float)
    if cfg_sigmas:
        sigmas |= {round(s, SIGMA_DECIMALS) for s in cfg_sigmas}
    ls_fors = set(summary.loc[fors_axis_mask(summary), "fors"].astype(int))
    cfg_fors = _numbers("fors", int)
    if cfg_fors:
        ls_fors |= {k for k in cfg_fors if k > 0}
    total = summary["fors_total"].max()

    has_clean = bool(clean_mask(summary).any())
    if not has_clean:
        notes.append("no sigma = 0 rows: clean accuracy is not reported")
    has_reference = bool(reference_mask(summary).any())
    if not has_reference:
        notes.append("no IS-RS rows: speedups over IS-RS are not available")
    present = set(
        zip(
            summary["method"],
            summary["fors"].astype(int),
            summary["sigma"].round(SIGMA_DECIMALS),
            strict=True,
        )
    )
    check = sorted(sigmas) if has_clean else sorted(sigmas - {0.0})
    methods = set(summary["method"]) | set(config.get("methods") or ())
    expected = [(certifiers.reference_key(), 0)] * has_reference + [
        (m, k) for m in certifiers.fors_axis_keys() if m in methods for k in sorted(ls_fors)]
    for method, k in expected:
        lacking = [s for s in check if (method, k, s) not in present]
        if not lacking:
            continue
        label = config_label(method, k, total)
        if len(lacking) == len(check):
            notes.append(f"{label}: no rows at all (listed in the run's config)")
        else:
            notes.append(f"{label}: no rows at sigma = {', '.join(format_sigma(s) for s in lacking)}")

    most = int(summary["images"].max())
    for rec in summary.itertuples(index=False):
        if rec.images < most:
            notes.append(
                f"{config_label(rec.method, rec.fors, rec.fors_total)} at sigma = {format_sigma(rec.sigma)}: "
                f"{rec.images} of {most} images"
            )
    if manifest:
        lacking_flops = sorted(
            int(k) for k, v in zip(summary["fors"], summary["flop_ideal"], strict=True)
            if v != v and k in ls_fors
        )  # fmt: skip
        if lacking_flops:
            listed = ", ".join(str(k) for k in sorted(set(lacking_flops)))
            notes.append(f"manifest has no FLOP split for FoR {listed}: FLOP-ideal speedup shown as '-'")
    return notes


# ----------------------------------------------------------------------------------------- the report


def _run_line(df: pd.DataFrame, manifest: dict, dataset: str) -> str:
    parts = [f"dataset {dataset_title(dataset)}"]
    if "arch" in df.columns and df["arch"].notna().any():
        parts.append(f"arch {', '.join(sorted(df['arch'].dropna().astype(str).unique()))}")
    device = manifest.get("device")
    if device is None and "device" in df.columns and df["device"].notna().any():
        device = df["device"].dropna().astype(str).iloc[0]
    if device:
        parts.append(f"device {device}")
    if "idx" in df.columns:
        parts.append(f"{df['idx'].nunique()} images")
    parts.append(f"{len(df)} result rows")
    if manifest.get("config_hash"):
        parts.append(f"config {manifest['config_hash']}")
    return " · ".join(parts)


_DEFINITIONS = """\
## Definitions

- **ACR**: mean over all certified images of the certified l2 radius, counting 0 when the prediction is wrong or abstained.
- **Accuracy (%)**: certified accuracy at radius 0 (share of correct predictions); at σ = 0, the clean accuracy of the base network.
- **Certified accuracy at r (%)**: share of images predicted correctly with radius ≥ r (Cohen et al. 2019); "-" at σ = 0.
- **time (s/example)**: mean total certification seconds per image; "-" at σ = 0, as in the paper.
- **Speedup**: IS-RS time at the same σ divided by the row's time; for the Lipschitz-margin twin (σ "-": no noise, one forward pass, radius = logit margin / (√2 L)), the mean IS-RS time over σ > 0 divided by its time.
- **FLOP-ideal**: FLOPs of the baseline network (what IS-RS runs per noise sample) / FLOPs of the LS model's classifier fc, the speedup if time followed the FLOPs per noise sample.
"""


def _intervals_note(confidence: float) -> str:
    conf = confidence_text(confidence)
    return (
        f"- **Intervals** (`[lo, hi]` in the tables, `M_lo`/`M_hi` in summary.csv): {conf} intervals for the "
        "population of test images the certified ones were drawn from: exact Clopper–Pearson on the image counts "
        f"for percentages; BCa bootstrap over the images for means (ACR, times; seed {BOOTSTRAP_SEED}); a paired "
        "bootstrap over the shared images for the speedup; \"n/a\" where the data do not define one (one image, "
        "no times). paired.csv: certified accuracy at r with Newcombe's paired interval and the exact McNemar "
        "test; ACR with a paired bootstrap of the difference and the ratio LS/IS; its `time_s` rows put IS-RS "
        "first, so their ratio is the speedup. docs/concepts/statistics.md explains each."
    )
def state_caveats(tables: list[Table], df: pd.DataFrame, manifest: dict, dataset: str,
                  compare_paper: bool) -> list[str]:
    """Put the run's caveats into the captions of ``tables`` and return them as lines for the index: trusted
    (unproven) Lipschitz bounds in every caption; with ``compare_paper``, the run's protocol (n, n0, α, width,
    images) in the caption of every table with paper columns, and a warning where it differs from the paper's."""
    trusted = trusted_caveat(df)
    lines = [trusted] if trusted else []
    protocol = run_protocol(df, manifest, dataset) if compare_paper else None
    if protocol is not None:
        lines += [w for w in [protocol_warning(protocol, "this run")] if w]
    for table in tables:
        if protocol is not None and any(str(c).endswith(PAPER_SUFFIX) for c in table.data.columns):
            table.caption += f" This run: {protocol_text(protocol)}."
        if trusted:
            table.caption += f" {trusted}"
        table.latex_caption = _latex_text(table.caption)
    return lines


def write_report(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "markdown",
    main_fors: int | None = None,
    compare_paper: bool = False,
    figures: bool = True,
    figure_formats: Sequence[str] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ReportResult:
    """Write the tables (in ``fmt``), ``summary.csv`` (with each metric's interval at ``confidence``),
    ``paired.csv``, the figures (PNG + PDF, or ``figure_formats``) and ``index.md`` to ``out_dir``.

    ``main_fors`` (the FoR of the main table) defaults to the paper's for the run's architecture: 9 of 18 for
    ResNet18, 16 of 34 for WRN-34."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        confidence = check_confidence(confidence)
    except ValueError as exc:
        raise UsageError(f"{exc}; e.g. --confidence 0.95") from None
    run_dir = Path(run_dir)
    df, manifest = load_run(run_dir)
    summary = add_intervals(summarize(df, manifest), df, RADII, confidence, BOOTSTRAP_SEED)
    dataset = _dataset_of(df, manifest)
    if main_fors is None:
        record = _architecture_of(df, manifest)
        main_fors = 9 if record is None else record.paper_fors  # 9: the CIFAR-10 ResNet18 setting
    chosen, fors_note = choose_main_fors(summary.loc[fors_axis_mask(summary), "fors"], main_fors)
    missing = missing_configs(summary, manifest, df)
    if fors_note:
        missing.insert(0, fors_note)
    tables, notes = build_tables(summary, dataset, chosen, compare_paper)
    missing += notes
    for name, caption, data, formats in sequential_tables(run_dir, df) + [t for t in [equal_time_table(summary)] if t]:
        tables.append(Table(name, caption, data, formats, latex_caption=_latex_text(caption)))
    equal_time_records: list[dict] = []
    if tables and tables[-1].name == EQUAL_TIME:
        tables[-1].intervals, equal_time_records = equal_time_uncertainty(df, summary, confidence, BOOTSTRAP_SEED)
        tables[-1].caption += (f" Cells: value {INTERVAL_NOTE.format(conf=confidence_text(confidence))} (LS-RS "
                               "readings: a paired bootstrap of the reading at the IS-RS time; paired.csv has each "
                               "gain over IS-RS).")
        tables[-1].latex_caption = _latex_text(tables[-1].caption)
    caveat_lines = state_caveats(tables, df, manifest, dataset, compare_paper)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    result = ReportResult(out_dir=out, missing=missing, main_fors=chosen, summary=summary, tables=tables,
                          caveats=caveat_lines)
    table_links: list[str] = []
    for table in tables:
        path = out / f"{table.name}{FORMATS[fmt]}"
        path.write_text(render(table, fmt), encoding="utf-8")
        result.paths.append(path)
        table_links.append(f"- [{path.name}]({path.name}): {table.caption}")
        if table.name == EQUAL_TIME:  # in every format (equal_time.md / .tex / .csv), whatever --format
            for other in (f for f in FORMATS if f != fmt):
                result.paths.append(out / f"{table.name}{FORMATS[other]}")
                result.paths[-1].write_text(render(table, other), encoding="utf-8")
    summary_path = out / "summary.csv"
    summary.to_csv(summary_path, index=False)
    result.paths.append(summary_path)
    table_links.append(
        f"- [{summary_path.name}]({summary_path.name}): every aggregate at full precision, one row per configuration, "
        f"with its {confidence_text(confidence)} interval over the images (`M_lo`, `M_hi`)."
    )
    result.paired = paired_frame(df, RADII, confidence, BOOTSTRAP_SEED)
    if equal_time_records:
        result.paired = pd.concat([result.paired, pd.DataFrame.from_records(equal_time_records)], ignore_index=True)
    result.sentences = paired_sentences(result.paired, confidence)
    paired_path = out / "paired.csv"
    result.paired.to_csv(paired_path, index=False)
    result.paths.append(paired_path)
    table_links.append(
        f"- [{paired_path.name}]({paired_path.name}): each LS-RS configuration against IS-RS on the same images "
        "(differences, ratios, their intervals and tests)."
    )

    figure_links: list[str] = []
    if figures:
        from bench.report import plots

        written, fig_notes = plots.write_figures(df, summary, out, figure_formats, confidence=confidence)
        front, front_notes = front_figures(summary, out, figure_formats)  # the accuracy-time front, with an n axis
        written, fig_notes = written + front, fig_notes + front_notes
        result.missing += fig_notes
        trusted = trusted_caveat(df)
        for fig in written if trusted else []:
            fig.caption = f"{fig.caption} {trusted}"
        for fig in written:
            result.paths += fig.paths
            png = next((p for p in fig.paths if p.suffix == ".png"), fig.paths[0])
            others = " ".join(f"([{p.suffix[1:].upper()}]({p.name}))" for p in fig.paths if p != png)
            figure_links.append(f"- [{png.name}]({png.name}) {others}: {fig.caption}")

    if fmt == "latex":
        table_links.insert(
            0, r"LaTeX tables are `table` environments for `\input{}`; they need `\usepackage{booktabs}`."
        )
        table_links.insert(1, "")
    lines = [
        f"# Report: {run_dir.resolve().name}",
        "",
        _run_line(df, manifest, dataset),
        "",
        *(["## Caveats", "", *[f"- **{c}**" for c in caveat_lines], ""] if caveat_lines else []),
        "## Tables",
        "",
        *table_links,
    ]
    if figure_links:
        lines += ["", "## Figures", "", *figure_links]
    if result.sentences:
        lines += ["", "## Paired comparisons", "", *[f"- {s}" for s in result.sentences]]
    if result.missing:
        lines += ["", "## Missing or incomplete", "", *[f"- {m}" for m in result.missing]]
    stats_notes = [_intervals_note(confidence), *alpha_note(df, confidence)]
    power = power_line(result.paired, confidence)
    stats_notes += [power] if power else []
    lines += ["", _DEFINITIONS + "\n".join([*stats_notes, *run_notes(df, manifest, dataset)]) + "\n"]
    index = out / "index.md"
    index.write_text("\n".join(lines), encoding="utf-8")
    result.paths.append(index)
    result.index = index
    return result
