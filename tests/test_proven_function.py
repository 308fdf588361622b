"""What counts as the proven function (lsrs.pristine): every route by which a module could run something other
than the code its proof covers is refused in one line that names what was found and the way out.

The network of most tests computes the identity on R^2 (``Linear`` with W = I), proven L = 1; each hole makes it
compute ``3 x`` instead (exact Lipschitz constant 3), which a certificate with L = 1 would overstate threefold."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsrs import LatentSmooth, Smooth
from lsrs.margin import LipschitzCertifier
from lsrs.proofs import find_proof


def _identity_net() -> nn.Sequential:
    lin = nn.Linear(2, 2, bias=False, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    return nn.Sequential(lin).eval()


def _smoother(encoder: nn.Module) -> LatentSmooth:
    head = nn.Linear(2, 2).eval()
    return LatentSmooth(encoder, head, 2, sigma=0.5, lipschitz=1.0)


def _certify(ls: LatentSmooth):
    return ls.certify(torch.tensor([0.6, 0.2]), 8, 32, 0.01, 32, generator=0)


def _tripler(*args, **kwargs):
    return 3 * args[0]


# ---------------------------------------------------------------------------- a per-instance compiled call path
@pytest.mark.parametrize("how", ["attribute", "compile"])
def test_a_compiled_call_path_on_the_instance_is_refused(how):
    """``nn.Module._wrapped_call_impl`` runs ``self._compiled_call_impl`` when it is set (``module.compile()``
    does so): the class's ``forward`` is then not what runs. Here it triples the output."""
    net = _identity_net()
    if how == "attribute":
        net[0]._compiled_call_impl = _tripler
        with torch.no_grad():
            assert net(torch.tensor([[1.0, 0.0]], dtype=torch.float64)).tolist() == [[3.0, 0.0]]
    else:
        net[0].compile()
    with pytest.raises(ValueError, match="compiled call path") as info:
        LipschitzCertifier(net, (2,))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"encoder\.0 \(Linear\).*compiled call path.*trust_lipschitz=True"):
        _smoother(net)


# ---------------------------------------------------------------------------- metaclasses that lie
class _LyingMro(type):
    @property
    def __mro__(cls):  # what ``cls.__mro__`` reports; the interpreter uses the real one
        return (nn.Identity, nn.Module, object)


class _TriplesMro(nn.Module, metaclass=_LyingMro):
    def forward(self, x):
        return 3 * x


class _LyingDict(type):
    @property
    def __dict__(cls):
        return {"__module__": cls.__module__, "__doc__": None}


class _TriplesDict(nn.Identity, metaclass=_LyingDict):
    def forward(self, x):
        return 3 * x


@pytest.mark.parametrize("cls", [_TriplesMro, _TriplesDict])
def test_a_metaclass_that_lies_about_mro_or_dict_is_refused(cls):
    """A metaclass reported ``(nn.Identity, nn.Module, object)`` as ``__mro__`` (or an empty ``__dict__``), so the
    walk found Identity's proof (L = 1) for a module computing ``3 x``."""
    net = nn.Sequential(cls()).eval()
    assert net(torch.ones(1, 2)).tolist() == [[3.0, 3.0]]
    assert find_proof(net[0]) is None
    with pytest.raises(ValueError, match="custom metaclass"):
        LipschitzCertifier(net, (2,))
    with pytest.raises(ValueError, match=r"encoder\.0 .*custom metaclass.*trust_lipschitz=True"):
        _smoother(net)


# ---------------------------------------------------------------------------- a __deepcopy__ that alters the copy
class _Saboteur:
    """Held by a module; when the module is deep-copied it gives the *copy* a compiled call path that triples."""

    def __init__(self, owner: nn.Module) -> None:
        self.owner_id = id(owner)

    def __deepcopy__(self, memo):
        clone = memo.get(self.owner_id)  # the module's copy, made before its attributes are copied
        if clone is not None:  # runs the class's call path (hooks included), times 3
            object.__setattr__(clone, "_compiled_call_impl",
                               lambda *args, **kwargs: 3 * nn.Module._call_impl(clone, *args, **kwargs))
        return self


