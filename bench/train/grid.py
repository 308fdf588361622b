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
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

from bench.devices import device_name
from bench.train.defaults import (
    MARGIN_EPS,
    MARGIN_TEMPERATURE,
    MEASURED_TWIN_OPTIONS,
    PLAIN_DISTILL,
    PLAIN_DISTILL_TEMPERATURE,
)
from lsrs import checkpoint as ckpt
from lsrs.architectures import get_architecture
from lsrs.data import load_dataset
from lsrs.datasets import DatasetInfo, get_dataset
from lsrs.devices import resolve_device
from lsrs.noise import derive_seed
from lsrs.training import (
    TrainConfig,
    config_hash,
    fit,
    noise_location,
    read_state_meta,
    warm_start_classifier,
)


@dataclass(frozen=True)
class TwinRecipe:
    """What an LS-RS twin (latent noise, FoR 0 < k < the Lipschitz twin's) gets beyond the grid's recipe.

    * ``warm_start``: its classifier part (the baseline's own layers after the split) starts from the
      trained baseline at the same sigma (:func:`lsrs.training.warm_start_classifier`);
    * ``distill`` > 0: the loss is ``(1 - distill) * CE + distill * KD`` against that baseline's logits on
      ``x + N(0, sigma^2 I)`` at temperature ``distill_temperature`` (:func:`lsrs.training.distillation_loss`);
    * ``optimizer`` / ``lr`` / ``schedule`` / ``weight_decay``: the twin's own optimiser (``None``: the grid's).

    The baseline, and every other model, is trained exactly as without it; the epochs are the same for all
    models of a grid. The defaults are the paper's plain recipe (nothing extra).
    """

    warm_start: bool = False
    distill: float = PLAIN_DISTILL
    distill_temperature: float = PLAIN_DISTILL_TEMPERATURE
    optimizer: str | None = None
    lr: float | None = None
    schedule: str | None = None
    weight_decay: float | None = None

    @property
    def needs_baseline(self) -> bool:
        return self.warm_start or self.distill > 0

    def as_dict(self) -> dict:
        """The recipe as stored in a twin's checkpoint metadata (``twin_recipe``)."""
        return {"warm_start": self.warm_start, "distill": self.distill,
                "distill_temperature": self.distill_temperature, "optimizer": self.optimizer, "lr": self.lr,
                "schedule": self.schedule, "weight_decay": self.weight_decay}


def grid_pairs(arch: str, fors: Sequence[int], sigmas: Sequence[float]) -> list[tuple[int, float]]:
    """The (FoR, sigma) models to train: every pair, except that the Lipschitz twin is trained once at sigma 0."""
    lip = get_architecture(arch).lipschitz_fors
    pairs: list[tuple[int, float]] = []
    for k in fors:
        for s in [0.0] if k == lip else sigmas:
            if (int(k), float(s)) not in pairs:
                pairs.append((int(k), float(s)))
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
    """Builder kwargs of one grid model (``width`` sets the architecture's ``width_param``: ResNet18's base
    width, WRN-34's widen factor)."""
    return get_architecture(arch).config_for(info, fors, width)


def _validate(info: DatasetInfo, arch: str, fors: Sequence[int], sigmas: Sequence[float]) -> None:
    try:
        valid = tuple(get_architecture(arch).fors)
    except ValueError as exc:  # unknown architecture, or a plugin that fails to load
        raise GridConfigError(str(exc)) from None
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


@dataclass(frozen=True)
class GridRecipe:
    """The settings shared by every model of one grid, defaults filled in (picklable: sent to workers)."""

    dataset: str
    info: DatasetInfo
    arch: str
    width: int
    epochs: int
    lr: float
    lr_step: int
    batch_size: int
    momentum: float
    weight_decay: float
    seed: int
    device: str
    data_dir: str | None
    download: bool
    workers: int
    margin_eps: float = MARGIN_EPS
    temperature: float = MARGIN_TEMPERATURE
    twin: TwinRecipe = TwinRecipe()


@dataclass(frozen=True)
class Baseline:
    """The trained IS-RS baseline a twin warm-starts from or distils from: its file and sha256."""

    weights: Path
    sha256: str


