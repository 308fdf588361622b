"""Figures of a report, sized for one paper column (3.3 in wide), saved as PNG and PDF.

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, any backend); :func:`write_figures` builds and saves all of them for ``bench report``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench import certifiers
from bench.report.intervals import DEFAULT_CONFIDENCE, clopper_pearson_bounds
from bench.report.labels import (
    N_AXIS,
    VARIANT_KEYS,
    at_largest_n,
    config_label,
    format_sigma,
    fors_axis_mask,
    noise_mask,
    reference_mask,
    variant_keys,
    variant_text,
)

COLUMN_WIDTH_IN = 3.3
DPI = 200

RADIUS_LABEL = "radius (l2)"
CERT_ACC_LABEL = "certified accuracy (%)"
ACR_LABEL = "ACR"
ACCURACY_LABEL = "accuracy (%)"
TIME_LABEL = "time (s/image)"
SPEEDUP_LABEL = "speedup over IS-RS"


class NothingToPlot(ValueError):
    """The data holds nothing this figure can show (e.g. no sigma > 0 rows)."""


@dataclass
class FigureFile:
    """One saved figure: file stem, one-line caption, written paths and the figure itself."""

    name: str
    caption: str
    paths: list[Path] = field(default_factory=list)
    figure: Figure | None = None


@contextlib.contextmanager
def theme() -> Iterator[None]:
    """seaborn's paper theme, restored on exit."""
    with mpl.rc_context():
        sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
        mpl.rcParams.update({"legend.frameon": False, "axes.titlesize": "medium", "pdf.fonttype": 42})
        yield


def _fors_axis_label(summary: pd.DataFrame) -> str:
    total = summary["fors_total"].max() if "fors_total" in summary else float("nan")
    return f"FoR k (of {int(total)})" if total == total else "FoR k"


def _sigma_text(s: float) -> str:
    return f"σ = {format_sigma(s)}"


def _variant_suffix(rec: pd.Series | dict, variants: list[str]) -> str:
    return "".join(f" [n={variant_text(v, rec[v])}]" if v == N_AXIS else f" [{rec[v]}]" for v in variants)


def _config_palette(labels: list[str]) -> dict[str, object]:
    fixed = {c.defense: c.color for c in certifiers.registered() if c.color}  # IS-RS black, Lipschitz red
    ls = [lab for lab in labels if not lab.startswith(tuple(fixed))]
    colors = sns.color_palette("viridis", max(len(ls), 1))
    out: dict[str, object] = {lab: c for lab in labels for pre, c in fixed.items() if lab.startswith(pre)}
    out.update(zip(ls, colors, strict=False))
    return out


def _sigma_palette(sigmas: list[float]) -> dict[float, object]:
    return dict(zip(sigmas, sns.color_palette("deep", len(sigmas)), strict=True))


