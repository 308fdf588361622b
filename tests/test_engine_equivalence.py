"""The optimized fp32 engine and a plain loop give identical counts for the same seed (CPU).

The plain loop is written from the definition of the canonical noise (lsrs.noise): a stream is a sequence of
``normal_`` blocks of 64 samples drawn in order from one generator, ``stream_generator(key)``, in (H, W, C)
order. It makes each batch
a contiguous NCHW tensor ``noise * sigma + z``, runs a separate contiguous copy of the classifier under
``torch.no_grad`` and counts predictions one by one on the host. The engine draws into a reused
channels_last buffer, adds in place, runs a channels_last classifier under ``inference_mode`` and counts
with ``bincount`` on the device. CERTIFY's selection and estimation counts must match the plain loop's on
the first ``n0`` samples of the key ``(seed, "certify")`` and on the ``n`` samples from the next block on.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lsrs.inference import fold_batchnorm
from lsrs.models import resnet18
from lsrs.noise import DEFAULT_BLOCK, seed_from, stream_generator
from lsrs.smoothing import LatentSmooth, Smooth

SIGMA = 0.5
NUM_CLASSES = 10


def plain_counts(classifier: torch.nn.Module, z: torch.Tensor, num: int, batch_size: int, key: object,
                 sigma: float = SIGMA, block: int = DEFAULT_BLOCK, skip_blocks: int = 0) -> list[int]:
    """Counts of ``classifier(z + sigma * noise)`` over ``num`` canonical noise samples of stream ``key``,
    starting at block ``skip_blocks``, the plain way."""
    shape = tuple(z.shape[1:])
    draw_shape = (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape
    gen = stream_generator(key)
    blocks = [torch.empty((block, *draw_shape)).normal_(generator=gen)
              for _ in range(skip_blocks + math.ceil(num / block))]
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


def _pair(fors: int, fold: bool = False):
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
        smoother: LatentSmooth = Smooth(model, NUM_CLASSES, SIGMA, channels_last=True)
    else:
        smoother = LatentSmooth(model.encoder, model.classifier, NUM_CLASSES, SIGMA, model.encoder_lipschitz,
                                channels_last=True)
    return smoother, plain


@pytest.mark.parametrize("fors,fold", [(0, False), (5, False), (9, False), (13, False), (0, True), (9, True)])
def test_engine_counts_equal_plain_loop(fors: int, fold: bool) -> None:
    smoother, plain = _pair(fors, fold)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z = plain.encoder(x.unsqueeze(0))
    num, seed = 500, 99
    expected = plain_counts(plain.classifier, z, num, 37, seed)
    assert sum(c > 0 for c in expected) >= 2, "a degenerate classifier would make the comparison vacuous"
    for batch_size in (100, 256):
        got = smoother.sample_counts(smoother.encode(x), num, batch_size, seed)
        assert got.tolist() == expected


@pytest.mark.parametrize("fors", [0, 9])
def test_certify_counts_equal_plain_loop(fors: int) -> None:
    smoother, plain = _pair(fors)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        z = plain.encoder(x.unsqueeze(0))
    cert = smoother.certify(x, 100, 500, 0.001, 128, generator=2024)
    key = (seed_from(2024), "certify")
    assert list(cert.counts_selection) == plain_counts(plain.classifier, z, 100, 64, key)
    # selection used blocks 0 and 1 (100 of 128 samples): estimation starts at block 2
    assert list(cert.counts_estimation) == plain_counts(plain.classifier, z, 500, 64, key, skip_blocks=2)
