"""Locomotion suites on the gymnasium MuJoCo v5 models: HalfCheetah, Ant and Humanoid.

Every suite is one task distribution of the README ("Task suites"), with horizon 200, training trials
of 2 episodes, 6-episode evaluation trials and no success notion. Splits are drawn from one generator
seeded with ``task_seed`` (1337) in a fixed order (train, test, then ood), so every split is
deterministic and the continuous suites' splits never share a task.

How a task env works: a gymnasium ``Wrapper`` around the gymnasium v5 environment built directly from
its class (no ``TimeLimit``, no order-enforcing wrapper). The inner env supplies the physics, the reset
noise and the observation; its own reward and termination are discarded and the suite's are computed
here from the MuJoCo state:

- velocities are finite differences over ``dt = frame_skip * timestep`` of a position read before and
  after the step: the root joint position ``qpos[0]`` (HalfCheetah) or ``qpos[0:2]`` (Ant torso), as
  gymnasium's HalfCheetah and the meta-RL code bases do; for the Humanoid the centre of mass of
  ``data.xipos`` weighted by ``model.body_mass``, as gymnasium's Humanoid and VariBAD's humanoid-dir do;
- the alive bonus (+1 ant-dir / ant-fwd-back, +5 humanoid-dir) is paid on the steps that end healthy,
  so not on the step that terminates the episode, as gymnasium v5 does (the PEARL / VariBAD code also
  paid it on that last step: a difference of one bonus per fallen episode);
- termination only where the task definition names one (ant-dir, ant-fwd-back: torso z outside [0.2, 1.0];
  humanoid-dir: torso z outside [1, 2]); the env never truncates: the sampler enforces the horizon
  and never steps an env after its termination.

``qpos`` is the state after the step; body positions (``xpos``, ``xipos``) come from the kinematics of
the last MuJoCo sub-step and lag it by one sub-step (gymnasium's v5 notes): the Humanoid's
centre-of-mass velocity shares that lag with gymnasium and VariBAD, the Ant and HalfCheetah ones don't.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv

from benchmark.suites.base import BatchEnv, ReferenceReturns, Suite, Task
from benchmark.vec import ProcessBatchEnv

TWO_PI = 2.0 * np.pi
ANT_CONTACT_COST = 5e-4  # times sum(clip(cfrc_ext, -1, 1)^2), as gymnasium Ant-v5 and PEARL's ant


# ==================================================================================================
# Task envs
# ==================================================================================================
class LocomotionTaskEnv(gym.Wrapper):
    """A gymnasium v5 MuJoCo env whose reward and termination are the suite's, set by ``set_task``.

    Subclasses give the inner env (``_build``), the tracked position (``_position``), the task
    (``set_task``) and the reward (``_reward``); ``healthy_z`` turns on the torso-height termination.
    """

    healthy_z: ClassVar[tuple[float, float] | None] = None

    def __init__(self, task: Task | None = None) -> None:
        super().__init__(self._build())
        self.sim = self.env.unwrapped
        self.data = self.sim.data
        self.dt = float(self.sim.dt)
        if task is not None:
            self.set_task(task)

    def _build(self) -> gym.Env:
        """The inner gymnasium v5 environment."""
        raise NotImplementedError

    def set_task(self, task: Task) -> None:
        """Make ``task`` (its ``params``) the one this env rewards from the next step on
        (``TaskEnv.set_task``); each subclass implements it, here it raises ``NotImplementedError``."""
        raise NotImplementedError

    def _reward(self, velocity: np.ndarray, action: np.ndarray) -> tuple[float, dict[str, float]]:
        """The reward after a step, from the velocity over it and the MuJoCo state after it."""
        raise NotImplementedError

    def _position(self) -> np.ndarray:
        """Root x-y position (the torso's free joint, or the planar root joints)."""
        return self.data.qpos[:2].copy()

    def healthy(self) -> bool:
        """Whether the torso height ``qpos[2]`` lies in ``healthy_z`` (bounds included; False for NaN);
        always True where ``healthy_z`` is None."""
        if self.healthy_z is None:
            return True
        low, high = self.healthy_z
        return bool(low <= self.data.qpos[2] <= high)  # False for a NaN height too

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step with ``action`` in the simulator's own bounds (the batch env scales [-1, 1] onto them):
        the inner env's physics and observation, the suite's reward (``_reward``, from the velocity of
        ``_position`` over ``dt``, per second), ``terminated = not healthy()``, never truncated; ``info``
        holds the reward terms. See ``TaskEnv.step``."""
        before = self._position()
        obs, _reward, _terminated, _truncated, _info = self.env.step(action)
        velocity = (self._position() - before) / self.dt
        reward, terms = self._reward(velocity, np.asarray(action, dtype=np.float64))
        return obs, float(reward), not self.healthy(), False, terms


def _ctrl_cost(weight: float, action: np.ndarray) -> float:
    return weight * float(np.sum(np.square(action)))


def _unit(theta: float) -> np.ndarray:
    return np.array([np.cos(theta), np.sin(theta)])


def _ant_contact_cost(data: Any) -> float:
    return ANT_CONTACT_COST * float(np.sum(np.square(np.clip(data.cfrc_ext, -1.0, 1.0))))


class HalfCheetahVelEnv(LocomotionTaskEnv):
    """reward = -|v_x - v_goal| - 0.05 ||a||^2; observation qpos[1:] + qvel (17)."""

    goal_velocity = 0.0

    def _build(self) -> gym.Env:
        return HalfCheetahEnv()

    def _position(self) -> np.ndarray:
        return self.data.qpos[:1].copy()

    def set_task(self, task: Task) -> None:
        """Target x velocity from ``task.params["v_goal"]`` (per second; ``KeyError`` if absent)."""
        self.goal_velocity = float(task.params["v_goal"])

    def _forward(self, x_velocity: float) -> float:
        return -abs(x_velocity - self.goal_velocity)

    def _reward(self, velocity: np.ndarray, action: np.ndarray) -> tuple[float, dict[str, float]]:
        forward = self._forward(float(velocity[0]))
        ctrl = _ctrl_cost(0.05, action)
        return forward - ctrl, {
            "x_velocity": float(velocity[0]),
            "reward_forward": forward,
            "reward_ctrl": -ctrl,
        }


class HalfCheetahDirEnv(HalfCheetahVelEnv):
    """reward = d * v_x - 0.05 ||a||^2 with d in {-1, +1}; observation as HalfCheetahVelEnv."""

    direction = 1.0

    def set_task(self, task: Task) -> None:
        """Direction d from ``task.params["direction"]`` (+1 forward, -1 backward; ``KeyError`` if absent)."""
        self.direction = float(task.params["direction"])

    def _forward(self, x_velocity: float) -> float:
        return self.direction * x_velocity


class AntDirEnv(LocomotionTaskEnv):
    """reward = v_xy . (cos theta, sin theta) - 0.5 ||a||^2 - contact + 1 (healthy); z in [0.2, 1] or end.

    Observation qpos[2:] + qvel (27, PEARL/oyster's ant: no contact forces, no torso x-y).
    """

    healthy_z = (0.2, 1.0)
    direction = np.array([1.0, 0.0])

    def _build(self) -> gym.Env:
        return AntEnv(include_cfrc_ext_in_observation=False, terminate_when_unhealthy=False)

    def set_task(self, task: Task) -> None:
        """Unit direction ``(cos theta, sin theta)`` from ``task.params["theta"]`` (radians; ``KeyError`` if
        absent)."""
        self.direction = _unit(task.params["theta"])

    def _reward(self, velocity: np.ndarray, action: np.ndarray) -> tuple[float, dict[str, float]]:
        forward = float(velocity @ self.direction)
        ctrl = _ctrl_cost(0.5, action)
        contact = _ant_contact_cost(self.data)
        survive = 1.0 if self.healthy() else 0.0
        terms = {
            "reward_forward": forward,
            "reward_ctrl": -ctrl,
            "reward_contact": -contact,
            "reward_survive": survive,
        }
        return forward - ctrl - contact + survive, terms


class AntGoalEnv(LocomotionTaskEnv):
    """reward = -||xy - goal||_1 - 0.1 ||a||^2 - contact cost; no termination.

    Observation qpos + qvel (29): the torso x-y position stays in, as the goal is a place.
    """

    goal = np.zeros(2)

    def _build(self) -> gym.Env:
        return AntEnv(
            exclude_current_positions_from_observation=False,
            include_cfrc_ext_in_observation=False,
            terminate_when_unhealthy=False,
        )

    def set_task(self, task: Task) -> None:
        """Goal torso x-y position from ``task.params`` ``goal_x`` and ``goal_y`` (``KeyError`` if absent)."""
        self.goal = np.array([task.params["goal_x"], task.params["goal_y"]], dtype=np.float64)

    def _reward(self, velocity: np.ndarray, action: np.ndarray) -> tuple[float, dict[str, float]]:
        goal = -float(np.sum(np.abs(self.data.qpos[:2] - self.goal)))
        ctrl = _ctrl_cost(0.1, action)
        contact = _ant_contact_cost(self.data)
        return goal - ctrl - contact, {"reward_goal": goal, "reward_ctrl": -ctrl, "reward_contact": -contact}


class HumanoidDirEnv(LocomotionTaskEnv):
    """reward = 1.25 v_xy . dir + 5 (healthy) - 0.1 ||ctrl||^2 - min(5e-7 ||cfrc_ext||^2, 10); z in [1, 2].

    v_xy is the centre-of-mass velocity. Observation: Humanoid-v5's default 348 dims (qpos[2:], qvel,
    cinert, cvel, qfrc_actuator, cfrc_ext without the world body), the content of VariBAD's and
    PEARL's humanoid-dir observation.
    """

    healthy_z = (1.0, 2.0)
    direction = np.array([1.0, 0.0])

    def _build(self) -> gym.Env:
        return HumanoidEnv(terminate_when_unhealthy=False)

    def _position(self) -> np.ndarray:
        mass = self.sim.model.body_mass
        return (mass @ self.data.xipos[:, :2]) / mass.sum()

    def set_task(self, task: Task) -> None:
        """Unit direction ``(cos theta, sin theta)`` from ``task.params["theta"]`` (radians; ``KeyError`` if
        absent)."""
        self.direction = _unit(task.params["theta"])

    def _reward(self, velocity: np.ndarray, action: np.ndarray) -> tuple[float, dict[str, float]]:
        forward = 1.25 * float(velocity @ self.direction)
        ctrl = _ctrl_cost(0.1, self.data.ctrl)
        contact = min(5e-7 * float(np.sum(np.square(self.data.cfrc_ext))), 10.0)
        survive = 5.0 if self.healthy() else 0.0
        terms = {
            "reward_forward": forward,
            "reward_ctrl": -ctrl,
            "reward_contact": -contact,
            "reward_survive": survive,
        }
        return forward - ctrl - contact + survive, terms


# ==================================================================================================
# Suites
# ==================================================================================================
Params = dict[str, float]


class LocomotionSuite(Suite):
    """What every locomotion suite shares: the protocol constants, split drawing and the batch env.

    ``_sample(rng, split, n)`` returns the task parameters of one split; it is called for train, test
    and (where defined) ood in that order on one generator, so drawing a split re-draws the ones
    before it and every construction gives the same tasks.
    """

    family = "locomotion"
    horizon = 200
    episodes_per_trial = 2
    eval_episodes = 6
    has_success = False
    split_sizes: ClassVar[dict[str, int]] = {"train": 100, "test": 20}
    env_cls: ClassVar[type[LocomotionTaskEnv]]

    def splits(self) -> tuple[str, ...]:
        """The keys of ``split_sizes``: train, test, and ood where the suite defines it (``Suite.splits``)."""
        return tuple(self.split_sizes)

    @abc.abstractmethod
    def _sample(self, rng: np.random.Generator, split: str, n: int) -> list[Params]: ...

    @abc.abstractmethod
    def _describe(self, params: Params) -> str: ...

    def _make_tasks(self, split: str) -> list[Task]:
        rng = np.random.default_rng(self.task_seed)
        drawn = {s: self._sample(rng, s, n) for s, n in self.split_sizes.items()}
        return [Task(i, split, p, self._describe(p)) for i, p in enumerate(drawn[split])]

    def make_env(self, task: Task | None = None) -> LocomotionTaskEnv:
        """One task env (gymnasium API), e.g. for the env checker or a plugin."""
        return self.env_cls(task)

    def make_batch_env(self, num_envs: int, num_workers: int = 1) -> BatchEnv:
        """A ``ProcessBatchEnv`` of ``num_envs`` ``env_cls`` task envs stepped by ``num_workers`` processes,
        this one included (``Suite.make_batch_env``)."""
        return ProcessBatchEnv(functools.partial(self.env_cls), num_envs, num_workers)


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> list[float]:
    return [float(v) for v in rng.uniform(low, high, size=n)]


def _alternate(values: tuple[float, ...], key: str, n: int) -> list[Params]:
    """``n`` tasks cycling through the few tasks a two-task suite has (each seen by n/2 trials)."""
    return [{key: values[i % len(values)]} for i in range(n)]


class HalfCheetahVel(LocomotionSuite):
    """halfcheetah-vel: reach a goal velocity v_goal ~ U[0, 3] (TrMRL, VariBAD, PEARL all use [0, 3]).

    reward -|v_x - v_goal| - 0.05 ||a||^2, v_x = change of ``qpos[0]`` over dt; observation
    qpos[1:] + qvel (17, HalfCheetah-v5 default). OOD (TrMRL paper): 20 tasks with v_goal ~ U[3, 4].

    Reference returns: pomdp-baselines (Ni et al. 2022) lists Cheetah-Vel (same reward, v_goal in
    [0, 3], H = 200, two-episode trials) two-episode sums Oracle -79.692 and Random -646.3391
    (``scripts/constants.py``); halved here to per-episode values. Their env ran gym's HalfCheetah on
    mujoco-py: the same model file as v5.
    """

    name = "halfcheetah-vel"
    obs_dim, act_dim = 17, 6
    env_cls = HalfCheetahVelEnv
    split_sizes = {"train": 100, "test": 20, "ood": 20}
    description = "HalfCheetah to a velocity v_goal~U[0,3]; reward -|v_x-v_goal|-0.05|a|^2; OOD v_goal~U[3,4]"

    def _sample(self, rng: np.random.Generator, split: str, n: int) -> list[Params]:
        low, high = (3.0, 4.0) if split == "ood" else (0.0, 3.0)
        return [{"v_goal": v} for v in _uniform(rng, low, high, n)]

    def _describe(self, params: Params) -> str:
        return f"v_goal={params['v_goal']:.3f}"

    def reference_returns(self, split: str = "test") -> ReferenceReturns | None:
        """The published in-distribution (v_goal ~ U[0, 3]) values for the test split; OOD is raw."""
        if split != "test":
            return None
        return ReferenceReturns(
            random=-646.3391 / 2,
            oracle=-79.692 / 2,
            source="pomdp-baselines (Ni et al. 2022, scripts/constants.py) Cheetah-Vel two-episode sums "
            "Oracle -79.692, Random -646.3391 (H=200, v_goal~U[0,3]), halved to per-episode",
        )


class HalfCheetahDir(LocomotionSuite):
    """halfcheetah-dir: run forward (d = +1) or backward (d = -1); reward d v_x - 0.05 ||a||^2.

    Only two tasks exist, so train and test both contain both directions and cannot be disjoint:
    each split lists the two directions alternately (train 100, test 20 entries) so the evaluation
    still runs 20 trials with different reset seeds. Observation as halfcheetah-vel (17).

    Reference returns: None. No published oracle return exists for this definition; pomdp-baselines
    lists only a Random two-episode sum (-39.3) for its Cheetah-Dir.
    """

    name = "halfcheetah-dir"
    shared_tasks = True  # two tasks in all: every split repeats them
    obs_dim, act_dim = 17, 6
    env_cls = HalfCheetahDirEnv
    description = "HalfCheetah forward/backward d in {-1,+1}; reward d*v_x-0.05|a|^2 (2 tasks: train = test)"

    def _sample(self, rng: np.random.Generator, split: str, n: int) -> list[Params]:
        return _alternate((1.0, -1.0), "direction", n)

    def _describe(self, params: Params) -> str:
        return f"d={params['direction']:+.0f}"


class AntDir(LocomotionSuite):
    """ant-dir: run in direction theta ~ U[0, 2 pi) (PEARL/oyster convention).

    reward v_xy . (cos theta, sin theta) - 0.5 ||a||^2 - 5e-4 ||clip(cfrc_ext, -1, 1)||^2 + 1 (while
    healthy), v_xy = change of the torso position ``qpos[0:2]`` over dt; terminates when torso z leaves
    [0.2, 1.0]. Observation qpos[2:] + qvel (27: PEARL/oyster's ant, no contact forces).

    Note: the TrMRL code used VariBAD's AntDir variant, where the task is d in {-1, +1} used as an
    *angle in radians* (directions +-57 degrees, not forward/backward); we do not: theta is uniform on
    the circle here, and ant-fwd-back is the forward/backward suite.

    Reference returns: None. No published oracle exists; pomdp-baselines' Ant-Dir Random (-48.247, a
    two-episode sum) is for VariBAD's +-1 rad variant on mujoco-py, so it is not used.
    """

    name = "ant-dir"
    obs_dim, act_dim = 27, 8
    env_cls = AntDirEnv
    description = "Ant in direction theta~U[0,2pi); reward v.dir-0.5|a|^2-contact+1; ends if z leaves [0.2,1]"

    def _sample(self, rng: np.random.Generator, split: str, n: int) -> list[Params]:
        return [{"theta": t} for t in _uniform(rng, 0.0, TWO_PI, n)]

    def _describe(self, params: Params) -> str:
        return f"theta={params['theta']:.2f}rad"


class AntFwdBack(AntDir):
    """ant-fwd-back: ant-dir with theta in {0, pi} (MAML/ProMP convention).

    Only two tasks exist, so train and test both contain both directions and cannot be disjoint:
    each split lists them alternately (train 100, test 20 entries). Same env, observation (27) and
    termination as ant-dir. Reference returns: None (no published oracle for this definition).
    """

    name = "ant-fwd-back"
    shared_tasks = True  # two tasks in all: every split repeats them
    description = "Ant forward/backward theta in {0,pi}; reward as ant-dir (2 tasks: train = test)"

    def _sample(self, rng: np.random.Generator, split: str, n: int) -> list[Params]:
        return _alternate((0.0, float(np.pi)), "theta", n)

    def _describe(self, params: Params) -> str:
        return "theta=0 (forward)" if params["theta"] == 0.0 else "theta=pi (backward)"


class AntGoal(LocomotionSuite):
    """ant-goal: walk to goal = r (cos a, sin a), a ~ U[0, 2 pi), r = 3 sqrt(U) (uniform on the disc).

    reward -||xy - goal||_1 - 0.1 ||a||^2 - 5e-4 ||clip(cfrc_ext, -1, 1)||^2 with xy the torso position
    after the step; no termination (the definition names none). Observation qpos + qvel (29): the torso
    x-y stays in, the agent cannot find a place otherwise. OOD: 20 goals uniform on the annulus 3 < r <= 4.

    Reference returns: None. No published oracle or random return exists for this definition.
    """

    name = "ant-goal"
    obs_dim, act_dim = 29, 8
    env_cls = AntGoalEnv
    split_sizes = {"train": 100, "test": 20, "ood": 20}
    description = "Ant to a goal on the r=3 disc; reward -|xy-goal|_1-0.1|a|^2-contact; OOD 3<r<=4"

    def _sample(self, rng: np.random.Generator, split: str, n: int) -> list[Params]:
        angle = rng.uniform(0.0, TWO_PI, size=n)
        u = rng.uniform(size=n)  # in [0, 1)
        # uniform in area: disc r = 3 sqrt(u) in [0, 3); OOD annulus r = sqrt(16 - 7u) in (3, 4]
        radius = np.sqrt(16.0 - 7.0 * u) if split == "ood" else 3.0 * np.sqrt(u)
        goals = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return [{"goal_x": float(x), "goal_y": float(y)} for x, y in goals]

    def _describe(self, params: Params) -> str:
        return f"goal=({params['goal_x']:+.2f},{params['goal_y']:+.2f})"


class HumanoidDir(LocomotionSuite):
    """humanoid-dir: walk in direction theta ~ U[0, 2 pi) (VariBAD / PEARL humanoid-dir).

    reward 1.25 v_xy . dir + 5 (while healthy) - 0.1 ||ctrl||^2 - min(5e-7 ||cfrc_ext||^2, 10) with v_xy
    the centre-of-mass velocity; terminates when torso z leaves [1, 2]. Observation: Humanoid-v5's
    default 348 dims.

    Reference returns: None. No published oracle exists; pomdp-baselines' Humanoid-Dir Random
    (296.991, a two-episode sum on mujoco-py) has no oracle to pair with.
    """

    name = "humanoid-dir"
    obs_dim, act_dim = 348, 17
    env_cls = HumanoidDirEnv
    description = (
        "Humanoid in direction theta~U[0,2pi); reward 1.25v.dir+5-ctrl-impact; ends if z leaves [1,2]"
    )

    def _sample(self, rng: np.random.Generator, split: str, n: int) -> list[Params]:
        return [{"theta": t} for t in _uniform(rng, 0.0, TWO_PI, n)]

    def _describe(self, params: Params) -> str:
        return f"theta={params['theta']:.2f}rad"
