"""The suite contract (benchmark/suites/checks.py): what every run checks about its suite before it writes
anything, the sampler's check of every step, the registry's checks of plugin suites, and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark import registry
from benchmark.check import check_suite
from benchmark.cli import main
from benchmark.errors import SuiteError
from benchmark.sampler import TrialSampler
from benchmark.suites.base import BatchEnv, ReferenceReturns, StepResult, Suite, Task
from benchmark.suites.checks import check_suite_facts, probe_suite


class LineEnv(BatchEnv):
    """x' = x + 0.1 a on a line, reward -|x' - goal|; seeded start x0 ~ U[-0.1, 0.1]."""

    def __init__(self, n: int) -> None:
        self.num_envs, self.obs_dim, self.act_dim = n, 1, 1
        self.x, self.goal = np.zeros(n), np.zeros(n)

    def set_tasks(self, tasks):
        self.goal = np.array([t.params["goal"] for t in tasks])

    def reset(self, seeds):
        self.x = np.array([np.random.default_rng(s).uniform(-0.1, 0.1) for s in seeds])
        return self.x[:, None].astype(np.float32)

    def step(self, actions, active):
        self.x = self.x + 0.1 * actions[:, 0] * active
        n = self.num_envs
        reward = (-np.abs(self.x - self.goal)).astype(np.float32)
        return StepResult(self.x[:, None].astype(np.float32), reward, np.zeros(n, bool), np.zeros(n, bool))


class Line(Suite):
    """A suite that keeps the contract; each test breaks one thing in a subclass."""

    name, family, horizon, episodes_per_trial, eval_episodes = "line", "point-nav", 10, 2, 3
    obs_dim, act_dim = 1, 1

    def _make_tasks(self, split):
        rng = np.random.default_rng([self.task_seed, ("train", "test").index(split)])
        return [
            Task(i, split, {"goal": float(g)}, f"goal={g:+.3f}") for i, g in enumerate(rng.uniform(-1, 1, 8))
        ]

    def make_batch_env(self, num_envs, num_workers=1):
        return LineEnv(num_envs)

    def reference_returns(self, split="test"):
        return ReferenceReturns(random=-8.0, oracle=-1.0, source="made up for the test")


def _variant(**attrs) -> Suite:
    return type("Variant", (Line,), attrs)()


def _overlap(self, split):
    tasks = Line._make_tasks(self, "train")
    return tasks if split == "train" else [Task(t.task_id, "test", t.params, t.description) for t in tasks]


class _NanEnv(LineEnv):
    def step(self, actions, active):
        res = super().step(actions, active)
        res.reward[-1] = np.nan
        return res


class _UnseededEnv(LineEnv):
    def reset(self, seeds):
        return super().reset(np.random.randint(0, 1000, size=len(seeds)))


class _WideRewardEnv(LineEnv):
    def step(self, actions, active):
        res = super().step(actions, active)
        return StepResult(res.obs, res.reward[:, None], res.terminated, res.success)


class _NarrowObsEnv(LineEnv):
    def reset(self, seeds):
        return super().reset(seeds)[:, 0]


BROKEN = [
    (
        dict(family="goalnav"),
        "family 'goalnav' has no run profiles; accepted: locomotion, metaworld, point-nav",
    ),
    (dict(horizon=0), "horizon must be a Python int >= 1, got 0"),
    (dict(headline_episodes=lambda self: [3]), "headline_episodes() must be a non-empty list"),
    (dict(headline_episodes=lambda self: []), "headline_episodes() must be a non-empty list"),
    (dict(_make_tasks=_overlap), "test task 0 and train task 0 have the same params"),
    (
        dict(_make_tasks=lambda self, split: [Task(i, split, {"goal": 0.5}, "g") for i in range(2)]),
        "train task 1 and train task 0 have the same params",
    ),
    (
        dict(_make_tasks=lambda self, split: [Task(0, split, {"goal": g}, "g") for g in (0.1, 0.2)]),
        "train task_id 0 is used twice",
    ),
    (
        dict(_make_tasks=lambda self, split: [] if split == "test" else Line._make_tasks(self, split)),
        "no tasks",
    ),
    (
        dict(_make_tasks=lambda self, split: [Task(0, split, {"goal": np.array([0.5])}, "g")]),
        "params must be JSON-serialisable",
    ),
    (
        dict(reference_returns=lambda self, split="test": ReferenceReturns(-1.0, -8.0, "")),
        "oracle -8.0 must be above random -1.0",
    ),
    (
        dict(reference_returns=lambda self, split="test": ReferenceReturns(float("nan"), -1.0, "")),
        "must be finite Python floats",
    ),
]


def _shifted(delta):
    """Test tasks that repeat the training tasks but for a number's spelling or float noise."""

    def make(self, split):
        tasks = Line._make_tasks(self, "train")
        if split == "train":
            return tasks
        return [Task(t.task_id, "test", {"goal": delta(t.params["goal"])}, t.description) for t in tasks]

    return make


