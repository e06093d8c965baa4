import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

from benchmark.suites.point_nav import PointNav, PointNavEnv


def test_env_passes_gymnasium_checker():
    suite = PointNav()
    check_env(PointNavEnv(suite.tasks("train")[0]), skip_render_check=True)


def test_splits_seeded_disjoint_and_in_range():
    a, b = PointNav(), PointNav()
    for split in a.splits():
        assert a.tasks(split) == b.tasks(split)
    goals = {s: np.array([[t.params["goal_x"], t.params["goal_y"]] for t in a.tasks(s)]) for s in a.splits()}
    assert len(goals["train"]) == 1000 and len(goals["test"]) == 20 and len(goals["ood"]) == 20
    assert np.abs(goals["train"]).max() <= 0.5 and np.abs(goals["test"]).max() <= 0.5
    ood_norm = np.abs(goals["ood"]).max(axis=1)
    assert (ood_norm > 0.5).all() and (ood_norm <= 1.0).all()
    train = {tuple(g) for g in goals["train"]}
    assert not train & {tuple(g) for g in goals["test"]}


def test_batch_env_matches_single_env_and_formula():
    suite = PointNav()
    tasks = suite.tasks("test")[:3]
    batch = suite.make_batch_env(3)
    batch.set_tasks(tasks)
    batch.reset([0, 1, 2])
    singles = [PointNavEnv(t) for t in tasks]
    for env in singles:
        env.reset(seed=0)
    rng = np.random.default_rng(0)
    pos = np.zeros((3, 2))
    for _ in range(20):
        a = rng.uniform(-1.5, 1.5, size=(3, 2))  # normalised actions, some outside [-1, 1]
        res = batch.step(np.clip(a, -1, 1), np.ones(3, bool))
        for i, env in enumerate(singles):
            obs, r, *_ = env.step(0.1 * a[i])
            pos[i] += np.clip(0.1 * a[i], -0.1, 0.1)
            goal = np.array([tasks[i].params["goal_x"], tasks[i].params["goal_y"]])
            assert np.allclose(obs, pos[i], atol=1e-6) and np.allclose(res.obs[i], pos[i], atol=1e-6)
            assert np.isclose(r, -np.linalg.norm(pos[i] - goal)) and np.isclose(res.reward[i], r, atol=1e-5)


def test_reference_returns_oracle_beats_random():
    ref = PointNav().reference_returns()
    assert ref.oracle > ref.random
    assert -10 < ref.oracle < 0 and ref.random < -30
    # standing still (zero actions) on the test goals scores about 0.30 on this scale (README, SPEC)
    suite = PointNav()
    tasks = suite.tasks("test")
    env = suite.make_batch_env(len(tasks))
    env.set_tasks(tasks)
    env.reset([0] * len(tasks))
    still = sum(env.step(np.zeros((len(tasks), 2)), np.ones(len(tasks), bool)).reward for _ in range(100))
    assert 0.25 < ref.normalise(still.mean()) < 0.35


def test_each_split_is_normalised_on_its_own_references():
    """A goal-seeking policy played on the OOD goals scores 1 on the OOD scale (not ~0.96 on the test
    scale); a suite without OOD references reports OOD raw."""
    from benchmark.evaluate import headline, summarize
    from benchmark.suites.locomotion import HalfCheetahVel

    suite = PointNav()
    rows = []
    for split in ("test", "ood"):
        tasks = suite.tasks(split)
        env = suite.make_batch_env(len(tasks))
        env.set_tasks(tasks)
        pos = env.reset([0] * len(tasks))
        goals = np.array([[t.params["goal_x"], t.params["goal_y"]] for t in tasks])
        ret = np.zeros(len(tasks))
        for _ in range(suite.horizon):
            res = env.step(np.clip((goals - pos) / 0.1, -1, 1), np.ones(len(tasks), bool))
            pos, ret = res.obs, ret + res.reward
        rows += [{"split": split, "task_id": i, "episode": 5, "return": r} for i, r in enumerate(ret)]
    table = summarize(rows, suite).set_index("split")["normalized"]
    assert table["ood"] == pytest.approx(1.0, abs=0.01) and table["test"] == pytest.approx(1.0, abs=0.01)
    ood_on_test_scale = suite.reference_returns("test").normalise(np.mean(ret))
    assert abs(ood_on_test_scale - 1.0) > 0.02  # the defect this replaces
    assert headline(rows, suite, "ood")["normalized"] == pytest.approx(1.0, abs=0.01)
    cheetah = HalfCheetahVel()
    assert cheetah.reference_returns("ood") is None and cheetah.reference_returns("test") is not None
    raw = summarize([{**r, "split": "ood"} for r in rows[:3]], cheetah)
    assert raw.get("normalized", pd.Series([np.nan])).isna().all()
    assert "normalized" not in headline(rows, cheetah, "ood")
