"""1-Lipschitz building blocks of the orthogonal encoder (paper Section 2.2).

* :class:`CayleyConv2d` - orthogonal / semi-orthogonal *circular* convolution parametrised by the Cayley
  transform of a skew-Hermitian matrix per frequency (Trockman & Kolter 2021; paper Eq. 10-11). With
  ``stride=s`` the input is first pixel-unshuffled (a permutation of coordinates, an isometry).
* :class:`MaxMin` - GroupSort with groups of two (Anil et al. 2019): a coordinate permutation at every
  point, hence 1-Lipschitz and gradient-norm preserving.
* :class:`ChannelPad` - zero-padding of channels (an isometry).
* :class:`MeanShift` - subtraction of a per-channel mean (a translation, Lipschitz 1).
* :class:`ConvexResidual` - ``alpha * main(x) + (1 - alpha) * skip(x)`` with ``alpha = sigmoid(theta)``;
  Lipschitz at most ``alpha * L_main + (1 - alpha) * L_skip`` (paper Section 4, Figure 2b).

Every atom reports an estimate through ``lipschitz_bound(input_shape)`` (for reports); the certificates use
the per-layer proofs of :mod:`lsrs.proofs`, composed by one walker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsrs.autograd_ops import frequency_product, max_min
from lsrs.inverse import block_inverse
from lsrs.threads import map_chunks, on_every_core

__all__ = [
    "CayleyConv2d",
    "ChannelPad",
    "ConvexResidual",
    "MaxMin",
    "MeanShift",
    "cayley",
    "circular_kernel",
    "cayley_operator",
    "init_scaled_weight",
    "kernel_spectrum",
    "tap_phases",
    "scaled_weight",
]


def init_scaled_weight(weight: nn.Parameter, scale: nn.Parameter, bias: nn.Parameter | None) -> None:
    """Weight normalisation with a learnable ``scale`` (the layer applies ``weight * scale / |weight|``):
    ``nn.Conv2d``'s / ``nn.Linear``'s default init for the direction, ``scale`` at the weight's norm, bias 0."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    with torch.no_grad():
        scale.copy_(weight.norm())
        if bias is not None:
            bias.zero_()


def scaled_weight(weight: Tensor, scale: Tensor) -> Tensor:
    """``weight * scale / |weight|``: the matrix the Cayley transform receives (see :func:`init_scaled_weight`)."""
    return weight * (scale / weight.norm())


def cayley(w: Tensor) -> Tensor:
    """Semi-orthogonal Cayley transform of a batch of ``p x q`` (real or complex) matrices.

    For ``p >= q`` write ``w = [U; V]`` with ``U`` the top ``q x q`` block. ``w`` stands for the
    skew-Hermitian ``p x p`` matrix ``B = [[U - U^H, -V^H], [V, 0]]``; the first ``q`` columns of its
    Cayley transform ``(I + B)^-1 (I - B)`` (paper Eq. 10) solve two block equations whose solution is

        A = U - U^H + V^H V,   Q = [ 2 (I + A)^-1 - I ;  -2 V (I + A)^-1 ],

    so only a ``q x q`` system is inverted. ``I + A`` is always invertible because
    ``Re x^H (I + A) x = |x|^2 + |V x|^2 > 0``. ``Q`` has orthonormal columns (an isometry); for ``p < q``
    the transform is applied to ``w^H`` and transposed back, giving orthonormal rows.
    """
    p, q = w.shape[-2:]
    if p < q:
        return cayley(w.mH).mH
    u, v = w[..., :q, :], w[..., q:, :]
    m = u - u.mH
    if p > q:
        m = m + v.mH @ v
    m = m.reshape(-1, q, q)
    m.diagonal(dim1=-2, dim2=-1).add_(1.0)  # I + A, in place (a fresh tensor)
    # one slice of the batch per core on one intra-op thread each (lsrs.threads); without autograd (the cached
    # operators) by block elimination, mostly matrix products (lsrs.inverse); training keeps LAPACK's inverse
    grad = torch.is_grad_enabled() and m.requires_grad
    inv = on_every_core(torch.linalg.inv if grad else block_inverse, m).reshape(*w.shape[:-2], q, q)
    del m
    lower = -2.0 * (v @ inv) if p > q else None
    if grad:
        top = 2.0 * inv - torch.eye(q, dtype=w.dtype, device=w.device)
    else:  # no autograd: 2 inv - I in place, sparing one operator-sized allocation
        top = inv.mul_(2.0)
        top.diagonal(dim1=-2, dim2=-1).sub_(1.0)
    return top if lower is None else torch.cat([top, lower], dim=-2)