def certified_accuracy_curve(radius: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Percent of images with ``correct`` and ``radius >= r`` for each ``r`` in ``grid``."""
    certified = np.sort(np.where(correct, radius, -np.inf))
    counts = len(certified) - np.searchsorted(certified, grid, side="left")
    return 100.0 * counts / max(len(certified), 1)


def certified_accuracy_band(curve: np.ndarray, images: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Clopper--Pearson bounds (%) of each point of a certified-accuracy ``curve`` (%) over ``images`` images."""
    lo, hi = clopper_pearson_bounds(np.rint(curve * images / 100.0), np.full(curve.shape, images), confidence)
    return 100 * lo, 100 * hi


def certified_accuracy_figure(df: pd.DataFrame, confidence: float | None = DEFAULT_CONFIDENCE) -> Figure:
    """Certified accuracy vs radius: one panel per sigma > 0, IS-RS against each LS-RS FoR; the
    Lipschitz-margin twin (method ``lip``, no noise, stored at sigma 0) is drawn dotted in every panel. Each
    curve has its pointwise Clopper--Pearson band at ``confidence`` (none when None)."""
    is_lip = ~noise_mask(df)
    lip = df[is_lip]
    data = df[(df["sigma"] > 0) & ~is_lip]
    if data.empty and lip.empty:
        raise NothingToPlot("no sigma > 0 rows to plot")
    variants = variant_keys(df)
    sigmas = sorted(data["sigma"].round(6).unique()) or [0.0]
    ncols = 1 if len(sigmas) == 1 else 2
    nrows = math.ceil(len(sigmas) / ncols)
    keys = ["method", "fors", *variants]
    both = pd.concat([data, lip])
    groups = sorted(both.groupby(keys, sort=False).groups, key=lambda g: (certifiers.order(g[0]), g[1]))
    total = both["fors_total"].max() if "fors_total" in both else float("nan")
    labels = [
        config_label(g[0], g[1], total) + _variant_suffix(dict(zip(keys, g, strict=True)), variants)
        for g in groups
    ]
    palette = _config_palette(labels)
    styles = {lab: certifiers.line_style(g[0]) for g, lab in zip(groups, labels, strict=True)}
    with theme():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, 0.55 + 1.55 * nrows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
        for i, (ax, sigma) in enumerate(zip(axes, sigmas, strict=False)):
            at_sigma = pd.concat([data[data["sigma"].round(6) == sigma], lip])
            rmax = max(float(at_sigma["radius"].max()), 4 * sigma) * 1.02 or 1.0
            grid = np.linspace(0.0, rmax, 200)
            for g, label in zip(groups, labels, strict=True):
                sel = at_sigma
                for k, v in zip(keys, g, strict=True):
                    sel = sel[sel[k] == v]
                if sel.empty:
                    continue
                correct = sel["correct"].to_numpy(bool)
                if "prediction" in sel:
                    correct = correct & (sel["prediction"].to_numpy() != -1)
                curve = certified_accuracy_curve(sel["radius"].fillna(0.0).to_numpy(float), correct, grid)
                ax.plot(grid, curve, drawstyle="steps-post", color=palette[label], lw=1.1,
                        ls=styles[label], label=label)  # fmt: skip
                if confidence is not None:
                    lo, hi = certified_accuracy_band(curve, len(sel), confidence)
                    ax.fill_between(grid, lo, hi, step="post", color=palette[label], alpha=0.15, lw=0)
            ax.set_title(_sigma_text(sigma) if sigma > 0 else "Lipschitz margin")
            ax.set_xlabel(RADIUS_LABEL)
            ax.set_ylabel(CERT_ACC_LABEL if i % ncols == 0 else "")
            ax.set_xlim(0, rmax)
            ax.set_ylim(0, 100)
        for ax in axes[len(sigmas) :]:
            ax.set_axis_off()
        handles = [Line2D([], [], color=palette[lab], ls=styles[lab]) for lab in labels]
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")
    return fig


def _is_reference(ax, summary: pd.DataFrame, column: str, sigmas: list[float], palette: dict,
                  drawn_sigmas: set[float] | None = None) -> bool:
    """Dashed horizontal IS-RS lines (one per sigma); True if any was drawn (their sigmas go to ``drawn_sigmas``)."""
    drawn = False
    is_rows = summary[reference_mask(summary)]
    for sigma in sigmas:
        values = is_rows.loc[is_rows["sigma"].round(6) == sigma, column].dropna()
        if len(values):
            ax.axhline(float(values.iloc[0]), color=palette[sigma], ls="--", lw=0.9)
            drawn = True
            if drawn_sigmas is not None:
                drawn_sigmas.add(sigma)
    return drawn


def _per_sigma_lines(ax, ls: pd.DataFrame, column: str, sigmas: list[float], palette: dict) -> set[float]:
    """One line per sigma of ``ls`` over FoR; the sigmas drawn (those with data)."""
    drawn = set()
    for sigma in sigmas:
        sel = ls[ls["sigma"].round(6) == sigma].dropna(subset=[column]).sort_values("fors")
        if len(sel):
            sns.lineplot(data=sel, x="fors", y=column, ax=ax, color=palette[sigma], marker="o",
                         markersize=4, lw=1.1, legend=False, errorbar=None)  # fmt: skip
            drawn.add(sigma)
    return drawn


class FewLogTicks(mticker.Locator):
    """At most :attr:`most` labelled ticks on a log axis: the densest of 1-2-5, 1-3 or 1 per decade (every
    k-th decade over a wide range) that fits, so that narrow panels never get colliding labels."""

    most = 4

    def __call__(self) -> list[float]:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        lo, hi = sorted((max(vmin, 1e-300), max(vmax, 1e-300)))
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for subs in ((1, 2, 5), (1, 3), (1,)):
            ticks = [m * 10.0**d for d in decades for m in subs if lo <= m * 10.0**d <= hi]
            if len(ticks) <= self.most:
                return ticks
        stride = math.ceil(len(ticks) / self.most)
        return ticks[::stride]


def log_seconds_axis(ax, axis: str = "x") -> None:
    """A log-scale seconds axis whose labels do not collide: a few major ticks (:class:`FewLogTicks`)
    labelled as plain numbers (``0.5``, ``2``), and unlabelled minor ticks."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(FewLogTicks())
    target.set_major_formatter(mticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(mticker.NullFormatter())


def _sigma_legend(fig: Figure, sigmas: list[float], palette: dict, extra: list[tuple[Line2D, str]]) -> None:
    handles = [Line2D([], [], color=palette[s], marker="o", markersize=4) for s in sigmas]
    labels = [_sigma_text(s) + (" (clean)" if s == 0 else "") for s in sigmas]
    for h, lab in extra:
        handles.append(h)
        labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small")


def _ls_fors_ticks(ax, ls: pd.DataFrame) -> None:
    ax.set_xticks(sorted(ls["fors"].unique()))


def ablation_accuracy_figure(summary: pd.DataFrame) -> Figure:
    """ACR vs FoR (sigma > 0) and accuracy vs FoR (every sigma); IS-RS as dashed lines of the sigma's colour."""
    ls = summary[fors_axis_mask(summary)]
    if ls.empty:
        raise NothingToPlot("no LS-RS rows to plot")
    sigmas = sorted(summary["sigma"].round(6).unique())
    palette = _sigma_palette(sigmas)
    certified = [s for s in sigmas if s > 0]
    with theme():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, 2.3), layout="constrained")
        ax_acr, ax_acc = fig.subplots(1, 2)
        drawn = _per_sigma_lines(ax_acr, ls, "acr", certified, palette)
        is_drawn = _is_reference(ax_acr, summary, "acr", certified, palette, drawn)
        drawn |= _per_sigma_lines(ax_acc, ls, "accuracy", sigmas, palette)
        is_drawn |= _is_reference(ax_acc, summary, "accuracy", sigmas, palette, drawn)
        for ax, label in ((ax_acr, ACR_LABEL), (ax_acc, ACCURACY_LABEL)):
            ax.set_xlabel(_fors_axis_label(summary))
            ax.set_ylabel(label)
            _ls_fors_ticks(ax, ls)
        extra = [(Line2D([], [], color="grey", ls="--"), "IS-RS")] if is_drawn else []
        _sigma_legend(fig, [s for s in sigmas if s in drawn], palette, extra)  # only the σ with data
    return fig


