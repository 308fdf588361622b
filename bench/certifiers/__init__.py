"""The certifiers of ``bench run --methods``: the registry (:mod:`bench.certifiers.registry`) and the built-ins,
registered on import in this order: ``is`` and ``ls`` (:mod:`bench.certifiers.smoothed`), ``lip``
(:mod:`bench.certifiers.lipschitz`). A new certifier is one module that calls :func:`register`."""

import bench.certifiers.smoothed  # noqa: F401, I001  (registers is and ls first: the registry's order is the tables')
import bench.certifiers.lipschitz  # noqa: F401  (then lip)
from bench.certifiers.registry import (
    Certifier,
    CertifierRun,
    Job,
    color,
    defense,
    describe_keys,
    fors_axis_keys,
    get,
    has_fors_axis,
    is_reference,
    keys,
    line_style,
    order,
    reference_key,
    register,
    registered,
    unregister,
    uses_noise,
)

__all__ = ["Certifier", "CertifierRun", "Job", "color", "line_style", "defense", "describe_keys", "fors_axis_keys", "get", "has_fors_axis",
           "is_reference", "keys", "order", "reference_key", "register", "registered", "unregister", "uses_noise"]
