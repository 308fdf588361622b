"""The certification grid: for every σ, IS-RS on the baseline and LS-RS on each FoR twin, same images.

One row per (image, method, FoR, σ) goes to the run store (:mod:`bench.store`). Noise is seeded per
(run seed, image, method, FoR, σ), so the radii do not depend on batch size or on where a run was resumed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
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

import lsrs
from bench import devices, store
from bench.devices import device_name
from bench.params import BenchUsageError
from lsrs.inference import fold_batchnorm
from lsrs.noise import derive_seed
from lsrs.smoothing import PRECISIONS, LatentSmooth, smooth_model
from lsrs.timing import Stopwatch

METHODS = ("is", "ls")
FLUSH_SECONDS = 10.0
FLUSH_ROWS = 64


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results (the hash of these fields identifies the run)."""

    dataset: str
    fors: tuple[int, ...]
    sigmas: tuple[float, ...]
    methods: tuple[str, ...] = METHODS
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    skip: int = 1
    max_images: int | None = None
    per_class: int | None = None
    seed: int = 0
    device_type: str = "cpu"
    precision: str = "fp32"
    checkpoints: str = "results/checkpoints"
    allow_sigma_mismatch: bool = False
    data_dir: str | None = None
    allow_pickle: bool = False
    fold_bn: bool = True
    sampler: str = "fixed"
    certificate: str = "binary"
    decide_radii: tuple[float, ...] = ()
    max_n: int = 100_000
    compile: str = "off"

    def config_hash(self) -> str:
        """Short hash of the fields that change results (paths to data and checkpoints excluded).

        ``compile`` enters the hash only when it is on, so runs made before the option existed keep their hash.
        """
        keyed = {k: v for k, v in asdict(self).items() if k not in ("checkpoints", "data_dir", "allow_pickle")}
        if keyed["compile"] == "off":
            del keyed["compile"]
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunOptions:
    """Options that do not change results: where, how big the batches, how chatty."""

    out: Path
    batch_size: int | None = None  # None = auto
    channels_last: bool = True
    fresh: bool = False
    quiet: bool = False
    stop_after: int | None = None  # testing aid: stop after this many certified images (simulated crash)
    precision: dict | None = None  # requested / resolved precision and why (bench.devices.resolve_precision)
    console: Console = field(default_factory=Console)


@dataclass(frozen=True)
class Job:
    """One (method, FoR, σ) configuration of the grid."""

    method: str
    fors: int
    sigma: float

    @property
    def key(self) -> str:
        return f"{self.method}-f{self.fors}-s{self.sigma:g}"

    @property
    def label(self) -> str:
        name = "IS-RS" if self.method == "is" else "LS-RS"
        return f"{name} FoR {self.fors} σ={self.sigma:g}"


@dataclass
class RunPlan:
    """What :meth:`GridRunner.plan` found: the jobs, their checkpoints, the images, and what is left to do."""

    jobs: list[Job]
    checkpoints: Checkpoints
    entries: dict[Job, dict]  # checkpoint index entry per job
    indices: list[int]  # selected test images
    manifest: dict
    todo: dict[Job, list[int]]  # images not yet stored, per job
    decided: set[tuple]  # (method, fors, sigma, idx, radius) of the stored decisions


def grid_jobs(config: RunConfig) -> list[Job]:
    """The grid in paper order: per σ, IS-RS (FoR 0) then LS-RS at each FoR."""
    jobs = []
    for sigma in config.sigmas:
        if "is" in config.methods:
            jobs.append(Job("is", 0, sigma))
        if "ls" in config.methods:
            jobs.extend(Job("ls", k, sigma) for k in config.fors if k > 0)
    return jobs


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; a device that is not here is a usage error (exit 2)."""
    return devices.resolve_device(device, error=BenchUsageError)


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def compile_classifier(classifier: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``torch.compile(classifier, mode=mode)``: ``reduce-overhead`` also replays CUDA graphs on GPU.

    The compiled module computes the same function up to rounding (like ``--fold-bn``), so it is a valid
    base classifier; compilation happens at the first call of each batch shape (the runner's warm-up).
    """
    if mode not in COMPILE_MODES or mode == "off":
        raise ValueError(f"compile mode must be one of {COMPILE_MODES[1:]}, got {mode!r}")
    return torch.compile(classifier, mode=mode)


