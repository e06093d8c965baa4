"""Meta-World suites: official goal sets, the success metric, seeding, the suite family contract."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from benchmark.suites import metaworld as mw
from benchmark.suites.metaworld import (
    V3_ENV_NAMES,
    MetaWorldTaskEnv,
    make_suite,
    metaworld_suites,
    metaworld_task,
)

SEED = 1337
ML10_TEST = ["drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"]
ML45_TEST = ["bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3", "door-unlock-v3"]


def _rand_vecs(mw_tasks) -> list[list[float]]:
    return [pickle.loads(t.data)["rand_vec"].tolist() for t in mw_tasks]


def _check_official(suite, bench) -> None:
    """Our tasks are the benchmark's, in order, and rebuild to identical metaworld tasks."""
    for split, mw_tasks in (("train", bench.train_tasks), ("test", bench.test_tasks)):
        ours = suite.tasks(split)
        assert len(ours) == len(mw_tasks)
        assert [t.params["env_name"] for t in ours] == [t.env_name for t in mw_tasks]
        assert [t.params["rand_vec"] for t in ours] == _rand_vecs(mw_tasks)  # exact float equality
        for t in ours:
            assert json.loads(json.dumps(t.params)) == t.params
            assert t.split == split
        # the rebuilt metaworld task carries exactly the official data
        for t in ours[:: max(1, len(ours) // 7)]:
            mine = pickle.loads(metaworld_task(t).data)
            official = pickle.loads(mw_tasks[t.params["index"]].data)
            assert mine.keys() == official.keys()
            assert mine["env_cls"] is official["env_cls"]
            assert mine["partially_observable"] == official["partially_observable"] is True
            np.testing.assert_array_equal(mine["rand_vec"], official["rand_vec"])


def test_family_contract_is_cheap_and_complete():
    suites = metaworld_suites()
    for name in ("ml1-reach", "ml1-push", "ml1-pick-place", "ml10", "ml45"):
        assert name in suites and callable(suites[name])
    assert len(suites) == 52
    # listing neither builds a benchmark nor imports metaworld / mujoco
    code = (
        "import sys, time; t = time.perf_counter(); from benchmark.suites.metaworld import metaworld_suites; "
        "d = metaworld_suites(); dt = time.perf_counter() - t; "
        "assert 'metaworld' not in sys.modules and 'mujoco' not in sys.modules, 'imported'; "
        "assert dt < 2.0, dt; print(len(d))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "52"


def test_names_match_metaworld_classes():
    import metaworld

    assert list(V3_ENV_NAMES) == list(metaworld.ALL_V3_ENVIRONMENTS)
    expected = {"ml1-" + n.removesuffix("-v3") for n in metaworld.ALL_V3_ENVIRONMENTS} | {"ml10", "ml45"}
    assert set(metaworld_suites()) == expected


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as exc:
        make_suite("ml1-reech")
    msg = str(exc.value)
    assert "\n" not in msg and "ml1-reach" in msg and "ml10" in msg and "ml45" in msg
    from benchmark.suites.metaworld import MetaWorldML1

    with pytest.raises(ValueError, match="ml1-pick-place"):
        MetaWorldML1("pick-plaice")


def test_ml1_goals_official_and_disjoint():
    import metaworld

    suite = make_suite("ml1-reach")
    assert suite.splits() == ("train", "test")
    _check_official(suite, metaworld.ML1("reach-v3", seed=SEED))
    train = {tuple(t.params["rand_vec"]) for t in suite.tasks("train")}
    test = {tuple(t.params["rand_vec"]) for t in suite.tasks("test")}
    assert len(train) == len(test) == 50 and not train & test
    assert suite.tasks("test")[17].description == "reach-v3 goal 17"
    # a different seed would give different goals: the fixed seed is what pins them
    other = _rand_vecs(metaworld.ML1("reach-v3", seed=SEED + 7).train_tasks)
    assert other != [t.params["rand_vec"] for t in suite.tasks("train")]


def test_ml10_class_splits_and_protocol():
    import metaworld

    suite = make_suite("ml10")
    assert suite.test_classes() == ML10_TEST
    assert len(suite.train_classes()) == 10 and not set(suite.train_classes()) & set(ML10_TEST)
    _check_official(suite, metaworld.ML10(seed=SEED))
    assert len(suite.tasks("train")) == 500 and len(suite.tasks("test")) == 250
    assert {t.params["env_name"] for t in suite.tasks("test")} == set(ML10_TEST)

    assert (suite.family, suite.horizon, suite.episodes_per_trial) == ("metaworld", 500, 10)
    assert suite.eval_episodes == 13
    assert suite.has_success and (suite.obs_dim, suite.act_dim) == (39, 4)
    assert suite.headline_episodes() == [10, 11, 12]
    assert suite.reference_returns() is None

    for n, expected in ((1, 5), (5, 5), (12, 12), (20, 20), (1000, 250)):
        sub = suite.periodic_eval_tasks(n)
        assert len(sub) == expected
        assert {t.params["env_name"] for t in sub} == set(ML10_TEST)
        assert sub == suite.periodic_eval_tasks(n)  # fixed subset
    final = suite.final_eval_tasks()
    assert final["test"] == suite.tasks("test")
    assert len(final["train"]) == 50
    per_class = {c: sum(t.params["env_name"] == c for t in final["train"]) for c in suite.train_classes()}
    assert set(per_class.values()) == {5}

    summary = suite.summary()
    assert summary["splits"] == {"train": 500, "test": 250}
    assert summary["classes"]["test"] == [c.removesuffix("-v3") for c in ML10_TEST]


def _rollout_success(env, tasks, policy) -> np.ndarray:
    """Per-goal any-step success of one 500-step episode driven through a BatchEnv."""
    env.set_tasks(tasks)
    obs = env.reset(list(range(len(tasks))))
    goals = np.array([t.params["rand_vec"][-3:] for t in tasks])  # reach: goal = rand_vec[3:]
    success = np.zeros(len(tasks), bool)
    active = np.ones(len(tasks), bool)
    for _ in range(500):
        res = env.step(np.clip(policy(obs, goals), -1.0, 1.0), active)
        success |= res.success
        assert not res.terminated.any()
        obs = res.obs
    return success


@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")  # the expert's own gain warning
def test_success_metric_scripted_expert_vs_zero_actions():
    from metaworld.policies import SawyerReachV3Policy

    suite = make_suite("ml1-reach")
    tasks = suite.periodic_eval_tasks(5)
    assert len(tasks) == 5
    expert = SawyerReachV3Policy()

    def scripted(obs, goals):
        full = obs.astype(np.float64).copy()
        full[:, -3:] = goals  # the ML observation hides the goal; the expert needs it
        return np.stack([expert.get_action(o) for o in full])

    # two spawned workers: also checks make_env pickles and workers resolve tasks by themselves
    with suite.make_batch_env(5, num_workers=2) as env:
        assert (env.obs_dim, env.act_dim) == (39, 4)
        expert_success = _rollout_success(env, tasks, scripted)
        zero_success = _rollout_success(env, tasks, lambda obs, goals: np.zeros((len(obs), 4)))
    assert expert_success.mean() == 1.0, expert_success
    assert zero_success.mean() == 0.0, zero_success


def test_same_seeds_and_actions_reproduce_observations():
    reach = make_suite("ml1-reach").tasks("test")[3]
    push = make_suite("ml1-push").tasks("train")[8]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(120, 4))

    def run(env, task, seed):
        env.set_task(task)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in actions:
            obs, r, term, trunc, info = env.step(a)
            assert not term and not trunc and isinstance(info["success"], bool)
            out.append(obs)
        return np.array(out)

    mw._IDLE.clear()  # no parked raw env from another test: ``fresh`` builds its own
    fresh, used = MetaWorldTaskEnv(), MetaWorldTaskEnv()
    run(used, push, 5)  # history: another class and goal, then the same task as the fresh env
    run(used, reach, 99)
    a, b = run(fresh, reach, 7), run(used, reach, 7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (121, 39)
    np.testing.assert_array_equal(a[:, -3:], 0.0)  # goal hidden
    # reset(seed=) reaches metaworld's own seeding
    assert fresh.raw_env.np_random.bit_generator.state == used.raw_env.np_random.bit_generator.state
    np.testing.assert_array_equal(run(used, push, 5), run(fresh, push, 5))
    fresh.close()
    used.close()

    # through the batch env: same seeds + actions -> same observations and rewards
    def batch_run():
        with make_suite("ml1-push").make_batch_env(3) as env:
            env.set_tasks(make_suite("ml1-push").tasks("test")[:3])
            obs = [env.reset([1, 2, 3])]
            rew = []
            for a in actions[:60]:
                res = env.step(np.tile(a, (3, 1)).astype(np.float32), np.ones(3, bool))
                obs.append(res.obs)
                rew.append(res.reward)
            return np.array(obs), np.array(rew)

    (o1, r1), (o2, r2) = batch_run(), batch_run()
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(r1, r2)


@pytest.mark.filterwarnings("ignore:.*Box observation space m")  # unbounded Box, as metaworld's own
def test_truncation_only_at_the_horizon():
    from gymnasium.utils.env_checker import check_env

    env = MetaWorldTaskEnv(make_suite("ml1-reach").tasks("train")[0])
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    for t in range(1, 501):
        _, _, term, trunc, info = env.step(np.zeros(4))
        assert not term and trunc == (t == 500)
    with pytest.raises(ValueError):  # metaworld itself refuses step 501; the harness never asks
        env.step(np.zeros(4))
    env.reset(seed=1)  # and a reset makes the env usable again
    env.step(np.zeros(4))
    env.close()


@pytest.mark.slow
def test_ml45_class_splits_official():
    import metaworld

    suite = make_suite("ml45")
    assert suite.test_classes() == ML45_TEST
    assert len(suite.train_classes()) == 45 and not set(suite.train_classes()) & set(ML45_TEST)
    _check_official(suite, metaworld.ML45(seed=SEED))
    assert len(suite.tasks("train")) == 2250 and len(suite.tasks("test")) == 250
    assert len(suite.final_eval_tasks()["train"]) == 225
    assert {t.params["env_name"] for t in suite.periodic_eval_tasks(10)} == set(ML45_TEST)
    assert suite.summary()["splits"] == {"train": 2250, "test": 250}
