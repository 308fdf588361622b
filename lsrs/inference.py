"""Inference-time rewrites of a trained network that keep the function it computes.

``fold_batchnorm`` folds each eval-mode BatchNorm that directly follows a convolution into that convolution
(w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta), as inference engines do.
The folded network computes the same function up to floating-point rounding; as a base classifier for
randomized smoothing it is exactly as valid as the original (the certificate is a statement about the
classifier that is actually evaluated, and the run records which one it was). Only layers *after* the latent
z are affected: the orthogonal encoder contains no BatchNorm.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lsrs.models import BasicBlock, WideBasic


def _fuse_pair(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every conv→BatchNorm pair folded into one conv."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                _fuse_pair(module, a, b)
        elif isinstance(module, BasicBlock):
            _fuse_pair(module, "conv1", "bn1")
            _fuse_pair(module, "conv2", "bn2")
        elif isinstance(module, WideBasic):
            _fuse_pair(module, "conv1", "bn2")  # pre-activation block: conv1 -> bn2 -> relu -> conv2
    return folded
