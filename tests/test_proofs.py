"""One proof per layer (lsrs.proofs): every bound against an exact SVD, refusals by path and class, and the
seven holes of issue 23, each with a test that fails on the code before it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from lsrs import proofs
from lsrs.executed import gamma, operator_norm_bound
from lsrs.layers import CayleyConv2d, ConvexResidual, MaxMin
from lsrs.lipschitz import proven_bound
from lsrs.margin import lipschitz_certify
from lsrs.models import resnet18
from lsrs.proofs import UnprovenModule, executed_bound, input_shapes, prove
from lsrs.sequential import checkpoint_schedule
from lsrs.smoothing import LatentSmooth, smooth_model


def _matrix_norm(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """Exact oracle: the spectral norm of the layer's explicit matrix (its linear part) by a float64 SVD."""
    layer = layer.double().eval()
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        out = layer(basis) - layer(torch.zeros(1, *shape, dtype=torch.float64))
    return float(torch.linalg.matrix_norm(out.reshape(n, -1), ord=2))


def _jacobian_norm(module: nn.Module, x: torch.Tensor) -> float:
    """Exact spectral norm of the Jacobian at ``x`` (float64 autograd + SVD): a lower bound on L."""
    jac = torch.autograd.functional.jacobian(lambda t: module(t), x)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), ord=2))


# ---------------------------------------------------------------------------- nn.Conv2d against the exact SVD
CONVS = [
    # (c_in, c_out, k, padding, stride, dilation, groups, mode)
    (2, 3, 3, 0, 1, 1, 1, "zeros"),
    (2, 3, 3, 1, 1, 1, 1, "zeros"),
    (2, 3, 3, 2, 1, 1, 1, "zeros"),  # k // 2 + 1
    (2, 2, 2, 1, 1, 1, 1, "zeros"),  # even kernel
    (2, 3, 3, 1, 2, 1, 1, "zeros"),  # stride 2
    (2, 3, 3, 2, 1, 2, 1, "zeros"),  # dilation 2
    (4, 4, 3, 1, 1, 1, 2, "zeros"),  # groups
    (2, 3, 3, 1, 1, 1, 1, "circular"),  # the one truly circulant case
    (2, 3, 3, 2, 1, 2, 1, "circular"),  # circulant with dilation 2 (total padding d (k - 1))
    (2, 3, 3, 2, 1, 1, 1, "circular"),  # hole 1: padding above k // 2
    (2, 2, 2, 1, 1, 1, 1, "circular"),  # hole 1: even kernel
    (2, 3, 3, 0, 1, 1, 1, "circular"),
    (2, 3, 3, 1, 2, 1, 1, "circular"),
    (2, 3, 3, 1, 1, 1, 1, "reflect"),
    (2, 3, 3, 2, 1, 1, 1, "replicate"),
    (4, 2, 3, 1, 2, 1, 2, "reflect"),
    (2, 3, 4, "same", 1, 1, 1, "zeros"),
]


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "fft-only"])
@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "-".join(map(str, s)))
def test_conv2d_bound_covers_the_exact_svd(spec, explicit, monkeypatch):
    """Every padding mode / padding / stride / dilation / groups / kernel parity: the proven bound is >= the
    exact spectral norm of the layer's matrix on the real input size; with the explicit matrix it is equal
    (to 1e-9), and so is the FFT bound in the circulant case."""
    c_in, c_out, k, pad, stride, dil, groups, mode = spec
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dil, groups=groups, padding_mode=mode)
    if not explicit:
        monkeypatch.setattr(proofs, "EXPLICIT_MAX_ENTRIES", 0)
    shape = (c_in, 6, 6)
    exact = _matrix_norm(_without_bias(conv), shape)
    bound = proven_bound(conv, shape)
    assert bound >= exact * (1 - 1e-12)
    circulant = mode == "circular" and stride == 1 and 2 * pad == dil * (k - 1)
    if explicit or circulant:
        assert bound == pytest.approx(exact, rel=1e-9)


