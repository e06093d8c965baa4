"""Example plugin: a uniform-random 'method' and a 1D navigation suite, registered by entry points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.suites.base import BatchEnv, StepResult, Suite
from metarl_protocol import AdaptiveAgent, MetaLearner, Task


@dataclass
class UniformRandomConfig:
    trials_per_iteration: int = 4


class _RandomAgent(AdaptiveAgent):
    """Uniform actions from torch's generator (the harness forks it around evaluations)."""

    def __init__(self, act_dim: int, evaluation: bool) -> None:
        self.act_dim, self.evaluation = act_dim, evaluation

    def new_trial(self, task_keys) -> None:
        self.n = len(task_keys)

    def act(self, obs):
        return (torch.rand(len(obs), self.act_dim) * 2 - 1).numpy(), {}

    def observe(self, transition) -> None:
        pass


class UniformRandom(MetaLearner):
    """Acts uniformly at random; 'trains' by sampling trials (a floor for every suite)."""

    name = "uniform-random"
    Config = UniformRandomConfig

    def train_step(self, ctx) -> dict[str, float]:
        batch = ctx.sample_trials(self.make_agent(), ctx.sample_tasks(self.config.trials_per_iteration))
        return {"train_return": float(batch.episode_returns().mean())}

    def make_agent(self, evaluation: bool = False) -> AdaptiveAgent:
        return _RandomAgent(self.spec.act_dim, evaluation)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _LineEnv(BatchEnv):
    obs_dim, act_dim = 1, 1

    def __init__(self, n: int) -> None:
        self.num_envs, self.x, self.goal = n, np.zeros(n), np.zeros(n)

    def set_tasks(self, tasks):
        self.goal = np.array([t.params["goal"] for t in tasks])

    def reset(self, seeds):
        self.x = np.zeros(self.num_envs)
        return self.x[:, None].astype(np.float32)

    def step(self, actions, active):
        self.x = self.x + 0.1 * actions[:, 0] * active
        n = self.num_envs
        r = -np.abs(self.x - self.goal)
        return StepResult(
            self.x[:, None].astype(np.float32), r.astype(np.float32), np.zeros(n, bool), np.zeros(n, bool)
        )


class LineNav(Suite):
    name, family, horizon, episodes_per_trial, eval_episodes = "line-nav", "point-nav", 20, 2, 3
    obs_dim, act_dim = 1, 1

    def _make_tasks(self, split):
        rng = np.random.default_rng([self.task_seed, ("train", "test").index(split)])
        return [
            Task(i, split, {"goal": float(g)}, f"goal={g:+.2f}") for i, g in enumerate(rng.uniform(-1, 1, 8))
        ]

    def make_batch_env(self, num_envs, num_workers=1):
        return _LineEnv(num_envs)
