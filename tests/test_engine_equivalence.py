"""The optimized fp32 engine and a plain loop give identical counts for the same seed (CPU).

The plain loop is written from the definition of the canonical noise (lsrs.noise): a stream is a sequence of
``normal_`` blocks of 64 samples in (H, W, C) order, block b drawn from its own generator
``block_generator(key, b)`` (stream v2), or all drawn in order from one generator ``stream_generator(key)``
(stream v1, kept to resume stored runs). It makes each batch
a contiguous NCHW tensor ``noise * sigma + z``, runs a separate contiguous copy of the classifier under
``torch.no_grad`` and counts predictions one by one on the host. The engine draws into a reused
channels_last buffer, adds in place, runs a channels_last classifier under ``inference_mode`` and counts
with ``bincount`` on the device. CERTIFY's selection and estimation counts must match the plain loop's on
the first ``n0`` samples of the key ``certificate_key(seed, "certify", x)`` and on the ``n`` samples from the
next block on.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lsrs.inference import fold_batchnorm
from lsrs.models import resnet18
from lsrs.noise import DEFAULT_BLOCK, NOISE_STREAMS, block_generator, certificate_key, stream_generator
from lsrs.smoothing import LatentSmooth, Smooth

SIGMA = 0.5
NUM_CLASSES = 10


def plain_counts(classifier: torch.nn.Module, z: torch.Tensor, num: int, batch_size: int, key: object,
                 sigma: float = SIGMA, block: int = DEFAULT_BLOCK, skip_blocks: int = 0,
                 version: str = "v2") -> list[int]:
    """Counts of ``classifier(z + sigma * noise)`` over ``num`` canonical noise samples of stream ``key``,
    starting at block ``skip_blocks``, the plain way."""
    shape = tuple(z.shape[1:])
    draw_shape = (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape
    gen = stream_generator(key)
    blocks = [torch.empty((block, *draw_shape)).normal_(generator=gen if version == "v1" else block_generator(key, b))
              for b in range(skip_blocks + math.ceil(num / block))]
    noise = torch.cat(blocks[skip_blocks:])[:num]
    if len(shape) == 3:
        noise = noise.permute(0, 3, 1, 2)
    noise = noise.contiguous()
    counts = [0] * NUM_CLASSES
    with torch.no_grad():
        for i in range(0, num, batch_size):
            batch = noise[i : i + batch_size] * sigma + z
            for p in classifier(batch).argmax(1).tolist():
                counts[p] += 1
    return counts


def _pair(fors: int, fold: bool = False, version: str = "v2"):
    """(engine smoother with channels_last, plain contiguous copy of the model), random weights.

    With ``fold`` both sides use the BatchNorm-folded network, as ``bench run --fold-bn`` does: the folded
    network is the base classifier, and the engine must count exactly what a plain loop over it counts.
    """
    torch.manual_seed(1234 + fors)
    model = resnet18(NUM_CLASSES, fors, width=8, in_size=16, in_channels=3).eval()
    if fold:
        model = fold_batchnorm(model)
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    model = model.to(memory_format=torch.channels_last)
    if fors == 0:
        smoother: LatentSmooth = Smooth(model, NUM_CLASSES, SIGMA, fold_bn=fold, channels_last=True,
                                        noise_version=version)
    else:
        smoother = LatentSmooth(model.encoder, model.classifier, NUM_CLASSES, SIGMA, model.encoder_lipschitz,
                                fold_bn=fold, channels_last=True, noise_version=version)
    return smoother, plain


@pytest.mark.parametrize("version", NOISE_STREAMS)
@pytest.mark.parametrize("fors,fold", [(0, False), (5, False), (9, False), (13, False), (0, True), (9, True)])
def test_engine_counts_equal_plain_loop(fors: int, fold: bool, version: str) -> None:
    smoother, plain = _pair(fors, fold, version)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z = plain.encoder(x.unsqueeze(0))
    num, seed = 500, 99
    expected = plain_counts(plain.classifier, z, num, 37, seed, version=version)
    assert sum(c > 0 for c in expected) >= 2, "a degenerate classifier would make the comparison vacuous"
    for batch_size in (100, 256):
        got = smoother.sample_counts(smoother.encode(x), num, batch_size, seed)
        assert got.tolist() == expected


@pytest.mark.parametrize("version", NOISE_STREAMS)
@pytest.mark.parametrize("fors", [0, 9])
def test_certify_counts_equal_plain_loop(fors: int, version: str) -> None:
    smoother, plain = _pair(fors, version=version)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        z = plain.encoder(x.unsqueeze(0))
    cert = smoother.certify(x, 100, 500, 0.001, 128, generator=2024)
    key = certificate_key(2024, "certify", x, version)
    assert key == ((2024, "certify") if version == "v1" else (2024, "certify", key[2]))
    assert list(cert.counts_selection) == plain_counts(plain.classifier, z, 100, 64, key, version=version)
    # selection used blocks 0 and 1 (100 of 128 samples): estimation starts at block 2
    assert list(cert.counts_estimation) == plain_counts(plain.classifier, z, 500, 64, key, skip_blocks=2,
                                                        version=version)



# ---------------------------------------------------------------------------- the default (fast) path
def _state(module: torch.nn.Module) -> dict:
    """Everything of ``module`` the smoother must leave alone: values, strides and training flags."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {
        "values": {k: v.detach().clone() for k, v in tensors.items()},
        "strides": {k: v.stride() for k, v in tensors.items()},
        "ptrs": {k: v.data_ptr() for k, v in tensors.items()},
        "training": [m.training for m in module.modules()],
        "types": [type(m) for m in module.modules()],
    }


