"""The Lipschitz-margin certifier (``lip``) certifies an architecture's own fully orthogonal twin, at the FoR its
record declares (``lipschitz_fors``), not ResNet18's: a user architecture with a Lipschitz twin at FoR 2 of 2 is
trained and certified by ``bench run --methods lip`` at FoR 2."""

from __future__ import annotations

import uuid

import pandas as pd
from click.testing import CliRunner
from torch import nn

from bench.cli.main import cli
from lsrs.architectures import register_architecture
from lsrs.layers import CayleyConv2d, MaxMin
from lsrs.lipschitz_layers import NormPool, OrthogonalLinear
from lsrs.models import Split

NAME = f"liptwin_{uuid.uuid4().hex[:8]}"


@register_architecture(NAME, fors=(0, 1, 2), fors_total=2, lipschitz_fors=2, paper_fors=1,
                       defaults={"*": {"width": 4}})
def build(num_classes=10, fors=0, in_size=16, in_channels=1, mean=None, width=4):
    """Two layers: a conv and a head. FoR 1: an orthogonal conv; FoR 2: orthogonal conv, norm pool, orthogonal head."""
    config = dict(num_classes=num_classes, fors=fors, in_size=in_size, in_channels=in_channels, mean=mean, width=width)
    if fors == 2:
        encoder = nn.Sequential(CayleyConv2d(in_channels, width, 3), MaxMin(), NormPool(), OrthogonalLinear(width, num_classes))
        return Split(encoder, nn.Identity(), arch=NAME, fors=2, fors_total=2, encoder_lipschitz=1.0,
                     latent_shape=(num_classes,), config=config)
    head = nn.Sequential(nn.Flatten(), nn.Linear(width * in_size * in_size, num_classes))
    if fors == 1:
        return Split(nn.Sequential(CayleyConv2d(in_channels, width, 3), MaxMin()), head, arch=NAME, fors=1,
                     fors_total=2, encoder_lipschitz=1.0, latent_shape=(width, in_size, in_size), config=config)
    net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), head)
    return Split(nn.Identity(), net, arch=NAME, fors=0, fors_total=2, encoder_lipschitz=1.0,
                 latent_shape=(in_channels, in_size, in_size), config=config)


def test_lip_certifies_the_twin_at_its_architectures_lipschitz_fors(tmp_path):
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", "--dataset", "digits", "--arch", NAME, "--fors", "2", "--sigmas", "0.25",
                                  "--epochs", "1", "--out", str(tmp_path / "ckpt")])
    assert trained.exit_code == 0, trained.output
    ran = runner.invoke(cli, ["run", "--dataset", "digits", "--methods", "lip", "--fors", "1", "--sigmas", "0.25",
                              "--max-images", "6", "--checkpoints", str(tmp_path / "ckpt"),
                              "--out", str(tmp_path / "run")])
    assert ran.exit_code == 0, ran.output
    rows = pd.read_parquet(tmp_path / "run")
    assert len(rows) == 6
    assert set(rows["method"]) == {"lip"} and set(rows["fors"]) == {2} and set(rows["fors_total"]) == {2}
    assert set(rows["lipschitz_source"]) == {"proven"} and (rows["radius"] >= 0).all()
