"""``bench demo``: the whole pipeline on the embedded digits data, sized for a laptop CPU.

Preset (documented in the README): ResNet18 at width ``WIDTH`` on digits upsampled to 16×16, baseline
plus FoR twins ``FORS`` for σ in ``SIGMAS`` (σ = 0 gives the clean-accuracy rows), trained ``EPOCHS``
epochs each; certification with reduced ``N0``/``N`` on ``MAX_IMAGES`` test images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from bench import store
from bench.runner import RunConfig, RunOptions, run_grid


@dataclass(frozen=True)
class DemoPreset:
    fors: tuple[int, ...] = (1, 5, 9, 13)
    sigmas: tuple[float, ...] = (0.0, 0.25, 0.5)
    width: int = 16
    epochs: int = 8
    lr: float = 0.05
    batch_size: int = 128
    n0: int = 64
    n: int = 1_000
    alpha: float = 0.001
    max_images: int = 60
    skip: int = 6
    seed: int = 0
    extra: dict = field(default_factory=dict)


PRESET = DemoPreset()


def run_demo(results: Path, reports: Path, device: str, console: Console, quiet: bool = False,
             preset: DemoPreset = PRESET) -> dict:
    """Train (or reuse) the digits pairs, certify the grid, write the report; returns paths and the manifest."""
    from bench.report import write_report
    from bench.training_grid import train_grid

    checkpoints = results / "checkpoints"
    run_dir = results / "run"
    train_grid(
        "digits", [0, *preset.fors], list(preset.sigmas), checkpoints, epochs=preset.epochs, lr=preset.lr,
        batch_size=preset.batch_size, device=device, seed=preset.seed, width=preset.width, quiet=quiet,
    )
    config = RunConfig(
        dataset="digits", fors=preset.fors, sigmas=preset.sigmas, n0=preset.n0, n=preset.n, alpha=preset.alpha,
        skip=preset.skip, max_images=preset.max_images, seed=preset.seed, device_type=_device_type(device),
        checkpoints=str(checkpoints),
    )
    existing = store.read_manifest(run_dir)
    fresh = existing is not None and existing.get("config_hash") != config.config_hash()
    manifest = run_grid(config, RunOptions(out=run_dir, fresh=fresh, quiet=quiet, console=console),
                        _load_digits_test)
    report = write_report(run_dir, reports, fmt="markdown")
    return {"run": run_dir, "checkpoints": checkpoints, "report": report, "manifest": manifest}


def _device_type(device: str) -> str:
    from bench.runner import resolve_device

    return resolve_device(device).type


def _load_digits_test():
    from lsrs.data import load_dataset

    return load_dataset("digits", "test")
