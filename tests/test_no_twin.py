"""The message of a run that asks an architecture with FoR 0 only for an LS-RS twin: its record's words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.certifiers.smoothed import check_latent_fors
from bench.errors import UsageError
from bench.run.runner import Checkpoints
from lsrs.architectures import get_architecture
from lsrs.cohen_models import NO_TWIN

TWINLESS = '''
from torch import nn
from lsrs.architectures import register_architecture
from lsrs.models import Split


@register_architecture("twinless_tiny", fors=(0,), fors_total=1, paper_fors=0)
def build(num_classes=10, fors=0, in_size=8, in_channels=1, mean=None, width=4):
    head = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * in_size * in_size, num_classes))
    return Split(nn.Identity(), head, arch="twinless_tiny", fors=0, fors_total=1, encoder_lipschitz=1.0,
                 latent_shape=(in_channels, in_size, in_size), config=dict(num_classes=num_classes, fors=fors,
                 in_size=in_size, in_channels=in_channels, mean=mean, width=width))
'''


def test_a_plugin_with_for_0_only_gets_the_generic_message_not_cohens(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "twinless_arch.py").write_text(TWINLESS)
    monkeypatch.syspath_prepend(str(tmp_path))
    record = get_architecture("twinless_arch:build")
    with pytest.raises(UsageError) as info:
        check_latent_fors([record], (1,))
    message = info.value.format_message()
    assert message == record.no_twin_reason == record.generic_no_twin_reason()
    assert message.startswith("twinless_tiny has no LS-RS twin: only FoR 0 (IS-RS) is certified")
    assert "Cohen" not in message and NO_TWIN not in message and "\n" not in message


def test_cohens_models_register_their_own_message() -> None:
    for arch in ("cifar_resnet20", "cifar_resnet110", "resnet50"):
        record = get_architecture(arch)
        assert record.no_twin_reason == f"{arch}: {NO_TWIN}"
        with pytest.raises(UsageError, match="Cohen et al."):
            check_latent_fors([record], (9,))
    r20, r110 = get_architecture("cifar_resnet20"), get_architecture("cifar_resnet110")
    with pytest.raises(UsageError) as info:
        check_latent_fors([r20, r110, r20], (9,))  # each architecture's reason once
    assert info.value.format_message() == f"{r20.no_twin_reason}; {r110.no_twin_reason}"


def test_an_architecture_with_twins_is_told_the_valid_fors_instead() -> None:
    with pytest.raises(Exception, match="valid: 0,1,3"):
        check_latent_fors([get_architecture("resnet18")], (2,))
    check_latent_fors([get_architecture("resnet18")], (9,))  # a valid FoR passes


def _index_with_baseline(root: Path, arch: str, source: str | None = None) -> Path:
    entry = {"arch": arch, "fors": 0, "sigma": 0.25, "path": "m.safetensors", "sha256": "0" * 64, "width": 4,
             "in_size": 8, "num_classes": 10, "clean_acc": 0.5, "noisy_acc": 0.5,
             **({"arch_source": source} if source else {})}
    (root / "digits").mkdir(parents=True)
    (root / "digits" / "index.json").write_text(json.dumps({"dataset": "digits", "entries": [entry]}))
    return root


@pytest.mark.parametrize("arch", ["twinless", "resnet18"])
def test_the_runner_says_why_a_baseline_has_no_twin_from_its_record(tmp_path: Path, monkeypatch, arch: str) -> None:
    """The library path (no CLI check before it): a FoR 0-only architecture's baseline gets its record's reason;
    an architecture with twins, the hint to train the missing one."""
    (tmp_path / "twinless_arch.py").write_text(TWINLESS)
    monkeypatch.syspath_prepend(str(tmp_path))
    record = get_architecture("twinless_arch:build")
    name, source = ("twinless_tiny", record.source) if arch == "twinless" else ("resnet18", None)
    checkpoints = Checkpoints(_index_with_baseline(tmp_path / "ckpt", name, source), "digits", torch.device("cpu"))
    with pytest.raises(UsageError) as info:
        checkpoints.entry(9, 0.25, allow_sigma_mismatch=False)
    message = info.value.format_message()
    if arch == "twinless":
        assert message.endswith(f": {record.no_twin_reason}") and "Cohen" not in message
    else:
        assert "train it with: bench train --dataset digits --fors 9" in message and "twin:" not in message
