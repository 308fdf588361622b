"""The certifier registry: the built-ins' records, and a new certifier (tests/example_certifier.py) that is one
module plus its registration, certified by ``bench run --methods``, shown by the console and ``bench report``."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench import certifiers
from bench.cli.main import cli
from bench.run.runner import RunConfig, grid_jobs
from lsrs.checkpoint import update_index
from tests.example_certifier import KEY, register_clean
from tests.tiny_checkpoints import write_tiny_checkpoints


@pytest.fixture
def clean_certifier():
    record = register_clean()
    yield record
    certifiers.unregister(KEY)


def test_builtins_are_registered_in_table_order_with_their_roles():
    assert certifiers.keys()[:3] == ("is", "ls", "lip")
    is_rs, ls_rs, lip = (certifiers.get(k) for k in ("is", "ls", "lip"))
    assert (is_rs.reference, is_rs.fors_axis, is_rs.noise) == (True, False, True)
    assert (ls_rs.reference, ls_rs.fors_axis, ls_rs.noise) == (False, True, True)
    assert (lip.reference, lip.fors_axis, lip.noise) == (False, False, False)
    assert certifiers.reference_key() == "is"
    with pytest.raises(ValueError, match="already registered"):
        certifiers.register(certifiers.Certifier(key="is", defense="X", jobs=lambda c, s: [], start=None))
    with pytest.raises(KeyError, match="registered: is, ls, lip"):
        certifiers.get("nope")


def test_grid_order_is_unchanged_per_sigma_then_once(tmp_path):
    update_index(tmp_path, "digits", [{"arch": "resnet18", "fors": 18, "sigma": 0.0, "path": "lip.safetensors",
                                       "sha256": "0" * 64, "width": 4, "in_size": 16, "num_classes": 10,
                                       "clean_acc": 0.0, "noisy_acc": 0.0}])
    config = RunConfig(dataset="digits", fors=(1, 9), sigmas=(0.0, 0.25), methods=("lip", "ls", "is"), n=(10, 20),
                       checkpoints=str(tmp_path))
    got = [(j.method, j.fors, j.sigma, j.n) for j in grid_jobs(config)]
    assert got == [("is", 0, 0.0, 0), ("ls", 1, 0.0, 0), ("ls", 9, 0.0, 0),
                   ("is", 0, 0.25, 10), ("is", 0, 0.25, 20), ("ls", 1, 0.25, 10), ("ls", 1, 0.25, 20),
                   ("ls", 9, 0.25, 10), ("ls", 9, 0.25, 20), ("lip", 18, 0.0, 0)]


def _run(tmp_path, methods: str, out: str):
    args = ["run", "--dataset", "digits", "--fors", "9", "--sigmas", "0.25", "--methods", methods, "--n0", "8",
            "--n", "32", "--max-images", "4", "--skip", "7", "--precision", "fp32", "--checkpoints",
            str(tmp_path / "ckpt"), "--out", str(tmp_path / out)]
    return CliRunner().invoke(cli, args)


def test_a_new_certifier_is_one_module_and_its_registration(tmp_path, clean_certifier):
    from bench.report.writer import write_report
    from lsrs.checkpoint import load_checkpoint, read_index
    from lsrs.data import load_dataset

    write_tiny_checkpoints(tmp_path / "ckpt", fors=(9,), sigmas=(0.25,))
    assert _run(tmp_path, "is", "alone").exit_code == 0
    result = _run(tmp_path, "is,clean", "with")
    assert result.exit_code == 0, result.output
    assert "Clean" in result.output  # the run's console summary lists it
    frame = pd.read_parquet(tmp_path / "with")
    clean = frame[frame["method"] == KEY].sort_values("idx")
    assert len(clean) == 4 and set(clean["fors"]) == {0} and (clean["radius"] == 0).all()
    assert (clean["samples_used"] == 0).all() and (clean["n"] == 0).all()
    # independent oracle: the baseline checkpoint's own forward pass
    entry = next(e for e in read_index(tmp_path / "ckpt", "digits") if int(e["fors"]) == 0)
    model, _ = load_checkpoint(tmp_path / "ckpt" / "digits" / entry["path"], allow_pickle=False)
    test = load_dataset("digits", "test")
    with torch.inference_mode():
        expected = [int(model.eval()(test[int(i)][0].unsqueeze(0)).argmax(1)) for i in clean["idx"]]
    assert clean["prediction"].tolist() == expected
    assert (clean["correct"] == (clean["prediction"] == clean["label"])).all()
    # the other certifiers' rows do not change when a certifier joins the grid
    columns = ["idx", "prediction", "radius", "p_a_lower", "counts_selection", "counts_estimation", "seed"]
    alone = pd.read_parquet(tmp_path / "alone")
    with_is = frame[frame["method"] == "is"].sort_values("idx")[columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone.sort_values("idx")[columns].reset_index(drop=True), with_is)

    report = write_report(tmp_path / "with", tmp_path / "report", fmt="markdown")
    summary = report.summary.set_index("method")
    assert summary.loc[KEY, "defense"] == "Clean" and summary.loc[KEY, "accuracy"] == pytest.approx(
        100 * clean["correct"].mean())
    assert summary.loc[KEY, "speedup"] == pytest.approx(summary.loc["is", "time_s"] / summary.loc[KEY, "time_s"])
    table1 = (tmp_path / "report" / "table1.md").read_text()
    row = next(line for line in table1.splitlines() if line.startswith("| Clean"))
    assert row.split("|")[2].strip() == "-"  # no noise: no σ
    assert "the clean prediction (radius 0)" in table1
    assert "Clean" in (tmp_path / "report" / "certified_accuracy.md").read_text()
    assert (tmp_path / "report" / "certified_accuracy.png").is_file()


def test_an_unregistered_method_is_refused_in_one_line(tmp_path):
    write_tiny_checkpoints(tmp_path / "ckpt", fors=(9,), sigmas=(0.25,))
    result = _run(tmp_path, "is,clean", "x")
    assert result.exit_code == 2
    assert "methods are 'is', 'ls' and 'lip'" in result.output and "Traceback" not in result.output


def test_an_installed_package_registers_a_certifier_by_entry_point(tmp_path, monkeypatch):
    """A package that declares ``[project.entry-points."bench.certifiers"] clean = "module:CLEAN"`` is taken
    by ``bench run --methods`` without any import by the user (the entry point as importlib.metadata gives it)."""
    from importlib.metadata import EntryPoint

    from bench.certifiers import registry

    point = EntryPoint(name=KEY, value="tests.example_certifier:CLEAN", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points_by_name",
                        lambda group: {KEY: point} if group == registry.ENTRY_POINT_GROUP else {})
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    try:
        write_tiny_checkpoints(tmp_path / "ckpt", fors=(9,), sigmas=(0.25,))
        result = _run(tmp_path, "is,clean", "run")
        assert result.exit_code == 0, result.output
        assert set(pd.read_parquet(tmp_path / "run")["method"]) == {"is", KEY}
    finally:
        certifiers.unregister(KEY)