def _without_bias(conv: nn.Conv2d) -> nn.Conv2d:
    clone = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=False,
                      padding_mode=conv.padding_mode)
    with torch.no_grad():
        clone.weight.copy_(conv.weight)
    return clone


def test_hole_1_circular_padding_above_half_the_kernel_is_not_the_torus_norm():
    """A delta kernel with circular padding 2 (k = 3): the torus norm is 1, but the wrap-around duplicates rows
    (two copies of the border pixels per axis): the true norm is 2, and a margin certificate must use it."""
    conv = nn.Conv2d(1, 1, 3, padding=2, padding_mode="circular", bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    exact = _matrix_norm(conv, (1, 5, 5))
    assert exact == pytest.approx(2.0)
    assert proven_bound(conv, (1, 5, 5)) >= exact * (1 - 1e-12)
    net = nn.Sequential(conv, nn.Flatten(), nn.Linear(49, 2))
    cert = lipschitz_certify(net, torch.rand(2, 1, 5, 5))
    assert cert.lipschitz >= _jacobian_norm(net.double(), torch.rand(1, 1, 5, 5, dtype=torch.float64)) * (1 - 1e-12)


def test_linear_and_pools_against_the_exact_svd():
    torch.manual_seed(1)
    lin = nn.Linear(5, 3)
    assert proven_bound(lin, (5,)) == pytest.approx(_matrix_norm(_linear_part(lin), (5,)), rel=1e-9)
    for pool, shape in [(nn.AvgPool2d(2), (2, 6, 6)), (nn.AvgPool2d(3, stride=1, padding=1), (1, 5, 5)),
                        (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 6, 6)),
                        (nn.AdaptiveAvgPool2d(1), (2, 5, 5)), (nn.AdaptiveAvgPool2d(2), (1, 5, 5))]:
        assert proven_bound(pool, shape) >= _matrix_norm(pool, shape) * (1 - 1e-12), pool
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, stride=1, padding=1), nn.MaxPool2d(2, stride=1, dilation=2)):
        assert proven_bound(pool, (1, 6, 6)) >= _jacobian_norm(pool, x) * (1 - 1e-12)
    assert proven_bound(nn.MaxPool2d(2), (1, 6, 6)) == 1.0  # no overlap: a coordinate selection
    assert proven_bound(nn.MaxPool2d(2, ceil_mode=True), (1, 5, 5)) == math.inf  # refused


def _linear_part(lin: nn.Linear) -> nn.Linear:
    out = nn.Linear(lin.in_features, lin.out_features, bias=False)
    with torch.no_grad():
        out.weight.copy_(lin.weight)
    return out


# ---------------------------------------------------------------------------- hole 2: subclasses, hooks
class _Tripled(nn.Identity):
    def forward(self, x):
        return 3 * x


def test_hole_2_a_subclass_overriding_forward_is_refused_by_path_and_class():
    enc = nn.Sequential(CayleyConv2d(1, 4, 3), MaxMin(), _Tripled())
    head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    with pytest.raises(ValueError, match=r"no proven Lipschitz bound for encoder\.2 \(_Tripled\)"):
        LatentSmooth(enc, head, 2, 0.5, 1.0)
    assert proven_bound(enc, (1, 8, 8)) == math.inf
    trusted = LatentSmooth(enc, head, 2, 0.5, 3.0, trust_lipschitz=True)
    cert = trusted.certify(torch.rand(1, 8, 8), 8, 64, 0.01, 64, generator=0)
    assert cert.lipschitz == 3.0 and cert.lipschitz_source == "trusted"


