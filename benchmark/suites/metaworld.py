"""Meta-World ML1 / ML10 / ML45 (metaworld 3.1.1): the official goal sets under the one protocol.

Definition: ``ml1-<task>`` is one Meta-World v3 task class with the official ML1 split, 50
train goals and 50 disjoint test goals; ``ml10`` / ``ml45`` are the official class splits (ML10 holds
out drawer-open, door-close, shelf-place, sweep-into and lever-pull; ML45 holds out bin-picking,
box-close, hand-insert, door-lock and door-unlock), 50 goals per class. Horizon 500, trials of 10
episodes, meta-test trials of 10 adaptation + 3 evaluation episodes; the headline number is the
success rate (``info["success"]`` at any step of an episode) over the 3 evaluation episodes.

Goal sets come only from ``metaworld.ML1(name, seed)`` / ``ML10(seed)`` / ``ML45(seed)`` with the
fixed ``Suite.task_seed`` (1337), never from ``gym.make_vec('Meta-World/...')``, whose ML1-train
registration hands out the test goals in 3.1.1. Each benchmark object is built at most once per
process (ML45 takes ~25 s).

A task's params are JSON: the benchmark, the class name, the index of the metaworld task inside the
benchmark's train / test list, its goal index inside its class and the goal's ``rand_vec`` (the only
data in a metaworld ML task besides the class and ``partially_observable=True``, checked when the
task list is built). Worker processes rebuild the metaworld task from the ``rand_vec``, so they
never have to build the benchmark themselves; ``test_metaworld.py`` checks the rebuilt tasks equal
the official ones.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

from benchmark.suites.base import BatchEnv, ReferenceReturns, Suite, Task
from benchmark.vec import ProcessBatchEnv

N_GOALS = 50  # metaworld._N_GOALS: goals per class in every ML benchmark
HORIZON = 500  # SawyerXYZEnv.max_path_length: stepping further raises
_ML_TASK_KEYS = {"rand_vec", "env_cls", "partially_observable"}  # a metaworld ML task's pickled data

# The 50 Meta-World v3 task classes (metaworld.env_dict.ALL_V3_ENVIRONMENTS, in its order). Spelled out
# so that naming the 50 ML1 suites does not import metaworld/mujoco (ML10 / ML45 do: they read their class
# lists from metaworld.env_dict); a test checks it against metaworld.
V3_ENV_NAMES: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3",
    "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3",
    "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3", "handle-press-v3",
    "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3", "pick-out-of-hole-v3",
    "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3", "plate-slide-back-v3",
    "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3",
    "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3", "reach-wall-v3",
    "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3", "window-close-v3",
)  # fmt: skip


def _suite_name(env_name: str) -> str:
    return "ml1-" + env_name.removesuffix("-v3")


# -- benchmarks (built once per process) -------------------------------------------------------------
_BENCH_CACHE: dict[tuple[str, str | None, int], Any] = {}
_BENCH_LOCK = threading.Lock()


def metaworld_benchmark(benchmark: str, env_name: str | None, seed: int) -> Any:
    """The metaworld benchmark object (``ML1`` needs ``env_name``), built once per process."""
    key = (benchmark, env_name, seed)
    with _BENCH_LOCK:
        if key not in _BENCH_CACHE:
            import metaworld

            if benchmark == "ML1":
                _BENCH_CACHE[key] = metaworld.ML1(env_name, seed=seed)
            elif benchmark in ("ML10", "ML45"):
                _BENCH_CACHE[key] = getattr(metaworld, benchmark)(seed=seed)
            else:
                raise ValueError(f"unknown Meta-World benchmark {benchmark!r}; accepted: ML1, ML10, ML45")
        return _BENCH_CACHE[key]


def metaworld_task(task: Task) -> Any:
    """The ``metaworld.types.Task`` of one of our tasks, rebuilt from its JSON params.

    Encoded exactly as ``metaworld._make_tasks`` does for the ML benchmarks: a pickled dict of the
    goal's ``rand_vec``, the env class and ``partially_observable=True`` (goal hidden).
    """
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    from metaworld.types import Task as MWTask

    name = task.params["env_name"]
    data = {
        "rand_vec": np.asarray(task.params["rand_vec"], dtype=np.float64),
        "env_cls": ALL_V3_ENVIRONMENTS[name],
        "partially_observable": True,
    }
    return MWTask(env_name=name, data=pickle.dumps(data))


# -- the task env ---------------------------------------------------------------------------------
# Idle raw metaworld envs of this process, most recently used last: (class name, env). A task env
# owns exactly one raw env; on a class change it parks the old one here and takes (or builds) one of
# the new class. Bounded (LRU), because one raw env costs ~25 MB and 0.1 s to build, and on ML45 every
# slot sees up to 50 classes: a per-slot cache of every class would grow to ~1.2 GB per slot.
MAX_IDLE_ENVS = 16
_IDLE: list[tuple[str, Any]] = []


def _take_raw_env(env_name: str) -> Any:
    for i in range(len(_IDLE) - 1, -1, -1):
        if _IDLE[i][0] == env_name:
            return _IDLE.pop(i)[1]
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    # The raw class, not gym.make: no TimeLimit / auto-reset / terminate-on-success wrappers. The raw
    # env truncates only at its max_path_length (500) == our horizon, and never terminates.
    env = ALL_V3_ENVIRONMENTS[env_name]()
    if env.max_path_length != HORIZON:  # pragma: no cover - guards a metaworld upgrade
        raise RuntimeError(f"{env_name}: max_path_length {env.max_path_length} != horizon {HORIZON}")
    return env


def _park_raw_env(env_name: str, env: Any) -> None:
    _IDLE.append((env_name, env))
    while len(_IDLE) > MAX_IDLE_ENVS:
        _IDLE.pop(0)[1].close()


class MetaWorldTaskEnv(gym.Env):
    """One Meta-World env whose task (class + goal) is set with ``set_task`` (gymnasium API).

    * Actions in [-1, 1]^4 (metaworld's own range); observations (39,) float32 with the goal hidden.
    * ``reset(seed=s)`` seeds the raw env with its own ``seed(s)`` method (metaworld ignores
      ``reset(seed=)``). With the goal frozen by ``set_task`` a v3 reset is deterministic anyway, so
      the same task + seeds + actions give the same observations whatever the env ran before.
    * ``info["success"]`` is passed through as a bool; ``terminated`` is always False; ``truncated``
      is True only at step 500 (the raw env's own limit, equal to the horizon).
    * One raw env per class, shared through the process's bounded pool of idle envs: a task env
      keeps its raw env while the class stays the same (every ML1 trial) and swaps on a class change.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: Task | None = None) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(39,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self._env: Any = None
        self._env_name: str | None = None
        self.task: Task | None = None
        if task is not None:
            self.set_task(task)

    @property
    def raw_env(self) -> Any:
        """The underlying metaworld ``SawyerXYZEnv`` (None before the first ``set_task``)."""
        return self._env

    def set_task(self, task: Task) -> None:
        """Take a raw env of ``task``'s class (kept while the class is unchanged, else the old one is parked
        in the idle pool) and freeze its goal (``rand_vec``) with the raw env's ``set_task``. See
        ``TaskEnv.set_task``."""
        name = task.params["env_name"]
        if name != self._env_name:
            if self._env is not None:
                _park_raw_env(self._env_name, self._env)
            self._env, self._env_name = _take_raw_env(name), name
        self._env.set_task(metaworld_task(task))
        self.task = task

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Seed the raw env with ``seed(seed)`` where given, reset it; returns (obs (39,) float32, info).
        ``options`` is ignored. Raises ``RuntimeError`` before the first ``set_task``."""
        if self._env is None:
            raise RuntimeError("MetaWorldTaskEnv.reset before set_task")
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(int(seed))
        obs, info = self._env.reset()
        return obs.astype(np.float32), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One raw-env step with ``action`` (4,) in [-1, 1]: obs (39,) float32, the raw env's reward,
        terminated and truncated (step 500), and its info with ``success`` as a bool."""
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float64))
        info = dict(info)
        info["success"] = bool(info.get("success", False))
        return obs.astype(np.float32), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        """Hand the raw env back to the process's idle pool (closed only when the pool evicts it)."""
        if self._env is not None:
            _park_raw_env(self._env_name, self._env)
            self._env, self._env_name = None, None


