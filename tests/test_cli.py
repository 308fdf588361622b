"""The ``bench`` command group: lazy command modules, and ``bench --help`` without torch (issue 24)."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from bench.cli import main as cli_module
from bench.cli.main import cli


def test_help_lists_every_command_without_importing_torch() -> None:
    code = ("import sys; from bench.cli.main import cli\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "TORCH False"
    for name in ("train", "run", "report", "demo", "info"):
        assert f"\n  {name} " in out


@pytest.mark.parametrize("module", cli_module.COMMAND_MODULES)
def test_summary_read_from_source_is_the_commands_own(module: str) -> None:
    """Oracle: click's short help of the imported command."""
    name = module.removeprefix("cmd_")
    ctx = click.Context(cli)
    command = cli.get_command(ctx, name)
    assert command is not None and command.name == name
    assert click.utils.make_default_short_help(cli_module._summary(name), 60) == command.get_short_help_str(60)


def test_unknown_command_exits_2() -> None:
    result = CliRunner().invoke(cli, ["nosuch"])
    assert result.exit_code == 2 and "No such command" in result.output
