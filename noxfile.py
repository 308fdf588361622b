"""nox sessions: tests, lint, benchmark, docs. Each reuses the current interpreter's torch (no re-download)."""

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
    """Certification-speed benchmarks: pytest-benchmark cases, the engine-equivalence test and the same-run
    ratio guard, with more rounds than CI, printing the ratio table for every FoR (tests/benchmarks/README.md).
    Without xdist (``-n 0``): pytest-benchmark times nothing on xdist workers."""
    session.env.update({"LSRS_BENCH_ROUNDS": "3", "LSRS_SPEED_ROUNDS": "9", "LSRS_SPEED_ALL": "1"})
    session.run(
        "python", "-m", "pytest", "tests/benchmarks", "tests/test_engine_equivalence.py", "-q", "-n", "0",
        "--benchmark-timer=time.process_time", "--benchmark-columns=min,median,max,rounds", *session.posargs,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml; needs the docs extra), built with ``--strict``: a broken link, a
    docstring the API reference cannot render or a malformed entry of docs/data/benchmarks.yaml fails it."""
    session.run("mkdocs", "build", "--strict", *session.posargs)
