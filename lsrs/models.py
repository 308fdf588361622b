"""Paired baseline / orthogonal-encoder models, each a :class:`Split` ``classifier(encoder(x))``.

``fors=0`` is the plain baseline (encoder = identity, L = 1, so LS-RS equals IS-RS). ``fors=k > 0`` makes
the first ``k`` weighted layers (stem conv plus the first residual blocks) 1-Lipschitz (paper Section 4,
Figure 3): the stem becomes a semi-orthogonal :class:`~lsrs.layers.CayleyConv2d` + MaxMin and each block
an orthogonal residual block; everything after the latent ``z`` is the baseline's own layers (BatchNorm
allowed there). The encoder is composed of atoms with Lipschitz constant at most 1 (circular Cayley convs,
MaxMin, pixel-unshuffle, mean subtraction, convex residuals), so ``encoder_lipschitz = 1`` is a proof by
composition, checked numerically by :func:`lsrs.lipschitz.audit`. No std division is ever part of an
encoder; feed raw pixels in [0, 1] (optionally mean-subtracted via ``mean``, a translation).

FoR counting:

* ResNet18 (CIFAR variant): 18 = stem + 16 block convs + linear. ``fors = 1 + 2K`` for the first
  ``K = 0..8`` blocks: 1, 3, ..., 17; the paper's 1/18, 5/18, 9/18, 13/18 are K = 0, 2, 4, 6.
  ``fors = 18`` is the fully orthogonal *Lipschitz twin*: stem, all 8 blocks, a 1-Lipschitz global pool
  (:class:`~lsrs.lipschitz_layers.NormPool`) and a semi-orthogonal head
  (:class:`~lsrs.lipschitz_layers.OrthogonalLinear`); the encoder is the whole network (the logits are
  1-Lipschitz in the input), the classifier the identity. It is certified deterministically from its
  logit margin (:func:`lsrs.margin.lipschitz_certify`), not by smoothing.
* WRN-34 (Zagoruyko & Komodakis 2016, pre-activation, depth 6N+4 with N = 5): 34 = stem + 30 block convs
  + the 2 stride-2 projection shortcuts + linear (the naming convention of WRN-d-k; the width-changing
  1x1 shortcut of group 1 is not counted). A block adds 2, or 3 when it carries a stride-2 projection, so
  ``valid_fors("wide_resnet34") = 0, 1, 3, 5, 7, 9, 11, 14, 16, 18, 20, 22, 25, 27, 29, 31, 33``. The paper's
  ImageNet 16/34 is the stem, all of group 1 and the first two blocks of group 2 (latent
  ``2*base_width*widen x in_size/(2*stem_stride)``), the analogue of ResNet18's 9/18.

Each builder is registered in :mod:`lsrs.architectures` with what the harness reads about it (valid FoRs,
latent shapes, the Lipschitz twin's FoR, per-dataset defaults, foldable BatchNorm pairs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from lsrs.architectures import ANY_DATASET, get_architecture, register_architecture
from lsrs.layer_counts import RESNET18_LAYERS
from lsrs.layers import CayleyConv2d, ConvexResidual, MaxMin, MeanShift
from lsrs.lipschitz_layers import NormPool, OrthogonalLinear
from lsrs.proofs import LayerProof, ProofContext, compose

__all__ = [
    "Split",
    "build_model",
    "fors_total",
    "is_lipschitz_twin",
    "resnet18",
    "valid_fors",
    "wide_resnet34",
]

_WRN_DEPTH_BLOCKS = 5  # (34 - 4) / 6


class Split(nn.Module):
    """A classifier split at the latent ``z``: ``forward(x) = classifier(encoder(x))``.

    ``encoder_lipschitz`` is a declared, proven upper bound on the l2 Lipschitz constant of ``encoder``
    from the raw input to ``z`` (Theorem 1 divides the latent radius by it). ``latent_shape`` is ``z``'s
    (C, H, W) at ``config["in_size"]``; ``config`` rebuilds the model via ``build_model(arch, **config)``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        classifier: nn.Module,
        *,
        arch: str,
        fors: int,
        fors_total: int,
        encoder_lipschitz: float,
        latent_shape: tuple[int, ...],
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier
        self.arch = arch
        self.fors = int(fors)
        self.fors_total = int(fors_total)
        self.encoder_lipschitz = float(encoder_lipschitz)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.config = dict(config)

    def lipschitz_proof(self, ctx: ProofContext, path: str) -> LayerProof:
        """``classifier o encoder``, what :meth:`forward` runs: proven as that composition
        (:func:`lsrs.proofs.compose`); a subclass that changes ``forward`` gets no proof."""
        return compose(ctx, path, (("encoder", self.encoder), ("classifier", self.classifier)))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.encoder(x))

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch}, fors={self.fors}/{self.fors_total}, latent_shape={self.latent_shape}, "
            f"encoder_lipschitz={self.encoder_lipschitz}"
        )


