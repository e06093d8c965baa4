import itertools
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from algorithms.common.trial_inputs import PreviousStep, trial_features
from benchmark.sampler import TrialSampler, task_groups
from benchmark.suites.base import BatchEnv, StepResult, Suite
from benchmark.suites.point_nav import PointNav
from metarl_protocol import AdaptiveAgent, Task, Transition


class RecordingAgent(AdaptiveAgent):
    """Random actions; records the step inputs it would feed a memory network, and the call order."""

    def __init__(self, act_dim: int, seed: int = 0, family: list | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.act_dim = act_dim
        self.calls: list[str] = []
        self.features: list[np.ndarray] = []
        self.grad_modes: dict[str, set[tuple[bool, bool]]] = {}
        self.family = family if family is not None else []  # this agent and its clones, in order
        self.family.append(self)

    def clone(self):
        return RecordingAgent(self.act_dim, seed=len(self.family), family=self.family)

    def online_features(self) -> np.ndarray:
        """(B, T, in): every clone's step inputs, rows in batch order."""
        return np.concatenate([np.stack(a.features, axis=1) for a in self.family], axis=0)

    def _mode(self, call):
        mode = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        self.grad_modes.setdefault(call, set()).add(mode)

    def new_trial(self, task_keys):
        self._mode("new_trial")
        self.calls.append("new_trial")
        self.prev = PreviousStep(len(task_keys), self.act_dim)

    def act(self, obs):
        self._mode("act")
        self.features.append(self.prev.features(obs))
        a = self.rng.uniform(-1.3, 1.3, size=(len(obs), self.act_dim)).astype(np.float32)
        return a, {"value": np.full(len(obs), 7.0, np.float32)}

    def observe(self, tr: Transition):
        self._mode("observe")
        self.prev.update(tr)

    def end_episode(self):
        self._mode("end_episode")
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
    # two clones (groups of rows cut at task boundaries): each starts its trial and ends each episode
    assert len(agent.family) == 2
    for member in agent.family:
        assert member.calls == ["new_trial", "end_episode", "end_episode", "end_episode"]
    # act / observe under no_grad but never inference_mode (tensors they keep can enter a gradient step
    # later); new_trial / end_episode with gradients enabled (MAML's inner step)
    assert (
        agent.grad_modes
        == agent.family[1].grad_modes
        == {
            "new_trial": {(True, False)},
            "act": {(False, False)},
            "observe": {(False, False)},
            "end_episode": {(True, False)},
        }
    )
    # episode boundaries: obs reset to the origin at the start of every episode
    assert np.allclose(batch.obs[:, [0, 100, 200]], 0)
    assert batch.episode_done[:, [99, 199, 299]].all() and batch.episode_done.sum() == 15
    assert np.abs(batch.env_actions).max() <= 1.0 < np.abs(batch.actions).max()
    assert batch.env_steps == 1500 and batch.episode_returns().shape == (5, 3)


def test_previous_step_inputs_agree_between_acting_and_training():
    suite = PointNav()
    agent = RecordingAgent(2)
    batch = TrialSampler(suite).run(agent, suite.tasks("train")[:4], episodes=2, seed=3)
    online = agent.online_features()  # (B, T, in)
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
    online = agent.online_features()
    assert np.allclose(online, trial_features(batch).numpy())


class PipelinedFallingEnv(FallingEnv):
    """FallingEnv stepped by row ranges in the background (as worker processes would), out of lock-step.

    Each row keeps its own clock, so a row stepped twice or skipped shows up in the observations.
    """

    pipelined = True

    def reset(self, seeds):
        self.tr = np.zeros(self.num_envs, int)
        self.pending = []
        return super().reset(seeds)

    def step_async(self, rows, actions, active):
        assert rows not in [r for r, *_ in self.pending], "rows stepped twice without step_wait"
        a, b = rows
        assert actions.shape == (b - a, 1) and active.shape == (b - a,)
        self.pending.append((rows, actions.copy(), active.copy()))

    def step_wait(self, rows):
        got, _actions, active = self.pending.pop(0)
        assert got == rows, "step_wait must collect row ranges in the order they were sent"
        a, b = rows
        self.tr[a:b] += active
        t = self.tr[a:b]
        term = np.array([t[i - a] >= 2 + i for i in range(a, b)])
        return StepResult(
            t[:, None].astype(np.float32), np.ones(b - a, np.float32), term, np.zeros(b - a, bool)
        )


class MemoryAgent(AdaptiveAgent):
    """Deterministic actions from the step input (obs, a_{t-1}, r_{t-1}, done_{t-1}) and a running sum."""

    def new_trial(self, task_keys):
        n = len(task_keys)
        self.prev, self.total = PreviousStep(n, 1), np.zeros(n, np.float32)

    def act(self, obs):
        x = self.prev.features(obs)
        self.total = self.total + x.sum(1)  # rebinds: clones never share it
        return np.tanh(0.1 * self.total)[:, None].astype(np.float32), {"total": self.total.copy()}

    def observe(self, tr):
        self.prev.update(tr)


def test_pipelined_groups_record_the_same_trials_as_lock_step():
    class PipelinedSuite(FallingSuite):
        def make_batch_env(self, num_envs, num_workers=1):
            return PipelinedFallingEnv(num_envs)

    tasks = FallingSuite().tasks("train")
    lock = TrialSampler(FallingSuite()).run(MemoryAgent(), tasks, episodes=2, seed=0)
    piped = TrialSampler(PipelinedSuite()).run(MemoryAgent(), tasks, episodes=2, seed=0)
    fields = ("obs", "actions", "env_actions", "rewards", "next_obs", "terminated", "episode_done", "valid")
    for name in fields:
        assert np.array_equal(getattr(lock, name), getattr(piped, name)), name
    assert np.array_equal(lock.extras["total"], piped.extras["total"])
    assert len(np.unique(lock.actions[:, 3])) == 3  # the agents' memories really differ per row


class InPlaceAgent(RecordingAgent):
    """Scales what it is shown in place: a reward in observe, or the observation in act."""

    def __init__(self, act_dim, where):
        super().__init__(act_dim)
        self.where = where

    def clone(self):
        return InPlaceAgent(self.act_dim, self.where)

    def act(self, obs):
        if self.where == "obs":
            obs *= 0.5
        return super().act(obs)

    def observe(self, tr):
        if self.where == "reward":
            tr.reward *= 0.01
        elif self.where == "next_obs":
            torch.as_tensor(tr.next_obs).zero_()  # shares the array's memory
        super().observe(tr)


@pytest.mark.parametrize("where", ["obs", "reward", "next_obs"])
def test_an_agent_cannot_change_what_the_sampler_records(where):
    """The agent gets copies: writing into what it is shown (a reward scaled in place in observe, or a
    tensor over it changed) leaves the recorded and scored trial as it was. Before, ``observe`` got views
    of the record, and a reward scaled in place rewrote the returns the evaluator reported."""
    suite = PointNav()
    tasks = suite.tasks("train")[:3]
    clean = TrialSampler(suite).run(InPlaceAgent(2, None), tasks, episodes=2, seed=0)
    dirty = TrialSampler(suite).run(InPlaceAgent(2, where), tasks, episodes=2, seed=0)
    for name in ("obs", "rewards", "next_obs", "actions"):
        assert np.array_equal(getattr(clean, name), getattr(dirty, name)), name
    assert (clean.rewards < 0).all()


def test_task_groups_never_split_a_task_and_ignore_the_process_layout():
    assert task_groups(np.array([5, 5, 5, 7, 7, 7])) == [(0, 3), (3, 6)]
    assert task_groups(np.array([1, 2, 3, 4, 5])) == [(0, 2), (2, 5)]  # nearest valid cut to the middle
    assert task_groups(np.array([1, 1, 1, 1, 2])) == [(0, 4), (4, 5)]
    assert task_groups(np.array([1, 2, 1])) == [(0, 3)]  # key 1 on both sides of every cut: one group
    assert task_groups(np.array([3])) == [(0, 1)]
    rng = np.random.default_rng(0)
    for _ in range(200):
        keys = np.sort(rng.integers(0, 6, size=rng.integers(1, 20)))
        groups = task_groups(keys)
        assert groups[0][0] == 0 and groups[-1][1] == len(keys) and len(groups) <= 2
        for (_, b), (c, _) in itertools.pairwise(groups):
            assert b == c and keys[b - 1] != keys[c]


class KeyAgent(MemoryAgent):
    """Records the task keys each clone receives."""

    seen: list[np.ndarray] = []

    def new_trial(self, task_keys):
        KeyAgent.seen.append(np.asarray(task_keys).copy())
        super().new_trial(task_keys)


def test_new_trial_receives_task_keys_and_a_task_stays_in_one_clone():
    suite = FallingSuite()
    t = [Task(i, "train", {}, f"t{i}") for i in range(10)]
    KeyAgent.seen = []
    batch = TrialSampler(suite).run(KeyAgent(), [t[4], t[4], t[4], t[9], t[9]], episodes=1, seed=0)
    assert [k.tolist() for k in KeyAgent.seen] == [[4, 4, 4], [9, 9]]
    assert batch.task_keys.tolist() == [4, 4, 4, 9, 9]
    KeyAgent.seen = []
    TrialSampler(suite).run(KeyAgent(), t[:2], episodes=1, seed=0, task_keys=[-1, -2])
    assert [k.tolist() for k in KeyAgent.seen] == [[-1], [-2]]


def test_process_batch_env_row_ranges_step_like_the_whole_batch():
    from benchmark.suites.locomotion import HalfCheetahVel

    suite = HalfCheetahVel()
    tasks = suite.tasks("train")[:5]
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 5, suite.act_dim)).astype(np.float32)
    active = np.ones(5, bool)
    whole, split = suite.make_batch_env(5, 1), suite.make_batch_env(5, 3)
    try:
        for env in (whole, split):
            env.set_tasks(tasks)
        assert np.array_equal(whole.reset([1, 2, 3, 4, 5]), split.reset([1, 2, 3, 4, 5]))
        for a in actions:
            ref = whole.step(a, active)
            # row ranges that straddle the processes' slices, two outstanding at once
            for rows in ((0, 3), (3, 5)):
                split.step_async(rows, a[rows[0] : rows[1]], active[rows[0] : rows[1]])
            parts = [split.step_wait(rows) for rows in ((0, 3), (3, 5))]
            assert np.array_equal(ref.obs, np.concatenate([p.obs for p in parts]))
            assert np.array_equal(ref.reward, np.concatenate([p.reward for p in parts]))
    finally:
        whole.close()
        split.close()


