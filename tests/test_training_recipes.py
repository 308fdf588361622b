"""The twins' training recipes: warm start, distillation, Adam, the one-cycle schedule, and their records."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from bench.cli.main import cli
from bench.train.grid import TwinRecipe, train_grid
from lsrs import checkpoint as ckpt
from lsrs.data import DATASETS, TensorImageDataset, load_dataset
from lsrs.models import build_model
from lsrs.training import (
    TrainConfig,
    distillation_loss,
    fit,
    make_optimizer,
    warm_start_classifier,
)

INFO = DATASETS["digits"]


def _model(fors: int, seed: int = 0, width: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", num_classes=10, fors=fors, width=width, in_size=16, in_channels=1,
                       mean=list(INFO.mean))


def _subset(n: int, offset: int = 0) -> TensorImageDataset:
    train = load_dataset("digits", "train")
    return TensorImageDataset(train.images[offset : offset + n].clone(), train.labels[offset : offset + n].clone())


# ------------------------------------------------------------------------------------------ warm start
@pytest.mark.parametrize("fors", [1, 9, 13])
def test_warm_start_copies_exactly_the_classifier_tensors_of_the_baseline(fors: int) -> None:
    baseline, twin = _model(0, seed=1), _model(fors, seed=2)
    with torch.no_grad():  # non-default BatchNorm statistics, so that buffers are seen to be copied too
        for buf in baseline.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    encoder_before = {k: v.clone() for k, v in twin.encoder.state_dict().items()}
    copied = warm_start_classifier(twin, baseline)

    assert copied == list(twin.classifier.state_dict())
    base_sd = baseline.classifier.state_dict()
    assert set(copied) < set(base_sd)  # the baseline's stem and first blocks stay out
    blocks = {int(k.split(".")[0][5:]) for k in copied if k.startswith("block")}
    assert blocks == set(range((fors - 1) // 2 + 1, 9))  # exactly the blocks after the split, and the head
    assert not any(k.startswith("stem.") for k in copied) and any(k.startswith("head.") for k in copied)
    for key, value in twin.classifier.state_dict().items():
        assert torch.equal(value, base_sd[key]), key
        assert value.data_ptr() != base_sd[key].data_ptr()  # a copy, not shared storage
    for key, value in twin.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key


def test_warm_start_refuses_a_baseline_of_another_width() -> None:
    with pytest.raises(ValueError, match="not the twin's baseline"):
        warm_start_classifier(_model(9, width=4), _model(0, width=8))


# ------------------------------------------------------------------------------------------ distillation
def test_distillation_loss_matches_a_hand_computed_value() -> None:
    student = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])

    def kl(t: list[float], s: list[float], temp: float) -> float:
        pt = [math.exp(v / temp) / sum(math.exp(w / temp) for w in t) for v in t]
        ps = [math.exp(v / temp) / sum(math.exp(w / temp) for w in s) for v in s]
        return sum(p * math.log(p / q) for p, q in zip(pt, ps))

    for temp in (1.0, 2.0):
        expected = temp**2 * (kl([1, 0, 0], [0, 1, 0], temp) + kl([0, 0, 0], [2, 0, 0], temp)) / 2
        assert float(distillation_loss(student, teacher, temp)) == pytest.approx(expected, rel=1e-6)
    # row 1 at T = 1 by hand: p_t = (e, 1, 1) / (e + 2), p_s = (1, e, 1) / (e + 2), so KL = (e - 1) / (e + 2)
    e = math.e
    assert float(distillation_loss(student[:1], teacher[:1])) == pytest.approx((e - 1) / (e + 2), rel=1e-6)
    assert float(distillation_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_objective_mixes_cross_entropy_and_distillation() -> None:
    logits, teacher, y = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), torch.randn(6, 10), \
        torch.arange(6)
    config = TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8, noise="latent", distill=0.3,
                         distill_temperature=2.0)
    expected = 0.7 * torch.nn.functional.cross_entropy(logits, y) + 0.3 * distillation_loss(logits, teacher, 2.0)
    assert torch.allclose(config.objective(logits, y, teacher), expected)
    with pytest.raises(ValueError, match="teacher"):
        config.objective(logits, y)
    plain = TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8)
    assert torch.equal(plain.objective(logits, y, teacher), torch.nn.functional.cross_entropy(logits, y))


def test_distillation_gives_the_teacher_no_update_and_changes_the_student() -> None:
    data = _subset(64)
    teacher = _model(0, seed=5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    base = dict(sigma=0.25, epochs=1, lr=0.05, batch_size=32, noise="latent")
    plain, distilled = _model(9, seed=3), _model(9, seed=3)
    fit(plain, data, None, TrainConfig(**base))
    fit(distilled, data, None, TrainConfig(**base, distill=0.5), teacher=teacher)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(plain.classifier.head[2].weight, distilled.classifier.head[2].weight)
    with pytest.raises(ValueError, match="teacher"):
        fit(_model(9), data, None, TrainConfig(**base, distill=0.5))


# ------------------------------------------------------------------------------------------ optimiser, schedule
def test_onecycle_schedule_passes_through_its_knots() -> None:
    config = TrainConfig(sigma=0.25, epochs=10, lr=0.01, batch_size=8, schedule="onecycle")
    assert config.per_batch_lr
    assert config.lr_at(0) == pytest.approx(0.01 * 0.02)
    assert config.lr_at(4) == pytest.approx(0.01)
    assert config.lr_at(2) == pytest.approx(0.01 * (0.02 + 0.98 * 0.5))
    assert config.lr_at(8) == pytest.approx(0.01 / 20)
    assert config.lr_at(9, 0.999999) == pytest.approx(0.01 * 0.005, rel=1e-4)
    assert not TrainConfig(sigma=0.25, epochs=10, lr=0.01, batch_size=8).per_batch_lr


def test_adam_is_built_with_the_recipe_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    data = _subset(96)
    config = TrainConfig(sigma=0.25, epochs=2, lr=0.005, batch_size=32, noise="latent", optimizer="adam",
                         schedule="onecycle", weight_decay=0.0)
    opt = make_optimizer(_model(9), config)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"][0] == 0.9
    reference = _model(9, seed=1)
    fit(reference, data, None, config)

    class Stop(Exception):
        pass

    def stop(stats) -> None:
        raise Stop

    state = tmp_path / "s.state.safetensors"
    with pytest.raises(Stop):
        fit(_model(9, seed=1), data, None, config, state_path=state, on_epoch=stop)
    resumed = _model(9, seed=1)
    fit(resumed, data, None, config, state_path=state)  # Adam's moments and step come back from the state file
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_recipe_fields_enter_the_hash_only_when_changed() -> None:
    plain = TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8).as_dict()
    assert not {"optimizer", "schedule", "distill", "distill_temperature"} & set(plain)
    full = TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8, optimizer="adam", schedule="onecycle",
                       distill=0.5, distill_temperature=2.0).as_dict()
    assert (full["optimizer"], full["schedule"], full["distill"], full["distill_temperature"]) == \
        ("adam", "onecycle", 0.5, 2.0)
    for bad in (dict(optimizer="rmsprop"), dict(schedule="cosine"), dict(distill=1.5)):
        with pytest.raises(ValueError):
            TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8, **bad)


# ------------------------------------------------------------------------------------------ the grid
KW = dict(epochs=1, lr=0.05, batch_size=128, device="cpu", seed=3, width=4, quiet=True, threads=1)
RECIPE = TwinRecipe(warm_start=True, distill=0.5, distill_temperature=2.0, optimizer="adam", lr=0.003)


def test_grid_records_the_twin_recipe_and_trains_the_baseline_first(tmp_path: Path) -> None:
    entries = train_grid("digits", [9], [0.25], tmp_path, twin=RECIPE, **KW)  # the baseline is not in --fors
    assert [(e["fors"], e["sigma"]) for e in entries] == [(9, 0.25)]
    index = {(e["fors"], e["sigma"]): e for e in ckpt.read_index(tmp_path, "digits")}
    assert set(index) == {(0, 0.25), (9, 0.25)}  # trained for the warm start and indexed
    folder = tmp_path / "digits"
    twin_meta, base_meta = (ckpt.read_meta(folder / index[k, 0.25]["path"]) for k in (9, 0))
    recorded = twin_meta["twin_recipe"]
    assert recorded == {**RECIPE.as_dict(), "baseline": index[0, 0.25]["path"],
                        "baseline_sha256": index[0, 0.25]["sha256"]}
    assert (twin_meta["optimizer"], twin_meta["lr"], twin_meta["schedule"]) == ("adam", 0.003, "step")
    assert "twin_recipe" not in base_meta and (base_meta["optimizer"], base_meta["lr"]) == ("sgd", 0.05)

    # the baseline's hash is that of the plain recipe: a grid without a twin recipe reuses it
    plain = train_grid("digits", [0, 9], [0.25], tmp_path, **KW)
    assert [e["status"] for e in plain] == ["reused", "trained"]
    assert ckpt.read_meta(folder / plain[1]["path"]).get("twin_recipe") is None


@pytest.mark.xdist_group("exclusive")  # worker processes of its own: never beside the speed guards
def test_twin_recipe_grid_in_two_processes_gives_the_sequential_weights_bit_for_bit(tmp_path: Path) -> None:
    recipe = TwinRecipe(warm_start=True, distill=0.5)
    seq = train_grid("digits", [0, 1], [0.25, 0.5], tmp_path / "seq", twin=recipe, processes=1, **KW)
    par = train_grid("digits", [0, 1], [0.25, 0.5], tmp_path / "par", twin=recipe, processes=2, **KW)
    assert [(e["fors"], e["sigma"]) for e in par] == [(0, 0.25), (0, 0.5), (1, 0.25), (1, 0.5)]
    for a_entry, b_entry in zip(seq, par, strict=True):
        a = load_file(tmp_path / "seq" / "digits" / a_entry["path"])
        b = load_file(tmp_path / "par" / "digits" / b_entry["path"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = train_grid("digits", [0, 1], [0.25, 0.5], tmp_path / "par", twin=recipe, processes=2, **KW)
    assert {e["status"] for e in again} == {"reused"}


def test_cli_refuses_a_bad_twin_option_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["train", "--twin-optimizer", "rmsprop"])
    assert result.exit_code == 2
    assert "rmsprop" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["train", "--distill", "1.5"])
    assert result.exit_code == 2


def test_cli_default_twin_recipe_is_the_measured_one_only_where_measured() -> None:
    from bench.cli.cmd_train import twin_recipe
    from bench.train.grid import MEASURED_TWIN_RECIPES

    assert twin_recipe("digits") == MEASURED_TWIN_RECIPES["resnet18", "digits"]
    assert twin_recipe("digits", "tinynet") == TwinRecipe()  # measured on ResNet18 only
    assert twin_recipe("digits").warm_start and twin_recipe("mnist").distill == 0.5
    assert twin_recipe("cifar10") == TwinRecipe()  # the paper's plain recipe where nothing was measured
    plain = twin_recipe("digits", warm_start=False, distill=0.0, distill_temperature=None, optimizer=None)
    assert not plain.needs_baseline
    assert plain.distill_temperature == MEASURED_TWIN_RECIPES["resnet18", "digits"].distill_temperature == 4.0


def test_schedule_priority_is_the_critical_path_with_the_costlier_model_first_on_ties() -> None:
    """Hand-computed chains (cost 1 + 2k/18): a baseline with a FoR-13 twin (1 + 2.44) before the Lipschitz
    twin (3), the Lipschitz twin before a baseline with a FoR-9 twin (1 + 2 = 3, a tie it wins by its own cost),
    and a finished baseline's twin by its own cost."""
    from bench.train.grid import _recipe, schedule_priority

    recipe = _recipe("digits", [0, 9, 13, 18], [0.25], epochs=1, lr=0.1, batch_size=64, device="cpu", seed=0,
                     width=8, data_dir=None, download=False, workers=0, arch=None, lr_step=1, momentum=0.9,
                     weight_decay=1e-4, margin_eps=0.0, temperature=1.0, twin=RECIPE)
    deep = {(0, 0.25), (13, 0.25), (18, 0.0)}
    assert sorted(deep - {(13, 0.25)}, key=lambda k: schedule_priority(recipe, k, deep)) == [(0, 0.25), (18, 0.0)]
    shallow = {(0, 0.25), (9, 0.25), (18, 0.0)}
    assert schedule_priority(recipe, (0, 0.25), shallow) == pytest.approx((-3.0, -1.0))
    assert schedule_priority(recipe, (18, 0.0), shallow) == pytest.approx((-3.0, -3.0))
    assert sorted(shallow - {(9, 0.25)}, key=lambda k: schedule_priority(recipe, k, shallow)) == [(18, 0.0), (0, 0.25)]
    assert schedule_priority(recipe, (9, 0.25), {(9, 0.25)}) == pytest.approx((-2.0, -2.0))
