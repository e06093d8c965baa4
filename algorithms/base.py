"""The two contracts between a method and the harness.

* ``AdaptiveAgent`` — what the one evaluator (and the sampler) drives: a batch of B parallel trials,
  one task each. ``new_trial`` clears the adaptation state, ``act`` picks actions, ``observe`` sees
  every transition, ``end_episode`` marks an episode boundary inside the trial. Memory methods
  (RL², TrMRL, VariBAD) adapt in ``observe``; PEARL infers its posterior from what it observed;
  MAML takes inner gradient steps in ``end_episode``.
* ``MetaLearner`` — one meta-training step at a time, given a ``TrainContext`` through which it asks
  the harness for trials on training tasks. The harness never looks inside a method.

Everything a method needs to resume exactly lives in ``state_dict`` (tensors, numbers, strings,
lists and dicts only, so checkpoints load with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

if TYPE_CHECKING:  # imported for type hints only: algorithms never import harness internals at run time
    from benchmark.sampler import TrialBatch
    from benchmark.suites.base import Task


@dataclass(frozen=True)
class EnvSpec:
    """What a method may know about a suite before training."""

    obs_dim: int
    act_dim: int
    horizon: int
    episodes_per_trial: int
    family: str  # "point-nav", "locomotion", "metaworld", or a plugin's


@dataclass
class Transition:
    """One synchronous step of B parallel trials (numpy arrays over the batch)."""

    obs: np.ndarray  # (B, obs_dim) observation the action was taken in
    action: np.ndarray  # (B, act_dim) action sent to the env, clipped to [-1, 1]
    reward: np.ndarray  # (B,)
    next_obs: np.ndarray  # (B, obs_dim)
    terminated: np.ndarray  # (B,) bool: MDP termination (no bootstrap)
    episode_done: np.ndarray  # (B,) bool: the episode ends after this step (termination or horizon)
    active: np.ndarray  # (B,) bool: False where the env had already terminated; ignore those rows


class AdaptiveAgent(abc.ABC):
    """A batch of B agents, each adapting to its own task within a trial."""

    @abc.abstractmethod
    def new_trial(self, num_envs: int) -> None:
        """A new task for each of ``num_envs`` slots: clear all adaptation state."""

    @abc.abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions (B, act_dim) in [-1, 1] (pre-clipping) and per-step extras to keep in the batch.

        Extras (e.g. ``log_prob``, ``value``) are stored by the sampler as (B, T, ...) arrays.
        """

    @abc.abstractmethod
    def observe(self, transition: Transition) -> None:
        """See the transition that followed ``act`` (update memory, beliefs, buffers)."""

    def end_episode(self) -> None:  # noqa: B027 - default: nothing to do
        """All B episodes ended; the next ``act`` is the first step of the next episode."""

    def clone(self) -> AdaptiveAgent:
        """An independent agent with the same parameters, for another slice of the batch.

        The sampler runs one clone per group of simulators so that one group's policy call overlaps
        the others' physics. The default shallow copy is right when ``new_trial`` rebinds (never
        mutates in place) every piece of adaptation state; agents for which that is not so override it.
        """
        return copy.copy(self)


class TrainContext(Protocol):
    """What the harness offers a method during a training step."""

    rng: np.random.Generator
    device: torch.device

    def train_tasks(self) -> Sequence[Task]:
        """The suite's meta-training tasks (never test or OOD tasks)."""
        ...

    def sample_tasks(self, n: int) -> list[Task]:
        """``n`` training tasks drawn with the run's generator."""
        ...

    def sample_trials(
        self,
        agent: AdaptiveAgent,
        tasks: Sequence[Task],
        episodes: int | None = None,
        deterministic: bool = False,
    ) -> TrialBatch:
        """Run one trial per task (``episodes`` defaults to the suite's trial length); counts env steps."""
        ...


class MetaLearner(abc.ABC):
    """A meta-RL method. Subclasses set ``Config`` (a dataclass of hyperparameters) and ``name``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, spec: EnvSpec, config: Any, device: torch.device) -> None:
        self.spec = spec
        self.config = config
        self.device = device

    @classmethod
    def profile(cls, profile: str, family: str) -> dict[str, Any]:
        """Hyperparameter overrides for a profile (``quick`` or ``paper``) on a suite family."""
        return {}

    @abc.abstractmethod
    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """One meta-training iteration; returns the method's own metrics for progress.csv."""

    @abc.abstractmethod
    def make_agent(self) -> AdaptiveAgent:
        """An agent for meta-test that uses the current parameters."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training exactly (networks, optimisers, schedules)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