def warm_up(smoother: LatentSmooth, x: torch.Tensor, n0: int, n: int, batch_size: int) -> float:
    """One untimed certification of ``x`` that runs every batch shape of a CERTIFY with ``n0`` and ``n``
    samples (n0's batches, a full batch and n's last one), so that per-shape set-up (oneDNN primitives,
    torch.compile graphs, CUDA graphs) never lands in the timings. Returns its seconds, for the record."""
    warm_n = min(n, batch_size + (n % batch_size or batch_size))
    with Stopwatch(smoother.device) as watch:
        smoother.certify(x, n0, warm_n, 0.5, batch_size, generator=0)
    return watch.seconds


def select_indices(labels: list[int], skip: int, max_images: int | None, per_class: int | None) -> list[int]:
    """Test-set indices to certify: every ``skip``-th image (optionally the first ``per_class`` of each class)."""
    indices = list(range(len(labels)))
    if per_class is not None:
        seen: dict[int, int] = {}
        kept = []
        for i in indices:
            if seen.get(labels[i], 0) < per_class:
                seen[labels[i]] = seen.get(labels[i], 0) + 1
                kept.append(i)
        indices = kept
    indices = indices[::skip]
    return indices[:max_images] if max_images is not None else indices


def auto_batch_size(model: torch.nn.Module, sample_shape: tuple[int, ...], n: int, device: torch.device) -> int:
    """Largest batch that fits: on CUDA a memory probe that halves on OOM; on CPU a fixed 256.

    The result never exceeds ``n`` (no point in a buffer larger than the sample count).
    """
    if device.type != "cuda":
        return max(1, min(256, n))
    batch = min(8192, n)
    while batch > 1:
        try:
            with torch.inference_mode():
                model(torch.zeros((batch, *sample_shape), device=device))
            torch.cuda.synchronize(device)
            return batch
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    return 1


class Checkpoints:
    """Finds and loads the baseline and FoR twins from the checkpoint index (``bench train`` writes it)."""

    def __init__(self, root: str | Path, dataset: str, device: torch.device, allow_pickle: bool = False) -> None:
        from lsrs import checkpoint

        self._ckpt = checkpoint
        self.root = Path(root)
        self.dataset = dataset
        self.device = device
        self.allow_pickle = allow_pickle
        try:
            self.entries = checkpoint.read_index(self.root, dataset)
        except checkpoint.CheckpointError as exc:  # its message names the file and how to train the pairs
            raise BenchUsageError(str(exc)) from None
        self.index_dir = self.root / dataset

    def entry(self, fors: int, sigma: float, allow_sigma_mismatch: bool) -> dict:
        found = self._ckpt.find_checkpoint(self.entries, fors, sigma)
        if found is not None:
            return found
        same_fors = [e for e in self.entries if int(e["fors"]) == fors]
        if not same_fors:
            have = sorted({int(e["fors"]) for e in self.entries})
            raise BenchUsageError(
                f"FoR {fors} is not in the checkpoint index {self.index_dir / 'index.json'} (it has FoR {have}); "
                f"train it with: bench train --dataset {self.dataset} --fors {fors} --sigmas {sigma:g}"
            )
        if not allow_sigma_mismatch:
            have = sorted({float(e['sigma']) for e in same_fors})
            raise BenchUsageError(
                f"no FoR {fors} checkpoint trained at σ={sigma:g} (trained σ: {have}); train it, or pass "
                "--allow-sigma-mismatch to certify with the nearest σ"
            )
        return min(same_fors, key=lambda e: abs(float(e["sigma"]) - sigma))

    def record(self, entry: dict) -> dict:
        """The manifest's record of a checkpoint: path, sha256 and the σ it was trained at."""
        return {
            "path": str(self.index_dir / entry["path"]),
            "sha256": entry.get("sha256"),
            "sigma_train": float(entry["sigma"]),
        }

    def load(self, entry: dict) -> torch.nn.Module:
        path = self.index_dir / entry["path"]
        try:
            model, _ = self._ckpt.load_checkpoint(
                path, expected_sha256=entry.get("sha256"), device=str(self.device), allow_pickle=self.allow_pickle,
                expected={"fors": int(entry["fors"])},
            )
        except self._ckpt.CheckpointError as exc:
            raise BenchUsageError(str(exc)) from None
        return model.eval()


