"""The paper's published numbers (Tables 1, 2 and 3 of "Latent Space Randomized Smoothing"), transcribed.

``bench/data/paper_tables.csv`` holds one row per printed table row, with the number of the table it was
copied from (Table 1: CIFAR-10 main results, Table 2: FoR ablation on CIFAR-10, Table 3: ImageNet, appendix).
Rows printed twice (FoR 9/18 is in Tables 1 and 2) are kept twice, each with its own table number.
Columns: ``table, dataset, arch, defense, sigma, fors, fors_total, acr, accuracy, time_s``; ``time_s`` is
empty where the paper prints "-" (the sigma = 0 clean-accuracy rows).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from bench import certifiers

PAPER_TITLE = "Latent Space Randomized Smoothing"
PAPER_DATASETS = ("cifar10", "imagenet")
MAIN_TABLE = {"cifar10": 1, "imagenet": 3}
ABLATION_TABLE = {"cifar10": 2}

_COLUMNS = ["table", "dataset", "arch", "defense", "sigma", "fors", "fors_total", "acr", "accuracy", "time_s"]


def load_paper_tables() -> pd.DataFrame:
    """All transcribed rows of the paper's Tables 1-3, in the order printed."""
    with resources.files("bench").joinpath("data/paper_tables.csv").open("r", encoding="utf-8") as fh:
        df = pd.read_csv(fh)
    missing = set(_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"paper_tables.csv lacks columns {sorted(missing)}")
    df = df[_COLUMNS].astype(
        {"table": int, "sigma": float, "fors": int, "fors_total": int, "acr": float, "accuracy": float}
    )
    df["time_s"] = df["time_s"].astype(float)
    df["method"] = df["defense"].map({c.defense: c.key for c in certifiers.registered()})
    return df


def reference_dataset(dataset: str | None) -> str:
    """The paper dataset to compare a run of ``dataset`` with: itself if the paper has it, else CIFAR-10."""
    return dataset if dataset in PAPER_DATASETS else "cifar10"


def paper_values(dataset: str, tables: tuple[int, ...]) -> pd.DataFrame:
    """Rows of ``dataset`` from the given tables, one per (method, fors, sigma), first table listed wins.

    Adds ``speedup``: the IS-RS time at the same sigma (from the dataset's main table) over the row's time.
    """
    df = load_paper_tables()
    df = df[df["dataset"] == dataset]
    order = {t: i for i, t in enumerate(tables)}
    sel = df[df["table"].isin(tables)].copy()
    sel["_order"] = sel["table"].map(order)
    sel = (
        sel.sort_values("_order", kind="stable")
        .drop_duplicates(["method", "fors", "sigma"])
        .drop(columns="_order")
    )
    main = df[(df["table"] == MAIN_TABLE.get(dataset, 1)) & df["method"].map(certifiers.is_reference).astype(bool)]
    is_time = dict(zip(main["sigma"].round(6), main["time_s"], strict=True))
    sel["speedup"] = sel["sigma"].round(6).map(is_time) / sel["time_s"]
    return sel.reset_index(drop=True)
