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
from benchmark.suites.base import SPLITS, BatchEnv, StepResult, Suite, Task


def _fail(suite: Suite, what: str) -> SuiteError:
    return SuiteError(f"suite {suite.name!r} ({type(suite).__module__}.{type(suite).__qualname__}): {what}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1


def _params_key(suite: Suite, task: Task) -> str:
    """The task's parameters as canonical JSON (sorted keys): refuses what JSON cannot hold."""
    if not isinstance(task.params, dict):
        raise _fail(suite, f"{task.split} task {task.task_id}: params must be a dict, got {task.params!r}")
    try:
        return json.dumps(task.params, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(
            suite,
            f"{task.split} task {task.task_id}: params must be JSON-serialisable (numbers, strings, lists, "
            f"dicts; finite): {exc}",
        ) from None


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

    Raises ``SuiteError`` (one line) at the first problem. Builds every split's task list (cached by
    the suite) and asks for the reference returns of every split.
    """
    check_family(suite)
    for key in ("horizon", "episodes_per_trial", "eval_episodes", "obs_dim", "act_dim"):
        if not _positive_int(getattr(suite, key)):
            raise _fail(suite, f"{key} must be an integer >= 1, got {getattr(suite, key)!r}")
    if not isinstance(suite.has_success, bool) or not isinstance(suite.shared_tasks, bool):
        raise _fail(
            suite,
            f"has_success and shared_tasks must be True or False, got {suite.has_success!r}, "
            f"{suite.shared_tasks!r}",
        )
    scored = suite.headline_episodes()
    if not scored or any(not isinstance(e, int) or not 0 <= e < suite.eval_episodes for e in scored):
        raise _fail(
            suite,
            f"headline_episodes() must be a non-empty list of meta-test episode indices in "
            f"[0, {suite.eval_episodes - 1}] (eval_episodes = {suite.eval_episodes}), got {scored!r}",
        )
    splits = suite.splits()
    if "train" not in splits or "test" not in splits or any(s not in SPLITS for s in splits):
        raise _fail(
            suite, f"splits() must hold 'train' and 'test', within {', '.join(SPLITS)}; got {splits!r}"
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
            if not isinstance(task.task_id, int | np.integer) or isinstance(task.task_id, bool):
                raise _fail(suite, f"{split} task_id must be an integer, got {task.task_id!r}")
            if task.task_id in ids:
                raise _fail(suite, f"{split} task_id {task.task_id} is used twice (ids are unique per split)")
            ids.add(task.task_id)
            key = _params_key(suite, task)
            if key in seen and not suite.shared_tasks:
                other = seen[key]
                raise _fail(
                    suite,
                    f"{split} task {task.task_id} and {other.split} task {other.task_id} have the same "
                    f"params {key}: a task is defined once, in one split (test tasks must be unseen in "
                    "training)",
                )
            seen[key] = task
    for split in splits:
        refs = suite.reference_returns(split)
        if refs is None:
            continue
        values = (refs.random, refs.oracle)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise _fail(suite, f"reference_returns({split!r}) must be finite numbers, got {values!r}")
        if not refs.oracle > refs.random:
            raise _fail(
                suite,
                f"reference_returns({split!r}): oracle {refs.oracle} must be above random {refs.random} "
                "(normalised = (R - random) / (oracle - random): 0 = random, 1 = oracle)",
            )


def tasks_fingerprint(suite: Suite) -> str:
    """SHA-256 (hex) of every split's tasks (split, task_id, params; canonical JSON): what a run records
    in ``suite_info.tasks_sha256`` so that a resume or a figure can tell when a suite's tasks changed."""
    import hashlib

    tasks = [[t.split, int(t.task_id), t.params] for split in suite.splits() for t in suite.tasks(split)]
    return hashlib.sha256(json.dumps(tasks, sort_keys=True).encode()).hexdigest()


def _array(suite: Suite, what: str, value: Any, shape: tuple[int, ...], kinds: str) -> np.ndarray:
    """``value`` as an array of ``shape`` whose dtype kind is in ``kinds`` (``f`` float, ``b`` bool,
    ``i``/``u`` integer); finite where it is a float array."""
    arr = np.asarray(value)
    if arr.shape != shape or arr.dtype.kind not in kinds:
        kind = {"f": "float", "fiu": "numbers", "biu": "bool"}[kinds]
        raise _fail(suite, f"{what}: expected shape {shape} of {kind}, got shape {arr.shape} of {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise _fail(suite, f"{what} holds non-finite values: {arr.tolist()}")
    return arr


def _episode(suite: Suite, env: BatchEnv, seeds: Sequence[int], actions: np.ndarray) -> list[np.ndarray]:
    """Reset with ``seeds`` and step ``actions`` (steps, B, act_dim) while rows are live; every array
    returned, checked."""
    B, od = len(seeds), suite.obs_dim
    obs = _array(suite, "reset() observations", env.reset(seeds), (B, od), "f")
    out = [obs]
    live = np.ones(B, bool)
    for h, act in enumerate(actions):
        res = env.step(act, live.copy())
        if not isinstance(res, StepResult):
            raise _fail(suite, f"step() must return a StepResult, got {type(res).__name__}")
        at = f"step {h}"
        obs = _array(suite, f"{at} observations", np.asarray(res.obs)[live], (int(live.sum()), od), "f")
        rew = _array(suite, f"{at} reward", np.asarray(res.reward)[live], (int(live.sum()),), "fiu")
        term = _array(suite, f"{at} terminated", res.terminated, (B,), "biu")
        succ = _array(suite, f"{at} success", res.success, (B,), "biu")
        out += [obs, rew, term[live], succ[live]]
        live &= ~term.astype(bool)
        if not live.any():
            break
    return out


def probe_suite(suite: Suite, steps: int = 3, episodes: int = 1) -> None:
    """Step a two-row batch environment (one process) of the first training tasks and check it.

    ``episodes`` times: reset from fixed seeds and take ``steps`` steps (at most the horizon) of fixed
    random actions in [-1, 1], checking the declared ``num_envs`` / ``obs_dim`` / ``act_dim`` and every
    array (shapes (B, obs_dim) and (B,), float observations and rewards, finite; bool-like terminated and
    success); then the same again, which must give the same arrays (reset and step depend only on the
    seeds and actions). Raises ``SuiteError``; the environment is closed in every case.
    """
    tasks = suite.tasks("train")[:2]
    B, steps = len(tasks), min(steps, suite.horizon)
    try:
        env = suite.make_batch_env(B, 1)
    except SuiteError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, said in one line
        raise _fail(suite, f"make_batch_env({B}, 1) failed: {type(exc).__name__}: {exc}") from None
    try:
        for key, want in (("num_envs", B), ("obs_dim", suite.obs_dim), ("act_dim", suite.act_dim)):
            got = getattr(env, key, None)
            if got != want:
                raise _fail(suite, f"its batch environment's {key} is {got!r}, expected {want} (the suite's)")
        env.set_tasks(tasks)
        rng = np.random.default_rng(0)
        for episode in range(episodes):
            seeds = rng.integers(0, 2**31 - 1, size=B).tolist()
            actions = rng.uniform(-1, 1, size=(steps, B, suite.act_dim)).astype(np.float32)
            first = _episode(suite, env, seeds, actions)
            again = _episode(suite, env, seeds, actions)
            for a, b in zip(first, again, strict=False):
                if len(first) != len(again) or not np.array_equal(a, b):
                    raise _fail(
                        suite,
                        f"reset(seeds) and step(actions) gave different results from the same seeds and "
                        f"actions (episode {episode} of the probe): reset and step must depend only on them, "
                        "or runs cannot be reproduced or resumed",
                    )
    except SuiteError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, said in one line
        raise _fail(suite, f"its batch environment failed: {type(exc).__name__}: {exc}") from None
    finally:
        env.close()
