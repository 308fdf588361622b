"""What a certify log may claim, given the dataset and the statistics it was certified with.

A line of a Cohen et al. certify log is taken only when its fields are plain decimal numbers (``int()`` also
takes ``1_0``, ``+5`` and non-ASCII digits, none of which ``certify.py`` writes), its image is in the dataset's
test set, its classes are the dataset's, its time is not negative and its radius is one that CERTIFY with the
declared n and α can return (:func:`max_certified_radius`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from scipy.stats import norm

DECIMAL = re.compile(r"-?[0-9]+")
INT64_MAX = 2**63 - 1
RADIUS_DIGITS = 3  # certify.py prints the radius with "{:.3}": three significant digits


def decimal_int(text: str, what: str) -> int:
    """``text`` as an int when it is a plain decimal integer (ASCII digits, optional leading ``-``), else
    ``ValueError`` naming ``what``."""
    if not DECIMAL.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a decimal integer")
    value = int(text)
    if abs(value) > INT64_MAX:
        raise ValueError(f"{what} {text} is out of range")
    return value


def max_certified_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY (Cohen et al. 2019, Alg. 2) can return with ``n`` estimation samples at level
    ``α``: σ·Φ⁻¹(α^(1/n)).

    Proof: the radius is σ·Φ⁻¹(p̲_A) with p̲_A the one-sided (1 − α) Clopper–Pearson lower bound of n_A
    successes in n, which grows with n_A; at n_A = n it is the p solving P[Bin(n, p) ≥ n] = pⁿ = α, i.e.
    p̲_A = α^(1/n), and Φ⁻¹ is increasing.
    """
    return sigma * float(norm.ppf(alpha ** (1.0 / n)))


def printed_upper(value: float, digits: int = RADIUS_DIGITS) -> float:
    """The largest number that ``format(x, f".{digits}")`` can print for an x <= ``value``: rounding is monotone,
    so it is ``value`` itself rounded (half up) at ``digits`` significant digits; a log's radius is compared with
    it, not with ``value``."""
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.floor(value / step + 0.5) * step * (1 + 1e-9)


@dataclass(frozen=True)
class LogLimits:
    """What a log's lines may hold: ``num_classes`` classes, ``test_size`` images (None: unknown) and the
    radius bound of the declared ``sigma``, ``n`` and ``alpha`` (unchecked when n or α is not given)."""

    num_classes: int
    test_size: int | None
    sigma: float
    n: int | None = None
    alpha: float | None = None

    @property
    def max_radius(self) -> float | None:
        if self.n is None or self.alpha is None:
            return None
        return max_certified_radius(self.sigma, self.n, self.alpha)

    def check(self, row: dict) -> None:
        """``ValueError`` with the reason when ``row`` (a parsed line) claims what the dataset or the
        statistics exclude."""
        if self.test_size is not None and row["idx"] >= self.test_size:
            raise ValueError(f"idx {row['idx']} is beyond the test set ({self.test_size} images)")
        for what in ("label", "prediction"):
            if row[what] >= self.num_classes:
                raise ValueError(f"{what} {row[what]} is not a class of the dataset (0..{self.num_classes - 1})")
        if row["total_s"] < 0:
            raise ValueError(f"time {row['total_s']:g} s is negative")
        bound = self.max_radius
        if bound is not None and row["radius"] > printed_upper(bound):
            raise ValueError(
                f"radius {row['radius']:g} exceeds {bound:.4f} = σ·Φ⁻¹(α^(1/n)), the largest CERTIFY can give with "
                f"σ = {self.sigma:g}, n = {self.n}, α = {self.alpha:g}"
            )


__all__ = ["LogLimits", "decimal_int", "max_certified_radius", "printed_upper"]
