"""bench.report.writer and `bench report`: aggregates, rendered tables, missing configs, CLI errors."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from synthetic_results import make_manifest, make_results, write_run  # noqa: E402

from bench.cli.main import cli  # noqa: E402
from bench.errors import UsageError  # noqa: E402
from bench.report.writer import RADII, cert_acc_column, format_sigma, load_run, summarize, write_report  # noqa: E402

FORS = (1, 5, 9, 13)
SIGMAS = (0.0, 0.25, 0.5, 1.0)


# ------------------------------------------------------------------------------ independent oracle


def expected_aggregates(df: pd.DataFrame, manifest: dict | None) -> dict[tuple[str, int, float], dict]:
    """Per (method, fors, sigma), the paper's metrics computed row by row in plain Python."""
    groups: dict[tuple[str, int, float], list[dict]] = defaultdict(list)
    for rec in df.to_dict("records"):
        groups[(rec["method"], int(rec["fors"]), float(rec["sigma"]))].append(rec)
    out = {}
    for key, recs in groups.items():
        n = len(recs)
        ok = [r["prediction"] == r["label"] and r["prediction"] != -1 for r in recs]
        sigma = key[2]
        e = {
            "images": n,
            "acr": sum(r["radius"] for r, c in zip(recs, ok, strict=True) if c) / n,
            "accuracy": 100.0 * sum(ok) / n,
            "time_s": statistics.fmean(r["total_s"] for r in recs) if sigma > 0 else math.nan,
            "encode_s": statistics.fmean(r["encode_s"] for r in recs) if sigma > 0 else math.nan,
            "sample_s": statistics.fmean(r["sample_s"] for r in recs) if sigma > 0 else math.nan,
        }
        for radius in RADII:
            hits = sum(1 for r, c in zip(recs, ok, strict=True) if c and r["radius"] >= radius)
            e[f"r{radius}"] = 100.0 * hits / n if (radius == 0 or sigma > 0) else math.nan
        out[key] = e
    for (method, k, sigma), e in out.items():
        is_time = out.get(("is", 0, sigma), {}).get("time_s", math.nan)
        e["speedup"] = is_time / e["time_s"]
        if method == "is":
            e["flop_ideal"] = 1.0
        else:
            models = (manifest or {}).get("models") or {}
            m = models.get(str(k))
            baseline = models.get("0", m)  # IS-RS runs the baseline for every noise sample
            e["flop_ideal"] = baseline["flops_total"] / m["flops_classifier"] if m else math.nan
    return out


# --------------------------------------------------------------------------------------- parsers


