"""Trial rollouts: K episodes on each of B tasks at once, one batched policy call per step.

The result is trial-major (B, T = K * H) arrays ready for PPO over whole trials. Steps after an
MDP termination (the ant fell) are kept in the arrays with ``valid == False`` so every trial has the
same length; they carry zero reward and are never sent to the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from algorithms.base import AdaptiveAgent, Transition
from benchmark.suites.base import BatchEnv, Suite, Task


@dataclass
class TrialBatch:
    """B trials of K episodes with horizon H, laid out (B, T) with T = K * H."""

    tasks: list[Task]
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
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # (B, T, ...)

    @property
    def num_trials(self) -> int:
        return self.rewards.shape[0]

    @property
    def episodes(self) -> int:
        return self.rewards.shape[1] // self.horizon

    @property
    def env_steps(self) -> int:
        return int(self.valid.sum())

    def episode_returns(self) -> np.ndarray:
        """(B, K) undiscounted return of each episode."""
        return (self.rewards * self.valid).reshape(self.num_trials, self.episodes, self.horizon).sum(-1)

    def episode_success(self) -> np.ndarray:
        """(B, K) 1.0 where ``info['success']`` was true at any step of the episode."""
        s = (self.success & self.valid).reshape(self.num_trials, self.episodes, self.horizon)
        return s.any(-1).astype(np.float64)

    def tensor(
        self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """One field (or extra) as a tensor on ``device``."""
        arr = self.extras[name] if name in self.extras else getattr(self, name)
        return torch.as_tensor(np.asarray(arr), dtype=dtype, device=device)


class TrialSampler:
    """Runs trials of a suite for any ``AdaptiveAgent``; owns the batch environments.

    Batch environments are built once per batch size and re-targeted with ``set_tasks``. Simulator
    suites step in ``num_workers`` processes (this one included), each owning one group of the batch.
    The sampler keeps one agent clone per group and acts for one group while the others' physics runs
    (a software pipeline), so the policy and the simulators share the cores instead of taking turns.
    """

    def __init__(self, suite: Suite, num_workers: int = 1) -> None:
        self.suite = suite
        self.num_workers = num_workers
        self._envs: dict[int, BatchEnv] = {}

    def env(self, num_envs: int) -> BatchEnv:
        if num_envs not in self._envs:
            self._envs[num_envs] = self.suite.make_batch_env(num_envs, self.num_workers)
        return self._envs[num_envs]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()

    def run(
        self,
        agent: AdaptiveAgent,
        tasks: Sequence[Task],
        episodes: int,
        seed: int,
        deterministic: bool = False,
    ) -> TrialBatch:
        """One trial of ``episodes`` episodes per task; adaptation state kept across its episodes."""
        tasks = list(tasks)
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
        seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=(K, B))
        # one agent per group of simulators: while group g's physics runs in its worker, the policy
        # acts for the next group (one group, i.e. no overlap, for in-process batch envs)
        groups = env.groups()
        agents = [agent] + [agent.clone() for _ in groups[1:]]
        for ag, (a, b) in zip(agents, groups, strict=True):
            ag.new_trial(b - a)

        def act(g: int, h: int) -> None:
            """Group g picks its actions for step h of the current episode and starts the physics."""
            a, b, t = *groups[g], k * H + h
            with torch.inference_mode():
                action, extra = agents[g].act(obs[a:b], deterministic)
            action = np.asarray(action, dtype=np.float32)
            act_buf[a:b, t] = action
            env_act_buf[a:b, t] = np.clip(action, -1.0, 1.0)
            for name, value in extra.items():
                value = np.asarray(value)
                if name not in extras:
                    extras[name] = np.zeros((B, T, *value.shape[1:]), value.dtype)
                extras[name][a:b, t] = value
            env.step_async(g, env_act_buf[a:b, t], active[a:b].copy())

        def observe(g: int, h: int) -> None:
            """Group g's step h came back: record it and show it to that group's agent."""
            a, b, t = *groups[g], k * H + h
            res = env.step_wait(g)
            act_ = active[a:b]
            reward = np.where(act_, res.reward, 0.0).astype(np.float32)
            terminated = res.terminated & act_
            episode_done = (terminated | (h == H - 1)) & act_
            next_obs = np.where(act_[:, None], res.obs, obs[a:b])
            obs_buf[a:b, t], next_obs_buf[a:b, t] = obs[a:b], next_obs
            rew_buf[a:b, t], term_buf[a:b, t], done_buf[a:b, t] = reward, terminated, episode_done
            valid_buf[a:b, t], succ_buf[a:b, t] = act_, res.success & act_
            # the agent sees exactly the row just recorded (buffer rows are never overwritten)
            recorded = (obs_buf, env_act_buf, rew_buf, next_obs_buf, term_buf, done_buf, valid_buf)
            tr = Transition(*(buf[a:b, t] for buf in recorded))
            with torch.inference_mode():
                agents[g].observe(tr)
            active[a:b] = act_ & ~terminated
            obs[a:b] = next_obs

        for k in range(K):
            obs = np.array(env.reset(seeds[k]), dtype=np.float32)  # own copy: rows are overwritten
            active = np.ones(B, bool)
            for g in range(len(groups)):
                act(g, 0)
            for h in range(H):
                for g in range(len(groups)):
                    observe(g, h)
                    if h + 1 < H:
                        act(g, h + 1)
            for ag in agents:
                ag.end_episode()
        return TrialBatch(
            tasks=tasks,
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
