"""The certification grid: for every σ, IS-RS on the baseline and LS-RS on each FoR twin, same images;
with method ``lip``, also the fully orthogonal twin certified by its logit margin (:mod:`lsrs.margin`).

One row per (image, method, FoR, σ, n) goes to the run store (:mod:`bench.store`). Noise is seeded per
(run seed, image, method, FoR, σ), so the radii do not depend on batch size or on where a run was resumed.

The n axis (``RunConfig.n`` as a tuple, ``bench run --n 1000,4000``). The noise key holds no n, so the
certificates of one image at n < n' share their samples: the same n0 selection samples (hence the same
predicted class) and, as estimation samples, the first n of the n' (:mod:`lsrs.noise` draws the estimation
samples block after block behind the selection blocks). That is sound because each certificate is Cohen et
al.'s CERTIFY run on its own: its 1 - α guarantee is about its own n samples and needs nothing of the other
certificates, and no row is chosen after looking at another (nothing keeps, per image, the n with the best
radius: every n is stored and reported as its own configuration). Certified accuracy at n and at n' are
then a paired comparison (common random numbers), whose difference is less noisy than with independent noise.
A single n hashes as before (``"n": 1000``), so runs made before the axis existed keep their hash and resume.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress, TaskID

import lsrs
from bench import certifiers, store
from bench.certifiers import Job
from bench.certifiers.context import CertifyContext
from bench.certifiers.engine import COMPILE_MODES, auto_batch_size, compile_classifier, warm_up  # noqa: F401 (re-exported)
from bench.devices import device_name, usage_device
from bench.errors import UsageError
from bench.run.console import grid_progress
from bench.run.shards import Tally, collect_shard, finish_run, shard_summary, store_shard
from bench.store.repair import rows_belong_to
from lsrs.architectures import Architecture, ArchitectureError, get_architecture
from lsrs.data import dataset_labels
from lsrs.noise import NOISE_STREAM
from lsrs.smoothing import PRECISIONS
from lsrs.timing import Stopwatch

DEFAULT_METHODS = ("is", "ls")
FLUSH_SECONDS = 10.0
FLUSH_ROWS = 64


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results (the hash of these fields identifies the run)."""

    dataset: str
    fors: tuple[int, ...]
    sigmas: tuple[float, ...]
    methods: tuple[str, ...] = DEFAULT_METHODS
    n0: int = 100
    n: int | tuple[int, ...] = 100_000  # the n axis: one value, or several (stored sorted; one value as an int)
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
    trust_lipschitz: bool = False  # an encoder without a proof: divide by its declared bound (lsrs.proofs)
    noise: str = "gaussian"  # "lattice": exact lattice noise (lsrs.lattice)
    noise_stream: str = NOISE_STREAM  # lsrs.noise's stream version; a resumed run keeps the one it recorded

    def __post_init__(self) -> None:
        values = n_axis(self.n)
        object.__setattr__(self, "n", values[0] if len(values) == 1 else values)

    @property
    def n_values(self) -> tuple[int, ...]:
        """The n axis, ascending (one element for a run with a single n)."""
        return n_axis(self.n)

    def config_hash(self) -> str:
        """Short hash of the fields that change results (paths to data and checkpoints excluded).

        ``compile``, ``trust_lipschitz`` and ``noise`` enter the hash only when not at their defaults, and
        ``noise_stream`` only when not ``"v1"``, so runs made before the options existed keep their hash.
        """
        return hash_config(asdict(self))


def n_axis(n: object) -> tuple[int, ...]:
    """``n`` (an int, or a list of ints as the CLI and a JSON manifest give it) as an ascending tuple."""
    values = tuple(sorted({int(v) for v in n})) if isinstance(n, (list, tuple)) else (int(n),)
    if not values or min(values) < 1:
        raise ValueError(f"n must be one or more integers >= 1, got {n!r}")
    return values


def hash_config(config: dict) -> str:
    """:meth:`RunConfig.config_hash` of a config as :func:`dataclasses.asdict` (or a manifest) holds it."""
    keyed = {k: v for k, v in config.items() if k not in ("checkpoints", "data_dir", "allow_pickle")}
    if keyed.get("compile", "off") == "off":
        keyed.pop("compile", None)
    if not keyed.get("trust_lipschitz", False):  # enters the hash only when on: older runs keep theirs
        keyed.pop("trust_lipschitz", None)
    if keyed.get("noise", "gaussian") == "gaussian":  # likewise
        keyed.pop("noise", None)
    if keyed.get("noise_stream", "v1") == "v1":  # runs recorded before stream v2 keep their hash
        keyed.pop("noise_stream", None)
    values = n_axis(keyed["n"])
    keyed["n"] = values[0] if len(values) == 1 else list(values)
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def recorded_noise_stream(manifest: dict) -> str:
    """The noise stream version a stored run was certified with (``"v1"``: recorded before versions existed)."""
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    return str(config.get("noise_stream", "v1"))