def parse_markdown(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and body cells of the (single) pipe table in ``text``."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    assert set("".join(cells[1])) <= set("-:"), "second line must be the alignment rule"
    return cells[0], cells[2:]


def parse_latex_tabular(text: str) -> tuple[str, list[str], list[list[str]]]:
    """Column spec, header and body cells of a booktabs tabular; asserts its structure."""
    m = re.search(r"\\begin\{tabular\}\{([^}]*)\}(.*?)\\end\{tabular\}", text, re.S)
    assert m, "no tabular environment"
    spec, body = m.group(1), m.group(2)
    assert body.count(r"\toprule") == body.count(r"\midrule") == body.count(r"\bottomrule") == 1
    top, rest = body.split(r"\toprule")[1].split(r"\midrule")
    data = rest.split(r"\bottomrule")[0]

    def rows(block: str) -> list[list[str]]:
        return [[c.strip() for c in r.split("&")] for r in block.split(r"\\") if r.strip()]

    header = rows(top)
    assert len(header) == 1
    body_rows = rows(data)
    for r in [header[0], *body_rows]:
        assert len(r) == len(spec), f"row {r} does not have {len(spec)} cells"
    return spec, header[0], body_rows


def assert_cell(cell: str, expected: float, decimals: int) -> None:
    """A displayed number equals ``expected`` at the displayed precision ("-" for NaN)."""
    if isinstance(expected, float) and math.isnan(expected):
        assert cell == "-", f"expected '-', got {cell!r}"
        return
    num = rf"-?\d+\.\d{{{decimals}}}"
    match = re.fullmatch(rf"({num})(?: \[(?:n/a|{num}, {num})\])?", cell)  # value [lo, hi]: its interval
    assert match, f"{cell!r} is not shown with {decimals} decimals"
    cell = match.group(1)
    assert abs(float(cell) - expected) <= 0.5 * 10**-decimals + 1e-9, f"{cell} != {expected}"


def row_key(defense: str, sigma: str, fors: str) -> tuple[str, int, float]:
    return ("is" if defense == "IS-RS" else "ls", int(fors.split("/")[0]), float(sigma))


MAIN_COLUMNS = {"ACR": ("acr", 3), "Accuracy (%)": ("accuracy", 2), "time (s/example)": ("time_s", 3),
                "Speedup": ("speedup", 2), "FLOP-ideal": ("flop_ideal", 2)}  # fmt: skip
LATEX_HEADER = [
    "Defense",
    r"$\sigma$",
    "FoR",
    "ACR",
    r"Accuracy (\%)",
    "time (s/example)",
    "Speedup",
    "FLOP-ideal",
]


def check_main_rows(header: list[str], rows: list[list[str]], expected: dict) -> None:
    names = [h.replace(r"$\sigma$", "σ").replace(r"\%", "%") for h in header]
    for row in rows:
        cell = dict(zip(names, row, strict=True))
        e = expected[row_key(cell["Defense"], cell["σ"], cell["FoR"])]
        for col, (metric, decimals) in MAIN_COLUMNS.items():
            assert_cell(cell[col], e[metric], decimals)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, pd.DataFrame, dict]:
    df = make_results(FORS, SIGMAS, n_images=24, seed=3)
    manifest = make_manifest(FORS, SIGMAS)
    run = write_run(tmp_path_factory.mktemp("runs") / "full", df, manifest, parts=4)
    return run, df, manifest


# ------------------------------------------------------------------------------------------- loading


def test_load_run_reads_every_part_and_the_manifest(full_run, tmp_path):
    run, df, manifest = full_run
    loaded, man = load_run(run)
    assert len(list(run.glob("part-*.parquet"))) == 4
    assert (run / "_manifest.json").exists()
    assert len(loaded) == len(df)
    assert man == manifest
    assert loaded.attrs["duplicates_dropped"] == 0
    legacy = write_run(tmp_path / "legacy", df.iloc[:10], manifest, manifest_name="manifest.json")
    assert load_run(legacy)[1] == manifest


def test_load_run_reads_parts_whose_schemas_differ(tmp_path):
    """A part whose optional column is all-null (typed null) must not break reading the run."""
    df = make_results((9,), (0.0, 0.5), n_images=4)
    run = tmp_path / "run"
    write_run(run, df[df["sigma"] == 0.5], make_manifest((9,), (0.0, 0.5)), parts=1)
    clean = df[df["sigma"] == 0].assign(p_a_lower=None, sampler=None)
    clean.to_parquet(run / "part-clean.parquet", index=False)
    loaded, _ = load_run(run)
    assert len(loaded) == len(df)
    assert summarize(loaded, {})["images"].tolist() == [4, 4, 4, 4]


def _corrupt(path: Path) -> None:
    path.mkdir()
    (path / "part-00000.parquet").write_bytes(b"not parquet at all")


def _empty_rows(path: Path) -> None:
    write_run(path, pd.DataFrame(), make_manifest())
    make_results(n_images=2).iloc[:0].to_parquet(path / "part-00000.parquet")


def _bad_manifest(path: Path) -> None:
    write_run(path, make_results(n_images=2), None)
    (path / "_manifest.json").write_text("{not json", encoding="utf-8")


