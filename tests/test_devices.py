"""One device rule for every bench command (bench.grid.devices)."""

from __future__ import annotations

import pytest
import torch

from bench.cli.params import BenchUsageError
from bench.grid.devices import device_name, resolve_device


class Custom(Exception):
    pass


def test_auto_is_cuda_when_present_else_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", ""])
def test_an_invalid_name_raises_the_callers_error_in_one_line(bad: str) -> None:
    with pytest.raises(Custom) as info:
        resolve_device(bad, error=Custom)
    message = str(info.value)
    assert "\n" not in message and "use auto, cpu, cuda or cuda:N" in message


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_a_missing_cuda_device_is_a_usage_error() -> None:
    with pytest.raises(BenchUsageError, match="cuda"):
        resolve_device("cuda:7", error=BenchUsageError)


def test_cpu_name_records_the_thread_count() -> None:
    name = device_name(torch.device("cpu"))
    assert name.startswith("cpu (") and f"{torch.get_num_threads()} threads" in name