def test_a_deepcopy_that_alters_the_private_copy_is_refused():
    """The caller's module passes every check; the private copy the certifier makes runs ``3 x``. The copy is
    checked after copying."""
    net = _identity_net()
    net[0].saboteur = _Saboteur(net[0])
    clone = copy.deepcopy(net)
    with torch.no_grad():
        assert clone(torch.tensor([[1.0, 0.0]], dtype=torch.float64)).tolist() == [[3.0, 0.0]]
    with pytest.raises(ValueError, match="compiled call path.*after copying"):
        _smoother(net)
    with pytest.raises(ValueError, match="compiled call path.*after copying"):
        LipschitzCertifier(net, (2,))


# ---------------------------------------------------------------------------- class patches
def test_a_torch_class_patched_before_the_smoother_is_built_is_refused(monkeypatch):
    """``nn.Linear.forward`` replaced globally before the certifier exists: its proof (the weight's spectral
    norm) no longer describes what runs."""
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: 3 * F.linear(x, self.weight, self.bias))
    with pytest.raises(ValueError, match=r"Linear\.forward is not the code its proof was registered for"):
        LipschitzCertifier(_identity_net(), (2,))
    with pytest.raises(ValueError, match=r"Linear\.forward .*trust_lipschitz=True"):
        _smoother(_identity_net())


def test_is_rs_refuses_a_patched_identity(monkeypatch):
    """``Smooth`` smooths through an ``nn.Identity`` encoder of bound 1: patched to ``3 x`` it was still taken
    as the identity (no proof walked), certifying radii three times too large."""
    smooth = Smooth(nn.Sequential(nn.Flatten(), nn.Linear(2, 2)).eval(), 2, 0.5)
    smooth.certify(torch.tensor([0.6, 0.2]), 8, 32, 0.01, 32, generator=0)
    monkeypatch.setattr(nn.Identity, "forward", lambda self, x: 3 * x)
    with pytest.raises(ValueError, match=r"Identity\.forward is not the code"):
        smooth.certify(torch.tensor([0.6, 0.2]), 8, 32, 0.01, 32, generator=0)


def test_a_class_patch_after_the_first_certificate_is_refused(monkeypatch):
    ls = _smoother(_identity_net())
    certifier = LipschitzCertifier(_identity_net(), (2,))
    assert _certify(ls).lipschitz == pytest.approx(1.0)
    certifier.certify(torch.tensor([[1.0, 0.5]]))
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: 3 * F.linear(x, self.weight, self.bias))
    with pytest.raises(ValueError, match=r"Linear\.forward is not the code"):
        _certify(ls)
    with pytest.raises(ValueError, match=r"Linear\.forward is not the code"):
        certifier.certify(torch.tensor([[1.0, 0.5]]))


def test_a_patched_functional_the_proof_relies_on_is_refused(monkeypatch):
    """``nn.Linear.forward`` calls ``F.linear``: replacing it changes what every Linear computes."""
    ls = _smoother(_identity_net())
    _certify(ls)
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b=None: 3 * real(x, w, b))
    with pytest.raises(ValueError, match=r"torch\.nn\.functional\.linear is not the function"):
        _certify(ls)


# ---------------------------------------------------------------------------- hooks
def test_a_global_forward_hook_added_after_the_first_certificate_is_refused():
    ls = _smoother(_identity_net())
    certifier = LipschitzCertifier(_identity_net(), (2,))
    _certify(ls)
    certifier.certify(torch.tensor([[1.0, 0.5]]))
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, args, out: 3 * out if isinstance(m, nn.Linear) else out)
    try:
        with pytest.raises(ValueError, match="global forward hook"):
            _certify(ls)
        with pytest.raises(ValueError, match="global forward hook"):
            certifier.certify(torch.tensor([[1.0, 0.5]]))
    finally:
        handle.remove()
    assert _certify(ls).lipschitz == pytest.approx(1.0)  # removed: proven again