def circular_kernel(weight: Tensor, size: tuple[int, int], center: bool = True) -> Tensor:
    """Place a ``(..., k_h, k_w)`` kernel on an ``h x w`` torus (taps that wrap around are summed).

    With ``center`` the middle tap lands on index (0, 0), so the circular convolution is aligned with the
    input (a circular shift otherwise, which changes no singular value). Works for kernels larger than the
    grid too, which is what circular convolution at a small spatial size means.
    """
    h, w = size
    kh, kw = weight.shape[-2:]
    ch, cw = (kh // 2, kw // 2) if center else (0, 0)
    rows = (torch.arange(kh, device=weight.device) - ch) % h
    cols = (torch.arange(kw, device=weight.device) - cw) % w
    index = (rows[:, None] * w + cols[None, :]).reshape(-1)
    flat = weight.reshape(*weight.shape[:-2], kh * kw)
    out = torch.zeros(*weight.shape[:-2], h * w, dtype=weight.dtype, device=weight.device)
    out = out.index_add(-1, index, flat)
    return out.reshape(*weight.shape[:-2], h, w)


def tap_phases(kernel: tuple[int, int], size: tuple[int, int], dtype: torch.dtype = torch.complex64,
               device: torch.device | str | None = None) -> Tensor:
    """The phase factors ``exp(-2 pi i (a u / h + b v / w))`` of the taps of a centred ``k_h x k_w`` kernel on
    the ``h x w`` torus at the one-sided frequencies ``(u, v)``: ``(k_h k_w, h (w//2+1))``, computed in float64
    from exact integer products (taps at the same torus position get the same phase, so they simply add)."""
    h, w = size
    kh, kw = kernel
    rows = (torch.arange(kh, device=device) - kh // 2) % h
    cols = (torch.arange(kw, device=device) - kw // 2) % w
    fu, fv = torch.arange(h, device=device), torch.arange(w // 2 + 1, device=device)
    turn_r = (rows[:, None] * fu[None, :] % h).double() / h  # (kh, h), in turns
    turn_c = (cols[:, None] * fv[None, :] % w).double() / w  # (kw, w//2+1)
    turns = turn_r[:, None, :, None] + turn_c[None, :, None, :]  # (kh, kw, h, w//2+1)
    phase = torch.polar(torch.ones_like(turns), -2.0 * math.pi * turns)
    return phase.reshape(kh * kw, -1).to(dtype)


def _spectral_dtype(weight: Tensor) -> torch.dtype:
    return torch.complex64 if weight.dtype != torch.float64 else torch.complex128


def kernel_spectrum(weight: Tensor, size: tuple[int, int]) -> Tensor:
    """``rfft2`` of the centred circular kernel (:func:`circular_kernel`), laid out ``(h, w//2+1, c_out, c_in)``.

    A ``k x k`` kernel has ``k^2`` taps, so the spectrum is one ``(h(w//2+1), k^2) @ (k^2, c_out c_in)``
    product with the taps' phase factors (:func:`tap_phases`): the layout :func:`cayley` needs, without the
    ``c_out c_in`` FFTs of the ``h x w`` torus and the copies that transpose their result.
    """
    h, w = size
    dtype = _spectral_dtype(weight)
    phase = tap_phases(weight.shape[-2:], size, dtype, weight.device)
    taps = weight.reshape(-1, phase.shape[0]).to(dtype)  # (c_out c_in, k^2)
    spectrum = phase.mT @ taps.mT  # (h (w//2+1), c_out c_in)
    return spectrum.reshape(h, w // 2 + 1, *weight.shape[:2])


def cayley_operator(weight: Tensor, size: tuple[int, int], chunk: int | None = None) -> Tensor:
    """The cached operator of a Cayley convolution, without autograd: ``Q(u, v)^T`` for every one-sided frequency,
    ``(h (w//2+1), c_in, c_out)``, built ``chunk`` frequencies at a time (by default as many as make 2^20
    matrix entries: 40 for 160 x 160 matrices, 5 for 640 x 320).

    ``cayley(kernel_spectrum(weight, size))`` transposed, up to the rounding of the spectrum product (whose
    blocking depends on the number of rows), but every temporary is chunk-sized and reused: built whole, an
    operator of a WRN-34 at 224x224 (hundreds of MB) leaves several times its size of temporaries behind it,
    which glibc maps afresh for every large block, so the process spends its time clearing new pages. The
    chunks run on all cores (:func:`lsrs.threads.map_chunks`). Small chunks keep each worker thread's
    temporaries inside one glibc heap (64 MB), which is then reused instead of unmapped, so only the operators
    themselves are page-faulted (costs: docs/data/benchmarks.yaml).
    """
    c_out, c_in = weight.shape[:2]
    chunk = chunk or max(1, 2**20 // (c_out * c_in))
    dtype = _spectral_dtype(weight)
    phase = tap_phases(weight.shape[-2:], size, dtype, weight.device)
    taps = weight.reshape(-1, phase.shape[0]).to(dtype).mT  # (k^2, c_out c_in)
    out = torch.empty(phase.shape[1], c_in, c_out, dtype=dtype, device=weight.device)

    def build(lo: int, hi: int) -> None:
        out[lo:hi] = cayley((phase[:, lo:hi].mT @ taps).reshape(-1, c_out, c_in)).mT

    map_chunks(build, phase.shape[1], chunk, weight.device)
    return out


class CayleyConv2d(nn.Module):
    """Orthogonal circular convolution via a per-frequency Cayley transform (Trockman & Kolter 2021).

    The kernel ``weight`` (``out_channels x in_channels*stride^2 x k x k``, weight-normalised by a
    learnable ``scale``) is placed on the torus of the input's spatial size and Fourier transformed;
    at every frequency the ``c_out x c_in`` matrix is mapped by :func:`cayley` to a (semi-)orthogonal
    ``Q(u, v)``, and the output is ``irfft2(Q(u, v) rfft2(x)(u, v)) + bias`` (paper Eq. 11). Because the
    kernel is real, ``Q(-u, -v) = conj(Q(u, v))`` and the half spectrum of ``rfft2`` suffices.

    * ``c_out == c_in``: orthogonal (every singular value is 1).
    * ``c_out > c_in``: orthonormal columns per frequency, an isometry into a larger space.
    * ``c_out < c_in``: orthonormal rows per frequency, Lipschitz 1.

    ``stride=s`` first applies ``pixel_unshuffle(s)`` (a permutation of coordinates), so the layer maps
    ``C x H x W`` to ``c_out x H/s x W/s`` with the same singular values as the conv on ``s^2 C`` channels.
    A 1x1 kernel has a frequency-independent ``Q`` and runs as a plain 1x1 convolution.

    In ``eval()`` the transformed operator is computed once per spatial size and cached (the cache is
    dropped by ``train()`` (``eval()`` keeps it) and whenever a parameter is modified or moved); the uncached, differentiable
    path is used whenever autograd needs parameter gradients.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride) < 1:
            raise ValueError("channels, kernel_size and stride must be >= 1")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels * stride * stride, kernel_size, kernel_size))
        self.scale = nn.Parameter(torch.empty(()))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.cache = True
        self._cache: dict[tuple[int, int], Tensor] = {}
        self._cache64: dict[tuple[int, int], tuple[tuple, Tensor]] = {}
        self._cache_key: tuple | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """:func:`init_scaled_weight`; the cached operators are dropped."""
        init_scaled_weight(self.weight, self.scale, self.bias)
        self._cache, self._cache64 = {}, {}

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"bias={self.bias is not None}"
        )

    # ------------------------------------------------------------------ operator
    def _effective_weight(self) -> Tensor:
        return scaled_weight(self.weight, self.scale)

    def fourier_matrices(self, size: tuple[int, int], onesided: bool = True) -> Tensor:
        """The per-frequency (semi-)orthogonal matrices ``Q``: ``(h, w or w//2+1, c_out, c_in*s^2)`` complex.

        ``size`` is the spatial size at which the convolution runs (after the unshuffle). The one-sided spectrum
        is :func:`kernel_spectrum`'s k^2 tap products, cheaper in training than an FFT of the zero-padded kernel.
        """
        weight = self._effective_weight()
        if onesided:
            return cayley(kernel_spectrum(weight, size))
        return cayley(torch.fft.fft2(circular_kernel(weight, size)).permute(2, 3, 0, 1))

    def matrix(self) -> Tensor:
        """The ``c_out x c_in*s^2`` real (semi-)orthogonal matrix of a 1x1 kernel."""
        if self.kernel_size != 1:
            raise ValueError("matrix() is defined for 1x1 kernels only")
        return cayley(self._effective_weight()[:, :, 0, 0])

    def _operator(self, size: tuple[int, int]) -> Tensor:
        """What ``forward`` multiplies with: the 1x1 matrix, or the transposed per-frequency matrices
        ``Q(u, v)^T`` stacked as ``(F, c_in*s^2, c_out)`` complex."""
        if self.kernel_size == 1:
            return self.matrix()
        weight = self._effective_weight()
        if not (torch.is_grad_enabled() and weight.requires_grad):
            return cayley_operator(weight, size)
        q = self.fourier_matrices(size)
        return q.reshape(-1, *q.shape[-2:]).mT.contiguous()

    def _param_key(self) -> tuple:
        return tuple(
            (p.data_ptr(), p._version, p.device, p.dtype) for p in (self.weight, self.scale)
        )

    def _cached_operator(self, size: tuple[int, int]) -> Tensor:
        key = self._param_key()
        if key != self._cache_key:
            self._cache, self._cache64, self._cache_key = {}, {}, key
        op = self._cache.get(size)
        if op is None:
            # A plain (non-inference) constant, usable both under inference_mode and by autograd w.r.t. x.
            with torch.inference_mode(False), torch.no_grad():
                op = self._operator(size)
            self._cache[size] = op
        return op

    def _use_cache(self) -> bool:
        if self.training or not self.cache:
            return False
        needs_param_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        return not needs_param_grad

    def train(self, mode: bool = True) -> CayleyConv2d:
        if mode:  # training changes the parameters (the keys would miss anyway): free the operators now;
            self._cache, self._cache64, self._cache_key = {}, {}, None  # eval() keeps them, e.g. audit's
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        self._cache, self._cache64, self._cache_key = {}, {}, None
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ forward
    def _widened(self, op: Tensor, size: tuple[int, int]) -> Tensor:
        """The cached operator upcast exactly to float64 / complex128, itself cached until the operator changes
        (its storage or version: an in-place edit of the cached operator is seen).

        A spectral ``(F, c_in, c_out)`` operator is returned as the transposed view of a contiguous
        ``(F, c_out, c_in)`` copy (the same entries): the single-image float64 forward then multiplies each
        frequency's matrix by a column, reading every row once in order (:meth:`_fourier_conv`)."""
        key = (op.data_ptr(), op._version)
        hit = self._cache64.get(size)
        if hit is None or hit[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a plain constant, as in _cached_operator
                wide = op.to(torch.complex128 if op.is_complex() else torch.float64)
                hit = (key, wide.mT.contiguous().mT if wide.dim() == 3 else wide)
            self._cache64[size] = hit
        return hit[1]

    def executed_operator(self, size: tuple[int, int]) -> Tensor:
        """The operator ``forward`` applies in ``eval()`` at conv size ``size``: the cached one (as computed in
        the parameters' dtype), which :mod:`lsrs.executed` bounds."""
        return self._cached_operator(size) if self.cache else self._operator(size)

    def forward(self, x: Tensor) -> Tensor:
        dtype = self.weight.dtype
        # The as-executed float64 path (lsrs.executed): a float64 input meets the cached lower-precision
        # operator upcast exactly, so the bounded operator is the one applied, in float64 arithmetic.
        # (also with cache=False: the fresh operator is upcast, so the float64 path never silently drops)
        frozen = not self.training and not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))
        widen = x.dtype == torch.float64 and dtype != torch.float64 and frozen
        if x.dtype != dtype and not widen:
            x = x.to(dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.stride > 1:
                x = F.pixel_unshuffle(x, self.stride)
            size = (int(x.shape[-2]), int(x.shape[-1]))
            op = self._cached_operator(size) if self._use_cache() else self._operator(size)
            bias = self.bias
            if widen:
                op = self._widened(op, size) if self._use_cache() else op.to(
                    torch.complex128 if op.is_complex() else torch.float64)
                bias = None if bias is None else bias.double()
            if self.kernel_size == 1:
                return F.conv2d(x, op[:, :, None, None], bias)
            return self._fourier_conv(x, op, size, bias)

    def _fourier_conv(self, x: Tensor, q_t: Tensor, size: tuple[int, int], bias: Tensor | None) -> Tensor:
        """Per-frequency products as one complex batched matmul: ``(F, b, c_in) @ (F, c_in, c_out)``.

        Both operands are made contiguous: a strided batch operand (e.g. ``b = 1``) sends ``bmm`` down a
        per-frequency loop, the slow path for the single-image encoder of LS-RS. One image with an operator
        stored as ``(F, c_out, c_in)`` (the float64 path, :meth:`_widened`) is multiplied as matrix times column
        instead: the same inner products (``c_in`` terms each, so the same rounding bound), about half the time
        of the row-times-matrix product on CPU, where both read the whole operator once.
        """
        b = x.shape[0]
        h, w = size
        m = w // 2 + 1
        xf = torch.fft.rfft2(x).permute(2, 3, 0, 1).reshape(h * m, b, -1).contiguous()
        if b == 1 and q_t.mT.is_contiguous():  # the float64 path (_widened): (F, c_out, c_in) @ (F, c_in, 1)
            yf = torch.bmm(q_t.mT, xf.mT).mT
        else:
            yf = frequency_product(xf, q_t)
        yf = yf.reshape(h, m, b, self.out_channels).permute(2, 3, 0, 1).contiguous()
        y = torch.fft.irfft2(yf, s=(h, w))
        if bias is not None:
            y = y + bias[:, None, None]
        return y

    # ------------------------------------------------------------------ certificates
    def conv_size(self, input_shape: Sequence[int]) -> tuple[int, int]:
        """Spatial size at which the convolution runs, for an input of shape ``(..., H, W)``."""
        h, w = int(input_shape[-2]), int(input_shape[-1])
        if h % self.stride or w % self.stride:
            raise ValueError(f"input size {h}x{w} is not divisible by stride {self.stride}")
        return h // self.stride, w // self.stride

    @torch.no_grad()
    def singular_values(self, input_shape: Sequence[int]) -> Tensor:
        """All singular values of the layer's linear part on inputs of shape ``(..., H, W)``, descending.

        The unshuffle is a permutation, so these are the singular values of the per-frequency matrices
        over the full ``h x w`` spectrum (Sedghi et al. 2019), ``min(c_out, c_in*s^2) * h * w`` of them.
        """
        size = self.conv_size(input_shape)
        if self.kernel_size == 1:
            s = torch.linalg.svdvals(self.matrix())
            return s.repeat(size[0] * size[1]).sort(descending=True).values
        s = torch.linalg.svdvals(self.fourier_matrices(size, onesided=False))
        return s.reshape(-1).sort(descending=True).values

    @torch.no_grad()
    def spatial_kernel(self, input_shape: Sequence[int]) -> Tensor:
        """The equivalent real circular-convolution kernel ``(c_out, c_in*s^2, h, w)`` at the conv's size."""
        size = self.conv_size(input_shape)
        if self.kernel_size == 1:
            w = self.weight
            k = torch.zeros(self.out_channels, w.shape[1], *size, dtype=w.dtype, device=w.device)
            k[:, :, 0, 0] = self.matrix()
            return k
        q = self.fourier_matrices(size, onesided=False).permute(2, 3, 0, 1)
        return torch.fft.ifft2(q).real

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        """Exact l2 Lipschitz constant at this input size: the largest singular value (bias is free)."""
        return float(self.singular_values(input_shape)[0])


class MaxMin(nn.Module):
    """GroupSort of size 2 over channel halves: ``[max(a, b), min(a, b)]`` for ``x = [a, b]``.

    At every input it permutes coordinates, so it is 1-Lipschitz and preserves gradient norms.
    """

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c % 2:
            raise ValueError(f"MaxMin needs an even number of channels, got {c}")
        a, b = x[:, : c // 2], x[:, c // 2 :]
        return max_min(a, b)

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        return 1.0


class ChannelPad(nn.Module):
    """Append zero channels up to ``out_channels``: an isometry."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        extra = self.out_channels - x.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {x.shape[1]} channels down to {self.out_channels}")
        return F.pad(x, (0, 0, 0, 0, 0, extra))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}"

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        return 1.0


class MeanShift(nn.Module):
    """Subtract a per-channel mean: a translation, so Lipschitz 1. (Dividing by a std would not be free.)"""

    def __init__(self, mean: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x - self.mean.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={[round(float(m), 4) for m in self.mean.flatten()]}"

    def lipschitz_bound(self, input_shape: Sequence[int]) -> float:
        return 1.0


class ConvexResidual(nn.Module):
    """``alpha * main(x) + (1 - alpha) * skip(x)`` with learnable ``alpha = sigmoid(theta)`` in [0, 1].

    If ``main`` and ``skip`` are 1-Lipschitz so is the combination (triangle inequality); the general
    bound is ``alpha * L_main + (1 - alpha) * L_skip``. ``skip=None`` is the identity.
    """

    def __init__(self, main: nn.Module, skip: nn.Module | None = None, theta: float = 0.0) -> None:
        super().__init__()
        self.main = main
        self.skip = skip if skip is not None else nn.Identity()
        self.theta = nn.Parameter(torch.tensor(float(theta)))

    @property
    def alpha(self) -> Tensor:
        return torch.sigmoid(self.theta)

    def forward(self, x: Tensor) -> Tensor:
        a = self.alpha.to(x.dtype)
        return a * self.main(x) + (1 - a) * self.skip(x)