def ablation_speed_figure(summary: pd.DataFrame) -> Figure:
    """Time per image vs FoR with the IS-RS lines, and measured speedup vs FoR with the FLOP-ideal curve."""
    ls = summary[fors_axis_mask(summary) & (summary["sigma"] > 0)]
    if ls.empty:
        raise NothingToPlot("no LS-RS rows with sigma > 0 to plot")
    sigmas = sorted(ls["sigma"].round(6).unique())
    palette = _sigma_palette(sorted(summary["sigma"].round(6).unique()))
    with theme():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, 2.3), layout="constrained")
        ax_t, ax_s = fig.subplots(1, 2)
        _per_sigma_lines(ax_t, ls, "time_s", sigmas, palette)
        is_drawn = _is_reference(ax_t, summary, "time_s", sigmas, palette)
        _per_sigma_lines(ax_s, ls, "speedup", sigmas, palette)
        ideal = ls.drop_duplicates("fors").dropna(subset=["flop_ideal"]).sort_values("fors")
        extra: list[tuple[Line2D, str]] = []
        if is_drawn:
            extra.append((Line2D([], [], color="grey", ls="--"), "IS-RS"))
        if len(ideal):
            ax_s.plot(
                ideal["fors"], ideal["flop_ideal"], color="black", ls=":", marker="s", markersize=3, lw=1.1
            )
            extra.append((Line2D([], [], color="black", ls=":", marker="s", markersize=3), "FLOP-ideal"))
        ax_s.axhline(1.0, color="grey", lw=0.6)
        ax_t.set_ylim(bottom=0)
        for ax, label in ((ax_t, TIME_LABEL), (ax_s, SPEEDUP_LABEL)):
            ax.set_xlabel(_fors_axis_label(summary))
            ax.set_ylabel(label)
            _ls_fors_ticks(ax, ls)
        _sigma_legend(fig, sigmas, palette, extra)
    return fig