def _assert_same_state(module: torch.nn.Module, before: dict) -> None:
    after = _state(module)
    assert after["types"] == before["types"] and after["training"] == before["training"]
    assert after["strides"] == before["strides"] and after["ptrs"] == before["ptrs"]
    assert set(after["values"]) == set(before["values"])
    assert all(torch.equal(after["values"][k], v) for k, v in before["values"].items())


@pytest.mark.parametrize("fors", [0, 9])
def test_default_path_folds_a_private_channels_last_copy(fors: int) -> None:
    """``Smooth(model, k, sigma)`` / ``LatentSmooth(...)`` with no options evaluate a folded, channels_last copy
    made once; the caller's module keeps its parameters, buffers, memory format and training flag."""
    torch.manual_seed(77 + fors)
    model = resnet18(NUM_CLASSES, fors, width=8, in_size=16, in_channels=3).eval()
    target = model if fors == 0 else model.classifier
    before = _state(model)
    smoother = (Smooth(model, NUM_CLASSES, SIGMA) if fors == 0 else
                LatentSmooth(model.encoder, model.classifier, NUM_CLASSES, SIGMA, model.encoder_lipschitz))
    engine = smoother.classifier
    assert engine is not target
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in engine.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in target.modules())
    convs = [m.weight for m in engine.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    smoother.certify(x, 50, 300, 0.001, 64, generator=11)
    assert smoother.classifier is engine, "the private copy is made once per smoother"
    _assert_same_state(model, before)


def test_default_path_leaves_a_training_mode_module_alone() -> None:
    """A module in training mode is certified in its eval-mode function, on a private copy (with a warning);
    the caller's module is untouched by construction and certification (flags, values, memory format)."""
    torch.manual_seed(3)
    model = resnet18(NUM_CLASSES, 0, width=8, in_size=16, in_channels=3).train()
    before = _state(model)
    with pytest.warns(UserWarning, match="training mode"):
        smoother = Smooth(model, NUM_CLASSES, SIGMA)
    assert smoother.classifier is not model
    assert not any(m.training for m in smoother.classifier.modules())
    smoother.certify(torch.rand(3, 16, 16), 8, 16, 0.01, 8, generator=0)
    _assert_same_state(model, before)


@pytest.mark.parametrize("fors", [0, 9, 13])
def test_default_path_counts_match_the_unfolded_path(fors: int) -> None:
    """The folded channels_last copy computes the caller's function up to rounding: on a seed, logits agree to
    float tolerance and CERTIFY gives the counts and radius of the plain path (no fold, NCHW)."""
    torch.manual_seed(3)  # a seed whose predictions spread over several classes (checked below)
    model = resnet18(NUM_CLASSES, fors, width=8, in_size=16, in_channels=3).eval()
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():  # non-trivial BatchNorm statistics, so that folding changes the weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.copy_(torch.empty_like(m.running_var).uniform_(0.5, 2.0, generator=gen))
            m.weight.data.uniform_(0.5, 1.5, generator=gen)

    def make(**kw) -> LatentSmooth:
        if fors == 0:
            return Smooth(model, NUM_CLASSES, 1.0, **kw)
        return LatentSmooth(model.encoder, model.classifier, NUM_CLASSES, 1.0, model.encoder_lipschitz, **kw)

    fast, plain = make(), make(fold_bn=False, channels_last=False)
    assert plain.classifier is (model if fors == 0 else model.classifier)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(9))
    z = fast.encode(x)
    probe = z + torch.randn((64, *z.shape[1:]), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fast.classifier(probe.contiguous(memory_format=torch.channels_last)),
                                   plain.classifier(probe), rtol=1e-4, atol=1e-4)
    a = fast.certify(x, 100, 500, 0.001, 200, generator=2025)
    b = plain.certify(x, 100, 500, 0.001, 200, generator=2025)
    assert sum(c > 0 for c in b.counts_estimation) >= 2, "a degenerate classifier would make the check vacuous"
    assert (a.counts_selection, a.counts_estimation) == (b.counts_selection, b.counts_estimation)
    assert (a.prediction, a.radius) == (b.prediction, b.radius)


def test_encode_runs_on_one_cpu_thread_and_restores_the_count() -> None:
    """The one-image encoder runs with one torch thread on CPU; the caller's thread count comes back."""
    seen: list[int] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return x.flatten(1)

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        smoother = LatentSmooth(Probe(), torch.nn.Linear(12, NUM_CLASSES), NUM_CLASSES, SIGMA, 1.0,
                                trust_lipschitz=True)
        seen.clear()  # the probe pass of the bound
        z = smoother.encode(torch.rand(3, 2, 2))
        assert seen == [1] and torch.get_num_threads() == 2
        assert z.shape == (1, 12)
    finally:
        torch.set_num_threads(old)
