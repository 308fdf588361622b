"""Checkpoints: safetensors weights, JSON metadata, sha256, and a per-dataset index of the trained pairs.

A checkpoint ``<name>.safetensors`` holds the model's ``state_dict`` and, in its header (key
``lsrs_meta``), the JSON metadata needed to rebuild the model (``arch``, builder ``config``, ``fors``,
``sigma`` trained at, noise location, dataset and preprocessing, recipe, accuracies, ``encoder_lipschitz``,
package versions). The same metadata plus the file's ``sha256`` sits beside it in ``<name>.json``.

``<root>/<dataset>/index.json`` lists the trained models of a dataset, so that ``bench run`` finds the
IS-RS baseline (FoR 0) and the LS-RS twin of each FoR for each sigma (paper, Tables 1-2) without file paths.

Loading validates everything (file present, metadata parses, architecture/FoR/shapes match the weights,
sha256 matches) and raises :class:`CheckpointError` naming the file and the problem. Pickled ``.pt`` /
``.pth`` files are refused unless ``allow_pickle=True``, and even then are read with
``torch.load(weights_only=True)``, which never runs code carried by the pickle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from lsrs.atomic import replacing

FORMAT = "lsrs-checkpoint/1"
INDEX_FORMAT = "lsrs-index/1"
META_KEY = "lsrs_meta"
INDEX_NAME = "index.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
INDEX_REQUIRED = (
    "arch", "fors", "sigma", "path", "sha256", "width", "in_size", "num_classes", "clean_acc", "noisy_acc",
)


class CheckpointError(Exception):
    """A checkpoint or index cannot be used; the message names the file and the problem."""


# ------------------------------------------------------------------------------------------------ helpers
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages that produced a checkpoint."""
    import numpy
    import safetensors

    import lsrs

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "lsrs": lsrs.__version__,
    }
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint, its sidecar or the index failed (a full disk, a read-only folder); the file it
    would have replaced is left as it was, and no temporary file is left behind."""


def _write_failed(path: Path, exc: BaseException) -> CheckpointWriteError:
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return CheckpointWriteError(f"cannot write {path}: {reason}; free space or give a writable --out, then run the "
                                "same command again to resume")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (:func:`lsrs.atomic.replacing`); a failed write raises
    :class:`CheckpointWriteError` and leaves ``path`` as it was."""
    with replacing(path, (OSError,), _write_failed) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_tensors_atomic(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """``safetensors.torch.save_file`` written whole (:func:`lsrs.atomic.replacing`, never half-written); a
    failed write (``OSError`` or ``SafetensorError``, as on a full disk) raises :class:`CheckpointWriteError`."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with replacing(path, (OSError, SafetensorError), _write_failed) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))


def state_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``module.state_dict()`` as independent, contiguous CPU tensors (safetensors refuses shared storage)."""
    return {prefix + k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def weights_path_of(path: str | os.PathLike) -> Path:
    """The weights file for ``path`` (a ``.json`` sidecar names its weights; any other path is the weights)."""
    p = Path(path)
    if p.suffix == ".json":
        try:
            side = json.loads(p.read_text(encoding="utf-8"))
            return p.parent / side["weights"]
        except (OSError, ValueError, KeyError, TypeError):
            return p.with_suffix(".safetensors")
    return p


def sidecar_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def _model_fields(model: nn.Module) -> dict:
    fields: dict = {
        "arch": model.arch,
        "fors": int(model.fors),
        "fors_total": int(model.fors_total),
        "config": dict(model.config),
        "encoder_lipschitz": float(model.encoder_lipschitz),
        "latent_shape": [int(s) for s in model.latent_shape],
    }
    for key in ("in_size", "num_classes", "in_channels"):
        if key in model.config:
            fields[key] = model.config[key]
    from lsrs.architectures import get_architecture

    try:
        record = get_architecture(model.arch)
    except ValueError:  # a hand-made Split of no registered architecture: saved, but not rebuildable by name
        record = None
    width_param = record.width_param if record is not None else "width"
    if width_param in model.config:  # WRN-34: the widen factor plays the width's role
        fields["width"] = model.config[width_param]
    if record is not None:
        fields["arch_source"] = record.source
    return fields


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# --------------------------------------------------------------------------------------------------- save
def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: Mapping) -> str:
    """Write ``model`` (a :class:`lsrs.models.Split`) to ``path`` (safetensors) plus a JSON sidecar.

    ``meta`` adds the training facts (dataset, sigma, noise, epochs, accuracies, ...). Fields derived from
    the model (``arch``, ``fors``, ``config``, ``encoder_lipschitz`` ...) are filled in from it, and a
    ``meta`` value contradicting them raises :class:`CheckpointError`. Returns the file's sha256.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are written as .safetensors files")
    fields = _model_fields(model)
    for key, value in fields.items():
        if key in meta and not _same(meta[key], value):
            raise CheckpointError(f"{path}: metadata {key}={meta[key]!r} contradicts the model ({value!r})")
    full = {"format": FORMAT, **dict(meta), **fields}
    full.setdefault("versions", package_versions())
    full.setdefault("saved_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    full.pop("sha256", None)
    full.pop("weights", None)
    try:
        header = json.dumps(full, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata is not JSON-serialisable ({exc})") from None
    save_tensors_atomic(state_tensors(model), path, {"format": FORMAT, META_KEY: header})
    digest = sha256_file(path)
    side = {**full, "weights": path.name, "sha256": digest}
    try:
        atomic_write_text(sidecar_path(path), json.dumps(side, indent=2, sort_keys=True) + "\n")
    except CheckpointWriteError:  # weights without their sidecar's sha256 would not load: remove them
        path.unlink(missing_ok=True)
        raise
    return digest


# --------------------------------------------------------------------------------------------------- load
def read_meta(path: str | os.PathLike) -> dict:
    """Metadata of a safetensors checkpoint (header merged with the sidecar's ``sha256``), not verified."""
    weights = weights_path_of(path)
    meta = _header_meta(weights)
    side = sidecar_path(weights)
    if side.is_file():
        meta["sha256"] = _read_sidecar(side).get("sha256")
    return meta


def _header_meta(weights: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"{weights}: not a valid safetensors file (truncated or corrupted?): {exc}"
        ) from None
    raw = header.get(META_KEY)
    if raw is None:
        raise CheckpointError(f"{weights}: safetensors header has no '{META_KEY}' metadata (not an lsrs checkpoint)")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{weights}: metadata in the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{weights}: metadata in the safetensors header is not a JSON object")
    return meta


def _read_json(path: Path, what: str) -> object:
    """Parsed JSON of ``path``; a read or parse failure is a :class:`CheckpointError` naming ``what``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {what} ({exc})") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({exc})") from None


def _read_sidecar(side: Path) -> dict:
    data = _read_json(side, "metadata")
    if not isinstance(data, dict):
        raise CheckpointError(f"{side}: metadata is not a JSON object")
    return data


def _check_meta(meta: dict, where: Path) -> None:
    missing = [k for k in ("arch", "fors", "config") if k not in meta]
    if missing:
        raise CheckpointError(f"{where}: metadata lacks {', '.join(missing)}")
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{where}: metadata 'config' must be a JSON object")


def _build(meta: dict, where: Path) -> nn.Module:
    from lsrs.architectures import get_architecture

    try:
        model = get_architecture(meta["arch"], source=meta.get("arch_source")).build(**meta["config"])
    except Exception as exc:  # noqa: BLE001 - any builder failure is a bad checkpoint
        raise CheckpointError(
            f"{where}: cannot build {meta['arch']!r} with config {meta['config']} ({type(exc).__name__}: {exc})"
        ) from None
    if int(model.fors) != int(meta["fors"]):
        raise CheckpointError(f"{where}: metadata says fors={meta['fors']} but its config builds fors={model.fors}")
    return model


def _load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], meta: dict, where: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad_shape = [
        f"{k} {list(tensors[k].shape)} vs {list(expected[k].shape)}"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} with wrong shape (e.g. {'; '.join(bad_shape[:3])})")
        raise CheckpointError(
            f"{where}: weights do not match {meta['arch']} fors={meta['fors']} "
            f"(config {meta['config']}): {', '.join(parts)} tensors"
        )
    try:
        model.load_state_dict(dict(tensors), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not load: {exc}") from None


def _check_expected(meta: dict, expected: Mapping[str, object] | None, where: Path) -> None:
    for key, want in (expected or {}).items():
        if key not in meta or not _same(meta[key], want):
            raise CheckpointError(f"{where}: expected {key}={want!r}, the checkpoint has {meta.get(key)!r}")


def load_checkpoint(
    path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    expected_sha256: str | None = None,
    device: str | torch.device = "cpu",
    expected: Mapping[str, object] | None = None,
) -> tuple[nn.Module, dict]:
    """Load and validate a checkpoint; returns ``(model in eval mode on device, metadata)``.

    ``path`` is the ``.safetensors`` file or its ``.json`` sidecar (or, with ``allow_pickle``, a ``.pt``
    / ``.pth`` file read by ``torch.load(weights_only=True)``, with metadata in a ``meta`` entry or a JSON
    sidecar). ``expected_sha256`` (e.g. from the index) and ``expected`` metadata values (e.g.
    ``{"fors": 9, "sigma": 0.5}``) must match. Every failure raises :class:`CheckpointError`.
    """
    weights = weights_path_of(path)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint file not found")
    if weights.suffix.lower() in PICKLE_SUFFIXES:
        model, meta = _load_pickle(weights, allow_pickle, expected_sha256)
    else:
        model, meta = _load_safetensors(weights, expected_sha256)
    _check_expected(meta, expected, weights)
    meta["path"] = str(weights)
    return model.to(device).eval(), meta


def _verify_sha(weights: Path, side_meta: dict | None, expected_sha256: str | None) -> str:
    digest = sha256_file(weights)
    for source, want in (("expected", expected_sha256), (str(sidecar_path(weights)), (side_meta or {}).get("sha256"))):
        if want is not None and str(want).lower() != digest:
            raise CheckpointError(
                f"{weights}: sha256 mismatch (file {digest[:16]}..., {source} {str(want)[:16]}...): "
                "the weights were modified or corrupted"
            )
    return digest


def _load_safetensors(weights: Path, expected_sha256: str | None) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    meta = _header_meta(weights)
    side = sidecar_path(weights)
    side_meta = _read_sidecar(side) if side.is_file() else None
    digest = _verify_sha(weights, side_meta, expected_sha256)
    _check_meta(meta, weights)
    if side_meta is not None:
        for key in ("arch", "fors", "config", "sigma"):
            if key in side_meta and key in meta and not _same(side_meta[key], meta[key]):
                raise CheckpointError(
                    f"{side}: {key}={side_meta[key]!r} disagrees with the weights' header ({meta[key]!r})"
                )
    model = _build(meta, weights)
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{weights}: cannot read tensors (truncated or corrupted?): {exc}") from None
    _load_weights(model, tensors, meta, weights)
    meta["sha256"] = digest
    return model, meta


def _pickle_reason(exc: BaseException) -> str:
    """The informative line of a ``torch.load`` error (its ``WeightsUnpickler error:`` sentence if any)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        rest = [ln.strip() for ln in text.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()]
        if rest:
            return rest[0].split(". Please use")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


class PickleRefused(ValueError):
    """``torch.load(weights_only=True)`` refused a file (it needs more than tensors and plain containers) or could
    not read it; the message is the one informative line of torch's error."""


def load_weights_only(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: no code carried by the file runs (PyTorch's restricted
    unpickler); a refusal or a corrupted file raises :class:`PickleRefused`."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
        raise PickleRefused(_pickle_reason(exc)) from None


def _load_pickle(weights: Path, allow_pickle: bool, expected_sha256: str | None) -> tuple[nn.Module, dict]:
    if not allow_pickle:
        raise CheckpointError(
            f"{weights}: refusing to load a pickle checkpoint (pickles can run code); convert it to "
            "safetensors, or pass --allow-pickle to read its tensors with torch.load(weights_only=True)"
        )
    side = sidecar_path(weights)
    side_meta = _read_sidecar(side) if side.is_file() else None
    digest = _verify_sha(weights, side_meta, expected_sha256)
    try:
        obj = load_weights_only(weights)
    except PickleRefused as exc:
        raise CheckpointError(
            f"{weights}: refused by torch.load(weights_only=True) (not plain tensors, or corrupted): {exc}"
        ) from None
    meta: dict | None = None
    tensors = obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        tensors = obj["state_dict"]
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else None
    if meta is None:
        meta = side_meta
    if meta is None:
        raise CheckpointError(
            f"{weights}: no metadata (arch, fors, config): put it under a 'meta' key or in {side.name} beside it"
        )
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{weights}: expected a state_dict of tensors")
    meta = dict(meta)
    _check_meta(meta, weights)
    model = _build(meta, weights)
    _load_weights(model, tensors, meta, weights)
    meta["sha256"] = digest
    return model, meta


# -------------------------------------------------------------------------------------------------- index
def index_path(root: str | os.PathLike, dataset: str) -> Path:
    """``<root>/<dataset>/index.json``."""
    return Path(root) / dataset / INDEX_NAME


def _locate_index(root: str | os.PathLike, dataset: str) -> Path:
    root = Path(root)
    if root.is_file():
        return root
    for candidate in (index_path(root, dataset), root / INDEX_NAME):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no checkpoint index at {index_path(root, dataset)}; train the pairs with "
        f"`bench train --dataset {dataset} --out {root}`"
    )


def index_folder(root: str | os.PathLike, dataset: str) -> Path:
    """The folder of the index that :func:`read_index` reads (entry paths are relative to it): ``root`` may be
    the checkpoint root holding ``<dataset>/index.json``, the dataset folder, or the index file itself."""
    return _locate_index(root, dataset).parent


def _load_index_file(path: Path) -> dict:
    data = _read_json(path, "the index")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise CheckpointError(f"{path}: index must be a JSON object with an 'entries' list")
    return data


def read_index(root: str | os.PathLike, dataset: str) -> list[dict]:
    """Entries of ``<root>/<dataset>/index.json`` (``root`` may also be that folder or the file itself).

    Each entry has at least ``arch, fors, sigma, path, sha256, width, in_size, num_classes, clean_acc,
    noisy_acc``; ``path`` is relative to the index's folder (``abspath`` gives the resolved path).
    """
    path = _locate_index(root, dataset)
    data = _load_index_file(path)
    if data.get("dataset", dataset) != dataset:
        raise CheckpointError(f"{path}: index is for dataset {data.get('dataset')!r}, not {dataset!r}")
    entries = []
    for i, entry in enumerate(data["entries"]):
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: entry {i} is not a JSON object")
        missing = [k for k in INDEX_REQUIRED if k not in entry]
        if missing:
            raise CheckpointError(f"{path}: entry {i} lacks {', '.join(missing)}")
        entries.append({**entry, "abspath": str(path.parent / entry["path"])})
    return entries


def _entry_key(entry: Mapping) -> tuple:
    return (entry["arch"], int(entry["width"]), int(entry["in_size"]), int(entry["fors"]), round(float(entry["sigma"]), 9))


def update_index(root: str | os.PathLike, dataset: str, new: Iterable[Mapping]) -> list[dict]:
    """Insert or replace ``new`` entries (same arch, width, in_size, FoR and sigma) and rewrite atomically."""
    path = index_path(root, dataset)
    entries: list[dict] = []
    if path.is_file():
        entries = [dict(e) for e in _load_index_file(path)["entries"] if isinstance(e, dict)]
    by_key = {}
    for e in entries:
        try:
            by_key[_entry_key(e)] = e
        except (KeyError, TypeError, ValueError):
            continue
    for e in new:
        clean = {k: v for k, v in e.items() if k != "abspath"}
        by_key[_entry_key(clean)] = clean
    ordered = sorted(by_key.values(), key=lambda e: (e["arch"], e["width"], e["fors"], e["sigma"]))
    atomic_write_text(
        path,
        json.dumps({"format": INDEX_FORMAT, "dataset": dataset, "entries": ordered}, indent=2, sort_keys=True) + "\n",
    )
    return ordered


def index_entry(meta: Mapping, path: str, sha256: str) -> dict:
    """The index entry of a checkpoint whose metadata is ``meta`` (``path`` relative to the index folder)."""
    keys = (
        "arch", "arch_source", "fors", "fors_total", "sigma", "noise", "width", "in_size", "in_channels",
        "num_classes", "dataset", "clean_acc", "noisy_acc", "train_loss", "train_acc", "epochs", "lr", "batch_size", "seed",
        "encoder_lipschitz", "train_seconds", "train_hash", "saved_at",
    )
    entry = {k: meta[k] for k in keys if k in meta}
    entry.update(path=path, sha256=sha256)
    return entry


def index_architectures(root: str | os.PathLike, dataset: str) -> list:
    """The registry records (:class:`lsrs.architectures.Architecture`) of the models in ``dataset``'s index, in
    index order without repeats; ``[]`` when there is no readable index. A plugin architecture that is not
    installed raises :class:`lsrs.architectures.ArchitectureError` naming it."""
    from lsrs.architectures import get_architecture

    try:
        entries = read_index(root, dataset)
    except CheckpointError:
        return []
    records = [get_architecture(e["arch"], source=e.get("arch_source")) for e in entries]
    return list({r.name: r for r in records}.values())


def find_checkpoint(
    entries: Iterable[Mapping], fors: int, sigma: float, *, arch: str | None = None, width: int | None = None
) -> dict | None:
    """The entry trained with FoR ``fors`` at ``sigma`` (optionally of ``arch``/``width``), or ``None``.

    Several matches (e.g. two widths) give the most recently saved one.
    """
    found = [
        dict(e)
        for e in entries
        if int(e["fors"]) == int(fors)
        and math.isclose(float(e["sigma"]), float(sigma), rel_tol=1e-9, abs_tol=1e-12)
        and (arch is None or e["arch"] == arch)
        and (width is None or int(e["width"]) == int(width))
    ]
    if not found:
        return None
    return max(found, key=lambda e: str(e.get("saved_at", "")))


__all__ = [
    "CheckpointError",
    "PickleRefused",
    "find_checkpoint",
    "index_entry",
    "index_architectures",
    "index_folder",
    "index_path",
    "load_checkpoint",
    "load_weights_only",
    "read_index",
    "read_meta",
    "save_checkpoint",
    "sha256_file",
    "update_index",
]
