"""The one contract between the harness (``benchmark/``) and the methods (``algorithms/``, plugins).

Both sides import this module and nothing of each other, so there is no import circle. It holds the
data a method is given (``Task``, ``SuiteSpec``, ``Transition``, ``TrialBatch``) and the two roles a
method plays (``AdaptiveAgent``, ``MetaLearner``), plus what the harness offers during training
(``TrainContext``). ``docs/protocol.md`` states the rules in prose; ``benchmark.check`` tests them.

Rules every method follows (the harness relies on them; ``benchmark.check`` checks them):

* **Budget.** A run's budget is a number of environment steps, the same for every method on a
  (profile, suite family). ``train_step`` is one iteration of whatever size the method likes; the
  harness evaluates at the first iteration boundary at or past each evaluation mark.
* **Evaluation mode.** ``make_agent(evaluation=True)`` gives the agent the harness drives at
  meta-test; the agent decides how to act (mean actions, posterior sampling, stochastic episodes it
  learns from). The reported number is the return of the episodes it played.
* **Gradients.** ``act`` and ``observe`` run under ``torch.no_grad()`` (not ``inference_mode``), so
  tensors an agent keeps can take part in a gradient step later; ``new_trial`` and ``end_episode``
  run with gradients enabled (MAML's inner step).
* **Task identity.** ``new_trial(task_keys)`` gets one opaque integer key per row: the task id in
  training (equal keys = the same task), fresh keys at meta-test (never task parameters). Rows that
  share a key are contiguous and never split between two agent clones.
* **Randomness.** Agents draw from torch's global generator only in ``new_trial``, ``act`` and
  ``end_episode``; the sampler calls those in an order that does not depend on the process layout.
  ``observe`` draws nothing.
* **Isolation.** An evaluation agent never changes the learner (its ``state_dict`` is identical
  before and after an evaluation); ``train_step`` only ever receives training tasks.
* **State.** ``state_dict`` holds tensors, numbers, strings, ``None`` and lists / tuples / dicts of
  those (it must load with ``torch.load(weights_only=True)``); large append-only state lives in
  ``metarl_protocol.storage.AppendOnlyArrays`` under ``storage_dir`` and enters the state dict only
  as its length.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from metarl_protocol.settings import check_settings

if TYPE_CHECKING:  # torch is imported where it is used: listing suites must stay cheap
    import torch

SPLITS = ("train", "test", "ood")


@dataclass(frozen=True)
class Task:
    """One task of a suite. ``params`` is JSON-serialisable; ``description`` goes into eval.csv."""

    task_id: int
    split: str
    params: dict[str, Any]
    description: str


@dataclass(frozen=True)
class SuiteSpec:
    """What a method may know about a suite before training (never the task parameters).

    ``episodes_per_trial`` is the training trial length K, ``eval_episodes`` the meta-test trial
    length, and ``scored_episodes`` the 0-based meta-test episodes whose returns make the headline
    number (e.g. the last one on point-nav and locomotion, the 3 after 10 adaptation episodes on
    Meta-World). ``horizon`` is H, the steps of one episode.
    """

    obs_dim: int
    act_dim: int
    horizon: int
    episodes_per_trial: int
    eval_episodes: int
    scored_episodes: tuple[int, ...]
    family: str  # "point-nav", "locomotion" or "metaworld" (a plugin suite picks the closest)


@dataclass
class Transition:
    """One synchronous step of B parallel trials (numpy arrays over the batch).

    ``observe`` gets its own copies of the step the sampler records and scores: changing them in place
    changes nothing recorded.
    """

    obs: np.ndarray  # (B, obs_dim) observation the action was taken in
    action: np.ndarray  # (B, act_dim) action sent to the env, clipped to [-1, 1]
    reward: np.ndarray  # (B,)
    next_obs: np.ndarray  # (B, obs_dim)
    terminated: np.ndarray  # (B,) bool: MDP termination (no bootstrap)
    episode_done: np.ndarray  # (B,) bool: the episode ends after this step (termination or horizon)
    active: np.ndarray  # (B,) bool: False where the env had already terminated; ignore those rows


@dataclass
class TrialBatch:
    """B trials of K episodes with horizon H, laid out (B, T) with T = K * H.

    Steps after an MDP termination are kept with ``valid == False`` (zero reward, never sent to the
    simulator) so that every trial has the same length.
    """

    tasks: list[Task]
    task_keys: np.ndarray  # (B,) int64: the keys the agent was given in new_trial
    obs: np.ndarray  # (B, T, obs_dim)
    actions: np.ndarray  # (B, T, act_dim) as the agent returned them (pre-clip; for log-probs)
    env_actions: np.ndarray  # (B, T, act_dim) clipped to [-1, 1], as sent to the env
    rewards: np.ndarray  # (B, T)
    next_obs: np.ndarray  # (B, T, obs_dim)
    terminated: np.ndarray  # (B, T) bool
    episode_done: np.ndarray  # (B, T) bool: last step of an episode (termination or horizon)
    valid: np.ndarray  # (B, T) bool
    success: np.ndarray  # (B, T) bool
    episode_index: np.ndarray  # (T,) int
    horizon: int
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # (B, T, ...) from act()

    @property
    def num_trials(self) -> int:
        """B, the number of trials (rows)."""
        return self.rewards.shape[0]

    @property
    def episodes(self) -> int:
        """K, the episodes per trial: T // ``horizon``."""
        return self.rewards.shape[1] // self.horizon

    @property
    def env_steps(self) -> int:
        """Environment steps actually taken (valid steps)."""
        return int(self.valid.sum())

    def episode_returns(self) -> np.ndarray:
        """(B, K) undiscounted return of each episode."""
        return (self.rewards * self.valid).reshape(self.num_trials, self.episodes, self.horizon).sum(-1)

    def episode_success(self) -> np.ndarray:
        """(B, K) 1.0 where ``info['success']`` was true at any step of the episode."""
        s = (self.success & self.valid).reshape(self.num_trials, self.episodes, self.horizon)
        return s.any(-1).astype(np.float64)

    def tensor(
        self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """One field (or extra) as a tensor on ``device``."""
        import torch

        arr = self.extras[name] if name in self.extras else getattr(self, name)
        return torch.as_tensor(np.asarray(arr), dtype=dtype or torch.float32, device=device)


class AdaptiveAgent(abc.ABC):
    """A batch of B agents, each adapting to its own task within a trial.

    ``evaluation`` is True for the agent the meta-test evaluator drives (set by
    ``MetaLearner.make_agent``); the agent chooses how to act in that mode.
    """

    evaluation: bool = False

    @abc.abstractmethod
    def new_trial(self, task_keys: np.ndarray) -> None:
        """A new trial for each of B = ``len(task_keys)`` rows: clear all adaptation state.

        ``task_keys`` (B,) int64 are opaque: equal keys mean the same task (training tasks' ids), and
        meta-test rows get fresh keys. Called with gradients enabled.
        """

    @abc.abstractmethod
    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions (B, act_dim) (clipped to [-1, 1] by the sampler) and per-step extras.

        ``obs`` is (B, obs_dim) float32, the agent's own copy. Extras (e.g. ``log_prob``
        (B,), ``value`` (B,)) are stored by the sampler as (B, T, ...) arrays in ``TrialBatch.extras``.
        Runs under ``torch.no_grad()``.
        """

    @abc.abstractmethod
    def observe(self, transition: Transition) -> None:
        """See the transition that followed ``act`` (update memory, beliefs, context).

        Runs under ``torch.no_grad()`` and must not draw from torch's global generator.
        """

    def end_episode(self) -> None:  # noqa: B027 - default: nothing to do
        """All B episodes ended; the next ``act`` is the first step of the next episode.

        Runs with gradients enabled: a method may take inner gradient steps here (MAML).
        """

    def clone(self) -> AdaptiveAgent:
        """An independent agent with the same parameters, for another slice of the batch.

        The sampler runs one clone per group of rows (groups never split a task) so that one
        group's policy call overlaps the other's physics. The default shallow copy is right when
        ``new_trial`` rebinds (never mutates in place) every piece of adaptation state; agents for
        which that is not so override it.
        """
        return copy.copy(self)


class TrainContext(Protocol):
    """What the harness offers a method during a training step."""

    rng: np.random.Generator  # the run's generator (part of every checkpoint)
    device: torch.device
    env_steps: int  # environment steps consumed so far by this run

    def train_tasks(self) -> Sequence[Task]:
        """The suite's meta-training tasks (never test or OOD tasks)."""
        ...

    def sample_tasks(self, n: int) -> list[Task]:
        """``n`` training tasks drawn with the run's generator (with replacement when n > #tasks)."""
        ...

    def sample_trials(
        self, agent: AdaptiveAgent, tasks: Sequence[Task], episodes: int | None = None
    ) -> TrialBatch:
        """Run one trial per task (``episodes`` defaults to the suite's training trial length).

        Rows with the same task get the same key, so ``[t, t, t, u, u, u]`` runs 3 parallel rollouts of
        each of two tasks. Counts env steps. Raises ``ValueError`` for a task outside the train split.
        """
        ...


