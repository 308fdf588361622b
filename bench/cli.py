"""The ``bench`` command line: train | run | report | demo | info | import.

Each command parses and validates its options, then calls one function of the harness or the library.
"""

from __future__ import annotations

import click

from bench import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
      bench import certify-log LOG --dataset cifar10 --sigma 0.25 --out results/peer   # a published peer
    """


COMMAND_MODULES = ("cmd_train", "cmd_run", "cmd_report", "cmd_demo", "cmd_info", "cmd_import")


def _register() -> None:
    """Add each command module's ``command`` to the group."""
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            continue
        cli.add_command(module.command)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
