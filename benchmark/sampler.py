"""Trial rollouts: K episodes on each of B tasks at once, one batched policy call per step.

The result is trial-major (B, T = K * H) arrays ready for PPO over whole trials. Steps after an
MDP termination (the ant fell) are kept in the arrays with ``valid == False`` so every trial has the
same length; they carry zero reward and are never sent to the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from benchmark.errors import SuiteError
from benchmark.suites.base import BatchEnv, StepResult, Suite
from metarl_protocol import AdaptiveAgent, Task, Transition, TrialBatch

#: The batch is split into at most this many groups of rows, each driven by its own agent clone, at
#: task boundaries; how many does not depend on the number of processes, so neither do the results.
AGENT_GROUPS = 2


def task_groups(task_keys: np.ndarray, max_groups: int = AGENT_GROUPS) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` row groups that never split a task, as equal in size as possible.

    A cut is allowed between rows i-1 and i only where no key occurs on both sides. Depends only on
    the keys, never on the process layout. ``task_keys`` is (B,); returns at least one group.
    """
    keys = np.asarray(task_keys)
    B = len(keys)
    if B == 0:
        return []
    first = {k: i for i, k in reversed(list(enumerate(keys.tolist())))}
    last = {k: i for i, k in enumerate(keys.tolist())}
    # a cut before row i is valid iff every key seen before i has its last occurrence before i
    reach = np.maximum.accumulate([last[k] for k in keys.tolist()])
    valid_cuts = [i for i in range(1, B) if reach[i - 1] < i and first[keys[i].item()] >= i]
    cuts: list[int] = []
    for g in range(1, max_groups):
        target = B * g / max_groups
        options = [c for c in valid_cuts if not cuts or c > cuts[-1]]
        if not options:
            break
        cuts.append(min(options, key=lambda c: (abs(c - target), c)))
    bounds = [0, *sorted(set(cuts)), B]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def reset_seeds(seed: int, episodes: int, num_envs: int) -> np.ndarray:
    """The environments' reset seeds of one trial: (episodes, num_envs) int64, row k for episode k.

    ``TrialSampler.run(..., seed)`` resets episode k with row k; replaying a trial's ``env_actions``
    from these seeds reproduces its physics (the perf script times the raw simulator that way).
    """
    return np.random.default_rng(seed).integers(0, 2**31 - 1, size=(episodes, num_envs))


def _first(bad: np.ndarray) -> tuple[int, int]:
    """(row, step) of the earliest True of ``bad`` (B, T), the lowest row at that step."""
    step, row = (int(i[0]) for i in np.nonzero(bad.T))
    return row, step


