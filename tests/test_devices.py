"""One device rule for the library and every bench command (lsrs.devices; bench.devices as a usage error)."""

from __future__ import annotations

import pytest
import torch

from bench.devices import device_name, usage_device
from bench.errors import UsageError
from lsrs.devices import resolve_device


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
    with pytest.raises(UsageError, match="cuda"):
        usage_device("cuda:7")
    with pytest.raises(ValueError, match="cuda"):  # the library's own error: the same rule, checked in lsrs too
        resolve_device("cuda:7")


def test_the_library_trains_on_the_device_rule_of_the_commands() -> None:
    """lsrs.training used to pass any name to torch.device unchecked; it now refuses, in one line, what the
    commands refuse."""
    from lsrs import training

    assert training.resolve_device is resolve_device
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        training.fit(torch.nn.Linear(2, 2), None, None, None, device="gpu")  # type: ignore[arg-type]


def test_cpu_name_records_the_thread_count() -> None:
    name = device_name(torch.device("cpu"))
    assert name.startswith("cpu (") and f"{torch.get_num_threads()} threads" in name
