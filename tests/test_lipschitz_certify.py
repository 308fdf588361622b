"""Deterministic Lipschitz-margin certificates (issue 16): the fully orthogonal twin, the certificate, the loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsrs
from lsrs.lipschitz import empirical_lipschitz, jacobian_spectral_norm, proven_bound
from lsrs.lipschitz_layers import NormPool, OrthogonalLinear
from lsrs.margin import LipschitzCertifier, lipschitz_certify, margin_loss, network_lipschitz
from lsrs.models import resnet18
from lsrs.training import TrainConfig

SQRT2 = math.sqrt(2.0)


def _twin(seed: int = 0, steps: int = 30) -> nn.Module:
    """A width-4 fully orthogonal ResNet18 on 1x8x8 inputs, fitted a little (margin loss) so margins vary."""
    torch.manual_seed(seed)
    model = resnet18(fors=18, width=4, in_size=8, in_channels=1, num_classes=5, mean=[0.3])
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        margin_loss(model(x), y, eps=0.1, temperature=0.25).backward()
        opt.step()
    return model.eval()


def _orthonormal_rows(k: int, d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T.contiguous()  # k x d, orthonormal rows


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    lin = nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), lin)


def _attack(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, radius: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """Projected gradient ascent (float64) on ``max_{j != c} f_j - f_c`` inside ``||x' - x|| <= radius``.

    Starts at a random point of the sphere; returns the best ``x'`` found per image (the highest runner-up
    minus top), always inside the ball.
    """
    gen = torch.Generator().manual_seed(1)
    r = radius.view(-1, *([1] * (x.dim() - 1)))
    d = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    d = d / d.flatten(1).norm(dim=1).view_as(r) * r
    best, best_gap = x + d, torch.full((len(x),), -math.inf, dtype=x.dtype)
    for i in range(steps):
        d = d.detach().requires_grad_(True)
        logits = model(x + d)
        top = logits.gather(1, pred[:, None]).squeeze(1)
        gap = logits.scatter(1, pred[:, None], -math.inf).amax(1) - top
        better = gap.detach() > best_gap
        best = torch.where(better.view_as(r), (x + d).detach(), best)
        best_gap = torch.maximum(best_gap, gap.detach())
        (g,) = torch.autograd.grad(gap.sum(), d)
        step = 0.25 * r * (0.97**i)
        d = d.detach() + step * g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view_as(r)
        norm = d.flatten(1).norm(dim=1).view_as(r)
        d = d * torch.clamp(r / norm.clamp_min(1e-30), max=1.0)
    return best


# ------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("scale", [1.0, 3.0, 0.5])
def test_radius_is_the_closed_form_on_a_scaled_orthogonal_linear_map(scale):
    """f(x) = s Q x + b with orthonormal rows: L = s and radius = margin / (sqrt(2) s), which is the exact
    distance to the nearest decision boundary (||s (q_c - q_j)|| = s sqrt(2)): the certificate is tight."""
    q = _orthonormal_rows(6, 20, seed=0)
    b = torch.linspace(-0.3, 0.3, 6, dtype=torch.float64)
    model = _linear(scale * q, b)
    x = torch.randn(12, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cert = lipschitz_certify(model, x)
    assert cert.lipschitz == pytest.approx(scale, rel=1e-12)
    logits = x @ (scale * q).T + b
    top2 = logits.topk(2, dim=1).values
    expected = (top2[:, 0] - top2[:, 1]) / (SQRT2 * scale)
    torch.testing.assert_close(cert.radius, expected, rtol=1e-8, atol=0)
    assert torch.equal(cert.prediction, logits.argmax(1))
    # exact boundary distance of the linear classifier: min_j (f_c - f_j) / ||w_c - w_j||
    w = scale * q
    c = logits.argmax(1)
    dist = torch.stack([
        min((logits[i, c[i]] - logits[i, j]) / (w[c[i]] - w[j]).norm() for j in range(6) if j != c[i])
        for i in range(len(x))
    ])
    torch.testing.assert_close(cert.radius, dist, rtol=1e-8, atol=0)


def test_general_linear_map_uses_its_spectral_norm_and_is_a_lower_bound():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    model = _linear(w, torch.zeros(5, dtype=torch.float64))
    x = torch.randn(20, 9, generator=gen, dtype=torch.float64)
    cert = lipschitz_certify(model, x)
    assert cert.lipschitz == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-12)
    logits = x @ w.T
    c = logits.argmax(1)
    exact = torch.stack([
        min((logits[i, c[i]] - logits[i, j]) / (w[c[i]] - w[j]).norm() for j in range(5) if j != c[i])
        for i in range(len(x))
    ])
    assert (cert.radius <= exact * (1 + 1e-12)).all()
    torch.testing.assert_close(cert.radius, cert.margin / (SQRT2 * cert.lipschitz), rtol=1e-8, atol=0)


def test_tied_logits_certify_radius_zero():
    w = torch.zeros(4, 3, dtype=torch.float64)
    w[0] = w[1] = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)  # classes 0 and 1 always tie
    model = _linear(w, torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    cert = lipschitz_certify(model, torch.zeros(2, 3, dtype=torch.float64))
    assert cert.margin.tolist() == [0.0, 0.0]
    assert cert.radius.tolist() == [0.0, 0.0]
    assert cert.prediction.tolist() == [0, 0]


# ---------------------------------------------------------------------------------- soundness on the twin
def test_the_twin_is_orthogonal_end_to_end():
    """Proven bound of the whole network <= 1 + small (float64: 1e-12; float32 operators: 1e-4) and
    >= the power-iteration / pair-search estimate; every weighted layer is a Cayley conv or the Cayley head."""
    model = _twin()
    assert sum(isinstance(m, OrthogonalLinear) for m in model.modules()) == 1
    assert sum(isinstance(m, NormPool) for m in model.modules()) == 1
    assert not [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    assert network_lipschitz(model, (1, 8, 8)) <= 1 + 1e-4
    twin64 = LipschitzCertifier(model, (1, 8, 8)).model
    bound = network_lipschitz(twin64, (1, 8, 8))
    assert bound <= 1 + 1e-10  # rigorous float64 norm bounds of the float64 operators (lsrs.proofs)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    emp = empirical_lipschitz(twin64, x, iters=30, steps=30)
    assert emp <= bound
    assert jacobian_spectral_norm(twin64, x, iters=30) > 0.5  # the estimate is not vacuous


def test_norm_pool_is_exactly_1_lipschitz():
    pool = NormPool()
    assert proven_bound(pool, (3, 4, 4)) == 1.0
    x = torch.ones(1, 3, 4, 4, dtype=torch.float64)  # spatially constant: the norm is kept
    assert pool(x).norm().item() == pytest.approx(x.norm().item(), rel=1e-15)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    assert (pool(x).flatten(1).norm(dim=1) <= x.flatten(1).norm(dim=1)).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_certificate_is_never_violated_on_random_and_adversarial_pairs(seed):
    model = _twin(seed)
    certifier = LipschitzCertifier(model, (1, 8, 8))
    f64 = certifier.model
    gen = torch.Generator().manual_seed(10 + seed)
    x = torch.rand(24, 1, 8, 8, generator=gen, dtype=torch.float64)
    cert = certifier.certify(x)
    assert (cert.radius > 0).sum() >= 12
    inside = cert.radius * (1 - 1e-9)
    with torch.no_grad():
        for _ in range(20):  # random points on the certified sphere
            d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * inside.view(-1, 1, 1, 1)
            assert torch.equal(f64(x + d).argmax(1), cert.prediction)
    adv = _attack(f64, x, cert.prediction, inside)
    assert ((adv - x).flatten(1).norm(dim=1) <= cert.radius).all()
    with torch.no_grad():
        logits = f64(adv)
    assert torch.equal(logits.argmax(1), cert.prediction)
    # the attack is real: it eats a good part of the margin budget sqrt(2) L r
    top = logits.gather(1, cert.prediction[:, None]).squeeze(1)
    left = top - logits.scatter(1, cert.prediction[:, None], -math.inf).amax(1)
    used = (cert.margin - left)[cert.radius > 0] / cert.margin[cert.radius > 0]
    assert float(used.median()) > 0.1


def test_attack_breaks_an_orthogonal_linear_map_just_outside_the_radius():
    """On s Q x the certificate is tight: the step of length 1.001 r towards the runner-up's row flips every
    label, the attack flips most at 1.01 r (it is a real attack), and nothing flips within r."""
    q = _orthonormal_rows(4, 12, seed=5)
    w = 2.0 * q
    model = _linear(w, torch.zeros(4, dtype=torch.float64))
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    cert = lipschitz_certify(model, x)
    runner_up = (x @ w.T).scatter(1, cert.prediction[:, None], -math.inf).argmax(1)
    direction = w[runner_up] - w[cert.prediction]
    step = direction / direction.norm(dim=1, keepdim=True) * (1.001 * cert.radius[:, None])
    inside = _attack(model, x, cert.prediction, cert.radius * (1 - 1e-9))
    outside = _attack(model, x, cert.prediction, cert.radius * 1.01)
    with torch.no_grad():
        assert (model(x + step).argmax(1) != cert.prediction).all()
        assert torch.equal(model(inside).argmax(1), cert.prediction)
        assert (model(outside).argmax(1) != cert.prediction).float().mean() >= 0.5


def test_rounding_allowance_bounds_float32_error_and_is_negligible_in_float64():
    """The a-priori forward-error bound with float32's unit roundoff covers the observed float32 - float64
    difference of the logits; in float64 it removes less than 1e-9 of the radius."""
    model = _twin(2)
    c32 = LipschitzCertifier(model, (1, 8, 8), dtype=torch.float32)
    c64 = LipschitzCertifier(model, (1, 8, 8))
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    l32, a32 = c32.forward(x)
    l64, _ = c64.forward(x)
    err = (l32.double() - l64).norm(dim=1)
    assert (err > 0).any()
    assert (err <= c32.rounding_bound(a32, torch.zeros(32, dtype=torch.float64))).all()
    cert = c64.certify(x)
    exact = cert.margin / (SQRT2 * cert.lipschitz)
    assert ((exact - cert.radius) <= 1e-9 * exact.clamp_min(1.0)).all()


# ---------------------------------------------------------------------------------------------- refusals
class _TripledConv(nn.Conv2d):
    """A subclass of a proven layer that changes what runs."""

    def forward(self, x):
        return 3 * super().forward(x)


def test_a_network_with_a_forward_overriding_conv_is_refused_naming_the_layer():
    model = _twin()
    model.encoder.stem.conv = _TripledConv(1, 4, 3, padding=1)
    with pytest.raises(ValueError, match=r"no proven Lipschitz bound for encoder\.stem\.conv \(_TripledConv\)"):
        lipschitz_certify(model, torch.rand(2, 1, 8, 8))


def test_a_network_with_one_plain_conv_is_bounded_by_its_matrix():
    """A zero-padded nn.Conv2d has a proof now (lsrs.proofs): L covers the exact SVD of the whole network's
    Jacobian at a point (float64 autograd), and the certifier accepts it."""
    model = _twin()
    model.encoder.stem.conv = nn.Conv2d(1, 4, 3, padding=1)
    cert = lipschitz_certify(model, torch.rand(2, 1, 8, 8))
    net = LipschitzCertifier(model, (1, 8, 8)).model
    jac = torch.autograd.functional.jacobian(lambda t: net(t), torch.rand(1, 1, 8, 8, dtype=torch.float64))
    assert cert.lipschitz >= float(torch.linalg.matrix_norm(jac.reshape(5, 64), ord=2)) * (1 - 1e-12)


def test_a_network_with_batchnorm_is_refused():
    model = _twin()
    model.encoder.pool = nn.Sequential(nn.BatchNorm2d(32), NormPool())
    with pytest.raises(ValueError, match=r"encoder\.pool\.0 \(BatchNorm2d\)"):
        lipschitz_certify(model, torch.rand(2, 1, 8, 8))


def test_an_ls_twin_is_refused():
    model = resnet18(fors=9, width=4, in_size=8, in_channels=1).eval()
    with pytest.raises(ValueError, match="BasicBlock"):
        lsrs.lipschitz_certify(model, torch.rand(2, 1, 8, 8))


# ------------------------------------------------------------------------------------------------ training
def test_margin_loss_matches_its_closed_form():
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    eps, t = 0.3, 0.25
    shifted = z.clone()
    shifted[torch.arange(6), y] -= SQRT2 * eps
    expected = (t * (torch.logsumexp(shifted / t, dim=1) - shifted[torch.arange(6), y] / t)).mean()
    torch.testing.assert_close(margin_loss(z, y, eps, t), expected)
    torch.testing.assert_close(margin_loss(z, y, 0.0, 1.0), F.cross_entropy(z, y))


def test_train_config_margin_fields_leave_cross_entropy_hashes_alone():
    ce = TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8)
    assert "loss" not in ce.as_dict() and "margin_eps" not in ce.as_dict()
    lip = TrainConfig(sigma=0.0, epochs=1, lr=0.1, batch_size=8, noise="none", loss="margin", margin_eps=0.5,
                      temperature=0.25)
    assert lip.as_dict()["loss"] == "margin"
    with pytest.raises(ValueError, match="sigma must be 0"):
        TrainConfig(sigma=0.25, epochs=1, lr=0.1, batch_size=8, noise="none")


def test_the_lipschitz_twin_is_trained_once_at_sigma_zero():
    from bench.train.grid import grid_pairs

    assert grid_pairs("resnet18", [0, 9, 18], [0.25, 0.5]) == [(0, 0.25), (0, 0.5), (9, 0.25), (9, 0.5), (18, 0.0)]


# -------------------------------------------------------------------------------------- bench run / report
def _lip_checkpoints(root):
    from tiny_checkpoints import write_tiny_checkpoints

    from lsrs.checkpoint import index_entry, save_checkpoint, update_index

    write_tiny_checkpoints(root, (9,), (0.25,))
    torch.manual_seed(18)
    model = resnet18(num_classes=10, fors=18, width=4, in_size=16, in_channels=1).eval()
    meta = {"dataset": "digits", "sigma": 0.0, "noise": "none", "epochs": 0, "clean_acc": 0.1, "noisy_acc": 0.1}
    digest = save_checkpoint(root / "digits" / "lip.safetensors", model, meta)
    update_index(root, "digits", [index_entry({**meta, "arch": "resnet18", "fors": 18, "width": 4, "in_size": 16,
                                               "num_classes": 10}, "lip.safetensors", digest)])
    return model


def test_bench_run_writes_lip_rows_and_report_shows_all_three(tmp_path):
    import pandas as pd
    from click.testing import CliRunner

    from bench import store
    from bench.cli.main import cli
    from bench.report.writer import write_report
    from lsrs.data import load_dataset

    model = _lip_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "run"
    args = ["run", "--dataset", "digits", "--fors", "9", "--sigmas", "0.25", "--methods", "is,ls,lip", "--n0", "16",
            "--n", "64", "--max-images", "3", "--skip", "5", "--checkpoints", str(tmp_path / "ckpt"), "--out",
            str(out), "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert set(store.ROW_SCHEMA.names) <= set(frame.columns)
    assert set(zip(frame["method"], frame["fors"], frame["sigma"], strict=True)) == {
        ("is", 0, 0.25), ("ls", 9, 0.25), ("lip", 18, 0.0)}
    lip = frame[frame["method"] == "lip"].sort_values("idx")
    assert len(lip) == 3 and (lip["samples_used"] == 1).all() and (lip["fors_total"] == 18).all()
    assert (lip["total_s"] > 0).all() and (lip["precision"] == "fp64").all()
    # independent recomputation from the checkpoint's model
    test = load_dataset("digits", "test")
    x = torch.stack([test[int(i)][0] for i in lip["idx"]])
    cert = lipschitz_certify(model, x)
    assert lip["prediction"].tolist() == cert.prediction.tolist()
    assert lip["radius"].tolist() == pytest.approx(cert.radius.tolist(), rel=1e-12, abs=1e-15)
    assert (lip["correct"] == (lip["prediction"] == lip["label"])).all()
    assert lip["radius"].tolist() == pytest.approx((lip["radius_latent"] / lip["lipschitz"]).tolist(), rel=1e-15)

    report = write_report(out, tmp_path / "report", fmt="markdown")
    summary = report.summary.set_index("method")
    lip_time = summary.loc["lip", "time_s"]
    assert summary.loc["lip", "speedup"] == pytest.approx(summary.loc["is", "time_s"] / lip_time)
    assert not math.isnan(summary.loc["lip", "cert_acc_r0.25"])
    table1 = (tmp_path / "report" / "table1.md").read_text()
    assert "Lipschitz" in table1 and "IS-RS" in table1 and "LS-RS" in table1
    assert "Lipschitz" in (tmp_path / "report" / "certified_accuracy.md").read_text()
    assert (tmp_path / "report" / "certified_accuracy.png").is_file()
    assert not [m for m in report.missing if "no rows at sigma = 0" in m]  # lip's σ = 0 is not a clean row


def test_bench_run_refuses_lip_on_a_model_without_a_bound(tmp_path):
    """A FoR-18 entry whose weights build an LS twin cannot happen; a lip job on a bad model is refused."""
    from bench.errors import UsageError
    from bench.run.runner import Job, JobCertifier, RunConfig
    from lsrs.data import load_dataset

    config = RunConfig(dataset="digits", fors=(), sigmas=(0.25,), methods=("lip",))
    bad = resnet18(fors=9, width=4, in_size=16, in_channels=1).eval()
    with pytest.raises(UsageError, match="no proven Lipschitz bound"):
        JobCertifier(config, Job("lip", 18, 0.0), bad, load_dataset("digits", "test"), 0, torch.device("cpu"))


def test_bench_train_fors_18_trains_one_margin_model_at_sigma_zero(tmp_path):
    from click.testing import CliRunner

    from bench.cli.main import cli
    from lsrs.checkpoint import read_index

    args = ["train", "--dataset", "digits", "--fors", "18", "--sigmas", "0.25,0.5", "--epochs", "1", "--width", "4",
            "--margin-eps", "0.3", "--threads", "1", "--out", str(tmp_path), "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (entry,) = read_index(tmp_path, "digits")
    assert (entry["fors"], entry["sigma"], entry["noise"]) == (18, 0.0, "none")
    meta = json.loads((tmp_path / "digits" / entry["path"].replace(".safetensors", ".json")).read_text())
    assert (meta["loss"], meta["margin_eps"], meta["temperature"]) == ("margin", 0.3, 0.25)
    assert meta["history"][0]["loss"] > 0
