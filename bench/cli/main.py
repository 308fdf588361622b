"""The ``bench`` command line: train | run | report | demo | info | import.

Each command parses and validates its options, then calls one function of the harness or the library.
Commands are imported on first use (:class:`LazyGroup`), so ``bench --help`` does not import torch; nor does
``bench CMD --help`` or an option refused while parsing: a command module imports torch only in its body.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import click
from click.utils import make_default_short_help

from bench import __version__
from bench.errors import IncompleteRun, UsageError


class LazyGroup(click.Group):
    """The command group: ``bench CMD`` imports only ``bench.cli.cmd_<CMD>``; ``bench --help`` imports none of them.

    A command's name is its module's name without ``cmd_``; the one-line summaries of ``bench --help`` are
    read from each module's source (the ``short_help`` of its ``command``, parsed, not run), so listing the
    commands does not import torch.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *(m.removeprefix("cmd_") for m in _available())})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and f"cmd_{name}" in _available():
            self.add_command(importlib.import_module(f"bench.cli.cmd_{name}").command, name)
        return self.commands.get(name)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        """Run the command; the harness's own errors become click's: exit code 2 (1 for an incomplete run) and
        one line, no traceback."""
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise usage_error(exc) from None
        except IncompleteRun as exc:
            raise click.ClickException(str(exc)) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        rows = [(name, make_default_short_help(_summary(name), limit)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def usage_error(exc: UsageError) -> click.ClickException:
    """A :class:`bench.errors.UsageError` in click's words: a bad value of its option, or one line."""
    if exc.option:
        return click.BadParameter(exc.format_message(), param_hint=exc.option)
    error = click.ClickException(exc.format_message())
    error.exit_code = 2
    return error


def _available() -> list[str]:
    """The command modules of :data:`COMMAND_MODULES` present in this checkout."""
    return [m for m in COMMAND_MODULES if (_HERE / f"{m}.py").is_file()]


def _summary(name: str) -> str:
    """The ``short_help`` of the decorator of ``command`` in ``bench/cli/cmd_<name>.py`` (else its docstring),
    read with :mod:`ast` (nothing imported)."""
    tree = ast.parse((_HERE / f"cmd_{name}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "command":
            for decorator in node.decorator_list:
                for keyword in getattr(decorator, "keywords", []):
                    if keyword.arg == "short_help" and isinstance(keyword.value, ast.Constant):
                        return str(keyword.value.value)
            return ast.get_docstring(node) or ""
    return ""


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bench")
def cli() -> None:
    """Benchmark latent-space (LS-RS) against input-space (IS-RS) randomized smoothing.

    \b
    Typical session:
      bench demo                                     # everything on the embedded digits data
      bench demo --dataset mnist                     # real MNIST scans at 32x32 (pip install -e ".[mnist]")
      bench train --dataset digits --fors 0,1,5,9,13 --sigmas 0.25,0.5,1.0
      bench run   --dataset digits --fors 1,5,9,13 --sigmas 0.25,0.5,1.0
      bench report results/<run> --format markdown
      bench info  --model resnet18 --fors 9          # Lipschitz audit and FLOP split
      bench train --dataset imagenet --fors 0,16     # the paper's WRN-34-2 pair (--arch for your own model)
      bench import certify-log LOG --dataset cifar10 --sigma 0.25 --out results/peer   # a published peer
    """


COMMAND_MODULES = ("cmd_train", "cmd_run", "cmd_report", "cmd_demo", "cmd_info", "cmd_import")
_HERE = Path(__file__).resolve().parent


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
