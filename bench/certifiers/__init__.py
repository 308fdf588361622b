"""The certifiers of ``bench run --methods``: the registry (:mod:`bench.certifiers.registry`), what a certifier
receives (:mod:`bench.certifiers.context`) and the built-ins, registered on import in this order: ``is`` and
``ls`` (:mod:`bench.certifiers.smoothed`), ``lip`` (:mod:`bench.certifiers.lipschitz`). A new certifier is one
module that calls :func:`register_certifier` (or an installed package's entry point)."""

import bench.certifiers.smoothed  # noqa: F401, I001  (registers is and ls first: the registry's order is the tables')
import bench.certifiers.lipschitz  # noqa: F401  (then lip)
from bench.certifiers.context import CertifyContext, RunSettings
from bench.certifiers.registry import (
    Certifier,
    CertifierRun,
    Job,
    color,
    defense,
    describe_keys,
    fors_axis_keys,
    get,
    get_certifier,
    has_fors_axis,
    is_reference,
    keys,
    line_style,
    list_certifiers,
    order,
    reference_key,
    register,
    register_certifier,
    registered,
    unregister,
    unregister_certifier,
    uses_noise,
)

__all__ = ["Certifier", "CertifierRun", "CertifyContext", "Job", "RunSettings", "color", "defense", "describe_keys",
           "fors_axis_keys", "get", "get_certifier", "has_fors_axis", "is_reference", "keys", "line_style",
           "list_certifiers", "order", "reference_key", "register", "register_certifier", "registered", "unregister",
           "unregister_certifier", "uses_noise"]
