"""A second adversarial pass over lsrs.proofs: each way found to get a bound below the truth with library
modules, against an exact oracle (float64 autograd Jacobian + SVD at a point: a lower bound on the true L)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lsrs.layers import ConvexResidual, MeanShift
from lsrs.lipschitz import proven_bound
from lsrs.lipschitz_layers import NormPool
from lsrs.margin import LipschitzCertifier
from lsrs.proofs import find_proof


def _jacobian_norm(module: nn.Module, shape: tuple[int, ...], seed: int = 0) -> float:
    """Exact spectral norm of the Jacobian at a random point (float64): a lower bound on the Lipschitz constant."""
    module = module.double().eval()
    x = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    jac = torch.autograd.functional.jacobian(lambda t: module(t), x)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), ord=2))


def _sound_or_refused(module: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    bound = proven_bound(module, shape)
    true = _jacobian_norm(module, shape)
    assert bound >= true * (1 - 1e-12), f"proven {bound} below the exact Jacobian norm {true}"
    return bound, true


def test_margin_certifier_refuses_an_input_of_another_size_than_the_proof():
    """L is proven for ``input_shape``; a convolution's norm depends on the size (all-ones 3x3 kernel, zero
    padding: 1.41 for the network at 1x1, 11.7 at 8x8). Certifying an 8x8 image with the 1x1 proof gave radius
    60.5 where the truth is at most 121 / (sqrt 2 * 11.7) = 7.3; it is refused now."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    net = nn.Sequential(conv, NormPool(), nn.Flatten(), head).eval()
    certifier = LipschitzCertifier(net, (1, 1, 1))
    assert proven_bound(net, (1, 8, 8)) > 8 * certifier.lipschitz
    with pytest.raises(ValueError, match=r"input shape \(1, 8, 8\).*\(1, 1, 1\)"):
        certifier.certify(torch.ones(1, 1, 8, 8))
    assert certifier.certify(torch.ones(3, 1, 1, 1)).radius.shape == (3,)  # its own size still certifies


class _Triples(nn.Module):
    """A mixin placed *after* a proven class in the MRO: its ``_call_impl`` still runs (hooks included)."""

    def _call_impl(self, *args, **kwargs):
        return 3 * nn.Module._call_impl(self, *args, **kwargs)

    __call__ = _call_impl


class _TripledIdentity(nn.Identity, _Triples):
    pass


def test_a_mixin_after_the_proven_class_in_the_mro_is_refused():
    """``class X(nn.Identity, Mixin)``: the walk stopped at nn.Identity (proof 1) though the mixin's ``__call__``
    triples the output (exact Jacobian 3.0)."""
    net = nn.Sequential(_TripledIdentity())
    assert _jacobian_norm(net, (4,)) == pytest.approx(3.0)
    assert find_proof(_TripledIdentity()) is None
    assert proven_bound(net, (4,)) == math.inf


def test_a_convex_residual_whose_branches_broadcast_is_refused():
    """``a x + (1 - a) (w . x) 1``: the skip's (B, 1) output is broadcast to 4 columns, which multiplies its
    Lipschitz constant by 2 (sqrt 4): exact 2.0 at a = sigmoid(-6) against the triangle bound's 1.0."""
    skip = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        skip.weight.fill_(0.5)  # |w| = 1
    block = ConvexResidual(nn.Identity(), skip, theta=-6.0)
    true = _jacobian_norm(block, (4,))
    assert true > 1.99
    assert proven_bound(block, (4,)) == math.inf
    matching = ConvexResidual(nn.Identity(), nn.Linear(4, 4), theta=-6.0)  # same shapes: still proven
    _sound_or_refused(matching, (4,))
    assert proven_bound(matching, (4,)) < math.inf