def test_process_batch_env_split_gives_the_sampling_process_a_smaller_share():
    from benchmark.vec import ProcessBatchEnv

    split = ProcessBatchEnv.split
    assert split(20, 1) == [(0, 20)]
    assert split(20, 2) == [(0, 8), (8, 20)]  # 2/3 of the worker's share
    assert split(20, 3) == [(0, 5), (5, 12), (12, 20)]
    assert split(1, 2) == [(0, 1)]  # more processes than envs: fewer processes
    assert split(2, 2) == [(0, 1), (1, 2)]
    assert split(3, 8) == [(0, 1), (1, 2), (2, 3)]
    assert split(20, 2, here=0) == [(0, 0), (0, 20)]  # a rebalanced split may leave this process no rows
    assert split(20, 3, here=4) == [(0, 4), (4, 12), (12, 20)]
    assert split(5, 3, here=9) == [(0, 3), (3, 4), (4, 5)]  # every worker keeps at least one env
    assert split(5, 1, here=2) == [(0, 5)] and split(1, 3, here=0) == [(0, 1)]  # no worker: every row here
    for n in range(1, 30):
        for w in range(1, 5):
            groups = split(n, w)
            assert groups[0][0] == 0 and groups[-1][1] == n and len(groups) == min(n, w)
            assert all(b > a for a, b in groups) and all(g[1] == h[0] for g, h in itertools.pairwise(groups))


