"""click parameter types and errors shared by the ``bench`` commands.

Bad input exits with code 2 and one line saying what is wrong and how to fix it (no traceback).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import click

from lsrs.datasets import (
    BUILTIN_DATASETS,
    DATASETS,
    ENTRY_POINT_GROUP,
    DatasetError,
    get_dataset,
    list_datasets,
)


class BenchUsageError(click.ClickException):
    """A domain error found after parsing (missing checkpoint, sigma mismatch...): exit code 2, one line."""

    exit_code = 2


class CommaList(click.ParamType):
    """A comma-separated list such as ``1,5,9,13``, each item converted and checked."""

    def __init__(self, item: Callable[[str], object], what: str, check: Callable[[object], str | None] | None = None):
        self.item = item
        self.what = what
        self.check = check
        self.name = f"{what}[,{what}...]"

    def convert(self, value, param, ctx):  # type: ignore[override]
        if isinstance(value, (list, tuple)):
            return list(value)
        parts = [p.strip() for p in str(value).split(",")]
        if not any(parts):
            self.fail(f"expected a comma-separated list of {self.what}s, got {value!r}", param, ctx)
        if not all(parts):
            self.fail(f"{value!r} has an empty item (two commas, or one at an end); list each {self.what} once",
                      param, ctx)
        out = []
        for part in parts:
            try:
                v = self.item(part)
            except ValueError:
                self.fail(f"{part!r} is not a valid {self.what} (in {value!r})", param, ctx)
            if self.check is not None and (msg := self.check(v)):
                self.fail(f"{part!r}: {msg}", param, ctx)
            out.append(v)
        if len(set(out)) != len(out):
            self.fail(f"{value!r} lists a value twice", param, ctx)
        return out


def _nonneg_finite(v: object) -> str | None:
    if not math.isfinite(v) or v < 0:  # type: ignore[operator, arg-type]
        return "sigma must be a finite number >= 0 (0 gives the clean-accuracy rows)"
    return None


def _nonneg_int(v: object) -> str | None:
    return None if v >= 0 else "must be >= 0"  # type: ignore[operator]


def _positive_int(v: object) -> str | None:
    return None if v >= 1 else "noise sample counts must be >= 1"  # type: ignore[operator]


class DatasetName(click.ParamType):
    """``--dataset`` of bench train / run / info: a name the dataset registry knows (:mod:`lsrs.datasets`: a
    built-in, a registered dataset, an installed plugin or ``package.module:RECORD``), checked when the command
    line is parsed; the value is the record's name. The help's metavar lists the built-in and installed
    datasets from their entry points, without loading a plugin or importing torch."""

    name = "dataset"

    def get_metavar(self, param, ctx=None) -> str:  # type: ignore[override]
        return f"[{'|'.join(list_datasets())}]"

    def convert(self, value, param, ctx):  # type: ignore[override]
        if value in DATASETS:
            return value
        try:
            return get_dataset(str(value)).name
        except DatasetError as exc:
            self.fail(str(exc), param, ctx)

    def shell_complete(self, ctx, param, incomplete):  # type: ignore[override]
        from click.shell_completion import CompletionItem

        return [CompletionItem(name) for name in list_datasets() if name.startswith(incomplete)]


def dataset_help(lead: str) -> str:
    """``lead`` then how each built-in dataset is obtained (from its record) and how a plugin adds one."""
    obtain = "; ".join(f"{name}: {DATASETS[name].obtain}" for name in BUILTIN_DATASETS)
    return (f"{lead} Built in: {obtain}. Other datasets: an installed plugin of the {ENTRY_POINT_GROUP} entry "
            "points, or package.module:RECORD (a lsrs.datasets.DatasetInfo).")


DATASET = DatasetName()
SIGMAS = CommaList(float, "sigma", _nonneg_finite)
FORS = CommaList(int, "fors", _nonneg_int)
N_LIST = CommaList(int, "n", _positive_int)  # the n axis of bench run: --n 1000 or --n 1000,4000,16000