MEASURED_TWIN_RECIPES: dict[tuple[str, str], TwinRecipe] = {
    key: TwinRecipe(**options) for key, options in MEASURED_TWIN_OPTIONS.items()  # type: ignore[arg-type]
}
"""``bench train``'s default twin recipe per (architecture, dataset) (:data:`bench.train.defaults.
MEASURED_TWIN_OPTIONS`, where they were measured to help); the paper's plain recipe elsewhere."""


def default_twin_recipe(dataset: str, arch: str | None = None) -> TwinRecipe:
    """The measured twin recipe of ``arch`` (default: the dataset's paper architecture) on ``dataset``
    (:data:`MEASURED_TWIN_RECIPES`), else the plain recipe."""
    if arch is None:
        try:
            arch = get_dataset(dataset).default_arch
        except ValueError:  # an unknown dataset is refused by the grid itself, with the known names
            pass
    return MEASURED_TWIN_RECIPES.get((str(arch), dataset), TwinRecipe())


@dataclass
class ModelPlan:
    """One (FoR, σ) model of the grid: its freshly initialised network, recipe hash and files."""

    fors: int
    sigma: float
    model: torch.nn.Module
    config: TrainConfig
    run_hash: str
    weights: Path
    state: Path
    label: str
    baseline: Baseline | None = None
    twin: TwinRecipe | None = None


Event = tuple
"""A progress event: ``("start", name, label, total, done)``, ``("batch", name, completed, description)``,
``("end", name)``, ``("epoch", fors, sigma, epoch)`` or ``("print", text)``; :class:`_GridView` shows them."""


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
    processes: int = 1,
    console: Console | None = None,
    on_epoch: Callable[[dict, int], None] | None = None,
    margin_eps: float = MARGIN_EPS,
    temperature: float = MARGIN_TEMPERATURE,
    twin: TwinRecipe | None = None,
) -> list[dict]:
    """Train (or reuse, or resume) every (FoR, sigma) model of the grid; returns their index entries.

    Defaults (epochs, lr, lr step, batch size, width, architecture) come from the dataset's record
    (:func:`lsrs.datasets.get_dataset`).
    Raises :class:`GridConfigError` for a bad request and :class:`lsrs.data.DatasetMissingError` when the
    data is absent. ``on_epoch(entry_so_far, epoch)`` is called after every epoch (tests use it).
    ``threads`` sets torch's intra-op CPU threads for the call (1 is fastest on a busy, shared CPU).
    ``processes > 1`` trains that many models side by side in spawned worker processes (``threads`` each,
    default 1); every model is seeded on its own, so the weights are those of a one-process run.
    ``twin`` (:class:`TwinRecipe`) is what the LS-RS twins get beyond the grid's recipe; when it warm-starts
    or distils from the baseline, each twin is trained after the baseline at its sigma (trained too, and
    indexed, if absent from ``fors``; the returned entries are those of the grid).
    """
    if threads is not None and threads < 1:
        raise GridConfigError(f"threads must be >= 1, got {threads}")
    if processes < 1:
        raise GridConfigError(f"processes must be >= 1, got {processes}")
    recipe = _recipe(dataset, fors, sigmas, epochs=epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
                     width=width, data_dir=data_dir, download=download, workers=workers, arch=arch,
                     lr_step=lr_step, momentum=momentum, weight_decay=weight_decay, margin_eps=margin_eps,
                     temperature=temperature, twin=twin)
    folder = Path(out) / recipe.dataset
    view = _GridView(console or Console(stderr=True, quiet=quiet), on_epoch)
    grid = grid_pairs(recipe.arch, fors, sigmas)
    needed = _with_baselines(recipe, grid)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with view.progress:
            view.start_grid(f"{recipe.dataset}: {len(needed)} models", len(needed))
            entries = {} if retrain else _reused(recipe, Path(out), needed, view)
            todo = [key for key in needed if key not in entries]
            if processes > 1 and len(todo) > 1:
                trained = _train_parallel(recipe, folder, todo, entries, retrain, processes, threads or 1, view)
            else:
                trained = _train_sequential(recipe, folder, todo, entries, retrain, view)
            for key, entry in trained:
                entries[key] = _indexed(Path(out), recipe.dataset, entry, view)
    finally:
        torch.set_num_threads(before)
    return [entries[key] for key in grid]


def depends_on(recipe: GridRecipe, key: tuple[int, float]) -> tuple[int, float] | None:
    """The (FoR 0, sigma) baseline that model ``key`` warm-starts or distils from, or ``None``."""
    k, sigma = key
    if recipe.twin.needs_baseline and k > 0 and k != get_architecture(recipe.arch).lipschitz_fors:
        return (0, sigma)
    return None