def _manifest(config: RunConfig, device: torch.device) -> dict:
    return {
        "config": asdict(config),
        "config_hash": config.config_hash(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "lsrs": lsrs.__version__},
        "device": device_name(device),
        "checkpoints": {},
        "models": {},
        "warmup_s": {},
        "batch_size": {},
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
    }


def _model_record(model: torch.nn.Module, sample_shape: tuple[int, ...]) -> dict:
    from lsrs.flops import flop_split

    record = dict(flop_split(model, sample_shape))
    record["latent_shape"] = list(getattr(model, "latent_shape", ()))
    record["encoder_lipschitz"] = float(getattr(model, "encoder_lipschitz", 1.0))
    return record


class GridRunner:
    """Certify the grid of a :class:`RunConfig`, storing rows as they are produced (resumable)."""

    def __init__(self, config: RunConfig, options: RunOptions, device: torch.device | None = None) -> None:
        self.config = config
        self.options = options
        # ``device``: where this process certifies (a Ray driver passes its own; workers resolve theirs).
        self.device = device if device is not None else resolve_device(config.device_type)
        self.out = Path(options.out)

    # -------------------------------------------------------------- setup
    def _open_store(self) -> dict:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BenchUsageError(f"cannot write to --out {self.out}: {exc.strerror or exc}") from None
        existing = store.read_manifest(self.out)
        if existing is not None and self.options.fresh:
            store.clear_run(self.out)
            existing = None
        if existing is not None and existing.get("config_hash") != self.config.config_hash():
            raise BenchUsageError(
                f"{self.out} holds a run with a different configuration (hash {existing.get('config_hash')}); "
                "use another --out, or --fresh to discard it"
            )
        if existing is None and store.part_files(self.out):
            raise BenchUsageError(f"{self.out} holds result parts but no manifest; use --fresh or another --out")
        manifest = existing or _manifest(self.config, self.device)
        manifest["finished"] = None
        if self.options.precision is not None:
            manifest["precision"] = self.options.precision
        store.write_json(self.out / store.MANIFEST, manifest)
        return manifest

    def _done_keys(self, folder: Path, radius: bool = False) -> set[tuple]:
        """Keys (method, fors, sigma, idx[, radius]) of the rows already stored in ``folder``."""
        rows = store.read_rows(folder)
        if rows.empty:
            return set()
        cols = [rows["method"], rows["fors"].astype(int), rows["sigma"].astype(float), rows["idx"].astype(int)]
        if radius:
            cols.append(rows["radius"].astype(float))
        return set(zip(*cols, strict=True))

    def plan(self, labels: list[int]) -> RunPlan:
        """Validate the grid, open (or resume) the store and list what is left to certify per job."""
        config = self.config
        if config.precision not in PRECISIONS:
            raise BenchUsageError(f"--precision must be one of {sorted(PRECISIONS)}")
        jobs = grid_jobs(config)
        if not jobs:
            raise BenchUsageError("the grid is empty: give --methods is and/or --fors with a FoR > 0")
        checkpoints = Checkpoints(config.checkpoints, config.dataset, self.device, config.allow_pickle)
        entries = {job: checkpoints.entry(job.fors, job.sigma, config.allow_sigma_mismatch) for job in jobs}
        indices = select_indices(labels, config.skip, config.max_images, config.per_class)
        if not indices:
            raise BenchUsageError("no test images selected; check --skip / --max-images / --per-class")
        manifest = self._open_store()
        done = self._done_keys(self.out)
        decided = self._done_keys(self.out / store.DECISIONS_DIR, radius=True)
        todo = {job: [i for i in indices if (job.method, job.fors, job.sigma, i) not in done] for job in jobs}
        return RunPlan(jobs, checkpoints, entries, indices, manifest, todo, decided)

    # -------------------------------------------------------------- main loop
    def run(self, dataset: torch.utils.data.Dataset, labels: list[int]) -> dict:
        """Certify every job of the grid on the selected test images; returns the final manifest."""
        opts = self.options
        torch.backends.cudnn.benchmark = True
        plan = self.plan(labels)
        jobs, checkpoints, entries, indices, manifest, todo = (
            plan.jobs, plan.checkpoints, plan.entries, plan.indices, plan.manifest, plan.todo
        )
        self._decided = plan.decided
        certified = 0
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=opts.console,
            disable=opts.quiet,
        )
        with progress:
            tasks = {
                job: progress.add_task(job.label, total=len(indices), completed=len(indices) - len(todo[job]), summary="")
                for job in jobs
            }
            for job in jobs:
                if not todo[job]:
                    continue
                model = checkpoints.load(entries[job])
                sample_shape = tuple(dataset[todo[job][0]][0].shape)
                manifest["checkpoints"][job.key] = checkpoints.record(entries[job])
                manifest["models"].setdefault(str(job.fors), _model_record(model, sample_shape))
                rows: list[dict] = []
                decisions: list[dict] = []
                tally = _Tally()
                last_flush = time.monotonic()
                try:
                    for row, decided in self._certify_job(job, model, dataset, todo[job], manifest):
                        rows.append(row)
                        decisions.extend(decided)
                        certified += 1
                        tally.add(row)
                        progress.update(tasks[job], advance=1, summary=tally.summary())
                        if len(rows) >= FLUSH_ROWS or time.monotonic() - last_flush > FLUSH_SECONDS:
                            self._flush(rows, decisions, job)
                            rows, decisions, last_flush = [], [], time.monotonic()
                        if opts.stop_after is not None and certified >= opts.stop_after:
                            raise _StopRequested
                finally:
                    self._flush(rows, decisions, job)
                    store.write_json(self.out / store.MANIFEST, manifest)
        manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.write_json(self.out / store.MANIFEST, manifest)
        return manifest

    def _flush(self, rows: list[dict], decisions: list[dict], job: Job) -> None:
        """Store decisions first, then the certification rows that mark the images as done."""
        if decisions:
            store.write_part(self.out / store.DECISIONS_DIR, decisions, job.key, schema=store.DECISION_SCHEMA)
        if rows:
            store.write_part(self.out, rows, job.key)

    def _certify_job(
        self, job: Job, model: torch.nn.Module, dataset: torch.utils.data.Dataset, indices: list[int], manifest: dict
    ) -> Iterator[tuple[dict, list[dict]]]:
        certifier = JobCertifier(
            self.config, job, model, dataset, indices[0], self.device, batch_size=self.options.batch_size,
            channels_last=self.options.channels_last, device_label=manifest["device"],
        )
        if certifier.batch_size is not None:
            manifest["batch_size"][job.key] = certifier.batch_size
            manifest["warmup_s"][job.key] = certifier.warmup_s
        yield from certifier.iter_rows(dataset, indices, self._decided)