# ---------------------------------------------------------------------------- shared pieces
def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _init_standard(module: nn.Module) -> None:
    """torchvision's ResNet init: Kaiming-normal (fan_out) convs, unit BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class OrthogonalBlock(nn.Sequential):
    """1-Lipschitz residual block: ``MaxMin(alpha * main(x) + (1 - alpha) * skip(x))``.

    ``main`` = CayleyConv(stride) -> MaxMin -> CayleyConv; ``skip`` = identity, or (for a change of
    stride / width) pixel-unshuffle + semi-orthogonal 1x1 CayleyConv. Every piece is 1-Lipschitz, hence
    so is the block.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        main = nn.Sequential(CayleyConv2d(c_in, c_out, 3, stride), MaxMin(), CayleyConv2d(c_out, c_out, 3))
        skip = None if (c_in == c_out and stride == 1) else CayleyConv2d(c_in, c_out, 1, stride)
        super().__init__(OrderedDict(residual=ConvexResidual(main, skip), act=MaxMin()))


class OrthogonalStem(nn.Sequential):
    """Semi-orthogonal ``in -> width`` CayleyConv (column-orthonormal: an isometry when width >= in*s^2)
    followed by MaxMin; Lipschitz 1."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(OrderedDict(conv=CayleyConv2d(c_in, c_out, 3, stride), act=MaxMin()))


def _check_common(num_classes: int, in_channels: int, in_size: int, mean: Sequence[float] | None) -> list | None:
    for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("in_size", in_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if mean is None:
        return None
    mean = [float(m) for m in mean]
    if len(mean) != in_channels:
        raise ValueError(f"mean has {len(mean)} entries but in_channels={in_channels}")
    return mean


def _check_width(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer >= 2 (MaxMin pairs channels), got {value!r}")


def _assemble(
    arch: str,
    fors: int,
    fors_total: int,
    n_ortho_blocks: int,
    shift: nn.Module | None,
    stems: tuple[nn.Module, nn.Module],
    blocks: list[tuple[nn.Module, nn.Module]],
    head: nn.Module,
    shapes: list[tuple[int, int, int]],
    in_shape: tuple[int, int, int],
    config: dict[str, Any],
) -> Split:
    """Cut the (baseline, orthogonal) stage pairs at the FoR: orthogonal stages form the encoder."""
    if fors == 0:
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        if shift is not None:
            parts["shift"] = shift
        parts["stem"] = stems[0]
        for i, (base, _) in enumerate(blocks, 1):
            parts[f"block{i}"] = base
        parts["head"] = head
        return Split(
            nn.Identity(), nn.Sequential(parts), arch=arch, fors=0, fors_total=fors_total,
            encoder_lipschitz=1.0, latent_shape=in_shape, config=config,
        )
    enc: OrderedDict[str, nn.Module] = OrderedDict()
    if shift is not None:
        enc["shift"] = shift
    enc["stem"] = stems[1]
    cls: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (base, ortho) in enumerate(blocks, 1):
        if i <= n_ortho_blocks:
            enc[f"block{i}"] = ortho
        else:
            cls[f"block{i}"] = base
    cls["head"] = head
    return Split(
        nn.Sequential(enc), nn.Sequential(cls), arch=arch, fors=fors, fors_total=fors_total,
        encoder_lipschitz=1.0, latent_shape=shapes[n_ortho_blocks], config=config,
    )


# ---------------------------------------------------------------------------- ResNet18
class BasicBlock(nn.Module):
    """Standard ResNet basic block (He et al. 2016): conv-BN-ReLU-conv-BN + shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _resnet18_plan(width: int) -> list[tuple[int, int, int]]:
    widths = [width, 2 * width, 4 * width, 8 * width]
    plan, c = [], width
    for stage, w in enumerate(widths):
        for j in range(2):
            stride = 2 if (stage > 0 and j == 0) else 1
            plan.append((c, w, stride))
            c = w
    return plan


