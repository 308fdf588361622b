"""The key that tells a certifier to prove again (lsrs.digest.state_key): every change of what runs is seen.

Oracle for "proven again": a fresh certifier built on a copy of the changed network proves its bound from
scratch; the next certificate of the old certifier must carry exactly that bound (or be refused)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn

from lsrs import LatentSmooth
from lsrs.digest import state_key
from lsrs.margin import LipschitzCertifier

X = torch.tensor([[[0.6, 0.2], [0.1, 0.9]]])  # one 1x2x2 image


def _encoder(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.LeakyReLU(0.5), nn.Linear(4, 4)).eval()


def _smoother(encoder: nn.Module, **kw) -> LatentSmooth:
    torch.manual_seed(1)
    return LatentSmooth(encoder, nn.Linear(4, 2).eval(), 2, sigma=0.5, lipschitz=kw.pop("lipschitz", 0.01), **kw)


def _certify(ls: LatentSmooth):
    return ls.certify(X, 8, 32, 0.01, 32, generator=0)


def _fresh_lipschitz(ls: LatentSmooth) -> float:
    """The bound a new smoother proves for the encoder ``ls`` runs now."""
    return _certify(_smoother(copy.deepcopy(ls.encoder), lipschitz=ls.lipschitz)).lipschitz


def _exact_norm(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.double(), ord=2))


@pytest.mark.parametrize("edit", ["permute", "zero_sum_scale"])
def test_edits_through_data_that_keep_the_sum_are_seen(edit):
    """The old key summed each tensor in float64: a permutation of the weight's entries, or scaling a kernel
    whose entries sum to zero, kept the sum, and the old (too small) bound was reused."""
    ls = _smoother(_encoder())
    before = _certify(ls).lipschitz
    w = ls.encoder[3].weight
    if edit == "permute":
        flat = w.data.flatten()
        w.data.copy_(flat[torch.argsort(flat.abs(), descending=True)].view_as(w))
    else:
        w.data.sub_(w.data.mean())  # a zero-sum kernel: a change the new key sees; then the hidden one
        before = _certify(ls).lipschitz
        w.data.mul_(3.0)
    after = _certify(ls).lipschitz
    assert after == _fresh_lipschitz(ls) != before
    if edit == "zero_sum_scale":
        assert after == pytest.approx(3.0 * before, rel=1e-6)


def test_a_numpy_scalar_attribute_is_seen():
    """``negative_slope`` set to numpy float32 values (not a Python float: the old key skipped it)."""
    ls = _smoother(_encoder())
    ls.encoder[2].negative_slope = np.float32(0.5)
    before = _certify(ls).lipschitz
    ls.encoder[2].negative_slope = np.float32(4.0)
    after = _certify(ls).lipschitz
    assert after == _fresh_lipschitz(ls) and after > 3.0 * before


def test_a_list_attribute_edited_in_place_and_a_private_attribute_are_seen():
    """``_reversed_padding_repeated_twice`` (private, a list) is the padding a replicate-padded convolution
    applies; growing it in place multiplies copies of the border pixels (a larger bound)."""
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="replicate", bias=False), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten()).eval()
    enc[0]._reversed_padding_repeated_twice = list(enc[0]._reversed_padding_repeated_twice)
    ls = LatentSmooth(enc, nn.Linear(1, 2).eval(), 2, sigma=0.5, lipschitz=0.01)
    before = _certify(ls).lipschitz
    pad = ls.encoder[0]._reversed_padding_repeated_twice
    assert isinstance(pad, list)
    pad[:] = [2, 2, 2, 2]
    after = _certify(ls).lipschitz
    fresh = LatentSmooth(copy.deepcopy(ls.encoder), nn.Linear(1, 2).eval(), 2, sigma=0.5, lipschitz=0.01)
    assert after == _certify(fresh).lipschitz != before


def test_a_weight_re_registered_as_a_plain_tensor_is_seen():
    ls = _smoother(_encoder())
    lin = ls.encoder[3]
    w = lin.weight.detach().clone()
    del lin.weight
    lin.weight = w  # a plain tensor attribute now, not a parameter
    before = _certify(ls).lipschitz
    lin.weight.mul_(3.0)
    after = _certify(ls).lipschitz
    assert after == _fresh_lipschitz(ls) == pytest.approx(3.0 * before, rel=1e-6)


def test_a_changed_declared_bound_is_used():
    """``ls.lipschitz`` changed after the first certificate: the declared bound counts (trusted or not)."""
    trusted = _smoother(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4).eval()), lipschitz=1.0, trust_lipschitz=True)
    assert _certify(trusted).lipschitz == 1.0
    trusted.lipschitz = 5.0
    assert _certify(trusted).lipschitz == 5.0
    ls = _smoother(_encoder(), lipschitz=1.0)
    _certify(ls)
    ls.lipschitz = 50.0
    assert _certify(ls).lipschitz == 50.0
    ls.lipschitz = -1.0
    with pytest.raises(ValueError, match="lipschitz must be a finite number > 0"):
        _certify(ls)


def test_the_margin_certifier_proves_its_model_again_after_an_edit():
    """``LipschitzCertifier`` had no key: after scaling its model's weight by 3 the old L (and radii three times
    too large) stood."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    certifier = LipschitzCertifier(net, (3,))
    x = torch.rand(4, 3)
    before = certifier.certify(x)
    w = certifier.model[0].weight
    flat = w.data.flatten()
    w.data.copy_(flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(3))].view_as(w) * 3.0)
    after = certifier.certify(x)
    fresh = LipschitzCertifier(copy.deepcopy(certifier.model), (3,)).certify(x)
    assert after.lipschitz == fresh.lipschitz != before.lipschitz
    assert torch.equal(after.radius, fresh.radius)