def _lacks_radius(path: Path) -> None:
    write_run(path, make_results(n_images=2).drop(columns=["radius"]), make_manifest())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such run directory"),
        (lambda p: p.write_text("x"), "not a directory"),
        (lambda p: p.mkdir(), "no part-*.parquet"),
        (_empty_rows, "hold no rows"),
        (_corrupt, "not a readable parquet"),
        (_bad_manifest, "not valid JSON"),
        (_lacks_radius, "lack column(s) radius"),
    ],
    ids=["missing", "file", "empty-dir", "no-rows", "corrupt-parquet", "bad-manifest", "missing-column"],
)
def test_load_run_rejects_what_is_not_a_run(tmp_path, make, message):
    path = tmp_path / "run"
    make(path)
    with pytest.raises(UsageError) as info:
        load_run(path)
    text = info.value.format_message()
    assert message in text
    assert "\n" not in text
    assert info.value.exit_code == 2


def test_repeated_rows_are_counted_once(tmp_path):
    df = make_results((9,), (0.0, 0.5), n_images=6)
    run = write_run(tmp_path / "run", pd.concat([df, df.iloc[:4]]), make_manifest((9,), (0.0, 0.5)))
    loaded, manifest = load_run(run)
    assert len(loaded) == len(df)
    result = write_report(run, tmp_path / "rep", figures=False)
    assert any("4 repeated" in m for m in result.missing)


# ---------------------------------------------------------------------------------------- aggregates


def test_summarize_equals_independent_aggregates(full_run):
    run, df, manifest = full_run
    summary = summarize(*load_run(run))
    expected = expected_aggregates(df, manifest)
    assert len(summary) == len(expected) == 5 * len(SIGMAS)
    for rec in summary.to_dict("records"):
        e = expected[(rec["method"], rec["fors"], rec["sigma"])]
        assert rec["defense"] == ("IS-RS" if rec["method"] == "is" else "LS-RS")
        assert rec["fors_total"] == 18
        assert rec["images"] == e["images"]
        for col in ("acr", "accuracy", "time_s", "encode_s", "sample_s", "speedup", "flop_ideal"):
            assert rec[col] == pytest.approx(e[col], nan_ok=True, rel=1e-12), col
        for r in RADII:
            assert rec[cert_acc_column(r)] == pytest.approx(e[f"r{r}"], nan_ok=True), r
    assert summary["cert_acc_r0"].equals(summary["accuracy"])


def test_wrong_predictions_with_a_radius_earn_no_acr():
    df = pd.DataFrame(
        {"method": "is", "fors": 0, "sigma": 0.5, "label": [1, 1, 1, 1], "prediction": [1, 2, -1, 1],
         "correct": [True, False, False, True], "radius": [0.4, 0.9, 0.0, 0.2], "total_s": 1.0}
    )  # fmt: skip
    row = summarize(df, {}).iloc[0]
    assert row["acr"] == pytest.approx((0.4 + 0.2) / 4)
    assert row["accuracy"] == 50.0
    assert row["cert_acc_r0.25"] == 25.0
    assert row["cert_acc_r0.5"] == 0.0


# ------------------------------------------------------------------------------------------ rendering


def test_sigma_is_shown_with_two_decimals_unless_more_are_needed():
    assert [format_sigma(s) for s in (0.0, 0.25, 0.5, 1.0, 0.125)] == [
        "0.00",
        "0.25",
        "0.50",
        "1.00",
        "0.125",
    ]


def test_markdown_numbers_equal_independent_aggregates(full_run, tmp_path):
    run, df, manifest = full_run
    result = write_report(run, tmp_path, fmt="markdown", figures=False)
    expected = expected_aggregates(df, manifest)

    header, rows = parse_markdown((tmp_path / "table1.md").read_text())
    assert header == ["Defense", "σ", "FoR", *MAIN_COLUMNS]
    assert [(r[0], r[1], r[2]) for r in rows] == [("IS-RS", f"{s:.2f}", "0/18") for s in SIGMAS] + [
        ("LS-RS", f"{s:.2f}", "9/18") for s in SIGMAS
    ]
    assert rows[0][5] == "-" and rows[4][5] == "-"  # sigma = 0: no time, like the paper
    check_main_rows(header, rows, expected)

    header, rows = parse_markdown((tmp_path / "table2.md").read_text())
    assert len(rows) == len(FORS) * len(SIGMAS)
    assert {r[2] for r in rows} == {f"{k}/18" for k in FORS}
    check_main_rows(header, rows, expected)

    header, rows = parse_markdown((tmp_path / "certified_accuracy.md").read_text())
    assert header == ["Defense", "σ", "FoR", *[f"r = {r:.2f}" for r in RADII]]
    assert len(rows) == 5 * (len(SIGMAS) - 1)
    for row in rows:
        e = expected[row_key(*row[:3])]
        for cell, r in zip(row[3:], RADII, strict=True):
            assert_cell(cell, e[f"r{r}"], 2)
    assert result.main_fors == 9 and result.missing == []