def _resnet18_shapes(width: int, in_size: int) -> list[tuple[int, int, int]]:
    """Shape after the stem and after each of the 8 blocks."""
    shapes, n = [(width, in_size, in_size)], in_size
    for _, co, s in _resnet18_plan(width):
        n //= s
        shapes.append((co, n, n))
    return shapes


def _resnet18_latents(config: dict[str, Any]) -> dict[int, tuple[int, ...]]:
    """Latent shape per FoR: the input (0), after the stem and K blocks (1 + 2K), the logits (18)."""
    shapes = _resnet18_shapes(int(config["width"]), int(config["in_size"]))
    out: dict[int, tuple[int, ...]] = {0: (int(config["in_channels"]), *shapes[0][1:])}
    out.update({1 + 2 * k: shapes[k] for k in range(9)})
    out[18] = (int(config["num_classes"]),)
    return out


@register_architecture(
    "resnet18", fors=(0, *range(1, RESNET18_LAYERS, 2), RESNET18_LAYERS), fors_total=RESNET18_LAYERS,
    lipschitz_fors=RESNET18_LAYERS, paper_fors=9,
    paper_dataset="cifar10", width_param="width",
    defaults={ANY_DATASET: {"width": 64}, "digits": {"width": 8}},
    latent_shapes=_resnet18_latents,
    batchnorm_pairs=((BasicBlock, "conv1", "bn1"), (BasicBlock, "conv2", "bn2")),
)
def resnet18(
    num_classes: int = 10,
    fors: int = 0,
    width: int = 64,
    in_size: int = 32,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
) -> Split:
    """ResNet18 for CIFAR-sized inputs (3x3 stride-1 stem, widths w, 2w, 4w, 8w) split at FoR ``fors``/18.

    ``fors=0``: the standard network, encoder = identity. ``fors = 1 + 2K``: orthogonal stem and first
    ``K`` blocks in the encoder. Latent at 32x32 and width 64: FoR 1, 3, 5 -> 64x32x32; 7, 9 -> 128x16x16;
    11, 13 -> 256x8x8; 15, 17 -> 512x4x4. ``fors=18``: every layer orthogonal (:func:`_lipschitz_resnet18`).
    ``in_size`` must be divisible by 8.
    """
    mean = _check_common(num_classes, in_channels, in_size, mean)
    _check_width("width", width)
    get_architecture("resnet18").check_fors(fors)
    if in_size % 8:
        raise ValueError(f"in_size must be divisible by 8 (three stride-2 stages), got {in_size}")
    config = dict(num_classes=num_classes, fors=fors, width=width, in_size=in_size, in_channels=in_channels, mean=mean)

    plan = _resnet18_plan(width)
    if fors == get_architecture("resnet18").lipschitz_fors:
        return _lipschitz_resnet18(plan, config)
    base_stem = nn.Sequential(_conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    k = (fors - 1) // 2 if fors else 0
    blocks = []
    for i, (ci, co, s) in enumerate(plan):
        ortho = OrthogonalBlock(ci, co, s) if (fors and i < k) else None
        blocks.append((BasicBlock(ci, co, s), ortho))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, num_classes))
    for m in (base_stem, head, *(b for b, _ in blocks)):
        _init_standard(m)
    shapes = _resnet18_shapes(width, in_size)
    shift = MeanShift(mean) if mean is not None else None
    ortho_stem = OrthogonalStem(in_channels, width) if fors else None
    return _assemble(
        "resnet18", fors, 18, k, shift, (base_stem, ortho_stem), blocks, head, shapes,
        (in_channels, in_size, in_size), config,
    )


