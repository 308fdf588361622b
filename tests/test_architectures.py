"""The architecture registry: one record per architecture, read by every caller (issue 24)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lsrs.architectures import ArchitectureError, get_architecture, list_architectures, register_architecture
from lsrs.datasets import get_dataset
from lsrs.models import Split, build_model, valid_fors


def test_builtins_are_registered_with_their_for_counting():
    assert {"resnet18", "wide_resnet34"} <= set(list_architectures())
    r18, wrn = get_architecture("resnet18"), get_architecture("wide_resnet34")
    assert (r18.fors_total, r18.lipschitz_fors, r18.paper_fors, r18.width_param) == (18, 18, 9, "width")
    assert (wrn.fors_total, wrn.lipschitz_fors, wrn.paper_fors, wrn.width_param) == (34, None, 16, "widen")
    assert r18.source == "lsrs.models:resnet18"
    with pytest.raises(ArchitectureError, match="known: .*resnet18"):
        get_architecture("vgg")
    with pytest.raises(ArchitectureError, match="valid: 0,1,3"):
        r18.check_fors(2)


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("resnet18", dict(num_classes=7, width=4, in_size=16, in_channels=1)),
        ("wide_resnet34", dict(num_classes=3, widen=1, base_width=2, in_size=32, stem_stride=2)),
    ],
)
def test_latent_shapes_are_those_the_built_encoders_produce(arch: str, config: dict) -> None:
    """Oracle: the shape of encoder(x) of the model actually built at every FoR."""
    record = get_architecture(arch)
    x = torch.rand(1, config["in_channels"] if "in_channels" in config else 3, config["in_size"], config["in_size"])
    for fors in record.fors:
        model = build_model(arch, **config, fors=fors).eval()
        with torch.no_grad():
            z = model.encoder(x)
        assert record.latent_shape(fors, model.config) == tuple(z.shape[1:]) == model.latent_shape


def test_imagenet_default_is_wrn34_2_at_224_with_a_stride4_stem():
    """Paper, Appendix A: WRN-34 with widen factor 2 for both twins; FoR 16 is the stem, group 1 and two blocks
    of group 2: latent 2*16*2 channels at 224 / (4 * 2) = 28 pixels."""
    info = get_dataset("imagenet")
    record = get_architecture(info.default_arch)
    config = record.config_for(info, 16)
    assert (record.name, config["widen"], config["stem_stride"], config["in_size"]) == ("wide_resnet34", 2, 4, 224)
    assert record.latent_shape(16, config) == (64, 28, 28)
    assert record.default_width("imagenet") == 2 and record.default_width("cifar10") == 10
    assert get_architecture("resnet18").default_width("digits") == 8
    assert get_architecture("resnet18").config_for(get_dataset("cifar10"), 9, width=16)["width"] == 16


def test_module_function_spec_and_registration_rules(tmp_path, monkeypatch):
    (tmp_path / "my_tiny_arch.py").write_text(
        "from torch import nn\n"
        "from lsrs.architectures import register_architecture\n"
        "from lsrs.models import Split\n"
        "@register_architecture('my_tiny', fors=(0,), fors_total=1, paper_fors=0)\n"
        "def build(num_classes=10, fors=0, in_size=8, in_channels=1, mean=None, width=4):\n"
        "    head = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * in_size * in_size, num_classes))\n"
        "    return Split(nn.Identity(), head, arch='my_tiny', fors=0, fors_total=1, encoder_lipschitz=1.0,\n"
        "                 latent_shape=(in_channels, in_size, in_size), config=dict(num_classes=num_classes,\n"
        "                 fors=fors, in_size=in_size, in_channels=in_channels, mean=mean, width=width))\n"
        "def not_registered(**kw):\n"
        "    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    record = get_architecture("my_tiny_arch:build")
    assert record.name == "my_tiny" and get_architecture("my_tiny") is record
    assert isinstance(build_model("my_tiny", num_classes=3), Split) and valid_fors("my_tiny") == (0,)
    with pytest.raises(ArchitectureError, match="not a registered architecture"):
        get_architecture("my_tiny_arch:not_registered")
    with pytest.raises(ArchitectureError, match="cannot load architecture 'no_such_module:f'"):
        get_architecture("no_such_module:f")
    with pytest.raises(ArchitectureError, match="already registered"):
        register_architecture("resnet18", fors=(0,), fors_total=1, paper_fors=0)(lambda **kw: None)
    with pytest.raises(ArchitectureError, match="must start with 0"):
        register_architecture("bad_fors", fors=(1, 2), fors_total=2, paper_fors=1)(lambda **kw: None)


def test_importing_the_registry_does_not_import_torch():
    code = "import lsrs.architectures, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
