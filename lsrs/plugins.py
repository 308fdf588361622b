"""Objects a user names as ``package.module:attribute``, or that an installed package declares under an
entry-point group, loaded with errors that name them: the one loading path of :mod:`lsrs.architectures` and
:mod:`lsrs.datasets` (torch-free, like both)."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from typing import Any

EntryPoint = importlib.metadata.EntryPoint


def entry_points_by_name(group: str) -> dict[str, EntryPoint]:
    """The installed entry points of ``group`` by name (listed, not loaded)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def resolve_attribute(spec: str) -> Any:
    """Import ``package.module:attribute[.attribute...]`` and return the attribute (errors as raised).

    A module found nowhere on the import path is looked for in the working folder too (appended to
    ``sys.path``, so it never shadows an installed package), as ``python -m`` would: ``bench train --arch
    mynet:build`` works from the folder that holds ``mynet.py`` without ``PYTHONPATH=.``."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        importlib.invalidate_caches()
        obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def import_attribute(spec: str, kind: str, error: type[Exception]) -> Any:
    """:func:`resolve_attribute`; any failure of the user's code is ``error`` naming ``spec``."""
    try:
        return resolve_attribute(spec)
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported by name
        raise error(f"cannot load {kind} {spec!r}: {type(exc).__name__}: {exc}") from None


def load_entry_point(ep: EntryPoint, group: str, error: type[Exception]) -> Any:
    """``ep.load()``; a plugin that fails to load is ``error`` naming it (not an unknown name later)."""
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not look like an unknown name
        raise error(
            f"plugin {ep.name!r} ({ep.value}) of entry-point group {group} failed to load: {type(exc).__name__}: {exc}"
        ) from None


def check_plugin_name(ep: EntryPoint, registered: str, kind: str, error: type[Exception]) -> None:
    """A plugin's entry point must carry the name its record registers (lookups go by that name)."""
    if registered != ep.name:
        raise error(
            f"plugin {ep.name!r} ({ep.value}) registers the {kind} {registered!r}: give the entry point the "
            "registered name"
        )


def plugin_label(ep: EntryPoint) -> str:
    """How errors name a plugin: ``plugin 'name' (module:attribute)``."""
    return f"plugin {ep.name!r} ({ep.value})"


__all__ = ["check_plugin_name", "entry_points_by_name", "import_attribute", "load_entry_point", "plugin_label",
           "resolve_attribute"]