# -- suites ---------------------------------------------------------------------------------------
def _spread(items: list[Task], k: int) -> list[Task]:
    """``k`` items spread evenly over ``items`` (first and last included where k > 1)."""
    if k >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, num=k).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


class MetaWorldSuite(Suite):
    """Shared machinery of the Meta-World suites; see the module docstring for the definition."""

    family = "metaworld"
    horizon = HORIZON
    episodes_per_trial = 10
    eval_episodes = 13  # 10 adaptation + 3 evaluation episodes
    has_success = True
    obs_dim = 39
    act_dim = 4
    final_train_goals_per_class = 5  # meta-train success in the final evaluation: 5 goals per class

    benchmark: str = ""  # "ML1", "ML10" or "ML45"
    env_name: str | None = None  # the class of an ML1 suite

    def train_classes(self) -> list[str]:
        """The metaworld class names (``<task>-v3``) of the train split; subclasses implement it."""
        raise NotImplementedError

    def test_classes(self) -> list[str]:
        """The metaworld class names (``<task>-v3``) of the test split; subclasses implement it."""
        raise NotImplementedError

    def classes(self, split: str) -> list[str]:
        """``train_classes()`` for ``"train"``, ``test_classes()`` for any other split."""
        return self.train_classes() if split == "train" else self.test_classes()

    def _make_tasks(self, split: str) -> list[Task]:
        bench = metaworld_benchmark(self.benchmark, self.env_name, self.task_seed)
        mw_tasks = bench.train_tasks if split == "train" else bench.test_tasks
        classes = list(bench.train_classes if split == "train" else bench.test_classes)
        if classes != self.classes(split):  # pragma: no cover - guards a metaworld upgrade
            raise RuntimeError(f"{self.name}: metaworld {split} classes {classes} != {self.classes(split)}")
        tasks, per_class = [], dict.fromkeys(classes, 0)
        for i, mw in enumerate(mw_tasks):
            data = pickle.loads(mw.data)
            if set(data) != _ML_TASK_KEYS or data["partially_observable"] is not True:
                raise RuntimeError(f"unexpected metaworld task data for {mw.env_name}: {sorted(data)}")
            goal = per_class[mw.env_name]
            per_class[mw.env_name] += 1
            params = {
                "benchmark": self.benchmark,
                "seed": self.task_seed,
                "env_name": mw.env_name,
                "index": i,  # inside bench.train_tasks / bench.test_tasks
                "goal": goal,  # inside its class
                "rand_vec": [float(v) for v in np.asarray(data["rand_vec"]).ravel()],
            }
            tasks.append(Task(i, split, params, f"{mw.env_name} goal {goal}"))
        if any(n != N_GOALS for n in per_class.values()):  # pragma: no cover
            raise RuntimeError(f"{self.name}: expected {N_GOALS} goals per class, got {per_class}")
        return tasks

    def make_batch_env(self, num_envs: int, num_workers: int = 1) -> BatchEnv:
        """A ``ProcessBatchEnv`` of ``num_envs`` ``MetaWorldTaskEnv`` stepped by ``num_workers`` processes,
        this one included (``Suite.make_batch_env``)."""
        return ProcessBatchEnv(partial(MetaWorldTaskEnv), num_envs, num_workers)

    # -- evaluation protocol ------------------------------------------------------------------------
    def headline_episodes(self) -> list[int]:
        """Success rate over the 3 evaluation episodes after 10 adaptation episodes."""
        return [10, 11, 12]

    def _per_class(self, split: str) -> dict[str, list[Task]]:
        out: dict[str, list[Task]] = OrderedDict((c, []) for c in self.classes(split))
        for t in self.tasks(split):
            out[t.params["env_name"]].append(t)
        return out

    def periodic_eval_tasks(self, n: int) -> list[Task]:
        """About ``n`` test goals, spread evenly inside every test class, at least one per class.

        The ``n`` goals are shared out as evenly as possible over the test classes (the first
        classes get the remainder); where ``n`` is below the number of test classes every class
        still gets one goal, so the subset always covers each held-out class.
        """
        groups = self._per_class("test")
        base, rem = divmod(max(n, 1), len(groups))
        out: list[Task] = []
        for j, goals in enumerate(groups.values()):
            out.extend(_spread(goals, max(1, base + (j < rem))))
        return out

    def periodic_train_eval_tasks(self, n: int) -> list[Task]:
        """``n`` train goals spread evenly over the train list (ordered by class), for meta-train curves."""
        return _spread(list(self.tasks("train")), n)

    def final_eval_tasks(self) -> dict[str, list[Task]]:
        """Every test goal, plus ``final_train_goals_per_class`` (5) train goals per train class.

        Meta-train success on all train goals would cost 10x the test evaluation on ML10 and 45x on
        ML1/ML45 (13 episodes x 500 steps per goal), so it is measured on 5 goals per class, spread
        evenly over the class's 50 goals: ML1 5, ML10 50, ML45 225 train goals.
        """
        k = self.final_train_goals_per_class
        train = [t for goals in self._per_class("train").values() for t in _spread(goals, k)]
        return {"test": list(self.tasks("test")), "train": train}

    def reference_returns(self, split: str = "test") -> ReferenceReturns | None:
        """None for every split (``Suite.reference_returns``)."""
        return None  # Meta-World is reported as success rate

    def task_counts(self) -> dict[str, int]:
        """Goals per split without building the benchmark (50 goals per class is metaworld's fixed count):
        building the splits takes ~1 s per ML1 suite and ~25 s for ML45."""
        return {s: N_GOALS * len(self.classes(s)) for s in self.splits()}

    def summary(self) -> dict[str, Any]:
        """One line of ``metarl-bench list``: the base fields plus the classes and goals per split."""
        out = super().summary()
        out["classes"] = {s: [c.removesuffix("-v3") for c in self.classes(s)] for s in self.splits()}
        out["goals_per_class"] = N_GOALS
        out["task_seed"] = self.task_seed
        return out