def relative_cost(recipe: GridRecipe, key: tuple[int, float]) -> float:
    """Training time of model ``key`` in units of its baseline's: ``1 + 2 k / L`` for FoR ``k`` of the
    architecture's ``L`` layers (a deeper orthogonal part trains slower: the Cayley convolutions cost more than
    the plain ones they replace). A model of the scheduler's order, fitted to measured training times
    (docs/data/benchmarks.yaml)."""
    return 1.0 + 2.0 * key[0] / get_architecture(recipe.arch).fors_total


def schedule_priority(recipe: GridRecipe, key: tuple[int, float], waiting: set) -> tuple[float, float]:
    """Sort key of a ready model (smallest first): the longest chain first - its own cost plus that of the
    costliest waiting model that starts from it (critical-path scheduling) -, then the costlier model.

    A baseline whose twin is deeper than the Lipschitz twin starts first (it unblocks that twin); the
    Lipschitz twin starts beside the baselines of shallower twins rather than after them."""
    own = relative_cost(recipe, key)
    after = max((relative_cost(recipe, d) for d in waiting if depends_on(recipe, d) == key), default=0.0)
    return -(own + after), -own


def _with_baselines(recipe: GridRecipe, grid: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The grid with the baselines its twins depend on, baselines first (they unblock the twins)."""
    needed = list(grid)
    for key in grid:
        dep = depends_on(recipe, key)
        if dep is not None and dep not in needed:
            needed.append(dep)
    return sorted(needed, key=lambda key: key[0] != 0)


def _baseline_of(recipe: GridRecipe, folder: Path, key: tuple[int, float], entries: dict) -> Baseline | None:
    """The finished baseline that ``key`` depends on (from its index entry), or ``None`` if it needs none."""
    dep = depends_on(recipe, key)
    if dep is None:
        return None
    entry = entries[dep]
    return Baseline(folder / entry["path"], entry["sha256"])


def _recipe(dataset: str, fors: Sequence[int], sigmas: Sequence[float], *, epochs, lr, batch_size, device, seed,
            width, data_dir, download, workers, arch, lr_step, momentum, weight_decay, margin_eps,
            temperature, twin) -> GridRecipe:
    """Step 1: fill the dataset's defaults in and refuse a bad request before anything is trained."""
    try:
        info = get_dataset(dataset)
    except ValueError as exc:
        raise GridConfigError(str(exc)) from None
    arch = arch or info.default_arch
    _validate(info, arch, [int(k) for k in fors], [float(s) for s in sigmas])
    record = get_architecture(arch)
    arch = record.name  # a package.module:function builder is stored under its registered name
    width = width or record.default_width(dataset)
    if width is None:
        raise GridConfigError(f"{arch} has no default {record.width_param} for {dataset}: pass --width")
    width = int(width)
    check_device(device)
    from lsrs.models import build_model

    try:  # bad widths etc. fail here, before anything is trained
        build_model(arch, **model_config_for(arch, info, int(fors[0]), width))
    except (TypeError, ValueError) as exc:
        raise GridConfigError(f"cannot build {arch} (width {width}): {exc}") from None
    return GridRecipe(
        dataset=dataset, info=info, arch=arch, width=width, epochs=int(epochs or info.epochs),
        lr=float(lr or info.lr), lr_step=int(lr_step or info.lr_step), batch_size=int(batch_size or info.batch_size),
        momentum=momentum, weight_decay=weight_decay, seed=seed, device=str(device),
        data_dir=None if data_dir is None else str(data_dir), download=download, workers=workers,
        margin_eps=float(margin_eps), temperature=float(temperature), twin=twin or TwinRecipe(),
    )


def _plan_model(recipe: GridRecipe, folder: Path, k: int, sigma: float, baseline: Baseline | None = None) -> ModelPlan:
    """Step 2: the model's seeded initialisation, training config, recipe hash and checkpoint paths.

    ``baseline``: the trained baseline a twin depends on (:func:`depends_on`); its sha256 enters the twin's
    recipe hash, so a retrained baseline retrains the twins that start from it.
    """
    from lsrs.models import build_model

    torch.manual_seed(derive_seed(recipe.seed, "init", recipe.arch, k))
    model = build_model(recipe.arch, **model_config_for(recipe.arch, recipe.info, k, recipe.width))
    noise = noise_location(model)
    twin = recipe.twin if noise == "latent" and recipe.twin != TwinRecipe() else None
    if (depends_on(recipe, (k, sigma)) is not None) != (baseline is not None):
        raise ValueError(f"FoR {k} at sigma {sigma:g}: baseline {baseline} does not match the twin recipe")
    fields = {
        "sigma": sigma, "epochs": recipe.epochs, "lr": recipe.lr, "batch_size": recipe.batch_size, "noise": noise,
        "momentum": recipe.momentum, "weight_decay": recipe.weight_decay, "lr_step": recipe.lr_step,
        "seed": recipe.seed, **_margin(recipe, noise),
    }
    config = TrainConfig(**{**fields, **_twin_config(twin)})
    payload = {
        "dataset": recipe.dataset, "preprocessing": recipe.info.preprocessing, "arch": recipe.arch,
        "model": dict(model.config), "train": config.as_dict(),
    }
    if twin is not None:
        payload["twin"] = {**twin.as_dict(), "baseline_sha256": baseline.sha256 if baseline else None}
    name = checkpoint_name(recipe.arch, recipe.width, k, sigma)
    label = f"FoR {k:>2}/{model.fors_total} σ={sigma:<4g} {noise:>6}"
    return ModelPlan(k, sigma, model, config, config_hash(payload), folder / f"{name}.safetensors",
                     folder / f"{name}.state.safetensors", label, baseline, twin)


def _twin_config(twin: TwinRecipe | None) -> dict:
    """The :class:`TrainConfig` fields a twin recipe overrides (nothing for the paper's plain recipe)."""
    if twin is None:
        return {}
    out: dict = {"distill": twin.distill, "distill_temperature": twin.distill_temperature}
    for name in ("optimizer", "lr", "schedule", "weight_decay"):
        if getattr(twin, name) is not None:
            out[name] = getattr(twin, name)
    return out


def _margin(recipe: GridRecipe, noise: str) -> dict:
    """The margin-loss settings of the Lipschitz twin (trained without noise); nothing for the others."""
    if noise != "none":
        return {}
    return {"loss": "margin", "margin_eps": recipe.margin_eps, "temperature": recipe.temperature}


def _reused_entry(plan: ModelPlan) -> dict | None:
    """Step 3: the index entry of a finished checkpoint with the same recipe, else None (train it)."""
    meta = _reusable(plan.weights, plan.run_hash)
    if meta is None:
        return None
    return {**ckpt.index_entry(meta, plan.weights.name, meta["sha256"]), "status": "reused"}


def _reused(recipe: GridRecipe, out: Path, grid: list[tuple[int, float]], view: _GridView) -> dict:
    """Steps 2-3 for the whole grid: the (FoR, σ) models already trained with this recipe, indexed.

    ``grid`` lists the baselines before the twins that depend on them; a twin whose baseline must be
    trained (again) is not reused."""
    entries: dict = {}
    for k, sigma in grid:
        dep = depends_on(recipe, (k, sigma))
        if dep is not None and dep not in entries:
            continue
        plan = _plan_model(recipe, out / recipe.dataset, k, sigma, _baseline_of(recipe, out / recipe.dataset,
                                                                                 (k, sigma), entries))
        entry = _reused_entry(plan)
        if entry is not None:
            view.handle(("print", f"[dim]reused[/] {plan.label}: clean {entry['clean_acc']:.1%}, "
                                  f"noisy {entry['noisy_acc']:.1%} ({plan.weights.name})"))
            entries[k, sigma] = _indexed(out, recipe.dataset, entry, view)
    return entries


_DATA: dict[tuple, tuple] = {}


def _train_test(recipe: GridRecipe) -> tuple:
    """The train and test splits, loaded once per process."""
    key = (recipe.dataset, recipe.data_dir, recipe.download)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = tuple(load_dataset(recipe.dataset, split, data_dir=recipe.data_dir, download=recipe.download)
                           for split in ("train", "test"))
    return _DATA[key]


def _train_model(recipe: GridRecipe, plan: ModelPlan, retrain: bool, report: Callable[[Event], None]) -> dict:
    """Step 4: fit one model (resuming its state file), save the checkpoint; returns its index entry."""
    train_set, test_set = _train_test(recipe)
    dev = check_device(recipe.device)
    n_batches = math.ceil(len(train_set) / recipe.batch_size)
    if retrain:
        plan.state.unlink(missing_ok=True)
    saved = read_state_meta(plan.state)
    done = int(saved["epochs_done"]) if saved and saved.get("run_hash") == plan.run_hash else 0
    name, epochs = plan.weights.name, recipe.epochs
    report(("start", name, plan.label, epochs * n_batches, min(done, epochs) * n_batches))
    epoch_no = [done]

    def on_batch(i: int, n: int, loss: float, acc: float) -> None:
        report(("batch", name, epoch_no[0] * n_batches + i,
                f"{plan.label} · epoch {epoch_no[0] + 1}/{epochs} · loss {loss:.3f} · acc {acc:.1%}"))

    def after_epoch(stats) -> None:
        epoch_no[0] = stats.epoch + 1
        report(("epoch", plan.fors, plan.sigma, stats.epoch))

    started = time.perf_counter()
    teacher = _start_from_baseline(plan)
    result = fit(plan.model, train_set, test_set, plan.config, device=dev, workers=recipe.workers,
                 state_path=plan.state, run_hash=plan.run_hash, on_batch=on_batch, on_epoch=after_epoch,
                 teacher=teacher)
    if result.resumed_from:
        report(("print", f"[dim]resumed[/] {plan.label} from epoch {result.resumed_from}/{epochs}"))
    digest = ckpt.save_checkpoint(plan.weights, plan.model.to("cpu"), _checkpoint_meta(recipe, plan, result, dev))
    plan.state.unlink(missing_ok=True)
    report(("print", f"[green]trained[/] {plan.label}: clean {result.clean_acc:.1%}, noisy {result.noisy_acc:.1%}, "
                     f"{result.train_seconds:.1f} s ({time.perf_counter() - started:.1f} s wall)"))
    report(("end", name))
    entry = ckpt.index_entry(ckpt.read_meta(plan.weights), plan.weights.name, digest)
    return {**entry, "status": "resumed" if result.resumed_from else "trained"}


def _start_from_baseline(plan: ModelPlan) -> torch.nn.Module | None:
    """Warm-start the twin's classifier from its baseline (if its recipe says so); returns the teacher to
    distil from, or ``None``. The baseline is loaded with its indexed sha256 verified."""
    if plan.baseline is None or plan.twin is None:
        return None
    baseline, _ = ckpt.load_checkpoint(plan.baseline.weights, expected_sha256=plan.baseline.sha256)
    if plan.twin.warm_start:
        warm_start_classifier(plan.model, baseline)
    return baseline if plan.twin.distill > 0 else None


def _twin_meta(plan: ModelPlan) -> dict:
    """The twin recipe as recorded in the checkpoint: what it got and from which baseline file."""
    if plan.twin is None:
        return {}
    base = plan.baseline
    return {"twin_recipe": {**plan.twin.as_dict(), "baseline": None if base is None else base.weights.name,
                            "baseline_sha256": None if base is None else base.sha256}}


def _checkpoint_meta(recipe: GridRecipe, plan: ModelPlan, result, dev: torch.device) -> dict:
    """The metadata stored beside the weights: recipe, accuracies, history, device."""
    return {
        "dataset": recipe.dataset,
        "preprocessing": recipe.info.as_dict(),
        "sigma": plan.sigma,
        "noise": plan.config.noise,
        "epochs": recipe.epochs,
        "lr": plan.config.lr,
        "lr_step": recipe.lr_step,
        "lr_gamma": plan.config.lr_gamma,
        "momentum": recipe.momentum,
        "weight_decay": plan.config.weight_decay,
        "optimizer": plan.config.optimizer,
        "schedule": plan.config.schedule,
        **_twin_meta(plan),
        "batch_size": recipe.batch_size,
        "seed": recipe.seed,
        **_margin(recipe, plan.config.noise),
        "train_hash": plan.run_hash,
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


def _indexed(out: Path, dataset: str, entry: dict, view: _GridView) -> dict:
    """Step 5: add a finished model to ``index.json`` (at once, so an interrupted grid keeps it) and count it."""
    ckpt.update_index(out, dataset, [{k: v for k, v in entry.items() if k != "status"}])
    view.advance_grid()
    return entry


def _train_sequential(recipe: GridRecipe, folder: Path, todo: list[tuple[int, float]], entries: dict,
                      retrain: bool, view: _GridView) -> Iterator[tuple[tuple[int, float], dict]]:
    """Train the models one after the other in this process (``todo`` lists baselines first)."""
    done = dict(entries)
    for key in todo:
        plan = _plan_model(recipe, folder, *key, _baseline_of(recipe, folder, key, done))
        done[key] = _train_model(recipe, plan, retrain, view.handle)
        yield key, done[key]


_EVENTS: Any = None  # a worker's queue to the parent's progress display


def _init_worker(events: Any, threads: int) -> None:
    global _EVENTS
    _EVENTS = events
    torch.set_num_threads(threads)


def _train_in_worker(recipe: GridRecipe, folder: Path, k: int, sigma: float, retrain: bool,
                     baseline: Baseline | None) -> dict:
    return _train_model(recipe, _plan_model(recipe, folder, k, sigma, baseline), retrain, _EVENTS.put)


def _train_parallel(recipe: GridRecipe, folder: Path, todo: list[tuple[int, float]], entries: dict, retrain: bool,
                    processes: int, threads: int, view: _GridView) -> Iterator[tuple[tuple[int, float], dict]]:
    """Train the models in ``processes`` spawned workers; yields each model as it finishes.

    A model's weights depend only on its own seeds (and on the finished baseline it starts from), never on
    which process trains it or on what it trained before, so they equal those of :func:`_train_sequential`
    (with the same ``threads``). A twin that depends on a baseline is submitted once that baseline is done.
    """
    _train_test(recipe)  # the data must load here first: a missing dataset is the parent's one-line error
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    pool = ProcessPoolExecutor(max_workers=min(processes, len(todo)), mp_context=ctx,
                               initializer=_init_worker, initargs=(events, threads))
    done = dict(entries)
    waiting = set(todo)
    pending: dict = {}

    def submit_ready() -> None:
        # One model per free worker, chosen when the worker frees up: the longest chain of work first
        # (:func:`schedule_priority`), so that no long model starts last and runs alone.
        ready = [key for key in waiting if depends_on(recipe, key) is None or depends_on(recipe, key) in done]
        ready.sort(key=lambda key: schedule_priority(recipe, key, waiting))
        for key in ready[: max(0, processes - len(pending))]:
            waiting.discard(key)
            baseline = _baseline_of(recipe, folder, key, done)
            pending[pool.submit(_train_in_worker, recipe, folder, *key, retrain, baseline)] = key

    try:
        submit_ready()
        while pending:
            finished, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(events, view)
            for future in finished:
                key = pending.pop(future)
                done[key] = future.result()
                yield key, done[key]
            if finished:
                submit_ready()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    _drain(events, view)


def _drain(events: Any, view: _GridView) -> None:
    while True:
        try:
            view.handle(events.get_nowait())
        except queue.Empty:
            return


class _GridView:
    """The one progress display of a grid (in the parent): an overall bar and one bar per model in training."""

    def __init__(self, console: Console, on_epoch: Callable[[dict, int], None] | None) -> None:
        self.progress = _progress(console)
        self.on_epoch = on_epoch
        self.tasks: dict[str, Any] = {}
        self.overall: Any = None

    def start_grid(self, description: str, total: int) -> None:
        self.overall = self.progress.add_task(description, total=total)

    def advance_grid(self) -> None:
        self.progress.advance(self.overall)

    def handle(self, event: Event) -> None:
        kind = event[0]
        if kind == "start":
            _, name, label, total, done = event
            self.tasks[name] = self.progress.add_task(label, total=total, completed=done)
        elif kind == "batch" and event[1] in self.tasks:
            self.progress.update(self.tasks[event[1]], completed=event[2], description=event[3])
        elif kind == "end" and event[1] in self.tasks:
            self.progress.remove_task(self.tasks.pop(event[1]))
        elif kind == "epoch" and self.on_epoch is not None:
            self.on_epoch({"fors": event[1], "sigma": event[2]}, event[3])
        elif kind == "print":
            self.progress.console.print(event[1])


__all__ = [
    "MARGIN_EPS", "MARGIN_TEMPERATURE", "MEASURED_TWIN_RECIPES", "GridConfigError", "TwinRecipe", "check_device",
    "checkpoint_name", "default_twin_recipe", "depends_on", "grid_pairs", "model_config_for", "train_grid",
]
