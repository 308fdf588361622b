"""The choices of a training recipe (:class:`lsrs.training.TrainConfig`), importable without torch, so that
``bench train --help`` lists them without importing torch."""

from __future__ import annotations

NOISE_LOCATIONS = ("input", "latent", "none")
LOSSES = ("ce", "margin")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("step", "onecycle")
