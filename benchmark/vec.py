"""Batch environments over gymnasium simulators, stepped in worker processes.

gymnasium's ``AsyncVectorEnv`` runs one process per environment; with 20-40 tasks per batch on a
2-core machine that is 20-40 processes fighting for two cores. Here ``num_workers`` processes (the
sampling process itself and ``num_workers - 1`` spawned workers) each own a contiguous slice of the
environments and step them in a loop, so the batch uses exactly the cores it is given and pays one
pipe round-trip per worker per step.

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
    """The environments one process owns (a worker's, or the sampling process's own group)."""

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

    def step(
        self, actions: np.ndarray, active: np.ndarray, start: int = 0, stop: int | None = None
    ) -> tuple[np.ndarray, ...]:
        """Step envs ``start:stop`` of this slice (``actions`` and ``active`` for those rows only)."""
        stop = len(self.envs) if stop is None else stop
        n = stop - start
        rew = np.zeros(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        succ = np.zeros(n, dtype=bool)
        env_actions = scale_actions(actions.astype(np.float64), self.low, self.high)
        for i in range(n):
            if not active[i]:
                continue
            obs, r, terminated, _truncated, info = self.envs[start + i].step(env_actions[i])
            self.last_obs[start + i] = obs
            rew[i] = r
            term[i] = terminated
            succ[i] = bool(info.get("success", False))
        return self.last_obs[start:stop].copy(), rew, term, succ

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn: Any, make_env: Callable[[], TaskEnv], n: int) -> None:
    try:
        sl = _Slice(make_env, n)
        conn.send(("ok", None))  # ready (the parent reads the dimensions from its own group)
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
    """``num_envs`` task envs stepped by ``num_workers`` processes: this one and ``num_workers - 1`` workers.

    The sampling process steps its own group of environments between policy calls (it weighs
    ``LOCAL_WEIGHT`` of a worker's share, because it also runs the policy), and each worker steps one
    contiguous group. On a 2-core machine that is two busy processes, not three taking turns: with a
    third process, every pipe write woke a worker that preempted the sampler (measured with cProfile
    as ~140 us per ``send``). ``num_workers=1`` steps everything here.
    """

    LOCAL_WEIGHT = 2 / 3  # the sampling process's share relative to one worker's (tuned on halfcheetah-vel)
    pipelined = True  # workers step in the background between step_async and step_wait

    def __init__(self, make_env: Callable[[], TaskEnv], num_envs: int, num_workers: int = 1) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_envs = num_envs
        self.num_workers = min(num_workers, num_envs)
        self._slices = self.split(num_envs, self.num_workers)
        self._pending = {}  # this process's part of each row range in flight
        self._here: _Slice | None = _Slice(make_env, self._slices[0][1])
        self.obs_dim = self._here.obs_dim
        self.act_dim = int(self._here.envs[0].action_space.shape[0])
        self._conns: list[Any] = []
        self._procs: list[mp.Process] = []
        ctx = mp.get_context("spawn")
        for a, b in self._slices[1:]:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, make_env, b - a), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._gather()

    @classmethod
    def split(cls, num_envs: int, num_workers: int) -> list[tuple[int, int]]:
        """(start, stop) of each process's group: this process first, then the workers (>= 1 env each)."""
        remote = min(num_workers, num_envs) - 1
        here = num_envs - remote
        if remote:
            here = min(here, max(1, round(num_envs * cls.LOCAL_WEIGHT / (cls.LOCAL_WEIGHT + remote))))
        bounds = (here + np.linspace(0, num_envs - here, remote + 1)).round().astype(int)
        return [(0, here)] + [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _local(self) -> _Slice:
        if self._here is None:
            raise RuntimeError("the batch environment is closed")
        return self._here

    def _receive(self, conn: Any) -> Any:
        try:
            status, out = conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            raise RuntimeError(f"an environment worker died ({type(exc).__name__}); see its stderr") from None
        if status != "ok":
            self.close()
            raise RuntimeError(f"environment worker failed:\n{out}")
        return out

    def _gather(self) -> list[Any]:
        return [self._receive(conn) for conn in self._conns]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        for conn, (a, b) in zip(self._conns, self._slices[1:], strict=True):
            conn.send(("set_tasks", list(tasks[a:b])))
        self._local().set_tasks(tasks[: self._slices[0][1]])
        self._gather()

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        seeds = [int(s) for s in seeds]
        for conn, (a, b) in zip(self._conns, self._slices[1:], strict=True):
            conn.send(("reset", seeds[a:b]))
        here = self._local().reset(seeds[: self._slices[0][1]])
        return np.concatenate([here, *self._gather()])

    def step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        rows = (0, self.num_envs)
        self.step_async(rows, actions, active)
        return self.step_wait(rows)

    def _overlaps(self, rows: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(slice index, start, stop) in slice coordinates of every slice that ``rows`` touches."""
        lo, hi = rows
        out = []
        for s, (a, b) in enumerate(self._slices):
            x, y = max(a, lo), min(b, hi)
            if x < y:
                out.append((s, x - a, y - a))
        return out

    def step_async(self, rows: tuple[int, int], actions: np.ndarray, active: np.ndarray) -> None:
        """Send each worker its part of ``rows``; this process's part is stepped in ``step_wait``."""
        lo = rows[0]
        for s, x, y in self._overlaps(rows):
            a = self._slices[s][0]
            part = (actions[a + x - lo : a + y - lo], active[a + x - lo : a + y - lo], x, y)
            if s == 0:
                self._pending[rows] = part  # type: ignore[assignment]
            else:
                self._conns[s - 1].send(("step", part))

    def step_wait(self, rows: tuple[int, int]) -> StepResult:
        """Collect ``rows``: step this process's part now, then read each worker's reply (FIFO)."""
        parts = []
        for s, _x, _y in self._overlaps(rows):
            if s == 0:
                parts.append(self._local().step(*self._pending.pop(rows)))  # type: ignore[arg-type]
            else:
                parts.append(self._receive(self._conns[s - 1]))
        return StepResult(*(np.concatenate(field) for field in zip(*parts, strict=True)))

    def close(self) -> None:
        if self._here is not None:
            self._here.close()
            self._here = None
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
