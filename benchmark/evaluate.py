"""The one meta-test protocol: every method, same evaluator, same rows.

For each task, one trial of ``suite.eval_episodes`` episodes played by the method's evaluation agent
(``make_agent(evaluation=True)``: the method chooses how to act, and the returns of the episodes it
actually played are reported, so exploration is paid for); the agent's adaptation state persists
across the episodes of the trial and is cleared between trials. Each meta-test row gets a fresh task
key (negative, never a training task's id, never a task parameter). One eval.csv row per
(task, episode): the fast-adaptation curve is return (or success) vs episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from benchmark.sampler import TrialSampler
from benchmark.suites.base import Suite, Task
from metarl_protocol import AdaptiveAgent


def evaluate(
    agent: AdaptiveAgent,
    sampler: TrialSampler,
    tasks: Sequence[Task],
    *,
    split: str,
    iteration: int,
    env_steps: int,
    mark: int,
    seed: int,
    batch_size: int = 20,
) -> list[dict[str, Any]]:
    """Run one meta-test trial per task with the evaluation ``agent`` and return eval.csv rows.

    ``mark`` is the env-step budget mark the evaluation stands for, ``env_steps`` the steps actually
    consumed when it ran, ``seed`` fixes the environments' reset seeds.
    """
    if not agent.evaluation:
        raise ValueError("evaluate() needs the method's evaluation agent: make_agent(evaluation=True)")
    suite = sampler.suite
    rows: list[dict[str, Any]] = []
    tasks = list(tasks)
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start : start + batch_size]
        keys = -1 - np.arange(start, start + len(chunk), dtype=np.int64)  # fresh: never a train task id
        batch = sampler.run(agent, chunk, suite.eval_episodes, seed=seed + start, task_keys=keys)
        returns, success = batch.episode_returns(), batch.episode_success()
        for i, task in enumerate(chunk):
            for k in range(suite.eval_episodes):
                rows.append(
                    {
                        "iteration": iteration,
                        "mark": mark,
                        "env_steps": env_steps,
                        "split": split,
                        "task_id": task.task_id,
                        "task": task.description,
                        "episode": k,
                        "return": float(returns[i, k]),
                        "success": int(success[i, k]) if suite.has_success else "",
                    }
                )
    return rows


def summarize(rows: list[dict[str, Any]] | pd.DataFrame, suite: Suite) -> pd.DataFrame:
    """Per split and episode: mean return, normalised return and success over tasks."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["return"] = df["return"].astype(float)
    out = df.groupby(["split", "episode"], sort=True).agg(
        tasks=("task_id", "nunique"), mean_return=("return", "mean")
    )
    refs = {s: suite.reference_returns(s) for s in out.index.get_level_values("split").unique()}
    if any(r is not None for r in refs.values()):
        # each split on its own references; a split without any (OOD on most suites) stays raw
        out["normalized"] = [
            float(refs[s].normalise(m)) if refs[s] is not None else np.nan
            for s, m in zip(out.index.get_level_values("split"), out["mean_return"], strict=True)
        ]
    if suite.has_success:
        df["success"] = pd.to_numeric(df["success"], errors="coerce")
        out["success_rate"] = df.groupby(["split", "episode"], sort=True)["success"].mean()
    return out.reset_index()


def headline(
    rows: list[dict[str, Any]] | pd.DataFrame, suite: Suite, split: str = "test"
) -> dict[str, float]:
    """The suite's headline numbers on ``split``: mean over tasks of the headline episodes."""
    df = pd.DataFrame(rows)
    df = df[(df["split"] == split) & df["episode"].isin(suite.headline_episodes())]
    out = {"return": float(df["return"].astype(float).mean())}
    ref = suite.reference_returns(split)
    if ref is not None:
        out["normalized"] = float(np.mean(ref.normalise(df["return"].astype(float).to_numpy())))
    if suite.has_success:
        out["success_rate"] = float(pd.to_numeric(df["success"], errors="coerce").mean())
    return out
