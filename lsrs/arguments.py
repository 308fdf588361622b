"""Checks of the certifiers' arguments: one-line ``ValueError`` for bad input, never a traceback from deeper down.

Numbers are accepted as Python or numpy scalars (``np.float32(0.25)``, ``np.int64(100)``) and returned as Python
numbers. Inputs must be plain tensors (``torch.Tensor`` or ``nn.Parameter`` exactly: a subclass's
``__torch_function__`` can change what every operation of the certified pass computes), and images are
floating-point with every pixel in [0, 1] (the scale on which a radius is stated).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["check_image", "check_plain_tensor", "module_dtype", "nonnegative_float", "plain_generator", "positive_float", "positive_int",
           "probability"]


def positive_int(name: str, value: object) -> int:
    """``value`` as a Python int >= 1 (Python or numpy integers; not bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _real(value: object) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def positive_float(name: str, value: object) -> float:
    """``value`` as a finite Python float > 0 (Python or numpy numbers)."""
    v = _real(value)
    if v is None or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def nonnegative_float(value: object, name: str = "radius") -> float:
    """``value`` as a finite Python float >= 0 (Python or numpy numbers)."""
    v = _real(value)
    if v is None or not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def probability(name: str, value: object) -> float:
    """``value`` as a Python float strictly between 0 and 1."""
    v = _real(value)
    if v is None or not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return v


def plain_generator(generator: object) -> object:
    """A numpy integer seed as a Python int (any other generator argument unchanged)."""
    if isinstance(generator, np.integer):
        return int(generator)
    return generator


def check_plain_tensor(name: str, x: object) -> None:
    """Refuse anything but a plain ``torch.Tensor`` / ``nn.Parameter``."""
    if type(x) not in (Tensor, nn.Parameter):
        raise ValueError(f"the certifier takes a torch.Tensor as {name}, got a {type(x).__name__} (a tensor subclass "
                         "can change what the certified pass computes): pass x.as_subclass(torch.Tensor)")


def check_image(x: Tensor, value_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """Refuse a non-float input (a ``uint8`` image is on the 0-255 scale), an empty one, or (unless
    ``value_range`` is None: inputs that are not images) one with a value outside ``value_range``."""
    check_plain_tensor("the input", x)
    if not x.is_floating_point():
        raise ValueError(f"the input is {x.dtype}: certificates are stated for float images with pixels in [0, 1]; "
                         "pass x.float() / 255 for 8-bit images")
    if x.numel() == 0:
        raise ValueError(f"the input is empty (shape {tuple(x.shape)})")
    if value_range is None:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (lo >= value_range[0] and hi <= value_range[1]):
        raise ValueError(f"the image has values in [{lo:.4g}, {hi:.4g}], outside input_range={value_range} (or not "
                         "finite): rescale the image (radii are stated on that scale, normalisation belongs inside "
                         "the model), or pass input_range=None for inputs that are not images")


def module_dtype(module: nn.Module, name: str) -> torch.dtype | None:
    """The one floating dtype of ``module``'s parameters and buffers (None without any); refuses a mixture."""
    dtypes = {t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()}
    if len(dtypes) > 1:
        raise ValueError(f"the {name}'s parameters mix the dtypes {sorted(map(str, dtypes))}: convert it to one "
                         "precision (e.g. .float()) before certifying")
    return next(iter(dtypes), None)
