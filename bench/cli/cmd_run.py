"""``bench run``: certify the FoR × σ grid with IS-RS and LS-RS on the same test images."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click
from rich.console import Console

from bench import certifiers
from bench.certifiers.engine import COMPILE_MODES
from bench.cli.params import DATASET, FORS, N_LIST, SIGMAS, BenchUsageError, CommaList, dataset_help
from bench.devices import PRECISION_CHOICES, resolve_precision, usage_device

METHOD_LIST = CommaList(str, "method",
                        lambda m: None if m in certifiers.list_certifiers() else f"methods are {certifiers.describe_keys()}")


def _radius_ok(r: object) -> str | None:
    return None if 0 <= r < float("inf") else "radii must be finite and >= 0"  # type: ignore[operator]


class BatchSize(click.ParamType):
    """``auto`` or a positive integer."""

    name = "auto|INT"

    def convert(self, value, param, ctx):  # type: ignore[override]
        if value is None or value == "auto":
            return None
        try:
            size = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither 'auto' nor an integer", param, ctx)
        if size < 1:
            self.fail(f"batch size must be >= 1, got {size}", param, ctx)
        return size


class RunCommand(click.Command):
    """``bench run`` with an epilog computed on demand: how many images a certified accuracy needs for a given
    precision (exact Clopper-Pearson widths, :func:`bench.report.intervals.precision_lines`)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:  # noqa: D102
        from bench.report.intervals import precision_lines

        formatter.write_paragraph()
        formatter.write_text("Images needed: the certified accuracy of N images is known to ± the half-width of its "
                             "95 % Clopper-Pearson interval (widest at 50 %). A difference between two methods on the "
                             "same images is known more precisely the more often they agree; bench report states "
                             "each comparison's (docs/concepts/statistics.md).")
        with formatter.indentation():
            for line in precision_lines():
                formatter.write(" " * formatter.current_indent + line + "\n")


def default_out(dataset: str, config_hash: str) -> Path:
    return Path("results") / f"{dataset}-{config_hash[:8]}"


@click.command("run", cls=RunCommand, short_help="Certify the test images with IS-RS and LS-RS (the grid).")
@click.option("--dataset", type=DATASET, default="digits", show_default=True,
              help=dataset_help("Test set to certify."))
@click.option("--fors", type=FORS, default="1,5,9,13", show_default=True,
              help="FoR k of the LS-RS twins, for the checkpoints' architecture (ResNet18: 1,3,...,17 of 18; "
                   "WRN-34 (ImageNet): 16 of 34 as in the paper).")
@click.option("--sigmas", type=SIGMAS, default="0.25,0.5,1.0", show_default=True,
              help="Noise levels; 0 adds the clean-accuracy rows.")
@click.option("--methods", type=METHOD_LIST, default="is,ls", show_default=True, help="; ".join(f"{c.key} = {c.help}" for c in certifiers.registered()) + ".")
@click.option("--n0", type=click.IntRange(min=1), default=100, show_default=True, help="Selection samples.")
@click.option("--n", "n", type=N_LIST, default="100000", show_default=True,
              help="Estimation samples; a list (1000,4000,16000) makes n an axis of the grid, for the accuracy-time "
                   "front and the equal-time table of bench report. A run certified with some n is extended "
                   "in place by giving the same --out a list that contains them (only the new n are certified).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.001,
              show_default=True, help="Failure probability of each certificate.")
@click.option("--batch-size", type=BatchSize(), default="auto", show_default=True,
              help="Noise samples per forward pass; auto probes memory on CUDA, 256 on CPU.")
@click.option("--skip", type=click.IntRange(min=1), default=1, show_default=True,
              help="Certify every k-th image. A stored --out given a selection that contains its images "
                   "(--skip 2, then --skip 1) is extended: only the new images are certified.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Stop after this many images.")
@click.option("--per-class", type=click.IntRange(min=1), default=None,
              help="Only the first k images of each class (the paper uses 1 on ImageNet).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(list(PRECISION_CHOICES)), default="auto", show_default=True,
              help="Autocast precision of the base classifier (a reduced-precision classifier is still a valid "
                   "base classifier). auto: bf16 where the device computes it natively (CUDA compute capability "
                   ">= 8.0, CPUs with AVX-512 BF16 or AMX), else fp32.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Memory format of the noisy batches: channels_last, or NCHW. [default: channels_last, NCHW for "
                   "feature maps under 16x16 pixels on the CPU, where it is faster]")