def time_breakdown_figure(summary: pd.DataFrame) -> Figure:
    """Stacked bars per configuration (sigma > 0): encoder, sampling + classification, and the rest."""
    rows = summary[(summary["sigma"] > 0) & summary["time_s"].notna()]
    if rows.empty:
        raise NothingToPlot("no timed rows (sigma > 0) to plot")
    variants = [k for k in VARIANT_KEYS if k in summary.columns]
    labels = [
        f"{config_label(r['method'], r['fors'], r['fors_total'])}{_variant_suffix(r, variants)}, σ={format_sigma(r['sigma'])}"
        for _, r in rows.iterrows()
    ]
    encode = rows["encode_s"].fillna(0.0).to_numpy(float)
    sample = rows["sample_s"].fillna(0.0).to_numpy(float)
    other = np.clip(rows["time_s"].to_numpy(float) - encode - sample, 0.0, None)
    parts = [("encoder", encode), ("sampling + classification", sample), ("other", other)]
    colors = sns.color_palette("colorblind", 3)
    with theme():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, 0.9 + 0.2 * len(rows)), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(rows))[::-1]
        left = np.zeros(len(rows))
        for (name, values), color in zip(parts, colors, strict=True):
            ax.barh(y, values, left=left, color=color, height=0.7, label=name)
            left += values
        ax.set_yticks(y, labels, fontsize="x-small")
        ax.set_xlabel(TIME_LABEL)
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside lower center", ncols=3, fontsize="x-small")
    return fig


PA_LABEL = "lower bound of p_A"