def test_a_mean_shift_that_broadcasts_channels_is_refused():
    """MeanShift with 3 means on a 1-channel input copies the channel 3 times: Lipschitz sqrt 3 (exact 1.732),
    not the translation's 1."""
    shift = MeanShift([0.1, 0.2, 0.3])
    assert _jacobian_norm(shift, (1, 2, 2)) == pytest.approx(math.sqrt(3))
    assert proven_bound(shift, (1, 2, 2)) == math.inf
    assert proven_bound(shift, (3, 2, 2)) == 1.0
    assert proven_bound(MeanShift([0.5]), (3, 2, 2)) == 1.0  # one mean for every channel: a translation


@pytest.mark.parametrize("divisor", [-1, -2])
def test_avg_pool_with_a_negative_divisor_override_is_refused(divisor):
    """A negative ``divisor_override`` makes every entry of the pooling matrix negative; Schur's test read the
    signed row and column sums' maxima (the smallest counts): 2.0 against the exact 4.0 (divisor -1)."""
    pool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, divisor_override=divisor)
    true = _jacobian_norm(pool, (1, 5, 5))
    assert true == pytest.approx(4.0 / abs(divisor))
    assert proven_bound(pool, (1, 5, 5)) == math.inf


@pytest.mark.parametrize("divisor", [1, 2, None])
def test_avg_pool_with_a_positive_divisor_or_ceil_mode_stays_sound(divisor):
    pool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False, divisor_override=divisor)
    _sound_or_refused(pool, (1, 5, 5))


class _Tripling(torch.Tensor):
    """A tensor subclass whose ``F.linear`` returns three times the product (deep-copyable, so it survives the
    certifier's private copy)."""

    def __deepcopy__(self, memo):
        with torch._C.DisableTorchFunctionSubclass():
            out = torch.Tensor.clone(self)
        return nn.Parameter(out.as_subclass(_Tripling), requires_grad=self.requires_grad)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        return out * 3 if func is torch.nn.functional.linear else out


def _rigged_linear() -> nn.Sequential:
    lin = nn.Linear(2, 2, bias=False, dtype=torch.float64)
    lin.weight = nn.Parameter(torch.eye(2, dtype=torch.float64).as_subclass(_Tripling))
    return nn.Sequential(lin).eval()