class MetaWorldML1(MetaWorldSuite):
    """ML1: one task class, its 50 official train goals and 50 disjoint test goals."""

    benchmark = "ML1"

    def __init__(self, env_name: str) -> None:
        super().__init__()
        if not env_name.endswith("-v3"):
            env_name = env_name.removeprefix("ml1-") + "-v3"
        if env_name not in V3_ENV_NAMES:
            raise ValueError(f"unknown Meta-World ML1 task {env_name!r}; accepted: {', '.join(_ml1_names())}")
        self.env_name = env_name
        self.name = _suite_name(env_name)
        self.description = (
            f"Meta-World ML1 {env_name}: the official 50 train / 50 test goals (seed {self.task_seed}); "
            "success = info['success'] at any step"
        )

    def train_classes(self) -> list[str]:
        """``[env_name]``: the one class (its train goals)."""
        return [self.env_name]

    def test_classes(self) -> list[str]:
        """``[env_name]``: the same class as train (its disjoint test goals)."""
        return [self.env_name]


class MetaWorldMLN(MetaWorldSuite):
    """ML10 / ML45: the official train classes and held-out test classes, 50 goals each."""

    def __init__(self, benchmark: str) -> None:
        super().__init__()
        if benchmark not in ("ML10", "ML45"):
            raise ValueError(f"unknown Meta-World benchmark {benchmark!r}; accepted: ML10, ML45")
        self.benchmark = benchmark
        self.name = benchmark.lower()
        n_train = len(self.train_classes())
        self.description = (
            f"Meta-World {benchmark}: {n_train} train classes, 5 held-out test classes "
            f"({', '.join(c.removesuffix('-v3') for c in self.test_classes())}), 50 goals each "
            f"(seed {self.task_seed}); success = info['success'] at any step"
        )

    def _split_classes(self, split: str) -> list[str]:
        from metaworld import env_dict

        return list(getattr(env_dict, f"{self.benchmark}_V3")[split])

    def train_classes(self) -> list[str]:
        """The official train classes, from ``metaworld.env_dict.<ML10|ML45>_V3`` (imports metaworld)."""
        return self._split_classes("train")

    def test_classes(self) -> list[str]:
        """The 5 official held-out classes, from ``metaworld.env_dict.<ML10|ML45>_V3`` (imports metaworld)."""
        return self._split_classes("test")


def _ml1_names() -> list[str]:
    return [_suite_name(n) for n in V3_ENV_NAMES]


def metaworld_suites() -> dict[str, Callable[[], Suite]]:
    """Every Meta-World suite name -> zero-argument factory (cheap: nothing is built or imported)."""
    out: dict[str, Callable[[], Suite]] = {_suite_name(n): partial(MetaWorldML1, n) for n in V3_ENV_NAMES}
    out["ml10"] = partial(MetaWorldMLN, "ML10")
    out["ml45"] = partial(MetaWorldMLN, "ML45")
    return out


def make_suite(name: str) -> Suite:
    """The Meta-World suite called ``name`` (``ml1-<task>``, ``ml10`` or ``ml45``)."""
    factories = metaworld_suites()
    if name not in factories:
        raise ValueError(f"unknown Meta-World suite {name!r}; accepted: {', '.join(factories)}")
    return factories[name]()
