"""``bench import``: published peers' checkpoints and certify logs (Cohen et al. 2019 format) into this project."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.console import Console

from bench.cli.params import DATASET
from lsrs.cohen_published import COHEN_DATASETS


class Sigma(click.ParamType):
    """A finite noise level >= 0, or > 0 with ``positive`` (``nan``, ``inf`` and words are refused)."""

    name = "SIGMA"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value, param, ctx):  # type: ignore[override]
        try:
            sigma = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(sigma) or sigma < 0:
            self.fail(f"{value!r}: sigma must be a finite number >= 0", param, ctx)
        if self.positive and sigma == 0:
            self.fail("sigma must be > 0: a certify log certifies a smoothed classifier, which needs noise",
                      param, ctx)
        return sigma


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group("import", short_help="Import peers' checkpoints and certify logs (Cohen et al.).")
def command() -> None:
    """Import published peers (Cohen et al. 2019 format) to certify or report beside your own runs.

    \b
    Examples:
      bench import cohen-model models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar \\
        --dataset cifar10 --sigma 0.25 --out results/peer-checkpoints
      bench run --dataset cifar10 --methods is --sigmas 0.25 --checkpoints results/peer-checkpoints
      bench import certify-log data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25 \\
        --dataset cifar10 --sigma 0.25 --n 100000 --alpha 0.001 --name cohen --out results/cohen-s0.25
      bench report results/cohen-s0.25 results/digits-run --name cohen --name ours
    """


@command.command("cohen-model")
@click.argument("checkpoint", type=_FILE)
@click.option("--dataset", type=click.Choice(COHEN_DATASETS), required=True,
              help="Dataset the model was trained on (sets its normalisation and input size).")
@click.option("--sigma", type=Sigma(), required=True, help="Noise level the model was trained at (their noise_sd).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/peer-checkpoints"),
              show_default=True, help="Checkpoint root: writes OUT/<dataset>/<name>.safetensors and its index entry "
                                      "(a root of its own: bench run --methods is takes the newest FoR-0 model per σ).")
@click.option("--name", default=None, help="File stem of the imported checkpoint [default: <arch>-cohen-s<sigma>].")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def cohen_model(checkpoint: Path, dataset: str, sigma: float, out: Path, name: str | None, quiet: bool) -> None:
    """Import CHECKPOINT (a checkpoint.pth.tar of Cohen et al.'s train.py) as an IS-RS baseline.

    The file is read with torch.load(weights_only=True) only: code in it never runs, and a file that needs
    more than tensors and plain containers is refused. The architecture (cifar_resnet20, cifar_resnet110,
    resnet50) is rebuilt here, every key and shape is checked, and the result is a safetensors checkpoint with
    the source's name and sha256 in its metadata, found by `bench run --methods is`. It has no LS-RS twin.
    """
    from bench.peers.importers import import_cohen_model
    from lsrs.cohen_models import NO_TWIN

    done = import_cohen_model(checkpoint, dataset, sigma, out, name)
    if not quiet:
        Console().print(
            f"imported {done.entry['arch']} (σ = {sigma:g}, {dataset}) from {checkpoint.name} to {done.path} "
            f"(sha256 {done.sha256[:12]}); {NO_TWIN}", highlight=False,
        )


@command.command("certify-log")
@click.argument("log", type=_FILE)
@click.option("--dataset", type=DATASET, required=True,
              help="Dataset the log certifies: any registered dataset (e.g. mnist for a published MNIST log).")
@click.option("--sigma", type=Sigma(positive=True), required=True, help="Noise level of the smoothed classifier.")
@click.option("--n", "n", type=click.IntRange(min=1), default=None,
              help="Estimation samples the log used (not in the file; stored as unknown if not given).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Failure probability the log used (not in the file; unknown if not given).")
@click.option("--arch", default=None, help="Architecture of the certified model, as a label (unknown if not given).")
@click.option("--name", default=None, help="Name of the run in reports [default: the --out folder's name].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder to write (must not hold a run).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
def certify_log(log: Path, dataset: str, sigma: float, n: int | None, alpha: float | None, arch: str | None,
                name: str | None, out: Path, quiet: bool) -> None:
    """Import LOG (the per-image output of Cohen et al.'s certify.py) as a run folder for `bench report`.

    \b
    LOG: tab-separated 'idx label predict radius correct time' (predict -1 = abstain; time in seconds or
    H:MM:SS.ffffff). A truncated last line is dropped with a warning. A line is refused (naming its number)
    when a field is not a plain decimal number, its image is beyond the dataset's test set, a class is not
    the dataset's, its time is negative, or its radius exceeds σ·Φ⁻¹(α^(1/n)) for the given --n and --alpha. What the log does not hold (n0, the
    counts, pA's bound, the device, ...) is stored as null and listed in the manifest's 'imported' entry.
    """
    from bench.peers.importers import LogDeclaration, import_certify_log

    declared = LogDeclaration(dataset=dataset, sigma=sigma, n=n, alpha=alpha, name=name, arch=arch)
    run_dir, parsed, manifest = import_certify_log(log, declared, out)
    err = Console(stderr=True)
    for note in parsed.warnings:
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    if not quiet:
        Console().print(
            f"imported {len(parsed.rows)} images of {log.name} (sha256 {parsed.sha256[:12]}) as run "
            f"{manifest['imported']['name']!r} in {run_dir}; unknown: {', '.join(manifest['imported']['unknown_columns'])}",
            highlight=False,
        )
