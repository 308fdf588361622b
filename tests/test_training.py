"""Gaussian-noise training: it learns on digits, puts the noise where LS-RS / IS-RS need it, and resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lsrs.data import DATASETS, TensorImageDataset, load_dataset
from lsrs.models import build_model
from lsrs.training import (
    TrainConfig,
    evaluate,
    fit,
    make_optimizer,
    noise_location,
    read_state_meta,
    train_epoch,
)

INFO = DATASETS["digits"]


def _model(fors: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", num_classes=10, fors=fors, width=8, in_size=16, in_channels=1, mean=list(INFO.mean))


def _subset(n: int, offset: int = 0) -> TensorImageDataset:
    train = load_dataset("digits", "train")
    return TensorImageDataset(train.images[offset : offset + n].clone(), train.labels[offset : offset + n].clone())


def test_short_training_on_digits_lowers_loss_and_beats_chance() -> None:
    model = _model(0)
    config = TrainConfig(sigma=0.25, epochs=2, lr=0.1, batch_size=64, noise=noise_location(model))
    result = fit(model, load_dataset("digits", "train"), load_dataset("digits", "test"), config)
    assert len(result.history) == 2
    assert result.history[1].loss < result.history[0].loss < 2.5
    assert result.clean_acc > 0.4 and result.noisy_acc > 0.3  # chance is 0.1 on the 10 balanced classes
    assert result.train_seconds > 0 and not model.training


def _record(model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
    seen: dict[str, list[torch.Tensor]] = {"enc_in": [], "enc_out": [], "cls_in": []}
    model.encoder.register_forward_pre_hook(lambda m, a: seen["enc_in"].append(a[0].detach().clone()))
    model.encoder.register_forward_hook(lambda m, a, out: seen["enc_out"].append(out.detach().clone()))
    model.classifier.register_forward_pre_hook(lambda m, a: seen["cls_in"].append(a[0].detach().clone()))
    return seen


def _is_clean_rows(batch: torch.Tensor, data: TensorImageDataset) -> bool:
    """Every row of ``batch`` is exactly one of the dataset's images (no noise was added)."""
    dist = torch.cdist(batch.flatten(1), data.images.flatten(1))
    return bool((dist.min(dim=1).values == 0).all())


def test_latent_training_puts_the_noise_on_the_encoder_output() -> None:
    data = _subset(96)
    model = _model(5)
    assert noise_location(model) == "latent"
    seen = _record(model)
    sigma = 0.5
    config = TrainConfig(sigma=sigma, epochs=1, lr=0.01, batch_size=48, noise="latent")
    train_epoch(model, data, make_optimizer(model, config), config, 0, device=torch.device("cpu"))
    assert len(seen["enc_out"]) == len(seen["cls_in"]) == 2
    for x, z, cls_in in zip(seen["enc_in"], seen["enc_out"], seen["cls_in"]):
        assert _is_clean_rows(x, data)  # the encoder saw clean images
        noise = cls_in - z
        assert noise.shape == z.shape == (48, *model.latent_shape)
        assert abs(float(noise.std()) - sigma) < 0.02 and abs(float(noise.mean())) < 0.02
    # a second epoch draws fresh noise
    first = seen["cls_in"][0] - seen["enc_out"][0]
    train_epoch(model, data, make_optimizer(model, config), config, 1, device=torch.device("cpu"))
    assert not torch.equal(first, seen["cls_in"][2] - seen["enc_out"][2])


def test_input_training_puts_the_noise_on_the_input() -> None:
    data = _subset(96)
    model = _model(0)
    assert noise_location(model) == "input"
    seen = _record(model)
    config = TrainConfig(sigma=0.25, epochs=1, lr=0.01, batch_size=96, noise="input")
    train_epoch(model, data, make_optimizer(model, config), config, 0, device=torch.device("cpu"))
    (x_noisy,) = seen["enc_in"]
    assert not _is_clean_rows(x_noisy, data)
    # subtracting the nearest clean image leaves N(0, 0.25^2) noise on the input
    nearest = torch.cdist(x_noisy.flatten(1), data.images.flatten(1)).argmin(1)
    noise = x_noisy - data.images[nearest]
    assert abs(float(noise.std()) - 0.25) < 0.01


def test_sigma_zero_trains_clean_and_noisy_accuracy_equals_clean() -> None:
    data = _subset(64)
    model = _model(1)
    seen = _record(model)
    config = TrainConfig(sigma=0.0, epochs=1, lr=0.01, batch_size=64, noise="latent")
    train_epoch(model, data, make_optimizer(model, config), config, 0, device=torch.device("cpu"))
    assert torch.equal(seen["enc_out"][0], seen["cls_in"][0])
    clean, noisy = evaluate(model, data, 0.0, "latent")
    assert clean == noisy


def test_learning_rate_schedule_follows_the_paper() -> None:
    config = TrainConfig(sigma=0.25, epochs=100, lr=0.01, batch_size=256)
    assert [config.lr_at(e) for e in (0, 29, 30, 59, 60, 90)] == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5])
    warm = TrainConfig(sigma=0.25, epochs=10, lr=0.1, batch_size=64, warmup_epochs=2)
    assert warm.lr_at(0, 0.5) == pytest.approx(0.025) and warm.lr_at(3) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="noise"):
        TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8, noise="output")
    with pytest.raises(ValueError, match="sigma"):
        TrainConfig(sigma=-1.0, epochs=1, lr=0.1, batch_size=8)


class _Interrupt(Exception):
    pass


def test_resume_continues_from_the_last_finished_epoch(tmp_path: Path) -> None:
    data, test = _subset(128), _subset(64, offset=512)
    config = TrainConfig(sigma=0.5, epochs=3, lr=0.05, batch_size=32, noise="latent", lr_step=2)

    reference = _model(1)
    full = fit(reference, data, test, config, state_path=tmp_path / "ref.state.safetensors")

    def crash_after_first(stats) -> None:
        if stats.epoch == 0:
            raise _Interrupt

    state = tmp_path / "run.state.safetensors"
    with pytest.raises(_Interrupt):
        fit(_model(1), data, test, config, state_path=state, on_epoch=crash_after_first)
    assert read_state_meta(state)["epochs_done"] == 1

    trained: list[int] = []
    resumed_model = _model(1, seed=123)  # whatever its init, the state file's weights take over
    resumed = fit(resumed_model, data, test, config, state_path=state, on_epoch=lambda s: trained.append(s.epoch))
    assert trained == [1, 2]
    assert resumed.resumed_from == 1
    assert [h.epoch for h in resumed.history] == [0, 1, 2]
    assert [h.lr for h in resumed.history] == pytest.approx([0.05, 0.05, 0.005])
    # identical to the uninterrupted run: same weights, same momentum, same noise
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert (resumed.clean_acc, resumed.noisy_acc) == (full.clean_acc, full.noisy_acc)

    # a state file of another recipe is not resumed
    other = TrainConfig(sigma=0.25, epochs=3, lr=0.05, batch_size=32, noise="latent", lr_step=2)
    trained.clear()
    fit(_model(1), data, None, other, state_path=state, on_epoch=lambda s: trained.append(s.epoch))
    assert trained == [0, 1, 2]