def test_process_batch_env_rows_moving_between_processes_record_the_same_episodes():
    """Re-splits at every reset (this process keeps no rows, all but one, some), over two trials with
    different tasks: the same observations and rewards as stepping every env in one process."""
    from benchmark.suites.base import scale_actions
    from benchmark.suites.locomotion import HalfCheetahVel

    suite = HalfCheetahVel()
    tasks = suite.tasks("train")
    rng = np.random.default_rng(0)
    split = suite.make_batch_env(5, 2)
    layouts = iter([0, 4, 2, 4, 1])
    try:
        for trial in (tasks[:5], tasks[5:10]):
            split.set_tasks(trial)
            for _episode in range(2):
                seeds = rng.integers(0, 2**31 - 1, size=5)
                here = next(layouts)
                # the reference: a fresh task env per row, built for this episode's task
                refs = [suite.make_env(task) for task in trial]
                ref_obs = np.stack(
                    [env.reset(seed=int(seed))[0] for env, seed in zip(refs, seeds, strict=True)]
                )
                assert np.array_equal(split.reset(seeds, local_rows=here), ref_obs.astype(np.float32))
                assert split.local_rows == here and sorted(split._here.envs) == list(range(here))
                active = np.ones(5, bool)
                for _ in range(4):
                    a = rng.uniform(-1, 1, (5, suite.act_dim)).astype(np.float32)
                    got = split.step(a, active)
                    space = refs[0].action_space
                    scaled = scale_actions(a.astype(np.float64), space.low, space.high)
                    out = [env.step(x) for env, x in zip(refs, scaled, strict=True)]
                    assert np.array_equal(got.obs, np.stack([o[0] for o in out]).astype(np.float32))
                    assert np.array_equal(got.reward, np.array([o[1] for o in out], np.float32))
    finally:
        split.close()


