"""The smaller defects: an empty list item, a help text that stated another default, a cut command summary,
a module of the working folder, colliding log-axis labels and a legend entry without data."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from synthetic_results import make_manifest, make_results  # noqa: E402

from bench.cli.main import cli  # noqa: E402
from bench.report import plots  # noqa: E402
from bench.report.equal_time import front_figure  # noqa: E402
from bench.report.writer import summarize  # noqa: E402
from bench.train.grid import MEASURED_TWIN_RECIPES, default_twin_recipe  # noqa: E402
from lsrs.plugins import resolve_attribute  # noqa: E402


@pytest.mark.parametrize("command", ["run", "train"])
@pytest.mark.parametrize("value", ["0.25,,0.5", "0.25,", ",0.5"])
def test_an_empty_list_item_is_refused(command: str, value: str) -> None:
    stop = ["--n0", "0"] if command == "run" else ["--epochs", "0"]  # refused next: nothing would run anyway
    result = CliRunner().invoke(cli, [command, "--sigmas", value, *stop])
    assert result.exit_code == 2 and "empty item" in result.output, result.output


def _stated_defaults(text: str, marker: str) -> dict[str, str]:
    """``{dataset: value}`` of the ``[default: 4 for digits, 2 for mnist, else 1]`` after ``marker``."""
    stated = text.split(marker)[1].split("[default: ")[1].split("]")[0]
    found = {}
    for case in stated.split(", "):
        if " for " in case:
            value, datasets = case.split(" for ")
            found.update(dict.fromkeys(datasets.split(" and "), value))
        else:
            found["else"] = case.removeprefix("else ")
    return found


def test_train_help_states_the_distillation_defaults_the_code_uses() -> None:
    text = " ".join(CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output.split())
    assert MEASURED_TWIN_RECIPES, "no measured recipe to state"
    temperature = _stated_defaults(text, "temperature T of the distillation")
    weight = _stated_defaults(text, "weight λ of distillation")
    for _arch, dataset in MEASURED_TWIN_RECIPES:
        recipe = default_twin_recipe(dataset)
        assert temperature[dataset] == f"{recipe.distill_temperature:g}", temperature
        assert weight[dataset] == f"{recipe.distill:g}", weight
    assert temperature["else"] == f"{default_twin_recipe('cifar10').distill_temperature:g}"


def test_bench_help_gives_every_command_its_whole_summary() -> None:
    from bench.cli.main import COMMAND_MODULES

    text = CliRunner().invoke(cli, ["--help"]).output
    commands = text.split("Commands:")[1].strip().splitlines()
    assert len(commands) == len(COMMAND_MODULES)
    for line in commands:
        name, summary = line.split(maxsplit=1)
        assert summary == cli.get_command(None, name).short_help, line  # not cut mid-phrase


def test_module_attribute_from_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cwd_builder_mod38.py").write_text("VALUE = 41\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert resolve_attribute("cwd_builder_mod38:VALUE") == 41


def _front_summary(times: list[float]) -> pd.DataFrame:
    rows = []
    for method, fors, scale in (("is", 0, 1.0), ("ls", 9, 0.55), ("ls", 5, 0.8)):
        for n, t in zip((100, 400, 1600, 6400), times, strict=True):
            for sigma in (0.25, 0.5):
                rows.append((method, fors, sigma, n, t * scale, 80, 50, 20, 0.3))
    cols = ["method", "fors", "sigma", "n", "time_s", "cert_acc_r0", "cert_acc_r0.25", "cert_acc_r0.5", "acr"]
    return pd.DataFrame(rows, columns=cols).assign(fors_total=18)


@pytest.mark.parametrize("times", [[0.3, 0.6, 1.2, 2.4], [0.02, 0.08, 0.32, 1.28], [1.1, 1.3, 1.5, 1.9],
                                   [0.001, 0.1, 10.0, 1000.0]])
def test_accuracy_time_labels_never_overlap(times: list[float]) -> None:
    fig = front_figure(_front_summary(times))
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticklabels(which="both") if t.get_text() and lo <= t.get_position()[0] <= hi]
        boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in shown]
        if ax.get_xlabel():
            assert len(boxes) >= 1


def test_ablation_legend_lists_only_the_sigmas_drawn() -> None:
    df = make_results((5, 9), (0.25, 0.5), n_images=6, seed=1)
    summary = summarize(df, make_manifest((5, 9), (0.25, 0.5)))
    lip = summary.iloc[[0]].assign(method="lip", fors=18, sigma=0.0)  # a σ = 0 row that no line draws
    fig = plots.ablation_accuracy_figure(pd.concat([summary, lip], ignore_index=True))
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert not any(t.startswith("σ = 0.00") for t in texts), texts
    assert any("0.25" in t for t in texts) and any("0.5" in t for t in texts)