def pa_ecdf_figure(df: pd.DataFrame) -> Figure:
    """ECDF of the lower confidence bound of p_A per configuration, one panel per sigma > 0: how far each
    image is from abstaining (p_A lower < 1/2) and from larger radii (the arXiv 2410.06895 view, beside ACR)."""
    if "p_a_lower" not in df.columns:
        raise NothingToPlot("the rows hold no p_a_lower")
    data = df[(df["sigma"] > 0) & noise_mask(df)].copy()
    data["p_a_lower"] = pd.to_numeric(data["p_a_lower"], errors="coerce")
    data = data.dropna(subset=["p_a_lower"])
    if data.empty:
        raise NothingToPlot("no sigma > 0 rows with a p_a_lower")
    variants = variant_keys(data)
    total = data["fors_total"].max() if "fors_total" in data else float("nan")
    data["configuration"] = [
        config_label(rec["method"], rec["fors"], total) + _variant_suffix(rec, variants)
        for rec in data.to_dict("records")
    ]
    order = sorted(data["configuration"].unique(), key=lambda lab: (not lab.startswith("IS-RS"), lab))
    palette = _config_palette(order)
    sigmas = sorted(data["sigma"].round(6).unique())
    with theme():
        fig = Figure(figsize=(COLUMN_WIDTH_IN, 0.9 + 1.6 * len(sigmas)), layout="constrained")
        axes = np.atleast_1d(fig.subplots(len(sigmas), 1, sharex=True, squeeze=False)).ravel()
        for ax, sigma in zip(axes, sigmas, strict=True):
            sel = data[data["sigma"].round(6) == sigma]
            sns.ecdfplot(data=sel, x="p_a_lower", hue="configuration", hue_order=[c for c in order
                         if c in set(sel["configuration"])], palette=palette, ax=ax, legend=False, lw=1.1)
            ax.axvline(0.5, color="grey", lw=0.6, ls=":")
            ax.set_title(_sigma_text(sigma))
            ax.set_ylabel("share of images")
        axes[-1].set_xlabel(PA_LABEL + " (abstain below 1/2)")
        handles = [Line2D([], [], color=palette[lab]) for lab in order]
        fig.legend(handles, order, loc="outside lower center", ncols=min(2, len(order)), fontsize="x-small")
    return fig


FIGURE_FORMATS = ("png", "pdf")
"""What :func:`save_figure` writes by default: PNG for pages, PDF for papers."""


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (or the ``formats`` asked for; a PDF costs about 1.5 times a
    PNG: its fonts are subset and embedded)."""
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats or FIGURE_FORMATS]
    with theme():
        for path in paths:
            fig.savefig(path, dpi=DPI)
    return paths


def write_figures(
    df: pd.DataFrame, summary: pd.DataFrame, out_dir: Path, formats: Sequence[str] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[list[FigureFile], list[str]]:
    """Build and save every figure the data allows (all FoRs each); notes say which were left out and why.

    With an n axis (``bench run --n 1000,4000``) they show its largest n; the accuracy-time front over every n
    is :func:`bench.report.equal_time.front_figure`."""
    out_dir = Path(out_dir)
    df, summary = at_largest_n(df), at_largest_n(summary)  # with an n axis, the paper's figures show its largest n
    specs = [
        ("certified_accuracy", "Certified accuracy vs l2 radius, one panel per σ: IS-RS (dashed) against each LS-RS FoR, and the Lipschitz-margin twin (dotted, the same in every panel); "
         f"shaded: the pointwise {100 * confidence:g} % Clopper–Pearson band over the images.",
         lambda: certified_accuracy_figure(df, confidence)),
        ("pa_lower_ecdf", "Distribution (ECDF) of the lower confidence bound of p_A over the images, per configuration and σ; an image abstains below 1/2.",
         lambda: pa_ecdf_figure(df)),
        ("ablation_accuracy", "FoR ablation: ACR and accuracy vs FoR per σ; IS-RS dashed in the σ's colour.",
         lambda: ablation_accuracy_figure(summary)),
        ("ablation_speed", "FoR ablation: time per image vs FoR (IS-RS dashed) and measured speedup vs FoR with the FLOP-ideal curve.",
         lambda: ablation_speed_figure(summary)),
        ("time_breakdown", "Mean time per image of each configuration, split into encoder, sampling + classification and the rest.",
         lambda: time_breakdown_figure(summary)),
    ]  # fmt: skip
    written: list[FigureFile] = []
    notes: list[str] = []
    for name, caption, build in specs:
        try:
            fig = build()
        except NothingToPlot as exc:
            notes.append(f"figure {name} not drawn: {exc}")
            continue
        written.append(FigureFile(name, caption, save_figure(fig, out_dir / name, formats), fig))
    return written, notes
