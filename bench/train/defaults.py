"""Defaults of the paired grid's training (:mod:`bench.train.grid`) that ``bench train --help`` shows;
importable without torch."""

from __future__ import annotations

MARGIN_EPS = 0.5
"""Default target l2 radius of the Lipschitz twin's margin loss (the offset is sqrt(2) * MARGIN_EPS)."""
MARGIN_TEMPERATURE = 0.25
"""Default temperature of the margin loss (Prach & Lampert 2022 offset cross-entropy)."""