class JobCertifier:
    """Certifies images for one job with its loaded model: the unit of work of the local loop and of Ray tasks.

    Built once per (process, job): it wraps the model in the smoother, picks the batch size and runs the
    warm-up (excluded from timing, kept in ``warmup_s``); ``iter_rows`` / ``certify`` then take any list of
    image indices. Each image's noise is seeded from (run seed, idx, method, FoR, σ), so the rows do not
    depend on which process certifies which images, or in what order.
    """

    def __init__(
        self, config: RunConfig, job: Job, model: torch.nn.Module, dataset: torch.utils.data.Dataset, first_idx: int,
        device: torch.device, *, batch_size: int | None = None, channels_last: bool = True,
        device_label: str | None = None,
    ) -> None:
        self.config, self.job, self.device = config, job, device
        if config.fold_bn:
            model = fold_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        sample_shape = tuple(dataset[first_idx][0].shape)
        num_classes = int(getattr(model, "num_classes", 0) or _num_classes(model, sample_shape, device))
        self.common = {
            "run": config.config_hash(),
            "dataset": config.dataset,
            "arch": getattr(model, "arch", "unknown"),
            "method": job.method,
            "fors": job.fors,
            "fors_total": int(getattr(model, "fors_total", 18)),
            "sigma": job.sigma,
            "alpha": config.alpha,
            "precision": config.precision,
            "device": device_label if device_label is not None else device_name(device),
        }
        self.batch_size: int | None = None  # None for σ = 0 (plain forward passes)
        self.warmup_s = 0.0
        if job.sigma == 0:
            return
        self.smoother: LatentSmooth = smooth_model(
            model, num_classes, job.sigma, device=device, precision=config.precision, channels_last=channels_last,
        )
        latent_shape = tuple(self.smoother.encode(dataset[first_idx][0]).shape[1:])
        batch = batch_size or auto_batch_size(self.smoother.classifier, latent_shape, config.n, device)
        self.batch_size = batch
        if config.compile != "off":
            self.smoother.classifier = compile_classifier(self.smoother.classifier, config.compile)
        self.warmup_s = warm_up(self.smoother, dataset[first_idx][0], config.n0, config.n, batch)

    def certify(
        self, dataset: torch.utils.data.Dataset, indices: list[int], decided: set[tuple] | frozenset = frozenset()
    ) -> tuple[list[dict], list[dict]]:
        """Certify ``indices``: the certification rows and the decision rows (``--decide-radii``)."""
        rows: list[dict] = []
        decisions: list[dict] = []
        for row, decided_rows in self.iter_rows(dataset, indices, decided):
            rows.append(row)
            decisions.extend(decided_rows)
        return rows, decisions

    def iter_rows(
        self, dataset: torch.utils.data.Dataset, indices: list[int], decided: set[tuple] | frozenset = frozenset()
    ) -> Iterator[tuple[dict, list[dict]]]:
        """Per image: its certification row and its decision rows (keys in ``decided`` are skipped)."""
        config, job, common = self.config, self.job, self.common
        if job.sigma == 0:
            for row in self._clean_rows(dataset, indices):
                yield row, []
            return
        smoother, batch = self.smoother, self.batch_size
        for i in indices:
            x, label = dataset[i]
            seed = derive_seed(config.seed, i, job.method, job.fors, job.sigma)
            cert = smoother.certify(x, config.n0, config.n, config.alpha, batch, generator=seed,
                                    sampler=config.sampler, certificate=config.certificate)
            decided_rows = [
                self._decision_row(i, int(label), x, r)
                for r in config.decide_radii
                if (job.method, job.fors, job.sigma, i, float(r)) not in decided
            ]
            yield {
                **common,
                "idx": i,
                "label": int(label),
                "prediction": cert.prediction,
                "correct": cert.prediction == int(label),
                "radius": cert.radius,
                "radius_latent": cert.radius_latent,
                "lipschitz": cert.lipschitz,
                "p_a_lower": cert.p_a_lower,
                "p_b_upper": cert.p_b_upper,
                "sampler": cert.sampler,
                "certificate": cert.certificate,
                "counts_selection": list(cert.counts_selection),
                "counts_estimation": list(cert.counts_estimation),
                "n0": cert.n0,
                "n": cert.n,
                "samples_used": cert.samples_used,
                "encode_s": cert.encode_s,
                "sample_s": cert.sample_s,
                "total_s": cert.total_s,
                "batch_size": batch,
                "seed": seed,
            }, decided_rows

    def _decision_row(self, idx: int, label: int, x: torch.Tensor, radius: float) -> dict:
        """One anytime-valid decision (``LatentSmooth.decide``) at input radius ``radius``."""
        config, job, common = self.config, self.job, self.common
        seed = derive_seed(config.seed, idx, job.method, job.fors, job.sigma, "decide", float(radius))
        d = self.smoother.decide(x, radius, config.alpha, config.max_n, self.batch_size, generator=seed, n0=config.n0)
        return {
            "run": common["run"], "dataset": common["dataset"], "idx": idx, "label": label, "method": job.method,
            "fors": job.fors, "fors_total": common["fors_total"], "sigma": job.sigma, "radius": float(radius),
            "certified": d.certified, "prediction": d.prediction, "correct": bool(d.certified) and d.prediction == label,
            "p_required": d.p_required, "p_a_lower": d.p_a_lower, "p_a_upper": d.p_a_upper,
            "samples_used": d.samples_used, "max_n": config.max_n, "alpha": config.alpha, "total_s": d.total_s,
            "seed": seed, "device": common["device"],
        }

    def _clean_rows(self, dataset: torch.utils.data.Dataset, indices: list[int]) -> Iterator[dict]:
        """σ = 0: clean accuracy of the base network (the paper's σ = 0 rows); no certificate."""
        model = self.model
        for i in indices:
            x, label = dataset[i]
            with Stopwatch(self.device) as sw, torch.inference_mode():
                prediction = int(model(x.to(self.device).unsqueeze(0)).argmax(1).item())
            yield {
                **self.common,
                "idx": i,
                "label": int(label),
                "prediction": prediction,
                "correct": prediction == int(label),
                "radius": 0.0,
                "radius_latent": 0.0,
                "lipschitz": float(getattr(model, "encoder_lipschitz", 1.0)),
                "p_a_lower": float("nan"),
                "p_b_upper": float("nan"),
                "sampler": self.config.sampler,
                "certificate": self.config.certificate,
                "counts_selection": [],
                "counts_estimation": [],
                "n0": 0,
                "n": 0,
                "samples_used": 0,
                "encode_s": 0.0,
                "sample_s": 0.0,
                "total_s": sw.seconds,
                "batch_size": 1,
                "seed": 0,
            }


