"""lsrs: latent-space randomized smoothing (LS-RS) and input-space randomized smoothing (IS-RS).

The library a researcher imports; it knows nothing of the ``bench`` command line. The names below are
imported on first use (PEP 562), so ``import lsrs`` (and the torch-free :mod:`lsrs.architectures`) do not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "ABSTAIN": "lsrs.smoothing", "Certificate": "lsrs.smoothing", "LatentSmooth": "lsrs.smoothing",
    "Smooth": "lsrs.smoothing", "Decision": "lsrs.sequential", "LipschitzCertificates": "lsrs.margin",
    "lipschitz_certify": "lsrs.margin",
}

__all__ = [
    "ABSTAIN", "Certificate", "Decision", "LatentSmooth", "LipschitzCertificates", "Smooth", "__version__",
    "lipschitz_certify",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lsrs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
