"""The certification grid over local worker processes: every core of one machine, the same rows.

The parent plans the run like a one-process run (:meth:`bench.run.runner.GridRunner.plan`: same images, same
resume), splits what is left into shards of (job × images), a job being one (method, FoR, σ, n) and certifies them in spawned worker processes
with :func:`bench.run.distributed.certify_shard` -- the code of the Ray tasks, which writes each shard's rows as
one parquet part in a single atomic replace -- and collects their summaries with
:func:`bench.run.shards.collect_shard`, as every executor does. Each image's noise is seeded from (run seed,
image, method, FoR, σ), so the certificates equal those of the one-process loop whichever worker certifies an image
(bit for bit on the CPU; on a GPU each process's cuDNN autotuner picks its own kernels, whose last bits can move a
borderline vote). The parent
keeps the only progress display (one bar per job, advanced as shards finish) and writes the manifest.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch

from bench import store
from bench.run.console import grid_progress
from bench.run.distributed import certify_shard, shard_specs
from bench.run.runner import GridRunner, RunConfig, RunOptions, grid_labels
from bench.run.shards import Tally, clear_staging, collect_shard, finish_run

SHARD_SIZE = 20  # images per task: bars move often, and a worker loads each job's model at most a few times


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


class PoolGridRunner(GridRunner):
    """The grid of a :class:`RunConfig` in ``processes`` local worker processes; same store, same resume."""

    def run_pool(self, labels: list[int], load_test: Callable[[], torch.utils.data.Dataset], processes: int,
                 threads: int = 1, shard_size: int = SHARD_SIZE) -> dict:
        """Certify what is left of the grid; ``load_test`` must be picklable (a module-level function or a
        ``functools.partial`` of one). Returns the final manifest."""
        opts = self.options
        plan = self.plan(labels)
        manifest = plan.manifest
        specs = shard_specs(self.config, opts, plan, shard_size, threads)
        progress = grid_progress(opts.console, opts.quiet)
        tallies = {job: Tally() for job in plan.jobs}
        with progress:
            bars = plan.add_bars(progress)
            try:
                for spec, summary in self._certify(specs, load_test, processes, threads):
                    collect_shard(manifest, summary, tallies[spec.job])
                    progress.update(bars[spec.job], advance=len(spec.indices), summary=tallies[spec.job].summary())
                    store.write_json(self.out / store.MANIFEST, manifest)
            finally:
                store.write_json(self.out / store.MANIFEST, manifest)
                clear_staging(self.out)
        return finish_run(self.out, manifest)

    @staticmethod
    def _certify(specs, load_test, processes: int, threads: int):
        """Yield (spec, summary) as shards finish; a failing shard stops the others and raises its error."""
        if not specs:
            return
        ctx = mp.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(processes, len(specs)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(threads,))
        try:
            pending = {pool.submit(certify_shard, spec, load_test): spec for spec in specs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def run_grid_pool(config: RunConfig, options: RunOptions, load_test: Callable[[], torch.utils.data.Dataset],
                  processes: int, threads: int = 1) -> dict:
    """:func:`bench.run.runner.run_grid` over ``processes`` local workers (``threads`` torch threads each)."""
    labels = grid_labels(config, load_test())
    return PoolGridRunner(config, options).run_pool(labels, load_test, processes, threads)


__all__ = ["PoolGridRunner", "run_grid_pool"]
