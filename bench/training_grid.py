"""Train the paired grid of ``bench train`` / ``bench demo``: the IS-RS baseline and its LS-RS twins per sigma.

For each FoR ``k`` in ``fors`` and each sigma in ``sigmas`` one model is trained with the same recipe
(paper, Appendix B): FoR 0 is the plain baseline trained with input noise (IS-RS), FoR ``k > 0`` the twin
whose first ``k`` layers form the orthogonal encoder, trained with latent noise (LS-RS); sigma 0 gives the
clean-accuracy rows of the paper's tables. The fully orthogonal Lipschitz twin (ResNet18 FoR 18/18) is
trained once, without noise and with the margin loss (:func:`lsrs.margin.margin_loss`, target radius
``margin_eps``, ``temperature``), and indexed at sigma 0 whatever ``sigmas`` holds: its certificate does not
depend on a noise level. Checkpoints go to ``<out>/<dataset>/`` with an ``index.json`` that ``bench run`` reads.

Re-running is cheap: a finished checkpoint whose recipe hash matches is reused (after verifying its sha256),
a half-trained one resumes from its last finished epoch (the state file written after every epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.devices import device_name, resolve_device
from lsrs import checkpoint as ckpt
from lsrs.data import DatasetInfo, dataset_info, load_dataset
from lsrs.models import LIPSCHITZ_FORS
from lsrs.noise import derive_seed
from lsrs.training import TrainConfig, config_hash, fit, noise_location, read_state_meta

MARGIN_EPS = 0.5
"""Default target l2 radius of the Lipschitz twin's margin loss (the offset is sqrt(2) * MARGIN_EPS)."""
MARGIN_TEMPERATURE = 0.25
"""Default temperature of the margin loss (Prach & Lampert 2022 offset cross-entropy)."""


def grid_pairs(arch: str, fors: Sequence[int], sigmas: Sequence[float]) -> list[tuple[int, float]]:
    """The (FoR, sigma) models to train: every pair, except that the Lipschitz twin is trained once at sigma 0."""
    lip = LIPSCHITZ_FORS.get(arch)
    pairs: list[tuple[int, float]] = []
    for k in fors:
        for s in [0.0] if k == lip else sigmas:
            if (k, s) not in pairs:
                pairs.append((k, s))
    return pairs


class GridConfigError(ValueError):
    """Invalid grid request (unknown dataset or architecture, FoR not available, bad device)."""


def checkpoint_name(arch: str, width: int, fors: int, sigma: float) -> str:
    """File stem of one grid model, e.g. ``resnet18-w8-fors5-sigma0.25``."""
    return f"{arch}-w{width}-fors{fors}-sigma{sigma:g}"


def check_device(device: str | torch.device | None) -> torch.device:
    """Resolve ``device`` (``auto`` = CUDA if present) and fail clearly if it is unusable here."""
    return resolve_device(device, error=GridConfigError)


def model_config_for(arch: str, info: DatasetInfo, fors: int, width: int) -> dict:
    """Builder kwargs of one grid model (``width``: ResNet18's base width, WRN-34's widen factor)."""
    common = {
        "num_classes": info.num_classes, "fors": fors, "in_size": info.in_size,
        "in_channels": info.in_channels, "mean": list(info.mean),
    }
    if arch == "wide_resnet34":
        return {**common, "widen": width, "stem_stride": 4 if info.in_size >= 128 else 1}
    return {**common, "width": width}


def _validate(info: DatasetInfo, arch: str, fors: Sequence[int], sigmas: Sequence[float]) -> None:
    from lsrs import models

    try:
        valid = tuple(models.valid_fors(arch))
    except Exception as exc:  # noqa: BLE001 - unknown architecture
        raise GridConfigError(f"unknown architecture {arch!r} ({exc})") from None
    bad = [k for k in fors if k not in valid]
    if bad:
        raise GridConfigError(
            f"FoR {', '.join(map(str, bad))} not available for {arch}; choose from {','.join(map(str, valid))}"
        )
    if not fors or not sigmas:
        raise GridConfigError("give at least one FoR and one sigma")
    for s in sigmas:
        if not (math.isfinite(s) and s >= 0):
            raise GridConfigError(f"sigma must be a finite number >= 0, got {s!r}")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _reusable(weights: Path, run_hash: str) -> dict | None:
    """Metadata of a finished checkpoint trained with recipe ``run_hash`` that still verifies, else None."""
    side = ckpt.sidecar_path(weights)
    if not (weights.is_file() and side.is_file()):
        return None
    try:
        meta = ckpt.read_meta(weights)
        if meta.get("train_hash") != run_hash:
            return None
        _, meta = ckpt.load_checkpoint(weights, device="cpu")
    except ckpt.CheckpointError:
        return None
    return meta


