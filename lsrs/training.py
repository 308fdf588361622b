"""Gaussian-noise training of IS-RS baselines and LS-RS twins (paper, Section 3 and Appendix B).

Randomized smoothing certifies well only if the base classifier is accurate under the noise it will be
smoothed with, so each model is trained on noisy inputs at the sigma it will be certified at:

* IS-RS (FoR 0, ``noise="input"``): the whole network sees ``x + N(0, sigma^2 I)``;
* LS-RS (FoR k > 0, ``noise="latent"``): the classifier sees ``z + N(0, sigma^2 I)`` with ``z = fe(x)``,
  the latent that LS-RS smooths over (Eq. 4-5); the orthogonal encoder is trained through ``z``.
* the fully orthogonal Lipschitz twin (FoR 18/18, ``noise="none"``, sigma 0): no noise; it is certified by
  its logit margin, so it is trained with the margin loss (``loss="margin"``, :func:`lsrs.margin.margin_loss`).

The recipe defaults to the paper's (Appendix B): SGD with momentum 0.9, learning rate divided by 10 every
30 epochs; CIFAR-10 100 epochs at lr 0.01, ImageNet 90 epochs at lr 0.1. Weight decay is not given in the
paper; the default 1e-4 is that of Cohen et al. (2019).

Training state is written after every epoch (safetensors, no pickle) and an interrupted run resumes from
its last finished epoch. Shuffling, augmentation and noise of epoch ``e`` come from generators seeded by
``(seed, e)``, so a resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lsrs.checkpoint import CheckpointError, save_tensors_atomic, state_tensors
from lsrs.data import TensorImageDataset
from lsrs.devices import resolve_device
from lsrs.margin import margin_loss
from lsrs.models import is_lipschitz_twin
from lsrs.noise import derive_seed
from lsrs.training_choices import LOSSES, NOISE_LOCATIONS, OPTIMIZERS, SCHEDULES

STATE_FORMAT = "lsrs-train-state/1"


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of one noise-augmented training run (everything that changes the resulting weights)."""

    sigma: float
    epochs: int
    lr: float
    batch_size: int
    noise: str = "input"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 30
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    seed: int = 0
    loss: str = "ce"
    margin_eps: float = 0.0
    temperature: float = 1.0
    optimizer: str = "sgd"
    schedule: str = "step"
    distill: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.noise not in NOISE_LOCATIONS:
            raise ValueError(f"noise must be one of {NOISE_LOCATIONS}, got {self.noise!r}")
        if self.noise == "none" and self.sigma != 0:
            raise ValueError(f"noise='none' trains without noise: sigma must be 0, got {self.sigma!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not (self.margin_eps >= 0 and self.temperature > 0):
            raise ValueError(f"need margin_eps >= 0 and temperature > 0, got {self.margin_eps!r}, {self.temperature!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        for name in ("epochs", "batch_size", "lr_step"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not (0.0 <= self.distill <= 1.0 and self.distill_temperature > 0):
            raise ValueError(f"need 0 <= distill <= 1 and distill_temperature > 0, got {self.distill!r}, "
                             f"{self.distill_temperature!r}")

    @property
    def per_batch_lr(self) -> bool:
        """True when the learning rate changes within an epoch (warm-up or the one-cycle schedule)."""
        return self.warmup_epochs > 0 or self.schedule == "onecycle"

    def lr_at(self, epoch: int, progress: float = 0.0) -> float:
        """Learning rate at ``progress`` in [0, 1) through 0-based ``epoch``.

        ``schedule="step"``: step decay ``lr * lr_gamma ** (epoch // lr_step)`` (paper, Appendix B), times
        a linear warm-up over the first ``warmup_epochs`` epochs when that is > 0 (0, the paper's recipe,
        by default). ``schedule="onecycle"``: the piecewise-linear "superconvergence" schedule with which
        Trockman & Kolter (2021) train Cayley networks: with ``t = (epoch + progress) / epochs``, from
        ``lr/50`` at ``t = 0`` up to ``lr`` at ``t = 0.4``, down to ``lr/20`` at ``t = 0.8`` and to
        ``lr/200`` at ``t = 1`` (their end points 0 replaced by small positive rates, so that no step is
        wasted).
        """
        if self.schedule == "onecycle":
            return self.lr * _piecewise_linear((epoch + progress) / self.epochs, ONECYCLE_KNOTS)
        lr = self.lr * self.lr_gamma ** (epoch // self.lr_step)
        if self.warmup_epochs > 0:
            lr *= min(1.0, (epoch + progress + 1e-12) / self.warmup_epochs)
        return lr

    def as_dict(self) -> dict:
        """The recipe; the margin-loss fields only when ``loss != "ce"`` and the optimiser, schedule and
        distillation fields only when they differ from the paper's recipe (so older hashes hold)."""
        out = asdict(self)
        if self.loss == "ce":
            for key in ("loss", "margin_eps", "temperature"):
                del out[key]
        for key, default in RECIPE_DEFAULTS.items():
            if out[key] == default:
                del out[key]
        if self.distill == 0:
            out.pop("distill_temperature", None)
        return out

    def objective(self, logits: torch.Tensor, target: torch.Tensor,
                  teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy, or the Lipschitz-margin loss of :func:`lsrs.margin.margin_loss` (L = 1); with
        ``distill > 0`` mixed with :func:`distillation_loss` against ``teacher_logits``."""
        if self.loss == "margin":
            hard = margin_loss(logits, target, self.margin_eps, self.temperature)
        else:
            hard = nn.functional.cross_entropy(logits, target)
        if self.distill == 0:
            return hard
        if teacher_logits is None:
            raise ValueError("distill > 0 needs the teacher's logits")
        soft = distillation_loss(logits, teacher_logits, self.distill_temperature)
        return (1 - self.distill) * hard + self.distill * soft


RECIPE_DEFAULTS = {"optimizer": "sgd", "schedule": "step", "distill": 0.0}
"""The paper's values of the fields that :meth:`TrainConfig.as_dict` leaves out when unchanged."""

ONECYCLE_KNOTS = ((0.0, 0.02), (0.4, 1.0), (0.8, 0.05), (1.0, 0.005))
"""``(t, lr / lr_max)`` knots of the one-cycle schedule (:meth:`TrainConfig.lr_at`)."""


def _piecewise_linear(t: float, knots: tuple[tuple[float, float], ...]) -> float:
    """Linear interpolation through ``knots`` (sorted by ``t``), constant outside them."""
    if t <= knots[0][0]:
        return knots[0][1]
    for (t0, y0), (t1, y1) in zip(knots, knots[1:]):
        if t <= t1:
            return y0 + (y1 - y0) * (t - t0) / (t1 - t0)
    return knots[-1][1]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    The ``T^2`` factor keeps the gradient's scale independent of ``T``; the teacher gets no gradient.
    """
    t = temperature
    log_p_student = nn.functional.log_softmax(student_logits / t, dim=1)
    log_p_teacher = nn.functional.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return t * t * kl.mean()


@dataclass
class EpochStats:
    """Mean training loss and accuracy (on the noisy inputs) of one epoch."""

    epoch: int
    loss: float
    acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """Outcome of :func:`fit`: per-epoch history and the final clean / noisy test accuracies."""

    history: list[EpochStats] = field(default_factory=list)
    clean_acc: float = float("nan")
    noisy_acc: float = float("nan")
    train_seconds: float = 0.0
    resumed_from: int = 0

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss if self.history else float("nan")

    @property
    def final_acc(self) -> float:
        return self.history[-1].acc if self.history else float("nan")


def noise_location(model: nn.Module) -> str:
    """``"input"`` for the IS-RS baseline (FoR 0), ``"latent"`` for an LS-RS twin (FoR > 0), ``"none"`` for
    the fully orthogonal Lipschitz twin (:func:`lsrs.models.is_lipschitz_twin`)."""
    if is_lipschitz_twin(model):
        return "none"
    return "latent" if int(getattr(model, "fors", 0)) > 0 else "input"


def noisy_logits(
    model: nn.Module, x: torch.Tensor, sigma: float, noise: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Logits of ``model`` with N(0, sigma^2 I) added at the input (IS) or at the latent z = fe(x) (LS);
    ``noise="none"``: the plain logits."""
    if noise == "none":
        return model(x)
    if noise == "input":
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return model(x)
    z = model.encoder(x)
    if sigma > 0:
        z = z + sigma * torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return model.classifier(z)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    device: torch.device = torch.device("cpu"),
    drop_singleton: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``(x, y)`` on ``device``; in-memory datasets are gathered directly (no DataLoader).

    The order and augmentation depend only on ``seed``. ``drop_singleton`` skips a last batch of one image
    (BatchNorm cannot train on it).
    """
    n = len(dataset)  # type: ignore[arg-type]
    cpu_gen = _generator(torch.device("cpu"), seed)
    if isinstance(dataset, TensorImageDataset):
        order = torch.randperm(n, generator=cpu_gen) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if drop_singleton and len(idx) == 1 and n > 1:
                break
            x, y = dataset.batch(idx, generator=cpu_gen)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=cpu_gen,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_singleton and n % batch_size == 1 and n > 1,
        persistent_workers=False,
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)


def train_epoch(
    model: nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    *,
    device: torch.device,
    workers: int = 0,
    on_batch: Callable[[int, int, float, float], None] | None = None,
    teacher: nn.Module | None = None,
) -> EpochStats:
    """One epoch of noise-augmented cross-entropy training; returns the epoch's mean loss and accuracy.

    With ``config.distill > 0`` the ``teacher`` (the IS-RS baseline at the same sigma, in eval mode) sees
    ``x + N(0, sigma^2 I)`` from its own seeded generator, the noise it was trained and is certified with."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr_at(epoch)
    model.train()
    torch.manual_seed(derive_seed(config.seed, "global", epoch))  # any layer drawing from torch's global RNG
    noise_gen = _generator(device, derive_seed(config.seed, "noise", epoch))
    teacher_gen = _generator(device, derive_seed(config.seed, "teacher-noise", epoch))
    if config.distill > 0 and teacher is None:
        raise ValueError("distill > 0 needs a teacher")
    n_batches = math.ceil(len(dataset) / config.batch_size)  # type: ignore[arg-type]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    started = time.perf_counter()
    batches = iterate_batches(
        dataset, config.batch_size, shuffle=True, seed=derive_seed(config.seed, "data", epoch),
        workers=workers, device=device, drop_singleton=True,
    )
    for i, (x, y) in enumerate(batches):
        if config.per_batch_lr:
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(epoch, i / n_batches)
        teacher_logits = None
        if config.distill > 0:
            with torch.no_grad():
                teacher_logits = noisy_logits(teacher, x, config.sigma, "input", teacher_gen)
        logits = noisy_logits(model, x, config.sigma, config.noise, noise_gen)
        loss = config.objective(logits, y, teacher_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if on_batch is not None:
            on_batch(i + 1, n_batches, float(loss_sum) / seen, float(correct) / seen)
    if seen == 0:
        raise ValueError("the training set is empty")
    return EpochStats(epoch, float(loss_sum) / seen, float(correct) / seen, config.lr_at(epoch),
                      time.perf_counter() - started)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    sigma: float,
    noise: str,
    *,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    workers: int = 0,
) -> tuple[float, float]:
    """``(clean accuracy, noisy accuracy)`` of the base classifier on ``dataset``.

    The noisy accuracy uses one N(0, sigma^2 I) draw per image at the model's noise location (input for
    IS-RS, latent for LS-RS); for sigma = 0 it equals the clean accuracy.
    """
    model.eval()
    gen = _generator(device, derive_seed(seed, "eval-noise"))
    clean = noisy = total = 0
    for x, y in iterate_batches(dataset, batch_size, shuffle=False, seed=0, workers=workers, device=device):
        if noise == "latent":
            z = model.encoder(x)
            clean += int((model.classifier(z).argmax(1) == y).sum())
            if sigma > 0:
                zn = z + sigma * torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
                noisy += int((model.classifier(zn).argmax(1) == y).sum())
        else:
            clean += int((model(x).argmax(1) == y).sum())
            if sigma > 0:
                xn = x + sigma * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                noisy += int((model(xn).argmax(1) == y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("the test set is empty")
    return clean / total, (noisy if sigma > 0 else clean) / total


@torch.no_grad()
def warm_start_classifier(twin: nn.Module, baseline: nn.Module) -> list[str]:
    """Copy the baseline's tensors into the twin's classifier part; returns the copied state-dict keys.

    Every layer after the split is one of the baseline's own layers under the same name (``block5``,
    ``head``, ... in :func:`lsrs.models._assemble`), so the twin's classifier starts as the trained
    baseline's (weights and BatchNorm statistics) and only the orthogonal encoder starts from scratch.
    Raises ``ValueError`` when a classifier tensor has no counterpart of the same shape.
    """
    source = baseline.classifier.state_dict()
    target = twin.classifier.state_dict()
    missing = [k for k, v in target.items() if k not in source or source[k].shape != v.shape]
    if missing:
        raise ValueError(f"the baseline has no tensor of the same shape for {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}: not the twin's baseline")
    twin.classifier.load_state_dict({k: source[k].clone() for k in target}, strict=True)
    return list(target)


def config_hash(payload: dict) -> str:
    """Short stable hash of a JSON-serialisable description of a training run."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ state files
def save_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[EpochStats],
    run_hash: str, train_seconds: float,
) -> None:
    """Training state after 0-based ``epoch`` (weights, momentum buffers, history) as one safetensors file."""
    tensors = state_tensors(model, "model.")
    opt = optimizer.state_dict()
    for idx, slots in opt["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().to("cpu").clone().contiguous()
    meta = {
        "format": STATE_FORMAT,
        "run_hash": run_hash,
        "epochs_done": epoch + 1,
        "train_seconds": train_seconds,
        "history": [asdict(h) for h in history],
    }
    save_tensors_atomic(tensors, path, {"format": STATE_FORMAT, "state": json.dumps(meta)})


def read_state_meta(path: Path) -> dict | None:
    """The JSON part of a state file, or ``None`` when it is absent or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("state", "null"))
    except Exception:  # noqa: BLE001 - a broken state file just means "start over"
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == STATE_FORMAT else None


def load_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights and momentum buffers saved by :func:`save_state`; returns its JSON part."""
    from safetensors.torch import load_file

    meta = read_state_meta(path)
    if meta is None:
        raise CheckpointError(f"{path}: not a training state file")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: training state does not match the model ({exc})") from None
    opt = optimizer.state_dict()
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt["state"] = state
    optimizer.load_state_dict(opt)
    return meta


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (paper, Appendix B), or Adam (``optimizer="adam"``, as Trockman & Kolter 2021 train
    Cayley networks; ``momentum`` is then Adam's beta1)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.momentum, 0.999),
                                weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def fit(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset | None,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    workers: int = 0,
    state_path: str | Path | None = None,
    run_hash: str | None = None,
    on_batch: Callable[[int, int, float, float], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    eval_batch_size: int = 256,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train ``model`` with Gaussian noise per ``config``, then measure clean and noisy test accuracy.

    With ``state_path``, the state is saved after each epoch and a matching state file (same ``run_hash``,
    default: the hash of ``config``) is resumed from its last finished epoch. ``on_epoch`` runs after each
    epoch's state is saved (an exception there interrupts training, as a crash would). ``teacher``: the
    model distilled from when ``config.distill > 0`` (put in eval mode, never trained).
    """
    dev = resolve_device(device)
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
        teacher.requires_grad_(False)
    optimizer = make_optimizer(model, config)
    run_hash = run_hash or config_hash(config.as_dict())
    result = TrainResult()
    start_epoch = 0
    path = Path(state_path) if state_path is not None else None
    if path is not None:
        meta = read_state_meta(path)
        if meta is not None and meta.get("run_hash") == run_hash and 0 < meta["epochs_done"] <= config.epochs:
            load_state(path, model, optimizer)
            model.to(dev)
            start_epoch = int(meta["epochs_done"])
            result.history = [EpochStats(**h) for h in meta.get("history", [])]
            result.train_seconds = float(meta.get("train_seconds", 0.0))
            result.resumed_from = start_epoch
    for epoch in range(start_epoch, config.epochs):
        stats = train_epoch(model, train_set, optimizer, config, epoch, device=dev, workers=workers,
                            on_batch=on_batch, teacher=teacher)
        result.history.append(stats)
        result.train_seconds += stats.seconds
        if path is not None:
            save_state(path, model, optimizer, epoch, result.history, run_hash, result.train_seconds)
        if on_epoch is not None:
            on_epoch(stats)
    if test_set is not None:
        result.clean_acc, result.noisy_acc = evaluate(
            model, test_set, config.sigma, config.noise, batch_size=eval_batch_size,
            seed=config.seed, device=dev, workers=workers,
        )
    model.eval()
    return result


__all__ = [
    "EpochStats",
    "LOSSES",
    "NOISE_LOCATIONS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TrainConfig",
    "TrainResult",
    "config_hash",
    "distillation_loss",
    "evaluate",
    "fit",
    "iterate_batches",
    "load_state",
    "make_optimizer",
    "noise_location",
    "noisy_logits",
    "read_state_meta",
    "save_state",
    "train_epoch",
    "warm_start_classifier",
]
