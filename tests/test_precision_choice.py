"""``--precision auto`` and the warning for a precision without native support (bench.devices)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_checkpoints import write_tiny_checkpoints

from bench import devices, store
from bench.cli.main import cli
from bench.run.runner import RunConfig

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


def _cpu(monkeypatch, flags: frozenset[str]) -> None:
    monkeypatch.setattr(devices, "cpu_flags", lambda *a: flags)


def _cuda(monkeypatch, capability: tuple[int, int], bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu amx_bf16\n")
    assert devices.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16", "amx_bf16"}
    assert devices.cpu_flags(tmp_path / "absent") == frozenset()


def test_avx2_only_cpu_runs_fp32_on_auto_and_warns_on_bf16_and_fp16(monkeypatch) -> None:
    _cpu(monkeypatch, AVX2_ONLY)
    auto = devices.resolve_precision("auto", "cpu")
    assert (auto.resolved, auto.warning) == ("fp32", None) and "neither AVX-512 BF16 nor AMX" in auto.reason
    for asked in ("bf16", "fp16"):
        choice = devices.resolve_precision(asked, "cpu")
        assert choice.resolved == asked and choice.native is False
        assert "\n" not in choice.warning and f"--precision {asked} on cpu" in choice.warning
        assert "auto uses fp32" in choice.warning
    assert devices.resolve_precision("fp32", "cpu").warning is None


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_cpu_with_native_bf16_runs_bf16_on_auto(monkeypatch, flag: str) -> None:
    _cpu(monkeypatch, AVX2_ONLY | {flag})
    auto = devices.resolve_precision("auto", "cpu")
    assert auto.resolved == "bf16" and flag in auto.reason
    assert devices.resolve_precision("bf16", "cpu").warning is None
    fp16 = devices.resolve_precision("fp16", "cpu")
    assert fp16.native is False and "auto uses bf16" in fp16.warning


def test_cuda_with_bf16_tensor_cores_runs_bf16_on_auto(monkeypatch) -> None:
    _cuda(monkeypatch, (8, 0), bf16=True)
    assert devices.resolve_precision("auto", "cuda").resolved == "bf16"
    assert devices.resolve_precision("bf16", "cuda").warning is None
    assert devices.resolve_precision("fp16", "cuda").warning is None


@pytest.mark.parametrize(("capability", "bf16"), [((7, 5), False), ((7, 5), True), ((8, 6), False)])
def test_cuda_without_bf16_tensor_cores_runs_fp32_on_auto(monkeypatch, capability, bf16: bool) -> None:
    _cuda(monkeypatch, capability, bf16=bf16)
    auto = devices.resolve_precision("auto", "cuda")
    assert auto.resolved == "fp32" and f"{capability[0]}.{capability[1]}" in auto.reason
    assert devices.resolve_precision("bf16", "cuda").native is False
    assert devices.resolve_precision("fp16", "cuda").warning is None  # fp16 tensor cores from 7.0


def test_cuda_that_cannot_be_checked_here_runs_fp32_on_auto(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = devices.resolve_precision("auto", "cuda")
    assert auto.resolved == "fp32" and auto.native is True
    assert devices.resolve_precision("bf16", "cuda").warning is None  # unknown, not known to be slow


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        devices.resolve_precision("fp8", "cpu")


def _run(tmp_path: Path, checkpoints: Path, name: str, *extra: str):
    out = tmp_path / name
    args = ["run", "--dataset", "digits", "--fors", "1", "--sigmas", "0.25", "--n0", "8", "--n", "16",
            "--max-images", "1", "--checkpoints", str(checkpoints), "--out", str(out), "--device", "cpu", "-q", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result, store.read_manifest(out)


def test_bench_run_warns_once_and_records_the_choice(monkeypatch, tmp_path: Path) -> None:
    _cpu(monkeypatch, AVX2_ONLY)
    checkpoints = write_tiny_checkpoints(tmp_path / "ckpt", (1,), (0.25,))
    result, manifest = _run(tmp_path, checkpoints, "bf16", "--precision", "bf16")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "bf16" in warnings[0]
    assert manifest["precision"]["requested"] == "bf16" and manifest["precision"]["resolved"] == "bf16"
    assert manifest["precision"]["native"] is False and manifest["config"]["precision"] == "bf16"

    result, manifest = _run(tmp_path, checkpoints, "auto")  # the default
    assert "warning" not in result.stderr
    assert manifest["precision"]["requested"] == "auto" and manifest["config"]["precision"] == "fp32"
    assert "AVX-512 BF16" in manifest["precision"]["reason"]
    fp32 = RunConfig(**{**manifest["config"], "fors": (1,), "sigmas": (0.25,), "methods": ("is", "ls")})
    assert manifest["config_hash"] == fp32.config_hash()  # the hash of what ran, not of "auto"
