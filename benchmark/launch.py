"""Launching one run from command-line settings: resolve the configuration, run it, print its summary.

Shared by the CLI (``metarl-bench run``) and the sweep backends, so neither imports the other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmark.config import ConfigError


def resolve_run(
    algo: str, suite_name: str, profile: str, overrides: list[str], check_suite: bool = True
) -> tuple[Any, Any, Any, Any]:
    """(learner class, suite, HarnessConfig, method config) for one run; every setting validated.

    Raises ``RegistryError`` (unknown name), ``SuiteError`` (a suite that breaks the suite contract) or
    ``ConfigError`` (bad setting) before anything is written.
    """
    from benchmark import registry
    from benchmark.config import parse_overrides, resolve

    learner_cls = registry.load_algorithm(algo)
    suite = registry.load_suite(suite_name)
    from benchmark.suites.checks import check_family

    check_family(suite)  # before the method's profile for that family is asked for
    if check_suite:  # (``list --settings`` shows settings without building a suite's task lists)
        check_suite_once(suite)
    run_cfg, algo_cfg = resolve(
        profile,
        suite.family,
        learner_cls.Config,
        learner_cls.profile(profile, suite.family),
        parse_overrides(overrides),
    )
    try:
        learner_cls.validate(algo_cfg, suite.spec())
    except ValueError as exc:
        raise ConfigError(f"{algo}: {exc}") from None
    from benchmark.runner import validation_split

    try:
        validation_split(suite, run_cfg.validation_tasks)
    except ValueError as exc:
        raise ConfigError(f"--set {exc}") from None
    return learner_cls, suite, run_cfg, algo_cfg


def check_suite_once(suite: Any) -> None:
    """The suite contract (``benchmark.suites.checks``: its facts, then a short probe of its batch
    environment), once per suite object; raises ``SuiteError`` (one line) before anything is written."""
    if getattr(suite, "_contract_checked", False):
        return
    from benchmark.suites.checks import check_suite_facts, probe_suite

    check_suite_facts(suite)
    probe_suite(suite)
    suite._contract_checked = True


def run_one(algo: str, suite_name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate one (algo, suite, seed) with the CLI's run options; returns the summary."""
    from benchmark.runner import RunId, Runner

    learner_cls, suite, run_cfg, algo_cfg = resolve_run(algo, suite_name, args.profile, args.overrides)
    run_id = RunId(
        algo=algo, suite=suite_name, seed=seed, profile=args.profile, out=Path(args.out), device=args.device
    )
    runner = Runner(
        run_id,
        suite,
        learner_cls,
        algo_cfg,
        run_cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return runner.execute()


def print_summary(algo: str, suite: str, seed: int, summary: dict[str, Any]) -> None:
    """The final-evaluation table and headline numbers of a run, on stdout."""
    table = summary["table"]
    print(
        f"\n{algo} on {suite}, seed {seed}: final evaluation at the budget of "
        f"{summary['budget_steps']:,} env "
        f"steps ({summary['env_steps']:,} consumed, {summary['iterations']} "
        f"iteration{'' if summary['iterations'] == 1 else 's'}; {summary['dir']})"
    )
    if len(table):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    for split, h in sorted(summary["headline"].items()):
        print(f"  headline [{split}]: " + ", ".join(f"{k}={v:.3f}" for k, v in h.items()))