def test_inert_subclasses_hooks_and_instance_overrides():
    """A subclass that only adds __init__ is its base (the models' OrthogonalBlock); a forward hook or an
    instance attribute over a method is refused."""

    class Block(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Linear(3, 3), nn.ReLU())

    assert proofs.find_proof(Block()) is proofs.find_proof(nn.Sequential())
    hooked = nn.Linear(3, 3)
    hooked.register_forward_hook(lambda m, a, out: 10 * out)
    shadowed = nn.Linear(3, 3)
    shadowed.forward = lambda x: 10 * x
    for bad in (hooked, shadowed):
        with pytest.raises(UnprovenModule):
            prove(bad.eval(), input_shapes(bad, torch.zeros(1, 3)))
        assert proofs.first_unproven(nn.Sequential(bad)) is not None


# ---------------------------------------------------------------------------- hole 3: training mode
def test_hole_3_a_training_mode_classifier_gives_batch_size_independent_counts_and_is_not_changed():
    torch.manual_seed(0)
    model = resnet18(num_classes=10, fors=0, width=4, in_size=8, in_channels=1).train()
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.rand(1, 8, 8)
    with pytest.warns(UserWarning, match="training mode"):
        smoother = smooth_model(model, 10, 0.5)
    counts = [smoother.certify(x, 16, 300, 0.01, b, generator=5).counts_estimation for b in (300, 7)]
    assert counts[0] == counts[1]
    assert model.training
    after = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))


# ---------------------------------------------------------------------------- hole 4: stale bounds
def test_hole_4_the_bound_follows_load_state_dict_into_the_encoder_that_runs():
    torch.manual_seed(0)
    model = resnet18(num_classes=10, fors=3, width=8, in_size=8, in_channels=1).eval()
    other = resnet18(num_classes=10, fors=3, width=8, in_size=8, in_channels=1)
    with torch.no_grad():  # weights whose float32 operators are measurably off orthogonal
        for p in other.encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    smoother = smooth_model(model, 10, 0.5)
    x = torch.rand(1, 8, 8)
    first = smoother.certify(x, 8, 64, 0.01, 64, generator=1)
    model.encoder.load_state_dict(other.encoder.state_dict())  # the caller's module: not what runs
    assert smoother.certify(x, 8, 64, 0.01, 64, generator=1).lipschitz == first.lipschitz
    smoother.encoder.load_state_dict(other.encoder.state_dict())  # what runs
    cert = smoother.certify(x, 8, 64, 0.01, 64, generator=1)
    fresh = executed_bound(proofs.executable_copy(other.encoder), (1, 8, 8))
    assert cert.lipschitz == pytest.approx(max(1.0, fresh.lipschitz), rel=1e-12)
    assert cert.lipschitz != first.lipschitz
    conv = next(m for m in smoother.encoder.modules() if isinstance(m, CayleyConv2d))
    key = proofs.state_key(smoother.encoder)
    conv.bias.data.add_(1.0)  # bypasses the version counter
    assert proofs.state_key(smoother.encoder) != key


# ---------------------------------------------------------------------------- hole 5: cache = False
def test_hole_5_cache_false_keeps_the_float64_path_and_is_not_bounded_uncached():
    torch.manual_seed(0)
    layer = CayleyConv2d(2, 2, 3).eval().requires_grad_(False)
    x = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    cached = layer(x)
    layer.cache = False
    uncached = layer(x)
    assert uncached.dtype == torch.float64
    torch.testing.assert_close(uncached, cached, rtol=0, atol=1e-12)
    with pytest.raises(UnprovenModule, match="cache=False"):
        executed_bound(layer, (2, 8, 8), strict=True)
    enc = nn.Sequential(layer, MaxMin())
    smoother = LatentSmooth(enc, nn.Sequential(nn.Flatten(), nn.Linear(128, 2)), 2, 0.5, 1.0)
    assert all(m.cache for m in smoother.encoder.modules() if isinstance(m, CayleyConv2d))
    z = smoother.encode(torch.rand(2, 8, 8, dtype=torch.float64).float())
    assert z.dtype == torch.float32 and smoother.executed_bound((2, 8, 8)).terms