@click.option("--fold-bn/--no-fold-bn", default=True, show_default=True,
              help="Fold BatchNorm into the preceding conv of the base classifier (same function up to rounding).")
@click.option("--compile", "compile_mode", type=click.Choice(list(COMPILE_MODES)), default="off", show_default=True,
              help="torch.compile the base classifier (reduce-overhead adds CUDA graphs on GPU; needs a C++ "
                   "compiler on CPU). Compilation happens in the untimed warm-up.")
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed (noise is seeded per image).")
@click.option("--checkpoints", type=click.Path(file_okay=False, path_type=Path), default=Path("results/checkpoints"),
              show_default=True, help="Checkpoint root holding <dataset>/index.json (bench train writes it), or that <dataset> folder.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="LSRS_DATA",
              help="Dataset folder for cifar10/imagenet (or set LSRS_DATA).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: results/<dataset>-<config hash>].")
@click.option("--allow-sigma-mismatch", is_flag=True, help="Certify with the nearest trained σ if none matches.")
@click.option("--fresh", is_flag=True, help="Discard what --out holds instead of resuming it.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept .pt/.pth checkpoints (loaded with torch.load(weights_only=True)); safetensors is the default.")
@click.option("--sampler", type=click.Choice(["fixed", "curtail"]), default="fixed", show_default=True,
              help="curtail: stop drawing once abstention is certain (same certificates as fixed).")
@click.option("--certificate", type=click.Choice(["binary", "multiclass"]), default="binary", show_default=True,
              help="binary: Cohen et al. (pB = 1 - pA); multiclass: paper Eq. 3 with a Bonferroni split of α.")
@click.option("--noise", type=click.Choice(["gaussian", "lattice"]), default="gaussian", show_default=True,
              help="lattice: the Gaussian rounded to the 8-bit lattice (latents: a fine power-of-two lattice), drawn "
                   "exactly, so the certificate covers the float arithmetic that runs (lsrs.lattice).")
@click.option("--decide-radii", type=CommaList(float, "radius", _radius_ok), default=None,
              help="Also decide, per image, certified robustness at these input radii (anytime-valid test).")
@click.option("--max-n", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Sample budget of each --decide-radii decision.")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS", default=None,
              help="Spread the grid over Ray tasks (image shard × config): auto = the running cluster, else a "
                   "local Ray; or a cluster address (host:6379, ray://host:10001). Needs the ray extra.")
@click.option("--ray-shard-size", type=click.IntRange(min=1), default=None,
              help="Images per Ray task [default: 10].")
@click.option("--ray-num-cpus", type=click.FloatRange(min=0, min_open=True), default=None,
              help="CPUs each Ray task asks for (also its torch threads) [default: 1].")
@click.option("--ray-num-gpus", type=click.FloatRange(min=0), default=None,
              help="GPUs each Ray task asks for; fractions share a GPU [default: 1 with CUDA, else 0].")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Local worker processes (as bench demo has them): shards of 20 images × config certified side "
                   "by side, one torch thread each; the rows do not depend on it. Not with --ray.")
@click.option("--trust-lipschitz", is_flag=True,
              help="Certify an encoder that has a module without a Lipschitz proof (lsrs.proofs) by dividing by "
                   "its declared bound, taken on trust; rows record lipschitz_source=trusted. Without it such an "
                   "encoder is refused.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or tables.")
