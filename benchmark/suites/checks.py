"""The suite contract, checked: what every run checks about its suite before it writes anything.

A suite (``benchmark.suites.base.Suite``) is checked in two parts, both raising ``SuiteError`` (one line
naming the suite and what is wrong):

* ``check_suite_facts``: the stated facts, without stepping anything: the family (one with run
  profiles), positive horizon, trial lengths and dimensions, scored episodes inside the meta-test trial,
  non-empty train and test splits of ``Task`` objects, task ids unique within a split, parameters that
  are JSON objects and never repeated within or across splits (a task is defined once, in one split;
  ``Suite.shared_tasks`` exempts a finite task set smaller than its splits),
  and reference returns that are finite with oracle > random.
* ``probe_suite``: a two-row batch environment of training tasks, stepped a few times and then again
  from the same reset seeds and actions: its declared dimensions, what ``reset`` and ``step`` return
  (shapes, dtypes, finite values) and that both depend only on the seeds and actions.

``metarl-bench run`` and ``sweep`` run both (a short probe) before anything is written;
``benchmark.check.check_suite`` runs them with whole episodes, for suite authors. The sampler also
refuses a non-finite reward or observation while it runs (``TrialSampler.run``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.config import FAMILIES
from benchmark.errors import SuiteError
from benchmark.suites.base import SPLITS, BatchEnv, ReferenceReturns, StepResult, Suite, Task


def _fail(suite: Suite, what: str) -> SuiteError:
    return SuiteError(f"suite {suite.name!r} ({type(suite).__module__}.{type(suite).__qualname__}): {what}")


def _python_int(value: Any, low: int = 1) -> bool:
    """A Python int (not a bool, not a numpy integer, which config.json would record as text) >= low."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _canonical(value: Any) -> Any:
    """``params`` with every number as a float rounded to 9 significant digits (-0.0 as 0.0), for telling
    whether two tasks are the same: 1 and 1.0, 0.0 and -0.0, or 0.1 and 0.1 + 1e-12 are one task."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(f"{float(value):.9g}") + 0.0
    return value


def _params_key(suite: Suite, task: Task) -> str:
    """The task's parameters as canonical JSON (``_canonical``, sorted keys); refuses what JSON cannot
    hold (numpy arrays, NaN, objects)."""
    if not isinstance(task.params, dict):
        raise _fail(suite, f"{task.split} task {task.task_id}: params must be a dict, got {task.params!r}")
    try:
        json.dumps(task.params, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(
            suite,
            f"{task.split} task {task.task_id}: params must be JSON-serialisable (numbers, strings, lists, "
            f"dicts; finite): {exc}",
        ) from None
    return json.dumps(_canonical(task.params), sort_keys=True)


def check_family(suite: Suite) -> None:
    """Refuse (``SuiteError``) a family without run profiles (``benchmark.config.FAMILIES``)."""
    if suite.family not in FAMILIES:
        raise _fail(
            suite,
            f"family {suite.family!r} has no run profiles; accepted: {', '.join(FAMILIES)} (the family "
            "selects the budgets and each method's profile: pick the one your tasks resemble)",
        )


def check_suite_facts(suite: Suite) -> None:
    """Check ``suite``'s stated facts, splits, tasks and reference returns; nothing is stepped.

    Raises ``SuiteError`` (one line) at the first problem, an exception raised by the suite's own code
    included. Builds every split's task list (cached by the suite) and asks twice for the reference
    returns of every split (they must not change).
    """
    try:
        _check_facts(suite)
    except SuiteError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, said in one line
        raise _fail(suite, f"raised {type(exc).__name__}: {exc} while its facts were checked") from None


def _check_facts(suite: Suite) -> None:
    check_family(suite)
    for key in ("horizon", "episodes_per_trial", "eval_episodes", "obs_dim", "act_dim"):
        if not _python_int(getattr(suite, key)):
            raise _fail(suite, f"{key} must be a Python int >= 1, got {getattr(suite, key)!r}")
    if not isinstance(suite.has_success, bool) or not isinstance(suite.shared_tasks, bool):
        raise _fail(
            suite,
            f"has_success and shared_tasks must be True or False, got {suite.has_success!r}, "
            f"{suite.shared_tasks!r}",
        )
    scored = suite.headline_episodes()
    if (
        not isinstance(scored, list | tuple)
        or not scored
        or any(not _python_int(e, 0) or e >= suite.eval_episodes for e in scored)
    ):
        raise _fail(
            suite,
            f"headline_episodes() must be a non-empty list of meta-test episode indices (Python ints) in "
            f"[0, {suite.eval_episodes - 1}] (eval_episodes = {suite.eval_episodes}), got {scored!r}",
        )
    splits = suite.splits()
    if (
        not isinstance(splits, tuple | list)
        or "train" not in splits
        or "test" not in splits
        or any(s not in SPLITS for s in splits)
        or len(set(splits)) != len(splits)
    ):
        raise _fail(
            suite,
            f"splits() must be a tuple of distinct names holding 'train' and 'test', within "
            f"{', '.join(SPLITS)}; got {splits!r}",
        )
    seen: dict[str, Task] = {}
    for split in splits:
        tasks = suite.tasks(split)
        if not tasks:
            raise _fail(suite, f"split {split!r} has no tasks")
        ids: set[int] = set()
        for task in tasks:
            if not isinstance(task, Task) or task.split != split:
                raise _fail(suite, f"split {split!r} holds {task!r}, not a Task of that split")
            tid = task.task_id
            if isinstance(tid, bool) or not isinstance(tid, int | np.integer) or not 0 <= tid < 2**53:
                raise _fail(suite, f"{split} task_id must be an integer in [0, 2**53), got {tid!r}")
            if tid in ids:
                raise _fail(suite, f"{split} task_id {tid} is used twice (ids are unique per split)")
            ids.add(tid)
            key = _params_key(suite, task)
            if key in seen and not suite.shared_tasks:
                other = seen[key]
                raise _fail(
                    suite,
                    f"{split} task {tid} and {other.split} task {other.task_id} have the same params "
                    f"{key} (numbers compared to 9 significant digits): a task is defined once, in one "
                    "split (test tasks must be unseen in training)",
                )
            seen[key] = task
    for split in splits:
        refs = suite.reference_returns(split)
        if refs is None:
            continue
        if not isinstance(refs, ReferenceReturns):
            raise _fail(
                suite, f"reference_returns({split!r}) must return ReferenceReturns or None, got {refs!r}"
            )
        values = (refs.random, refs.oracle)
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise _fail(
                suite,
                f"reference_returns({split!r}) must be finite Python floats (np.float64 is one, np.float32 "
                f"is not), got {values!r}",
            )
        if not refs.oracle > refs.random:
            raise _fail(
                suite,
                f"reference_returns({split!r}): oracle {refs.oracle} must be above random {refs.random} "
                "(normalised = (R - random) / (oracle - random): 0 = random, 1 = oracle)",
            )
        again = suite.reference_returns(split)
        if not isinstance(again, ReferenceReturns) or (again.random, again.oracle) != values:
            raise _fail(
                suite,
                f"reference_returns({split!r}) gave {values} and then {again!r}: references must be "
                "deterministic (seed any rollouts that estimate them)",
            )


def tasks_fingerprint(suite: Suite) -> str:
    """SHA-256 (hex) of every split's tasks (split, task_id, params; canonical JSON): what a run records
    in ``suite_info.tasks_sha256`` so that a resume or a figure can tell when a suite's tasks changed."""
    import hashlib

    tasks = [[t.split, int(t.task_id), t.params] for split in suite.splits() for t in suite.tasks(split)]
    return hashlib.sha256(json.dumps(tasks, sort_keys=True).encode()).hexdigest()


