"""Where a certification grid runs: one interface, three executors with the same store, resume and rows.

- :class:`InProcess`: this process (:func:`bench.run.runner.run_grid`);
- :class:`LocalPool`: local worker processes (:func:`bench.run.pool.run_grid_pool`, as ``bench demo`` runs it);
- :class:`RayTasks`: Ray tasks on a cluster (:func:`bench.run.distributed.run_grid_ray`).

All three plan the run with :meth:`bench.run.runner.GridRunner.plan`, certify each job with
:class:`bench.run.runner.JobCertifier`, store its rows with :func:`bench.run.shards.store_shard` and fold what
they certified into the manifest and the progress tallies with :func:`bench.run.shards.collect_shard` (one
collection path: in this process each image as it is certified, in workers and tasks each shard as it finishes).
``bench run`` and ``bench demo`` pick the executor with :func:`choose_executor`. ``load_test`` must be picklable
for the pool (a ``functools.partial`` of a module-level function). Each executor runs under
:func:`bench.store.guard.open_run_folder`: one writer per run folder, checked and repaired first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bench.run.runner import RunConfig, RunOptions
from bench.store.guard import open_run_folder


class Executor(Protocol):
    def run(self, config: RunConfig, options: RunOptions, load_test: Callable[[], Any]) -> dict:
        """Certify what is left of ``config``'s grid into ``options.out``; the final manifest."""
        ...


@dataclass(frozen=True)
class InProcess:
    def run(self, config: RunConfig, options: RunOptions, load_test: Callable[[], Any]) -> dict:
        from bench.run.runner import run_grid

        with open_run_folder(options.out):
            return run_grid(config, options, load_test)


@dataclass(frozen=True)
class LocalPool:
    processes: int
    threads: int = 1

    def run(self, config: RunConfig, options: RunOptions, load_test: Callable[[], Any]) -> dict:
        from bench.run.pool import run_grid_pool

        with open_run_folder(options.out):
            return run_grid_pool(config, options, load_test, self.processes, threads=self.threads)


@dataclass(frozen=True)
class RayTasks:
    options: Any  # bench.run.distributed.RayOptions

    def run(self, config: RunConfig, options: RunOptions, load_test: Callable[[], Any]) -> dict:
        from bench.run.distributed import run_grid_ray

        with open_run_folder(options.out):
            return run_grid_ray(config, options, self.options, load_test)


def choose_executor(processes: int = 1, ray_options: Any | None = None, threads: int = 1) -> Executor:
    """Ray tasks when given Ray options, else ``processes`` > 1 local workers (``threads`` torch threads each),
    else this process (``bench run`` and ``bench demo`` alike)."""
    if ray_options is not None:
        return RayTasks(ray_options)
    return LocalPool(processes, threads) if processes > 1 else InProcess()