@dataclass
class RunOptions:
    """Options that do not change results: where, how big the batches, how chatty."""

    out: Path
    batch_size: int | None = None  # None = auto
    channels_last: bool | None = None  # None: by the batches' shape (lsrs.inference.prefers_channels_last)
    fresh: bool = False
    quiet: bool = False
    stop_after: int | None = None  # testing aid: stop after this many certified images (simulated crash)
    precision: dict | None = None  # requested / resolved precision and why (bench.devices.resolve_precision)
    console: Console = field(default_factory=Console)


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

    def record_checkpoint(self, job: Job) -> None:
        """Record ``job``'s checkpoint (path, sha256) in the manifest, as a resume checks it."""
        self.manifest["checkpoints"].setdefault(job.model_key, self.checkpoints.record(self.entries[job]))

    def add_bars(self, progress: Progress) -> dict[Job, TaskID]:
        """One progress bar per job, started at the images already stored."""
        total = len(self.indices)
        return {job: progress.add_task(job.label, total=total, completed=total - len(self.todo[job]), summary="")
                for job in self.jobs}


def grid_jobs(config: RunConfig) -> list[Job]:
    """The grid in paper order: per σ, the jobs of each certifier of ``config.methods`` in the registry's order
    (IS-RS at FoR 0, then LS-RS at each FoR, each at every n of the n axis; σ = 0 once: no samples); then
    the jobs certified once per run (``lip``: the Lipschitz twin, σ = 0: trained and certified without noise)."""
    chosen = [c for c in certifiers.registered() if c.key in config.methods]
    jobs = [Job(c.key, *t) for sigma in config.sigmas for c in chosen for t in c.jobs(config, sigma)]
    return jobs + [Job(c.key, *t) for c in chosen for t in c.jobs(config, None)]


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
            self.index_dir = checkpoint.index_folder(self.root, dataset)  # the root or the dataset folder
        except checkpoint.CheckpointError as exc:  # its message names the file and how to train the pairs
            raise UsageError(str(exc)) from None

    def family(self, entry: dict) -> tuple:
        """What a baseline and its twins must share: (dataset, arch, width, input size)."""
        return (entry.get("dataset", self.dataset), entry["arch"], int(entry["width"]), int(entry["in_size"]))

    def describe(self, entry: dict) -> str:
        dataset, arch, width, in_size = self.family(entry)
        return f"{self.index_dir / entry['path']} ({dataset}, {arch}, width {width}, input {in_size}px)"

    def entries_for(self, jobs: list[Job], allow_sigma_mismatch: bool) -> dict[Job, dict]:
        """Each job's index entry: the LS-RS twins first, then per σ the IS-RS baseline of the twins' dataset,
        arch, width and input size; a baseline or twin that does not match is a usage error naming both."""
        reference = certifiers.is_reference
        found = {job: self.entry(job.fors, job.sigma, allow_sigma_mismatch) for job in jobs if not reference(job.method)}
        for job in jobs:
            if not reference(job.method):
                continue
            twins = [found[j] for j in jobs if certifiers.has_fors_axis(j.method) and j.sigma == job.sigma]
            found[job] = self.entry(0, job.sigma, allow_sigma_mismatch, like=twins[0] if twins else None)
            for twin in twins:
                if self.family(twin) != self.family(found[job]):
                    raise self._mismatch(found[job], twin)
        return {job: found[job] for job in jobs}

    def _mismatch(self, baseline: dict, twin: dict) -> UsageError:
        return UsageError(
            f"the IS-RS baseline {self.describe(baseline)} does not match its LS-RS twin {self.describe(twin)}; "
            f"train a matching baseline: bench train --dataset {self.dataset} --fors 0 --sigmas {float(twin['sigma']):g} "
            f"--width {int(twin['width'])} --out {self.index_dir.parent}"
        )

    def entry(self, fors: int, sigma: float, allow_sigma_mismatch: bool, like: dict | None = None) -> dict:
        """The index entry of FoR ``fors`` at ``sigma`` (of ``like``'s :meth:`family` when given)."""
        pool = self.entries if like is None else [e for e in self.entries if self.family(e) == self.family(like)]
        found = self._ckpt.find_checkpoint(pool, fors, sigma)
        if found is not None:
            return found
        same_fors = [e for e in pool if int(e["fors"]) == fors]
        if like is not None:  # the index has this FoR (at σ, or at all) only for another model family
            other = self._ckpt.find_checkpoint(self.entries, fors, sigma) or (
                None if same_fors else next((e for e in self.entries if int(e["fors"]) == fors), None))
            if other is not None:
                raise self._mismatch(other, like)
        if not same_fors:
            baseline = self._ckpt.find_checkpoint(self.entries, 0, sigma) if fors > 0 else None
            twinless = _twinless_architecture(baseline)
            if twinless is not None:  # e.g. an imported peer's model: IS-RS only
                raise UsageError(f"no FoR {fors} twin in {self.index_dir / 'index.json'}: {twinless.no_twin_reason}")
            have = sorted({int(e["fors"]) for e in self.entries})
            raise UsageError(
                f"FoR {fors} is not in the checkpoint index {self.index_dir / 'index.json'} (it has FoR {have}); "
                f"train it with: bench train --dataset {self.dataset} --fors {fors} --sigmas {sigma:g}"
            )
        if not allow_sigma_mismatch:
            have = sorted({float(e['sigma']) for e in same_fors})
            raise UsageError(
                f"no FoR {fors} checkpoint trained at σ={sigma:g} (trained σ: {have}); train it, or pass "
                "--allow-sigma-mismatch to certify with the nearest σ"
            )
        return min(same_fors, key=lambda e: abs(float(e["sigma"]) - sigma))

    def changed(self, entry: dict, stored: set[str]) -> str | None:
        """Why ``entry``'s checkpoint is not the one that produced ``stored`` (sha256 digests), or None."""
        path = self.index_dir / entry["path"]
        stored = {s for s in stored if s}
        if not stored:
            return None
        if not path.is_file():  # loading it fails with its own message if images are left to certify
            return None
        now = self._ckpt.sha256_file(path)
        if stored == {now}:
            return None
        was = ", ".join(sorted(s[:12] for s in stored))
        return f"checkpoint {path} changed since the stored rows were certified (sha256 {now[:12]} now, {was} then)"

    def record(self, entry: dict) -> dict:
        """The manifest's record of a checkpoint: path, sha256 and the σ it was trained at."""
        return {
            "path": str(self.index_dir / entry["path"]),
            "sha256": entry.get("sha256"),
            "sigma_train": float(entry["sigma"]),
        }

    def load(self, entry: dict) -> tuple[torch.nn.Module, str]:
        """The model of ``entry`` in eval mode and the sha256 of the file it was read from."""
        path = self.index_dir / entry["path"]
        try:
            model, meta = self._ckpt.load_checkpoint(
                path, expected_sha256=entry.get("sha256"), device=str(self.device), allow_pickle=self.allow_pickle,
                expected={"fors": int(entry["fors"])},
            )
        except self._ckpt.CheckpointError as exc:
            raise UsageError(str(exc)) from None
        return model.eval(), str(meta["sha256"])


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
        "lipschitz_executed": {},
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
        self.device = device if device is not None else usage_device(config.device_type)
        self.out = Path(options.out)
        self._certified = 0  # images certified in this session (``stop_after``)

    # -------------------------------------------------------------- setup
    def _open_store(self, labels: list[int], checkpoints: Checkpoints | None = None,
                    entries: dict[Job, dict] | None = None) -> dict:
        """Open ``--out``: a new run, or the stored one to resume when its configuration and checkpoints match."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"cannot write to --out {self.out}: {exc.strerror or exc}") from None
        existing = store.read_manifest(self.out)
        if existing is not None and self.options.fresh:
            store.clear_run(self.out)
            existing = None
        if existing is not None:  # a resume draws the noise stream the stored rows were certified with
            self.config = replace(self.config, noise_stream=recorded_noise_stream(existing))
        if existing is not None and existing.get("config_hash") != self.config.config_hash():
            self._extend_run(existing, labels)
        if existing is None and store.part_files(self.out):  # e.g. a corrupt manifest moved aside (run_repair)
            if not rows_belong_to(self.out, self.config.config_hash()):
                raise UsageError(f"{self.out} holds result parts of another configuration but no manifest; "
                                      "use --fresh or another --out")
            self.options.console.print(f"{self.out}: no manifest; resuming the stored rows of this configuration")
        if checkpoints is not None and entries and (existing is not None or store.part_files(self.out)):
            self._refuse_changed_checkpoints(existing or {}, checkpoints, entries)
        manifest = existing or _manifest(self.config, self.device)
        manifest["finished"] = None
        if self.options.precision is not None:
            manifest["precision"] = self.options.precision
        store.write_json(self.out / store.MANIFEST, manifest)
        return manifest

    def _extend_run(self, manifest: dict, labels: list[int]) -> None:
        """Accept a stored run that this config extends: it differs only by an n axis that this one contains
        (``--n 1000`` extended by ``--n 1000,4000``) and/or by an image selection (``--skip`` / ``--max-images``
        / ``--per-class``) whose images include every stored one (``--skip 2`` extended by ``--skip 1``). The
        manifest takes this config and hash and lists the earlier ones under ``extended``; the stored rows keep
        theirs (``run``) and only the new (image, n) pairs are certified. Noise is keyed by (run seed, image,
        method, FoR, σ), never by an image's position in the selection, so a stored row is the row this config
        would have certified. Any other difference is refused (exit 2)."""
        stored = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        config = self.config
        selection = {"n": list(config.n_values), "skip": config.skip, "max_images": config.max_images,
                     "per_class": config.per_class}
        try:
            stored_n = n_axis(stored["n"])
            same_but_n = hash_config({**stored, "n": list(config.n_values)}) == config.config_hash()
            extends = hash_config({**stored, **selection}) == config.config_hash()
            stored_images = select_indices(labels, int(stored["skip"]), stored["max_images"], stored["per_class"])
        except (KeyError, TypeError, ValueError):
            stored_n, same_but_n, extends, stored_images = (), False, False, []
        new_images = set(select_indices(labels, config.skip, config.max_images, config.per_class))
        if extends and set(stored_n) <= set(config.n_values) and set(stored_images) <= new_images:
            manifest.setdefault("extended", []).append({
                "config_hash": manifest.get("config_hash"), "n": list(stored_n), "skip": stored["skip"],
                "max_images": stored["max_images"], "per_class": stored["per_class"],
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            manifest["config"], manifest["config_hash"] = asdict(config), config.config_hash()
            return
        hint = (f"; it holds n = {','.join(map(str, stored_n))}: an --n list that contains these extends it"
                if same_but_n else "")
        if extends and set(stored_n) <= set(config.n_values):
            hint = ("; its images are not all among this selection: a --skip / --max-images / --per-class that "
                    "selects every stored image extends it")
        raise UsageError(
            f"{self.out} holds a run with a different configuration (hash {manifest.get('config_hash')}){hint}; "
            "use another --out, or --fresh to discard it"
        )

    def _refuse_changed_checkpoints(self, manifest: dict, checkpoints: Checkpoints, entries: dict[Job, dict]) -> None:
        """A resume must certify with the checkpoints that produced the stored rows (their sha256 in the rows
        and in the manifest); otherwise one table would mix two models."""
        rows = store.read_rows(self.out)
        by_job: dict[str, set[str]] = {}
        if "checkpoint_sha256" in rows:
            for key, sha in zip(_model_keys(rows), rows["checkpoint_sha256"], strict=True):
                by_job.setdefault(key, set()).add(sha)
        for job, entry in entries.items():
            recorded = manifest.get("checkpoints", {}).get(job.model_key, {}).get("sha256")
            stored = set(by_job.get(job.model_key, ())) | {recorded}
            why = checkpoints.changed(entry, {s for s in stored if isinstance(s, str)})
            if why:
                raise UsageError(f"{why}; pass --fresh to discard {self.out}, or use another --out")

    def _done_keys(self, folder: Path, radius: bool = False) -> set[tuple]:
        """Keys of the rows already stored in ``folder``: (method, fors, sigma, n, idx) of the certification
        rows, (method, fors, sigma, idx, radius) of the decisions (``radius=True``; a decision has no n)."""
        rows = store.read_rows(folder)
        if rows.empty:
            return set()
        cols = [rows["method"], rows["fors"].astype(int), rows["sigma"].astype(float)]
        if radius:
            cols += [rows["idx"].astype(int), rows["radius"].astype(float)]
        else:
            cols += [rows["n"].astype(int), rows["idx"].astype(int)]
        return set(zip(*cols, strict=True))

    def plan(self, labels: list[int]) -> RunPlan:
        """Validate the grid, open (or resume) the store and list what is left to certify per job."""
        config = self.config
        if config.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {sorted(PRECISIONS)}")
        jobs = grid_jobs(config)
        if not jobs:
            raise UsageError("the grid is empty: give --methods is and/or --fors with a FoR > 0")
        checkpoints = Checkpoints(config.checkpoints, config.dataset, self.device, config.allow_pickle)
        entries = checkpoints.entries_for(jobs, config.allow_sigma_mismatch)
        indices = select_indices(labels, config.skip, config.max_images, config.per_class)
        if not indices:
            raise UsageError("no test images selected; check --skip / --max-images / --per-class")
        manifest = self._open_store(labels, checkpoints, entries)
        done = self._done_keys(self.out)
        decided = self._done_keys(self.out / store.DECISIONS_DIR, radius=True)
        todo = {job: [i for i in indices if (job.method, job.fors, job.sigma, job.n, i) not in done] for job in jobs}
        return RunPlan(jobs, checkpoints, entries, indices, manifest, todo, decided)

    # -------------------------------------------------------------- main loop
    def run(self, dataset: torch.utils.data.Dataset, labels: list[int]) -> dict:
        """Certify every job of the grid on the selected test images; returns the final manifest.

        Each image is collected as it is certified and the rows are stored every :data:`FLUSH_ROWS` images or
        :data:`FLUSH_SECONDS` seconds, and whenever a job stops (:mod:`bench.run.shards`)."""
        opts = self.options
        torch.backends.cudnn.benchmark = True
        plan = self.plan(labels)
        manifest = plan.manifest
        self._certified = 0
        progress = grid_progress(opts.console, opts.quiet)
        with progress:
            bars = plan.add_bars(progress)
            loaded: dict[str, tuple] = {}  # the last model, reused by its next n (the certifiers copy it)
            for job in plan.jobs:
                if not plan.todo[job]:
                    continue
                load_s = 0.0
                if job.model_key not in loaded:
                    with Stopwatch(self.device) as load_watch:
                        loaded = {job.model_key: plan.checkpoints.load(plan.entries[job])}
                    load_s = load_watch.seconds
                self._certify_job(plan, job, dataset, *loaded[job.model_key], load_s, progress, bars[job])
        return finish_run(self.out, manifest)

    def _certify_job(self, plan: RunPlan, job: Job, dataset: torch.utils.data.Dataset, model: torch.nn.Module,
                     sha256: str, load_s: float, progress: Progress, bar: TaskID) -> None:
        """Certify what is left of ``job``, collecting each image (its progress ``bar``) and storing the rows."""
        todo, manifest, tally = plan.todo[job], plan.manifest, Tally()
        plan.record_checkpoint(job)  # checked on resume
        rows: list[dict] = []
        decisions: list[dict] = []
        last_store = time.monotonic()
        try:
            record = _model_record(model, tuple(dataset[todo[0]][0].shape))
            certifier = JobCertifier(
                self.config, job, model, dataset, todo[0], self.device, batch_size=self.options.batch_size,
                channels_last=self.options.channels_last, device_label=manifest["device"],
                checkpoint_sha256=sha256, load_s=load_s,
            )
            for row, decided in certifier.iter_rows(dataset, todo, plan.decided):
                rows.append(row)
                decisions.extend(decided)
                collect_shard(manifest, shard_summary(certifier, record, [row]), tally)
                progress.update(bar, advance=1, summary=tally.summary())
                self._certified += 1
                if len(rows) >= FLUSH_ROWS or time.monotonic() - last_store > FLUSH_SECONDS:
                    store_shard(self.out, job.key, rows, decisions)
                    rows, decisions, last_store = [], [], time.monotonic()
                if self.options.stop_after is not None and self._certified >= self.options.stop_after:
                    raise _StopRequested
        finally:
            store_shard(self.out, job.key, rows, decisions)
            store.write_json(self.out / store.MANIFEST, manifest)


class JobCertifier:
    """Certifies images for one job with its loaded model: the unit of work of the local loop and of Ray tasks.

    Built once per (process, job): it builds the job's :class:`bench.certifiers.context.CertifyContext` (what
    every row shares, the model, the set-up records) and hands it to the job's certifier
    (:func:`bench.certifiers.get_certifier` of ``job.method``: its ``start``), which may replace ``model`` by
    its own copy and records ``batch_size``, the warm-up (excluded from timing, kept in ``warmup_s``) and
    ``lipschitz_executed``. ``setup_s`` has the seconds of each untimed set-up stage: ``load`` (given by the
    caller), then the certifier's (e.g. ``fold_bn``, ``first_encode``, ``batch_probe``, ``warmup``) and
    ``total``. Every row carries ``checkpoint_sha256``. ``iter_rows`` / ``certify`` then take any list of image
    indices; a certifier's rows do not depend on which process certifies which images, or in what order.
    """

    def __init__(
        self, config: RunConfig, job: Job, model: torch.nn.Module, dataset: torch.utils.data.Dataset, first_idx: int,
        device: torch.device, *, batch_size: int | None = None, channels_last: bool | None = None,
        device_label: str | None = None, checkpoint_sha256: str | None = None, load_s: float = 0.0,
    ) -> None:
        self.config, self.job, self.device = config, job, device
        x = dataset[first_idx][0]
        common = {
            "run": config.config_hash(),
            "dataset": config.dataset,
            "arch": getattr(model, "arch", "unknown"),
            "method": job.method,
            "fors": job.fors,
            "fors_total": _fors_total(model),
            "sigma": job.sigma,
            "alpha": config.alpha,
            "precision": config.precision,
            "device": device_label if device_label is not None else device_name(device),
            "checkpoint_sha256": checkpoint_sha256,
        }
        num_classes = int(getattr(model, "num_classes", 0) or _num_classes(model, tuple(x.shape), device))
        self.context = CertifyContext(config, job, model, device, num_classes, common, {"load": load_s})
        self.run: certifiers.CertifierRun = certifiers.get_certifier(job.method).start(
            self.context, x, batch_size, channels_last)
        self.setup_s["total"] = sum(self.setup_s.values())

    @property
    def common(self) -> dict:
        return self.context.common

    @property
    def setup_s(self) -> dict[str, float]:
        return self.context.setup_s

    @property
    def batch_size(self) -> int | None:
        return self.context.batch_size

    @property
    def warmup_s(self) -> float:
        return self.context.warmup_s

    @property
    def lipschitz_executed(self) -> float | None:
        return self.context.lipschitz_executed

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
        yield from self.run.rows(dataset, indices, decided)


def _twinless_architecture(entry: dict | None) -> Architecture | None:
    """The architecture record of a checkpoint index entry when it has FoR 0 only (no LS-RS twin), else None."""
    if entry is None:
        return None
    try:
        record = get_architecture(entry["arch"], source=entry.get("arch_source"))
    except (KeyError, ArchitectureError):
        return None
    return record if tuple(record.fors) == (0,) else None


def _model_keys(rows) -> list[str]:
    """:attr:`Job.model_key` of every stored row."""
    cols = (rows["method"], rows["fors"], rows["sigma"])
    return [Job(str(m), int(f), float(s)).model_key for m, f, s in zip(*cols, strict=True)]


class _StopRequested(Exception):
    """Raised by ``stop_after`` to simulate a crash in tests."""


def _fors_total(model: torch.nn.Module) -> int:
    """The denominator of the model's FoR: its own, else its architecture record's (``fors_total``)."""
    total = getattr(model, "fors_total", None)
    if total is None:
        try:
            total = get_architecture(getattr(model, "arch", "")).fors_total
        except (ArchitectureError, ValueError):
            total = 0  # an architecture nobody registered: no FoR denominator (labels show the FoR alone)
    return int(total)


def _num_classes(model: torch.nn.Module, sample_shape: tuple[int, ...], device: torch.device) -> int:
    with torch.inference_mode():
        return int(model(torch.zeros((1, *sample_shape), device=device)).shape[-1])


def grid_labels(config: RunConfig, dataset: torch.utils.data.Dataset) -> list[int]:
    """The test labels :meth:`GridRunner.plan` needs: read only for ``per_class`` (zeros otherwise: no image is
    decoded to choose the images)."""
    return dataset_labels(dataset) if config.per_class else [0] * len(dataset)


def run_grid(config: RunConfig, options: RunOptions, load_test: Callable[[], torch.utils.data.Dataset]) -> dict:
    """Load the test split, run the grid, return the manifest (the library entry point of ``bench run``)."""
    dataset = load_test()
    try:
        return GridRunner(config, options).run(dataset, grid_labels(config, dataset))
    except _StopRequested:
        return store.read_manifest(Path(options.out)) or {}