# ---------------------------------------------------------------------------- hole 6: the FoR-18 twin
def test_hole_6_ls_rs_on_the_twin_is_bounded_as_executed():
    torch.manual_seed(0)
    model = resnet18(num_classes=5, fors=18, width=4, in_size=8, in_channels=1).eval()
    smoother = smooth_model(model, 5, 0.5)
    cert = smoother.certify(torch.rand(1, 8, 8), 8, 64, 0.01, 64, generator=0)
    bound = smoother.executed_bound((1, 8, 8))
    assert not bound.trusted and cert.lipschitz_source == "proven"
    kinds = {type(m).__name__ for t in bound.terms for m in t.tracked}
    assert {"NormPool", "OrthogonalLinear"} <= kinds
    assert cert.latent_error > 0 and 1.0 <= cert.lipschitz <= 1 + 1e-4
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert cert.lipschitz >= _jacobian_norm(smoother.encoder, x)


# ---------------------------------------------------------------------------- hole 7: decide's arguments
@pytest.mark.parametrize("kwargs", [dict(first_look=0), dict(first_look=-3), dict(first_look=2.5),
                                    dict(radius=float("nan")), dict(radius=-1.0), dict(max_n=0)])
def test_hole_7_decide_validates_its_numeric_arguments(kwargs):
    smoother = smooth_model(resnet18(num_classes=3, fors=0, width=4, in_size=8, in_channels=1).eval(), 3, 0.5)
    args = dict(radius=0.1, alpha=0.01, max_n=128, batch_size=64, generator=0) | kwargs
    first_look = args.pop("first_look", 64)
    with pytest.raises(ValueError):
        smoother.decide(torch.rand(1, 8, 8), first_look=first_look, **args)
    with pytest.raises(ValueError, match="first_look"):
        checkpoint_schedule(100, 0)


# ---------------------------------------------------------------------------- the two constants
def test_gram_slack_is_that_of_one_2p_term_product():
    """An exactly orthogonal complex matrix: the bound is 1 + the rounding slack, 2 gamma_{2p+2} |A|_F^2 per the
    proof (Re G is one product of the stacked [B; C], 2p terms per entry), never the smaller gamma_{p+2}."""
    p = 512  # large enough that the slack (about 4 p^2 u) dominates the final (1 + 1e-12) factors
    eye = torch.eye(p, dtype=torch.complex64)
    assert operator_norm_bound(eye) ** 2 >= 1 + 2 * gamma(2 * p + 2) * p


# ---------------------------------------------------------------------------- property test over random stacks
def _conv(draw, c: int) -> nn.Module:
    k = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    groups = draw(st.sampled_from([1, 2]))
    return nn.Conv2d(c, 2 * draw(st.integers(1, 2)), k, stride=draw(st.integers(1, 2)),
                     padding=draw(st.integers(0, 2)), dilation=draw(st.integers(1, 2)), groups=groups,
                     padding_mode=mode, bias=draw(st.booleans()))


