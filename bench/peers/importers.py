"""Peers' formats in: Cohen et al. (2019, ``locuslab/smoothing``) checkpoints and per-image certify logs.

Both formats were set by Cohen et al.'s code and kept by later work (SmoothAdv, consistency regularisation,
MACER); everything here is read by code of this project, nothing of theirs is run.

* **Checkpoint** (their ``train.py``): ``torch.save({"epoch", "arch", "state_dict", "optimizer"})`` of the
  model ``Sequential(NormalizeLayer, net)``, so the weights are under ``1.`` (``1.module.`` for ImageNet, whose
  ``net`` is a ``DataParallel``). It is read with ``torch.load(weights_only=True)`` only, which rebuilds
  tensors and plain containers and refuses every other global, so code inside the file never runs; a file it
  refuses is refused here. :func:`import_cohen_model` rebuilds the architecture (:mod:`lsrs.cohen_models`),
  checks every key and shape, and writes a safetensors checkpoint plus an index entry for ``bench run``.
* **Certify log** (their ``certify.py``): a header ``idx label predict radius correct time`` and one
  tab-separated line per image; ``predict = -1`` is an abstention, ``time`` is seconds (``15.4``) or
  ``str(datetime.timedelta)`` (``0:00:15.400000``, ``1 day, 0:00:01``). Every complete line ends with a newline
  (they print each one and flush), so a last line without one is a truncated write: it is dropped with a
  warning, even where its prefix parses (``0.97`` of ``0.978``). :func:`import_certify_log` writes a run folder
  in this project's schema; what the log does not say is stored as null and listed in the manifest.

Every failure raises :class:`ImportRefused` (exit code 2, one line) before anything is written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from bench import store
from bench.errors import UsageError
from bench.peers.log_checks import LogLimits, decimal_int
from lsrs import checkpoint as ckpt
from lsrs.cohen_models import COHEN_ARCHS, build_cohen_model, cohen_to_local, local_to_cohen
from lsrs.smoothing import ABSTAIN

CHECKPOINT_FORMAT = "cohen2019-checkpoint"
LOG_FORMAT = "cohen2019-certify-log"
LOG_HEADER = ("idx", "label", "predict", "radius", "correct", "time")

LOG_BY_DEFINITION: dict[str, object] = {
    "method": "is", "fors": 0, "lipschitz": 1.0, "lipschitz_declared": 1.0, "latent_error": 0.0, "encode_s": 0.0,
    "sampler": "fixed", "certificate": "binary",
}
"""Columns fixed by what the log is: IS-RS (the encoder is the identity: L = 1, no latent rounding, no encoder
time; ``radius_latent = radius``) with the fixed-n, binary CERTIFY of Cohen et al.'s ``certify.py``."""


class ImportRefused(UsageError):
    """A peer file that cannot be imported; the message names the file and what is wrong (exit code 2)."""


def _sha256(path: Path) -> str:
    return ckpt.sha256_file(path)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------------------------------------- checkpoint
@dataclass
class CohenCheckpoint:
    """What a Cohen et al. ``checkpoint.pth.tar`` holds: the architecture, the epoch and the weights."""

    path: Path
    sha256: str
    arch: str
    epoch: int | None
    state_dict: dict[str, torch.Tensor]


