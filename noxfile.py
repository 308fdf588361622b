"""nox sessions: tests, lint, benchmark. Each reuses the current interpreter's torch (no re-download)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The unit and integration tests (the README's test command)."""
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the packages and tests."""
    session.run("ruff", "check", "lsrs", "bench", "tests", "noxfile.py")


@nox.session
def benchmark(session: nox.Session) -> None:
    """pytest-benchmark suite of certification speed (ratios measured in one run)."""
    session.run("python", "-m", "pytest", "tests/benchmarks", "-q", "--benchmark-only", *session.posargs)