# ---------------------------------------------------------------------------- tensor-subclass inputs
class _Tripling(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        return out * 3 if func is F.linear else out


def test_latent_smooth_refuses_a_tensor_subclass_input():
    """Its ``__torch_function__`` triples ``F.linear``: the encoder would compute ``3 x`` under a proof of 1."""
    ls = _smoother(_identity_net())
    x = torch.tensor([0.6, 0.2]).as_subclass(_Tripling)
    for call in (lambda: ls.certify(x, 8, 32, 0.01, 32, generator=0), lambda: ls.predict(x, 32, 0.01, 32),
                 lambda: ls.decide(x, 0.1, 0.01, 64, 32), lambda: ls.encode(x)):
        with pytest.raises(ValueError, match="takes a torch.Tensor.*_Tripling"):
            call()


def test_the_library_models_pass_every_check():
    """No false refusal: the orthogonal twin (every layer proven) certifies, and an inert subclass still proves."""
    from lsrs.models import resnet18

    model = resnet18(num_classes=3, fors=18, width=4, in_size=8, in_channels=1).eval()
    cert = LipschitzCertifier(model, (1, 8, 8)).certify(torch.rand(2, 1, 8, 8))
    assert cert.radius.shape == (2,) and math.isfinite(cert.lipschitz)


def test_what_torch_compile_wraps_in_nn_module_is_tolerated(monkeypatch):
    """``torch.compile`` (dynamo) wraps ``nn.Module.__init__`` and ``__setstate__`` to tag new modules, process-wide:
    they run only when a module is built or copied (and the copy is checked), so certificates go on; a wrapped
    ``_call_impl`` is refused."""
    init, setstate = nn.Module.__init__, nn.Module.__setstate__
    monkeypatch.setattr(nn.Module, "__init__", lambda self, *a, **k: init(self, *a, **k))
    monkeypatch.setattr(nn.Module, "__setstate__", lambda self, state: setstate(self, state))
    monkeypatch.setattr(nn.Module, "___needs_generation_tag_patch", False, raising=False)
    assert _certify(_smoother(_identity_net())).lipschitz == pytest.approx(1.0)
    call = nn.Module._call_impl
    monkeypatch.setattr(nn.Module, "_call_impl", lambda self, *a, **k: call(self, *a, **k))
    with pytest.raises(ValueError, match=r"Module\._call_impl is not the code"):
        _smoother(_identity_net())


def test_a_patched_tensor_operator_is_refused(monkeypatch):
    """``MeanShift`` computes ``x - mean``: with ``torch.Tensor.__sub__`` patched to triple it the encoder computes
    ``3 (x - mean)`` under the translation's proof of 1. ``torch.compile`` itself (which wraps ``torch.manual_seed``
    and ``nn.Module.__init__``) is no reason to refuse."""
    from lsrs.layers import MeanShift

    ls = LatentSmooth(nn.Sequential(MeanShift([0.5]), nn.Flatten()), nn.Linear(4, 2).eval(), 2, 0.5, 1.0)
    x = torch.rand(1, 2, 2)
    assert ls.certify(x, 8, 16, 0.01, 16, generator=0).lipschitz_source == "proven"
    sub = torch.Tensor.__sub__
    monkeypatch.setattr(torch.Tensor, "__sub__", lambda a, b: 3 * sub(a, b))
    with pytest.raises(ValueError, match=r"Tensor\.__sub__ is not the method"):
        ls.certify(x, 8, 16, 0.01, 16, generator=0)


def test_a_torch_class_patched_before_the_library_is_imported_is_refused():
    """A patch made before ``import lsrs`` is in the reference itself; a function of a torch class defined outside
    torch gives it away."""
    import subprocess
    import sys

    code = ("import torch, torch.nn.functional as F\n"
            "from torch import nn\n"
            "nn.Linear.forward = lambda self, x: 3 * F.linear(x, self.weight, self.bias)\n"
            "from lsrs.margin import LipschitzCertifier\n"
            "try:\n"
            "    LipschitzCertifier(nn.Sequential(nn.Linear(2, 2)).eval(), (2,))\n"
            "except ValueError as err:\n"
            "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "Linear.forward was replaced before the library was imported" in out.stdout
