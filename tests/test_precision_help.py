"""The images-for-precision table: one helper feeds `bench run --help` and docs/concepts/statistics.md."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bench.cli.main import cli
from bench.report.intervals import precision_lines, precision_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "concepts" / "statistics.md"


def test_run_help_prints_the_computed_table():
    res = CliRunner().invoke(cli, ["run", "--help"])
    assert res.exit_code == 0
    for line in precision_lines():
        assert line in res.output


def test_docs_page_holds_the_computed_table():
    assert precision_markdown() in DOC.read_text(encoding="utf-8")
