"""The registry of certifiers: one :class:`Certifier` record per ``--methods`` key (``is``, ``ls``, ``lip``, ...).

A certifier turns one test image into one row of the run schema (:mod:`bench.store`). Its record says how the
harness treats it, so that the runner, the console, the report and the figures iterate over the registry
instead of comparing method strings:

- which jobs of the grid it certifies (:attr:`Certifier.jobs`: its (FoR, σ, n) per σ of the run, and once);
- how one job is set up and certified (:attr:`Certifier.start`, given the runner's per-job context);
- its label, colour and line style in tables and figures, and which columns apply (``noise``: it certifies a
  smoothed classifier at σ, so σ and n apply and its σ = 0 rows are clean accuracy; ``reference``: the
  baseline of the speedups; ``fors_axis``: one configuration per FoR, the FoR ablation of the paper's Table 2).

A new certifier is one module that builds a :class:`Certifier` and passes it to :func:`register_certifier`
(the built-ins: :mod:`bench.certifiers.smoothed`, :mod:`bench.certifiers.lipschitz`), or that an installed
package names under the entry-point group :data:`ENTRY_POINT_GROUP` (``bench.certifiers``; the entry point is
its :class:`Certifier`, loaded on the registry's first use, so ``bench run --methods`` takes its key).
Nothing here imports torch, and a certifier's module should import it only in the code that certifies
(its ``start`` and rows, as the built-ins and ``tests/example_certifier.py`` do): listing the records (``bench
run --help``, ``--methods`` checked when the command line is parsed) then needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from lsrs.plugins import entry_points_by_name, load_entry_point, plugin_label

ENTRY_POINT_GROUP = "bench.certifiers"


@dataclass(frozen=True)
class Job:
    """One (method, FoR, σ, n) configuration of the grid; ``n`` = 0 where nothing is sampled (σ = 0, ``lip``)."""

    method: str
    fors: int
    sigma: float
    n: int = 0

    @property
    def model_key(self) -> str:
        """The model it certifies with, e.g. ``ls-f9-s0.25`` (the manifest's ``checkpoints`` keys)."""
        return f"{self.method}-f{self.fors}-s{self.sigma:g}"

    @property
    def key(self) -> str:
        """``model_key`` and the n, e.g. ``ls-f9-s0.25-n1000`` (parts, set-up and batch records)."""
        return self.model_key + (f"-n{self.n}" if self.n else "")

    @property
    def label(self) -> str:
        """The progress line's name of the job, from its certifier's :attr:`Certifier.job_label`."""
        return get(self.method).job_label(self)


class CertifierRun(Protocol):
    """One job's certifier once set up: per image, its row and its decision rows (``--decide-radii``)."""

    def rows(self, dataset: Any, indices: list[int], decided: set[tuple] | frozenset) -> Iterator[tuple[dict, list[dict]]]:
        ...


def _smoothing_label(job: Job) -> str:
    return f"{get_certifier(job.method).defense} FoR {job.fors} σ={job.sigma:g}" + (f" n={job.n:,}" if job.n else "")


@dataclass(frozen=True)
class Certifier:
    """How the harness runs and shows one certification method (see the module docstring).

    ``jobs(config, sigma)``: the (FoR, σ, n) triples it certifies at ``sigma`` of the run's σ axis, in the
    grid's order, and with ``sigma=None`` the ones certified once per run (no σ). ``start(context, x,
    batch_size, channels_last)``: set the job up on the runner's :class:`bench.run.runner.JobCertifier` ``context``
    (its model, config, job, device, common row fields and set-up records; ``x`` is the first image) and return
    the :class:`CertifierRun` that certifies images. ``check(archs, fors)``: raise a one-line usage error when
    the checkpoints' architectures cannot serve it (``bench run`` calls it before certifying anything).
    """

    key: str
    defense: str
    jobs: Callable[[Any, float | None], list[tuple[int, float, int]]]
    start: Callable[..., CertifierRun]
    help: str = ""
    color: str | None = None  # None: the colour of its FoR in the figures' palette
    line_style: str = "-"
    noise: bool = True
    reference: bool = False
    fors_axis: bool = False
    check: Callable[[list, tuple[int, ...]], None] | None = None
    job_label: Callable[[Job], str] = field(default=_smoothing_label)
    caption: str = ""  # its words in the main table's caption (a certifier neither reference nor FoR axis)


_REGISTRY: dict[str, Certifier] = {}
_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Register, once, the certifiers that installed packages declare under :data:`ENTRY_POINT_GROUP` (a key
    already registered keeps its record), through the one loading path of :mod:`lsrs.plugins`; one that fails
    to load, or is not a :class:`Certifier`, is an error naming it."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for point in entry_points_by_name(ENTRY_POINT_GROUP).values():
        record = load_entry_point(point, ENTRY_POINT_GROUP, RuntimeError)
        if not isinstance(record, Certifier):
            raise RuntimeError(f"{plugin_label(point)} is not a bench.certifiers.Certifier")
        _REGISTRY.setdefault(record.key, record)


def register_certifier(certifier: Certifier, *, replace: bool = False) -> Certifier:
    """Add ``certifier`` under its key (a key taken by another record is an error unless ``replace``)."""
    if certifier.key in _REGISTRY and not replace and _REGISTRY[certifier.key] is not certifier:
        raise ValueError(f"a certifier is already registered as {certifier.key!r}")
    if certifier.reference and any(c.reference for k, c in _REGISTRY.items() if k != certifier.key):
        raise ValueError(f"{certifier.key!r}: only one certifier is the reference of the speedups")
    _REGISTRY[certifier.key] = certifier
    return certifier


def unregister_certifier(key: str) -> None:
    """Remove the certifier registered as ``key`` (tests register an example and remove it again)."""
    _REGISTRY.pop(key, None)


def get_certifier(key: str) -> Certifier:
    """The certifier registered as ``key``; an unknown key is a :class:`KeyError` naming the registered ones."""
    load_plugins()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise KeyError(f"no certifier {key!r}; registered: {', '.join(_REGISTRY)}") from None


def registered() -> tuple[Certifier, ...]:
    """The certifiers in registration order (the built-ins first: is, ls, lip): the order of grids and tables."""
    load_plugins()
    return tuple(_REGISTRY.values())


def list_certifiers() -> tuple[str, ...]:
    """The registered keys in registration order (installed plugins loaded)."""
    load_plugins()
    return tuple(_REGISTRY)


def describe_keys() -> str:
    """``'is', 'ls' and 'lip'``: the registered keys as a usage message lists them."""
    quoted = [f"'{k}'" for k in _REGISTRY]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _known(method: object) -> Certifier | None:
    return _REGISTRY.get(str(method))


def order(method: object) -> int:
    """Sort position of ``method`` in tables and figures (an unregistered method, e.g. of an old store, last)."""
    return list(_REGISTRY).index(str(method)) if str(method) in _REGISTRY else len(_REGISTRY)


def defense(method: object) -> str:
    """The table's name of ``method`` (an unregistered one in capitals)."""
    found = _known(method)
    return found.defense if found is not None else str(method).upper()


def uses_noise(method: object) -> bool:
    """True when ``method`` certifies a smoothed classifier at σ (unregistered methods are taken to)."""
    found = _known(method)
    return found is None or found.noise


def is_reference(method: object) -> bool:
    """True for the baseline of the speedups (IS-RS)."""
    found = _known(method)
    return found is not None and found.reference


def has_fors_axis(method: object) -> bool:
    """True for a certifier with one configuration per FoR (LS-RS: the FoR ablation)."""
    found = _known(method)
    return found is not None and found.fors_axis


def reference_key() -> str | None:
    """The key of the reference certifier (``is``), None when none is registered."""
    return next((c.key for c in _REGISTRY.values() if c.reference), None)


def fors_axis_keys() -> tuple[str, ...]:
    return tuple(c.key for c in _REGISTRY.values() if c.fors_axis)


def line_style(method: object) -> str:
    """The figures' line style of ``method`` (dashed IS-RS, dotted Lipschitz; solid for others)."""
    found = _known(method)
    return found.line_style if found is not None else "-"


def color(method: object) -> str | None:
    """The figures' fixed colour of ``method``; None: the colour of its FoR in the palette."""
    found = _known(method)
    return found.color if found is not None else None


# The names of the first release, kept so that existing certifier plugins run unchanged.
register = register_certifier
unregister = unregister_certifier
get = get_certifier
keys = list_certifiers