_calls = iter(range(10**6))

BROKEN += [
    (dict(splits=lambda self: (s for s in ("train", "test"))), "splits() must be a tuple of distinct names"),
    (dict(splits=lambda self: ("train", "test", "test")), "splits() must be a tuple of distinct names"),
    (dict(horizon=np.int64(10)), "horizon must be a Python int >= 1, got np.int64(10)"),
    (dict(headline_episodes=lambda self: [True]), "headline_episodes() must be a non-empty list"),
    (
        dict(_make_tasks=lambda self, split: [Task(2**63, split, {"goal": float(split == "test")}, "g")]),
        "train task_id must be an integer in [0, 2**53), got 9223372036854775808",
    ),
    (dict(_make_tasks=_shifted(lambda g: g + 1e-12)), "test task 0 and train task 0 have the same params"),
    (
        dict(_make_tasks=lambda self, split: [Task(0, split, {"g": 0.0 if split == "train" else -0.0}, "g")]),
        "test task 0 and train task 0 have the same params",
    ),
    (
        dict(_make_tasks=lambda self, split: [Task(0, split, {"g": 1 if split == "train" else 1.0}, "g")]),
        "test task 0 and train task 0 have the same params",
    ),
    (
        dict(reference_returns=lambda self, split="test": {"random": -8.0}),
        "must return ReferenceReturns or None",
    ),
    (
        dict(reference_returns=lambda self, split="test": ReferenceReturns(False, True, "")),
        "finite Python floats",
    ),
    (
        dict(reference_returns=lambda self, split="test": ReferenceReturns(-8.0 - next(_calls), -1.0, "")),
        "references must be deterministic",
    ),
    (dict(reference_returns=lambda self, split="test": 1 / 0), "raised ZeroDivisionError: division by zero"),
]


@pytest.mark.parametrize(("attrs", "expected"), BROKEN)
def test_facts_check_refuses_a_broken_suite(attrs, expected):
    with pytest.raises(SuiteError) as info:
        check_suite_facts(_variant(**attrs))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("suite 'line' (") and expected in msg, msg


class _TwoEnv(LineEnv):
    """terminated as the integer 2 (not a bool) from step 2 on."""

    def reset(self, seeds):
        self.t = 0
        return super().reset(seeds)

    def step(self, actions, active):
        res = super().step(actions, active)
        self.t += 1
        return StepResult(res.obs, res.reward, np.full(self.num_envs, 2 * (self.t >= 2)), res.success)


class _AgingEnv(LineEnv):
    """Starts elsewhere from its fifth reset on: state kept across episodes."""

    def reset(self, seeds):
        self.resets = getattr(self, "resets", 0) + 1
        return super().reset(seeds) + (self.resets >= 5)


class _MeanGoalEnv(LineEnv):
    """The reward of every row depends on the batch's mean goal: state shared between rows."""

    def step(self, actions, active):
        res = super().step(actions, active)
        return StepResult(res.obs, res.reward - np.float32(self.goal.mean()), res.terminated, res.success)


class _WorkersEnv(LineEnv):
    """Adds an offset when built with two worker processes."""

    def __init__(self, n, workers=1):
        super().__init__(n)
        self.offset = np.float32(0.5 * (workers > 1))

    def reset(self, seeds):
        return super().reset(seeds) + self.offset