def train_grid(
    dataset: str,
    fors: Sequence[int],
    sigmas: Sequence[float],
    out: str | Path,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    width: int | None = None,
    data_dir: str | Path | None = None,
    quiet: bool = False,
    workers: int = 0,
    download: bool = False,
    arch: str | None = None,
    lr_step: int | None = None,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    retrain: bool = False,
    threads: int | None = None,
    console: Console | None = None,
    on_epoch: Callable[[dict, int], None] | None = None,
    margin_eps: float = MARGIN_EPS,
    temperature: float = MARGIN_TEMPERATURE,
) -> list[dict]:
    """Train (or reuse, or resume) every (FoR, sigma) model of the grid; returns their index entries.

    Defaults (epochs, lr, lr step, batch size, width, architecture) come from :data:`lsrs.data.DATASETS`.
    Raises :class:`GridConfigError` for a bad request and :class:`lsrs.data.DatasetMissingError` when the
    data is absent. ``on_epoch(entry_so_far, epoch)`` is called after every epoch (tests use it).
    ``threads`` sets torch's intra-op CPU threads for the call (1 is fastest on a busy, shared CPU).
    """
    if threads is not None and threads < 1:
        raise GridConfigError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train_grid(
            dataset, fors, sigmas, out, epochs=epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
            width=width, data_dir=data_dir, quiet=quiet, workers=workers, download=download, arch=arch,
            lr_step=lr_step, momentum=momentum, weight_decay=weight_decay, retrain=retrain, console=console,
            on_epoch=on_epoch, margin_eps=margin_eps, temperature=temperature,
        )
    finally:
        torch.set_num_threads(before)


