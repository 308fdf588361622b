"""``bench report``: a run's parquet into the paper's tables, figures and an index."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bench.cli.params import BenchUsageError
from bench.report.formats import FORMATS

if TYPE_CHECKING:
    from bench.report.writer import ReportResult


def _print_result(result: ReportResult) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    from bench.report.writer import PAPER_SUFFIX, display_cells

    console = Console()
    if result.tables:
        main = result.tables[0]
        keep = [i for i, c in enumerate(main.data.columns) if not c.endswith(PAPER_SUFFIX)]
        rich_table = RichTable(title=main.caption, title_justify="left")
        for i in keep:
            col = main.data.columns[i]
            rich_table.add_column(col, justify="right" if col in main.formats else "left")
        for row in display_cells(main):
            rich_table.add_row(*(row[i] for i in keep))
        console.print(rich_table)
    err = Console(stderr=True)
    for caveat in result.caveats:
        err.print(f"[yellow]warning:[/] {caveat}", highlight=False)
    for note in result.missing:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(
        f"wrote {len(result.paths)} files to {result.out_dir} (index: {result.index})", highlight=False
    )


@click.command("report", short_help="Tables, figures and index.md of one or more runs.")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...",
                type=click.Path(exists=True, file_okay=False, path_type=Path))  # fmt: skip
@click.option("--name", "names", multiple=True,
              help="With several runs: the name of each run in the table and legend, once per run, in order "
                   "[default: an imported run's name, else its folder's].")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="markdown", show_default=True,
              help="Format of the tables (figures are always PNG + PDF).")  # fmt: skip
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder  [default: reports/<run>; with several runs reports/<run1>+<run2>...]")  # fmt: skip
@click.option("--main-fors", type=click.IntRange(min=0), default=None,
              help="LS-RS FoR k of the main table (the middle available FoR if the run lacks it) [default: the "
                   "paper's for the run's architecture: 9 for ResNet18, 16 for WRN-34].")  # fmt: skip
@click.option("--compare-paper", is_flag=True, help="Put the paper's published values beside ours.")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True,
              help="Confidence of every interval over the test images (Clopper-Pearson, BCa bootstrap, paired).")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the figures.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths and notes as JSON.")
def command(
    run_dirs: tuple[Path, ...],
    names: tuple[str, ...],
    fmt: str,
    out_dir: Path | None,
    main_fors: int | None,
    compare_paper: bool,
    confidence: float,
    figures: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Render RUN_DIR (results/<run>) as the paper's tables, figures and an index.md.

    \b
    Tables: the main table (paper Table 1, Table 3 for ImageNet), the FoR ablation (Table 2) and certified
    accuracy at radii 0-1; figures: certified accuracy vs radius, FoR ablations, time breakdown. A run with
    an n axis (bench run --n 1000,4000) adds the equal-time table (equal_time.md/.tex/.csv: what each LS-RS
    FoR certifies in the IS-RS time per image) and the accuracy-time front figure.

    \b
    Several RUN_DIRs (yours and imported peers', see `bench import`): one certified-accuracy table and one
    figure with a curve per run and σ, e.g.
      bench report results/demo/run results/cohen-s0.25 --name ours --name "Cohen et al."
    """
    if len(run_dirs) > 1 or names:
        from bench.report.compare import write_comparison

        if compare_paper:
            raise BenchUsageError("--compare-paper applies to the report of one run, not to a comparison")
        from bench.report.publish import publish_report

        out = out_dir or Path("reports") / "+".join(p.resolve().name for p in run_dirs)
        result = publish_report(out, lambda folder: write_comparison(list(run_dirs), names, folder, fmt=fmt,
                                                                     figures=figures, confidence=confidence))
        if as_json:
            click.echo(json.dumps({"out_dir": str(result.out_dir), "index": str(result.index),
                                   "paths": [str(p) for p in result.paths], "missing": result.missing,
                                   "caveats": result.caveats}, indent=2))
        elif not quiet:
            _print_result(result)
        return
    from bench.report.publish import publish_report
    from bench.report.writer import write_report

    run_dir = run_dirs[0]
    out = out_dir if out_dir is not None else Path("reports") / run_dir.resolve().name
    result = publish_report(out, lambda folder: write_report(
        run_dir, folder, fmt=fmt, main_fors=main_fors, compare_paper=compare_paper, figures=figures,
        confidence=confidence,
    ))
    if as_json:
        payload = {
            "out_dir": str(result.out_dir),
            "index": str(result.index),
            "main_fors": result.main_fors,
            "paths": [str(p) for p in result.paths],
            "missing": result.missing,
            "caveats": result.caveats,
            "summary": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
                for rec in result.summary.to_dict(orient="records")
            ],
        }
        click.echo(json.dumps(payload, indent=2, default=str))
    elif not quiet:
        _print_result(result)
