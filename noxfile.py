"""Developer and user entry points: tests, slow learning tests, benchmark runs, figures, perf, lint.

Every session installs the project with the pins in constraints.txt (torch 2.13.0 CPU build).
Virtual environments are reused between runs (``nox.options.reuse_venv``).
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]
CONSTRAINTS = ("-c", "constraints.txt")


def install(session: nox.Session, extras: str = "test") -> None:
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Fast unit tests (learning tests are marked slow and excluded), the Ray sweep tests included."""
    install(session, "test,ray")
    session.run("pytest", "-q", *session.posargs, env={"METARL_BENCH_REQUIRE_RAY": "1"})


@nox.session
def slow(session: nox.Session) -> None:
    """The learning tests on point-nav (minutes each)."""
    install(session, "test,ray")
    session.run("pytest", "-q", "-m", "slow", *session.posargs, env={"METARL_BENCH_REQUIRE_RAY": "1"})


@nox.session
def benchmark(session: nox.Session) -> None:
    """`nox -s benchmark -- --algo trmrl [--suite ...] [--seeds 0-4] [--backend ray]`: runs, then figures.

    The five-method comparison of results/README.md: ``nox -s benchmark -- --algo all --suite point-nav
    halfcheetah-vel ml1-reach --seeds 3-7 --jobs 2`` (resumable with ``--resume``)."""
    install(session, "test,ray" if "ray" in session.posargs else "test")
    args = session.posargs or ["--algo", "rl2"]
    session.run("metarl-bench", "sweep", *args)


@nox.session
def figures(session: nox.Session) -> None:
    """Regenerate every figure and table from CSVs: the committed example and your results/runs, or the
    results directories given after ``--``."""
    install(session)
    roots = session.posargs or [r for r in ("results/example/runs", "results/runs") if Path(r).is_dir()]
    for root in roots:
        session.run("metarl-bench", "figures", root)


@nox.session
def perf(session: nox.Session) -> None:
    """Throughput and memory of every method against the raw simulators and SB3 PPO / SAC at equal work,
    paper-profile projections and the scaling table: ``python -m scripts.perf`` (writes results/perf*)."""
    install(session, "test,perf")
    session.run("python", "-m", "scripts.perf", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
