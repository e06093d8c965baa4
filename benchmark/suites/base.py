"""What a task suite is: a stated task distribution with seeded, disjoint splits.

A suite owns its task definitions (one place each), its horizon and trial length, its reference
returns for normalisation and a factory for a *batch environment*: ``num_envs`` environments, one per
task, stepped together. Agents always act in the normalised box ``[-1, 1]^act_dim``; the batch
environment maps actions linearly onto the simulator's own bounds, so every method sees the same
action scale on every suite.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metarl_protocol import SPLITS, SuiteSpec, Task

__all__ = ["SPLITS", "Task", "BatchEnv", "ReferenceReturns", "StepResult", "Suite", "scale_actions"]


@dataclass(frozen=True)
class ReferenceReturns:
    """Per-episode returns of a random and an oracle policy, for normalised return.

    normalised = (R - random) / (oracle - random), computed per episode.
    """

    random: float
    oracle: float
    source: str

    def normalise(self, ret: np.ndarray | float) -> np.ndarray | float:
        """``(ret - random) / (oracle - random)`` in float64, elementwise: per-episode returns in, the
        same shape out (0 = random, 1 = oracle)."""
        return (np.asarray(ret, dtype=np.float64) - self.random) / (self.oracle - self.random)


@dataclass(frozen=True)
class StepResult:
    """What one synchronous step of a batch environment returns (arrays over envs)."""

    obs: np.ndarray  # (B, obs_dim) float32
    reward: np.ndarray  # (B,) float32
    terminated: np.ndarray  # (B,) bool: the MDP ended (e.g. the ant fell); not a time limit
    success: np.ndarray  # (B,) bool: info["success"] where the suite has one, else False


class BatchEnv(abc.ABC):
    """``num_envs`` environments, one per task, stepped in lock-step.

    The sampler never steps an environment past ``Suite.horizon`` and never steps one whose episode
    already terminated (``active`` is False for it; its returned row is ignored).
    """

    num_envs: int
    obs_dim: int
    act_dim: int
    _pending: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # the default step_async's rows

    @abc.abstractmethod
    def set_tasks(self, tasks: Sequence[Task]) -> None:
        """Assign one task per environment (``len(tasks) == num_envs``)."""

    @abc.abstractmethod
    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Start a new episode in every environment; returns (B, obs_dim) float32."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        """Step every active environment with actions in [-1, 1]^act_dim (already clipped)."""

    # -- pipelining: rows that step while the policy acts for other rows --------------------------
    #: True where ``step_async`` really runs in the background (worker processes); the sampler then
    #: overlaps one group's policy call with another group's physics. False: the sampler acts for
    #: every group, then calls ``step`` once for the whole batch.
    pipelined: bool = False

    def step_async(self, rows: tuple[int, int], actions: np.ndarray, active: np.ndarray) -> None:
        """Start stepping rows ``rows = (start, stop)`` (actions and mask for those rows only).

        Calls for several row ranges may be outstanding; ``step_wait`` collects them in the same
        order. The default runs nothing until ``step_wait``.
        """
        if not hasattr(self, "_pending"):
            self._pending = {}
        self._pending[rows] = (actions, active)

    def step_wait(self, rows: tuple[int, int]) -> StepResult:
        """The result of the ``step_async`` call for ``rows`` (those rows only)."""
        actions, active = self._pending.pop(rows)
        start, stop = rows
        full_actions = np.zeros((self.num_envs, actions.shape[1]), actions.dtype)
        full_active = np.zeros(self.num_envs, bool)
        full_actions[start:stop], full_active[start:stop] = actions, active
        res = self.step(full_actions, full_active)
        return StepResult(*(x[start:stop] for x in (res.obs, res.reward, res.terminated, res.success)))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release worker processes, if any."""

    def __enter__(self) -> BatchEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Suite(abc.ABC):
    """A task distribution under the one evaluation protocol (docs/protocol.md).

    Subclasses set the class attributes and implement ``_make_tasks`` and ``make_batch_env``.
    """

    name: str = ""
    family: str = ""  # "point-nav", "locomotion" or "metaworld": selects profile defaults
    horizon: int = 100
    episodes_per_trial: int = 2  # training trial length K
    eval_episodes: int = 6  # fast-adaptation trial length at meta-test
    has_success: bool = False
    obs_dim: int = 0
    act_dim: int = 0
    task_seed: int = 1337  # fixed: every method and run seed sees the same task sets
    #: True only for a finite task set smaller than its splits (halfcheetah-dir's two directions):
    #: then the splits repeat the same tasks, and the test tasks are not unseen in training. Otherwise
    #: every task is defined once, in one split (``benchmark.suites.checks`` refuses repeated params).
    shared_tasks: bool = False
    description: str = ""

    def __init__(self) -> None:
        self._tasks: dict[str, list[Task]] = {}

    # -- tasks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _make_tasks(self, split: str) -> list[Task]:
        """Build the task list of one split deterministically from ``task_seed``."""

    def splits(self) -> tuple[str, ...]:
        """The splits this suite defines (``ood`` only where the suite defines one)."""
        return ("train", "test")

    def tasks(self, split: str) -> list[Task]:
        """The task list of ``split``, built by ``_make_tasks`` on first use and cached (the same list on
        every call). Raises ``ValueError`` for a split not in ``splits()``."""
        if split not in self.splits():
            raise ValueError(
                f"suite {self.name!r} has no split {split!r}; accepted: {', '.join(self.splits())}"
            )
        if split not in self._tasks:
            self._tasks[split] = self._make_tasks(split)
        return self._tasks[split]

    # -- environments --------------------------------------------------------------------------
    @abc.abstractmethod
    def make_batch_env(self, num_envs: int, num_workers: int = 1) -> BatchEnv:
        """A batch environment of ``num_envs`` environments (``num_workers`` processes for simulators)."""

    def spec(self) -> SuiteSpec:
        """What a method may know about this suite (dimensions, horizon, trial lengths, scored episodes)."""
        return SuiteSpec(
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            horizon=self.horizon,
            episodes_per_trial=self.episodes_per_trial,
            eval_episodes=self.eval_episodes,
            scored_episodes=tuple(self.headline_episodes()),
            family=self.family,
        )

    # -- evaluation protocol -------------------------------------------------------------------
    def headline_episodes(self) -> list[int]:
        """Eval-trial episode indices whose mean is the headline number (default: the last one)."""
        return [self.eval_episodes - 1]

    def periodic_eval_tasks(self, n: int) -> list[Task]:
        """A fixed subset of ``n`` test tasks for the periodic evaluation (evenly spaced)."""
        test = self.tasks("test")
        idx = np.linspace(0, len(test) - 1, num=min(n, len(test))).round().astype(int)
        return [test[i] for i in sorted(set(idx.tolist()))]

    def periodic_train_eval_tasks(self, n: int) -> list[Task]:
        """Training tasks also evaluated periodically, for meta-train curves (default: none)."""
        return []

    def final_eval_tasks(self) -> dict[str, list[Task]]:
        """Tasks of the final evaluation per split: every test task and every OOD task."""
        return {s: self.tasks(s) for s in self.splits() if s != "train"}

    # -- normalisation -------------------------------------------------------------------------
    def reference_returns(self, split: str = "test") -> ReferenceReturns | None:
        """Per-episode random / oracle returns of ``split``, or None where that split has none.

        References belong to a split: a split without its own (e.g. OOD on most suites, a tuning
        run's validation split) is reported raw, never on another split's scale.
        """
        return None

    def task_counts(self) -> dict[str, int]:
        """Tasks per split (suites whose task lists are costly to build override this)."""
        return {s: len(self.tasks(s)) for s in self.splits()}

    def summary(self) -> dict[str, Any]:
        """One line of ``metarl-bench list``."""
        return {
            "suite": self.name,
            "family": self.family,
            "horizon": self.horizon,
            "episodes_per_trial": self.episodes_per_trial,
            "eval_episodes": self.eval_episodes,
            "splits": self.task_counts(),
            "success": self.has_success,
            "headline_episodes": self.headline_episodes(),
        }


def scale_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map normalised actions in [-1, 1] linearly onto [low, high] (clipping first)."""
    a = np.clip(actions, -1.0, 1.0)
    return low + (a + 1.0) * 0.5 * (high - low)
