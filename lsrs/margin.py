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
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsrs.arguments import check_image
from lsrs.digest import state_key
from lsrs.executed import U32, U64, ExecutedBound, Output, gamma, refuse_active_modes
from lsrs.lipschitz import proven_bound
from lsrs.proofs import ProofContext, UnprovenModule, executable_copy, first_unproven, input_shapes

__all__ = [
    "LipschitzCertificates",
    "LipschitzCertifier",
    "lipschitz_certify",
    "margin_loss",
    "network_lipschitz",
]

SQRT2 = math.sqrt(2.0)


def network_lipschitz(model: nn.Module, input_shape: Sequence[int]) -> float:
    """An upper bound on the l2 Lipschitz constant of the whole network ``x -> logits`` (``inf`` if unknown).

    Today :func:`lsrs.lipschitz.proven_bound` (exact constants of the operators as computed, composed);
    this is the single call to change for a bound of the network as executed.
    """
    return proven_bound(model, tuple(int(s) for s in input_shape))


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

    **As executed.** The network runs on a frozen copy in ``dtype`` (float64 by default; float32 allowed) and
    ``f`` is the exact-arithmetic map of that copy's operators; ``L`` is their composed per-layer proofs
    (:mod:`lsrs.proofs`, ``executed``). What remains is the rounding of the forward pass: the same proofs give
    each layer's rounding terms in ``dtype``'s unit roundoff (Higham 2002: ``gamma_n`` for inner products,
    Eq. 3.11; Thm 24.2 for FFTs; one ``u`` per elementwise operation), and
    :meth:`lsrs.executed.ExecutedBound.forward_error` composes them into ``|g(x') - f(x')| <= a + b r`` for the
    computed logits ``g`` at every ``|x' - x| <= r``, with the activation norms measured at ``x``. Then for
    ``|d| < r``, ``(g_c - g_j)(x + d) >= M_g(x) - sqrt(2) (|g(x) - f(x)| + L r + |g(x + d) - f(x + d)|)
    >= M_g(x) - sqrt(2) (2a + (L + b) r)``, positive for ``r = (M_g / sqrt(2) - 2a) / (L + b)`` (less the
    rounding of this formula, a few ``u``). In float64 ``a`` is about 1e-14 of the activations, so radii lose
    nothing visible; in float32 about 2^29 times more.

    A layer without a proof (BatchNorm, a std division, a subclass overriding ``forward``, ...) is refused: the
    constructor raises ``ValueError`` naming the layer's path and class; so is a network whose rounding
    analysis leaves its first-order range (``L+ * sum rel > 1/3``).
    """

    def __init__(
        self, model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if dtype not in _UNIT_ROUNDOFF:
            raise ValueError(f"dtype must be torch.float64 or torch.float32 (the rounding analysis), got {dtype}")
        self.input_shape = tuple(int(s) for s in input_shape)
        param = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (
            param.device if param is not None else torch.device("cpu"))
        self.dtype = dtype
        unproven = first_unproven(model)  # before copying: some unproven modules cannot be copied
        if unproven is not None:
            raise unproven.within("", _ADVICE)
        # a private eval-mode copy (its own caches, every Cayley convolution caching: lsrs.proofs.executable_copy),
        # checked again after copying (a __deepcopy__ can add hooks or call paths)
        try:
            self.model = executable_copy(model, widen=False, verify=True).to(device=self.device, dtype=dtype)
        except UnprovenModule as err:
            raise err.within("", _ADVICE) from None
        self._root = self.model  # proven as its class: a Split as classifier o encoder (Split.lipschitz_proof)
        self._proven_for: tuple | None = None
        self._prove()

    def _prove(self) -> None:
        """Prove ``self.model`` as it is now (``lipschitz``, ``bound``, ``source``) and remember the key of what
        was proven (:func:`lsrs.digest.state_key`): :meth:`forward` proves again whenever the key changes."""
        shapes = input_shapes(self._root, torch.zeros(1, *self.input_shape, dtype=self.dtype, device=self.device))
        ctx = ProofContext(shapes, u=_UNIT_ROUNDOFF[self.dtype])
        try:
            proof = ctx.prove(self._root, "")
        except UnprovenModule as err:
            raise err.within("", _ADVICE) from None
        bound = ExecutedBound(proof.executed, proof.expansion, proof.terms, user_proof=bool(ctx.user_proofs))
        rho = bound.lipschitz_plus * bound.rel_total
        if not rho <= 1.0 / 3.0:
            raise ValueError(f"rounding analysis out of its first-order range in {self.dtype} (L+ * relative error "
                             f"{rho:.2e} > 1/3): certify in torch.float64")
        self.lipschitz, self.bound, self.source = proof.executed, bound, bound.source
        self._proven_for = state_key(self._root)

    def current_bound(self) -> ExecutedBound:
        """The bound of ``self.model`` as it is now: proven again (or refused) if anything that determines what it
        computes changed since the last proof (tensor contents, attributes, hooks, code)."""
        if state_key(self._root) != self._proven_for:
            self._prove()
        return self.bound

    def rounding_bound(self, norms: dict, radius: Tensor) -> Tensor:
        """A bound ``delta`` per image on ``||g(x') - f(x')||`` (computed minus exact logits) for every
        ``||x' - x|| <= radius``, from the activation norms ``norms`` of :meth:`forward` at ``x``
        (:meth:`lsrs.executed.ExecutedBound.forward_error`: the per-layer proofs' rounding terms)."""
        a, b = self.bound.forward_error(norms)
        return a + b * radius

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        """Logits of the batch ``x`` as executed, and per image the norms the rounding terms track (each
        module's input, a residual branch's output; the largest over calls), in float64, rounded up."""
        refuse_active_modes()
        check_image(x, None)
        terms = self.current_bound().terms
        norms: dict = {}
        inputs = {m for t in terms for m in t.tracked if not isinstance(m, Output)}
        outputs = {m.module: m for t in terms for m in t.tracked if isinstance(m, Output)}

        def record(key: object, t: Tensor) -> None:
            flat = t.flatten(1)
            n = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float64) * (1.0 + gamma(flat.shape[1] + 2))
            norms[key] = torch.maximum(norms[key], n) if key in norms else n

        handles = [m.register_forward_pre_hook(lambda mod, args: record(mod, args[0])) for m in inputs]
        handles += [m.register_forward_hook(lambda mod, args, out: record(outputs[mod], out)) for m in outputs]
        tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            # cuDNN may pick FFT / Winograd convolutions and TF32 products, outside the proofs' error analysis
            torch.backends.cuda.matmul.allow_tf32 = False
            # the caller's autocast would run float32 products in bfloat16 / float16
            with torch.backends.cudnn.flags(enabled=False), torch.autocast(self.device.type, enabled=False):
                # a copy: the caller's tensor is never written, even by a network starting with an in-place op
                logits = self._root(x.detach().to(device=self.device, dtype=self.dtype, copy=True))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            for h in handles:
                h.remove()
        return logits, norms

    @torch.no_grad()
    def certify(self, x: Tensor) -> LipschitzCertificates:
        """Prediction, radius and margin of every image of ``x`` (a batch ``B x C x H x W``, or one image)."""
        check_image(x, None)  # a plain float tensor: a subclass's __torch_function__ could change every operation
        if x.dim() == len(self.input_shape):
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.input_shape:  # the proofs (conv norms, pool counts) hold for one size
            raise ValueError(f"input shape {tuple(x.shape[1:])} is not the shape {self.input_shape} that L was "
                             "proven for: build a LipschitzCertifier for this input shape")
        logits, norms = self.forward(x)
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"expected logits of shape (batch, classes >= 2), got {tuple(logits.shape)}")
        prediction = logits.argmax(1)
        wide = logits.double()
        top = wide.gather(1, prediction[:, None]).squeeze(1)
        margin = top - wide.scatter(1, prediction[:, None], -math.inf).amax(1)
        a, b = self.bound.forward_error(norms)
        low = margin * (1.0 - 2 * U64) / SQRT2  # the exact difference of the two logits, rounded down
        kept = low - 2.0 * a
        kept = kept - 4 * U64 * (low + 2.0 * a)  # the rounding of the subtraction
        scale = self.lipschitz + b
        radius = torch.where(kept > 0, kept / scale * (1.0 - 1e-12), torch.zeros_like(kept))  # ties certify 0
        return LipschitzCertificates(prediction, radius, margin.to(logits.dtype), self.lipschitz)


_UNIT_ROUNDOFF = {torch.float64: U64, torch.float32: U32}
_ADVICE = "cannot certify by Lipschitz margin: every layer must have a proof, e.g. resnet18(..., fors=18)"


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