def _array(suite: Suite, what: str, value: Any, shape: tuple[int, ...], kinds: str) -> np.ndarray:
    """``value`` as an array of ``shape`` whose dtype kind is in ``kinds`` (``fiu``: numbers, ``b``:
    bool), numbers returned as float32 (what the sampler records)."""
    arr = np.asarray(value)
    if arr.shape != shape or arr.dtype.kind not in kinds:
        kind = {"fiu": "numbers", "b": "bool (numpy bool arrays)"}[kinds]
        raise _fail(suite, f"{what}: expected shape {shape} of {kind}, got shape {arr.shape} of {arr.dtype}")
    return arr.astype(np.float32) if kinds == "fiu" else arr


def _finite(suite: Suite, what: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        raise _fail(
            suite, f"{what} holds values that are not finite as float32 (the recorded type): {arr.tolist()}"
        )


def _rollout(suite: Suite, env: BatchEnv, seeds: Sequence[int], actions: np.ndarray) -> dict[str, np.ndarray]:
    """Reset with ``seeds`` and step ``actions`` (steps, B, act_dim) while any row is live, checking every
    array; returns them as arrays over (step, row), zero where a row had terminated."""
    B, od, steps = len(seeds), suite.obs_dim, len(actions)
    out = {
        "obs": np.zeros((steps + 1, B, od), np.float32),
        "reward": np.zeros((steps, B), np.float32),
        "terminated": np.zeros((steps, B), bool),
        "success": np.zeros((steps, B), bool),
    }
    out["obs"][0] = _array(suite, "reset() observations", env.reset(seeds), (B, od), "fiu")
    _finite(suite, "reset() observations", out["obs"][0])
    live = np.ones(B, bool)
    for h, act in enumerate(actions):
        res = env.step(act, live.copy())
        if not isinstance(res, StepResult):
            raise _fail(suite, f"step() must return a StepResult, got {type(res).__name__}")
        obs = _array(suite, f"step {h} observations", res.obs, (B, od), "fiu")
        rew = _array(suite, f"step {h} reward", res.reward, (B,), "fiu")
        term = _array(suite, f"step {h} terminated", res.terminated, (B,), "b")
        succ = _array(suite, f"step {h} success", res.success, (B,), "b")
        _finite(suite, f"step {h} observations", obs[live])
        _finite(suite, f"step {h} reward", rew[live])
        out["obs"][h + 1, live], out["reward"][h, live] = obs[live], rew[live]
        out["terminated"][h, live], out["success"][h, live] = term[live], succ[live]
        live &= ~term
        if not live.any():
            break
    return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rows: slice = slice(None)) -> bool:
    return all(np.array_equal(a[k][:, rows], b[k][:, rows]) for k in a)


