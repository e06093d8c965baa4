"""Batch environments over gymnasium simulators, stepped in worker processes.

gymnasium's ``AsyncVectorEnv`` runs one process per environment; with 20-40 tasks per batch on a
2-core machine that is 20-40 processes fighting for two cores. Here ``num_workers`` processes (the
sampling process itself and ``num_workers - 1`` spawned workers) each own a contiguous slice of the
environments and step them in a loop, so the batch uses exactly the cores it is given and pays one
pipe round-trip per worker per step.

Workers are started with ``spawn`` (safe with torch threads in the parent), so a user script that
builds simulator suites directly needs the usual ``if __name__ == "__main__":`` guard.

Every environment is a gymnasium ``Env`` with a ``set_task(task)`` method (a *task env*); a process
builds one per batch row it steps, re-targets it with ``set_task`` at every new trial, and closes it
only when the row moves to another process (load balancing, ``ProcessBatchEnv``).
"""

from __future__ import annotations

import multiprocessing as mp
import time
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
    """The task envs one process steps: one env per batch row it owns, built when the row arrives.

    Rows are global batch indices. A process owns a contiguous row range that may change at episode
    boundaries (``ProcessBatchEnv`` rebalances); an env serves one row only, gets its row's task
    (``set_task``) before its first reset after each ``set_tasks``, and is reset with the row's seed, so
    which process steps a row never changes what the row records. Envs of rows that move to another
    process are closed. (Meta-World's ``close`` parks the simulator in a per-process pool of at most 16
    idle ones, ~19 MB each, reused when a row arrives, so a process may hold up to 16 idle ones extra.)
    """

    def __init__(self, make_env: Callable[[], TaskEnv]) -> None:
        self.make_env = make_env
        self.envs: dict[int, TaskEnv] = {}
        self.tasks: list[Task] = []
        self.generation = 0  # bumped by set_tasks
        self.applied: dict[int, int] = {}  # row -> generation whose task its env holds
        self.lo = 0  # first row this process owns
        self.low = self.high = None
        self.obs_dim = 0

    def env(self, row: int) -> TaskEnv:
        if row not in self.envs:
            env = self.envs[row] = self.make_env()
            if self.low is None:
                space = env.action_space
                self.low = np.asarray(space.low, dtype=np.float64)
                self.high = np.asarray(space.high, dtype=np.float64)
                self.obs_dim = int(np.prod(env.observation_space.shape))
        return self.envs[row]

    def set_tasks(self, tasks: Sequence[Task]) -> None:
        self.tasks = list(tasks)
        self.generation += 1

    def reset(self, lo: int, hi: int, seeds: Sequence[int]) -> np.ndarray:
        """Own rows ``lo:hi`` from now on; start an episode in each (``seeds`` for those rows)."""
        for row in [r for r in self.envs if not lo <= r < hi]:  # rows that moved away: free their envs
            self.envs.pop(row).close()
            self.applied.pop(row, None)
        self.lo = lo
        envs = [self.env(row) for row in range(lo, hi)]  # (built first: the dimensions come from an env)
        self.last_obs = np.zeros((hi - lo, self.obs_dim), dtype=np.float32)
        for i, (row, env, seed) in enumerate(zip(range(lo, hi), envs, seeds, strict=True)):
            if self.applied.get(row) != self.generation:
                env.set_task(self.tasks[row])
                self.applied[row] = self.generation
            obs, _ = env.reset(seed=int(seed))
            self.last_obs[i] = obs
        return self.last_obs.copy()

    def step(self, actions: np.ndarray, active: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, ...]:
        """Step rows ``lo:hi`` (inside this process's range; ``actions`` and ``active`` for those rows)."""
        n = hi - lo
        rew = np.zeros(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        succ = np.zeros(n, dtype=bool)
        env_actions = scale_actions(actions.astype(np.float64), self.low, self.high)
        for i in range(n):
            if not active[i]:
                continue
            obs, r, terminated, _truncated, info = self.envs[lo + i].step(env_actions[i])
            self.last_obs[lo - self.lo + i] = obs
            rew[i] = r
            term[i] = terminated
            succ[i] = bool(info.get("success", False))
        return self.last_obs[lo - self.lo : hi - self.lo].copy(), rew, term, succ

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _worker(conn: Any, make_env: Callable[[], TaskEnv]) -> None:
    sl = _Slice(make_env)
    conn.send(("ok", None))  # ready; envs are built when rows are first assigned (reset)
    while True:
        t0 = time.perf_counter()
        cmd, payload = conn.recv()
        idle = time.perf_counter() - t0  # waiting for this command (and reading it)
        try:
            if cmd == "step":
                t0 = time.perf_counter()
                out = sl.step(*payload)
                # physics seconds and seconds spent waiting for the command, for the parent's load balance
                out = (*out, time.perf_counter() - t0, idle)
            elif cmd == "reset":
                out = sl.reset(*payload)
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

    The sampling process steps the first rows itself between policy calls and each worker steps one
    contiguous group of the rest. On a 2-core machine that is two busy processes, not three taking
    turns: with a third process, every pipe write woke a worker that preempted the sampler (measured
    with cProfile as ~140 us per ``send``). ``num_workers=1`` steps everything here.

    **Load balance.** The sampling process also runs the policy, so its fair share of the physics
    depends on the method: a 3-layer MLP costs ~0.1 ms per call for 10 envs, a transformer ~0.5 ms, about
    as much as stepping 10 HalfCheetahs. The first split gives this process ``LOCAL_WEIGHT`` of a worker's
    share; then, at each ``reset`` after at least ``REBALANCE_STEPS`` measured batch steps (the first
    episode, warm-up, is not measured), the rows are re-split by a model of one batch step fitted to the
    measurements: with n rows here, B envs, r workers, t the physics time per row and step (pooled over
    the processes; rows that terminated count, as they will again), P this process's time per batch step
    outside the physics and outside waiting for workers (policy, bookkeeping, pipes) and O a worker's
    time per batch step outside the physics and outside waiting for and reading commands (bookkeeping,
    its replies; each worker reports how long it waited, and its first reply of an episode is left out,
    as the parent leaves out the first step), a batch step takes
    ``max(n t + P, ceil((B - n) / r) t + O)`` (``step_time``). The split moves to the n that minimises
    it (``balanced_rows``) only when that saves at least ``REBALANCE_GAIN`` of the current split's
    predicted time: one row can matter (Meta-World steps cost ~0.45 ms each, and a split one row off left
    the sampling process waiting ~0.9 ms per 4.5 ms step), while timing noise between two nearly equal
    splits moves nothing. Which process steps a row never changes what it records (``_Slice``).
    """

    LOCAL_WEIGHT = 2 / 3  # the first split: the sampling process's share relative to one worker's
    REBALANCE_STEPS = 20  # batch steps measured before the split may change
    REBALANCE_GAIN = 0.02  # the share of the predicted step time a new split must save
    pipelined = True  # workers step in the background between step_async and step_wait

    def __init__(self, make_env: Callable[[], TaskEnv], num_envs: int, num_workers: int = 1) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_envs = num_envs
        self.num_workers = min(num_workers, num_envs)
        self._slices = self.split(num_envs, self.num_workers)
        # this process's (actions, active) of each row range in flight
        self._pending: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._here: _Slice | None = _Slice(make_env)
        probe = self._here.env(0)
        self.obs_dim = self._here.obs_dim
        self.act_dim = int(probe.action_space.shape[0])
        self._conns: list[Any] = []
        self._procs: list[mp.Process] = []
        ctx = mp.get_context("spawn")
        for _ in self._slices[1:]:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, make_env), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._gather()
        self._warm = False  # the env's first episode (first policy calls, caches) is not measured
        self._clear_stats()

    @classmethod
    def split(cls, num_envs: int, num_workers: int, here: int | None = None) -> list[tuple[int, int]]:
        """(start, stop) of each process's rows: this process first (``here`` rows; default from
        ``LOCAL_WEIGHT``, possibly none), then the workers (>= 1 env each, as equal as possible)."""
        remote = min(num_workers, num_envs) - 1
        if here is None or not remote:
            here = num_envs - remote
            if remote:
                here = min(here, max(1, round(num_envs * cls.LOCAL_WEIGHT / (cls.LOCAL_WEIGHT + remote))))
        here = min(max(here, 0), num_envs - remote)
        bounds = (here + np.linspace(0, num_envs - here, remote + 1)).round().astype(int)
        return [(0, here)] + [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    # -- load balance -------------------------------------------------------------------------------
    def _clear_stats(self) -> None:
        self._mark: float | None = None  # end of the last step_wait of this episode
        self._fresh: set[int] = set()  # slices (workers) not yet heard from since the last reset
        self._cycle = self._steps = self._here_busy = self._wait = 0.0  # s, batch steps, s, s
        self._worker_busy = self._worker_idle = 0.0  # workers' physics and waiting seconds, summed
        # rows x measured steps each side was given, live or not: a terminated row costs nothing until the
        # next reset, so a row's expected physics per step is busy / rows (what moving one row moves)
        self._here_rows = self._worker_rows = 0.0

    def step_time(self, here: int) -> float | None:
        """Predicted seconds per batch step with ``here`` rows in this process (the class docstring's
        model, from the measurements since the last split); None if too few steps were measured."""
        remote = len(self._conns)
        if not remote or self._steps < self.REBALANCE_STEPS or self._here_rows + self._worker_rows == 0:
            return None
        # pooled over every process: on a suite that terminates, which rows fall differs per episode, so
        # one side's few rows give a noisy per-row time (per side, ant-dir's split swung 4 -> 11 -> 4)
        t = (self._here_busy + self._worker_busy) / (self._here_rows + self._worker_rows)
        cycle = self._cycle / self._steps
        local = max(0.0, cycle - (self._here_busy + self._wait) / self._steps)  # P
        worker = max(0.0, cycle - (self._worker_busy + self._worker_idle) / (remote * self._steps))  # O
        return max(here * t + local, -(-(self.num_envs - here) // remote) * t + worker)

    def balanced_rows(self) -> int | None:
        """The rows n for this process that minimise ``step_time(n)`` (the fewest on a tie); None if too
        few steps were measured."""
        if self.step_time(0) is None:
            return None
        options = range(self.num_envs - len(self._conns) + 1)
        return min(options, key=lambda n: (self.step_time(n), n))

    @property
    def local_rows(self) -> int:
        """Rows the sampling process steps itself now."""
        return self._slices[0][1]

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
        for conn in self._conns:
            conn.send(("set_tasks", list(tasks)))
        self._local().set_tasks(tasks)
        self._gather()

    def reset(self, seeds: Sequence[int], local_rows: int | None = None) -> np.ndarray:
        """Start an episode in every env; first re-split the rows (``local_rows`` for this process, default
        ``balanced_rows()``: unchanged until enough steps were measured)."""
        seeds = [int(s) for s in seeds]
        if local_rows is not None:
            here = local_rows
        elif not self._warm:
            here = None
            if self._steps:  # the first episode is over: measure from the next one
                self._warm = True
                self._clear_stats()
        else:
            here = self.balanced_rows()
            if here is not None and self.step_time(here) > (1 - self.REBALANCE_GAIN) * self.step_time(
                self.local_rows
            ):
                here = None  # within the noise: keep the split and keep measuring
        if here is not None and here != self.local_rows:
            self._slices = self.split(self.num_envs, self.num_workers, here)
            self._clear_stats()
        self._mark = None  # the pause between episodes (or trials: training) is not a step
        self._fresh = set(range(1, len(self._slices)))  # workers whose first reply of the episode is to come
        for conn, (a, b) in zip(self._conns, self._slices[1:], strict=True):
            conn.send(("reset", (a, b, seeds[a:b])))
        a, b = self._slices[0]
        here_obs = self._local().reset(a, b, seeds[a:b])
        return np.concatenate([here_obs, *self._gather()])

    def step(self, actions: np.ndarray, active: np.ndarray) -> StepResult:
        rows = (0, self.num_envs)
        self.step_async(rows, actions, active)
        return self.step_wait(rows)

    def _overlaps(self, rows: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(slice index, start, stop) in global rows of every slice that ``rows`` touches."""
        lo, hi = rows
        out = []
        for s, (a, b) in enumerate(self._slices):
            x, y = max(a, lo), min(b, hi)
            if x < y:
                out.append((s, x, y))
        return out

    def step_async(self, rows: tuple[int, int], actions: np.ndarray, active: np.ndarray) -> None:
        """Send each worker its part of ``rows``; this process's part is stepped in ``step_wait``."""
        lo = rows[0]
        for s, x, y in self._overlaps(rows):
            part = (actions[x - lo : y - lo], active[x - lo : y - lo], x, y)
            if s == 0:
                self._pending[rows] = part[:2]  # its rows are the overlap's again in step_wait
            else:
                self._conns[s - 1].send(("step", part))

    def step_wait(self, rows: tuple[int, int]) -> StepResult:
        """Collect ``rows``: step this process's part now, then read each worker's reply (FIFO)."""
        parts = []
        local = wait = remote_busy = remote_idle = 0.0
        here_rows = remote_rows = 0
        counted = self._mark is not None  # a whole step since the previous one (not the pause after reset)
        for s, x, y in self._overlaps(rows):
            if s == 0:
                actions, active = self._pending.pop(rows)
                t0 = time.perf_counter()
                parts.append(self._local().step(actions, active, x, y))
                dt = time.perf_counter() - t0
                local += dt
                here_rows += y - x
            else:
                t0 = time.perf_counter()
                *out, worker_busy, worker_idle = self._receive(self._conns[s - 1])
                wait += time.perf_counter() - t0
                parts.append(out)
                if s in self._fresh:  # its first reply since reset: the idle time spans the episode's start
                    self._fresh.discard(s)
                    continue
                remote_busy += worker_busy
                remote_idle += worker_idle
                remote_rows += y - x
        now = time.perf_counter()
        if counted:
            self._cycle += now - self._mark
            self._steps += (rows[1] - rows[0]) / self.num_envs
            self._here_busy += local
            self._wait += wait
            self._worker_busy += remote_busy
            self._worker_idle += remote_idle
            self._here_rows += here_rows
            self._worker_rows += remote_rows
        self._mark = now
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