def test_latex_is_a_booktabs_tabular_with_expected_rows_and_numbers(full_run, tmp_path):
    run, df, manifest = full_run
    write_report(run, tmp_path, fmt="latex", figures=False)
    expected = expected_aggregates(df, manifest)
    text = (tmp_path / "table1.tex").read_text()
    assert r"\begin{table}" in text and r"\caption{" in text and r"\label{tab:table1}" in text
    spec, header, rows = parse_latex_tabular(text)
    assert spec == "lrlrrrrr"
    assert header == LATEX_HEADER
    assert len(rows) == 2 * len(SIGMAS)
    check_main_rows(header, rows, expected)

    spec, header, rows = parse_latex_tabular((tmp_path / "table2.tex").read_text())
    assert header == LATEX_HEADER and len(rows) == len(FORS) * len(SIGMAS)
    check_main_rows(header, rows, expected)

    spec, header, rows = parse_latex_tabular((tmp_path / "certified_accuracy.tex").read_text())
    assert header[3:] == [f"r = {r:.2f}" for r in RADII] and len(rows) == 5 * (len(SIGMAS) - 1)


def test_csv_tables_hold_the_displayed_numbers(full_run, tmp_path):
    run, df, manifest = full_run
    write_report(run, tmp_path, fmt="csv", figures=False)
    expected = expected_aggregates(df, manifest)
    table = pd.read_csv(tmp_path / "table1.csv")
    with_ci = [c for m in MAIN_COLUMNS for c in ((m, f"{m} lo", f"{m} hi") if m != "FLOP-ideal" else (m,))]
    assert list(table.columns) == ["Defense", "σ", "FoR", *with_ci]
    for rec in table.to_dict("records"):
        e = expected[row_key(rec["Defense"], str(rec["σ"]), rec["FoR"])]
        assert rec["ACR"] == pytest.approx(round(e["acr"], 3))
        assert rec["time (s/example)"] == pytest.approx(round(e["time_s"], 3), nan_ok=True)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 5 * len(SIGMAS) and "cert_acc_r0.25" in summary.columns


# ----------------------------------------------------------------------------- missing / odd runs


def test_missing_configs_render_what_exists_and_say_what_is_missing(tmp_path):
    fors, sigmas = (1, 9), (0.25, 0.5)
    df = make_results(fors, sigmas, n_images=10, skip=[("is", 0, 0.5), ("ls", 1, 0.25)])
    df = df[~((df["fors"] == 9) & (df["sigma"] == 0.25) & (df["idx"] >= 6))]  # an unfinished chunk
    manifest = make_manifest((1, 5, 9), (0.0, 0.25, 0.5), models_for=[1])
    run = write_run(tmp_path / "run", df, manifest)
    result = write_report(run, tmp_path / "rep", fmt="markdown")
    text = "\n".join(result.missing)
    assert "no sigma = 0 rows" in text
    assert "IS-RS: no rows at sigma = 0.50" in text
    assert "LS-RS 1/18: no rows at sigma = 0.25" in text
    assert "LS-RS 5/18: no rows at all" in text
    assert "LS-RS 9/18 at sigma = 0.25: 6 of 10 images" in text
    assert "no FLOP split for FoR 9" in text
    header, rows = parse_markdown((tmp_path / "rep" / "table1.md").read_text())
    cells = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    assert set(cells) == {("IS-RS", "0.25"), ("LS-RS", "0.25"), ("LS-RS", "0.50")}
    assert cells[("LS-RS", "0.50")]["Speedup"] == "-"  # no IS-RS at 0.50
    assert cells[("LS-RS", "0.25")]["FLOP-ideal"] == "-"
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "## Missing or incomplete" in index and "LS-RS 5/18: no rows at all" in index


