"""Deterministic Lipschitz-margin certificates, and the margin loss that trains for them.

If the logits ``f`` are ``L``-Lipschitz in l2, the prediction ``argmax f(x)`` cannot change within

    radius = (f_top(x) - f_runner_up(x)) / (sqrt(2) * L)

(Tsuzuku, Sato & Sugiyama 2018, Prop. 1; Li et al. 2019; Trockman & Kolter 2021 with the same Cayley
convolution). One forward pass, no sampling, no failure probability: the third certifier beside IS-RS and
LS-RS, on the fully orthogonal twin ``resnet18(..., fors=18)``.

* :func:`network_lipschitz` - the network's proven bound ``L`` (:mod:`lsrs.proofs`, as executed).
* :class:`LipschitzCertifier` / :func:`lipschitz_certify` - predictions and radii of a batch.
* :func:`margin_loss` - cross-entropy on logits whose true class is lowered by ``sqrt(2) * L * eps``, with a
  temperature (Tsuzuku et al. 2018; Prach & Lampert 2022; Prach et al. 2024).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsrs.lipschitz import proven_bound
from lsrs.proofs import ProofContext, UnprovenModule, executable_copy, input_shapes

__all__ = [
    "LipschitzCertificates",
    "LipschitzCertifier",
    "lipschitz_certify",
    "margin_loss",
    "network_lipschitz",
]

SQRT2 = math.sqrt(2.0)


def _stages(model: nn.Module) -> nn.Sequential:
    """``model`` as one ``nn.Sequential`` of its stages (a :class:`~lsrs.models.Split` becomes
    ``encoder, classifier``); the modules are shared, not copied."""
    encoder, classifier = getattr(model, "encoder", None), getattr(model, "classifier", None)
    if isinstance(model, nn.Sequential):
        return model
    wrapper = nn.Sequential(OrderedDict(encoder=encoder, classifier=classifier)) if (
        isinstance(encoder, nn.Module) and isinstance(classifier, nn.Module)) else nn.Sequential(model)
    wrapper.training = model.training  # proven_bound restores this mode on every module it wraps
    return wrapper


def network_lipschitz(model: nn.Module, input_shape: Sequence[int]) -> float:
    """An upper bound on the l2 Lipschitz constant of the whole network ``x -> logits`` (``inf`` if unknown).

    Today :func:`lsrs.lipschitz.proven_bound` (exact constants of the operators as computed, composed);
    this is the single call to change for a bound of the network as executed.
    """
    return proven_bound(_stages(model), tuple(int(s) for s in input_shape))


class LipschitzCertificates(NamedTuple):
    """Per image: ``prediction`` (argmax of the logits), certified l2 ``radius``, logit ``margin``
    (top minus runner-up); ``lipschitz`` is the network's bound ``L`` used."""

    prediction: Tensor
    radius: Tensor
    margin: Tensor
    lipschitz: float


