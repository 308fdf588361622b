"""Hand-written backward passes for the two hottest operations of an orthogonal encoder in training.

Both compute exactly what their plain PyTorch forms compute; only the backward pass is laid out for the CPU:

* :func:`frequency_product` - the per-frequency complex product ``x_f @ Q_f^T`` of a Cayley convolution.
  Autograd's own ``bmm`` backward multiplies by the conjugate-transposed *views* of the operands, and the
  gradient arriving from the inverse FFT is a permuted view; on a CPU that sent ``bmm`` down a loop over
  the frequencies (one ``select`` and ``clone`` each), a large share of the layer's backward pass.
* :func:`max_min` - GroupSort of size 2. Autograd's ``maximum`` / ``minimum`` backward builds two masks and
  splits ties; here one mask ``a >= b`` routes each output's gradient to the input it came from. Where
  ``a == b`` either routing is a valid (sub)gradient of the same function; the forward values are identical.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _FrequencyProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor) -> Tensor:
        ctx.save_for_backward(x, q)
        return torch.bmm(x, q)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, q = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_q = None
        if ctx.needs_input_grad[0]:  # d/dx of sum(conj(g) * (x q)) is g q^H (Wirtinger, as autograd's bmm)
            grad_x = torch.bmm(grad, q.mH.resolve_conj().contiguous())
        if ctx.needs_input_grad[1]:
            grad_q = torch.bmm(x.mH.resolve_conj().contiguous(), grad)
        return grad_x, grad_q


def frequency_product(x: Tensor, q: Tensor) -> Tensor:
    """``torch.bmm(x, q)`` for ``(F, b, c_in) @ (F, c_in, c_out)``, with a backward pass on contiguous operands."""
    if not (torch.is_grad_enabled() and (x.requires_grad or q.requires_grad)):
        return torch.bmm(x, q)  # certification: no backward pass, nothing for the function to add
    return _FrequencyProduct.apply(x, q)


class _MaxMin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        keep = a >= b
        ctx.save_for_backward(keep)
        return torch.cat([torch.where(keep, a, b), torch.where(keep, b, a)], dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        (keep,) = ctx.saved_tensors
        g_max, g_min = grad.chunk(2, dim=1)
        return torch.where(keep, g_max, g_min), torch.where(keep, g_min, g_max)


def max_min(a: Tensor, b: Tensor) -> Tensor:
    """``cat([maximum(a, b), minimum(a, b)], dim=1)``, with a one-mask backward pass."""
    if not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
    return _MaxMin.apply(a, b)


__all__ = ["frequency_product", "max_min"]
