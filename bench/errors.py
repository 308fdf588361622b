"""The harness's one domain error.

Code below ``bench/cli/`` raises :class:`UsageError` for what a user can fix (a missing checkpoint, a σ
mismatch, a corrupt file); only the command line knows click and turns it into exit code 2 and one line
(:mod:`bench.cli.main`), as pip and black do: the core raises, the command line formats.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem with the user's input or files, in one line that says what is wrong and how to fix it.

    ``option`` names the command-line option at fault (``"--fors"``), when there is one: the command line then
    words it as a bad value of that option.
    """

    exit_code = 2
    option: str | None = None

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def format_message(self) -> str:
        """The one line a user reads."""
        return str(self)


class IncompleteRun(Exception):
    """Some of a run's work failed (every other shard is stored); running the same command again resumes it.
    The command line prints the one line and exits with code 1."""

    exit_code = 1
