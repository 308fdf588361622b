"""The certification grid over local worker processes: every core of one machine, the same rows.

The parent plans the run like a one-process run (:meth:`bench.run.runner.GridRunner.plan`: same images, same
resume), splits what is left into shards of (job × images), a job being one (method, FoR, σ, n) and certifies them in spawned worker processes
with :func:`bench.run.distributed.certify_shard` -- the code of the Ray tasks, which writes each shard's rows as
one parquet part in a single atomic replace -- and collects their summaries with
:func:`bench.run.shards.collect_shard`, as every executor does. Each image's noise is seeded from (run seed,
image, method, FoR, σ), so the certificates equal those of the one-process loop whichever worker certifies an image
(bit for bit on the CPU; on a GPU each process's cuDNN autotuner picks its own kernels, whose last bits can move a
borderline vote). The parent
keeps the only progress display (one bar per job, advanced as shards finish) and writes the manifest. A worker
that dies costs only the shards it had in flight: they are certified again in a new pool (``PoolGridRunner._certify``).
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from bench import store
from bench.errors import UsageError
from bench.run.console import grid_progress
from bench.run.distributed import FaultHook, certify_shard, shard_specs
from bench.run.runner import GridRunner, RunConfig, RunOptions, grid_labels
from bench.run.shards import Tally, clear_staging, collect_shard, finish_run

SHARD_SIZE = 20  # images per task: bars move often, and a worker loads each job's model at most a few times
MAX_ATTEMPTS = 3  # tries of a shard whose worker process dies before the run gives it up


class ShardsLostError(UsageError):
    """Shards whose worker process died :data:`MAX_ATTEMPTS` times; the message names the first and its cause."""


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


class PoolGridRunner(GridRunner):
    """The grid of a :class:`RunConfig` in ``processes`` local worker processes; same store, same resume."""

    def run_pool(self, labels: list[int], load_test: Callable[[], torch.utils.data.Dataset], processes: int,
                 threads: int = 1, shard_size: int = SHARD_SIZE, fault_hook: FaultHook | None = None) -> dict:
        """Certify what is left of the grid; ``load_test`` must be picklable (a module-level function or a
        ``functools.partial`` of one). Returns the final manifest. ``fault_hook`` (picklable) is the testing
        aid of :data:`bench.run.distributed.FaultHook`, called in the workers."""
        opts = self.options
        plan = self.plan(labels)
        manifest = plan.manifest
        specs = shard_specs(self.config, opts, plan, shard_size, threads)
        progress = grid_progress(opts.console, opts.quiet)
        tallies = {job: Tally() for job in plan.jobs}
        with progress:
            bars = plan.add_bars(progress)
            try:
                for spec, summary in self._certify(specs, load_test, processes, threads, fault_hook):
                    collect_shard(manifest, summary, tallies[spec.job])
                    progress.update(bars[spec.job], advance=len(spec.indices), summary=tallies[spec.job].summary())
                    store.write_json(self.out / store.MANIFEST, manifest)
            finally:
                store.write_json(self.out / store.MANIFEST, manifest)
                clear_staging(self.out)
        return finish_run(self.out, manifest)

    @staticmethod
    def _certify(specs, load_test, processes: int, threads: int, fault_hook=None):
        """Yield (spec, summary) as shards finish; a failing shard stops the others and raises its error.

        A worker that dies (killed, out of memory) breaks the pool: every shard it had in flight is put back
        in the queue and a new pool goes on; the shards already yielded are stored and kept. At most
        ``processes`` shards are in flight, so a death charges an attempt to few shards; a shard that was in
        flight at :data:`MAX_ATTEMPTS` deaths is given up, and once the others are done one line names it."""
        queue = deque(specs)
        attempts: Counter[str] = Counter()
        lost: list[tuple[object, BaseException]] = []
        ctx = mp.get_context("spawn")
        while queue:
            pool = ProcessPoolExecutor(max_workers=min(processes, len(queue)), mp_context=ctx,
                                       initializer=_init_worker, initargs=(threads,))
            pending: dict = {}
            try:
                broken = False
                while queue or pending:
                    while queue and not broken and len(pending) < processes:
                        try:
                            pending[pool.submit(certify_shard, queue[0], load_test, fault_hook)] = queue[0]
                        except BrokenProcessPool as exc:  # broke since the last shard finished: the next pool
                            broken = True                     # takes it (charged when no shard was in flight,
                            if not pending:                   # as when workers cannot start at all)
                                attempts[queue[0].name] += 1
                                if attempts[queue[0].name] >= MAX_ATTEMPTS:
                                    lost.append((queue.popleft(), exc))
                            break
                        queue.popleft()
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        spec = pending.pop(future)
                        try:
                            summary = future.result()
                        except BrokenProcessPool as exc:  # its worker (or a sibling) died: try it again
                            broken = True
                            attempts[spec.name] += 1
                            if attempts[spec.name] >= MAX_ATTEMPTS:
                                lost.append((spec, exc))
                            else:
                                queue.appendleft(spec)
                            continue
                        yield spec, summary
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        if lost:
            spec, exc = lost[0]
            raise ShardsLostError(
                f"{len(lost)} shard(s) lost their worker process {MAX_ATTEMPTS} times (first: {spec.job.label}, "
                f"images {spec.indices[0]}..{spec.indices[-1]}: {str(exc).splitlines()[0]}; an out-of-memory kill "
                "is the usual cause); the other shards are stored: run the same command again to retry them"
            )


def run_grid_pool(config: RunConfig, options: RunOptions, load_test: Callable[[], torch.utils.data.Dataset],
                  processes: int, threads: int = 1) -> dict:
    """:func:`bench.run.runner.run_grid` over ``processes`` local workers (``threads`` torch threads each)."""
    labels = grid_labels(config, load_test())
    return PoolGridRunner(config, options).run_pool(labels, load_test, processes, threads)


__all__ = ["MAX_ATTEMPTS", "PoolGridRunner", "ShardsLostError", "run_grid_pool"]
