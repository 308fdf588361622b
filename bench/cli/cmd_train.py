"""``bench train``: noise-augmented training of the paired grid (IS-RS baseline + LS-RS FoR twins per σ)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from bench.cli.params import DATASET, FORS, SIGMAS, BenchUsageError, dataset_help
from bench.train.defaults import (
    MARGIN_EPS,
    MARGIN_TEMPERATURE,
    PLAIN_DISTILL,
    PLAIN_DISTILL_TEMPERATURE,
    measured_default,
)
from lsrs.training_choices import OPTIMIZERS, SCHEDULES

if TYPE_CHECKING:
    from bench.train.grid import TwinRecipe


def results_table(entries: list[dict], dataset: str) -> Table:
    """One row per trained model: FoR, σ, noise location, clean / noisy test accuracy, time, status."""
    table = Table(title=f"{dataset}: trained pairs")
    for name in ("FoR", "σ", "noise", "clean %", "noisy %", "epochs", "train s", "status"):
        table.add_column(name, justify="left" if name in ("noise", "status") else "right", no_wrap=True)
    for e in entries:
        table.add_row(
            f"{e['fors']}/{e.get('fors_total', '?')}", f"{e['sigma']:g}", e.get("noise", "?"),
            f"{100 * e['clean_acc']:.2f}", f"{100 * e['noisy_acc']:.2f}", str(e.get("epochs", "?")),
            f"{e.get('train_seconds', float('nan')):.1f}", e.get("status", ""),
        )
    return table


def twin_recipe(dataset: str, arch: str | None = None, **given) -> TwinRecipe:
    """The measured twin recipe of ``arch`` on ``dataset`` (:func:`bench.train.grid.default_twin_recipe`)
    with every option the user gave (not ``None``) in its place."""
    from bench.train.grid import default_twin_recipe

    return replace(default_twin_recipe(dataset, arch), **{k: v for k, v in given.items() if v is not None})


def _check_writable(folder: Path) -> None:
    """Refuse (exit 2) an --out that cannot be written before any model is trained."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BenchUsageError(f"cannot write to --out {folder}: {exc.strerror or exc}; give a writable folder") from None


@click.command("train", short_help="Train the paired grid: IS-RS baselines and LS-RS twins.")
@click.option("--dataset", type=DATASET, default="digits", show_default=True,
              help=dataset_help("Dataset to train on (checkpoints go to OUT/<dataset>/)."))
@click.option("--arch", metavar="NAME|MODULE:FUNCTION", default=None,
              help="Architecture: a registered name (resnet18, wide_resnet34, an installed plugin of the "
                   "lsrs.architectures entry points) or a builder package.module:function [default: the "
                   "dataset's paper model, resnet18; imagenet wide_resnet34 (WRN-34-2)].")
@click.option("--fors", type=FORS, default="0,1,5,9,13", show_default=True,
              help="FoR k of each model (0 = the IS-RS baseline; ResNet18: 0,1,3,...,17; 18 = the fully "
                   "orthogonal Lipschitz twin, trained once without noise at σ = 0 with the margin loss; "
                   "WRN-34: 0,16 for the paper's ImageNet pair).")
@click.option("--sigmas", type=SIGMAS, default="0.25,0.5,1.0", show_default=True,
              help="Training noise levels; 0 trains the clean-accuracy models.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/checkpoints"),
              show_default=True, help="Checkpoints go to OUT/<dataset>/ with an index.json for bench run.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs per model [default: digits 10, mnist/cifar10 100, imagenet 90].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Initial learning rate [default: digits 0.1, mnist/cifar10 0.01, imagenet 0.1].")
@click.option("--lr-step", type=click.IntRange(min=1), default=None,
              help="Divide the learning rate by 10 every this many epochs [default: digits 7, else 30].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Training batch size [default: digits 64, mnist/cifar10/imagenet 256].")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="The architecture's width (ResNet18 base width [default: digits 8, mnist/cifar10 64]; "
                   "WRN-34 widen factor [default: imagenet 2, else 10]).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--margin-eps", type=click.FloatRange(min=0), default=MARGIN_EPS, show_default=True,
              help="FoR 18 only: target l2 radius of the margin loss (true logit lowered by sqrt(2)·eps).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=MARGIN_TEMPERATURE,
              show_default=True, help="FoR 18 only: temperature of the margin loss.")
