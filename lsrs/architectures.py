"""One registry of the architectures every part of lsrs-bench builds (torchvision's ``models/_api.py``).

Each architecture is one :class:`Architecture` record, registered beside its builder with
:func:`register_architecture`; :func:`get_architecture` finds it by name and every caller (training, the
runner, checkpoints, the inference copy, ``bench info``, the report) reads it instead of keeping its own
table. A record holds what the harness must know without building a network: the FoR values the builder
accepts and their denominator, the FoR of the fully orthogonal Lipschitz twin (if any), the builder keyword
that ``--width`` sets, per-dataset default keywords (e.g. WRN-34-2 with a stride-4 stem on ImageNet, as in
the paper's Appendix A), the latent shape of each FoR, and which (conv, BatchNorm) attribute pairs of its
blocks the inference copy may fold.

Three sources, looked up in this order:

* the built-in architectures (``resnet18``, ``wide_resnet34``; Cohen et al.'s ``cifar_resnet20``,
  ``cifar_resnet110`` and ``resnet50`` for imported peers), registered when :mod:`lsrs.models` and
  :mod:`lsrs.cohen_models` are imported (done here on first use, so importing this module does not import torch);
* ``package.module:function``: the module is imported and ``function`` must be a registered builder;
* plugins: a distribution that declares ``[project.entry-points."lsrs.architectures"] name =
  "package.module:function"`` is loaded (lazily, by name, on first use); a plugin that fails to load is an
  :class:`ArchitectureError` naming it.

A builder is called as ``builder(num_classes=, fors=, in_size=, in_channels=, mean=, <width_param>=, ...)``
and returns an :class:`lsrs.models.Split` whose ``arch`` is the record's name and whose ``config`` rebuilds
it. A checkpoint stores ``arch`` and the builder's ``source``, so a plugin's checkpoint rebuilds in a fresh
process (importing the installed module it names, never code carried by the file).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lsrs.plugins import (
    EntryPoint,
    check_plugin_name,
    entry_points_by_name,
    import_attribute,
    load_entry_point,
    plugin_label,
)

ENTRY_POINT_GROUP = "lsrs.architectures"
BUILTIN_MODULES: tuple[str, ...] = ("lsrs.models", "lsrs.cohen_models")
ANY_DATASET = "*"
"""Key of :attr:`Architecture.defaults` that applies to datasets without their own entry."""


class ArchitectureError(ValueError):
    """An unknown architecture, a plugin that fails to load, or a FoR the architecture does not have."""


@dataclass(frozen=True)
class Architecture:
    """Everything the harness knows about one architecture without building it.

    ``fors``: the FoR values ``k`` (of ``k/fors_total``) the builder accepts, 0 (the IS-RS baseline) first.
    ``lipschitz_fors``: the FoR of the fully orthogonal twin certified by its logit margin (None: no such
    twin). ``paper_fors``: the paper's main setting (``bench info``'s default). ``width_param``: the builder
    keyword that ``bench train --width`` sets and checkpoint indexes store as ``width``. ``defaults``: builder
    keywords per dataset name (:data:`ANY_DATASET` for the rest). ``latent_shapes(config)``: the latent
    ``z``'s shape for each FoR at a builder config. ``batchnorm_pairs``: (block class, conv attribute,
    BatchNorm attribute) that :func:`lsrs.inference.fold_batchnorm` may fuse (the conv feeds the BatchNorm
    directly); convs followed by BatchNorm inside an ``nn.Sequential`` are folded for every architecture.
    ``no_twin_reason``: what a run that asks for an LS-RS twin of an architecture with FoR 0 only is told
    (empty: the generic :meth:`generic_no_twin_reason`; an imported peer's model registers its own).
    """

    name: str
    builder: Callable[..., Any]
    fors: tuple[int, ...]
    fors_total: int
    paper_fors: int
    width_param: str = "width"
    lipschitz_fors: int | None = None
    paper_dataset: str | None = None
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    latent_shapes: Callable[[Mapping[str, Any]], Mapping[int, tuple[int, ...]]] | None = None
    batchnorm_pairs: tuple[tuple[type, str, str], ...] = ()
    no_twin_reason: str = ""

    def __post_init__(self) -> None:
        if not self.no_twin_reason:
            object.__setattr__(self, "no_twin_reason", self.generic_no_twin_reason())

    def generic_no_twin_reason(self) -> str:
        """The no-twin message of an architecture that registers none of its own."""
        return f"{self.name} has no LS-RS twin: only FoR 0 (IS-RS) is certified; certify it with --methods is"

    @property
    def source(self) -> str:
        """``module:function`` of the builder (stored in checkpoints so that a plugin's model rebuilds)."""
        return f"{self.builder.__module__}:{self.builder.__qualname__}"

    def check_fors(self, fors: int) -> None:
        """``ArchitectureError`` naming the valid values unless ``fors`` is one of :attr:`fors`."""
        if fors not in self.fors:
            raise ArchitectureError(f"FoR {fors} is not valid for {self.name}; valid: {','.join(map(str, self.fors))}")

    def dataset_defaults(self, dataset: str) -> dict[str, Any]:
        """Builder keywords for ``dataset``: its own entry of :attr:`defaults` over the :data:`ANY_DATASET` one."""
        return {**self.defaults.get(ANY_DATASET, {}), **self.defaults.get(dataset, {})}

    def default_width(self, dataset: str) -> int | None:
        """The ``width_param`` value used on ``dataset`` when ``--width`` is not given."""
        return self.dataset_defaults(dataset).get(self.width_param)

    def config_for(self, info: Any, fors: int, width: int | None = None) -> dict[str, Any]:
        """Builder keywords for a model of FoR ``fors`` on the dataset ``info`` (a :class:`lsrs.data.DatasetInfo`):
        the dataset's classes, channels, input size and mean, this record's defaults for it, then ``width``."""
        config: dict[str, Any] = {
            "num_classes": info.num_classes, "fors": fors, "in_size": info.in_size,
            "in_channels": info.in_channels, "mean": list(info.mean),
        }
        config.update(self.dataset_defaults(info.name))
        if width is not None:
            config[self.width_param] = int(width)
        return config

    def build(self, **config: Any) -> Any:
        """``builder(**config)``; a result whose ``arch`` is not this record's name is refused."""
        model = self.builder(**config)
        if getattr(model, "arch", None) != self.name:
            raise ArchitectureError(
                f"{self.source} built a model with arch={getattr(model, 'arch', None)!r}, not {self.name!r}: "
                "return lsrs.models.Split(..., arch=<the registered name>)"
            )
        return model

    def latent_shape(self, fors: int, config: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The latent ``z``'s shape of FoR ``fors`` at ``config`` (the builder's defaults fill what it omits;
        None when the record does not say)."""
        self.check_fors(fors)
        if self.latent_shapes is None:
            return None
        params = inspect.signature(self.builder).parameters.values()
        full = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        return tuple(self.latent_shapes({**full, **config})[fors])


_REGISTRY: dict[str, Architecture] = {}
_loaded_builtins = False


def register_architecture(name: str, **fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a builder as architecture ``name`` with the :class:`Architecture` ``fields``.

    ``fors`` must start with 0 (the baseline) and lie in ``[0, fors_total]``; registering a second builder
    under a taken name is an error (re-registering the same builder, e.g. on a module reload, is not).
    """

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        record = Architecture(name=name, builder=builder, **fields)
        fors = tuple(int(k) for k in record.fors)
        if not fors or fors[0] != 0 or any(not 0 <= k <= record.fors_total for k in fors):
            raise ArchitectureError(f"{name}: fors must start with 0 and lie in [0, {record.fors_total}], got {fors}")
        old = _REGISTRY.get(name)
        if old is not None and old.source != record.source:
            raise ArchitectureError(f"architecture {name!r} is already registered by {old.source}")
        _REGISTRY[name] = record
        return builder

    return wrap


def _load_builtins() -> None:
    global _loaded_builtins
    if not _loaded_builtins:
        _loaded_builtins = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def _record_of(obj: Any, where: str) -> Architecture:
    """The record of a loaded object: a registered builder or an :class:`Architecture` (registered here)."""
    if isinstance(obj, Architecture):
        register_architecture(obj.name, **{k: getattr(obj, k) for k in Architecture.__dataclass_fields__
                                           if k not in ("name", "builder")})(obj.builder)
        return obj
    for record in _REGISTRY.values():
        if record.builder is obj:
            return record
    raise ArchitectureError(
        f"{where} is not a registered architecture: decorate it with "
        "@lsrs.architectures.register_architecture(name, fors=..., fors_total=..., paper_fors=...)"
    )


def _load_spec(spec: str) -> Architecture:
    """Import ``package.module:function`` and return the record it names."""
    return _record_of(import_attribute(spec, "architecture", ArchitectureError), spec)


def _load_plugin(ep: EntryPoint) -> Architecture:
    record = _record_of(load_entry_point(ep, ENTRY_POINT_GROUP, ArchitectureError), plugin_label(ep))
    check_plugin_name(ep, record.name, "architecture", ArchitectureError)
    return record


def get_architecture(name: str, source: str | None = None) -> Architecture:
    """The record of ``name``: a built-in or already registered architecture, ``package.module:function``, or
    an installed plugin; ``source`` (a checkpoint's ``arch_source``) is imported when nothing else knows it."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return _load_spec(name)
    eps = entry_points_by_name(ENTRY_POINT_GROUP)
    if name in eps:
        return _load_plugin(eps[name])
    if source:
        record = _load_spec(source)
        if record.name == name:
            return record
        raise ArchitectureError(f"{source} registers the architecture {record.name!r}, not {name!r}")
    raise ArchitectureError(f"unknown architecture {name!r}; known: {', '.join(list_architectures())}")


def list_architectures() -> list[str]:
    """Names of the built-in, registered and installed (plugin) architectures, sorted; plugins are not loaded."""
    _load_builtins()
    return sorted(set(_REGISTRY) | set(entry_points_by_name(ENTRY_POINT_GROUP)))


__all__ = [
    "ANY_DATASET", "ENTRY_POINT_GROUP", "Architecture", "ArchitectureError", "get_architecture",
    "list_architectures", "register_architecture",
]