def _train_grid(
    dataset: str,
    fors: Sequence[int],
    sigmas: Sequence[float],
    out: str | Path,
    *,
    epochs: int | None,
    lr: float | None,
    batch_size: int | None,
    device: str | torch.device,
    seed: int,
    width: int | None,
    data_dir: str | Path | None,
    quiet: bool,
    workers: int,
    download: bool,
    arch: str | None,
    lr_step: int | None,
    momentum: float,
    weight_decay: float,
    retrain: bool,
    console: Console | None,
    on_epoch: Callable[[dict, int], None] | None,
    margin_eps: float,
    temperature: float,
) -> list[dict]:
    try:
        info = dataset_info(dataset)
    except ValueError as exc:
        raise GridConfigError(str(exc)) from None
    arch = arch or info.default_arch
    width = int(width or info.default_width)
    fors = [int(k) for k in fors]
    sigmas = [float(s) for s in sigmas]
    _validate(info, arch, fors, sigmas)
    dev = check_device(device)
    epochs = int(epochs or info.epochs)
    lr = float(lr or info.lr)
    batch_size = int(batch_size or info.batch_size)
    lr_step = int(lr_step or info.lr_step)
    console = console or Console(stderr=True, quiet=quiet)
    out = Path(out)
    folder = out / dataset

    train_set = load_dataset(dataset, "train", data_dir=data_dir, download=download)
    test_set = load_dataset(dataset, "test", data_dir=data_dir, download=download)
    n_batches = math.ceil(len(train_set) / batch_size)

    from lsrs.models import build_model

    try:  # bad widths etc. fail here, before anything is trained
        build_model(arch, **model_config_for(arch, info, fors[0], width))
    except (TypeError, ValueError) as exc:
        raise GridConfigError(f"cannot build {arch} (width {width}): {exc}") from None

    entries: list[dict] = []
    grid = grid_pairs(arch, fors, sigmas)
    progress = _progress(console)
    with progress:
        overall = progress.add_task(f"{dataset}: {len(grid)} models", total=len(grid))
        for k, sigma in grid:
            model_config = model_config_for(arch, info, k, width)
            torch.manual_seed(derive_seed(seed, "init", arch, k))
            model = build_model(arch, **model_config)
            noise = noise_location(model)
            margin = {"loss": "margin", "margin_eps": margin_eps, "temperature": temperature} if noise == "none" else {}
            config = TrainConfig(
                sigma=sigma, epochs=epochs, lr=lr, batch_size=batch_size, noise=noise, momentum=momentum,
                weight_decay=weight_decay, lr_step=lr_step, seed=seed, **margin,
            )
            run_hash = config_hash({
                "dataset": dataset, "preprocessing": info.preprocessing, "arch": arch,
                "model": dict(model.config), "train": config.as_dict(),
            })
            name = checkpoint_name(arch, width, k, sigma)
            weights = folder / f"{name}.safetensors"
            state = folder / f"{name}.state.safetensors"
            label = f"FoR {k:>2}/{model.fors_total} σ={sigma:<4g} {noise:>6}"

            meta = None if retrain else _reusable(weights, run_hash)
            if meta is not None:
                entry = ckpt.index_entry(meta, weights.name, meta["sha256"])
                entry["status"] = "reused"
                progress.console.print(
                    f"[dim]reused[/] {label}: clean {meta['clean_acc']:.1%}, noisy {meta['noisy_acc']:.1%} "
                    f"({weights.name})"
                )
            else:
                if retrain:
                    state.unlink(missing_ok=True)
                saved = read_state_meta(state)
                done = int(saved["epochs_done"]) if saved and saved.get("run_hash") == run_hash else 0
                task = progress.add_task(label, total=epochs * n_batches, completed=min(done, epochs) * n_batches)
                epoch_no = [done]

                def on_batch(i: int, n: int, loss: float, acc: float, *, _task=task, _label=label,
                             _epoch=epoch_no) -> None:
                    progress.update(
                        _task, completed=_epoch[0] * n_batches + i,
                        description=f"{_label} · epoch {_epoch[0] + 1}/{epochs} · loss {loss:.3f} · acc {acc:.1%}",
                    )

                def after_epoch(stats, *, _epoch=epoch_no, _k=k, _sigma=sigma) -> None:
                    _epoch[0] = stats.epoch + 1
                    if on_epoch is not None:
                        on_epoch({"fors": _k, "sigma": _sigma}, stats.epoch)

                started = time.perf_counter()
                result = fit(
                    model, train_set, test_set, config, device=dev, workers=workers, state_path=state,
                    run_hash=run_hash, on_batch=on_batch, on_epoch=after_epoch,
                )
                if result.resumed_from:
                    progress.console.print(f"[dim]resumed[/] {label} from epoch {result.resumed_from}/{epochs}")
                progress.update(task, completed=epochs * n_batches)
                meta = {
                    "dataset": dataset,
                    "preprocessing": info.as_dict(),
                    "sigma": sigma,
                    "noise": noise,
                    "epochs": epochs,
                    "lr": lr,
                    "lr_step": lr_step,
                    "lr_gamma": config.lr_gamma,
                    "momentum": momentum,
                    "weight_decay": weight_decay,
                    "batch_size": batch_size,
                    "seed": seed,
                    **margin,
                    "train_hash": run_hash,
                    "clean_acc": result.clean_acc,
                    "noisy_acc": result.noisy_acc,
                    "train_loss": result.final_loss,
                    "train_acc": result.final_acc,
                    "train_seconds": round(result.train_seconds, 3),
                    "history": [
                        {"epoch": h.epoch, "loss": h.loss, "acc": h.acc, "lr": h.lr, "seconds": round(h.seconds, 3)}
                        for h in result.history
                    ],
                    "device": device_name(dev),
                }
                digest = ckpt.save_checkpoint(weights, model.to("cpu"), meta)
                state.unlink(missing_ok=True)
                entry = ckpt.index_entry(ckpt.read_meta(weights), weights.name, digest)
                entry["status"] = "resumed" if result.resumed_from else "trained"
                progress.console.print(
                    f"[green]trained[/] {label}: clean {result.clean_acc:.1%}, noisy {result.noisy_acc:.1%}, "
                    f"{result.train_seconds:.1f} s ({time.perf_counter() - started:.1f} s wall)"
                )
                progress.remove_task(task)
            ckpt.update_index(out, dataset, [{k2: v for k2, v in entry.items() if k2 != "status"}])
            entries.append(entry)
            progress.advance(overall)
    return entries


__all__ = [
    "MARGIN_EPS", "MARGIN_TEMPERATURE", "GridConfigError", "check_device", "checkpoint_name", "grid_pairs",
    "model_config_for", "train_grid",
]
