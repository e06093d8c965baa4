"""A checker for method authors, in the spirit of gymnasium's ``check_env``.

``check_learner(LearnerClass, suite, config)`` runs a method through the harness's contract
(``metarl_protocol``) on a small budget and raises ``ContractError`` naming the first rule it breaks:

* agents: ``act`` returns (B, act_dim) finite actions and (B, ...) extras; clones are independent
  (a trial sampled with pipelined groups equals the lock-step one); ``observe`` draws nothing from
  torch's generator; the same seed gives the same trial; ``make_agent(evaluation=...)`` sets
  ``agent.evaluation``;
* learner: ``train_step`` consumes environment steps and only ever sees training tasks; an
  evaluation leaves ``state_dict`` unchanged; ``state_dict`` loads with ``weights_only=True`` and
  resuming from it continues exactly (same metrics and parameters as the uninterrupted learner),
  large state on disk included.

Every in-tree method's tests call it, and so does the plugin example. It uses only the public
contract plus the harness's sampler and evaluator, exactly as a run does.

For suite authors, ``check_suite(suite)`` checks the suite contract (``benchmark.suites.checks``) with
whole episodes and raises ``SuiteError``: the facts and splits, then a batch environment stepped twice
from the same seeds and actions. A run checks the same with a three-step probe before it writes anything.
"""

from __future__ import annotations

import copy
import io
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.evaluate import evaluate
from benchmark.results import WEIGHTS_ONLY_ACCEPTS, check_weights_only
from benchmark.runner import HarnessContext
from benchmark.sampler import TrialSampler
from benchmark.suites.base import BatchEnv, StepResult, Suite
from benchmark.suites.checks import check_suite_facts, probe_suite
from metarl_protocol import AdaptiveAgent, MetaLearner, Task, Transition, TrialBatch

TRIAL_FIELDS = ("obs", "actions", "env_actions", "rewards", "next_obs", "terminated", "episode_done", "valid")


def check_suite(suite: Suite, episodes: int = 2) -> None:
    """Check ``suite`` against the suite contract for its author; raises ``SuiteError`` (one line).

    ``check_suite_facts`` (family, horizon, trial lengths, dimensions, scored episodes, non-empty splits
    of unique, JSON-serialisable tasks defined once, finite references with oracle > random), then
    ``probe_suite`` over ``episodes`` whole episodes (up to the horizon) of random actions, each played
    twice from the same seeds and actions (shapes, dtypes, finite values, determinism), then the first
    once more on the used environment, next to another task, and with 2 worker processes (no state kept
    across episodes or shared between rows; the same results in any process layout).
    """
    check_suite_facts(suite)
    probe_suite(suite, steps=suite.horizon, episodes=episodes, thorough=True)


