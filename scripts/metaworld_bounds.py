"""Success-rate bounds of an ML1 suite's test goals: Meta-World's scripted expert vs random and zero actions.

``python -m scripts.metaworld_bounds --suite ml1-reach`` runs, for every test goal, ``--episodes`` episodes
(the protocol's 3 evaluation episodes by default) of each policy through the suite's own batch environment
and prints the success rate (any-step ``info["success"]``, averaged per goal, every goal counted once).
The expert needs the goal the ML observation hides: it is put back into the last three observation entries
from the task's ``rand_vec`` (object and goal positions; goal last), which holds for reach, push and
pick-place. These numbers are the upper bound and the floor next to which a method's success is read.

``--suite`` must be an ``ml1-<task>`` suite, ``--episodes`` from 1 to ``MAX_EPISODES`` (each one plays
every test goal for the whole horizon, for each of the three policies) and ``--workers`` at least 1 (more
than the test goals are capped at one per goal, and the output says so). Bad input gets one line on
stderr and exit code 2, before any simulator is built.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmark.cli import OneLineParser, positive_int
from benchmark.registry import RegistryError, load_suite, suite_names

PROG = "python -m scripts.metaworld_bounds"
#: The most episodes per goal and policy: 1,000 plays 150,000 episodes of 500 steps (over a day on 2 cores).
MAX_EPISODES = 1_000
#: Meta-World task names whose scripted policy class is not named after the task.
POLICY_NAMES = {"peg-insert-side": "SawyerPegInsertionSideV3Policy"}


def policy_class(suite_name: str) -> type:
    """Meta-World's scripted expert for an ML1 suite: ``ml1-pick-place`` -> ``SawyerPickPlaceV3Policy``
    from ``metaworld.policies`` (``POLICY_NAMES`` where the class is named otherwise). Raises
    ``ValueError`` (one line) where there is no such class."""
    import metaworld.policies as policies

    task = suite_name.removeprefix("ml1-")
    name = POLICY_NAMES.get(
        task, "Sawyer" + "".join(part.capitalize() for part in task.split("-")) + "V3Policy"
    )
    if not hasattr(policies, name):
        raise ValueError(f"--suite {suite_name}: no scripted policy {name} in metaworld.policies")
    return getattr(policies, name)


def success_rates(suite_name: str, episodes: int, num_workers: int) -> dict[str, float]:
    """Success rate in [0, 1] of the scripted expert, uniform-random and zero actions on the suite's test
    goals: ``episodes`` episodes per goal through the suite's batch env in ``num_workers`` processes,
    success at any step, averaged per goal then over goals. Raises ``RegistryError`` for an unknown
    suite and ``ValueError`` from ``policy_class``."""
    suite = load_suite(suite_name)
    tasks = suite.tasks("test")
    goals = np.array([t.params["rand_vec"][-3:] for t in tasks])
    expert = policy_class(suite_name)()
    rng = np.random.default_rng(0)

    def scripted(obs: np.ndarray) -> np.ndarray:
        full = obs.astype(np.float64).copy()
        full[:, -3:] = goals
        return np.stack([expert.get_action(o) for o in full])

    policies = {
        "scripted expert": scripted,
        "uniform random": lambda obs: rng.uniform(-1, 1, size=(len(obs), suite.act_dim)),
        "zero actions": lambda obs: np.zeros((len(obs), suite.act_dim)),
    }
    out = {}
    with suite.make_batch_env(len(tasks), num_workers) as env:
        env.set_tasks(tasks)
        for name, policy in policies.items():
            success = np.zeros((len(tasks), episodes))
            for k in range(episodes):
                obs = env.reset([1000 * k + i for i in range(len(tasks))])
                active = np.ones(len(tasks), bool)
                for _ in range(suite.horizon):
                    res = env.step(np.clip(policy(obs), -1.0, 1.0), active)
                    success[:, k] = np.maximum(success[:, k], res.success)
                    obs = res.obs
            out[name] = float(success.mean(axis=1).mean())
    return out


def ml1_suite(text: str) -> str:
    """argparse type: the name of a registered ``ml1-<task>`` suite (checked against the registry's names,
    which loads no simulator)."""
    ml1 = [n for n in suite_names() if n.startswith("ml1-")]
    if text not in ml1:
        tasks = ", ".join(n.removeprefix("ml1-") for n in ml1) or "none is registered here"
        raise argparse.ArgumentTypeError(f"expected an ML1 suite, ml1-<task>, got {text!r} (tasks: {tasks})")
    return text


def episodes_type(text: str) -> int:
    """argparse type: episodes per goal and policy, an integer from 1 to ``MAX_EPISODES``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_EPISODES:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 1 to {MAX_EPISODES:,} (each episode plays every test goal, for "
            f"each of the three policies), got {text!r}"
        )
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``argv``; None: ``sys.argv[1:]``): ``--suite``, ``--episodes``, ``--workers``. A
    malformed one (a flag given twice too) exits with one line on stderr and code 2 (``OneLineParser``)."""
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument(
        "--suite", type=ml1_suite, default="ml1-reach", help="an ML1 suite, ml1-<task> (default ml1-reach)"
    )
    p.add_argument(
        "--episodes",
        type=episodes_type,
        default=3,
        help=f"episodes per test goal and policy, 1 to {MAX_EPISODES:,} (default 3, the protocol's)",
    )
    p.add_argument(
        "--workers",
        type=positive_int("--workers"),
        default=2,
        help="processes stepping the simulators, at least 1; more than the test goals are capped at one "
        "per goal (default 2)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse ``--suite`` (default ml1-reach), ``--episodes`` (3) and ``--workers`` (2), print the three
    success rates; returns 0. Bad input exits with one line on stderr and code 2 before any simulator
    is built: the parser's checks, a suite without a scripted policy or one that fails to load."""
    args = parse_args(argv)
    try:
        policy_class(args.suite)
        goals = len(load_suite(args.suite).tasks("test"))
    except (RegistryError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    workers = min(args.workers, goals)
    capped = f"; --workers {args.workers} capped at {goals}, one per goal" if workers < args.workers else ""
    rates = success_rates(args.suite, args.episodes, workers)
    print(f"{args.suite}: success rate on the {goals} test goals ({args.episodes} episodes each{capped})")
    for name, rate in rates.items():
        print(f"  {name:<16} {rate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