def test_the_key_is_unchanged_when_nothing_changes():
    """No spurious re-proof: two keys of the same module are equal, also after a certificate built its caches."""
    from lsrs.models import resnet18

    model = resnet18(num_classes=2, fors=5, width=4, in_size=8, in_channels=1).eval()
    ls = LatentSmooth(model.encoder, model.classifier, 2, sigma=0.5, lipschitz=model.encoder_lipschitz)
    ls.certify(torch.rand(1, 8, 8), 4, 8, 0.01, 8, generator=0)
    assert state_key(ls.encoder) == state_key(ls.encoder)
    bound = ls._executed
    ls.certify(torch.rand(1, 8, 8), 4, 8, 0.01, 8, generator=1)
    assert ls._executed is bound  # not proven again


# ---------------------------------------------------------------------------- fuzz
_ACTIVATIONS = (lambda r: nn.LeakyReLU(r.uniform(0.05, 0.9)), lambda r: nn.Tanh(), lambda r: nn.ReLU(),
                lambda r: nn.Identity(), lambda r: nn.Dropout(0.3))


_KINDS = ("permute", "scale", "bias", "slope", "list", "hook", "global_hook", "class_patch")


def _random_encoder(r: random.Random, kind: str) -> nn.Sequential:
    torch.manual_seed(r.randrange(10**6))
    layers: list[nn.Module] = []
    if kind == "list" or r.random() < 0.5:
        mode = r.choice(["replicate", "circular"] if kind == "list" else ["zeros", "reflect", "replicate", "circular"])
        conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode=mode, bias=r.random() < 0.5)
        conv._reversed_padding_repeated_twice = list(conv._reversed_padding_repeated_twice)  # a list attribute
        layers += [conv, r.choice(_ACTIVATIONS)(r)]
        width = 8
    else:
        width = 4
    layers.append(nn.Flatten())
    for i in range(r.randint(1, 3)):
        activation = _ACTIVATIONS[0] if kind == "slope" and i == 0 else r.choice(_ACTIVATIONS)
        layers += [nn.Linear(width, 4, bias=r.random() < 0.5), activation(r)]
        width = 4
    return nn.Sequential(*layers).eval()


def _mutate(ls: LatentSmooth, r: random.Random, undo: list, kind: str) -> str:
    """One random change of the route ``kind`` (one a key could miss) to what ``ls.encoder`` runs."""
    mods = [m for m in ls.encoder.modules() if m is not ls.encoder]
    weighted = [m for m in mods if getattr(m, "weight", None) is not None]
    if kind in ("permute", "scale"):
        w = r.choice(weighted).weight
        flat = w.data.flatten()
        if kind == "permute":
            w.data.copy_(flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(r.randrange(99)))]
                         .view_as(w))
        else:
            w.data.mul_(r.choice([0.5, 2.0, 3.0]))
    elif kind == "bias":
        biased = [m for m in weighted if getattr(m, "bias", None) is not None] or weighted
        target = r.choice(biased)
        (target.bias if target.bias is not None else target.weight).data.add_(0.25)
    elif kind == "slope":
        leaky = [m for m in mods if isinstance(m, nn.LeakyReLU)]
        r.choice(leaky).negative_slope = r.choice([np.float32(3.0), np.float64(2.0), [2.5][0]])
    elif kind == "list":  # the padding a replicate / circular convolution applies, edited in place
        convs = [m for m in mods if isinstance(m, nn.Conv2d) and m.padding_mode in ("replicate", "circular")]
        r.choice(convs)._reversed_padding_repeated_twice[:] = r.choice([[2, 0, 1, 1], [1, 1, 0, 2], [0, 2, 2, 0]])
    elif kind == "hook":
        r.choice(mods).register_forward_hook(lambda m, args, out: 3 * out)
    elif kind == "global_hook":
        undo.append(nn.modules.module.register_module_forward_hook(lambda m, args, out: out).remove)
    else:
        cls = type(r.choice(mods))
        original = cls.__dict__.get("forward")
        cls.forward = lambda self, x, _orig=cls.forward: 3 * _orig(self, x)
        undo.append(lambda: setattr(cls, "forward", original) if original is not None else delattr(cls, "forward"))
    return kind