@st.composite
def _stacks(draw):
    c, layers, refused = 2, [], False
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "cayley", "act", "residual", "pool", "unproven"]))
        if kind == "cayley":
            layers.append(CayleyConv2d(c, 2 * draw(st.integers(1, 2)), draw(st.sampled_from([1, 3]))))
            c = layers[-1].out_channels
        elif kind == "conv":
            conv = _conv(draw, c)
            layers.append(conv)
            c = conv.out_channels
        elif kind == "act":
            layers.append(draw(st.sampled_from([nn.ReLU(), nn.LeakyReLU(0.3), nn.Tanh(), MaxMin()])))
        elif kind == "residual":
            main = nn.Conv2d(c, c, 3, padding=1, padding_mode=draw(st.sampled_from(["zeros", "circular"])))
            layers.append(ConvexResidual(main, theta=draw(st.floats(-3, 3))))
        elif kind == "pool":
            layers.append(draw(st.sampled_from([nn.AvgPool2d(2, stride=1), nn.MaxPool2d(2, stride=1),
                                                nn.AvgPool2d(3, stride=1, padding=1)])))
        else:
            layers.append(draw(st.sampled_from([nn.BatchNorm2d(c), _Tripled()])))
            refused = True
    if draw(st.booleans()):
        layers += [nn.Flatten(), nn.LazyLinear(3)]
    return nn.Sequential(*layers), refused


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stacks(), st.integers(0, 2**16))
def test_every_proven_bound_covers_the_jacobian_and_every_refusal_refuses(stack_refused, seed):
    stack, refused = stack_refused
    torch.manual_seed(seed)
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    try:
        stack.double().eval()(x)  # materialises LazyLinear; skips shapes the stack cannot run on
    except (RuntimeError, ValueError):
        assume(False)
    bound = proven_bound(stack, (2, 5, 5))
    if refused:
        assert bound == math.inf
        with pytest.raises(UnprovenModule):
            executed_bound(proofs.executable_copy(stack), (2, 5, 5), strict=True)
        return
    assert math.isfinite(bound)
    assert bound >= _jacobian_norm(stack, x) * (1 - 1e-9)


# ---------------------------------------------------------------------------- bench run: refusal and trust
def test_bench_run_refuses_an_unproven_encoder_in_one_line_and_trusts_it_on_request(tmp_path, monkeypatch):
    """An encoder with a module without a proof: exit 2 and one line naming it; with --trust-lipschitz the
    run goes through and every LS row records lipschitz_source=trusted (IS rows: proven)."""
    import pandas as pd
    from click.testing import CliRunner
    from tiny_checkpoints import write_tiny_checkpoints

    import lsrs.smoothing
    from bench.cli.main import cli

    real = lsrs.smoothing.smooth_model

    def with_unproven(model, *args, **kwargs):
        if model.fors:
            model.encoder = nn.Sequential(model.encoder, _Tripled())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(lsrs.smoothing, "smooth_model", with_unproven)
    ckpt = write_tiny_checkpoints(tmp_path / "ckpt", (1,), (0.25,))
    args = ["run", "--dataset", "digits", "--fors", "1", "--sigmas", "0.25", "--n0", "8", "--n", "32",
            "--max-images", "2", "--checkpoints", str(ckpt), "-q"]
    refused = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "no proven Lipschitz bound for encoder.1 (_Tripled)" in lines[0], refused.output
    assert "--trust-lipschitz" in lines[0] and "Traceback" not in refused.output
    trusted = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b"), "--trust-lipschitz"])
    assert trusted.exit_code == 0, trusted.output
    frame = pd.read_parquet(tmp_path / "b")
    assert set(frame.loc[frame["method"] == "ls", "lipschitz_source"]) == {"trusted"}
    assert set(frame.loc[frame["method"] == "is", "lipschitz_source"]) == {"proven"}


def test_a_user_layer_proves_itself_by_method_or_registration():
    """``lipschitz_proof`` on the class, or ``@proves(cls)``: the walker composes it like the library's own;
    a subclass that overrides forward loses it."""

    class Halve(nn.Module):
        def forward(self, x):
            return x / 2

        def lipschitz_proof(self, ctx, path):
            return proofs.LayerProof(0.5, 0.5, (proofs.Term((self,), proofs.U64, 0.0),))

    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    @proofs.proves(Double)
    def _double(module, ctx, path):
        return proofs.LayerProof(2.0, 2.0)

    class Quadruple(Double):
        def forward(self, x):
            return 4 * x

    stack = nn.Sequential(Halve(), nn.Linear(3, 3), Double())
    x = torch.rand(1, 3, dtype=torch.float64)
    assert proven_bound(stack, (3,)) >= _jacobian_norm(stack.double(), x) * (1 - 1e-12)
    assert proven_bound(stack, (3,)) == pytest.approx(_matrix_norm(_linear_part(stack[1]), (3,)), rel=1e-9)
    assert proven_bound(nn.Sequential(Quadruple()), (3,)) == math.inf
