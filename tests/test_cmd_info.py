"""``bench info``: output, JSON, and exit code 2 with one line on bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny_checkpoints import tiny_checkpoint

from bench.cli.main import cli

SMALL = ["--dataset", "digits", "--width", "8", "--iters", "5", "--steps", "3"]


def invoke(*args: str):
    return CliRunner().invoke(cli, ["info", *args], terminal_width=200)


def test_info_prints_latent_audit_and_speedup():
    res = invoke(*SMALL, "--fors", "9")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "resnet18 FoR 9/18" in out and "latent z 16x8x8 (1,024 dims)" in out
    assert "block4" in out and "sound" in out and "NOT SOUND" not in out
    assert "FLOP-ideal LS-RS speedup" in out


def test_info_json_is_consistent():
    res = invoke(*SMALL, "--fors", "13", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["latent_shape"] == [32, 4, 4] and info["latent_dims"] == 512
    assert info["lipschitz"]["declared"] == 1.0 and info["lipschitz"]["sound"]
    assert info["lipschitz"]["empirical"] <= 1.0 + 1e-4
    f = info["flops"]
    assert f["flops_total"] == f["flops_encoder"] + f["flops_classifier"]
    assert f["ideal_speedup"] == pytest.approx(f["flops_total"] / f["flops_classifier"])
    p = info["params"]
    assert p["total"] == p["encoder"] + p["classifier"]
    assert info["config"]["in_channels"] == 1 and info["config"]["in_size"] == 16


def test_info_baseline_and_wide_resnet():
    info = json.loads(invoke(*SMALL, "--fors", "0", "--json").output)
    assert info["latent_shape"] == [1, 16, 16] and info["flops"]["ideal_speedup"] == 1.0
    res = invoke("--model", "wide_resnet34", "--widen", "1", "--base-width", "4", "--in-size", "16",
                 "--stem-stride", "1", "--num-classes", "10", "--fors", "16", "--iters", "3", "--steps", "0", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["fors_total"] == 34 and info["latent_shape"] == [8, 8, 8]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fors", "2"], "valid: 0,1,3,5,7,9,11,13,15,17"),
        (["--fors", "-1"], "--fors"),
        (["--width", "7", "--dataset", "digits"], "even"),
        (["--in-size", "12"], "divisible by 8"),
        (["--model", "wide_resnet34", "--width", "8"], "--widen"),
        (["--model", "vgg"], "--model"),
    ],
)
def test_info_bad_input_exits_2_with_one_line(args, message):
    res = invoke(*args)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
    assert [line for line in res.output.splitlines() if line.startswith("Error")] and len(
        [line for line in res.output.splitlines() if line.startswith("Error")]
    ) == 1


def test_info_keeps_the_operator_bounds_beside_the_checkpoint_and_reuses_them(tmp_path):
    """--checkpoint: the first audit proves every operator's bound and writes <checkpoint>.bounds.json; the
    second reuses all of them (same operators, same SHA-256) and prints the same as-executed figures; a
    retrained checkpoint's operators miss and are proven afresh."""
    ckpt = tmp_path / "digits" / tiny_checkpoint(tmp_path, 9, 0.25)["path"]
    first = json.loads(invoke("--checkpoint", str(ckpt), "--no-empirical", "--json").output)
    assert first["bound_cache"]["reused"] == 0 and first["bound_cache"]["computed"] > 0
    assert (tmp_path / "digits" / (ckpt.name + ".bounds.json")).exists()
    second = json.loads(invoke("--checkpoint", str(ckpt), "--no-empirical", "--json").output)
    assert second["bound_cache"] == {**first["bound_cache"], "reused": first["bound_cache"]["computed"],
                                     "computed": 0}
    assert second["lipschitz"] == first["lipschitz"]
    assert [r["executed"] for r in second["audit"]] == [r["executed"] for r in first["audit"]]
    other = tmp_path / "digits" / tiny_checkpoint(tmp_path, 9, 0.25, seed=77)["path"]
    assert other == ckpt  # the same file, other weights (as a retraining writes it)
    third = json.loads(invoke("--checkpoint", str(ckpt), "--no-empirical", "--json").output)
    assert third["bound_cache"]["reused"] == 0 and third["bound_cache"]["computed"] > 0


def test_audit_in_place_refuses_a_model_in_training_mode():
    from lsrs.lipschitz import audit
    from lsrs.models import resnet18

    model = resnet18(10, 9, 4, 16, 1)
    with pytest.raises(ValueError, match="eval"):
        audit(model, (1, 16, 16), empirical=False, in_place=True)


def test_baseline_flops_counted_on_the_meta_device_equal_a_real_twin():
    import torch

    from lsrs.flops import count_flops, flop_split
    from lsrs.models import wide_resnet34

    model = wide_resnet34(10, 3, widen=1, in_size=32).eval()
    twin = wide_resnet34(10, 0, widen=1, in_size=32).eval()
    assert flop_split(model, (3, 32, 32))["flops_baseline"] == count_flops(twin, torch.zeros(1, 3, 32, 32))


def test_keep_freed_memory_tunes_glibc_where_there_is_one():
    """In a child process (the setting is process-wide): True on Linux (glibc accepted both options)."""
    import subprocess
    import sys

    code = "from bench.memory import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(sys.platform.startswith("linux"))
