"""A report's definitions say only what applies to its run: the MNIST radius note only on MNIST runs."""

from __future__ import annotations

import pytest
from synthetic_results import make_manifest, make_results, write_run

from bench.report.writer import write_report


@pytest.mark.parametrize(("dataset", "mnist", "digits"), [("digits", False, True), ("mnist", True, False),
                                                          ("cifar10", False, False)])
def test_index_carries_the_dataset_radius_note_of_its_own_dataset_only(tmp_path, dataset, mnist, digits):
    rows = make_results((9,), (0.0, 0.25), n_images=4, dataset=dataset)
    run = write_run(tmp_path / "run", rows, make_manifest((9,), (0.0, 0.25), dataset=dataset))
    write_report(run, tmp_path / "rep", figures=False)
    index = (tmp_path / "rep" / "index.md").read_text(encoding="utf-8")
    assert "## Definitions" in index
    assert ("Radii on MNIST" in index) is mnist
    assert ("28×28 scans are zero-padded to 32×32" in index) is mnist
    assert ("Digits radii" in index) is digits
