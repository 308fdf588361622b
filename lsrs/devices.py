"""The compute device rule of the library and of every ``bench`` command: ``auto`` and a check that it is here."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto", error: type[Exception] = ValueError) -> torch.device:
    """``auto`` (or ``None``) is CUDA when present, else the CPU; an explicit device must exist here.

    Raises ``error`` with one line that says what is wrong and what to use instead.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise error(f"invalid device {str(device)!r} ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"device {str(device)!r} was asked for but no CUDA device is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise error(f"device {str(device)!r}: this machine has only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise error(f"device {str(device)!r} was asked for but MPS is not available here; use --device cpu")
    return dev


__all__ = ["resolve_device"]