def test_process_batch_env_balances_the_policy_against_the_physics():
    """The split minimises the predicted batch step max(n t + P, ceil((B - n) / r) t + O)."""
    from benchmark.suites.locomotion import HalfCheetahVel

    def measured(env, policy_s, physics_s, here, steps=40, worker_s=0.0, here_physics_s=None):
        """Fill the statistics as ``steps`` measured batch steps would: P = ``policy_s``, O = ``worker_s``."""
        B, r = env.num_envs, len(env._conns)
        env._clear_stats()
        env._steps = steps
        env._here_rows, env._worker_rows = steps * here, steps * (B - here)
        here_physics_s = physics_s if here_physics_s is None else here_physics_s
        env._here_busy, env._wait = steps * here * here_physics_s, steps * 1e-4
        env._worker_busy = steps * (B - here) * physics_s
        env._cycle = steps * policy_s + env._here_busy + env._wait
        env._worker_idle = r * (env._cycle - steps * worker_s) - env._worker_busy  # each worker's O
        return env.balanced_rows()

    env = HalfCheetahVel().make_batch_env(20, 2)
    try:
        assert env.balanced_rows() is None  # nothing measured yet
        assert measured(env, 500e-6, 50e-6, here=8) == 5  # max(50 n + 500, 50 (20 - n)): n = 5
        assert env.step_time(5) == pytest.approx(750e-6) and env.step_time(8) == pytest.approx(900e-6)
        assert measured(env, 0.0, 50e-6, here=3) == 10  # no policy: half each
        assert measured(env, 2e-3, 50e-6, here=8) == 0  # the policy alone outweighs the worker's batch
        assert measured(env, 500e-6, 50e-6, here=8, worker_s=200e-6) == 7  # the pipes cost the worker too
        # half the ants here fell this episode: t pooled over both sides, (8 * 25 + 12 * 50) / 20 = 40 us
        # per row, gives max(40 n + 500, 40 (20 - n)): n = 4 (per side it would be 7)
        assert measured(env, 500e-6, 50e-6, here=8, here_physics_s=25e-6) == 4
        assert measured(env, 500e-6, 50e-6, here=8, steps=5) is None  # too few steps to judge
        # the split follows at the next reset (after the warm-up episode)
        env.set_tasks(HalfCheetahVel().tasks("train")[:20])
        env._warm = True
        measured(env, 500e-6, 50e-6, here=8)
        env.reset(list(range(20)))
        assert env.local_rows == 5 and env._slices == [(0, 5), (5, 20)]
        # one row moves when it saves >= REBALANCE_GAIN: Meta-World-like steps (0.45 ms), P = 1.1 ms;
        # n = 9 (max(5.15, 4.95) ms) against 8 (max(4.7, 5.4) ms) saves 4.6%
        env.reset(list(range(20)), local_rows=8)
        env._warm = True
        assert measured(env, 1.1e-3, 450e-6, here=8) == 9
        env.reset(list(range(20)))
        assert env.local_rows == 9
        # ... and stays when the best split saves less (P = 0.4 ms: 10 rows save 1% against 9)
        assert measured(env, 0.4e-3, 450e-6, here=9) == 10
        env.reset(list(range(20)))
        assert env.local_rows == 9
    finally:
        env.close()
    env = HalfCheetahVel().make_batch_env(20, 3)  # two workers: r = 2
    try:
        assert measured(env, 200e-6, 50e-6, here=5) == 4  # max(50 n + 200, 50 ceil((20 - n) / 2))
        # whole rows per worker: 5 here leave one worker 8 (max(370, 400)), no better than 4 (max(320, 400))
        assert measured(env, 120e-6, 50e-6, here=5) == 4
        assert env.step_time(5) == pytest.approx(400e-6)
        # O is each worker's own (the summed waiting is shared out): max(50 n + 120, 50 ceil(...) + 100)
        assert measured(env, 120e-6, 50e-6, here=5, worker_s=100e-6) == 6
    finally:
        env.close()