class LipschitzCertifier:
    """Certify a network whose every layer has a proven Lipschitz bound, from one forward pass.

    Guarantee (Tsuzuku et al. 2018, Prop. 1): let ``f`` be ``L``-Lipschitz and ``M(x) = f_c(x) - max_{j!=c}
    f_j(x)`` with ``c = argmax f(x)``. For any ``j != c`` and ``||d|| < r``,
    ``(f_c - f_j)(x + d) >= (f_c - f_j)(x) - (e_c - e_j)^T (f(x) - f(x + d)) >= M(x) - ||e_c - e_j|| L ||d||
    > M(x) - sqrt(2) L r``, so with ``r = M(x) / (sqrt(2) L)`` class ``c`` stays the unique argmax on the open
    ball. A tie (``M = 0``) certifies nothing: radius 0.

    As executed: the network runs on a frozen float64 copy (``dtype``) and ``L`` is the bound of that copy's
    operators (each Cayley matrix as computed, its largest singular value). What remains between the
    proof (exact arithmetic with those operators) and the computed logits is rounding in the forward pass,
    deducted from the margin: with ``delta`` a bound on ``||f_computed - f||`` anywhere in the ball, the
    margin of the computed logits moves by at most ``sqrt(2) * delta`` at ``x`` and at ``x + d``, so
    ``r = max(0, M - 2 sqrt(2) delta) / (sqrt(2) L)`` is sound for the network as executed. ``delta`` is the
    first-order a-priori forward-error bound of :meth:`rounding_bound` (standard constants of Higham 2002,
    checked by the tests against the observed float32 error; not an interval-arithmetic proof). It is about
    1e-11 relative in float64, so radii lose nothing visible; in float32 it is 2^29 times larger, which is
    why float64 is the default.

    ``L`` is the composed per-layer proofs of :mod:`lsrs.proofs` on that copy. A layer without a proof
    (BatchNorm, a std division, a subclass overriding ``forward``, ...) is refused: the constructor raises
    ``ValueError`` naming the layer's path and class.
    """

    def __init__(
        self, model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        param = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (
            param.device if param is not None else torch.device("cpu"))
        self.dtype = dtype
        # a private eval-mode copy (its own caches, every Cayley convolution caching: lsrs.proofs.executable_copy)
        self.model = executable_copy(model, widen=False).to(device=self.device, dtype=dtype)
        self._root = _stages(self.model)
        self._root.eval()
        shapes = input_shapes(self._root, torch.zeros(1, *self.input_shape, dtype=dtype, device=self.device))
        ctx = ProofContext(shapes)
        try:
            self.lipschitz = ctx.prove(self._root, "").executed
        except UnprovenModule as err:
            raise err.within("", "cannot certify by Lipschitz margin: every layer must have a proof, e.g. "
                                 "resnet18(..., fors=18)") from None
        self._ops, self._gamma = self._rounding_constants()
        self._stages, self._expansion = self._stage_bounds(ctx)

    def _stage_bounds(self, ctx: ProofContext) -> tuple[list[nn.Module], float]:
        """The network as a flat list of stages, and ``P`` = the product of ``max(1, L_stage)`` (their proofs)."""
        stages: list[nn.Module] = []

        def flatten(m: nn.Module) -> None:
            if type(m) is nn.Sequential:
                for child in m:
                    flatten(child)
            elif type(m) is not nn.Identity:
                stages.append(m)

        flatten(self._root)
        return stages, math.prod(max(1.0, ctx.proofs[stage].executed) for stage in stages)

    def _rounding_constants(self) -> tuple[int, float]:
        """(number of layers that round, per-layer relative forward error ``gamma``)."""
        u = torch.finfo(self.dtype).eps / 2
        k_max, ops = 2, 0
        for m in self.model.modules():
            if next(m.children(), None) is None:
                ops += 1
            weight = getattr(m, "weight", None)
            if isinstance(weight, Tensor) and weight.dim() >= 2:  # inner products of at most fan-in terms
                k_max = max(k_max, weight.shape[0], weight[0].numel())
        n_max = max([2, *_leaf_input_sizes(self.model, self.input_shape, self.dtype, self.device)])
        # FFT forward + inverse (Higham 2002, Thm 24.2: log2(N) * eta, eta <= 5u) and a complex inner product
        # of length k (Higham 2002, Sec. 3.1 / 3.6: gamma_k ~ 2 k u), plus a few element-wise roundings.
        gamma = (10 * math.log2(n_max) + 2 * k_max + 10) * u
        return ops, gamma

    def rounding_bound(self, activation_norm: Tensor, radius: Tensor) -> Tensor:
        """A bound ``delta`` per image on ``||f_computed(x') - f(x')||`` for every ``||x' - x|| <= radius``.

        First-order a-priori forward error: each of the ``n`` rounding layers adds at most ``gamma`` times
        the norm of what it acts on (input, or output for a bias), and later layers amplify it by at most
        ``P`` (the product of ``max(1, L_stage)``, 1 for an orthogonal network). Activations at ``x'`` are
        at most ``A + P * radius`` with ``A`` the largest stage activation norm at ``x``. Hence
        ``delta <= 4 * n * gamma * P * (A + P * radius)``, the factor 4 covering second-order terms.
        """
        p = self._expansion
        return 4 * self._ops * self._gamma * p * (activation_norm + p * radius)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of the batch ``x`` as executed, and each image's largest stage activation norm ``A``."""
        h = x.to(device=self.device, dtype=self.dtype)
        norm = h.flatten(1).norm(dim=1)
        for stage in self._stages:
            h = stage(h)
            norm = torch.maximum(norm, h.flatten(1).norm(dim=1))
        return h, norm

    @torch.no_grad()
    def certify(self, x: Tensor) -> LipschitzCertificates:
        """Prediction, radius and margin of every image of ``x`` (a batch ``B x C x H x W``, or one image)."""
        if x.dim() == len(self.input_shape):
            x = x.unsqueeze(0)
        logits, norm = self.forward(x)
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"expected logits of shape (batch, classes >= 2), got {tuple(logits.shape)}")
        prediction = logits.argmax(1)
        top = logits.gather(1, prediction[:, None]).squeeze(1)
        others = logits.scatter(1, prediction[:, None], -math.inf)
        margin = top - others.amax(1)
        scale = SQRT2 * self.lipschitz
        delta = self.rounding_bound(norm, margin / scale)
        kept = margin - 2 * SQRT2 * delta
        radius = torch.where(kept > 0, kept / scale, torch.zeros_like(kept))  # ties (and L = 0) certify 0
        return LipschitzCertificates(prediction, radius, margin, self.lipschitz)