def test_only_clean_rows_still_render(tmp_path):
    run = write_run(tmp_path / "run", make_results((9,), (0.0,), n_images=5), make_manifest((9,), (0.0,)))
    result = write_report(run, tmp_path / "rep")
    assert (tmp_path / "rep" / "table1.md").exists() and not (
        tmp_path / "rep" / "certified_accuracy.md"
    ).exists()
    assert any("nothing was certified" in m for m in result.missing)
    assert any("figure certified_accuracy not drawn" in m for m in result.missing)


def test_run_without_is_rows_or_manifest(tmp_path):
    run = write_run(tmp_path / "run", make_results((5, 9), (0.0, 0.5), n_images=5, with_is=False), None)
    result = write_report(run, tmp_path / "rep", figures=False)
    assert any("no IS-RS rows" in m for m in result.missing)
    assert any("no _manifest.json" in m for m in result.missing)
    _, rows = parse_markdown((tmp_path / "rep" / "table1.md").read_text())
    assert [r[2] for r in rows] == ["9/18", "9/18"] and all(r[6] == "-" and r[7] == "-" for r in rows)


def test_main_fors_falls_back_to_the_middle_available_fors(tmp_path):
    run = write_run(
        tmp_path / "run", make_results((1, 5, 13), (0.0, 0.5), n_images=4), make_manifest((1, 5, 13))
    )
    result = write_report(run, tmp_path / "rep", main_fors=9, figures=False)
    assert result.main_fors == 5
    assert result.missing[0] == (
        "main FoR 9 is not in the run (LS-RS FoRs: 1, 5, 13); the main table uses FoR 5"
    )
    _, rows = parse_markdown((tmp_path / "rep" / "table1.md").read_text())
    assert {r[2] for r in rows if r[0] == "LS-RS"} == {"5/18"}
    assert write_report(run, tmp_path / "rep2", main_fors=13, figures=False).main_fors == 13


