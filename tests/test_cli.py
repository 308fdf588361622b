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


_EVERY_HELP = """
import json, sys
import click
from click.testing import CliRunner
from bench.cli.main import cli

runner, out = CliRunner(), {"help": {}, "bad": {}}
for name in cli.list_commands(click.Context(cli)):
    command = cli.get_command(click.Context(cli), name)
    paths = [[name]] + [[name, sub] for sub in getattr(command, "commands", {})]
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"], terminal_width=100)
        out["help"][" ".join(path)] = [result.exit_code, result.output]
for bad in (["run", "--methods", "is,nope"], ["run", "--sigmas", "0.25,x"], ["train", "--twin-optimizer", "x"],
            ["run", "--ray-shard-size", "5"], ["run", "--ray", "auto", "--processes", "2"]):
    result = runner.invoke(cli, bad)
    out["bad"][" ".join(bad)] = [result.exit_code, result.output]
out["torch"] = "torch" in sys.modules
print(json.dumps(out))
"""


def test_every_commands_help_and_parse_errors_without_importing_torch() -> None:
    """``bench CMD --help`` for every command of the group (and every subcommand of ``bench import``), and the
    options checked when the command line is parsed, in one fresh process that never imports torch; the helps
    still list what the registries and the torch-free constants hold."""
    import json

    from bench import certifiers
    from bench.certifiers.engine import COMPILE_MODES
    from bench.cli.main import COMMAND_MODULES
    from bench.devices import PRECISION_CHOICES
    from bench.report.formats import FORMATS
    from lsrs.cohen_published import COHEN_DATASETS
    from lsrs.datasets import list_datasets
    from lsrs.training_choices import OPTIMIZERS, SCHEDULES

    done = subprocess.run([sys.executable, "-c", _EVERY_HELP], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["torch"] is False
    helps = {path: text for path, (code, text) in out["help"].items() if code == 0}
    assert set(helps) == set(out["help"])  # every --help exits 0
    assert {m.removeprefix("cmd_") for m in COMMAND_MODULES} <= set(helps)
    assert {"import certify-log", "import cohen-model"} <= set(helps)
    flat = {path: " ".join(text.split()) for path, text in helps.items()}  # wrapped lines joined
    for certifier in certifiers.registered():
        assert f"{certifier.key} = {' '.join(certifier.help.split())}" in flat["run"]
    assert all(f"{key} = " in flat["run"] for key in ("is", "ls", "lip"))
    assert f"[{'|'.join(PRECISION_CHOICES)}]" in flat["run"] and f"[{'|'.join(COMPILE_MODES)}]" in flat["run"]
    for command in ("run", "train", "info"):
        assert f"[{'|'.join(list_datasets())}]" in flat[command]
    assert f"[{'|'.join(OPTIMIZERS)}]" in flat["train"] and f"[{'|'.join(SCHEDULES)}]" in flat["train"]
    assert f"[{'|'.join(FORMATS)}]" in flat["report"]
    assert f"[{'|'.join(COHEN_DATASETS)}]" in flat["import cohen-model"]
    for args, (code, text) in out["bad"].items():
        errors = [line for line in text.splitlines() if line.startswith("Error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in text, (args, text)
    assert "methods are 'is', 'ls' and 'lip'" in out["bad"]["run --methods is,nope"][1]


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