def read_cohen_checkpoint(path: Path) -> CohenCheckpoint:
    """Read ``path`` with ``torch.load(weights_only=True)`` (no code runs) and check its top-level layout."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"{path}: no such checkpoint file")
    try:
        obj = ckpt.load_weights_only(path)
    except ckpt.PickleRefused as exc:
        raise ImportRefused(
            f"{path}: refused by torch.load(weights_only=True) (not plain tensors and containers, or corrupted): "
            f"{_one_line(str(exc))}"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ImportRefused(f"{path}: not a Cohen et al. checkpoint (expected a dict with 'arch' and 'state_dict')")
    arch = obj.get("arch")
    if not isinstance(arch, str):
        raise ImportRefused(f"{path}: the checkpoint has no 'arch' string (their train.py stores one)")
    if arch not in COHEN_ARCHS:
        raise ImportRefused(f"{path}: unknown arch {arch!r}; Cohen et al.'s architectures: {', '.join(COHEN_ARCHS)}")
    tensors = obj["state_dict"]
    bad = [str(k) for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ImportRefused(f"{path}: state_dict entries that are not named tensors: {', '.join(bad[:3])}")
    epoch = obj.get("epoch")
    return CohenCheckpoint(path, _sha256(path), arch, epoch if isinstance(epoch, int) else None, dict(tensors))


def _listed(what: str, keys: list[str]) -> str:
    """``3 missing (a, b, c, ...)``: the count and the first three keys."""
    return f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"


def _match_keys(source: CohenCheckpoint, expected: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict under this project's names; refuses (naming the keys) anything that does not fit.

    A missing ``num_batches_tracked`` (checkpoints of torch < 0.4.1) is filled with 0: at eval it is unused.
    """
    mapping, stray, prefix = cohen_to_local(list(source.state_dict), source.arch)
    local = {mapping[k]: v for k, v in source.state_dict.items() if k in mapping}
    unexpected = stray + [k for k, v in mapping.items() if v not in expected]
    missing = [k for k in expected if k not in local]
    filled = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [local_to_cohen(k, source.arch, prefix) for k in missing if k not in filled]
    shapes = [
        f"{k} {list(source.state_dict[k].shape)} (expected {list(expected[v].shape)})"
        for k, v in mapping.items() if v in expected and tuple(source.state_dict[k].shape) != tuple(expected[v].shape)
    ]
    problems = [_listed(what, keys) for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", shapes)) if keys]
    if problems:
        raise ImportRefused(f"{source.path}: weights do not match {source.arch}: {'; '.join(problems)}")
    for k in filled:
        local[k] = torch.zeros_like(expected[k])
    return local, len(filled)


@dataclass
class ImportedModel:
    """A written import: the safetensors checkpoint, its sha256 and its index entry."""

    path: Path
    sha256: str
    entry: dict
    model: torch.nn.Module = field(repr=False)


def convert_cohen_checkpoint(path: Path, dataset: str) -> tuple[torch.nn.Module, CohenCheckpoint, int]:
    """Build the checkpoint's architecture for ``dataset`` and load its weights (nothing written)."""
    source = read_cohen_checkpoint(path)
    try:
        model = build_cohen_model(source.arch, dataset=dataset)
    except ValueError as exc:
        raise ImportRefused(f"{source.path}: {exc}") from None
    tensors, filled = _match_keys(source, model.state_dict())
    model.load_state_dict(tensors, strict=True)
    return model.eval(), source, filled


def import_cohen_model(path: Path, dataset: str, sigma: float, out: Path, name: str | None = None) -> ImportedModel:
    """Import a Cohen et al. checkpoint trained at ``sigma`` as ``out/<dataset>/<name>.safetensors`` + index entry."""
    from lsrs.datasets import get_dataset

    model, source, filled = convert_cohen_checkpoint(path, dataset)
    if ckpt.index_path(out, dataset).is_file():  # an index that cannot take the entry: refuse before writing
        try:
            ckpt.read_index(out, dataset)
        except ckpt.CheckpointError as exc:
            raise ImportRefused(str(exc)) from None
    info = get_dataset(dataset)
    imported = {
        "format": CHECKPOINT_FORMAT, "source": source.path.name, "source_sha256": source.sha256,
        "source_arch": source.arch, "source_epoch": source.epoch, "num_batches_tracked_filled": filled,
    }
    meta = {
        "dataset": dataset, "sigma": float(sigma), "noise": "input", "width": 64 if source.arch == "resnet50" else 16,
        "in_size": info.in_size, "in_channels": info.in_channels, "num_classes": info.num_classes,
        "clean_acc": None, "noisy_acc": None, "imported": imported,
    }
    stem = name or f"{source.arch}-cohen-s{sigma:g}"
    target = Path(out) / dataset / f"{stem}.safetensors"
    digest = ckpt.save_checkpoint(target, model, meta)
    entry = {**ckpt.index_entry(ckpt.read_meta(target), target.name, digest), "imported": imported}
    ckpt.update_index(out, dataset, [entry])
    return ImportedModel(target, digest, entry, model)


# ------------------------------------------------------------------------------------------- certify log
_TIMEDELTA = re.compile(r"^(?:(?P<days>-?\d+) days?, )?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def parse_log_time(text: str) -> float:
    """Seconds of a ``time`` field: a number (``15.4``) or ``str(datetime.timedelta)`` (``0:00:15.400000``)."""
    match = _TIMEDELTA.match(text)
    if match:
        days = int(match["days"] or 0)
        return _dt.timedelta(days=days, hours=int(match["h"]), minutes=int(match["m"]),
                             seconds=float(match["s"])).total_seconds()
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"time {text!r} is not a duration")
    return value


def _line_time(text: str) -> float:
    """:func:`parse_log_time` of a log line, which must be a duration >= 0."""
    seconds = parse_log_time(text)
    if seconds < 0:
        raise ValueError(f"time {text!r} is negative")
    return seconds


def _parse_line(fields: list[str]) -> dict:
    if len(fields) != len(LOG_HEADER):
        raise ValueError(f"{len(fields)} fields, expected {len(LOG_HEADER)}")
    idx, label, predict, correct = (decimal_int(fields[i], LOG_HEADER[i]) for i in (0, 1, 2, 4))
    radius = float(fields[3])
    if idx < 0 or label < 0 or predict < ABSTAIN:
        raise ValueError("idx and label must be >= 0 and predict >= -1")
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius {fields[3]!r} is not a finite number >= 0")
    if correct not in (0, 1) or correct != int(predict == label):
        raise ValueError(f"correct={correct} contradicts predict={predict}, label={label}")
    return {"idx": idx, "label": label, "prediction": predict, "radius": radius if predict != ABSTAIN else 0.0,
            "correct": bool(correct), "total_s": _line_time(fields[5])}


@dataclass
class CertifyLog:
    """The parsed lines of a certify log, and the warnings about what was dropped."""

    path: Path
    sha256: str
    rows: pd.DataFrame
    warnings: list[str]


def read_certify_log(path: Path, limits: LogLimits | None = None) -> CertifyLog:
    """Parse a Cohen et al. certify log; a wrong header, a malformed complete line, a line that ``limits``
    exclude (:meth:`bench.peers.log_checks.LogLimits.check`) or a repeated idx is refused, naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"{path}: cannot read the log ({_one_line(exc)})") from None
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    if tuple(header) != LOG_HEADER:
        raise ImportRefused(
            f"{path}: wrong header {lines[0][:60]!r}; a Cohen et al. certify log starts with the tab-separated "
            f"'{' '.join(LOG_HEADER)}'"
        )
    notes: list[str] = []
    body, tail = lines[1:-1], lines[-1]  # text.split: the last piece is "" when the file ends with a newline
    if tail.strip():
        notes.append(f"{path.name}: dropped the truncated last line {tail[:60]!r} (no newline at its end)")
    rows = []
    for number, line in enumerate(body, start=2):
        if not line.strip():
            continue
        try:
            rows.append(_parse_line(line.rstrip("\r").split("\t")))
            if limits is not None:
                limits.check(rows[-1])
        except ValueError as exc:
            raise ImportRefused(f"{path}: line {number} {line[:60]!r} is malformed ({_one_line(exc)})") from None
    if not rows:
        raise ImportRefused(f"{path}: the log holds no complete line after its header")
    frame = pd.DataFrame(rows)
    repeated = frame["idx"][frame["idx"].duplicated()]
    if len(repeated):
        raise ImportRefused(f"{path}: image idx {int(repeated.iloc[0])} appears twice")
    return CertifyLog(path, _sha256(path), frame, notes)


@dataclass(frozen=True)
class LogDeclaration:
    """What the command line declares about a log (the log itself does not say it)."""

    dataset: str
    sigma: float
    n: int | None = None
    alpha: float | None = None
    name: str | None = None
    arch: str | None = None


def log_rows(log: CertifyLog, declared: LogDeclaration, run: str) -> list[dict]:
    """The log's lines as rows of :data:`bench.store.ROW_SCHEMA`; a column the log does not hold is null."""
    known = {"run": run, "dataset": declared.dataset, "sigma": float(declared.sigma), "n": declared.n,
             "alpha": declared.alpha, "arch": declared.arch, **LOG_BY_DEFINITION}
    base = dict.fromkeys(store.ROW_SCHEMA.names)
    return [{**base, **known, **rec, "radius_latent": rec["radius"]} for rec in log.rows.to_dict(orient="records")]


def unknown_columns(rows: list[dict]) -> list[str]:
    """The columns null in every row: what neither the log nor the command line says."""
    return [c for c in store.ROW_SCHEMA.names if all(r.get(c) is None for r in rows)]


def _run_hash(log: CertifyLog, declared: LogDeclaration) -> str:
    payload = json.dumps({"source_sha256": log.sha256, **declared.__dict__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def import_certify_log(path: Path, declared: LogDeclaration, out: Path) -> tuple[Path, CertifyLog, dict]:
    """Write ``path`` as the run folder ``out`` (one parquet part and ``_manifest.json``); returns the manifest.

    Every line is checked against the declared dataset and statistics (:class:`bench.peers.log_checks.LogLimits`)."""
    from lsrs.datasets import get_dataset

    if not (math.isfinite(declared.sigma) and declared.sigma > 0):
        raise ImportRefused(f"--sigma must be > 0 for a certify log (got {declared.sigma:g}): certificates need noise")
    info = get_dataset(declared.dataset)
    log = read_certify_log(path, LogLimits(info.num_classes, info.test_size, declared.sigma, declared.n,
                                           declared.alpha))
    out = Path(out)
    if out.exists() and (store.part_files(out) or (out / store.MANIFEST).exists()):
        raise ImportRefused(f"{out} already holds a run; choose another --out or remove it first")
    if out.exists() and not out.is_dir():
        raise ImportRefused(f"{out} is a file, not a run folder")
    run = _run_hash(log, declared)
    rows = log_rows(log, declared, run)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "config": {"dataset": declared.dataset, "sigmas": [float(declared.sigma)], "methods": ["is"], "fors": [],
                   "n": declared.n, "alpha": declared.alpha, "n0": None},
        "config_hash": run,
        "imported": {
            "format": LOG_FORMAT, "name": declared.name or out.name, "source": log.path.name,
            "source_sha256": log.sha256, "declared": {k: v for k, v in declared.__dict__.items() if v is not None},
            "images": len(log.rows), "warnings": log.warnings, "unknown_columns": unknown_columns(rows),
            "by_definition": sorted(LOG_BY_DEFINITION) + ["radius_latent"],
        },
        "versions": ckpt.package_versions(), "device": None, "checkpoints": {}, "models": {},
        "started": now, "finished": now,
    }
    store.write_part(out, rows, "imported")
    store.write_json(out / store.MANIFEST, manifest)
    return out, log, manifest


__all__ = [
    "CohenCheckpoint",
    "ImportRefused",
    "ImportedModel",
    "LogDeclaration",
    "convert_cohen_checkpoint",
    "import_certify_log",
    "import_cohen_model",
    "parse_log_time",
    "read_certify_log",
    "read_cohen_checkpoint",
    "unknown_columns",
]
