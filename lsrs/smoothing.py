"""PREDICT and CERTIFY of randomized smoothing, in input space (IS-RS) and latent space (LS-RS).

The shape follows Cohen et al. (2019)'s reference ``core.py``: one class per smoothed classifier with
``certify`` (CERTIFY) and ``predict`` (PREDICT). LS-RS (paper Eq. 4-5) computes ``z = encoder(x)`` once per
image and smooths the classifier ``fc`` over ``z + N(0, sigma^2 I)``; Theorem 1 of the paper turns the latent
radius ``Rz`` into the certified input radius ``Rz / L`` for an ``L``-Lipschitz encoder. IS-RS is the special
case of the identity encoder with ``L = 1``.

The sampling engine draws noise straight into a preallocated buffer from a batch-size-independent stream
(:mod:`lsrs.noise`), adds it in place, and keeps the class counts on the device until the image is done. By
default it evaluates a private BatchNorm-folded copy of the classifier (:func:`lsrs.inference.inference_copy`, the
same function up to rounding) in ``channels_last`` memory, or in NCHW for the small feature maps of a deep split
on the CPU (``channels_last=None``, :func:`lsrs.inference.prefers_channels_last`); ``fold_bn=False`` turns the
folding off, ``channels_last=True`` or ``False`` fixes the memory format.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lsrs.arguments import (
    check_image,
    module_dtype,
    nonnegative_float,
    plain_generator,
    positive_float,
    positive_int,
    probability,
)
from lsrs.bounds import clopper_pearson_lower, gaussian_radius, two_sided_binomial_pvalue
from lsrs.executed import SOURCE_PROVEN, ExecutedBound, encode_executed
from lsrs.inference import inference_copy, is_training, prefers_channels_last
from lsrs.lattice import NOISES, LatticeNoiseStream, LatticeSpec, lattice_spec
from lsrs.noise import (
    DEFAULT_BLOCK,
    NOISE_STREAM,
    NoiseKey,
    NoiseStream,
    Scratch,
    certificate_key,
    check_noise_stream,
    fill_ahead_bytes,
    fill_sizes,
)
from lsrs.proofs import (
    UnprovenModule,
    executable_copy,
    executed_bound,
    first_unproven,
    probe_dtype,
    state_key,
)
from lsrs.sequential import (
    CERTIFICATES,
    SAMPLERS,
    Decision,
    abstain_is_certain,
    checkpoint_schedule,
    multiclass_bound,
    required_probability,
    sequential_look,
)
from lsrs.threads import one_cpu_thread
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
    p_b_upper: float = math.nan
    sampler: str = "fixed"
    certificate: str = "binary"
    latent_error: float = 0.0
    lipschitz_declared: float = math.nan
    lipschitz_source: str = SOURCE_PROVEN  # lsrs.executed.LIPSCHITZ_SOURCES: the library's proofs, a user's, trusted
    noise: str = "gaussian"  # "lattice": rounded-Gaussian noise on (1/D) Z^d, sound as executed (lsrs.lattice)
    lattice_step: float = math.nan  # h = 1/D of the lattice noise
    quantization: float = 0.0  # h sqrt(d) subtracted from the latent radius (a quantized latent; lsrs.lattice)
    inexact_draws: int = 0  # lattice draws the integer table could not decide exactly (any one: abstain)

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


class LatentSmooth:
    """LS-RS: smooth ``classifier`` over the latent ``z = encoder(x)`` with N(0, sigma^2 I) noise.

    ``lipschitz`` is the *declared* upper bound on the l2 Lipschitz constant of ``encoder`` (including any
    preprocessing it applies). Every module of the encoder must have a proof (:mod:`lsrs.proofs`: the
    library's atoms, ``nn.Linear``, any ``nn.Conv2d``, pooling, ...): the certificate is then sound *as
    executed* (:mod:`lsrs.executed`): ``z`` is computed in float64 from the operators that run, ``L`` is the
    larger of the declared bound and the composed proofs' bound of those operators, and the input radius is
    ``(radius_latent - 2 delta) / L`` with ``delta`` bounding the rounding of the computed latent (Theorem 1
    applied to the executed map). An encoder with a module without a proof is refused (``ValueError`` naming
    the module's path and class), unless ``trust_lipschitz=True``: then the caller vouches for ``lipschitz``,
    the radius is ``radius_latent / lipschitz`` and each certificate says ``lipschitz_source="trusted"``.

    The smoother evaluates private ``eval()`` copies, made once here: ``self.encoder`` (cached operators built
    afresh, every Cayley convolution caching, standard layers upcast exactly to float64 for the float64
    forward; :func:`lsrs.proofs.executable_copy`) and ``self.classifier`` (``inference_copy(classifier,
    fold_bn=..., channels_last=...)``, which is ``classifier`` itself when no rewrite applies; of an eval-mode
    copy when ``classifier`` is in training mode). A module passed in training mode is certified in
    its eval-mode function (for the classifier a warning says so): in training mode BatchNorm normalises each batch by its own
    statistics, so the counts would depend on the batch size and Clopper-Pearson would not apply. The
    caller's modules never change, and later changes to the encoder are not seen (build a new smoother); the bound is
    proven again (or refused) whenever anything of ``self.encoder`` that runs, or the declared ``lipschitz``,
    changes (:func:`lsrs.digest.state_key`; what counts as the proven function: :mod:`lsrs.pristine`).

    Inputs are plain float tensors with every value in ``input_range`` (default ``(0, 1)``, the scale a radius is
    stated on; ``None`` for inputs that are not images), copied before the encoder runs. Numbers may be Python or
    numpy scalars. A float16 / bfloat16 classifier gets its inputs in its own precision.

    ``noise="lattice"`` (:mod:`lsrs.lattice`, Voracek & Hein 2023): the noise is the Gaussian rounded to the
    lattice ``(1/D) Z^d``, drawn exactly from integer thresholds, and the classifier sees ``fl32((m + k) / D)``
    for the integer centre ``m`` and draw ``k``: a fixed function of a lattice point, so the certificate covers
    the arithmetic that runs. With an identity encoder (IS-RS) ``D = 255`` and the input must be an 8-bit
    image (values ``m / 255`` in float32; anything else is refused); otherwise the executed latent is rounded to
    ``D = 2^e`` (``lattice_denominator``, default :func:`lsrs.lattice.latent_denominator`) and
    ``h sqrt(d)`` is subtracted from the latent radius before ``delta`` and ``L`` are applied.
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
        fold_bn: bool = True,
        channels_last: bool | None = None,
        noise_block: int = DEFAULT_BLOCK,
        trust_lipschitz: bool = False,
        noise: str = "gaussian",
        lattice_denominator: int | None = None,
        input_range: tuple[float, float] | None = (0.0, 1.0),
        noise_version: str = NOISE_STREAM,
    ) -> None:
        num_classes, noise_block = positive_int("num_classes", num_classes), positive_int("noise_block", noise_block)
        sigma, lipschitz = positive_float("sigma", sigma), positive_float("lipschitz", lipschitz)
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        if lattice_denominator is not None:
            lattice_denominator = positive_int("lattice_denominator", lattice_denominator)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        unproven = first_unproven(encoder)
        if unproven is not None and not trust_lipschitz:
            raise unproven.within("encoder", _trust_advice(lipschitz))
        self.trusted = unproven is not None
        try:
            self.encoder = executable_copy(encoder, widen=not self.trusted, verify=not self.trusted)
        except UnprovenModule as err:
            raise err.within("encoder", _trust_advice(lipschitz)) from None
        low = {t.dtype for t in (*self.encoder.parameters(), *self.encoder.buffers())} & {torch.float16, torch.bfloat16}
        if low and not self.trusted:  # the float64 forward upcasts nn.Linear / nn.Conv2d exactly, nothing else
            raise ValueError(f"the encoder holds {sorted(map(str, low))[0]} tensors in layers that the float64 "
                             "forward does not upcast: call .float() on it, or pass trust_lipschitz=True")
        self._encoder_dtype = module_dtype(self.encoder, "encoder") if self.trusted else None
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self.classifier = _private_classifier(classifier, fold_bn, channels_last is not False)
        self._nchw_classifier: nn.Module | None = None  # channels_last=None: an NCHW copy for small maps on CPU
        self._classifier_dtype = module_dtype(self.classifier, "classifier")
        self.fold_bn = fold_bn
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.lipschitz = float(lipschitz)
        self.precision = precision
        self.channels_last = channels_last
        self.noise_block = noise_block
        self._scratch = Scratch()  # the sampling loop's drawing buffer, reused across certificates
        self._scratch_nchw = Scratch()  # the noisy batch in NCHW memory, when the classifier runs in NCHW
        self.noise = noise
        self.lattice_denominator = lattice_denominator
        self.input_lattice = isinstance(encoder, nn.Identity)  # IS-RS: inputs are 8-bit images, never quantized
        self.noise_version = check_noise_stream(noise_version)
        if device is None:
            param = next(iter(classifier.parameters()), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self._executed: ExecutedBound | None = None
        self._executed_for: tuple | None = None
        self._rekey = False

    # ------------------------------------------------------------------ public API (Cohen et al. names)
    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | int | None = None,
        *,
        sampler: str = "fixed",
        certificate: str = "binary",
    ) -> Certificate:
        """CERTIFY: select the top class with ``n0`` samples, bound its probability with ``n`` fresh samples.

        With probability at least ``1 - alpha`` the returned certificate is correct: either it abstains, or
        the smoothed classifier is constant within ``radius`` (input space) around ``x``.

        ``certificate="binary"`` (Cohen et al.): abstain when the one-sided Clopper-Pearson lower bound
        ``pA_lower`` is below 1/2, else ``radius_latent = sigma * Phi^-1(pA_lower)``.
        ``certificate="multiclass"``: the paper's Eq. 3 with Bonferroni-split bounds (:mod:`lsrs.sequential`).
        In both cases ``radius = radius_latent / lipschitz`` (paper Theorem 1).
        ``sampler="curtail"`` stops drawing once abstention is certain and returns exactly the prediction and
        radius of ``sampler="fixed"`` for the same seed; ``samples_used`` tells how many samples it drew.

        ``generator``: an int seed (numpy integers too), a ``torch.Generator`` (one draw gives the seed) or None
        (torch's global RNG). The noise stream is keyed by (seed, ``"certify"``, a 128-bit digest of ``x``)
        (:func:`lsrs.noise.certificate_key`): with one int for many images each image still gets its own
        stream, and :meth:`decide` and :meth:`predict` with the same seed draw other streams.
        """
        n0, n, batch_size = positive_int("n0", n0), positive_int("n", n), positive_int("batch_size", batch_size)
        alpha, generator = probability("alpha", alpha), plain_generator(generator)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if certificate not in CERTIFICATES:
            raise ValueError(f"certificate must be one of {CERTIFICATES}, got {certificate!r}")
        with Stopwatch(self.device) as total:
            key = certificate_key(generator, "certify", x, self.noise_version)
            with Stopwatch(self.device) as enc:
                z, bound, (err_a, err_b) = self._encode_bounded(x)
                z, spec = self.noise_centre(z)
            with Stopwatch(self.device) as smp:
                stream = self.noise_stream(z, key, spec)
                counts0 = self.sample_counts(z, n0, batch_size, stream)
                c_a = int(counts0.argmax().item())
                stream.finish_block()  # estimation starts at a fresh block: disjoint from selection
                drawn, counts = 0, None
                for drawn, counts in self._cumulative_counts(z, n, batch_size, stream):
                    if sampler == "curtail" and drawn < n and self._abstain_is_certain(counts, c_a, drawn, n, alpha,
                                                                                        certificate):
                        break
            counts0_t = tuple(int(c) for c in counts0.tolist())
            counts_t = tuple(int(c) for c in counts.tolist())
            inexact = _inexact_draws(stream)
            if drawn < n:  # curtailed: abstention is certain, the final bounds are never computed
                prediction, radius_latent, p_a_lower, p_b_upper = ABSTAIN, 0.0, math.nan, math.nan
            else:
                prediction, radius_latent, p_a_lower, p_b_upper = self._bound(counts_t, c_a, n, alpha, certificate)
            if inexact:  # a draw the table could not decide: no claim (lsrs.lattice, "Accounting")
                prediction, radius_latent = ABSTAIN, 0.0
            radius = bound.radius(radius_latent - spec.quantization, err_a, err_b) if radius_latent > 0 else 0.0
        return Certificate(
            prediction=prediction,
            radius=radius,
            radius_latent=radius_latent,
            p_a_lower=p_a_lower,
            counts_selection=counts0_t,
            counts_estimation=counts_t,
            n0=n0,
            n=n,
            alpha=alpha,
            sigma=self.sigma,
            lipschitz=bound.lipschitz,
            samples_used=n0 + drawn,
            encode_s=enc.seconds,
            sample_s=smp.seconds,
            total_s=total.seconds,
            p_b_upper=p_b_upper,
            sampler=sampler,
            certificate=certificate,
            latent_error=err_a + err_b * radius,
            lipschitz_declared=self.lipschitz,
            lipschitz_source=bound.source,
            noise=self.noise,
            lattice_step=spec.step,
            quantization=spec.quantization,
            inexact_draws=inexact,
        )

    def _bound(
        self, counts: tuple[int, ...], c_a: int, n: int, alpha: float, certificate: str
    ) -> tuple[int, float, float, float]:
        """(prediction, latent radius, pA_lower, pB_upper) of CERTIFY from the estimation counts."""
        if certificate == "multiclass":
            b = multiclass_bound(list(counts), c_a, n, alpha, self.sigma)
            if b.radius <= 0.0:
                return ABSTAIN, 0.0, b.p_a_lower, b.p_b_upper
            return c_a, b.radius, b.p_a_lower, b.p_b_upper
        p_a_lower = clopper_pearson_lower(counts[c_a], n, alpha)
        if p_a_lower < 0.5:
            return ABSTAIN, 0.0, p_a_lower, 1.0 - p_a_lower
        return c_a, gaussian_radius(self.sigma, p_a_lower), p_a_lower, 1.0 - p_a_lower

    def _abstain_is_certain(
        self, counts: torch.Tensor, c_a: int, drawn: int, n: int, alpha: float, certificate: str
    ) -> bool:
        """Exact curtailment: would CERTIFY abstain even if every remaining sample hit the top class?"""
        if certificate == "binary":
            return abstain_is_certain(int(counts[c_a].item()), drawn, n, alpha)
        best = [int(c) for c in counts.tolist()]
        best[c_a] += n - drawn  # the most favourable continuation: pA_lower up, pB_upper down
        return self._bound(tuple(best), c_a, n, alpha, certificate)[0] == ABSTAIN

    def decide(
        self,
        x: torch.Tensor,
        radius: float,
        alpha: float,
        max_n: int,
        batch_size: int,
        generator: torch.Generator | int | None = None,
        *,
        n0: int = 100,
        first_look: int = 64,
    ) -> Decision:
        """Is the smoothed classifier certifiably robust at input ``radius`` around ``x``? (anytime-valid)

        Selects the top class with ``n0`` samples, then tests ``pA > Phi(radius * lipschitz / sigma)`` on a
        geometric grid of looks (``first_look``, doubling, ending at ``max_n``), spending ``alpha / J`` per
        look and side. By the union bound over the ``J`` fixed looks, the answer is wrong with probability at
        most ``alpha`` whatever the data-dependent stopping time; a fixed-n Clopper-Pearson bound re-checked
        after every batch would not be (optional stopping). ``certified`` is None if ``max_n`` did not settle it.
        """
        n0, max_n = positive_int("n0", n0), positive_int("max_n", max_n)
        batch_size, first_look = positive_int("batch_size", batch_size), positive_int("first_look", first_look)
        alpha, generator, radius = probability("alpha", alpha), plain_generator(generator), nonnegative_float(radius)
        looks = checkpoint_schedule(max_n, first_look)
        alpha_look = alpha / len(looks)
        key = certificate_key(generator, "decide", x, self.noise_version)
        answer: bool | None = None
        lower, upper, drawn = 0.0, 1.0, 0
        with Stopwatch(self.device) as total:
            z, bound, (err_a, err_b) = self._encode_bounded(x)
            z, spec = self.noise_centre(z)
            needed = bound.latent_radius_needed(radius, err_a, err_b) + spec.quantization
            p_required = required_probability(needed, self.sigma)
            stream = self.noise_stream(z, key, spec)
            c_a = int(self.sample_counts(z, n0, batch_size, stream).argmax().item())
            stream.finish_block()
            for drawn, counts in self._cumulative_counts(z, max_n, batch_size, stream, stops=looks):
                if drawn in looks:
                    answer, lower, upper = sequential_look(int(counts[c_a].item()), drawn, p_required, alpha_look)
                    if answer is not None:
                        break
            if _inexact_draws(stream):  # no claim (lsrs.lattice, "Accounting")
                answer = None
        return Decision(
            certified=answer,
            prediction=c_a if answer else ABSTAIN,
            radius=float(radius),
            p_required=p_required,
            p_a_lower=lower,
            p_a_upper=upper,
            samples_used=n0 + drawn,
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
        n, batch_size = positive_int("n", n), positive_int("batch_size", batch_size)
        alpha, generator = probability("alpha", alpha), plain_generator(generator)
        z, spec = self.noise_centre(self.encode(x))
        stream = self.noise_stream(z, certificate_key(generator, "predict", x, self.noise_version), spec)
        counts = self.sample_counts(z, n, batch_size, stream)
        if _inexact_draws(stream):  # no claim (lsrs.lattice, "Accounting")
            return ABSTAIN
        top2 = counts.topk(min(2, self.num_classes))
        n_a = int(top2.values[0].item())
        n_b = int(top2.values[1].item()) if self.num_classes > 1 else 0
        if two_sided_binomial_pvalue(n_a, n_a + n_b) > alpha:
            return ABSTAIN
        return int(top2.indices[0].item())

    # ------------------------------------------------------------------ engine
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent ``z`` of one input ``x`` (no batch dimension) as the certificate uses it: a batch of one."""
        return self._encode_bounded(x)[0]

    def executed_bound(self, input_shape: Sequence[int]) -> ExecutedBound:
        """The bound the certificates divide by: :func:`lsrs.proofs.executed_bound` of ``self.encoder``, with
        ``L`` raised to the declared ``lipschitz`` if that is larger; the declared bound alone (no rounding
        term, ``trusted``) with ``trust_lipschitz`` for an encoder without a proof. Keyed on the declared bound
        and everything that determines what runs (:func:`lsrs.digest.state_key`: tensor contents, attributes,
        hooks, the classes' code), read before the forward pass that may rebuild a cache, and proven again (or
        refused) whenever it changed."""
        key = self._bound_key(input_shape)
        if self._executed is None or key != self._executed_for:
            lipschitz = positive_float("lipschitz", self.lipschitz)
            if self.trusted:
                bound = ExecutedBound(lipschitz, lipschitz, (), trusted=True)
            else:
                self._check_latent_size(input_shape)
                try:
                    with torch.inference_mode(False):
                        bound = executed_bound(self.encoder, tuple(input_shape), self.device, strict=True)
                except UnprovenModule as err:
                    raise err.within("encoder", _trust_advice(lipschitz)) from None
                bound.lipschitz = max(bound.lipschitz, lipschitz)
            self._executed = bound
            self._executed_for = self._bound_key(input_shape)  # after the pass's cache builds
            self._rekey = True  # and once more after the first certified pass (float64 operator copies)
        return self._executed

    def _check_latent_size(self, input_shape: Sequence[int]) -> None:
        """Refuse an encoder whose latent is empty on inputs of ``input_shape``, before proving it."""
        probe = torch.zeros(1, *input_shape, dtype=probe_dtype(self.encoder), device=self.device)
        with torch.inference_mode():
            z = self.encoder(probe)
        if not isinstance(z, torch.Tensor) or z.numel() == 0:
            shape = tuple(z.shape[1:]) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"the encoder returns an empty latent ({shape}) on inputs of shape {tuple(input_shape)}: "
                             "nothing to smooth")

    def _bound_key(self, input_shape: Sequence[int]) -> tuple:
        """What the bound depends on: the input shape, the declared bound, and (unless trusted) the encoder."""
        state = None if self.trusted else state_key(self.encoder)
        return tuple(input_shape), repr(self.lipschitz), self.trusted, state

    @torch.inference_mode()
    def _encode_bounded(self, x: torch.Tensor) -> tuple[torch.Tensor, ExecutedBound, tuple[float, float]]:
        """``(z32, bound, (a, b))``: the float32 latent, the bound, and ``delta(r) = a + b r`` for this image.
        The input is checked (:func:`lsrs.arguments.check_image`, against ``input_range``) and copied: the caller's tensor is never
        written, even by an encoder that starts with an in-place operation."""
        check_image(x, self.input_range)
        x = x.detach().to(self.device).clone().unsqueeze(0)
        bound = self.executed_bound(tuple(x.shape[1:]))
        with one_cpu_thread(self.device):  # one image: too small to share between threads (lsrs.threads)
            if bound.trusted or not (bound.terms or bound.user_proof):  # declared, or no arithmetic at all
                z = self.encoder(x.to(self._encoder_dtype or x.dtype)).float()
                _check_latent(z)
                return z, bound, (0.0, 0.0)
            z64, norms = encode_executed(self.encoder, x, bound)
        if self._rekey:
            self._executed_for, self._rekey = self._bound_key(tuple(x.shape[1:])), False
        z = z64.float()
        _check_latent(z)
        return z, bound, bound.latent_error(norms, float(z64.norm()), z64.numel())

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def noise_centre(self, z: torch.Tensor) -> tuple[torch.Tensor, LatticeSpec]:
        """What the noise is added to: ``z`` itself (Gaussian noise), or the integer lattice centre ``m`` of
        ``z`` with its lattice (:func:`lsrs.lattice.lattice_spec`; refuses an off-lattice input)."""
        if self.noise == "gaussian":
            return z, LatticeSpec.none()
        return lattice_spec(z, self.sigma, self.input_lattice, self.lattice_denominator)

    def noise_stream(
        self, z: torch.Tensor, key: NoiseKey, spec: LatticeSpec | None = None
    ) -> NoiseStream | LatticeNoiseStream:
        """The N(0, sigma^2 I) stream of latent ``z``'s shape under ``key`` (one generator, seeded once); with
        ``noise="lattice"`` the stream of integer draws on ``spec``'s lattice (``z`` is then the integer centre
        that :meth:`noise_centre` returned with ``spec``)."""
        if self.noise == "lattice":
            if spec is None or not spec.denominator:
                raise ValueError("noise='lattice': pass the lattice of the centre (noise_centre returns both)")
            return LatticeNoiseStream(z.shape[1:], key, device=self.device, block=self.noise_block,
                                      sigma=self.sigma, denominator=spec.denominator, version=self.noise_version)
        return NoiseStream(z.shape[1:], key, device=self.device, dtype=z.dtype, block=self.noise_block,
                           std=self.sigma, version=self.noise_version)

    def sample_counts(
        self, z: torch.Tensor, num: int, batch_size: int, noise: NoiseStream | LatticeNoiseStream | NoiseKey
    ) -> torch.Tensor:
        """Class counts (on the device) of ``classifier(z + sigma * noise)`` over the next ``num`` samples of
        ``noise`` (a stream, or the key of a fresh one: with lattice noise, ``z`` is then the latent, rounded
        here to its lattice centre; with a stream, the centre that came with it)."""
        _, counts = deque(self._cumulative_counts(z, num, batch_size, noise), maxlen=1)[0]
        return counts

    @torch.inference_mode()
    def _cumulative_counts(
        self, z: torch.Tensor, num: int, batch_size: int, noise: NoiseStream | LatticeNoiseStream | NoiseKey, stops: Sequence[int] = ()
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(samples drawn so far, counts so far)`` after each batch; batches also end at ``stops``.

        The counts tensor lives on the device and is updated in place; reading it costs a host sync, so
        only sequential samplers do that per batch. The noise stream does not depend on the batch bounds.
        """
        if not isinstance(noise, (NoiseStream, LatticeNoiseStream)):
            z, spec = self.noise_centre(z)
            noise = self.noise_stream(z, noise, spec)
        stream = noise
        sizes = fill_sizes(num, batch_size, z[0].numel() * z.element_size(), stops, fill_ahead_bytes(self.device))
        buffer = self._scratch.get(max(sizes, default=0), stream.new_buffer)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        if z.dim() == 4:  # the buffer is channels_last: adding a z of the same layout is one contiguous pass
            z = z.contiguous(memory_format=torch.channels_last)
        drawn = 0
        for size in sizes:
            run = stream.fill(buffer[:size])
            for start in range(0, size, batch_size):
                b = min(batch_size, size - start)
                self._count(run[start : start + b], z, stream, counts)
                drawn += b
                yield drawn, counts

    def _count(self, noise: torch.Tensor, z: torch.Tensor, stream: NoiseStream | LatticeNoiseStream,
               counts: torch.Tensor) -> None:
        """Add the classifier's top classes on ``z + noise`` (one batch; ``noise`` may be overwritten) to ``counts``."""
        classifier, noisy = self.classifier, noise
        if noise.dim() == 4 and not self._runs_channels_last(noise.shape):  # one pass into NCHW memory
            classifier = self._nchw()
            noisy = self._scratch_nchw.get(noise.shape[0], lambda k: torch.empty(
                (k, *noise.shape[1:]), dtype=noise.dtype, device=noise.device))
            torch.add(noise, z, out=noisy)
        else:
            noisy.add_(z)
        if isinstance(stream, LatticeNoiseStream):
            noisy.div_(stream.denominator)  # fl32((m + k) / D): a fixed function of the lattice point
        if self._classifier_dtype not in (None, noisy.dtype):  # a half / bf16 classifier: in its precision
            noisy = noisy.to(self._classifier_dtype)
        with self._autocast():
            logits = classifier(noisy)
        b = noisy.shape[0]
        if logits.dim() != 2 or logits.shape != (b, self.num_classes):
            raise ValueError(
                f"classifier returned logits of shape {tuple(logits.shape)} for a batch of {b}, "
                f"expected ({b}, {self.num_classes}) (num_classes={self.num_classes})"
            )
        counts += torch.bincount(logits.argmax(1), minlength=self.num_classes)

    def _runs_channels_last(self, shape: torch.Size) -> bool:
        """The memory format of a noisy batch: ``channels_last`` as given, or by shape when it is None."""
        return self.channels_last if self.channels_last is not None else prefers_channels_last(shape, self.device)

    def _nchw(self) -> nn.Module:
        """The classifier copy in NCHW memory (built from :attr:`classifier` on first use when it is channels_last)."""
        if self.channels_last is False:
            return self.classifier
        if self._nchw_classifier is None:
            self._nchw_classifier = copy.deepcopy(self.classifier).to(memory_format=torch.contiguous_format)
        return self._nchw_classifier


def _inexact_draws(stream: NoiseStream | LatticeNoiseStream) -> int:
    """Lattice draws of ``stream`` the integer table could not decide exactly (0 for Gaussian noise)."""
    return int(stream.inexact.item()) if isinstance(stream, LatticeNoiseStream) else 0
def _trust_advice(lipschitz: float) -> str:
    return ("LatentSmooth certifies only what it proves: use layers with a proof (lsrs.proofs) or pass "
            f"trust_lipschitz=True to vouch for the declared lipschitz={float(lipschitz)!r} (recorded as "
            "lipschitz_source='trusted')")


def _check_latent(z: torch.Tensor) -> None:
    """Refuse an empty or non-finite latent in one line."""
    if z.numel() == 0:
        raise ValueError(f"the encoder returned an empty latent (shape {tuple(z.shape[1:])}): nothing to smooth")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("the encoder returned a latent with NaN or Inf entries: check its weights and the image")


def _private_classifier(classifier: nn.Module, fold_bn: bool, channels_last: bool) -> nn.Module:
    """The classifier the engine evaluates: :func:`lsrs.inference.inference_copy` of ``classifier``, or of a private
    ``eval()`` copy when it is in training mode (with a warning); the caller's module is never changed."""
    source = classifier
    if is_training(classifier):
        warnings.warn("the classifier is in training mode: certifying its eval-mode function (a private copy; "
                      "the module passed in is unchanged)", stacklevel=3)
        source = copy.deepcopy(classifier).eval()
    return inference_copy(source, fold_bn=fold_bn, channels_last=channels_last)


class Smooth(LatentSmooth):
    """IS-RS (Cohen et al. 2019): smooth ``base_classifier`` over ``x + N(0, sigma^2 I)``."""

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float, **kwargs: object) -> None:
        super().__init__(nn.Identity(), base_classifier, num_classes, sigma, 1.0, **kwargs)


def smooth_model(model: nn.Module, num_classes: int, sigma: float, **kwargs: object) -> LatentSmooth:
    """The smoothed classifier of a :class:`lsrs.models.Split`: IS-RS on the whole network for the baseline
    (``fors == 0``), LS-RS on ``classifier`` over ``encoder`` with its declared ``encoder_lipschitz`` otherwise."""
    if int(getattr(model, "fors", 0)) == 0:
        return Smooth(model, num_classes, sigma, **kwargs)
    return LatentSmooth(model.encoder, model.classifier, num_classes, sigma, float(model.encoder_lipschitz), **kwargs)