class MetaLearner(abc.ABC):
    """A meta-RL method. Subclasses set ``Config`` (a dataclass of hyperparameters) and ``name``.

    ``storage_dir`` is a directory of the run where the method may keep large append-only state
    (``metarl_protocol.storage.AppendOnlyArrays``); ``None`` means keep it in memory (checkers, tests).
    The constructor raises ``ValueError`` for a config outside its declared ranges
    (``metarl_protocol.settings``) or that ``validate`` refuses.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    # Whether the update (train_step outside its sampling) gains from more intra-op threads on idle
    # cores: large batched tensor operations (a transformer over minibatches of trials, SAC's batch-1,024
    # MLPs, MAML's Fisher-vector products). A statement for users and for the perf script, whose training
    # rows run such methods with one update thread per env worker (a run: ``--set update_threads=N``;
    # the default is ``torch_threads``). Per-step loops of small products (RL²'s GRU at 4 x 128) lose
    # from a second thread: the threads' synchronisation costs more than they compute.
    parallel_update: ClassVar[bool] = False

    def __init__(
        self, spec: SuiteSpec, config: Any, device: torch.device, storage_dir: Path | None = None
    ) -> None:
        if dataclasses.is_dataclass(config):  # a learner built directly refuses what the harness refuses
            check_settings(config)
        type(self).validate(config, spec)
        self.spec = spec
        self.config = config
        self.device = device
        self.storage_dir = storage_dir

    @classmethod
    def profile(cls, profile: str, family: str) -> dict[str, Any]:
        """Hyperparameter overrides for a profile (``quick`` or ``paper``) on a suite family."""
        return {}

    @classmethod  # noqa: B027 - optional hook, empty by default
    def validate(cls, config: Any, spec: SuiteSpec | None = None) -> None:
        """Raise ``ValueError`` with one line naming the bad setting and what is accepted.

        Called by the harness before anything is written, and by ``MetaLearner.__init__`` (a learner built
        directly with a bad config raises too). The default accepts everything.
        """

    @abc.abstractmethod
    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """One meta-training iteration; returns the method's own metrics for progress.csv."""

    @abc.abstractmethod
    def make_agent(self, evaluation: bool = False) -> AdaptiveAgent:
        """An agent using the current parameters; ``evaluation=True`` for the meta-test evaluator."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training exactly (networks, optimisers, schedules)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, so training resumes exactly.

        A state of another method or shape should raise ``KeyError``, ``ValueError``, ``TypeError`` or
        ``RuntimeError``: the harness turns those into a one-line ``ResultsError``.
        """
