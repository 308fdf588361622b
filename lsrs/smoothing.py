"""PREDICT and CERTIFY of randomized smoothing, in input space (IS-RS) and latent space (LS-RS).

The shape follows Cohen et al. (2019)'s reference ``core.py``: one class per smoothed classifier with
``certify`` (CERTIFY) and ``predict`` (PREDICT). LS-RS (paper Eq. 4-5) computes ``z = encoder(x)`` once per
image and smooths the classifier ``fc`` over ``z + N(0, sigma^2 I)``; Theorem 1 of the paper turns the latent
radius ``Rz`` into the certified input radius ``Rz / L`` for an ``L``-Lipschitz encoder. IS-RS is the special
case of the identity encoder with ``L = 1``.

The sampling engine draws noise straight into a preallocated buffer from a batch-size-independent stream
(:mod:`lsrs.noise`), adds it in place, and keeps the class counts on the device until the image is done.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from lsrs.bounds import check_alpha, clopper_pearson_lower, gaussian_radius, two_sided_binomial_pvalue
from lsrs.noise import DEFAULT_BLOCK, NoiseStream, derive_seed, seed_from
from lsrs.timing import Stopwatch

ABSTAIN = -1

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Certificate:
    """Result of CERTIFY for one input.

    With probability at least ``1 - alpha`` over the noise, if ``prediction != ABSTAIN`` the smoothed
    classifier predicts ``prediction`` for every input within l2 distance ``radius`` of ``x``.
    """

    prediction: int
    radius: float
    radius_latent: float
    p_a_lower: float
    counts_selection: tuple[int, ...]
    counts_estimation: tuple[int, ...]
    n0: int
    n: int
    alpha: float
    sigma: float
    lipschitz: float
    samples_used: int
    encode_s: float
    sample_s: float
    total_s: float

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_positive_float(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class LatentSmooth:
    """LS-RS: smooth ``classifier`` over the latent ``z = encoder(x)`` with N(0, sigma^2 I) noise.

    ``lipschitz`` must be a proven upper bound on the l2 Lipschitz constant of ``encoder`` (including any
    preprocessing it applies); the certified input radius is ``radius_latent / lipschitz`` (Theorem 1).
    """

    def __init__(
        self,
        encoder: nn.Module,
        classifier: nn.Module,
        num_classes: int,
        sigma: float,
        lipschitz: float,
        *,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        noise_block: int = DEFAULT_BLOCK,
    ) -> None:
        _check_positive_int("num_classes", num_classes)
        _check_positive_float("sigma", sigma)
        _check_positive_float("lipschitz", lipschitz)
        _check_positive_int("noise_block", noise_block)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.encoder = encoder
        self.classifier = classifier
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.lipschitz = float(lipschitz)
        self.precision = precision
        self.channels_last = channels_last
        self.noise_block = noise_block
        if device is None:
            param = next(iter(classifier.parameters()), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)

    # ------------------------------------------------------------------ public API (Cohen et al. names)
    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | int | None = None,
    ) -> Certificate:
        """CERTIFY: select the top class with ``n0`` samples, bound its probability with ``n`` fresh samples.

        With probability at least ``1 - alpha`` the returned certificate is correct: either it abstains, or
        the smoothed classifier is constant within ``radius`` (input space) around ``x``. Abstains when the
        one-sided Clopper-Pearson lower bound ``pA_lower`` is below 1/2; otherwise
        ``radius_latent = sigma * Phi^-1(pA_lower)`` and ``radius = radius_latent / lipschitz``.
        """
        _check_positive_int("n0", n0)
        _check_positive_int("n", n)
        _check_positive_int("batch_size", batch_size)
        check_alpha(alpha)
        base = seed_from(generator)
        with Stopwatch(self.device) as total:
            with Stopwatch(self.device) as enc:
                z = self.encode(x)
            with Stopwatch(self.device) as smp:
                counts0 = self.sample_counts(z, n0, batch_size, derive_seed(base, "selection"))
                c_a = int(counts0.argmax().item())
                counts = self.sample_counts(z, n, batch_size, derive_seed(base, "estimation"))
            counts0_t = tuple(int(c) for c in counts0.tolist())
            counts_t = tuple(int(c) for c in counts.tolist())
            p_a_lower = clopper_pearson_lower(counts_t[c_a], n, alpha)
            if p_a_lower < 0.5:
                prediction, radius_latent = ABSTAIN, 0.0
            else:
                prediction, radius_latent = c_a, gaussian_radius(self.sigma, p_a_lower)
        return Certificate(
            prediction=prediction,
            radius=radius_latent / self.lipschitz,
            radius_latent=radius_latent,
            p_a_lower=p_a_lower,
            counts_selection=counts0_t,
            counts_estimation=counts_t,
            n0=n0,
            n=n,
            alpha=alpha,
            sigma=self.sigma,
            lipschitz=self.lipschitz,
            samples_used=n0 + n,
            encode_s=enc.seconds,
            sample_s=smp.seconds,
            total_s=total.seconds,
        )

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | int | None = None,
    ) -> int:
        """PREDICT: the top class, or ``ABSTAIN`` unless a two-sided binomial test rejects a tie at level alpha.

        With probability at least ``1 - alpha``, a returned class is the smoothed classifier's prediction.
        """
        _check_positive_int("n", n)
        _check_positive_int("batch_size", batch_size)
        check_alpha(alpha)
        z = self.encode(x)
        counts = self.sample_counts(z, n, batch_size, derive_seed(seed_from(generator), "predict"))
        top2 = counts.topk(min(2, self.num_classes))
        n_a = int(top2.values[0].item())
        n_b = int(top2.values[1].item()) if self.num_classes > 1 else 0
        if two_sided_binomial_pvalue(n_a, n_a + n_b) > alpha:
            return ABSTAIN
        return int(top2.indices[0].item())

    # ------------------------------------------------------------------ engine
    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent ``z = encoder(x)`` of one input ``x`` (no batch dimension), as a batch of one."""
        return self.encoder(x.to(self.device).unsqueeze(0)).float()

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def sample_counts(self, z: torch.Tensor, num: int, batch_size: int, seed: int) -> torch.Tensor:
        """Class counts (on the device) of ``classifier(z + sigma * noise)`` over ``num`` noise samples."""
        stream = NoiseStream(z.shape[1:], seed, device=self.device, dtype=z.dtype, block=self.noise_block)
        buffer = stream.new_buffer(min(batch_size, num))
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        remaining = num
        while remaining > 0:
            b = min(batch_size, remaining)
            noisy = stream.fill(buffer[:b]).mul_(self.sigma).add_(z)
            if not self.channels_last:
                noisy = noisy.contiguous()
            with self._autocast():
                logits = self.classifier(noisy)
            if logits.dim() != 2 or logits.shape != (b, self.num_classes):
                raise ValueError(
                    f"classifier returned logits of shape {tuple(logits.shape)} for a batch of {b}, "
                    f"expected ({b}, {self.num_classes}) (num_classes={self.num_classes})"
                )
            counts += torch.bincount(logits.argmax(1), minlength=self.num_classes)
            remaining -= b
        return counts


class Smooth(LatentSmooth):
    """IS-RS (Cohen et al. 2019): smooth ``base_classifier`` over ``x + N(0, sigma^2 I)``."""

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float, **kwargs: object) -> None:
        super().__init__(nn.Identity(), base_classifier, num_classes, sigma, 1.0, **kwargs)