class _StopRequested(Exception):
    """Raised by ``stop_after`` to simulate a crash in tests."""


def _num_classes(model: torch.nn.Module, sample_shape: tuple[int, ...], device: torch.device) -> int:
    with torch.inference_mode():
        return int(model(torch.zeros((1, *sample_shape), device=device)).shape[-1])


class _Tally:
    """Running accuracy, ACR and s/image of the images certified so far in this session (progress line)."""

    def __init__(self) -> None:
        self.images = self.correct = 0
        self.radius = self.seconds = 0.0

    def add(self, row: dict) -> None:
        self.images += 1
        self.correct += bool(row["correct"])
        self.radius += row["radius"] if row["correct"] else 0.0
        self.seconds += row["total_s"]

    def summary(self) -> str:
        k = max(self.images, 1)
        return f"acc {100 * self.correct / k:5.1f}%  ACR {self.radius / k:.3f}  {self.seconds / k:.3f} s/img"


def _labels(dataset: torch.utils.data.Dataset) -> list[int]:
    """Labels of a dataset without decoding images where the dataset exposes ``targets``."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return [int(t) for t in targets]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def run_grid(config: RunConfig, options: RunOptions, load_test: Callable[[], torch.utils.data.Dataset]) -> dict:
    """Load the test split, run the grid, return the manifest (the library entry point of ``bench run``)."""
    dataset = load_test()
    labels = _labels(dataset) if config.per_class else [0] * len(dataset)
    try:
        return GridRunner(config, options).run(dataset, labels)
    except _StopRequested:
        return store.read_manifest(Path(options.out)) or {}
