"""Locomotion suites: env API, splits, rewards recomputed from the MuJoCo state, terminations, workers."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from benchmark.suites.base import Task
from benchmark.suites.locomotion import (
    AntDir,
    AntFwdBack,
    AntGoal,
    HalfCheetahDir,
    HalfCheetahVel,
    HumanoidDir,
    LocomotionSuite,
    LocomotionTaskEnv,
)

SUITES = [HalfCheetahVel, HalfCheetahDir, AntDir, AntFwdBack, AntGoal, HumanoidDir]
TWO_TASK = {HalfCheetahDir: ("direction", {1.0, -1.0}), AntFwdBack: ("theta", {0.0, float(np.pi)})}
SPLIT_SIZES = {"train": 100, "test": 20, "ood": 20}


def _task(**params: float) -> Task:
    return Task(0, "test", dict(params), "hand-made")


def _rollout(env: LocomotionTaskEnv, steps: int, seed: int = 0):
    """Yield (state before, action, reward, terminated, state after) for random in-bounds actions."""
    sim = env.unwrapped
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    for _ in range(steps):
        before = {"qpos": sim.data.qpos.copy(), "xipos": sim.data.xipos.copy()}
        action = rng.uniform(env.action_space.low, env.action_space.high)
        _, reward, terminated, truncated, _ = env.step(action)
        assert truncated is False
        after = {
            "qpos": sim.data.qpos.copy(),
            "xipos": sim.data.xipos.copy(),
            "ctrl": sim.data.ctrl.copy(),
            "cfrc_ext": sim.data.cfrc_ext.copy(),
        }
        yield before, action, reward, terminated, after
        if terminated:
            return


def _dt(env: LocomotionTaskEnv) -> float:
    sim = env.unwrapped
    return sim.model.opt.timestep * sim.frame_skip


# -- API ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite_cls", SUITES, ids=lambda c: c.name)
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")  # the task env is a Wrapper
@pytest.mark.filterwarnings("ignore:.*observation space m[a-z]+ value is -?infinity")  # as gymnasium's own
def test_task_env_passes_env_checker(suite_cls: type[LocomotionSuite]) -> None:
    suite = suite_cls()
    env = suite.make_env(suite.tasks("test")[1])
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (suite.obs_dim,)
    assert env.action_space.shape == (suite.act_dim,)
    env.close()


@pytest.mark.parametrize("suite_cls", SUITES, ids=lambda c: c.name)
def test_protocol_constants_and_entry_point(suite_cls: type[LocomotionSuite]) -> None:
    suite = suite_cls()
    assert (suite.family, suite.horizon, suite.episodes_per_trial) == ("locomotion", 200, 2)
    assert suite.eval_episodes == 6 and suite.headline_episodes() == [5]
    assert suite.has_success is False and suite.task_seed == 1337
    (ep,) = [e for e in entry_points(group="metarl_bench.suites") if e.name == suite.name]
    assert ep.load() is suite_cls


# -- splits -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite_cls", SUITES, ids=lambda c: c.name)
def test_splits_deterministic_serialisable_and_disjoint(suite_cls: type[LocomotionSuite]) -> None:
    a, b = suite_cls(), suite_cls()
    expected = ("train", "test", "ood") if suite_cls in (HalfCheetahVel, AntGoal) else ("train", "test")
    assert a.splits() == expected
    keyed = {}
    for split in a.splits():
        tasks = a.tasks(split)
        assert tasks == b.tasks(split)  # same construction, same tasks
        assert [t.task_id for t in tasks] == list(range(SPLIT_SIZES[split]))
        assert all(t.split == split and t.description for t in tasks)
        for t in tasks:
            assert all(type(v) is float for v in t.params.values())
            assert json.loads(json.dumps(t.params)) == t.params
        keyed[split] = [tuple(sorted(t.params.items())) for t in tasks]
    # drawing one split alone gives the same tasks as drawing them all in order
    assert suite_cls().tasks(a.splits()[-1]) == a.tasks(a.splits()[-1])

    if suite_cls in TWO_TASK:  # only two tasks exist: both splits hold both, balanced
        key, values = TWO_TASK[suite_cls]
        for split in a.splits():
            got = [t.params[key] for t in a.tasks(split)]
            assert set(got) == values and got.count(min(values)) == got.count(max(values))
        return
    for split in a.splits():
        assert len(set(keyed[split])) == len(keyed[split])
    for i, s1 in enumerate(a.splits()):
        for s2 in a.splits()[i + 1 :]:
            assert not set(keyed[s1]) & set(keyed[s2]), (s1, s2)


def test_split_ranges() -> None:
    cheetah = HalfCheetahVel()
    for split in ("train", "test"):
        v = np.array([t.params["v_goal"] for t in cheetah.tasks(split)])
        assert v.min() >= 0.0 and v.max() < 3.0
    ood = np.array([t.params["v_goal"] for t in cheetah.tasks("ood")])
    assert ood.min() >= 3.0 and ood.max() < 4.0

    ant_goal = AntGoal()
    for split in ("train", "test"):
        g = np.array([[t.params["goal_x"], t.params["goal_y"]] for t in ant_goal.tasks(split)])
        assert np.linalg.norm(g, axis=1).max() < 3.0
    g = np.array([[t.params["goal_x"], t.params["goal_y"]] for t in ant_goal.tasks("ood")])
    r = np.linalg.norm(g, axis=1)
    assert r.min() > 3.0 and r.max() <= 4.0 + 1e-12
    # the train goals cover the disc uniformly in area: about a quarter inside radius 1.5
    train = np.array([[t.params["goal_x"], t.params["goal_y"]] for t in ant_goal.tasks("train")])
    assert 0.1 < np.mean(np.linalg.norm(train, axis=1) < 1.5) < 0.4

    for suite in (AntDir(), HumanoidDir()):
        theta = np.array([t.params["theta"] for s in suite.splits() for t in suite.tasks(s)])
        assert theta.min() >= 0.0 and theta.max() < 2 * np.pi
    assert HalfCheetahVel().tasks("test")[0].description.startswith("v_goal=")


# -- rewards from the MuJoCo state --------------------------------------------------------------------
@pytest.mark.parametrize("v_goal", [0.0, 1.7])
def test_halfcheetah_vel_reward(v_goal: float) -> None:
    env = HalfCheetahVel().make_env(_task(v_goal=v_goal))
    assert _dt(env) == pytest.approx(0.05)
    for before, a, reward, terminated, after in _rollout(env, 30):
        v_x = (after["qpos"][0] - before["qpos"][0]) / _dt(env)
        assert reward == pytest.approx(-abs(v_x - v_goal) - 0.05 * np.sum(a**2), rel=1e-9, abs=1e-9)
        assert terminated is False


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_halfcheetah_dir_reward(direction: float) -> None:
    env = HalfCheetahDir().make_env(_task(direction=direction))
    for before, a, reward, terminated, after in _rollout(env, 30):
        v_x = (after["qpos"][0] - before["qpos"][0]) / _dt(env)
        assert reward == pytest.approx(direction * v_x - 0.05 * np.sum(a**2), rel=1e-9, abs=1e-9)
        assert terminated is False


def _ant_contact(cfrc_ext: np.ndarray) -> float:
    return 5e-4 * float(np.sum(np.clip(cfrc_ext, -1.0, 1.0) ** 2))


@pytest.mark.parametrize(("suite_cls", "theta"), [(AntDir, 2.1), (AntFwdBack, 0.0), (AntFwdBack, np.pi)])
def test_ant_dir_reward(suite_cls: type[LocomotionSuite], theta: float) -> None:
    env = suite_cls().make_env(_task(theta=theta))
    contacts = []
    for before, a, reward, terminated, after in _rollout(env, 40):
        v_xy = (after["qpos"][:2] - before["qpos"][:2]) / _dt(env)
        contact = _ant_contact(after["cfrc_ext"])
        contacts.append(contact)
        healthy = 0.2 <= after["qpos"][2] <= 1.0
        expected = v_xy @ [np.cos(theta), np.sin(theta)] - 0.5 * np.sum(a**2) - contact + 1.0 * healthy
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert terminated == (not healthy)
    assert max(contacts) > 0.0  # the contact term was exercised


def test_ant_goal_reward_and_observation_holds_position() -> None:
    goal = (1.5, -2.0)
    env = AntGoal().make_env(_task(goal_x=goal[0], goal_y=goal[1]))
    contacts = []
    for _before, a, reward, terminated, after in _rollout(env, 40):
        contact = _ant_contact(after["cfrc_ext"])
        contacts.append(contact)
        expected = -np.sum(np.abs(after["qpos"][:2] - goal)) - 0.1 * np.sum(a**2) - contact
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert terminated is False
    assert max(contacts) > 0.0
    obs, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs[:2], env.unwrapped.data.qpos[:2])


def test_humanoid_dir_reward() -> None:
    theta = 4.0
    env = HumanoidDir().make_env(_task(theta=theta))
    mass = env.unwrapped.model.body_mass
    assert _dt(env) == pytest.approx(0.015)
    impacts = []
    steps = 0
    for before, a, reward, terminated, after in _rollout(env, 60):
        com = [(mass @ s["xipos"][:, :2]) / mass.sum() for s in (before, after)]
        v_xy = (com[1] - com[0]) / _dt(env)
        np.testing.assert_array_equal(after["ctrl"], a)
        impact = min(5e-7 * np.sum(after["cfrc_ext"] ** 2), 10.0)
        impacts.append(impact)
        healthy = 1.0 <= after["qpos"][2] <= 2.0
        expected = 1.25 * v_xy @ [np.cos(theta), np.sin(theta)] + 5.0 * healthy - 0.1 * np.sum(a**2) - impact
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert terminated == (not healthy)
        steps += 1
    assert steps > 5 and max(impacts) > 0.0


# -- terminations -------------------------------------------------------------------------------------
def _step_from(env: LocomotionTaskEnv, z: float, vz: float = 0.0) -> tuple[bool, float, dict]:
    """Reset, put the torso at height z with vertical speed vz, step once with zero action."""
    sim = env.unwrapped
    env.reset(seed=0)
    qpos, qvel = sim.init_qpos.copy(), np.zeros(sim.model.nv)
    qpos[2], qvel[2] = z, vz
    sim.set_state(qpos, qvel)
    _, _, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert truncated is False
    return terminated, float(sim.data.qpos[2]), info


@pytest.mark.parametrize("suite_cls", [AntDir, AntFwdBack])
def test_ant_dir_terminates_outside_healthy_z(suite_cls: type[LocomotionSuite]) -> None:
    env = suite_cls().make_env(suite_cls().tasks("test")[0])
    terminated, z, info = _step_from(env, 1.5)  # lifted above the range
    assert z > 1.0 and terminated and info["reward_survive"] == 0.0  # no alive bonus for falling
    terminated, z, _ = _step_from(env, 0.21, vz=-100.0)  # driven through the floor
    assert z < 0.2 and terminated
    terminated, z, info = _step_from(env, 0.6)
    assert 0.2 <= z <= 1.0 and not terminated and info["reward_survive"] == 1.0


def test_ant_goal_and_halfcheetah_never_terminate() -> None:
    env = AntGoal().make_env(AntGoal().tasks("test")[0])
    assert _step_from(env, 1.5)[0] is False
    assert _step_from(env, 0.21, vz=-100.0)[0] is False
    cheetah = HalfCheetahVel().make_env(HalfCheetahVel().tasks("test")[0])
    cheetah.reset(seed=0)
    sim = cheetah.unwrapped
    qpos = sim.init_qpos.copy()
    qpos[2] = np.pi  # flipped on its back
    sim.set_state(qpos, np.zeros(sim.model.nv))
    assert cheetah.step(np.zeros(6))[2] is False


def test_humanoid_terminates_outside_healthy_z() -> None:
    env = HumanoidDir().make_env(HumanoidDir().tasks("test")[0])
    terminated, z, info = _step_from(env, 2.5)
    assert z > 2.0 and terminated and info["reward_survive"] == 0.0
    # with zero torques it collapses: the episode ends at the first step whose torso z is below 1
    sim = env.unwrapped
    env.reset(seed=0)
    for _ in range(200):
        _, _, terminated, _, _ = env.step(np.zeros(env.action_space.shape))
        assert terminated == (not 1.0 <= sim.data.qpos[2] <= 2.0)
        if terminated:
            break
    assert terminated and sim.data.qpos[2] < 1.0


# -- batch env ----------------------------------------------------------------------------------------
def _batch_rollout(num_workers: int, tasks: list[Task], steps: int = 25) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    actions = rng.uniform(-1.0, 1.0, size=(2, steps, len(tasks), 6))
    obs, rew = [], []
    with HalfCheetahVel().make_batch_env(len(tasks), num_workers) as env:
        assert (env.obs_dim, env.act_dim) == (17, 6)
        env.set_tasks(tasks)
        for episode in range(2):
            obs.append(env.reset([10 * episode + i for i in range(len(tasks))]))
            active = np.ones(len(tasks), bool)
            for t in range(steps):
                res = env.step(actions[episode, t], active)
                obs.append(res.obs)
                rew.append(res.reward)
                assert not res.terminated.any() and not res.success.any()
    return np.stack(obs), np.stack(rew)


def test_process_batch_env_workers_match_in_process() -> None:
    tasks = HalfCheetahVel().tasks("test")[:4]
    obs1, rew1 = _batch_rollout(1, tasks)
    obs2, rew2 = _batch_rollout(2, tasks)
    np.testing.assert_array_equal(obs1, obs2)
    np.testing.assert_array_equal(rew1, rew2)
    assert obs1.dtype == np.float32 and rew1.dtype == np.float32
    # and they are the task envs' own rewards: one env stepped by hand agrees on task 2
    env = HalfCheetahVel().make_env(tasks[2])
    env.reset(seed=2)
    actions = np.random.default_rng(7).uniform(-1.0, 1.0, size=(2, 25, 4, 6))
    for t in range(25):
        _, r, *_ = env.step(actions[0, t, 2])
        assert rew1[t, 2] == np.float32(r)


# -- references ---------------------------------------------------------------------------------------
def test_reference_returns() -> None:
    ref = HalfCheetahVel().reference_returns()
    assert ref is not None and "pomdp-baselines" in ref.source
    assert (ref.random, ref.oracle) == pytest.approx((-646.3391 / 2, -79.692 / 2))
    # a return of -200 per episode, by hand: (-200 + 323.16955) / (-39.846 + 323.16955) = 0.4347311
    assert ref.normalise(-200.0) == pytest.approx(0.4347311, abs=1e-6)
    for suite_cls in (HalfCheetahDir, AntDir, AntFwdBack, AntGoal, HumanoidDir):
        assert suite_cls().reference_returns() is None  # no published oracle for these definitions


def test_halfcheetah_rewards_agree_with_gymnasiums_own_velocity_and_control_cost() -> None:
    """Checked against the simulator's quantities, not the formula re-typed: gymnasium's HalfCheetah-v5,
    stepped from the same state with the same actions, reports ``info["x_velocity"]`` and
    ``info["reward_ctrl"]`` (= -0.1 ||a||^2)."""
    import gymnasium as gym

    v_goal, direction = 1.3, -1.0
    vel = HalfCheetahVel().make_env(_task(v_goal=v_goal))
    dirn = HalfCheetahDir().make_env(_task(direction=direction))
    ref = gym.make("HalfCheetah-v5").unwrapped
    rng = np.random.default_rng(0)
    for env in (vel, dirn):
        env.reset(seed=3)
    ref.reset(seed=3)
    assert np.array_equal(vel.unwrapped.data.qpos, ref.data.qpos)
    for _ in range(40):
        a = rng.uniform(-1, 1, 6)
        _, r_vel, *_ = vel.step(a)
        _, r_dir, *_ = dirn.step(a)
        _, _, _, _, info = ref.step(a)
        ctrl = -info["reward_ctrl"] / 0.1  # ||a||^2 as gymnasium computed it
        assert r_vel == pytest.approx(-abs(info["x_velocity"] - v_goal) - 0.05 * ctrl, abs=1e-9)
        assert r_dir == pytest.approx(direction * info["x_velocity"] - 0.05 * ctrl, abs=1e-9)