def command(dataset, fors, sigmas, methods, n0, n, alpha, batch_size, skip, max_images, per_class, device,
            precision, channels_last, fold_bn, compile_mode, seed, checkpoints, data_dir, out, allow_sigma_mismatch, fresh,
            allow_pickle, sampler,
            certificate, noise, decide_radii, max_n, ray_address, ray_shard_size, ray_num_cpus, ray_num_gpus,
            processes, trust_lipschitz, quiet) -> None:
    """Certify the same test images with IS-RS (baseline) and LS-RS (each FoR twin) for every σ.

    Stores one parquet row per (image, method, FoR, σ, n) under --out and resumes an interrupted run when
    the same command is given again. Defaults follow Cohen et al. (n0=100, n=100,000, α=0.001).

    \b
    Example:
      bench run --dataset cifar10 --fors 1,5,9,13 --sigmas 0.25,0.5,1.0 --max-images 500
      bench run --dataset cifar10 --ray auto --ray-shard-size 20    # same results, on Ray workers
      bench run --dataset digits --n 1000,4000 --out results/front   # n axis: then bench report results/front
    """
    if ray_address is not None and processes > 1:
        raise BenchUsageError("--processes runs local workers and --ray runs Ray tasks: give one of them")
    ray_options = _ray_options(ray_address, ray_shard_size, ray_num_cpus, ray_num_gpus)

    from bench.report.writer import summarize
    from bench.run.console import print_table, summary_table
    from bench.run.executors import choose_executor
    from bench.run.runner import RunConfig, RunOptions
    from lsrs.checkpoint import index_architectures

    try:  # the architecture is that of the checkpoints (no index: the runner says how to train one)
        archs = index_architectures(checkpoints, dataset)
    except ValueError as exc:
        raise BenchUsageError(str(exc)) from None
    for certifier in certifiers.registered():  # each certifier checks that the checkpoints' architectures serve it
        if certifier.key in methods and certifier.check is not None:
            certifier.check(archs, tuple(fors))
    if ray_options is not None:
        from bench.run import distributed

        click.get_current_context().call_on_close(distributed.connect(ray_options.address))
        device_type = distributed.cluster_device_type(device)
    else:
        device_type = usage_device(device).type
    choice = resolve_precision(precision, device_type)
    if choice.warning:
        click.echo(f"warning: {choice.warning}", err=True)
    config = RunConfig(
        dataset=dataset, fors=tuple(fors), sigmas=tuple(sigmas), methods=tuple(methods), n0=n0, n=tuple(n), alpha=alpha,
        skip=skip, max_images=max_images, per_class=per_class, seed=seed,
        device_type=device_type, precision=choice.resolved, fold_bn=fold_bn, checkpoints=str(checkpoints),
        allow_sigma_mismatch=allow_sigma_mismatch, data_dir=data_dir, allow_pickle=allow_pickle, sampler=sampler,
        certificate=certificate, noise=noise,
        decide_radii=tuple(decide_radii or ()), max_n=max_n, compile=compile_mode, trust_lipschitz=trust_lipschitz,
    )
    out = out or default_out(dataset, config.config_hash())
    console = Console(quiet=quiet)
    options = RunOptions(out=out, batch_size=batch_size, channels_last=channels_last, fresh=fresh, quiet=quiet,
                         console=console, precision=choice.record())
    worker_data_dir = str(Path(data_dir).resolve()) if data_dir else None  # workers may start elsewhere
    load_test = partial(_load_test, dataset, worker_data_dir)  # picklable, for local workers and Ray tasks
    try:
        choose_executor(processes, ray_options).run(config, options, load_test)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the rows certified so far are stored in {out}; run the same command again to "
                   "resume", err=True)
        sys.exit(130)
    if not quiet:
        from bench.report.writer import load_run

        frame, manifest = load_run(out)
        print_table(console, summary_table(summarize(frame, manifest)))
        console.print(f"results: {out}  (pandas.read_parquet('{out}'))")


def _ray_options(address: str | None, shard_size: int | None, num_cpus: float | None, num_gpus: float | None):
    """The Ray options of ``--ray ...`` (None without ``--ray``, where the other ``--ray-*`` are refused)."""
    given = {"--ray-shard-size": shard_size, "--ray-num-cpus": num_cpus, "--ray-num-gpus": num_gpus}
    if address is None:
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise BenchUsageError(f"{', '.join(extra)} only apply with --ray auto|ADDRESS")
        return None
    if not address.strip():
        raise BenchUsageError("--ray needs 'auto' or a cluster address such as head-node:6379")
    from bench.run.distributed import DEFAULT_SHARD_SIZE, RayOptions

    return RayOptions(address=address.strip(), shard_size=shard_size or DEFAULT_SHARD_SIZE,
                      num_cpus=num_cpus if num_cpus is not None else 1.0, num_gpus=num_gpus)


def _load_test(dataset: str, data_dir: str | None):
    from lsrs.data import DatasetMissingError, load_dataset

    try:
        return load_dataset(dataset, "test", data_dir=data_dir)
    except DatasetMissingError as exc:
        raise BenchUsageError(str(exc)) from None