PROBED = [
    (_TwoEnv, "step 0 terminated: expected shape (2,) of bool (numpy bool arrays), got shape (2,) of int64"),
    (_NanEnv, "step 0 reward holds values that are not finite as float32"),
    (_UnseededEnv, "gave different results (episode 0 of the probe) from the same seeds and actions"),
    (_WideRewardEnv, "step 0 reward: expected shape (2,)"),
    (_NarrowObsEnv, "reset() observations: expected shape (2, 1)"),
]


@pytest.mark.parametrize(("env_cls", "expected"), PROBED)
def test_probe_refuses_a_broken_environment(env_cls, expected):
    suite = _variant(make_batch_env=lambda self, n, w=1: env_cls(n))
    check_suite_facts(suite)  # the facts are fine: only stepping shows it
    with pytest.raises(SuiteError, match="suite 'line'") as info:
        probe_suite(suite)
    assert expected in str(info.value), info.value


@pytest.mark.parametrize(
    ("env_cls", "expected"),
    [
        (_AgingEnv, "an environment that had run 4 episodes gave other results than when it was new"),
        (_MeanGoalEnv, "row 0 (train task 0) gave other results next to another task"),
        (_WorkersEnv, "make_batch_env(2, 2) (2 processes) gave other results than with 1 process"),
    ],
)
def test_check_suite_finds_state_the_short_probe_misses(env_cls, expected):
    suite = _variant(
        make_batch_env=lambda self, n, w=1: env_cls(n, w) if env_cls is _WorkersEnv else env_cls(n)
    )
    probe_suite(suite)  # a run's three-step probe passes these
    with pytest.raises(SuiteError) as info:
        check_suite(suite)
    assert expected in str(info.value), info.value


def test_good_suites_pass(monkeypatch):
    check_suite(Line())
    for name in ("point-nav", "halfcheetah-vel", "halfcheetah-dir", "ant-dir"):
        suite = registry.load_suite(name)
        check_suite_facts(suite)
        probe_suite(suite, steps=5)


def test_shared_tasks_exempts_only_a_declared_finite_task_set():
    """halfcheetah-dir's splits repeat its two tasks by definition; the same suite without the
    declaration is refused."""
    suite = registry.load_suite("halfcheetah-dir")
    assert suite.shared_tasks
    undeclared = type("Undeclared", (type(suite),), {"shared_tasks": False})()
    undeclared.name = "undeclared"
    with pytest.raises(SuiteError, match="have the same params"):
        check_suite_facts(undeclared)


class _LateNanEnv(LineEnv):
    """The last row's observation turns infinite at its fourth step of the second episode."""

    def reset(self, seeds):
        self.t = 0
        self.episodes = getattr(self, "episodes", -1) + 1
        return super().reset(seeds)

    def step(self, actions, active):
        res = super().step(actions, active)
        self.t += 1
        if self.episodes == 1 and self.t == 4:
            res.obs[-1] = np.inf
        return res


def test_sampler_refuses_a_non_finite_reward_or_observation():
    suite = _variant(make_batch_env=lambda self, n, w=1: _LateNanEnv(n))
    tasks = suite.tasks("test")[:3]

    class Zero:
        def new_trial(self, keys):
            pass

        def act(self, obs):
            return np.zeros((len(obs), 1), np.float32), {}

        def observe(self, tr):
            pass

        def end_episode(self):
            pass

        def clone(self):
            return Zero()

    with pytest.raises(SuiteError) as info:
        TrialSampler(suite).run(Zero(), tasks, 2, seed=0)
    msg = str(info.value)
    assert "step 3 of episode 1 gave a non-finite reward or observation for test task 2" in msg, msg
    assert "observation [inf]" in msg, msg


class _Const:
    """An agent acting ``value`` in every row."""

    def __init__(self, value):
        self.value = value

    def new_trial(self, keys):
        pass

    def act(self, obs):
        return np.full((len(obs), 1), self.value, np.float32), {}

    def observe(self, tr):
        pass

    def end_episode(self):
        pass

    def clone(self):
        return _Const(self.value)