def test_compare_paper_puts_published_values_beside_ours(full_run, tmp_path):
    run, df, manifest = full_run
    write_report(run, tmp_path, fmt="markdown", compare_paper=True, figures=False)
    text = (tmp_path / "table1.md").read_text()
    assert "Table 1 of the paper" in text
    header, rows = parse_markdown(text)
    assert header[3:7] == ["ACR", "ACR (paper)", "Accuracy (%)", "Accuracy (%) (paper)"]
    cells = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    assert cells[("IS-RS", "0.25")]["ACR (paper)"] == "0.472"
    assert cells[("IS-RS", "0.00")]["Accuracy (%) (paper)"] == "93.15"
    assert cells[("LS-RS", "1.00")]["time (s/example) (paper)"] == "7.985"
    assert cells[("LS-RS", "0.25")]["Speedup (paper)"] == f"{11.212 / 7.904:.2f}"
    assert cells[("LS-RS", "0.00")]["time (s/example) (paper)"] == "-"
    check_main_rows(header, rows, expected_aggregates(df, manifest))
    header, rows = parse_markdown((tmp_path / "table2.md").read_text())
    cells = {(r[2], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    assert cells[("13/18", "0.50")]["ACR (paper)"] == "0.485"
    assert cells[("1/18", "0.25")]["Accuracy (%) (paper)"] == "80.18"


def test_digits_demo_grid_renders(tmp_path):
    fors, sigmas = (1, 5, 9, 13), (0.0, 0.25, 0.5)
    df = make_results(fors, sigmas, n_images=30, dataset="digits", seed=7)
    run = write_run(tmp_path / "run", df, make_manifest(fors, sigmas, dataset="digits"))
    result = write_report(run, tmp_path / "rep", compare_paper=True, figures=False)
    assert any("no digits results" in m for m in result.missing)
    header, rows = parse_markdown((tmp_path / "rep" / "table1.md").read_text())
    assert len(rows) == 6 and [r[1] for r in rows] == ["0.00", "0.25", "0.50"] * 2
    check_main_rows(header, rows, expected_aggregates(df, make_manifest(fors, sigmas)))
    assert "on digits" in (tmp_path / "rep" / "table1.md").read_text()


def test_imagenet_run_gets_the_table3_layout(tmp_path):
    df = make_results((16,), (0.0, 0.5), n_images=4, dataset="imagenet", arch="wide_resnet34", fors_total=34)
    run = write_run(tmp_path / "run", df, make_manifest((16,), (0.0, 0.5), dataset="imagenet"))
    result = write_report(run, tmp_path / "rep", fmt="latex", main_fors=16, compare_paper=True, figures=False)
    assert {p.name for p in result.paths} >= {"table3.tex", "table2.tex", "certified_accuracy.tex"}
    text = (tmp_path / "rep" / "table3.tex").read_text()
    assert "Table 3 of the paper (ImageNet)" in text
    _, header, rows = parse_latex_tabular(text)
    cells = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    assert cells[("LS-RS", "0.50")]["FoR"] == "16/34"
    assert cells[("LS-RS", "0.50")]["ACR (paper)"] == "1.063"


def test_extra_columns_are_tolerated_and_samplers_kept_apart(tmp_path):
    a = make_results((9,), (0.0, 0.5), n_images=6, extra={"sampler": "fixed", "certificate": "cp"})
    b = make_results(
        (9,), (0.0, 0.5), n_images=6, seed=1, extra={"sampler": "sequential", "certificate": "cp"}
    )
    b["samples_used"] = 321
    run = write_run(tmp_path / "run", pd.concat([a, b], ignore_index=True), make_manifest((9,), (0.0, 0.5)))
    summary = summarize(*load_run(run))
    assert "sampler" in summary.columns and "certificate" not in summary.columns
    assert len(summary) == 2 * 2 * 2
    for sampler, part in (("fixed", a), ("sequential", b)):
        got = summary[summary["sampler"] == sampler]
        expected = expected_aggregates(part, None)
        for rec in got.to_dict("records"):
            e = expected[(rec["method"], rec["fors"], rec["sigma"])]
            assert rec["acr"] == pytest.approx(e["acr"])
            assert rec["speedup"] == pytest.approx(e["speedup"], nan_ok=True)
    write_report(run, tmp_path / "rep", figures=False)
    header, rows = parse_markdown((tmp_path / "rep" / "table1.md").read_text())
    assert "Sampler" in header and len(rows) == 8


# ------------------------------------------------------------------------------------- index + CLI


def test_index_links_every_table_and_figure(full_run, tmp_path):
    run, _, _ = full_run
    result = write_report(run, tmp_path / "rep", fmt="markdown")
    index = result.index.read_text()
    for path in result.paths:
        if path != result.index:
            assert f"({path.name})" in index, path.name
    for name in (
        "certified_accuracy.png",
        "ablation_accuracy.png",
        "ablation_speed.png",
        "time_breakdown.png",
    ):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert "**ACR**" in index and "## Definitions" in index


def test_cli_report_writes_the_report(full_run, tmp_path):
    run, _, _ = full_run
    out = tmp_path / "rep"
    res = CliRunner().invoke(
        cli, ["report", str(run), "--format", "latex", "--out", str(out), "--no-figures", "--json"]
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["main_fors"] == 9 and payload["missing"] == []
    assert {Path(p).name for p in payload["paths"]} == {
        "table1.tex", "table2.tex", "certified_accuracy.tex", "summary.csv", "paired.csv", "index.md"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "xls"], "'xls' is not one of"),
        (["--main-fors", "-1"], "--main-fors"),
    ],
)
def test_cli_rejects_bad_options(full_run, tmp_path, args, needle):
    run, _, _ = full_run
    res = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path), *args])
    assert res.exit_code == 2 and needle in res.output


def test_cli_not_a_run_directory_exits_2_with_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["report", str(tmp_path), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == [
        f"Error: {tmp_path}: no part-*.parquet files; is this a run directory written by `bench run`?"
    ]
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output
