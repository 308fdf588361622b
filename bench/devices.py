"""The compute device of every ``bench`` command: the library's rule (:func:`lsrs.devices.resolve_device`) as a
usage error, the name the results record, and the precision it computes natively.

Importing it does not import torch (the functions do), so ``bench run --help`` lists :data:`PRECISION_CHOICES`
without torch.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import UsageError

if TYPE_CHECKING:
    import torch


def usage_device(device: str | torch.device | None = "auto") -> torch.device:
    """:func:`lsrs.devices.resolve_device` for a ``bench`` command: a device that is not here is a usage error
    (exit 2, one line)."""
    from lsrs.devices import resolve_device

    return resolve_device(device, error=UsageError)


def device_name(device: torch.device) -> str:
    """What the results record as the device: the GPU's name, or the CPU and torch's thread count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


REDUCED_PRECISIONS = ("bf16", "fp16")
PRECISION_CHOICES = ("auto", "fp32", *REDUCED_PRECISIONS)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run asked for, the one it runs, and why; ``warning`` when it runs without native support."""

    requested: str
    resolved: str
    reason: str
    native: bool | None  # None: the device's support could not be checked from here
    warning: str | None = None

    def record(self) -> dict:
        """What the manifest stores."""
        return {"requested": self.requested, "resolved": self.resolved, "reason": self.reason,
                "native": self.native, "warning": self.warning}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags listed in ``cpuinfo`` (empty where there is no such file, e.g. off Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    return frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split(":", 1)[1].split())


def native_support(precision: str, device_type: str) -> tuple[bool | None, str]:
    """Whether ``device_type`` here computes ``precision`` natively (None: unknown), and what decided it.

    bf16 is native on CPUs with AVX-512 BF16 or AMX (``avx512_bf16`` / ``amx_bf16`` flags) and on CUDA devices of
    compute capability >= 8.0 (bf16 tensor cores); fp16 on CUDA devices of compute capability >= 7.0. Elsewhere
    torch emulates them by converting to fp32, which costs more than it saves.
    """
    if precision == "fp32":
        return True, "fp32 is native everywhere"
    if device_type == "cpu":
        if precision == "fp16":
            return False, "CPUs have no native fp16 path in torch"
        found = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
        if found:
            return True, f"this CPU has {' and '.join(found)}"
        return False, "this CPU has neither AVX-512 BF16 nor AMX (no avx512_bf16/amx_bf16 flag)"
    if device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None, "no CUDA device here to check"
        major, minor = torch.cuda.get_device_capability()
        need = (8, 0) if precision == "bf16" else (7, 0)
        ok = (major, minor) >= need and (precision != "bf16" or torch.cuda.is_bf16_supported(including_emulation=False))
        verdict = "has" if ok else "lacks"
        return ok, f"the GPU (compute capability {major}.{minor}) {verdict} {precision} tensor cores"
    return None, f"native {precision} support on {device_type} is not known"


def resolve_precision(requested: str, device_type: str) -> PrecisionChoice:
    """``auto`` → bf16 where the device computes it natively (known to be faster), else fp32; an explicit
    precision runs as asked, with a one-line ``warning`` when the device lacks native support for it."""
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {requested!r}")
    if requested == "auto":
        native, why = native_support("bf16", device_type)
        resolved = "bf16" if native else "fp32"
        return PrecisionChoice(requested, resolved, f"auto: {resolved}, since {why}", native=True)
    native, why = native_support(requested, device_type)
    warning = None
    if native is False:
        fallback = resolve_precision("auto", device_type).resolved
        warning = (f"--precision {requested} on {device_type}: {why}; {requested} runs without native arithmetic "
                   f"and can be several times slower than fp32 (--precision auto uses {fallback} here)")
    return PrecisionChoice(requested, requested, f"asked for; {why}", native=native, warning=warning)