def _leaf_input_sizes(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype,
                      device: torch.device) -> list[int]:
    """Spatial sizes ``H * W`` (or pooled counts) that the FFT convolutions and pools of ``model`` see."""
    sizes: list[int] = []

    def hook(mod: nn.Module, args: tuple) -> None:
        t = args[0]
        if isinstance(t, Tensor) and t.dim() == 4:  # every FFT or pooled sum runs on at most H * W points
            sizes.append(int(t.shape[-2] * t.shape[-1]))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
    return sizes


def lipschitz_certify(model: nn.Module, x: Tensor, *, dtype: torch.dtype = torch.float64) -> LipschitzCertificates:
    """Certify the batch ``x`` (``B x ...``) with ``model``'s logit margins: see :class:`LipschitzCertifier` (the proof).

    Returns ``(prediction, radius, margin, lipschitz)``; radius 0 where the top two logits tie. Raises
    ``ValueError`` when a layer of ``model`` has no proven Lipschitz bound. For many calls, build one
    :class:`LipschitzCertifier` (it copies the model and computes ``L`` once).
    """
    shape = tuple(x.shape[1:])
    return LipschitzCertifier(model, shape, dtype=dtype, device=x.device).certify(x)


def margin_loss(
    logits: Tensor, target: Tensor, eps: float, temperature: float = 1.0, lipschitz: float = 1.0
) -> Tensor:
    """``T * CE((f(x) - sqrt(2) L eps e_y) / T, y)``: the Lipschitz-margin loss.

    Lowering the true logit by ``sqrt(2) * L * eps`` (Tsuzuku et al. 2018, Lipschitz-margin training) makes
    the loss small only where the margin exceeds what a radius-``eps`` certificate needs; the temperature
    ``T`` and the rescaling by ``T`` follow the offset cross-entropy of Prach & Lampert (2022), used by
    Prach et al. (CVPR 2024, "1-Lipschitz Layers Compared") for every 1-Lipschitz layer they train.
    """
    if not (eps >= 0 and temperature > 0):
        raise ValueError(f"need eps >= 0 and temperature > 0, got eps={eps!r}, temperature={temperature!r}")
    offset = SQRT2 * lipschitz * eps * F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    return temperature * F.cross_entropy((logits - offset) / temperature, target)