def _env(suite: Suite, tasks: Sequence[Task], workers: int = 1) -> BatchEnv:
    """A batch env of ``tasks`` with ``workers`` processes, its declared sizes checked."""
    try:
        env = suite.make_batch_env(len(tasks), workers)
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, said in one line
        raise _fail(
            suite, f"make_batch_env({len(tasks)}, {workers}) failed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(env, BatchEnv):
        raise _fail(suite, f"make_batch_env({len(tasks)}, {workers}) returned {env!r}, not a BatchEnv")
    for key, want in (("num_envs", len(tasks)), ("obs_dim", suite.obs_dim), ("act_dim", suite.act_dim)):
        got = getattr(env, key, None)
        if got != want:
            env.close()
            raise _fail(suite, f"its batch environment's {key} is {got!r}, expected {want} (the suite's)")
    env.set_tasks(tasks)
    return env


def probe_suite(suite: Suite, steps: int = 3, episodes: int = 1, thorough: bool = False) -> None:
    """Step two-row batch environments of the first training tasks and check what they return.

    ``episodes`` times: reset from fixed seeds and take ``steps`` steps (at most the horizon) of fixed
    random actions in [-1, 1], checking the declared ``num_envs`` / ``obs_dim`` / ``act_dim`` and every
    array (observations (B, obs_dim) and rewards (B,) of numbers finite as float32, terminated and success
    (B,) numpy bools); then the same again, which must give the same arrays (reset and step depend only on
    the seeds and actions). With ``thorough`` (``benchmark.check.check_suite``), the first episode must also
    come out the same on the used environment once more (no state kept across episodes), for its first row
    next to another task (no state shared between rows; needs 3 training tasks) and with 2 worker
    processes. Raises ``SuiteError``; every environment is closed.
    """
    tasks = suite.tasks("train")
    B, steps = min(2, len(tasks)), min(steps, suite.horizon)
    rng = np.random.default_rng(0)
    plan = [
        (
            rng.integers(0, 2**31 - 1, size=B).tolist(),
            rng.uniform(-1, 1, (steps, B, suite.act_dim)).astype(np.float32),
        )
        for _ in range(episodes)
    ]
    differ = (
        "from the same seeds and actions: reset and step must depend only on them, or runs cannot be "
        "reproduced or resumed"
    )
    try:
        env = _env(suite, tasks[:B])
        try:
            first = None
            for episode, (seeds, actions) in enumerate(plan):
                one, two = _rollout(suite, env, seeds, actions), _rollout(suite, env, seeds, actions)
                if not _same(one, two):
                    raise _fail(
                        suite,
                        f"reset(seeds) and step(actions) gave different results (episode {episode} of the "
                        f"probe) {differ}",
                    )
                first = one if first is None else first
            if thorough and not _same(first, _rollout(suite, env, *plan[0])):
                raise _fail(
                    suite,
                    f"an environment that had run {2 * episodes} episodes gave other results than when it "
                    f"was new, {differ}",
                )
        finally:
            env.close()
        if not thorough:
            return
        if len(tasks) >= 3:
            env = _env(suite, [tasks[0], tasks[2]][:B])
            try:
                if not _same(first, _rollout(suite, env, *plan[0]), slice(0, 1)):
                    raise _fail(
                        suite,
                        f"row 0 (train task {tasks[0].task_id}) gave other results next to another task: "
                        "rows must not share state",
                    )
            finally:
                env.close()
        env = _env(suite, tasks[:B], workers=2)
        try:
            if not _same(first, _rollout(suite, env, *plan[0])):
                raise _fail(
                    suite,
                    f"make_batch_env({B}, 2) (2 processes) gave other results than with 1 process, {differ}",
                )
        finally:
            env.close()
    except SuiteError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, said in one line
        raise _fail(suite, f"its batch environment failed: {type(exc).__name__}: {exc}") from None
