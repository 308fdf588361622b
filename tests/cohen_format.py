"""Files in Cohen et al.'s (2019, ``locuslab/smoothing``) formats, built by the tests themselves.

The module layout below is written from their published description (``Sequential(NormalizeLayer, net)``;
a CIFAR ResNet with basic blocks whose projection shortcut is ``downsample``; the normalisation's statistics
held as plain tensor attributes, so they are not in the state dict), independently of
:mod:`lsrs.cohen_models`, so that a test compares two implementations.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class PeerNormalize(nn.Module):
    """Standardisation whose statistics are plain attributes (no state-dict entries), broadcast by hand."""

    def __init__(self, means: list[float], sds: list[float]) -> None:
        super().__init__()
        self.means = torch.tensor(means)
        self.sds = torch.tensor(sds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        means = self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        sds = self.sds.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        return (x - means) / sds


class PeerBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class PeerCifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._layer(16, n, 1)
        self.layer2 = self._layer(32, n, 2)
        self.layer3 = self._layer(64, n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [PeerBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        layers += [PeerBlock(planes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.avgpool(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.view(x.size(0), -1))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrong mapping changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            m.num_batches_tracked.fill_(7)
    return model


def peer_cifar_model(depth: int = 20, seed: int = 0) -> nn.Sequential:
    """``Sequential(NormalizeLayer, cifar ResNet)`` in eval mode, as their ``get_architecture`` builds it."""
    torch.manual_seed(seed)
    net = randomise_batchnorm(PeerCifarResNet(depth), seed)
    return nn.Sequential(PeerNormalize(CIFAR_MEAN, CIFAR_STD), net).eval()


class PeerDataParallel(nn.Module):
    """``nn.DataParallel``'s state-dict layout (the wrapped net under ``module.``) without its device placement.

    ``nn.DataParallel`` moves its net to ``cuda:0`` whenever a GPU is present, which breaks a meta-device
    model and a CPU comparison; its state dict is the wrapped net's under the ``module.`` prefix, as here.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def peer_imagenet_model(device: str = "cpu") -> nn.Sequential:
    """``Sequential(NormalizeLayer, DataParallel(resnet50()))``: keys start with ``1.module.``."""
    from torchvision.models import resnet50

    with torch.device(device):
        net = resnet50(weights=None)
    return nn.Sequential(PeerNormalize(IMAGENET_MEAN, IMAGENET_STD), PeerDataParallel(net)).eval()


def save_like_train_py(model: nn.Module, arch: str, path: Path, epoch: int = 90, **extra: object) -> Path:
    """``torch.save`` the dict their ``train.py`` writes each epoch: epoch, arch, state_dict, optimizer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    torch.save({"epoch": epoch, "arch": arch, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                **extra}, path)
    return path


LOG_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def write_log(path: Path, lines: list[tuple[int, int, int, float, str]], truncated_tail: str | None = None) -> Path:
    """A certify log: ``(idx, label, predict, radius, time text)`` per line, ``correct`` as their code computes it,
    radius printed with ``{:.3}``; ``truncated_tail`` is appended without a newline (a killed write)."""
    text = LOG_HEADER + "".join(
        f"{i}\t{lab}\t{p}\t{r:.3}\t{int(p == lab)}\t{t}\n" for i, lab, p, r, t in lines
    )
    path.write_text(text + (truncated_tail or ""), encoding="utf-8")
    return path
