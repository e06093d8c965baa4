"""Success-rate bounds of an ML1 suite's test goals: Meta-World's scripted expert vs random and zero actions.

``python scripts/metaworld_bounds.py --suite ml1-reach`` runs, for every test goal, ``--episodes`` episodes
(the protocol's 3 evaluation episodes by default) of each policy through the suite's own batch environment
and prints the success rate (any-step ``info["success"]``, averaged per goal, every goal counted once).
The expert needs the goal the ML observation hides: it is put back into the last three observation entries
from the task's ``rand_vec`` (object and goal positions; goal last), which holds for reach, push and
pick-place. These numbers are the upper bound and the floor next to which a method's success is read.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmark.registry import load_suite


def policy_class(suite_name: str) -> type:
    """Meta-World's scripted expert for an ML1 suite: ``ml1-pick-place`` -> ``SawyerPickPlaceV3Policy``
    from ``metaworld.policies``. Raises ``SystemExit`` (with the message) where there is no such class."""
    import metaworld.policies as policies

    task = suite_name.removeprefix("ml1-")
    name = "Sawyer" + "".join(part.capitalize() for part in task.split("-")) + "V3Policy"
    if not hasattr(policies, name):
        raise SystemExit(f"no scripted policy {name} in metaworld.policies for suite {suite_name}")
    return getattr(policies, name)


def success_rates(suite_name: str, episodes: int, num_workers: int) -> dict[str, float]:
    """Success rate in [0, 1] of the scripted expert, uniform-random and zero actions on the suite's test
    goals: ``episodes`` episodes per goal through the suite's batch env in ``num_workers`` processes,
    success at any step, averaged per goal then over goals. Raises ``RegistryError`` for an unknown
    suite and ``SystemExit`` from ``policy_class``."""
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


def main(argv: list[str] | None = None) -> int:
    """Parse ``--suite`` (default ml1-reach), ``--episodes`` (3) and ``--workers`` (2), print the three
    success rates; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="ml1-reach")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rates = success_rates(args.suite, args.episodes, args.workers)
    print(f"{args.suite}: success rate on the 50 test goals ({args.episodes} episodes each)")
    for name, rate in rates.items():
        print(f"  {name:<16} {rate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
