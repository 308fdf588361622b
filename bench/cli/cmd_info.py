"""``bench info``: latent shape, parameter counts, Lipschitz audit and FLOP split of one model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.cli.params import DATASET, BenchUsageError

BUILDER_OPTIONS = {"width": "--width", "widen": "--widen", "base_width": "--base-width", "stem_stride": "--stem-stride"}
"""Builder keywords set by options of their own; each applies to the architectures whose builder takes it."""


def model_config(
    arch: str,
    fors: int | None,
    dataset: str | None,
    width: int | None,
    widen: int | None,
    base_width: int | None,
    in_size: int | None,
    in_channels: int | None,
    num_classes: int | None,
    stem_stride: int | None = None,
) -> dict:
    """Builder keyword arguments from the command's options: what ``bench train`` builds for the dataset
    (the architecture's paper dataset by default, its paper FoR), then the explicit overrides."""
    import inspect

    from lsrs.architectures import get_architecture
    from lsrs.datasets import get_dataset

    try:
        record = get_architecture(arch)
    except ValueError as exc:
        raise BenchUsageError(f"--model: {exc}") from None
    fors = record.paper_fors if fors is None else fors
    try:
        record.check_fors(fors)
    except ValueError as exc:
        raise BenchUsageError(f"--fors: {exc}") from None
    config = record.config_for(get_dataset(dataset or record.paper_dataset or "cifar10"), fors)
    config.update({k: v for k, v in (("in_size", in_size), ("in_channels", in_channels),
                                     ("num_classes", num_classes)) if v is not None})
    takes = inspect.signature(record.builder).parameters
    given = {"width": width, "widen": widen, "base_width": base_width, "stem_stride": stem_stride}
    for key, value in given.items():
        if value is None:
            continue
        if key not in takes:
            own = [BUILDER_OPTIONS[k] for k in BUILDER_OPTIONS if k in takes]
            raise BenchUsageError(f"{BUILDER_OPTIONS[key]} does not apply to {arch}; it takes {', '.join(own) or 'none'}")
        config[key] = value
    return config


def model_info(model, input_shape: tuple[int, int, int], *, iters: int, steps: int, empirical: bool,
               progress=None, cache=None) -> dict:
    """Everything ``bench info`` prints, as plain data (the audit table as records).

    ``model`` is put in ``eval()`` with frozen parameters and audited in place, so the FLOP count and the
    audit share one build of the cached operators; ``cache`` reuses proven operator-norm bounds."""
    from lsrs.flops import flop_split
    from lsrs.lipschitz import audit

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    model.eval().requires_grad_(False)
    if progress is not None:
        progress("FLOP count, building the Cayley operators")
    flops = flop_split(model, input_shape)
    table = audit(model, input_shape, iters=iters, steps=steps, empirical=empirical, progress=progress,
                  cache=cache, in_place=True)
    return {
        "arch": model.arch,
        "fors": model.fors,
        "fors_total": model.fors_total,
        "config": model.config,
        "input_shape": list(input_shape),
        "latent_shape": list(model.latent_shape),
        "latent_dims": math.prod(model.latent_shape),
        "params": {"encoder": count(model.encoder), "classifier": count(model.classifier), "total": count(model)},
        "lipschitz": {k: table.attrs[k] for k in ("declared", "proven", "executed", "empirical", "sound")},
        "audit": table.to_dict(orient="records"),
        "flops": flops,
    }


def _num(v: float, spec: str = ".6f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render(info: dict, console: Console) -> None:
    shape = "x".join(map(str, info["latent_shape"]))
    console.print(
        f"[bold]{info['arch']}[/] FoR {info['fors']}/{info['fors_total']}  input "
        f"{'x'.join(map(str, info['input_shape']))}  latent z {shape} ({info['latent_dims']:,} dims)"
    )
    p = info["params"]
    console.print(f"parameters: encoder {p['encoder']:,}  classifier {p['classifier']:,}  total {p['total']:,}")

    audit = Table(title="Encoder Lipschitz audit: exact arithmetic vs as executed (float32 operators), "
                        "empirical = power iteration (float64)")
    for name in ("layer", "type", "in", "out", "exact", "product", "as executed", "product ", "empirical"):
        audit.add_column(name, justify="left" if name in ("layer", "type") else "right")
    for row in info["audit"]:
        audit.add_row(row["layer"], row["type"], row["input_shape"], row["output_shape"],
                      _num(row["bound"]), _num(row["cumulative"]), _num(row["executed"], ".9f"),
                      _num(row["cumulative_executed"], ".9f"), _num(row["empirical"], ".9f"))
    console.print(audit)
    lip = info["lipschitz"]
    verdict = "[green]sound[/]" if lip["sound"] else "[red]NOT SOUND[/]"
    console.print(
        f"declared L = {_num(lip['declared'], 'g')}   exact-arithmetic L <= {_num(lip['proven'])}   "
        f"as-executed L <= {_num(lip['executed'], '.9f')} (certificates divide by this)   "
        f"empirical L >= {_num(lip['empirical'], '.9f')} (power iteration + pair search)   {verdict}"
    )

    f = info["flops"]
    flops = Table(title="FLOPs per image")
    for name in ("encoder", "classifier", "total", "baseline (IS-RS)"):
        flops.add_column(name, justify="right")
    flops.add_row(
        f"{f['flops_encoder']:,}", f"{f['flops_classifier']:,}", f"{f['flops_total']:,}",
        f"{f['flops_baseline']:,}" if "flops_baseline" in f else "-",
    )
    console.print(flops)
    line = f"FLOP-ideal LS-RS speedup (total / classifier): {f['ideal_speedup']:.3f}x"
    if "ideal_speedup_vs_baseline" in f:
        line += f"   vs the baseline twin (baseline / classifier): {f['ideal_speedup_vs_baseline']:.3f}x"
    console.print(line)


@click.command("info", short_help="Latent shape, parameters, Lipschitz audit, FLOP split.")
@click.option("--model", "arch", metavar="NAME|MODULE:FUNCTION", default="resnet18", show_default=True,
              help="A registered architecture (resnet18, wide_resnet34, an installed plugin) or a builder "
                   "package.module:function.")
@click.option("--fors", type=click.IntRange(min=0), default=None,
              help="FoR k (of 18 for resnet18: 0,1,3,...,17; of 34 for wide_resnet34) [default: the paper's, "
                   "9 / 16].")
@click.option("--dataset", type=DATASET, default=None,
              help="Build the model bench train builds for this dataset (input shape, classes, default width; "
                   "imagenet: WRN-34-2 at 3x224x224 with a stride-4 stem) [default: the architecture's paper "
                   "dataset: cifar10 for resnet18, imagenet for wide_resnet34].")
@click.option("--width", type=click.IntRange(min=2), default=None,
              help="resnet18 base width [default: the dataset's, 64; digits 8].")
@click.option("--widen", type=click.IntRange(min=1), default=None,
              help="wide_resnet34 widening factor [default: imagenet 2, else 10].")
@click.option("--base-width", type=click.IntRange(min=2), default=None, help="wide_resnet34 stem width [default: 16].")
@click.option("--in-size", type=click.IntRange(min=1), default=None, help="Input height = width (overrides --dataset).")
@click.option("--stem-stride", type=click.Choice(["1", "2", "4"]), default=None,
              help="wide_resnet34: pixel-unshuffle at the stem [default: imagenet 4, else 1].")
@click.option("--in-channels", type=click.IntRange(min=1), default=None, help="Input channels (overrides --dataset).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classes (overrides --dataset).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Audit a trained checkpoint instead (its own config wins over the model options).")
@click.option("--iters", type=click.IntRange(min=1), default=30, show_default=True, help="Power-iteration steps.")
@click.option("--steps", type=click.IntRange(min=0), default=30, show_default=True,
              help="Gradient-ascent steps of the pair search (0 skips it).")
@click.option("--no-empirical", is_flag=True, help="Skip the empirical estimates (exact bounds only).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def command(arch, fors, dataset, width, widen, base_width, in_size, stem_stride, in_channels, num_classes, checkpoint,
            iters, steps, no_empirical, as_json) -> None:
    """Latent shape, parameter counts, Lipschitz audit and FLOP split of one model.

    The audit shows, per encoder stage, the bound of the proof in exact arithmetic (a Cayley convolution
    counts 1) beside the bound as executed (rigorous float64 bounds on the float32 operators the encoder
    applies), and compares them with a power-iteration / pair-search estimate; the FLOP-ideal speedup is
    total FLOPs / classifier FLOPs. With --checkpoint, the as-executed operator bounds are kept beside it
    (<checkpoint>.bounds.json, keyed by each operator's SHA-256) and reused when the same operators return.

    \b
    Example:
      bench info --model resnet18 --fors 9
      bench info --dataset digits --width 16 --fors 13 --json
      bench info --model wide_resnet34 --fors 16 --no-empirical    # the paper's ImageNet WRN-34-2
    """
    from bench.memory import keep_freed_memory
    from lsrs.executed import BoundCache
    from lsrs.models import build_model

    keep_freed_memory()  # operator-sized blocks are built and freed over and over at ImageNet size

    if checkpoint is not None:
        from lsrs.checkpoint import CheckpointError, load_checkpoint

        try:
            model, _ = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise BenchUsageError(str(exc)) from None
        cfg = model.config
    else:
        cfg = model_config(arch, fors, dataset, width, widen, base_width, in_size, in_channels, num_classes,
                           int(stem_stride) if stem_stride else None)
        try:
            model = build_model(arch, **cfg)
        except (TypeError, ValueError) as exc:
            raise BenchUsageError(str(exc)) from None
    input_shape = (int(cfg["in_channels"]), int(cfg["in_size"]), int(cfg["in_size"]))
    console = Console(stderr=True)
    stages = len(list(model.encoder.children())) + 2  # the FLOP count, each stage, the whole encoder
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task("Lipschitz audit", total=stages)

        def step(name: str) -> None:
            done = bar.tasks[0].completed
            bar.update(task, description=f"Lipschitz audit: {name}", completed=min(done + 1, stages))

        cache = BoundCache.beside(checkpoint) if checkpoint is not None else None
        info = model_info(model, input_shape, iters=iters, steps=steps, empirical=not no_empirical, progress=step,
                          cache=cache)
    if cache is not None:
        cache.save()
        info["bound_cache"] = {"path": str(cache.path), "reused": cache.hits, "computed": cache.misses}
        if not as_json:
            console.print(f"as-executed operator bounds: {cache.hits} reused, {cache.misses} computed "
                          f"(kept in {cache.path})")
    if as_json:
        click.echo(json.dumps(info, default=float))
    else:
        render(info, Console() if sys.stdout.isatty() else Console(width=200))  # whole tables in logs