@click.option("--warm-start/--no-warm-start", default=None,
              help="LS-RS twins: start the classifier part (the baseline's own layers after the split) from the "
                   "trained baseline at the same σ (trained first, in the same grid) [default: "
                   f"{measured_default('warm_start', False, lambda v: 'on' if v else 'off')}, as measured to help "
                   "(docs/ablation.md)].")
@click.option("--distill", type=click.FloatRange(0, 1), default=None,
              help="LS-RS twins: weight λ of distillation from the baseline at the same σ on noisy inputs; "
                   f"loss (1-λ)·CE + λ·T²·KL(teacher ‖ twin) [default: {measured_default('distill', PLAIN_DISTILL)}].")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="LS-RS twins: temperature T of the distillation "
                   f"[default: {measured_default('distill_temperature', PLAIN_DISTILL_TEMPERATURE)}].")
@click.option("--twin-optimizer", type=click.Choice(OPTIMIZERS), default=None,
              help="LS-RS twins: their own optimiser [default: the grid's, SGD with momentum].")
@click.option("--twin-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="LS-RS twins: their own initial learning rate [default: --lr].")
@click.option("--twin-schedule", type=click.Choice(SCHEDULES), default=None,
              help="LS-RS twins: step (÷10 every --lr-step epochs) or onecycle (Trockman & Kolter's "
                   "superconvergence schedule) [default: step].")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (cifar10/imagenet).")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Models trained side by side in local worker processes (as bench demo does), one torch "
                   "thread each unless --threads; the checkpoints do not depend on it.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch [default: torch's]; 1 is fastest on a busy shared CPU.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, order and noise.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="LSRS_DATA",
              help="Dataset folder for cifar10/imagenet (or set LSRS_DATA).")
@click.option("--download", is_flag=True, help="Download CIFAR-10 with torchvision if absent (needs network).")
@click.option("--retrain", is_flag=True, help="Train again even where a matching checkpoint exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the index entries as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables.")
def command(dataset, arch, fors, sigmas, out, epochs, lr, lr_step, batch_size, width, weight_decay, margin_eps,
            temperature, warm_start, distill, distill_temperature, twin_optimizer, twin_lr, twin_schedule,
            workers, processes, device, threads, seed, data_dir, download, retrain, as_json, quiet) -> None:
    """Train every (FoR, σ) model of the grid with Gaussian-noise augmentation.

    FoR 0 is the IS-RS baseline (noise on the input); FoR k > 0 is its orthogonal twin (noise on the latent
    z = fe(x)). Same recipe and epochs for all (paper, Appendix B); the --warm-start, --distill and --twin-*
    options add a recipe for the twins only (recorded in their checkpoints). A checkpoint is saved every
    epoch: run the same command again to resume; finished models with the same recipe are reused.

    \b
    Example:
      bench train --dataset digits --fors 0,1,5,9,13 --sigmas 0.25,0.5,1.0 --out results/checkpoints
      bench train --dataset imagenet --fors 0,16 --sigmas 0.25,0.5,1.0 --data-dir /data/imagenet
    """
    from bench.train.grid import GridConfigError, train_grid
    from lsrs.checkpoint import CheckpointError
    from lsrs.data import DatasetMissingError

    console = Console(stderr=True, quiet=quiet)
    _check_writable(out / dataset)
    try:
        entries = train_grid(
            dataset, fors, sigmas, out, epochs=epochs, lr=lr, lr_step=lr_step, batch_size=batch_size,
            device=device, seed=seed, width=width, data_dir=data_dir, quiet=quiet, workers=workers,
            download=download, weight_decay=weight_decay, retrain=retrain, threads=threads, console=console, processes=processes,
            margin_eps=margin_eps, temperature=temperature, arch=arch,
            twin=twin_recipe(dataset, arch, warm_start=warm_start, distill=distill, distill_temperature=distill_temperature,
                             optimizer=twin_optimizer, lr=twin_lr, schedule=twin_schedule),
        )
    except (GridConfigError, DatasetMissingError, CheckpointError) as exc:
        raise BenchUsageError(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to resume from the last finished epoch", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    if not quiet:
        console.print(results_table(entries, dataset))
        console.print(f"index: {out / dataset / 'index.json'}")
