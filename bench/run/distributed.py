"""``bench run --ray``: the same certification grid over Ray workers, with the same results.

The driver (the ``bench run`` process) plans the run exactly like a single-process run
(:meth:`bench.run.runner.GridRunner.plan`: same images, same resume logic), then splits what is left into Ray
tasks of (image shard × job), a job being one (method, FoR, σ, n) of the grid. A task certifies its shard with :class:`bench.run.runner.JobCertifier` -- the same
code as the local loop, so the per-image seeding makes every row identical to a single-process run -- and
writes its rows as one parquet part in a single atomic ``os.replace`` at the end, under a name fixed by
(job, shard): a task that Ray retries after its worker died rewrites the same part instead of adding one,
and a killed task loses at most its own shard. The driver shows one progress bar for the whole grid and
writes the manifest, with the cluster (nodes, worker devices) under ``cluster``.

Each worker process keeps the models it loaded (a few, most recently used), so a worker loads each
checkpoint once per job, however many shards of it it certifies. Workers need the project installed and
``--out`` / ``--checkpoints`` (and ``--data-dir``) on a file system they all see.

Ray is an optional extra (``pip install -e ".[ray]"``); nothing here imports it at module import time.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import certifiers, store
from bench.devices import usage_device
from bench.errors import IncompleteRun, UsageError
from bench.run.console import grid_progress
from bench.run.runner import (
    Checkpoints,
    GridRunner,
    Job,
    JobCertifier,
    RunConfig,
    RunOptions,
    _model_record,
    grid_labels,
)
from bench.run.shards import (
    Tally,
    clear_staging,
    collect_shard,
    finish_run,
    part_name,
    shard_summary,
    store_shard,
)
from lsrs.timing import Stopwatch

INSTALL_HINT = 'pip install -e ".[ray]"'
DEFAULT_SHARD_SIZE = 10
MODEL_CACHE = 4  # certifiers (loaded models) kept per worker process
MANIFEST_SECONDS = 10.0

FaultHook = Callable[[str, Job, int], None]
"""Testing aid called in the worker: ``("image", job, idx)`` after each image, ``("written", job, first idx)``
after the shard's part is stored."""


@dataclass(frozen=True)
class RayOptions:
    """How to spread a run over Ray; none of this changes the results (nor the run's ``config_hash``)."""

    address: str = "auto"  # "auto": the running cluster if there is one, else a local Ray; or host:port, ray://...
    shard_size: int = DEFAULT_SHARD_SIZE  # images per task
    num_cpus: float = 1.0  # per task; also the task's torch threads
    num_gpus: float | None = None  # per task; None: 1 with --device cuda, else 0
    max_retries: int = 3  # retries of a task whose worker died
    fault_hook: FaultHook | None = None