def _lipschitz_resnet18(plan: list[tuple[int, int, int]], config: dict[str, Any]) -> Split:
    """FoR 18/18: MeanShift? -> OrthogonalStem -> 8 OrthogonalBlocks -> NormPool -> OrthogonalLinear.

    Every stage is 1-Lipschitz (translation, Cayley convs + MaxMin, convex residuals, Cauchy-Schwarz for
    the pool, orthonormal rows for the head), so the whole network is: ``encoder_lipschitz = 1`` bounds the
    logits' Lipschitz constant, and :func:`lsrs.lipschitz.proven_bound` recomputes it from the operators.
    """
    width, in_channels = config["width"], config["in_channels"]
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    if config["mean"] is not None:
        parts["shift"] = MeanShift(config["mean"])
    parts["stem"] = OrthogonalStem(in_channels, width)
    for i, (ci, co, s) in enumerate(plan, 1):
        parts[f"block{i}"] = OrthogonalBlock(ci, co, s)
    parts["pool"] = NormPool()
    parts["head"] = OrthogonalLinear(plan[-1][1], config["num_classes"])
    return Split(
        nn.Sequential(parts), nn.Identity(), arch="resnet18", fors=18, fors_total=18, encoder_lipschitz=1.0,
        latent_shape=(config["num_classes"],), config=config,
    )


