"""Several runs side by side (``bench report RUN1 RUN2 ... [--name ...]``): one certified-accuracy table and
one figure, one curve per (run, configuration, σ), the run names in the legend.

Runs made here and runs imported from peers (:mod:`bench.peers.importers`) are read alike (:func:`bench.report.writer.load_run`)
and aggregated by the same :func:`bench.report.writer.summarize`, so a row of the table is the same number that
``bench report RUN`` prints for that run. Certified accuracy at r is the share of a run's images predicted
correctly with radius >= r (Cohen et al. 2019); the radius is an l2 radius in that run's own input space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench import certifiers
from bench.errors import UsageError
from bench.report.caveats import protocol_text, protocol_warning, run_protocol, trusted_caveat
from bench.report.cells import INTERVAL_NOTE, confidence_text
from bench.report.comparisons import paired_between_runs, paired_sentences
from bench.report.intervals import BOOTSTRAP_SEED, DEFAULT_CONFIDENCE, check_confidence
from bench.report.labels import certified_mask, config_label, format_sigma, variant_keys
from bench.report.uncertainty import add_intervals
from bench.report.writer import (
    FORMATS,
    RADII,
    ReportResult,
    Table,
    _formats_for,
    _latex_text,
    cert_acc_column,
    load_run,
    render,
    summarize,
)

FIGURE_NAME = "certified_accuracy_compare"
TABLE_NAME = "certified_accuracy_compare"


@dataclass
class NamedRun:
    """One run of a comparison: its name in the table and legend, its rows, manifest and summary."""

    name: str
    path: Path
    frame: pd.DataFrame
    manifest: dict
    summary: pd.DataFrame

    @property
    def source(self) -> str:
        """Where the rows come from: an imported file (name and sha256) or this project's ``bench run``."""
        imported = self.manifest.get("imported")
        if isinstance(imported, dict):
            return f"imported {imported.get('format')} {imported.get('source')} (sha256 {str(imported.get('source_sha256'))[:12]})"
        config_hash = self.manifest.get("config_hash")
        return f"bench run (config {config_hash})" if config_hash else "bench run"


def default_name(path: Path, manifest: dict) -> str:
    """An imported run's declared name, else the run folder's name."""
    imported = manifest.get("imported")
    if isinstance(imported, dict) and imported.get("name"):
        return str(imported["name"])
    return Path(path).resolve().name


def load_runs(paths: list[Path], names: list[str] | tuple[str, ...] = ()) -> list[NamedRun]:
    """Read every run; ``names`` (one per run, in order) replace the default names; names must be distinct."""
    if names and len(names) != len(paths):
        raise UsageError(f"--name was given {len(names)} times for {len(paths)} runs; give one per run, in order")
    runs = []
    for i, path in enumerate(paths):
        frame, manifest = load_run(path)
        name = names[i] if names else default_name(path, manifest)
        runs.append(NamedRun(name, Path(path), frame, manifest, summarize(frame, manifest)))
    seen = [r.name for r in runs]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    if repeated:
        raise UsageError(f"two runs are named {repeated[0]!r}; tell them apart with --name, once per run")
    return runs