def import_ray() -> Any:
    """The ``ray`` module, or a usage error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed; install the extra: {INSTALL_HINT}") from None
    return ray


def connect(address: str) -> Callable[[], None]:
    """Join the Ray cluster at ``address`` (``auto``: the running one, else start a local Ray).

    A Ray already initialised in this process is used as it is. Returns the function that disconnects
    (shutting down a Ray started here); it does nothing when this call did not initialise Ray.
    """
    ray = import_ray()
    if ray.is_initialized():
        return lambda: None
    try:
        ray.init(address=None if address == "auto" else address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot connect to Ray at {address!r}: {first}") from None
    return ray.shutdown


def cluster_device_type(device: str) -> str:
    """``--device`` for a Ray run, judged by the cluster's resources rather than by the driver's."""
    ray = import_ray()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if device == "cuda" and gpus <= 0:
        raise UsageError("--device cuda was asked for but the Ray cluster has no GPU; use --device cpu")
    if device == "auto":
        return "cuda" if gpus > 0 else "cpu"
    return device


def task_num_gpus(options: RayOptions, device_type: str) -> float:
    """GPUs each task asks for: ``--ray-num-gpus``, else one per task on CUDA and none on CPU."""
    num_gpus = options.num_gpus if options.num_gpus is not None else (1.0 if device_type == "cuda" else 0.0)
    if device_type == "cuda" and num_gpus <= 0:
        raise UsageError("--device cuda needs --ray-num-gpus > 0 (e.g. 1, or 0.5 for two tasks per GPU)")
    return num_gpus


# ---------------------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class ShardSpec:
    """One Ray task: certify ``indices`` for ``job`` and store them as part ``part-<name>.parquet``."""

    config: RunConfig
    job: Job
    indices: tuple[int, ...]
    decided: frozenset  # decision keys already stored for these images
    out: str
    checkpoints: str  # absolute checkpoint root (the one holding <dataset>/index.json)
    entry: dict  # the job's checkpoint index entry
    batch_size: int | None
    channels_last: bool | None
    threads: int
    certifier: certifiers.Certifier | None = None  # the job's record, for a worker that lacks its registration

    @property
    def name(self) -> str:
        """Deterministic part name: a retried (or repeated) task overwrites its part, never adds one."""
        return part_name(self.job.key, self.indices)


_DATASETS: dict[tuple, torch.utils.data.Dataset] = {}
_CERTIFIERS: OrderedDict[tuple, tuple[JobCertifier, dict]] = OrderedDict()


def _dataset(config: RunConfig, load_test: Callable[[], torch.utils.data.Dataset]) -> torch.utils.data.Dataset:
    key = (config.dataset, config.data_dir)
    if key not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[key] = load_test()
    return _DATASETS[key]


def _certifier(spec: ShardSpec, dataset: torch.utils.data.Dataset, device: torch.device) -> tuple[JobCertifier, dict]:
    """This worker's certifier for the shard's job: the checkpoint is loaded (and warmed up) once per job."""
    key = (spec.config.config_hash(), spec.job, spec.checkpoints, spec.entry.get("path"), spec.entry.get("sha256"),
           str(device), spec.batch_size, spec.channels_last)
    if key in _CERTIFIERS:
        _CERTIFIERS.move_to_end(key)
        return _CERTIFIERS[key]
    with Stopwatch(device) as watch:
        model, sha256 = Checkpoints(spec.checkpoints, spec.config.dataset, device,
                                    spec.config.allow_pickle).load(spec.entry)
    record = _model_record(model, tuple(dataset[spec.indices[0]][0].shape))
    if spec.certifier is not None and spec.job.method not in certifiers.list_certifiers():  # registered in the driver only
        certifiers.register_certifier(spec.certifier)
    certifier = JobCertifier(spec.config, spec.job, model, dataset, spec.indices[0], device,
                             batch_size=spec.batch_size, channels_last=spec.channels_last,
                             checkpoint_sha256=sha256, load_s=watch.seconds)
    _CERTIFIERS[key] = (certifier, record)
    while len(_CERTIFIERS) > MODEL_CACHE:
        _CERTIFIERS.popitem(last=False)
    return _CERTIFIERS[key]


def certify_shard(spec: ShardSpec, load_test: Callable[[], torch.utils.data.Dataset],
                  fault_hook: FaultHook | None = None) -> dict:
    """The Ray task: certify one shard of one job, store its rows, return a summary for the driver."""
    started = time.time()  # wall clock, comparable between the tasks of one node
    torch.set_num_threads(spec.threads)
    torch.backends.cudnn.benchmark = True
    device = usage_device(spec.config.device_type)
    dataset = _dataset(spec.config, load_test)
    certifier, record = _certifier(spec, dataset, device)
    rows: list[dict] = []
    decisions: list[dict] = []
    for row, decided in certifier.iter_rows(dataset, list(spec.indices), spec.decided):
        rows.append(row)
        decisions.extend(decided)
        if fault_hook is not None:
            fault_hook("image", spec.job, row["idx"])
    store_shard(Path(spec.out), spec.job.key, rows, decisions, name=spec.name)
    if fault_hook is not None:
        fault_hook("written", spec.job, spec.indices[0])
    where = {"host": socket.gethostname(), "node_id": _node_id(), "pid": os.getpid(), "span": (started, time.time())}
    return {**shard_summary(certifier, record, rows), **where}


def _node_id() -> str | None:
    """The Ray node this task runs on (None outside Ray: the runtime context would start a Ray)."""
    try:
        import ray
    except ImportError:
        return None
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def shard_specs(config: RunConfig, options: RunOptions, plan, shard_size: int, threads: int) -> list[ShardSpec]:
    """What ``plan`` leaves to certify as shards of at most ``shard_size`` images, in grid order (job-major, so
    a worker tends to reuse the model it has loaded); records each job's checkpoint in the plan's manifest."""
    out = str(Path(options.out).resolve())
    root = str(plan.checkpoints.root.resolve())
    decided_by_image: dict[tuple, list[tuple]] = {}
    for key in plan.decided:
        decided_by_image.setdefault(tuple(key[:4]), []).append(key)
    specs = []
    for job in plan.jobs:
        todo = plan.todo[job]
        if not todo:
            continue
        plan.record_checkpoint(job)
        for start in range(0, len(todo), shard_size):
            shard = tuple(todo[start:start + shard_size])
            decided = frozenset(k for i in shard for k in decided_by_image.get((job.method, job.fors, job.sigma, i), ()))
            specs.append(ShardSpec(
                config=config, job=job, indices=shard, decided=decided, out=out, checkpoints=root,
                entry=dict(plan.entries[job]), batch_size=options.batch_size, channels_last=options.channels_last,
                threads=threads, certifier=certifiers.get_certifier(job.method),
            ))
    return specs


# --------------------------------------------------------------------------------------------- the driver


def cluster_record(ray: Any, options: RayOptions, num_gpus: float) -> dict:
    """The manifest's ``cluster``: Ray version, alive nodes with their CPUs/GPUs, and the task resources."""
    nodes = [
        {
            "node_id": n.get("NodeID"),
            "host": n.get("NodeManagerHostname"),
            "address": n.get("NodeManagerAddress"),
            "cpus": float(n.get("Resources", {}).get("CPU", 0)),
            "gpus": float(n.get("Resources", {}).get("GPU", 0)),
        }
        for n in ray.nodes()
        if n.get("Alive")
    ]
    for node in nodes:
        node.update(task_slots=task_slots(node["cpus"], node["gpus"], options.num_cpus, num_gpus), tasks=0,
                    peak_concurrent_tasks=0)
    return {
        "ray": ray.__version__,
        "address": options.address,
        "nodes": sorted(nodes, key=lambda n: (str(n["host"]), str(n["node_id"]))),
        "task": {"shard_size": options.shard_size, "num_cpus": options.num_cpus, "num_gpus": num_gpus,
                 "max_retries": options.max_retries},
        "devices": [],
    }


