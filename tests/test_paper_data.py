"""bench/data/paper_tables.csv: the paper's Tables 1-3, transcribed, each row traceable to its table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.report.paper_data import load_paper_tables, paper_values

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "latent-space-randomized-smoothing.txt"


@pytest.fixture(scope="module")
def paper():
    return load_paper_tables()


def _row(paper, table, defense, sigma, fors):
    sel = paper[(paper["table"] == table) & (paper["defense"] == defense) & (paper["sigma"] == sigma)
                & (paper["fors"] == fors)]  # fmt: skip
    assert len(sel) == 1
    return sel.iloc[0]


@pytest.mark.parametrize(
    ("defense", "sigma", "fors", "acr", "accuracy", "time_s"),
    [
        ("IS-RS", 0.0, 0, 0.000, 93.15, None),
        ("IS-RS", 0.25, 0, 0.472, 80.78, 11.212),
        ("IS-RS", 0.5, 0, 0.564, 68.24, 12.747),
        ("IS-RS", 1.0, 0, 0.532, 49.35, 12.953),
        ("LS-RS", 0.0, 9, 0.000, 86.92, None),
        ("LS-RS", 0.25, 9, 0.444, 77.56, 7.904),
        ("LS-RS", 1.0, 9, 0.524, 50.72, 7.985),
    ],
)
def test_table1_spot_checks(paper, defense, sigma, fors, acr, accuracy, time_s):
    row = _row(paper, 1, defense, sigma, fors)
    assert (row["dataset"], row["arch"], row["fors_total"]) == ("cifar10", "resnet18", 18)
    assert row["acr"] == acr and row["accuracy"] == accuracy
    assert (row["time_s"] != row["time_s"]) if time_s is None else row["time_s"] == time_s


def test_every_row_names_its_table(paper):
    assert paper.groupby("table").size().to_dict() == {1: 8, 2: 16, 3: 8}
    assert set(paper.loc[paper["table"] == 3, "dataset"]) == {"imagenet"}
    assert set(paper.loc[paper["table"] == 2, "defense"]) == {"LS-RS"}
    assert paper["time_s"].isna().equals(paper["sigma"] == 0)  # "-" exactly at sigma = 0


def test_rows_printed_twice_agree(paper):
    t1 = paper[(paper["table"] == 1) & (paper["fors"] == 9)].drop(columns="table").reset_index(drop=True)
    t2 = paper[(paper["table"] == 2) & (paper["fors"] == 9)].drop(columns="table").reset_index(drop=True)
    assert t1.equals(t2)
    assert _row(paper, 3, "LS-RS", 0.5, 16)["acr"] == 1.063


def test_paper_values_speedup_uses_the_main_table_is_time():
    values = paper_values("cifar10", (2, 1))
    row = values[(values["fors"] == 13) & (values["sigma"] == 0.5)].iloc[0]
    assert row["table"] == 2 and row["speedup"] == pytest.approx(12.747 / 5.807)


@pytest.mark.skipif(not PAPER.exists(), reason="paper text not available")
def test_every_row_is_printed_in_the_paper_text(paper):
    text = PAPER.read_text(encoding="utf-8")
    captions = {1: "Table 1:", 2: "Table 2:", 3: "Table 3:"}
    for table, caption in captions.items():
        end = text.index(caption)
        start = text.rfind("Defense σ FoR ACR", 0, end)
        block = text[start:end].splitlines()[1:]
        printed = [ln.split() for ln in block if re.match(r"(IS|LS)-RS ", ln)]
        rows = paper[paper["table"] == table]
        assert len(printed) == len(rows)
        for cells, rec in zip(printed, rows.to_dict("records"), strict=True):
            time_txt = "-" if rec["time_s"] != rec["time_s"] else f"{rec['time_s']:.3f}"
            expected = [rec["defense"], f"{rec['sigma']:.2f}", f"{rec['fors']}/{rec['fors_total']}",
                        f"{rec['acr']:.3f}", f"{rec['accuracy']:.2f}", time_txt]  # fmt: skip
            assert cells == expected
