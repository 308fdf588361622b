"""What a report must say about the numbers it shows: bounds taken on trust, and how far a run's protocol is
from the paper's or a peer's when they are set side by side.

- A row certified with ``--trust-lipschitz`` (``lipschitz_source == "trusted"``) divides by the encoder's
  declared bound, which no proof backs (:mod:`lsrs.proofs`): :func:`trusted_caveat` names those
  configurations for the report's index, its tables' and its figures' captions.
- A table beside the paper's (``--compare-paper``) or beside a peer's states n, n0, α, the width and the image
  count of each run (:func:`protocol_text`) and warns where they differ from the paper's protocol
  (:data:`PAPER_PROTOCOL`: Cohen et al.'s n = 100,000, n0 = 100, α = 0.001, on every test image, with the
  paper's model width).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.report.labels import config_label, format_sigma

PAPER_PROTOCOL = {"n": 100_000, "n0": 100, "alpha": 0.001}
"""The certification protocol of the paper's tables (Cohen et al. 2019's CERTIFY settings)."""
PAPER_WIDTH = {"resnet18": 64, "wide_resnet34": 2}
"""The width of the paper's model of each architecture (ResNet18 base width 64; WRN-34-2 widen factor 2)."""
TRUSTED = "trusted"


def trusted_configs(df: pd.DataFrame) -> list[str]:
    """Labels (defense and σ) of the configurations with rows whose Lipschitz bound was taken on trust."""
    if "lipschitz_source" not in df.columns:
        return []
    rows = df[df["lipschitz_source"].astype(str) == TRUSTED]
    total = pd.to_numeric(df.get("fors_total"), errors="coerce").max() if "fors_total" in df else None
    keys = rows[["method", "fors", "sigma"]].drop_duplicates().sort_values(["sigma", "method", "fors"])
    return [f"{config_label(m, int(f), total)} at σ = {format_sigma(float(s))}"
            for m, f, s in keys.itertuples(index=False)]


def trusted_caveat(df: pd.DataFrame) -> str | None:
    """One sentence naming the trusted (unproven) bounds of a run, or None when every bound is proven."""
    configs = trusted_configs(df)
    if not configs:
        return None
    return (f"Trusted, unproven Lipschitz bound (--trust-lipschitz): {', '.join(configs)}; these radii rest on "
            "the encoder's declared bound, not on a proof.")


@dataclass(frozen=True)
class Protocol:
    """What a run was certified with: the n, n0 and α of its rows, its models' widths and its images."""

    n: tuple[int, ...]
    n0: tuple[int, ...]
    alpha: tuple[float, ...]
    widths: tuple[int, ...]
    arch: tuple[str, ...]
    images: int
    test_size: int | None


def _values(df: pd.DataFrame, column: str, cast) -> tuple:
    if column not in df.columns:
        return ()
    return tuple(sorted({cast(v) for v in pd.to_numeric(df[column], errors="coerce").dropna()}))


def _widths(manifest: dict) -> tuple[int, ...]:
    """The widths recorded in the metadata of the run's checkpoints (none when they cannot be read)."""
    from lsrs.checkpoint import read_meta

    widths = set()
    for record in (manifest.get("checkpoints") or {}).values():
        try:
            widths.add(int(read_meta(record["path"])["width"]))
        except Exception:  # noqa: BLE001 - a moved or foreign checkpoint: the width is unknown
            continue
    return tuple(sorted(widths))


def run_protocol(df: pd.DataFrame, manifest: dict, dataset: str) -> Protocol:
    """The :class:`Protocol` of a loaded run (:func:`bench.report.writer.load_run`)."""
    from lsrs.datasets import DatasetError, get_dataset

    sampled = df[pd.to_numeric(df.get("sigma"), errors="coerce") > 0] if "sigma" in df else df
    try:
        test_size = get_dataset(dataset).test_size
    except (DatasetError, ValueError):
        test_size = None
    arch = tuple(sorted(df["arch"].dropna().astype(str).unique())) if "arch" in df else ()
    images = int(df["idx"].nunique()) if "idx" in df else 0
    return Protocol(_values(sampled, "n", int), _values(sampled, "n0", int), _values(sampled, "alpha", float),
                    _widths(manifest), arch, images, test_size)


def _listed(values: tuple, fmt=str) -> str:
    return "/".join(fmt(v) for v in values) if values else "unknown"


def protocol_text(p: Protocol) -> str:
    """``n = 200, n0 = 16, α = 0.001, width 8, 30 of 360 test images``."""
    images = f"{p.images} of {p.test_size} test images" if p.test_size else f"{p.images} test images"
    return (f"n = {_listed(p.n, lambda v: f'{v:,}')}, n0 = {_listed(p.n0)}, α = {_listed(p.alpha, lambda v: f'{v:g}')}, "
            f"width {_listed(p.widths)}, {images}")


def protocol_differences(p: Protocol) -> list[str]:
    """How ``p`` differs from the paper's protocol (empty when it does not, as far as the run says)."""
    out = [f"{key} = {_listed(getattr(p, key))} (paper {want:g})" for key, want in PAPER_PROTOCOL.items()
           if getattr(p, key) and set(getattr(p, key)) != {want}]
    paper_widths = {PAPER_WIDTH[a] for a in p.arch if a in PAPER_WIDTH}
    if p.widths and paper_widths and set(p.widths) != paper_widths:
        out.append(f"width {_listed(p.widths)} (paper {_listed(tuple(sorted(paper_widths)))})")
    if p.test_size and p.images < p.test_size:
        out.append(f"{p.images} of {p.test_size} test images (paper: all)")
    return out


def protocol_warning(p: Protocol, who: str) -> str | None:
    """One warning (``who`` was not certified with the paper's protocol: ...) when ``p`` differs from it, else
    None."""
    diff = protocol_differences(p)
    if not diff:
        return None
    return (f"{who} was not certified with the paper's protocol (n = 100,000, n0 = 100, α = 0.001, the "
            f"paper's width, all test images): {'; '.join(diff)}; its numbers do not compare like for like with the "
            "paper's")


__all__ = ["PAPER_PROTOCOL", "PAPER_WIDTH", "Protocol", "protocol_differences", "protocol_text", "protocol_warning",
           "run_protocol", "trusted_caveat", "trusted_configs"]
