"""``bench demo``: train, certify and report on the embedded digits data in a few minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console


@click.command("demo")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results/demo"),
              show_default=True, help="Where checkpoints and the run go.")
@click.option("--reports", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/demo"),
              show_default=True, help="Where tables and figures go.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Models trained (and shards certified) side by side [default: one per CPU core on a CPU, "
                   "1 on a GPU]; the results do not depend on it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables.")
def command(results: Path, reports: Path, device: str, processes: int | None, quiet: bool) -> None:
    """Run the whole pipeline on scikit-learn's digits (embedded): train, certify, report.

    Trains (or reuses) a ResNet18 baseline and its orthogonal twins at FoR 1, 5, 9, 13 of 18 for
    σ = 0, 0.25, 0.5, certifies 60 test images with IS-RS and LS-RS using n0 = 64 and n = 1,000 noise
    samples (Cohen et al. use 100,000; reduced so the demo takes minutes), and writes the report.
    Re-running reuses what is already trained and certified.
    """
    from bench.console import print_table, summary_table
    from bench.demo import PRESET, run_demo
    from bench.report import load_run, summarize

    console = Console(quiet=quiet)
    start = time.perf_counter()
    out = run_demo(results, reports, device, console, quiet=quiet, preset=PRESET, processes=processes)
    frame, manifest = load_run(out["run"])
    title = f"Demo: {PRESET.dataset}, ResNet18 (width {PRESET.width}), n = {PRESET.n:,}"
    print_table(console, summary_table(summarize(frame, manifest), title=title))
    report = out["report"]
    console.print(f"checkpoints: {out['checkpoints']}")
    console.print(f"run:         {out['run']}  (pandas.read_parquet('{out['run']}'))")
    console.print(f"report:      {reports / 'index.md'}")
    for msg in getattr(report, "missing", []) or []:
        console.print(f"[yellow]missing:[/] {msg}")
    console.print(f"demo finished in {time.perf_counter() - start:.1f} s")