class ContractError(AssertionError):
    """A method breaks a rule of the harness contract; the message names the rule."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ContractError(message)


# -- helpers ---------------------------------------------------------------------------------------
class _Ordered(BatchEnv):
    """Wraps a batch env so the sampler drives it lock-step or pipelined (steps happen at ``step_wait``)."""

    def __init__(self, env: BatchEnv, pipelined: bool) -> None:
        self.env, self.pipelined = env, pipelined
        self.num_envs, self.obs_dim, self.act_dim = env.num_envs, env.obs_dim, env.act_dim
        self._pending = {}

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        self.env.set_tasks(tasks)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        return self.env.reset(seeds)

    def step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        return self.env.step(actions, active)

    def close(self) -> None:
        self.env.close()


class _OrderedSampler(TrialSampler):
    """A sampler whose in-process batch env is driven in lock-step or in pipelined order."""

    def __init__(self, suite: Suite, pipelined: bool) -> None:
        super().__init__(suite, num_workers=1)
        self.pipelined = pipelined

    def env(self, num_envs: int) -> BatchEnv:
        if num_envs not in self._envs:
            self._envs[num_envs] = _Ordered(self.suite.make_batch_env(num_envs, 1), self.pipelined)
        return self._envs[num_envs]


class _Watched(AdaptiveAgent):
    """Proxy that checks the per-call rules of ``AdaptiveAgent`` around a real agent."""

    def __init__(self, agent: AdaptiveAgent, act_dim: int) -> None:
        self.agent, self.act_dim = agent, act_dim
        self.evaluation = agent.evaluation
        self.rows = 0

    def new_trial(self, task_keys: np.ndarray) -> None:
        self.rows = len(task_keys)
        self.agent.new_trial(task_keys)

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        out = self.agent.act(obs)
        _require(isinstance(out, tuple) and len(out) == 2, "act must return (actions, extras)")
        actions, extras = out
        actions = np.asarray(actions)
        _require(
            actions.shape == (self.rows, self.act_dim),
            f"act returned actions of shape {actions.shape}, expected {(self.rows, self.act_dim)}",
        )
        _require(bool(np.isfinite(actions).all()), "act returned non-finite actions")
        _require(isinstance(extras, dict), "act's extras must be a dict of arrays")
        for name, value in extras.items():
            shape = np.asarray(value).shape
            _require(
                shape[:1] == (self.rows,), f"extra {name!r} has shape {shape}; expected ({self.rows}, ...)"
            )
        return actions, extras

    def observe(self, transition: Transition) -> None:
        before = torch.get_rng_state()
        self.agent.observe(transition)
        _require(
            torch.equal(before, torch.get_rng_state()),
            "observe drew from torch's global generator; draw randomness in act / end_episode only",
        )

    def end_episode(self) -> None:
        self.agent.end_episode()

    def clone(self) -> AdaptiveAgent:
        return _Watched(self.agent.clone(), self.act_dim)


def _same_trials(a: TrialBatch, b: TrialBatch, what: str) -> None:
    for name in TRIAL_FIELDS:
        _require(np.array_equal(getattr(a, name), getattr(b, name)), f"{what}: field {name!r} differs")
    _require(
        set(a.extras) == set(b.extras), f"{what}: extras differ ({sorted(a.extras)} vs {sorted(b.extras)})"
    )
    for name in a.extras:
        _require(np.array_equal(a.extras[name], b.extras[name]), f"{what}: extra {name!r} differs")


def flatten_state(state: Any, prefix: str = "") -> dict[str, Any]:
    """{'key.path': leaf} of a nested state dict (lists and tuples indexed by position)."""
    if isinstance(state, dict):
        out: dict[str, Any] = {}
        for k, v in state.items():
            out |= flatten_state(v, f"{prefix}{k}.")
        return out
    if isinstance(state, list | tuple):
        out = {}
        for i, v in enumerate(state):
            out |= flatten_state(v, f"{prefix}{i}.")
        return out
    return {prefix.rstrip("."): state}


def states_equal(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """None when two state dicts are equal leaf by leaf (tensors bitwise), else where they differ: ``key K``
    (the first differing leaf) or ``keys in one only: [...]`` (up to five)."""
    fa, fb = flatten_state(a), flatten_state(b)
    if fa.keys() != fb.keys():
        return f"keys in one only: {sorted(set(fa) ^ set(fb))[:5]}"
    for key in fa:
        x, y = fa[key], fb[key]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            same = (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.shape == y.shape
                and x.dtype == y.dtype
                and torch.equal(x.cpu(), y.cpu())
            )
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            same = np.array_equal(np.asarray(x), np.asarray(y))
        elif isinstance(x, float) and isinstance(y, float) and math.isnan(x):
            same = math.isnan(y)
        else:
            same = x == y
        if not same:
            return f"key {key}"
    return None


def _sample(
    sampler: TrialSampler, agent: AdaptiveAgent, tasks: list[Task], seed: int, **kw: Any
) -> TrialBatch:
    torch.manual_seed(seed)
    return sampler.run(agent, tasks, sampler.suite.episodes_per_trial, seed=seed, **kw)


def _check_weights_only(state: dict[str, Any]) -> dict[str, Any]:
    """The state after a torch.save / torch.load(weights_only=True) round trip, or ContractError naming
    the first key whose value the weights-only unpickler refuses (``results.check_weights_only``)."""
    try:
        check_weights_only(state, "state_dict")
    except ValueError as exc:
        raise ContractError(
            f"{exc}, which torch.load(weights_only=True) refuses, so a run could never resume from its "
            f"checkpoint; a state_dict may hold only {WEIGHTS_ONLY_ACCEPTS}"
        ) from None
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    try:
        return torch.load(buf, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported as a contract failure
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ContractError(f"state_dict does not load with weights_only=True: {first[:300]}") from None


# -- the checks ------------------------------------------------------------------------------------
def check_agent(learner: MetaLearner, suite: Suite, evaluation: bool = False, seed: int = 0) -> None:
    """Check the agent rules on ``suite`` for ``learner.make_agent(evaluation)``; raise ContractError."""
    spec = suite.spec()
    agent = learner.make_agent(evaluation=evaluation)
    _require(
        agent.evaluation is evaluation,
        f"make_agent(evaluation={evaluation}) gave evaluation={agent.evaluation}",
    )
    train = list(suite.tasks("train"))
    # groups of 3 and 2 rows: an action array transposed to (act_dim, rows) cannot pass as (rows, act_dim)
    tasks = [train[0], train[0], train[0], train[1 % len(train)], train[2 % len(train)]]
    keys = None if not evaluation else np.array([-1, -1, -1, -2, -3])
    lock, piped = _OrderedSampler(suite, pipelined=False), _OrderedSampler(suite, pipelined=True)

    def trial(sampler: TrialSampler, rows: list[Task], agent: AdaptiveAgent | None = None) -> TrialBatch:
        """One watched trial of a fresh agent (or ``agent``) with the check's seed and keys."""
        agent = agent or learner.make_agent(evaluation=evaluation)
        return _sample(sampler, _Watched(agent, spec.act_dim), rows, seed, task_keys=keys)

    try:
        a = trial(lock, tasks, agent)
        _same_trials(a, trial(lock, tasks), "the same seed must give the same trial")
        # clone independence first (shared state also breaks the pipelined comparison below, whose message
        # would name the wrong rule): the second group's rows must not depend on what the first group saw
        # (a task of none of the check's rows, else the rows' keys, and with them the groups, would change;
        # a test task where the training split has too few: a suite with one task cannot show it)
        other = next(
            (t for t in [*train, *suite.tasks("test")] if all(t.params != r.params for r in tasks)), None
        )
        if other is not None:
            d = trial(lock, [other] * 3 + tasks[3:])
            _require(
                all(np.array_equal(getattr(a, f)[3:], getattr(d, f)[3:]) for f in TRIAL_FIELDS),
                "clones must be independent: rows of one group changed when another group's task changed "
                "(shared adaptation state; override clone() or rebind state in new_trial)",
            )
        _same_trials(
            a,
            trial(piped, tasks),
            "a trial sampled with pipelined groups differs from lock-step (call-order dependence)",
        )
    finally:
        lock.close()
        piped.close()


