"""Inference-time rewrites of a trained network that keep the function it computes.

``fold_batchnorm`` folds each eval-mode BatchNorm that directly follows a convolution into that convolution
(w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta), as inference engines do.
The folded network computes the same function up to floating-point rounding; as a base classifier for
randomized smoothing it is exactly as valid as the original (the certificate is a statement about the
classifier that is actually evaluated, and the run records which one it was). Only layers *after* the latent
z are affected: the orthogonal encoder contains no BatchNorm.

``inference_copy`` is the one place that decides how the certification engine runs a base classifier:
folded and in ``channels_last`` memory by default (the fastest sound configuration on CPU, as
``bench/perf/speed.py`` measures), each rewrite optional, on a private copy so that the caller's module is never altered.
:func:`prefers_channels_last` is the one place that picks the memory format of a batch when the caller leaves it
to the engine.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lsrs.architectures import get_architecture, list_architectures


def _fuse_pair(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d:  # exact classes: the same function once fused
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every conv→BatchNorm pair folded into one conv: consecutive
    children of an ``nn.Sequential``, and the pairs each architecture's record names for its blocks
    (:attr:`lsrs.architectures.Architecture.batchnorm_pairs`)."""
    folded = copy.deepcopy(model).eval()
    pairs = _batchnorm_pairs(model)
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                _fuse_pair(module, a, b)
        for block, conv, bn in pairs:
            if type(module) is block:  # exact class: a subclass may run another forward
                _fuse_pair(module, conv, bn)
    return folded.eval()  # the fused convs and the Identity placeholders too


def _batchnorm_pairs(model: nn.Module) -> list[tuple[type, str, str]]:
    """The foldable (block, conv, BatchNorm) pairs of ``model``'s architecture, or of every loaded one when
    ``model`` does not say (a bare classifier half); plugins that are not loaded add nothing."""
    arch = getattr(model, "arch", None)
    names = [arch] if isinstance(arch, str) else list_architectures()
    pairs: list[tuple[type, str, str]] = []
    for name in names:
        try:
            pairs.extend(get_architecture(name).batchnorm_pairs)
        except ValueError:
            continue
    return pairs


#: On the CPU, batches of feature maps with fewer pixels than this run in NCHW memory (:func:`prefers_channels_last`).
CHANNELS_LAST_MIN_AREA = 256


def prefers_channels_last(shape: tuple[int, ...] | torch.Size, device: torch.device) -> bool:
    """Whether a batch of ``shape`` (N, C, H, W) runs fastest in ``channels_last`` memory on ``device``.

    Yes on GPUs, and on the CPU for feature maps of at least :data:`CHANNELS_LAST_MIN_AREA` pixels (an input
    image, an early latent); no for the small maps of a deep split (8 x 8 and below), where the NCHW
    convolutions of the same classifier were faster on every CPU measured (the benchmarks page). The choice
    depends on the shape only, so every batch size, worker and resumed run evaluates the same copy.
    """
    if len(shape) != 4:
        return False
    return device.type != "cpu" or shape[2] * shape[3] >= CHANNELS_LAST_MIN_AREA


def is_training(model: nn.Module) -> bool:
    return any(m.training for m in model.modules())


def _foldable(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _not_channels_last(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return any(t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last) for t in tensors)


def inference_copy(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True) -> nn.Module:
    """The module the engine evaluates for ``model``: a private copy with BatchNorm folded (``fold_bn``) and
    4-D weights in ``channels_last`` memory (``channels_last``), or ``model`` itself when no rewrite applies.

    The caller's module (parameters, buffers, memory format, training flag) is never changed. Folding uses
    eval-mode statistics, so it is skipped (with a warning) for a module in training mode, whose BatchNorm
    would normalise each batch by its own statistics: that function is not the eval-mode one.
    """
    fold = fold_bn and _foldable(model)
    if fold and is_training(model):
        warnings.warn("the classifier is in training mode: BatchNorm is not folded (call .eval() first for "
                      "the fast path and batch-independent predictions)", stacklevel=3)
        fold = False
    to_cl = channels_last and _not_channels_last(model)
    if not (fold or to_cl):
        return model
    out = fold_batchnorm(model) if fold else copy.deepcopy(model)
    return out.to(memory_format=torch.channels_last) if channels_last else out
