"""point-nav: MAML's 2D navigation, vectorised over tasks in pure numpy (the fast test bed).

Definition (MAML 2-D navigation): the point starts at (0, 0); the goal g ~ U[-0.5, 0.5]^2; the
environment action is clipped to [-0.1, 0.1]^2 and p' = p + clip(a); reward -||p' - g||_2; horizon 100;
observation p.
Agents act in [-1, 1]^2, mapped linearly onto [-0.1, 0.1]^2. OOD goals have max-norm in (0.5, 1.0].
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import gymnasium as gym
import numpy as np

from benchmark.suites.base import BatchEnv, ReferenceReturns, StepResult, Suite, Task

MAX_STEP = 0.1


def _goal_task(task_id: int, split: str, goal: np.ndarray) -> Task:
    gx, gy = (round(float(v), 6) for v in goal)
    return Task(task_id, split, {"goal_x": gx, "goal_y": gy}, f"goal=({gx:+.3f},{gy:+.3f})")


class PointNavEnv(gym.Env):
    """A single point-nav environment (gymnasium API) for the env checker and for plugins."""

    metadata = {"render_modes": []}

    def __init__(self, task: Task | None = None) -> None:
        # 100 steps of at most 0.1 per axis keep |p| <= 10
        self.observation_space = gym.spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-MAX_STEP, MAX_STEP, shape=(2,), dtype=np.float32)
        self.goal = np.zeros(2)
        self.pos = np.zeros(2)
        if task is not None:
            self.set_task(task)

    def set_task(self, task: Task) -> None:
        """Goal g from ``task.params`` ``goal_x`` and ``goal_y`` (``KeyError`` if absent). See
        ``TaskEnv.set_task``."""
        self.goal = np.array([task.params["goal_x"], task.params["goal_y"]], dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Put the point at (0, 0); returns (p (2,) float32, {}). The start does not depend on ``seed``."""
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        return self.pos.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """p' = p + clip(action, -0.1, 0.1) (environment units, not [-1, 1]); returns (p' (2,) float32,
        reward -||p' - g||_2, never terminated, never truncated, {})."""
        self.pos = self.pos + np.clip(np.asarray(action, dtype=np.float64), -MAX_STEP, MAX_STEP)
        reward = -float(np.linalg.norm(self.pos - self.goal))
        return self.pos.astype(np.float32), reward, False, False, {}


class PointNavBatchEnv(BatchEnv):
    """All point-nav environments of a batch as one numpy array: no per-env Python loop."""

    obs_dim = 2
    act_dim = 2

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.goals = np.zeros((num_envs, 2))
        self.pos = np.zeros((num_envs, 2))

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """One goal per row from each task's ``goal_x`` / ``goal_y``; raises ``ValueError`` unless
        ``len(tasks) == num_envs``. See ``BatchEnv.set_tasks``."""
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        self.goals = np.array([[t.params["goal_x"], t.params["goal_y"]] for t in tasks], dtype=np.float64)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Every point back to (0, 0); returns (B, 2) float32 zeros (``seeds`` are not needed)."""
        self.pos = np.zeros((self.num_envs, 2))
        return self.pos.astype(np.float32)

    def step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        """Move each active row by ``clip(actions, -1, 1) * 0.1`` ((B, 2) in [-1, 1] -> [-0.1, 0.1]^2);
        reward (B,) -||p' - g||_2; never terminated, no success. See ``BatchEnv.step``."""
        delta = np.clip(actions, -1.0, 1.0) * MAX_STEP
        self.pos = np.where(active[:, None], self.pos + delta, self.pos)
        reward = -np.linalg.norm(self.pos - self.goals, axis=1)
        zeros = np.zeros(self.num_envs, dtype=bool)
        return StepResult(self.pos.astype(np.float32), reward.astype(np.float32), zeros, zeros)


class PointNav(Suite):
    """point-nav, as defined in the module docstring: horizon 100, training trials of 2 episodes,
    6-episode evaluation trials, no success notion. One generator seeded with ``task_seed`` draws 1000
    train and 20 test goals from U[-0.5, 0.5]^2, then (for the ood split) 20 OOD goals from U[-1, 1]^2
    keeping those with max-norm > 0.5. Test and OOD have their own reference returns."""

    name = "point-nav"
    family = "point-nav"
    horizon = 100
    episodes_per_trial = 2
    eval_episodes = 6
    has_success = False
    obs_dim = 2
    act_dim = 2
    n_train, n_test, n_ood = 1000, 20, 20
    description = "2D point to a goal in U[-0.5,0.5]^2; reward -||p-g||; OOD goals with max-norm in (0.5,1]"

    def splits(self) -> tuple[str, ...]:
        """train, test and ood (``Suite.splits``)."""
        return ("train", "test", "ood")

    def _make_tasks(self, split: str) -> list[Task]:
        # One generator for all splits, drawn in a fixed order, so train and test never share a goal.
        rng = np.random.default_rng(self.task_seed)
        train = rng.uniform(-0.5, 0.5, size=(self.n_train, 2))
        test = rng.uniform(-0.5, 0.5, size=(self.n_test, 2))
        goals = {"train": train, "test": test}
        if split == "ood":
            ood = []
            while len(ood) < self.n_ood:
                g = rng.uniform(-1.0, 1.0, size=2)
                if np.abs(g).max() > 0.5:
                    ood.append(g)
            goals["ood"] = np.array(ood)
        return [_goal_task(i, split, g) for i, g in enumerate(goals[split])]

    def make_batch_env(self, num_envs: int, num_workers: int = 1) -> BatchEnv:
        """A ``PointNavBatchEnv`` of ``num_envs`` rows, stepped in this process (``num_workers`` is
        ignored). See ``Suite.make_batch_env``."""
        return PointNavBatchEnv(num_envs)

    def reference_returns(self, split: str = "test") -> ReferenceReturns | None:
        """Computed on the goals of ``split`` itself (test and OOD each have their own); else None."""
        if split not in ("test", "ood"):
            return None
        goals = self.tasks(split)
        rand, oracle = _point_nav_references(tuple((t.params["goal_x"], t.params["goal_y"]) for t in goals))
        return ReferenceReturns(
            random=rand,
            oracle=oracle,
            source=f"computed by the harness on the {len(goals)} {split} goals: uniform-random actions "
            "(100 seeds) and a scripted policy stepping straight at the goal",
        )


@cache
def _point_nav_references(goals: tuple[tuple[float, float], ...], n_random: int = 100) -> tuple[float, float]:
    """Mean per-episode return of a uniform-random and a goal-aware scripted policy."""
    g = np.asarray(goals)
    rng = np.random.default_rng(0)
    # random: (n_random, n_goals) rollouts at once
    pos = np.zeros((n_random, len(g), 2))
    rand_ret = np.zeros((n_random, len(g)))
    scripted = np.zeros((len(g), 2))
    oracle_ret = np.zeros(len(g))
    for _ in range(PointNav.horizon):
        pos = pos + rng.uniform(-MAX_STEP, MAX_STEP, size=pos.shape)
        rand_ret -= np.linalg.norm(pos - g, axis=-1)
        scripted = scripted + np.clip(g - scripted, -MAX_STEP, MAX_STEP)
        oracle_ret -= np.linalg.norm(scripted - g, axis=-1)
    return float(rand_ret.mean()), float(oracle_ret.mean())