def _require_state_kept(learner: MetaLearner, evaluation_step: Callable[[], Any], where: str = "") -> None:
    """Run ``evaluation_step``; ContractError if it changed the learner's state_dict (``where`` names it)."""
    state = copy.deepcopy(learner.state_dict())
    evaluation_step()
    diff = states_equal(state, learner.state_dict())
    _require(diff is None, f"an evaluation changed the learner's state_dict ({diff}{where})")


def _check_evaluation_leaves_learner(
    learner: MetaLearner, suite: Suite, sampler: TrialSampler, seed: int
) -> None:
    def evaluation() -> None:
        torch.manual_seed(seed + 1)
        evaluate(
            learner.make_agent(evaluation=True), sampler, list(suite.tasks("test"))[:3],
            split="test", iteration=0, env_steps=0, mark=0, seed=seed,
        )  # fmt: skip

    _require_state_kept(learner, evaluation)


def check_learner(
    learner_cls: type[MetaLearner],
    suite: Suite,
    config: Any | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    train_steps: int = 2,
) -> None:
    """Run every contract check for ``learner_cls`` on ``suite``; raise ContractError on the first failure.

    ``config`` is the method's hyperparameter dataclass (small settings keep the check fast); the
    learner keeps its large state in a temporary directory, as it would in a run directory.
    """
    config = config if config is not None else learner_cls.Config()
    dev = torch.device(device)
    spec = suite.spec()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "storage"
        torch.manual_seed(seed)
        learner = learner_cls(spec, config, dev, storage)
        sampler = TrialSampler(suite, num_workers=1)
        try:
            for evaluation in (False, True):
                flag = learner.make_agent(evaluation=evaluation).evaluation
                _require(flag is evaluation, f"make_agent(evaluation={evaluation}) gave evaluation={flag}")
            # the agent rules before the first evaluation, so a wrong shape or return value is named
            # there, not by the sampler; first, that making an evaluation agent leaves the learner alone
            # (else the evaluation agent's trials could not repeat and the wrong rule would be named)
            _check_weights_only(learner.state_dict())
            check_agent(learner, suite, False, seed)
            _require_state_kept(learner, lambda: learner.make_agent(evaluation=True), "; in make_agent")
            check_agent(learner, suite, True, seed)
            _check_evaluation_leaves_learner(learner, suite, sampler, seed)
            seen: list[Task] = []

            class Recording(HarnessContext):
                def sample_trials(self, agent, tasks, episodes=None):  # type: ignore[no-untyped-def]
                    seen.extend(tasks)
                    return super().sample_trials(agent, tasks, episodes)

            ctx = Recording(suite, sampler, np.random.default_rng(seed), dev)
            for _ in range(train_steps):
                before = ctx.env_steps
                metrics = learner.train_step(ctx)
                _require(
                    ctx.env_steps > before, "train_step must consume environment steps (ctx.sample_trials)"
                )
                _require(isinstance(metrics, dict), "train_step must return a dict of metrics")
                for k, v in metrics.items():
                    _require(isinstance(v, int | float), f"metric {k!r} is {type(v).__name__}, not a number")
            _require(
                all(t.split == "train" for t in seen), "train_step sampled a task outside the train split"
            )
            _check_evaluation_leaves_learner(learner, suite, sampler, seed)
            state = copy.deepcopy(learner.state_dict())

            # state_dict loads with weights_only=True and resumes exactly
            loaded = _check_weights_only(state)
            rng_state, steps = ctx.rng.bit_generator.state, ctx.env_steps
            torch.manual_seed(seed + 2)
            ma = learner.train_step(ctx)
            after_a = learner.state_dict()
            torch.manual_seed(seed)
            resumed = learner_cls(spec, config, dev, storage)
            resumed.load_state_dict(loaded)
            diff = states_equal(state, resumed.state_dict())
            _require(diff is None, f"load_state_dict(state_dict()) does not restore the state ({diff})")
            ctx2 = Recording(suite, sampler, np.random.default_rng(), dev)
            ctx2.rng.bit_generator.state = rng_state
            ctx2.env_steps = steps  # the runner restores the step count with the generator
            torch.manual_seed(seed + 2)
            mb = resumed.train_step(ctx2)
            differ = sorted(set(ma) ^ set(mb)) or [
                k for k in ma if not (ma[k] == mb[k] or (ma[k] != ma[k] and mb[k] != mb[k]))
            ]
            _require(
                not differ,
                "a resumed learner's next train_step differs from the uninterrupted one's, in metric(s) "
                f"{', '.join(map(str, differ[:5]))}: state that shapes an update (a schedule, a counter, "
                "a generator) is missing from state_dict or not restored",
            )
            diff = states_equal(after_a, resumed.state_dict())
            _require(diff is None, f"a resumed learner's next train_step differs ({diff})")
        finally:
            sampler.close()