def task_slots(cpus: float, gpus: float, num_cpus: float, num_gpus: float) -> int:
    """How many tasks asking for ``num_cpus`` CPUs and ``num_gpus`` GPUs fit on a node at once."""
    fits = int(cpus / num_cpus + 1e-9)
    return min(fits, int(gpus / num_gpus + 1e-9)) if num_gpus > 0 else fits


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """Largest number of the (start, end) intervals that hold at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


class RayGridRunner(GridRunner):
    """The grid of a :class:`RunConfig` as Ray tasks of (image shard × job); same store, same resume."""

    def __init__(self, config: RunConfig, options: RunOptions, ray_options: RayOptions) -> None:
        # The driver only plans and collects: it needs no accelerator (the workers resolve their device).
        super().__init__(config, options, device=torch.device("cpu"))
        self.ray_options = ray_options
        self._spans: dict[str, list[tuple[float, float]]] = {}  # per node: (start, end) of its tasks

    def run_ray(self, dataset: torch.utils.data.Dataset, labels: list[int],
                load_test: Callable[[], torch.utils.data.Dataset]) -> dict:
        ray = import_ray()
        config, opts, ray_opts = self.config, self.options, self.ray_options
        if ray_opts.shard_size < 1:
            raise UsageError(f"--ray-shard-size must be >= 1, got {ray_opts.shard_size}")
        if ray_opts.num_cpus <= 0:
            raise UsageError(f"--ray-num-cpus must be > 0, got {ray_opts.num_cpus:g}")
        num_gpus = task_num_gpus(ray_opts, config.device_type)
        plan = self.plan(labels)
        manifest = plan.manifest
        previous = manifest.get("cluster", {}).get("devices", [])
        manifest["cluster"] = cluster_record(ray, ray_opts, num_gpus)
        manifest["cluster"]["devices"] = list(previous)
        self._warn_if_infeasible(manifest["cluster"]["nodes"], num_gpus)
        specs = self._shards(plan)
        remote = ray.remote(certify_shard).options(
            num_cpus=ray_opts.num_cpus, num_gpus=num_gpus, max_retries=ray_opts.max_retries, retry_exceptions=False,
        )
        total = len(plan.jobs) * len(plan.indices)
        left = sum(len(v) for v in plan.todo.values())
        progress = grid_progress(opts.console, opts.quiet)
        tally = Tally()
        failures: list[str] = []
        usage_error: str | None = None
        pending: dict[Any, ShardSpec] = {}
        last_write = time.monotonic()
        with progress:
            bar = progress.add_task(
                f"grid: {len(specs)} tasks on Ray ({len(manifest['cluster']['nodes'])} node(s))",
                total=total, completed=total - left, summary="",
            )
            try:
                pending = {remote.remote(spec, load_test, ray_opts.fault_hook): spec for spec in specs}
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for ref in ready:
                        spec = pending.pop(ref)
                        try:
                            summary = ray.get(ref)
                        except ray.exceptions.RayTaskError as exc:
                            cause = getattr(exc, "cause", None)
                            if isinstance(cause, UsageError):
                                usage_error = cause.format_message()
                                for other in pending:
                                    ray.cancel(other)
                                pending.clear()
                                break
                            failures.append(f"{spec.job.label}, images {spec.indices[0]}..{spec.indices[-1]}: "
                                            f"{_first_line(cause or exc)}")
                            continue
                        except ray.exceptions.RayError as exc:  # worker died more often than max_retries, ...
                            failures.append(f"{spec.job.label}, images {spec.indices[0]}..{spec.indices[-1]}: "
                                            f"{_first_line(exc)}")
                            continue
                        self._collect(manifest, summary, tally)
                        progress.update(bar, advance=len(spec.indices), summary=tally.summary())
                    if time.monotonic() - last_write > MANIFEST_SECONDS:
                        store.write_json(self.out / store.MANIFEST, manifest)
                        last_write = time.monotonic()
            except BaseException:
                for ref in pending:
                    ray.cancel(ref)
                raise
            finally:
                store.write_json(self.out / store.MANIFEST, manifest)
        clear_staging(self.out)
        if usage_error is not None:
            raise UsageError(usage_error)
        if failures:
            raise IncompleteRun(
                f"{len(failures)} of {len(specs)} Ray tasks failed (first: {failures[0]}); the other shards are "
                "stored: run the same command again to certify the rest"
            )
        return finish_run(self.out, manifest)

    def _shards(self, plan) -> list[ShardSpec]:
        """Tasks in grid order (job-major, so a worker tends to reuse the model it has loaded)."""
        return shard_specs(self.config, self.options, plan, self.ray_options.shard_size,
                           threads=max(1, int(self.ray_options.num_cpus)))

    def _collect(self, manifest: dict, summary: dict, tally: Tally) -> None:
        collect_shard(manifest, summary, tally)
        spans = self._spans.setdefault(str(summary["node_id"]), [])
        spans.append(tuple(summary["span"]))
        for node in manifest["cluster"]["nodes"]:
            if str(node["node_id"]) == str(summary["node_id"]):
                node.update(tasks=len(spans), peak_concurrent_tasks=peak_overlap(spans))
        worker = {"host": summary["host"], "node_id": summary["node_id"], "pid": summary["pid"],
                  "device": summary["device"]}
        devices = manifest["cluster"]["devices"]
        if worker not in devices:
            devices.append(worker)
            manifest["device"] = ", ".join(sorted({d["device"] for d in devices}))

    def _warn_if_infeasible(self, nodes: list[dict], num_gpus: float) -> None:
        cpus = max((n["cpus"] for n in nodes), default=0.0)
        gpus = max((n["gpus"] for n in nodes), default=0.0)
        if self.ray_options.num_cpus > cpus or num_gpus > gpus:
            self.options.console.print(
                f"[yellow]warning:[/] each task asks for {self.ray_options.num_cpus:g} CPU(s) and {num_gpus:g} GPU(s) "
                f"but the largest node now has {cpus:g} CPU(s) and {gpus:g} GPU(s); the tasks wait until such a "
                "node joins (see --ray-num-cpus / --ray-num-gpus)"
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def run_grid_ray(config: RunConfig, options: RunOptions, ray_options: RayOptions,
                 load_test: Callable[[], torch.utils.data.Dataset]) -> dict:
    """:func:`bench.run.runner.run_grid` over Ray: same store, same rows; returns the manifest.

    ``load_test`` is sent to the workers: a lambda, a closure or a ``functools.partial`` of a library function
    (cloudpickle sends those by value or by an importable name), not a function of a module they cannot import.
    """
    disconnect = connect(ray_options.address)
    try:
        dataset = load_test()
        labels = grid_labels(config, dataset)
        return RayGridRunner(config, options, ray_options).run_ray(dataset, labels, load_test)
    finally:
        disconnect()


__all__ = [
    "INSTALL_HINT", "RayGridRunner", "RayOptions", "ShardSpec", "certify_shard",
    "cluster_device_type", "connect", "import_ray", "run_grid_ray", "shard_specs",
]