def test_sampler_blames_a_non_finite_action_on_the_agent_and_reads_integer_terminations():
    suite = _variant(make_batch_env=lambda self, n, w=1: _TwoEnv(n))
    tasks = suite.tasks("test")[:2]
    with pytest.raises(
        RuntimeError, match="the agent's action for test task 0 at step 0 of episode 0 is not finite"
    ):
        TrialSampler(suite).run(_Const(np.nan), tasks, 1, seed=0)
    batch = TrialSampler(suite).run(_Const(0.5), tasks, 1, seed=0)
    assert batch.valid.sum(axis=1).tolist() == [2, 2]  # terminated (as 2) at the second step


@pytest.fixture
def bad_suite(monkeypatch):
    """``--suite line`` resolves to the suite the test puts in ``holder[0]``."""
    holder: list[Suite] = []
    real = registry.load_suite
    monkeypatch.setattr(registry, "load_suite", lambda name: holder[0] if name == "line" else real(name))
    return holder


def test_run_refuses_a_broken_suite_before_writing(tmp_path, capsys, bad_suite):
    bad_suite.append(_variant(make_batch_env=lambda self, n, w=1: _UnseededEnv(n)))
    out = tmp_path / "out"
    code = main(["run", "--algo", "rl2", "--suite", "line", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "from the same seeds and actions" in err, err
    assert not out.exists()


def test_run_without_a_validation_split_asks_for_no_validation_references(tmp_path, capsys, bad_suite):
    """A suite whose reference_returns looks its split up (``self.tasks(split)``) must not be asked
    for the validation split of a run that holds out none."""

    def refs(self, split="test"):
        self.tasks(split)  # raises ValueError for a split the suite does not define
        return ReferenceReturns(-8.0, -1.0, "")

    bad_suite.append(_variant(reference_returns=refs))
    args = ["run", "--algo", "rl2", "--suite", "line", "--out", str(tmp_path), "--no-progress"]
    sets = ["--set", "budget_steps=240", "--set", "eval_every_steps=240", "--set", "meta_batch_size=4"]
    assert main(args + sets) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "line" / "rl2" / "seed0" / "config.json").read_text())
    assert set(config["reference_returns"]) == {"train", "test"}
    assert config["suite_source"] is None  # not registered through an entry point


