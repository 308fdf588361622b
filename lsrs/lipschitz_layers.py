"""The two atoms that close a fully orthogonal network: a 1-Lipschitz global pool and an orthogonal head.

With these after the orthogonal stem and blocks of :mod:`lsrs.models`, every layer of the network is
1-Lipschitz in l2, so the logits are 1-Lipschitz in the input and one forward pass certifies a radius
(Tsuzuku et al. 2018; Trockman & Kolter 2021; :mod:`lsrs.margin`).

* :class:`NormPool` - global average pooling scaled by ``sqrt(H * W)``: Lipschitz exactly 1.
* :class:`OrthogonalLinear` - ``Q x + b`` with ``Q`` the semi-orthogonal Cayley transform of a weight
  (orthonormal rows for ``out <= in``): Lipschitz exactly 1, its bound read off its singular values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsrs.layers import cayley, init_scaled_weight, scaled_weight

__all__ = ["NormPool", "OrthogonalLinear"]


class NormPool(nn.Module):
    """``(B, C, H, W) -> (B, C)``: ``y_c = sum_{i} x_{c,i} / sqrt(m)`` over the ``m = H * W`` positions.

    Proof of Lipschitz 1: the map is linear, and per channel Cauchy-Schwarz gives
    ``|sum_i x_{c,i}| <= sqrt(m) * ||x_c||``, so ``||y||^2 = sum_c (sum_i x_{c,i})^2 / m <= ||x||^2``,
    with equality for spatially constant inputs. (Plain average pooling is ``y / sqrt(m)``: norm
    ``1 / sqrt(m)``, which would only shrink the margins that certify.)
    """

    def forward(self, x: Tensor) -> Tensor:
        m = x.shape[-2] * x.shape[-1]
        return x.sum(dim=(-2, -1)) / math.sqrt(m)

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        return 1.0


class OrthogonalLinear(nn.Module):
    """``y = Q x + b`` with ``Q = cayley(W * scale / ||W||)`` (:func:`lsrs.layers.cayley`, paper Eq. 10).

    ``Q`` (``out_features x in_features``) has orthonormal rows when ``out <= in`` (Lipschitz 1, the
    logits are an orthogonal projection of the features) and orthonormal columns otherwise (an isometry).
    The weight is normalised by a learnable ``scale`` as in :class:`lsrs.layers.CayleyConv2d`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        if min(in_features, out_features) < 1:
            raise ValueError("in_features and out_features must be >= 1")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.scale = nn.Parameter(torch.empty(()))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._cache: dict[str, tuple[tuple, Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_scaled_weight(self.weight, self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def matrix(self) -> Tensor:
        """The (semi-)orthogonal ``out x in`` matrix the forward pass multiplies with."""
        return cayley(scaled_weight(self.weight, self.scale))

    def _frozen(self) -> bool:
        return not self.training and not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def executed_matrix(self) -> Tensor:
        """The ``Q`` that ``forward`` applies in ``eval()`` without parameter gradients: computed once in the
        parameters' dtype and cached until a parameter changes (storage or version), as
        :class:`lsrs.layers.CayleyConv2d` caches its operator; :mod:`lsrs.proofs` bounds exactly this matrix."""
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in (self.weight, self.scale))
        hit = self._cache.get("q")
        if hit is None or hit[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                hit = (key, self.matrix())
            self._cache = {"q": hit}
        return hit[1]

    def train(self, mode: bool = True) -> OrthogonalLinear:
        if mode:
            self._cache = {}
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if not self._frozen():
            return F.linear(x.to(self.weight.dtype), self.matrix(), self.bias)
        q, bias = self.executed_matrix(), self.bias
        if x.dtype == torch.float64 and q.dtype != torch.float64:  # the as-executed float64 path
            return F.linear(x, q.double(), None if bias is None else bias.double())
        return F.linear(x.to(q.dtype), q, bias)

    @torch.no_grad()
    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        """Largest singular value of the matrix as computed (in its dtype), evaluated in float64 (an estimate for
        reports; the certificates use the rigorous bound of :mod:`lsrs.proofs`)."""
        return float(torch.linalg.matrix_norm(self.matrix().double(), ord=2))