class SleepEnv(gym.Env):
    """A task env whose step takes a known wall time, for the load-balance measurements."""

    STEP_S = 1e-3
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def set_task(self, task):
        pass

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        time.sleep(self.STEP_S)
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_process_batch_env_measures_the_policy_and_the_physics_from_real_steps():
    """Two halves stepped like the sampler's groups, 1 ms of "policy" before each, 1 ms per env step:
    the measured times, and the split they give (max(n t + 2 t, (6 - n) t): n = 2), come out of real steps."""
    from benchmark.vec import ProcessBatchEnv

    env = ProcessBatchEnv(SleepEnv, 6, 2)
    try:
        env.set_tasks([Task(i, "train", {}, f"t{i}") for i in range(6)])
        active = np.ones(3, bool)
        for episode in range(2):
            env.reset(list(range(6)))  # the first episode is warm-up: its times are dropped
            assert env._steps == 0 and env.local_rows == 2  # no change yet (LOCAL_WEIGHT's first split)
            for _ in range(30):
                for rows in ((0, 3), (3, 6)):
                    time.sleep(1e-3)  # the policy call for these rows
                    env.step_async(rows, np.zeros((3, 1), np.float32), active)
                    env.step_wait(rows)
            assert env._warm == (episode == 1)
        assert env._steps == pytest.approx(29.5)  # every half-step counts half a batch step (the first not)
        t = (env._here_busy + env._worker_busy) / (env._here_rows + env._worker_rows)
        other = (env._cycle - env._here_busy - env._wait) / env._steps
        # the env steps sleep 1 ms, the policy 2 x 1 ms per batch step (sleeps overshoot alike under load)
        assert 1e-3 <= t < 2e-3 and 1.5 * t <= other < 3 * t, (t, other)
        # each side's physics, and the worker's time outside physics and waiting (pipes: well under a step)
        t_worker = env._worker_busy / env._worker_rows
        # rows 0-1 here, 2-5 in the worker; the first half-step (rows 0-2) is not measured
        assert (env._here_rows, env._worker_rows) == (29 * 2, 29 * 1 + 30 * 3)
        assert 1e-3 <= t_worker < 2e-3 and env._here_busy / env._here_rows >= 1e-3
        worker_other = env._cycle / env._steps - (env._worker_busy + env._worker_idle) / env._steps
        assert -0.5 * t < worker_other < 2 * t, (worker_other, t)  # (upper bound: a loaded machine)
        # max(n t + 2 t, (6 - n) t): n = 2 balances the two processes
        assert env.balanced_rows() in (1, 2)
    finally:
        env.close()


def test_process_batch_env_leaves_the_pause_after_reset_out_of_the_workers_times():
    """A worker holding no row of the first group replies first in the second: the time it waited for that
    command spans the episode's start (reset, policy calls), which is no step's overhead."""
    from benchmark.vec import ProcessBatchEnv

    env = ProcessBatchEnv(SleepEnv, 6, 2)
    try:
        env.set_tasks([Task(i, "train", {}, f"t{i}") for i in range(6)])
        env.reset(list(range(6)), local_rows=3)  # rows 0-2 here, 3-5 in the worker: groups (0, 3), (3, 6)
        time.sleep(0.1)  # a slow start of the episode: ~4 ms per measured step if it were counted
        for _ in range(25):
            for rows in ((0, 3), (3, 6)):
                env.step_async(rows, np.zeros((3, 1), np.float32), np.ones(3, bool))
                env.step_wait(rows)
        assert env._worker_rows == 24 * 3  # the worker's first reply is not measured
        t = env._worker_busy / env._worker_rows
        worker_other = env._cycle / env._steps - (env._worker_busy + env._worker_idle) / env._steps
        assert worker_other > -t, (worker_other, t)  # the pause counted would give about -3.4 t
    finally:
        env.close()


def test_process_batch_env_counts_terminated_rows_in_the_physics_per_row():
    """A row that terminated costs nothing until the next reset, and moving it moves that saving too: the
    per-row physics time the split is predicted from divides by the rows each side holds, live or not."""
    from benchmark.vec import ProcessBatchEnv

    env = ProcessBatchEnv(SleepEnv, 6, 2)
    try:
        env.set_tasks([Task(i, "train", {}, f"t{i}") for i in range(6)])
        env.reset(list(range(6)))
        assert env.local_rows == 2  # rows 0-1 here, 2-5 in the worker
        active = np.array([True, False, True, True, False, False])  # half of each side's rows live
        for _ in range(25):
            env.step(np.zeros((6, 1), np.float32), active)
        assert (env._here_rows, env._worker_rows) == (24 * 2, 24 * 4)
        here, worker = env._here_busy / env._here_rows, env._worker_busy / env._worker_rows
        # 1 ms per live step, half the rows live: about 0.5 ms per row on each side (sleeps overshoot)
        assert 0.5e-3 <= here < 0.9e-3 and 0.5e-3 <= worker < 0.9e-3, (here, worker)
    finally:
        env.close()