# ---------------------------------------------------------------------------- WRN-34
class WideBasic(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis 2016): BN-ReLU-conv-BN-ReLU-conv + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv2(self.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


def _wrn_plan(base_width: int, widen: int) -> list[tuple[int, int, int]]:
    plan, c = [], base_width
    for g, w in enumerate((base_width * widen, 2 * base_width * widen, 4 * base_width * widen)):
        for j in range(_WRN_DEPTH_BLOCKS):
            stride = 2 if (g > 0 and j == 0) else 1
            plan.append((c, w, stride))
            c = w
    return plan


def _wrn_cumulative_fors() -> list[int]:
    """FoR after the stem and after each of the 15 blocks (a stride-2 block also counts its projection)."""
    out, total = [1], 1
    for _, _, s in _wrn_plan(2, 1):
        total += 2 + (1 if s == 2 else 0)
        out.append(total)
    return out


def _wrn_shapes(base_width: int, widen: int, in_size: int, stem_stride: int) -> list[tuple[int, int, int]]:
    """Shape after the stem and after each of the 15 blocks."""
    n = in_size // stem_stride
    shapes = [(base_width, n, n)]
    for _, co, s in _wrn_plan(base_width, widen):
        n //= s
        shapes.append((co, n, n))
    return shapes


def _wrn_latents(config: dict[str, Any]) -> dict[int, tuple[int, ...]]:
    """Latent shape per FoR: the input (0), then after the stem and each block (:func:`_wrn_cumulative_fors`)."""
    in_size = int(config["in_size"])
    shapes = _wrn_shapes(int(config["base_width"]), int(config["widen"]), in_size, int(config["stem_stride"]))
    out: dict[int, tuple[int, ...]] = {0: (int(config["in_channels"]), in_size, in_size)}
    out.update(zip(_wrn_cumulative_fors(), shapes, strict=True))
    return out


@register_architecture(
    "wide_resnet34", fors=(0, *_wrn_cumulative_fors()), fors_total=34, paper_fors=16, paper_dataset="imagenet",
    width_param="widen",
    # WRN-34-2 on ImageNet at 224x224 with a pixel-unshuffle stem of stride 4 (paper, Appendix A: widen 2 for
    # both twins); WRN-34-10 at the input's own resolution elsewhere
    defaults={ANY_DATASET: {"widen": 10, "stem_stride": 1}, "imagenet": {"widen": 2, "stem_stride": 4}},
    latent_shapes=_wrn_latents,
    batchnorm_pairs=((WideBasic, "conv1", "bn2"),),  # pre-activation block: conv1 -> bn2 -> relu -> conv2
)
def wide_resnet34(
    num_classes: int = 1000,
    fors: int = 0,
    widen: int = 10,
    base_width: int = 16,
    in_size: int = 64,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    stem_stride: int = 1,
) -> Split:
    """WRN-34-``widen`` (pre-activation, groups of 5 blocks at widths ``b*widen``, ``2b*widen``, ``4b*widen``).

    ``fors`` counts over 34 layers (see the module docstring); the paper's ImageNet 16/34 keeps the stem,
    group 1 and two blocks of group 2 in the encoder. ``stem_stride`` (1, 2 or 4) starts both twins with a
    pixel-unshuffle (for full-resolution ImageNet: ``in_size=224, stem_stride=4``); ``in_size`` must be
    divisible by ``4 * stem_stride``.
    """
    mean = _check_common(num_classes, in_channels, in_size, mean)
    _check_width("base_width", base_width)
    if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1:
        raise ValueError(f"widen must be an integer >= 1, got {widen!r}")
    if stem_stride not in (1, 2, 4):
        raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride!r}")
    get_architecture("wide_resnet34").check_fors(fors)
    if in_size % (4 * stem_stride):
        raise ValueError(f"in_size must be divisible by {4 * stem_stride} (stem stride x two stride-2 groups)")
    config = dict(
        num_classes=num_classes, fors=fors, widen=widen, base_width=base_width, in_size=in_size,
        in_channels=in_channels, mean=mean, stem_stride=stem_stride,
    )
    plan = _wrn_plan(base_width, widen)
    if stem_stride == 1:
        base_stem: nn.Module = _conv3x3(in_channels, base_width)
    else:
        base_stem = nn.Sequential(nn.PixelUnshuffle(stem_stride), _conv3x3(in_channels * stem_stride**2, base_width))
    k = _wrn_cumulative_fors().index(fors) if fors else 0
    blocks = []
    for i, (ci, co, s) in enumerate(plan):
        ortho = OrthogonalBlock(ci, co, s) if (fors and i < k) else None
        blocks.append((WideBasic(ci, co, s), ortho))
    c_last = plan[-1][1]
    head = nn.Sequential(
        nn.BatchNorm2d(c_last), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_last, num_classes)
    )
    for m in (base_stem, head, *(b for b, _ in blocks)):
        _init_standard(m)
    shapes = _wrn_shapes(base_width, widen, in_size, stem_stride)
    shift = MeanShift(mean) if mean is not None else None
    ortho_stem = OrthogonalStem(in_channels, base_width, stem_stride) if fors else None
    return _assemble(
        "wide_resnet34", fors, 34, k, shift, (base_stem, ortho_stem), blocks, head, shapes,
        (in_channels, in_size, in_size), config,
    )


# ---------------------------------------------------------------------------- registry lookups
def valid_fors(arch: str) -> tuple[int, ...]:
    """The FoR values ``k`` (of ``k/fors_total``) a builder accepts, 0 (the baseline) first."""
    return tuple(get_architecture(arch).fors)


def is_lipschitz_twin(model: nn.Module) -> bool:
    """True for a fully orthogonal twin (``fors`` = its architecture's ``lipschitz_fors``), certified by its margin."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, str):
        return False
    try:
        lip = get_architecture(arch).lipschitz_fors
    except ValueError:
        return False
    return lip is not None and int(getattr(model, "fors", -1)) == lip


def build_model(arch: str, **config: Any) -> Split:
    """Build ``arch`` from keyword arguments, e.g. a :attr:`Split.config` read back from a checkpoint."""
    return get_architecture(arch).build(**config)


def fors_total(arch: str) -> int:
    """The denominator of FoR for ``arch``: 18 for ResNet18, 34 for WRN-34."""
    return get_architecture(arch).fors_total