class TrialSampler:
    """Runs trials of a suite for any ``AdaptiveAgent``; owns the batch environments.

    Batch environments are built once per batch size and re-targeted with ``set_tasks``. Simulator
    suites step in ``num_workers`` processes (this one included). The sampler keeps one agent clone per
    group of rows (``task_groups``: at most ``AGENT_GROUPS``, cut at task boundaries, the same for any
    ``num_workers``) and, where the env steps in the background, acts for one group while the other's
    physics runs (a software pipeline), so the policy and the simulators share the cores.
    """

    def __init__(self, suite: Suite, num_workers: int = 1) -> None:
        self.suite = suite
        self.num_workers = num_workers
        self._envs: dict[int, BatchEnv] = {}

    def env(self, num_envs: int) -> BatchEnv:
        """The batch environment of ``num_envs`` rows: built on first use with
        ``suite.make_batch_env(num_envs, num_workers)``, then reused for every batch of that size."""
        if num_envs not in self._envs:
            self._envs[num_envs] = self.suite.make_batch_env(num_envs, self.num_workers)
        return self._envs[num_envs]

    def close(self) -> None:
        """Close every batch environment built so far (``BatchEnv.close``); a later ``env`` builds anew."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    def _non_finite(self, tasks: Sequence[Task], reward: np.ndarray, obs: np.ndarray, where: str) -> None:
        """Raise ``SuiteError`` naming the first step (then row) whose reward (B, T) or observation
        (B, T, obs_dim) is not finite."""
        row, step = _first(~(np.isfinite(reward) & np.isfinite(obs).all(axis=-1)))
        task = tasks[row]
        at = f"the {where}" if where.startswith("reset") else f"step {step} of {where}"
        raise SuiteError(
            f"suite {self.suite.name!r}: {at} gave a non-finite reward or observation for {task.split} "
            f"task {task.task_id} ({task.description}): reward {reward[row, step]}, observation "
            f"{obs[row, step].tolist()}; a suite's rewards and observations must be finite"
        )

    def run(
        self,
        agent: AdaptiveAgent,
        tasks: Sequence[Task],
        episodes: int,
        seed: int,
        task_keys: Sequence[int] | np.ndarray | None = None,
    ) -> TrialBatch:
        """One trial of ``episodes`` episodes per task; adaptation state kept across its episodes.

        ``task_keys`` (B,) are the opaque keys the agent receives in ``new_trial`` (default: each
        task's id). ``seed`` fixes the environments' reset seeds. The agent's calls happen in the same
        order whatever the process layout: ``new_trial`` per group, then per step ``act`` for group 0,
        1, ... (each group's ``observe`` before its next ``act``), then ``end_episode`` per group.
        ``act`` and ``observe`` run under ``torch.no_grad()``. The arrays they receive (``obs``, each
        ``Transition`` field) are the agent's own copies: an agent that writes into them (say, scales a
        reward in place, or wraps one in a tensor and changes that) cannot change what is recorded and
        scored. Raises ``SuiteError`` where the environment returns a non-finite reward or observation
        for a live row (checked at each episode's end, before the trial is returned).
        """
        tasks = list(tasks)
        keys = np.asarray([t.task_id for t in tasks] if task_keys is None else task_keys, dtype=np.int64)
        if keys.shape != (len(tasks),):
            raise ValueError(f"expected {len(tasks)} task keys, got shape {keys.shape}")
        B, H, K = len(tasks), self.suite.horizon, episodes
        T = K * H
        env = self.env(B)
        env.set_tasks(tasks)
        od, ad = env.obs_dim, env.act_dim
        obs_buf = np.zeros((B, T, od), np.float32)
        next_obs_buf = np.zeros((B, T, od), np.float32)
        act_buf = np.zeros((B, T, ad), np.float32)
        env_act_buf = np.zeros((B, T, ad), np.float32)
        rew_buf = np.zeros((B, T), np.float32)
        term_buf = np.zeros((B, T), bool)
        done_buf = np.zeros((B, T), bool)
        valid_buf = np.zeros((B, T), bool)
        succ_buf = np.zeros((B, T), bool)
        extras: dict[str, np.ndarray] = {}
        seeds = reset_seeds(seed, K, B)
        # one agent per group of rows (groups never split a task): with a pipelined env, group g's
        # policy call runs while the other groups' physics runs in the workers
        groups = task_groups(keys)
        agents = [agent] + [agent.clone() for _ in groups[1:]]
        for ag, (a, b) in zip(agents, groups, strict=True):
            ag.new_trial(keys[a:b].copy())

        def act(g: int, h: int) -> None:
            """Group g picks its actions for step h of the current episode."""
            a, b, t = *groups[g], k * H + h
            with torch.no_grad():
                action, extra = agents[g].act(obs[a:b].copy())
            action = np.asarray(action, dtype=np.float32)
            act_buf[a:b, t] = action
            env_act_buf[a:b, t] = np.clip(action, -1.0, 1.0)
            for name, value in extra.items():
                value = np.asarray(value)
                if name not in extras:
                    extras[name] = np.zeros((B, T, *value.shape[1:]), value.dtype)
                extras[name][a:b, t] = value

        def observe(g: int, h: int, res: StepResult) -> None:
            """Group g's step h came back: record it and show it to that group's agent."""
            a, b, t = *groups[g], k * H + h
            act_ = active[a:b]
            reward = np.where(act_, res.reward, 0.0).astype(np.float32)
            terminated = np.asarray(res.terminated, bool) & act_
            episode_done = (terminated | (h == H - 1)) & act_
            next_obs = np.where(act_[:, None], res.obs, obs[a:b])
            obs_buf[a:b, t], next_obs_buf[a:b, t] = obs[a:b], next_obs
            rew_buf[a:b, t], term_buf[a:b, t], done_buf[a:b, t] = reward, terminated, episode_done
            valid_buf[a:b, t], succ_buf[a:b, t] = act_, np.asarray(res.success, bool) & act_
            # the agent sees exactly the row just recorded (buffer rows are never overwritten)
            recorded = (obs_buf, env_act_buf, rew_buf, next_obs_buf, term_buf, done_buf, valid_buf)
            # copies: what the agent changes in place is not the record
            tr = Transition(*(buf[a:b, t].copy() for buf in recorded))
            with torch.no_grad():
                agents[g].observe(tr)
            active[a:b] = act_ & ~terminated
            obs[a:b] = next_obs

        def send(g: int, h: int) -> None:
            a, b, t = *groups[g], k * H + h
            env.step_async(groups[g], env_act_buf[a:b, t], active[a:b].copy())

        for k in range(K):
            obs = np.array(env.reset(seeds[k]), dtype=np.float32)  # own copy: rows are overwritten
            if not np.isfinite(obs).all():
                self._non_finite(tasks, np.zeros((B, 1)), obs[:, None], f"reset of episode {k}")
            active = np.ones(B, bool)
            if env.pipelined:
                for g in range(len(groups)):
                    act(g, 0)
                    send(g, 0)
                for h in range(H):
                    for g in range(len(groups)):
                        observe(g, h, env.step_wait(groups[g]))
                        if h + 1 < H:
                            act(g, h + 1)
                            send(g, h + 1)
            else:  # lock-step: the same agent calls in the same order, one env step per time step
                for h in range(H):
                    for g in range(len(groups)):
                        act(g, h)
                    res = env.step(env_act_buf[:, k * H + h], active.copy())
                    for g, (a, b) in enumerate(groups):
                        part = StepResult(
                            res.obs[a:b], res.reward[a:b], res.terminated[a:b], res.success[a:b]
                        )
                        observe(g, h, part)
            # once per episode (per step it cost ~5 us per group): nothing sampled reaches a learner or
            # a result before this check (masked rows hold 0 and their last observation)
            episode = slice(k * H, (k + 1) * H)
            if not np.isfinite(act_buf[:, episode]).all():  # before the env is blamed for what it was fed
                row, step = _first(~np.isfinite(act_buf[:, episode]).all(-1))
                raise RuntimeError(
                    f"the agent's action for {tasks[row].split} task {tasks[row].task_id} at step {step} of "
                    f"episode {k} is not finite ({act_buf[row, k * H + step].tolist()}): the method diverged"
                )
            if not (np.isfinite(rew_buf[:, episode]).all() and np.isfinite(next_obs_buf[:, episode]).all()):
                self._non_finite(tasks, rew_buf[:, episode], next_obs_buf[:, episode], f"episode {k}")
            for ag in agents:
                ag.end_episode()
        return TrialBatch(
            tasks=tasks,
            task_keys=keys,
            obs=obs_buf,
            actions=act_buf,
            env_actions=env_act_buf,
            rewards=rew_buf,
            next_obs=next_obs_buf,
            terminated=term_buf,
            episode_done=done_buf,
            valid=valid_buf,
            success=succ_buf,
            episode_index=np.repeat(np.arange(K), H),
            horizon=H,
            extras=extras,
        )