@pytest.mark.parametrize("seed", range(24))
def test_fuzz_every_mutation_is_proven_again_or_refused(seed):
    """Random encoders of proven layers; after one random change (a weight through ``.data``, an attribute,
    a hook, a global hook, a class method) the next certificate carries the bound a fresh proof gives, or is
    refused: never the old bound for a changed network."""
    r = random.Random(seed)
    kind = _KINDS[seed % len(_KINDS)]  # every route three times; the network and the target at random
    enc = _random_encoder(r, kind)
    shape = (1, 2, 2)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    head = nn.Linear(4, 2).eval()
    ls = LatentSmooth(enc, head, 2, sigma=0.5, lipschitz=0.01)
    ls.certify(x, 4, 8, 0.01, 8, generator=0)
    undo: list = []
    try:
        _mutate(ls, r, undo, kind)
        try:
            after = ls.certify(x, 4, 8, 0.01, 8, generator=0)
        except ValueError as err:
            assert kind in ("hook", "global_hook", "class_patch"), f"{kind}: refused unexpectedly: {err}"
            return
        assert kind not in ("hook", "global_hook", "class_patch"), f"{kind} was certified"
        fresh = LatentSmooth(copy.deepcopy(ls.encoder), head, 2, sigma=0.5, lipschitz=0.01)
        again = fresh.certify(x, 4, 8, 0.01, 8, generator=0)
        assert (after.lipschitz, after.latent_error, after.radius) == (again.lipschitz, again.latent_error,
                                                                       again.radius), kind
    finally:
        for f in reversed(undo):
            f()


@pytest.mark.parametrize("edit", ["in_place", "new_storage", "through_data"])
def test_an_orthogonal_layer_is_keyed_by_the_operator_it_runs(edit):
    """A Cayley convolution runs its cached operator, rebuilt when ``weight`` changes storage or version. An
    in-place edit or a new tensor rebuilds it: proven again, as a fresh proof. An edit through ``.data`` leaves
    the operator that runs (and so its proof) as it was: the certificate is unchanged."""
    from lsrs.layers import CayleyConv2d
    from lsrs.models import resnet18

    model = resnet18(num_classes=2, fors=3, width=4, in_size=8, in_channels=1).eval()
    ls = LatentSmooth(model.encoder, model.classifier, 2, sigma=0.5, lipschitz=0.01)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    before = ls.certify(x, 8, 16, 0.01, 16, generator=0)
    layer = next(m for m in ls.encoder.modules() if isinstance(m, CayleyConv2d))
    runs = dict(layer._cache)
    with torch.no_grad():
        if edit == "in_place":
            layer.weight.mul_(-1.5)
        elif edit == "new_storage":
            layer.weight.data = torch.randn_like(layer.weight)
        else:
            layer.weight.data.mul_(-1.5)
    after = ls.certify(x, 8, 16, 0.01, 16, generator=0)
    if edit == "through_data":
        assert all(layer._cache[k] is v for k, v in runs.items())
        assert (after.lipschitz, after.latent_error, after.radius) == (before.lipschitz, before.latent_error,
                                                                       before.radius)
    else:
        assert not any(layer._cache.get(k) is v for k, v in runs.items())
        fresh = LatentSmooth(copy.deepcopy(ls.encoder), ls.classifier, 2, sigma=0.5, lipschitz=0.01)
        again = fresh.certify(x, 8, 16, 0.01, 16, generator=0)
        assert (after.lipschitz, after.latent_error) == (again.lipschitz, again.latent_error) != (
            before.lipschitz, before.latent_error)
