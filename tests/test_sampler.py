import itertools

import numpy as np
import torch

from algorithms.base import AdaptiveAgent, Transition
from algorithms.common.buffers import PreviousStep, trial_features
from benchmark.sampler import TrialSampler
from benchmark.suites.base import BatchEnv, StepResult, Suite, Task
from benchmark.suites.point_nav import PointNav


class RecordingAgent(AdaptiveAgent):
    """Random actions; records the step inputs it would feed a memory network, and the call order."""

    def __init__(self, act_dim: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.act_dim = act_dim
        self.calls: list[str] = []
        self.features: list[np.ndarray] = []
        self.inference = []

    def new_trial(self, num_envs):
        self.calls.append("new_trial")
        self.prev = PreviousStep(num_envs, self.act_dim)

    def act(self, obs, deterministic):
        self.inference.append(torch.is_inference_mode_enabled())
        self.features.append(self.prev.features(obs))
        a = self.rng.uniform(-1.3, 1.3, size=(len(obs), self.act_dim)).astype(np.float32)
        return a, {"value": np.full(len(obs), 7.0, np.float32)}

    def observe(self, tr: Transition):
        self.prev.update(tr)

    def end_episode(self):
        self.calls.append("end_episode")


class FallingEnv(BatchEnv):
    """Env i terminates at step 2 + i of every episode; obs = step count; reward 1 per step."""

    obs_dim, act_dim = 1, 1

    def __init__(self, n):
        self.num_envs, self.t = n, 0

    def set_tasks(self, tasks):
        pass

    def reset(self, seeds):
        self.t = 0
        return np.zeros((self.num_envs, 1), np.float32)

    def step(self, actions, active):
        self.t += 1
        term = np.array([self.t >= 2 + i for i in range(self.num_envs)])
        n = self.num_envs
        return StepResult(
            np.full((n, 1), self.t, np.float32), np.ones(n, np.float32), term, np.zeros(n, bool)
        )


class FallingSuite(Suite):
    name, family, horizon, episodes_per_trial, obs_dim, act_dim = "falling", "test", 6, 2, 1, 1

    def _make_tasks(self, split):
        return [Task(i, split, {}, f"t{i}") for i in range(3)]

    def make_batch_env(self, num_envs, num_workers=1):
        return FallingEnv(num_envs)


def test_trial_batch_layout_and_call_order():
    suite = PointNav()
    agent = RecordingAgent(2)
    batch = TrialSampler(suite).run(agent, suite.tasks("train")[:5], episodes=3, seed=0)
    assert batch.obs.shape == (5, 300, 2) and batch.rewards.shape == (5, 300)
    assert batch.extras["value"].shape == (5, 300) and (batch.extras["value"] == 7).all()
    assert agent.calls == ["new_trial", "end_episode", "end_episode", "end_episode"]
    assert all(agent.inference), "agents must act under torch.inference_mode"
    # episode boundaries: obs reset to the origin at the start of every episode
    assert np.allclose(batch.obs[:, [0, 100, 200]], 0)
    assert batch.episode_done[:, [99, 199, 299]].all() and batch.episode_done.sum() == 15
    assert np.abs(batch.env_actions).max() <= 1.0 < np.abs(batch.actions).max()
    assert batch.env_steps == 1500 and batch.episode_returns().shape == (5, 3)


def test_previous_step_inputs_agree_between_acting_and_training():
    suite = PointNav()
    agent = RecordingAgent(2)
    batch = TrialSampler(suite).run(agent, suite.tasks("train")[:4], episodes=2, seed=3)
    online = np.stack(agent.features, axis=1)  # (B, T, in)
    offline = trial_features(batch).numpy()
    assert np.allclose(online, offline)
    # the first step of episode 2 sees the last step of episode 1 with done = 1
    assert np.allclose(offline[:, 100, -1], 1.0) and np.allclose(offline[:, 100, -2], batch.rewards[:, 99])


def test_terminated_envs_are_not_stepped_and_masked():
    suite = FallingSuite()
    agent = RecordingAgent(1)
    batch = TrialSampler(suite).run(agent, suite.tasks("train"), episodes=2, seed=0)
    # env i lives 2 + i steps in each episode
    assert batch.valid.reshape(3, 2, 6).sum(-1).tolist() == [[2, 2], [3, 3], [4, 4]]
    assert (batch.rewards[~batch.valid] == 0).all()
    assert batch.episode_returns().tolist() == [[2, 2], [3, 3], [4, 4]]
    assert batch.terminated.sum() == 6 and batch.episode_done.sum() == 6
    online = np.stack(agent.features, axis=1)
    assert np.allclose(online, trial_features(batch).numpy())


class GroupedFallingEnv(FallingEnv):
    """FallingEnv whose rows step in two groups (as two worker processes would), out of lock-step."""

    def groups(self):
        return [(0, 1), (1, self.num_envs)]

    def reset(self, seeds):
        self.tg = [0, 0]
        self.pending = {}
        return super().reset(seeds)

    def step_async(self, group, actions, active):
        assert group not in self.pending, "a group was stepped twice without step_wait"
        self.pending[group] = (actions.copy(), active.copy())

    def step_wait(self, group):
        a, b = self.groups()[group]
        actions, active = self.pending.pop(group)
        assert actions.shape == (b - a, 1) and active.shape == (b - a,)
        self.tg[group] += 1
        t, n = self.tg[group], b - a
        term = np.array([t >= 2 + i for i in range(a, b)])
        return StepResult(np.full((n, 1), t, np.float32), np.ones(n, np.float32), term, np.zeros(n, bool))


class MemoryAgent(AdaptiveAgent):
    """Deterministic actions from the step input (obs, a_{t-1}, r_{t-1}, done_{t-1}) and a running sum."""

    def new_trial(self, num_envs):
        self.prev, self.total = PreviousStep(num_envs, 1), np.zeros(num_envs, np.float32)

    def act(self, obs, deterministic):
        x = self.prev.features(obs)
        self.total = self.total + x.sum(1)  # rebinds: clones never share it
        return np.tanh(0.1 * self.total)[:, None].astype(np.float32), {"total": self.total.copy()}

    def observe(self, tr):
        self.prev.update(tr)


def test_pipelined_groups_record_the_same_trials_as_lock_step():
    class GroupedSuite(FallingSuite):
        def make_batch_env(self, num_envs, num_workers=1):
            return GroupedFallingEnv(num_envs)

    tasks = FallingSuite().tasks("train")
    lock = TrialSampler(FallingSuite()).run(MemoryAgent(), tasks, episodes=2, seed=0)
    piped = TrialSampler(GroupedSuite()).run(MemoryAgent(), tasks, episodes=2, seed=0)
    fields = ("obs", "actions", "env_actions", "rewards", "next_obs", "terminated", "episode_done", "valid")
    for name in fields:
        assert np.array_equal(getattr(lock, name), getattr(piped, name)), name
    assert np.array_equal(lock.extras["total"], piped.extras["total"])
    assert len(np.unique(lock.actions[:, 3])) == 3  # the agents' memories really differ per row


def test_process_batch_env_groups_step_like_the_whole_batch():
    from benchmark.suites.locomotion import HalfCheetahVel

    suite = HalfCheetahVel()
    tasks = suite.tasks("train")[:3]
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 3, suite.act_dim)).astype(np.float32)
    active = np.ones(3, bool)
    whole, grouped = suite.make_batch_env(3, 1), suite.make_batch_env(3, 2)
    try:
        assert whole.groups() == [(0, 3)] and len(grouped.groups()) == 2
        for env in (whole, grouped):
            env.set_tasks(tasks)
        assert np.array_equal(whole.reset([1, 2, 3]), grouped.reset([1, 2, 3]))
        for a in actions:
            ref = whole.step(a, active)
            for g, (lo, hi) in enumerate(grouped.groups()):
                grouped.step_async(g, a[lo:hi], active[lo:hi])
            parts = [grouped.step_wait(g) for g in range(2)]
            assert np.array_equal(ref.obs, np.concatenate([p.obs for p in parts]))
            assert np.array_equal(ref.reward, np.concatenate([p.reward for p in parts]))
    finally:
        whole.close()
        grouped.close()


def test_process_batch_env_split_gives_the_sampling_process_a_smaller_share():
    from benchmark.vec import ProcessBatchEnv

    split = ProcessBatchEnv.split
    assert split(20, 1) == [(0, 20)]
    assert split(20, 2) == [(0, 8), (8, 20)]  # 2/3 of the worker's share
    assert split(20, 3) == [(0, 5), (5, 12), (12, 20)]
    assert split(1, 2) == [(0, 1)]  # more processes than envs: fewer processes
    assert split(2, 2) == [(0, 1), (1, 2)]
    assert split(3, 8) == [(0, 1), (1, 2), (2, 3)]
    for n in range(1, 30):
        for w in range(1, 5):
            groups = split(n, w)
            assert groups[0][0] == 0 and groups[-1][1] == n and len(groups) == min(n, w)
            assert all(b > a for a, b in groups) and all(g[1] == h[0] for g, h in itertools.pairwise(groups))