def test_a_parameter_that_is_a_tensor_subclass_is_refused():
    """The identity weight as a tensor subclass whose F.linear triples: the network computes 3 x (exact
    Jacobian 3.0) and was proven 1.0, so the margin certificate of [1, 0.5] was radius 1.06 (truth 0.35)."""
    net = _rigged_linear()
    with torch.no_grad():
        out = net(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert out.as_subclass(torch.Tensor).tolist() == [[3.0, 0.0]]
    assert proven_bound(net, (2,)) == math.inf
    with pytest.raises(ValueError, match=r"0 \(Linear\).*'weight' is a _Tripling"):
        LipschitzCertifier(net, (2,))


def test_the_margin_certifier_refuses_a_tensor_subclass_input():
    certifier = LipschitzCertifier(nn.Sequential(nn.Linear(2, 2)).eval(), (2,))
    with pytest.raises(ValueError, match="takes a torch.Tensor"):
        certifier.certify(torch.ones(1, 2).as_subclass(_Tripling))


def test_a_float32_certificate_under_autocast_runs_in_float32():
    """Under the caller's ``torch.autocast("cpu", bfloat16)`` the float32 pass ran its products in bfloat16:
    logits off by 2.6e-3 against an allowance of 2.4e-5 proven for u = 2^-24. The certifier turns autocast off."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    c32 = LipschitzCertifier(net, (16,), dtype=torch.float32)
    c64 = LipschitzCertifier(net, (16,))
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l32, norms = c32.forward(x)
    assert l32.dtype == torch.float32
    err = (l32.double() - c64.forward(x)[0]).norm(dim=1)
    assert (err <= c32.rounding_bound(norms, torch.zeros(8, dtype=torch.float64))).all()


class _TriplingMode(torch.overrides.TorchFunctionMode):
    """A torch-function mode the caller entered: every F.linear returns three times the product."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return out * 3 if func is torch.nn.functional.linear else out


def test_a_torch_function_mode_around_certification_is_refused():
    """Inside a mode that triples F.linear the network computes 3 W x (exact Jacobian 3.0 for W = I) while L was
    proven 1.0: the certificate of [1, 0.5] was radius 1.5 / sqrt 2 = 1.06 where 3 x changes class at 0.35.
    Proving and certifying refuse."""
    lin = nn.Linear(2, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    certifier = LipschitzCertifier(nn.Sequential(lin).eval(), (2,))
    with _TriplingMode():
        with pytest.raises(ValueError, match="_TriplingMode"):
            certifier.certify(torch.tensor([[1.0, 0.5]]))
        with pytest.raises(ValueError, match="_TriplingMode"):
            LipschitzCertifier(nn.Sequential(lin).eval(), (2,))
    with torch.device("cpu"):  # torch's own default-device context changes no value: allowed
        assert certifier.certify(torch.tensor([[1.0, 0.5]])).radius.item() == pytest.approx(0.5 / math.sqrt(2))


class _NamedLikeASplit(nn.Module):
    """Has ``encoder`` and ``classifier`` like :class:`lsrs.models.Split`, but its forward triples the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Identity()
        self.classifier = nn.Linear(2, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(2))

    def forward(self, x):
        return 3 * self.classifier(self.encoder(x))


def test_a_model_with_encoder_and_classifier_attributes_is_proven_by_its_own_class():
    """The margin certifier took any module with ``encoder`` and ``classifier`` attributes for their composition
    and certified that (L = 1.0, radius 0.35 for [1, 0.5]) instead of the model, whose forward is 3 times it
    (exact Jacobian 3.0). Only :class:`lsrs.models.Split` (forward = classifier o encoder) proves as the
    composition, through its own ``lipschitz_proof``; anything else is proven (or refused) as its class."""
    from lsrs.models import Split

    model = _NamedLikeASplit().eval()
    assert _jacobian_norm(model, (2,)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"model \(_NamedLikeASplit\)"):
        LipschitzCertifier(model, (2,))
    split = Split(model.encoder, model.classifier, arch="x", fors=0, fors_total=0, encoder_lipschitz=1.0,
                  latent_shape=(2,), config={}).eval()
    bound, true = _sound_or_refused(split, (2,))
    assert bound == pytest.approx(1.0) and true == pytest.approx(1.0)


@pytest.mark.parametrize("wrap", ["jit", "weight_norm"])
def test_scripted_or_weight_normed_networks_are_refused_in_one_line(wrap):
    """They have no proof; the certifier said so only after a RuntimeError from copying them (TorchScript:
    ``requires_grad_`` unsupported; the old ``weight_norm``: its computed weight cannot be deep-copied)."""
    net = nn.Sequential(nn.Linear(3, 3)).eval()
    if wrap == "jit":
        net = torch.jit.script(net)
    else:
        net[0] = torch.nn.utils.weight_norm(net[0])
    with pytest.raises(ValueError, match="no proven Lipschitz bound"):
        LipschitzCertifier(net, (3,))


def test_conv_padding_set_after_construction_is_the_padding_the_proof_uses():
    """With zero padding torch's forward reads ``padding`` itself, while ``_reversed_padding_repeated_twice`` is
    set once in ``__init__``: after ``conv.padding = (2, 3)`` the proof's torus (the padded size that makes the
    valid convolution a subset of circulant rows) was built from the stale (1, 1). No bound below the truth was
    observed (30 random kernels at 40x40: true / bound <= 0.9988), but the argument needs the padding that runs."""
    from lsrs.proofs import _pad_amounts, conv2d_norm_bound

    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False, dtype=torch.float64)
    conv.padding = (2, 3)
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    assert conv(x).shape[-2:] == (7, 9)
    assert _pad_amounts(conv) == (3, 3, 2, 2)
    same = nn.Conv2d(1, 1, (2, 4), padding="same", dilation=(1, 2), bias=False)
    assert _pad_amounts(same) == tuple(int(p) for p in same._reversed_padding_repeated_twice) == (3, 3, 0, 1)
    assert conv2d_norm_bound(conv, (5, 5)) >= _jacobian_norm(conv, (1, 5, 5)) * (1 - 1e-12)
