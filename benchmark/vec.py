"""Batch environments over gymnasium simulators, stepped in worker processes.

gymnasium's ``AsyncVectorEnv`` runs one process per environment; with 20-40 tasks per batch on a
2-core machine that is 20-40 processes fighting for two cores. Here each of ``num_workers`` processes
owns a contiguous slice of the environments and steps them in a loop, so the batch uses exactly the
cores it is given and pays one pipe round-trip per worker per step.

Workers are started with ``spawn`` (safe with torch threads in the parent), so a user script that
builds simulator suites directly needs the usual ``if __name__ == "__main__":`` guard.

Every environment is a gymnasium ``Env`` with a ``set_task(task)`` method (a *task env*); it is built
once per worker slot and re-targeted with ``set_task`` at every new trial, never rebuilt.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from benchmark.suites.base import BatchEnv, StepResult, Task, scale_actions


class TaskEnv(Protocol):
    """A gymnasium environment whose task can be changed in place."""

    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box

    def set_task(self, task: Task) -> None: ...
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]: ...
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]: ...
    def close(self) -> None: ...


class _Slice:
    """The environments one worker owns; also used in-process when ``num_workers == 1``."""

    def __init__(self, make_env: Callable[[], TaskEnv], n: int) -> None:
        self.envs = [make_env() for _ in range(n)]
        space = self.envs[0].action_space
        self.low = np.asarray(space.low, dtype=np.float64)
        self.high = np.asarray(space.high, dtype=np.float64)
        self.obs_dim = int(np.prod(self.envs[0].observation_space.shape))
        self.last_obs = np.zeros((n, self.obs_dim), dtype=np.float32)

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        for env, task in zip(self.envs, tasks, strict=True):
            env.set_task(task)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        for i, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            obs, _ = env.reset(seed=int(seed))
            self.last_obs[i] = obs
        return self.last_obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(self.envs)
        rew = np.zeros(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        succ = np.zeros(n, dtype=bool)
        env_actions = scale_actions(actions.astype(np.float64), self.low, self.high)
        for i, env in enumerate(self.envs):
            if not active[i]:
                continue
            obs, r, terminated, _truncated, info = env.step(env_actions[i])
            self.last_obs[i] = obs
            rew[i] = r
            term[i] = terminated
            succ[i] = bool(info.get("success", False))
        return self.last_obs.copy(), rew, term, succ

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn: Any, make_env: Callable[[], TaskEnv], n: int) -> None:
    try:
        sl = _Slice(make_env, n)
        conn.send(("ok", (sl.obs_dim, sl.envs[0].action_space.shape[0])))
    except Exception:  # pragma: no cover - reported to the parent
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        cmd, payload = conn.recv()
        try:
            if cmd == "step":
                out = sl.step(*payload)
            elif cmd == "reset":
                out = sl.reset(payload)
            elif cmd == "set_tasks":
                out = sl.set_tasks(payload)
            elif cmd == "close":
                sl.close()
                conn.send(("ok", None))
                return
            else:  # pragma: no cover
                raise ValueError(f"unknown command {cmd}")
            conn.send(("ok", out))
        except Exception:  # pragma: no cover - reported to the parent
            conn.send(("error", traceback.format_exc()))


class ProcessBatchEnv(BatchEnv):
    """``num_envs`` task envs split over ``num_workers`` processes (in-process when 1)."""

    def __init__(self, make_env: Callable[[], TaskEnv], num_envs: int, num_workers: int = 1) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.num_workers = max(1, min(num_workers, num_envs))
        bounds = np.linspace(0, num_envs, self.num_workers + 1).round().astype(int)
        self._slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._local: _Slice | None = None
        self._conns: list[Any] = []
        self._procs: list[mp.Process] = []
        if self.num_workers == 1:
            self._local = _Slice(make_env, num_envs)
            self.obs_dim = self._local.obs_dim
            self.act_dim = int(self._local.envs[0].action_space.shape[0])
            return
        ctx = mp.get_context("spawn")
        for a, b in self._slices:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, make_env, b - a), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        dims = self._gather()
        self.obs_dim, self.act_dim = dims[0]

    def _gather(self) -> list[Any]:
        outs = []
        for conn in self._conns:
            try:
                status, out = conn.recv()
            except (EOFError, OSError) as exc:
                self.close()
                raise RuntimeError(
                    f"an environment worker died ({type(exc).__name__}); see its stderr"
                ) from None
            if status != "ok":
                self.close()
                raise RuntimeError(f"environment worker failed:\n{out}")
            outs.append(out)
        return outs

    def _call(self, cmd: str, per_slice: list[Any]) -> list[Any]:
        for conn, payload in zip(self._conns, per_slice, strict=True):
            conn.send((cmd, payload))
        return self._gather()

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        if self._local is not None:
            self._local.set_tasks(tasks)
            return
        self._call("set_tasks", [list(tasks[a:b]) for a, b in self._slices])

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        seeds = [int(s) for s in seeds]
        if self._local is not None:
            return self._local.reset(seeds)
        return np.concatenate(self._call("reset", [seeds[a:b] for a, b in self._slices]))

    def step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        if self._local is not None:
            obs, rew, term, succ = self._local.step(actions, active)
        else:
            outs = self._call("step", [(actions[a:b], active[a:b]) for a, b in self._slices])
            obs, rew, term, succ = (np.concatenate(x) for x in zip(*outs, strict=True))
        return StepResult(obs=obs, reward=rew, terminated=term, success=succ)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        for conn in self._conns:
            try:
                conn.send(("close", None))
                conn.recv()
            except (OSError, EOFError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