def _certified(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[certified_mask(summary)]


def comparison_table(runs: list[NamedRun]) -> Table:
    """ACR and certified accuracy (%) at :data:`bench.report.writer.RADII`, one row per run and configuration (σ > 0)."""
    records = []
    intervals: dict[str, tuple[list, list]] = {}
    for run in runs:
        rows = _certified(run.summary)
        for title, metric in {"ACR": "acr", **{f"r = {r:.2f}": cert_acc_column(r) for r in RADII}}.items():
            if f"{metric}_lo" in rows.columns:
                lows, highs = intervals.setdefault(title, ([], []))
                lows += rows[f"{metric}_lo"].astype(float).tolist()
                highs += rows[f"{metric}_hi"].astype(float).tolist()
        dataset = run.frame["dataset"].dropna().astype(str).unique() if "dataset" in run.frame else []
        for rec in rows.to_dict(orient="records"):
            out = {
                "Run": run.name,
                "Dataset": ", ".join(dataset) or "-",
                "Defense": config_label(rec["method"], rec["fors"], rec["fors_total"]),
                "σ": rec["sigma"] if certifiers.uses_noise(rec["method"]) else float("nan"),
                "images": float(rec["images"]),
                "ACR": rec["acr"],
            }
            out.update({f"r = {r:.2f}": rec[cert_acc_column(r)] for r in RADII})
            records.append(out)
    data = pd.DataFrame(records)
    formats = {**_formats_for(data.columns), "images": "{:.0f}"}
    caption = ("Certified accuracy (%) at l2 radius r and ACR, run by run (Cohen et al. 2019); each radius is in its "
               "run's own input space; r = 0 is the accuracy.")
    if intervals:
        conf = confidence_text(float(runs[0].summary["confidence"].iloc[0]))
        caption += f" Cells: value {INTERVAL_NOTE.format(conf=conf)}."
    return Table(TABLE_NAME, caption, data, formats, latex_caption=_latex_text(caption), intervals=intervals)


def _curve(frame: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    from bench.report.plots import certified_accuracy_curve

    correct = frame["correct"].to_numpy(bool)
    if "prediction" in frame:
        correct = correct & (frame["prediction"].to_numpy() != -1)
    return certified_accuracy_curve(frame["radius"].fillna(0.0).to_numpy(float), correct, grid)


def _groups(run: NamedRun) -> list[tuple[str, str, pd.DataFrame]]:
    """(configuration label, legend label, rows) per configuration and σ of one run, IS-RS first."""
    df = run.frame
    data = df[certified_mask(df)]
    keys = ["method", "fors", "sigma", *variant_keys(data)]
    total = float(pd.to_numeric(data.get("fors_total"), errors="coerce").max()) if "fors_total" in data else math.nan
    out = []
    for key, rows in sorted(data.groupby(keys, sort=False), key=lambda g: (certifiers.order(g[0][0]), g[0][1:])):
        method, fors, sigma, *variant = key
        config = f"{run.name}: {config_label(method, fors, total)}{''.join(f' [{v}]' for v in variant)}"
        sigma_text = f", σ = {format_sigma(float(sigma))}" if certifiers.uses_noise(method) else ""
        out.append((config, config + sigma_text, rows))
    return out


def comparison_figure(runs: list[NamedRun]) -> Figure:
    """Certified accuracy vs radius, one curve per run, configuration and σ: a colour per run and configuration
    (the runs in order), a line style per σ."""
    import seaborn as sns

    from bench.report.plots import CERT_ACC_LABEL, COLUMN_WIDTH_IN, RADIUS_LABEL, theme

    curves = [curve for run in runs for curve in _groups(run)]
    if not curves:
        raise UsageError("no run holds certified rows (σ > 0 or the Lipschitz twin): nothing to compare")
    rmax = max(float(rows["radius"].max()) for _, _, rows in curves) * 1.02 or 1.0
    grid = np.linspace(0.0, rmax, 300)
    configs = list(dict.fromkeys(c for c, _, _ in curves))
    colours = dict(zip(configs, sns.color_palette("colorblind" if len(configs) <= 10 else "husl", len(configs)),
                       strict=True))
    sigmas = sorted({round(float(rows["sigma"].iloc[0]), 6) for _, _, rows in curves})
    styles = dict(zip(sigmas, ["-", "--", ":", "-."] * (len(sigmas) // 4 + 1), strict=False))
    with theme():
        fig = Figure(figsize=(1.6 * COLUMN_WIDTH_IN, 2.4 + 0.16 * len(curves)), layout="constrained")
        ax = fig.subplots()
        handles = []
        for config, _, rows in curves:
            style = dict(color=colours[config], ls=styles[round(float(rows["sigma"].iloc[0]), 6)], lw=1.1)
            ax.plot(grid, _curve(rows, grid), drawstyle="steps-post", **style)
            handles.append(Line2D([], [], **style))
        ax.set_xlabel(RADIUS_LABEL)
        ax.set_ylabel(CERT_ACC_LABEL)
        ax.set_xlim(0, rmax)
        ax.set_ylim(0, 100)
        fig.legend(handles, [c[1] for c in curves], loc="outside lower center", ncols=1, fontsize="small")
    return fig


def _notes(runs: list[NamedRun]) -> list[str]:
    notes = []
    datasets = {d for r in runs if "dataset" in r.frame for d in r.frame["dataset"].dropna().astype(str)}
    if len(datasets) > 1:
        notes.append(f"the runs certify different datasets ({', '.join(sorted(datasets))}): each radius is an l2 "
                     "radius of its own dataset's input, so curves of different datasets do not compare like for like")
    for r in runs:
        imported = r.manifest.get("imported")
        if isinstance(imported, dict) and imported.get("unknown_columns"):
            notes.append(f"{r.name}: imported; not in its file (stored as unknown): "
                         f"{', '.join(imported['unknown_columns'])}")
    return notes


def _dataset(run: NamedRun) -> str:
    if "dataset" in run.frame and run.frame["dataset"].notna().any():
        return str(run.frame["dataset"].dropna().iloc[0])
    return str((run.manifest.get("config") or {}).get("dataset", ""))


def restrict_to_shared(runs: list[NamedRun]) -> tuple[list[NamedRun], str | None]:
    """The runs restricted to the test images all of them certified, and one line saying so; unchanged, with
    the reason, when they cannot be (different datasets, no image in common); unchanged and None when every
    run holds the same images."""
    counts = ", ".join(f"{r.name}: {r.frame['idx'].nunique() if 'idx' in r.frame else '?'}" for r in runs)
    if any("idx" not in r.frame for r in runs):
        return runs, f"images per run ({counts}): a run without image indices cannot be restricted to shared images"
    images = [set(r.frame["idx"].astype(int)) for r in runs]
    if all(i == images[0] for i in images):
        return runs, None
    if len({_dataset(r) for r in runs}) > 1:
        return runs, (f"the runs hold different images ({counts}) of different datasets: they cannot be restricted "
                      "to shared images; each run's numbers rest on its own images")
    shared = set.intersection(*images)
    if not shared:
        return runs, (f"the runs hold different images ({counts}) and share none: each run's numbers rest on its own "
                      "images, which do not compare like for like")
    out = []
    for r in runs:
        frame = r.frame[r.frame["idx"].astype(int).isin(shared)].reset_index(drop=True)
        out.append(NamedRun(r.name, r.path, frame, r.manifest, summarize(frame, r.manifest)))
    return out, (f"the runs hold different images ({counts}): the table and figure use the {len(shared)} images "
                 "that every run certified")


def write_comparison(
    paths: list[Path], names: list[str] | tuple[str, ...], out_dir: Path, fmt: str = "markdown", figures: bool = True,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ReportResult:
    """Write the comparison table (``fmt``, with intervals at ``confidence``), ``paired.csv`` (every pair of runs
    on their shared images), its figure (PNG + PDF) and an ``index.md`` naming every run's source.

    The table's caption states each run's protocol (n, n0, α, width, images; :mod:`bench.report.caveats`) and
    its trusted bounds; the runs are compared on the images they share (:func:`restrict_to_shared`)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        confidence = check_confidence(confidence)
    except ValueError as exc:
        raise UsageError(f"{exc}; e.g. --confidence 0.95") from None
    loaded = load_runs(paths, names)
    protocols = {r.name: run_protocol(r.frame, r.manifest, _dataset(r)) for r in loaded}
    caveat_lines = [f"{r.name}: {c}" for r in loaded for c in [trusted_caveat(r.frame)] if c]
    caveat_lines += [w for r in loaded for w in [protocol_warning(protocols[r.name], r.name)] if w]
    runs, shared_note = restrict_to_shared(loaded)
    caveat_lines += [shared_note] if shared_note else []
    for run in runs:
        run.summary = add_intervals(run.summary, run.frame, RADII, confidence, BOOTSTRAP_SEED)
    table = comparison_table(runs)
    table.caption += " Protocols: " + "; ".join(f"{n}: {protocol_text(p)}" for n, p in protocols.items()) + "."
    table.caption += "".join(f" {line}" for line in caveat_lines if "Trusted" in line)
    if shared_note:
        table.caption += f" {shared_note[0].upper()}{shared_note[1:]}."
    table.latex_caption = _latex_text(table.caption)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    summary = pd.concat([r.summary.assign(run=r.name) for r in runs], ignore_index=True)
    result = ReportResult(out_dir=out, missing=_notes(runs), summary=summary, tables=[table], caveats=caveat_lines)
    table_path = out / f"{table.name}{FORMATS[fmt]}"
    table_path.write_text(render(table, fmt), encoding="utf-8")
    summary_path = out / "summary.csv"
    summary.to_csv(summary_path, index=False)
    result.paired = paired_between_runs([(r.name, r.frame) for r in runs], RADII, confidence, BOOTSTRAP_SEED)
    result.sentences = paired_sentences(result.paired, confidence)
    paired_path = out / "paired.csv"
    result.paired.to_csv(paired_path, index=False)
    result.paths += [table_path, summary_path, paired_path]
    lines = ["# Report: " + " vs ".join(r.name for r in runs), "", "## Runs", ""]
    lines += [f"- **{r.name}**: `{r.path}`, {r.source}, {len(r.frame)} rows; {protocol_text(protocols[r.name])}"
              for r in loaded]
    if caveat_lines:
        lines += ["", "## Caveats", "", *[f"- **{c}**" for c in caveat_lines]]
    lines += ["", "## Tables", "", f"- [{table_path.name}]({table_path.name}): {table.caption}",
              f"- [{summary_path.name}]({summary_path.name}): every aggregate of every run, with a `run` column and "
              f"{confidence_text(confidence)} intervals (`M_lo`, `M_hi`).",
              f"- [{paired_path.name}]({paired_path.name}): every pair of runs at the same σ on the images both "
              "certified (matched by image index): differences, ratios, intervals, exact McNemar tests."]
    if figures:
        from bench.report.plots import save_figure

        paths_fig = save_figure(comparison_figure(runs), out / FIGURE_NAME)
        result.paths += paths_fig
        fig_caveats = "".join(f" {line}" for line in caveat_lines if "Trusted" in line or line == shared_note)
        lines += ["", "## Figures", "", f"- [{paths_fig[0].name}]({paths_fig[0].name}) ([PDF]({paths_fig[1].name})): "
                  "certified accuracy vs l2 radius, one curve per run, configuration and σ (colour: run and configuration; "
                  f"style: σ).{fig_caveats}"]
    if result.sentences:
        lines += ["", "## Paired comparisons", "", *[f"- {s}" for s in result.sentences]]
    elif len(runs) > 1:
        result.missing.append("no two runs share certified images at the same σ: no paired comparison")
    if result.missing:
        lines += ["", "## Notes", "", *[f"- {m}" for m in result.missing]]
    index = out / "index.md"
    index.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result.paths.append(index)
    result.index = index
    return result