def test_resume_refuses_a_suite_that_changed(tmp_path, capsys, bad_suite):
    bad_suite.append(Line())
    args = ["run", "--algo", "rl2", "--suite", "line", "--out", str(tmp_path), "--no-progress"]
    sets = ["--set", "budget_steps=240", "--set", "eval_every_steps=240", "--set", "meta_batch_size=4"]
    assert main(args + sets) == 0
    run = tmp_path / "line" / "rl2" / "seed0"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    bad_suite[0] = _variant(reference_returns=lambda self, split="test": ReferenceReturns(-9.0, -1.0, ""))
    longer = [s.replace("budget_steps=240", "budget_steps=480") for s in sets]
    code = main([*args, *longer, "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "reference_returns.test (random, oracle) (-8.0, -1.0) -> (-9.0, -1.0)" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_accepts_older_records_of_an_unchanged_suite(tmp_path, capsys, bad_suite):
    """Records written before references were kept per split (one object: the test split's), or with
    validation references in a run without a validation split (asked for before this check), or with
    another description: the same suite, resumed."""
    bad_suite.append(Line())
    args = ["run", "--algo", "rl2", "--suite", "line", "--out", str(tmp_path), "--no-progress"]
    budget = 240
    assert main([*args, "--set", f"budget_steps={budget}", "--set", "meta_batch_size=4"]) == 0
    path = tmp_path / "line" / "rl2" / "seed0" / "config.json"
    refs = json.loads(path.read_text())["reference_returns"]
    for older in (
        {"reference_returns": refs["test"]},
        {"reference_returns": {**refs, "validation": refs["test"]}},
        {"description": "reworded"},
    ):
        config = json.loads(path.read_text())
        if "description" in older:
            config["suite_info"]["description"] = older["description"]
        else:
            config["reference_returns"] = older["reference_returns"]
        path.write_text(json.dumps(config))
        budget += 240
        code = main([*args, "--set", f"budget_steps={budget}", "--set", "meta_batch_size=4", "--resume"])
        assert code == 0, (older, capsys.readouterr().err)


def test_resume_refuses_a_suite_whose_tasks_changed(tmp_path, capsys, bad_suite):
    """Same ids, same count, no references: only the recorded hash of the tasks tells."""
    plain = dict(reference_returns=lambda self, split="test": None)
    bad_suite.append(_variant(**plain))
    args = ["run", "--algo", "rl2", "--suite", "line", "--out", str(tmp_path), "--no-progress"]
    sets = ["--set", "budget_steps=240", "--set", "eval_every_steps=240", "--set", "meta_batch_size=4"]
    assert main(args + sets) == 0
    moved = [
        Task(t.task_id, t.split, {"goal": t.params["goal"] / 2}, t.description) for t in Line().tasks("test")
    ]
    bad_suite[0] = _variant(
        **plain, _make_tasks=lambda self, split: moved if split == "test" else Line._make_tasks(self, split)
    )
    longer = [s.replace("budget_steps=240", "budget_steps=480") for s in sets]
    code = main([*args, *longer, "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "suite_info.tasks_sha256" in err, err


def test_registry_refuses_bad_plugin_suites(monkeypatch):
    """A family mapping naming a suite that cannot be a directory, holding an instance instead of a
    factory, or a suite that cannot be built, or one name from two entry points: one RegistryError each."""

    class EP:
        def __init__(self, name, obj):
            self.name, self.value, self.obj, self.dist = name, f"fake:{name}", obj, None

        def load(self):
            if isinstance(self.obj, Exception):
                raise self.obj
            return self.obj

    class Abstract(Suite):  # make_batch_env and _make_tasks missing
        name = "abstract"

    eps = {
        "abstract": EP("abstract", Abstract),
        "line": EP("line", Line),
        "fam": EP("fam", lambda: {"line": Line}),
        "mixed": EP("mixed", lambda: {"good": Line, "../escape": Line, "instance": Line(), "evil\n": Line}),
        "boom": EP("boom", ImportError("no module named boom_dep")),
        "neither": EP("neither", lambda: 42),
    }
    monkeypatch.setattr(registry, "_entry_points", lambda group: eps)
    monkeypatch.setattr(registry, "_twice", lambda group: {})
    registry.load_suite.cache_clear()
    registry._suite_factories.cache_clear()
    try:
        with pytest.raises(registry.RegistryError, match="suite 'abstract' could not be built: TypeError"):
            registry.load_suite("abstract")
        # a family's bad members are left out, each said for its name; the good ones load
        assert isinstance(registry.load_suite("good"), Line)
        with pytest.raises(
            registry.RegistryError, match="names a suite '../escape': a suite name is letters"
        ):
            registry.load_suite("../escape")
        with pytest.raises(registry.RegistryError, match="maps 'instance' to .*not suite instances"):
            registry.load_suite("instance")
        with pytest.raises(registry.RegistryError, match="names a suite 'evil.n': a suite name"):
            registry.load_suite("evil\n")
        # an entry point that fails to import, or gives neither a Suite nor a mapping: one line each
        with pytest.raises(
            registry.RegistryError, match=r"suite entry point 'boom' \(fake:boom\) failed to load: "
        ):
            registry.load_suite("boom")
        with pytest.raises(registry.RegistryError, match="'neither' .* gave neither a Suite nor a mapping"):
            registry.load_suite("neither")
        said = " | ".join(registry.PROBLEMS)  # what `list` prints, one line each
        assert "suite 'line' is registered twice" in said and "names a suite '../escape'" in said, said
        # a family member that takes another entry point's suite name: refused, not resolved silently
        with pytest.raises(registry.RegistryError, match="suite 'line' is registered twice .*fake:fam"):
            registry.load_suite("line")
    finally:
        registry.load_suite.cache_clear()
        registry._suite_factories.cache_clear()
