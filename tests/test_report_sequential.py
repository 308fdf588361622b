"""Sampling and decision tables of `bench report` against aggregates computed by hand (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench import store
from bench.report.writer import write_report


def _cert_row(idx: int, method: str, fors: int, sigma: float, *, correct: bool, radius: float, used: int,
              sampler: str = "curtail") -> dict:
    return {
        "run": "h", "dataset": "digits", "arch": "resnet18", "idx": idx, "label": 1, "method": method,
        "fors": fors, "fors_total": 18, "sigma": sigma, "prediction": 1 if correct else 2, "correct": correct,
        "radius": radius, "radius_latent": radius, "lipschitz": 1.0, "lipschitz_declared": 1.0, "latent_error": 0.0,
        "p_a_lower": 0.9, "p_b_upper": 0.1,
        "counts_selection": [0, 10], "counts_estimation": [0, 100], "n0": 10, "n": 100, "samples_used": used,
        "alpha": 0.001, "sampler": sampler, "certificate": "binary", "encode_s": 0.0, "sample_s": 0.1,
        "total_s": 0.2 if method == "is" else 0.1, "batch_size": 8, "seed": idx, "precision": "fp32",
        "device": "cpu", "checkpoint_sha256": "0" * 64,
    }


def _decision_row(idx: int, method: str, fors: int, sigma: float, radius: float, certified: bool | None,
                  used: int) -> dict:
    return {
        "run": "h", "dataset": "digits", "idx": idx, "label": 1, "method": method, "fors": fors, "fors_total": 18,
        "sigma": sigma, "radius": radius, "certified": certified, "prediction": 1 if certified else -1,
        "correct": bool(certified), "p_required": 0.7, "p_a_lower": 0.6, "p_a_upper": 0.9, "samples_used": used,
        "max_n": 100, "alpha": 0.001, "total_s": 0.01 * used / 10, "seed": idx, "device": "cpu",
    }


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    rows = [
        _cert_row(0, "is", 0, 0.5, correct=True, radius=0.6, used=110),
        _cert_row(1, "is", 0, 0.5, correct=False, radius=0.0, used=40),
        _cert_row(0, "ls", 9, 0.5, correct=True, radius=0.3, used=110),
        _cert_row(1, "ls", 9, 0.5, correct=True, radius=0.0, used=70),
    ]
    store.write_part(tmp_path, rows, "x")
    decisions = [
        _decision_row(0, "is", 0, 0.5, 0.5, True, 30),
        _decision_row(1, "is", 0, 0.5, 0.5, False, 20),
        _decision_row(0, "ls", 9, 0.5, 0.5, None, 110),
        _decision_row(1, "ls", 9, 0.5, 0.5, False, 50),
    ]
    store.write_part(tmp_path / store.DECISIONS_DIR, decisions, "x", schema=store.DECISION_SCHEMA)
    store.write_json(tmp_path / store.MANIFEST, {"config": {"dataset": "digits"}, "models": {}})
    return tmp_path


def test_sampling_and_decision_tables_equal_hand_aggregates(run_dir: Path, tmp_path: Path) -> None:
    result = write_report(run_dir, tmp_path / "rep", fmt="csv", figures=False)
    sampling = pd.read_csv(tmp_path / "rep" / "sampling.csv")
    is_row = sampling[sampling["Defense"] == "IS-RS"].iloc[0]
    ls_row = sampling[sampling["Defense"] == "LS-RS"].iloc[0]
    assert is_row["samples used"] == pytest.approx((110 + 40) / 2)
    assert is_row["saved (%)"] == pytest.approx(100 * (1 - 75 / 110), abs=0.05)
    assert ls_row["saved (%)"] == pytest.approx(100 * (1 - 90 / 110), abs=0.05)
    assert is_row["ACR"] == pytest.approx(0.3) and ls_row["ACR"] == pytest.approx(0.15)
    assert is_row["time (s/example)"] == pytest.approx(0.2) and ls_row["time (s/example)"] == pytest.approx(0.1)
    decisions = pd.read_csv(tmp_path / "rep" / "decisions.csv")
    is_d = decisions[decisions["Defense"] == "IS-RS"].iloc[0]
    ls_d = decisions[decisions["Defense"] == "LS-RS"].iloc[0]
    # IS-RS at r = 0.5: decide certified image 0 only (50 %); fixed-n: image 0 has radius 0.6 >= 0.5 (50 %).
    assert (is_d["decided (%)"], is_d["fixed-n (%)"], is_d["undecided (%)"]) == (50.0, 50.0, 0.0)
    # LS-RS: nothing decided (one undecided), fixed-n radius 0.3 < 0.5 -> 0 %.
    assert (ls_d["decided (%)"], ls_d["fixed-n (%)"], ls_d["undecided (%)"]) == (0.0, 0.0, 50.0)
    assert is_d["samples"] == 25 and ls_d["samples"] == 80 and is_d["fixed n0 + n"] == 110
    names = {t.name for t in result.tables}
    assert {"sampling", "decisions"} <= names
    assert "decisions.csv" in (tmp_path / "rep" / "index.md").read_text()


def test_plain_fixed_run_has_no_sequential_tables(run_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    rows = [_cert_row(0, "is", 0, 0.5, correct=True, radius=0.6, used=110, sampler="fixed")]
    store.write_part(plain, rows, "x")
    result = write_report(plain, tmp_path / "rep2", fmt="markdown", figures=False)
    assert not {"sampling", "decisions"} & {t.name for t in result.tables}
