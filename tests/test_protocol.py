"""The harness contract (``metarl_protocol``): budgets, evaluation mode, gradients during adaptation,
task keys, isolated evaluation, process-layout independence, large learner state, every metric kept."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from algorithms.rl2 import RL2, RL2Config
from algorithms.trmrl import TrMRL, TrMRLConfig
from benchmark.config import HarnessConfig
from benchmark.evaluate import evaluate
from benchmark.results import ResultsError
from benchmark.runner import HarnessContext, RunId, Runner
from benchmark.sampler import TrialSampler
from benchmark.suites.point_nav import PointNav
from metarl_protocol import AdaptiveAgent, MetaLearner, SuiteSpec, Transition
from metarl_protocol.storage import AppendOnlyArrays

TINY_RL2 = RL2Config(hidden_size=16, encoder_hidden=8, meta_batch_size=4, epochs=1, minibatches=2)
TINY_TRMRL = TrMRLConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, meta_batch_size=3, epochs=1)


def run(tmp: Path, cls: type[MetaLearner], config: Any, suite=None, seed: int = 0, **harness: Any) -> Path:
    """One programmatic run (no CLI) into ``tmp``; returns its directory."""
    suite = suite or PointNav()
    settings = {"budget_steps": 4000, "eval_every_steps": 1500, "checkpoint_every_steps": 1000,
                "eval_tasks": 2, "final_eval_max_tasks": 2} | harness  # fmt: skip
    rid = RunId(algo=cls.name or "toy", suite=suite.name, seed=seed, profile="quick", out=tmp)
    Runner(rid, suite, cls, config, HarnessConfig(**settings), progress=False, resume=True).execute()
    return rid.dir


def read(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    progress = pd.read_csv(path / "progress.csv").drop(columns="wall_time_s")
    return progress, pd.read_csv(path / "eval.csv", keep_default_na=False)


# -- 1. budgets in environment steps -----------------------------------------------------------------
def test_methods_with_different_iteration_sizes_stop_at_one_budget_and_share_eval_marks(tmp_path):
    rl2 = run(tmp_path, RL2, TINY_RL2)  # 800 env steps per iteration
    trmrl = run(tmp_path, TrMRL, TINY_TRMRL)  # 600 env steps per iteration
    marks = {}
    for path, per_iteration in ((rl2, 800), (trmrl, 600)):
        progress, ev = read(path)
        config = json.loads((path / "config.json").read_text())
        assert config["budget_steps"] == 4000
        # stops at the first iteration boundary at or past the budget
        assert 4000 <= progress["env_steps"].iloc[-1] < 4000 + per_iteration
        assert progress["env_steps"].iloc[-2] < 4000
        # each evaluation runs at the first boundary at or past its mark
        for mark, rows in ev.groupby("mark"):
            steps = rows["env_steps"].iloc[0]
            assert steps >= mark and (mark == 4000 or steps - per_iteration < mark), (mark, steps)
        marks[path] = sorted(ev["mark"].unique())
    assert marks[rl2] == marks[trmrl] == [0, 1500, 3000, 4000]


def test_several_marks_crossed_in_one_iteration_are_each_evaluated(tmp_path):
    path = run(tmp_path, RL2, TINY_RL2, budget_steps=1600, eval_every_steps=300)  # 800-step iterations
    _, ev = read(path)
    assert sorted(ev["mark"].unique()) == [0, 300, 600, 900, 1200, 1500, 1600]
    assert ev.groupby("mark")["env_steps"].first().to_dict() == {
        0: 0, 300: 800, 600: 800, 900: 1600, 1200: 1600, 1500: 1600, 1600: 1600}  # fmt: skip


# -- 2. evaluation mode ------------------------------------------------------------------------------
def test_suite_spec_states_the_meta_test_trial_and_scored_episodes():
    from benchmark.registry import load_suite

    point = PointNav().spec()
    assert (point.eval_episodes, point.scored_episodes, point.episodes_per_trial) == (6, (5,), 2)
    ml1 = load_suite("ml1-reach").spec()
    assert (ml1.eval_episodes, ml1.scored_episodes, ml1.episodes_per_trial) == (13, (10, 11, 12), 10)


def test_evaluator_drives_the_evaluation_agent_and_refuses_a_training_agent():
    suite = PointNav()
    learner = RL2(suite.spec(), TINY_RL2, torch.device("cpu"))
    sampler = TrialSampler(suite)
    with pytest.raises(ValueError, match="evaluation agent"):
        evaluate(learner.make_agent(), sampler, suite.tasks("test")[:2], split="test", iteration=0,
                 env_steps=0, mark=0, seed=0)  # fmt: skip
    rows = evaluate(learner.make_agent(evaluation=True), sampler, suite.tasks("test")[:2], split="test",
                    iteration=0, env_steps=0, mark=0, seed=0)  # fmt: skip
    assert len(rows) == 2 * 6 and {r["mark"] for r in rows} == {0}


# -- 3. gradient steps on what an agent observed inside a trial ---------------------------------------
class InnerStepAgent(AdaptiveAgent):
    """A linear policy that takes one gradient step on the log-probabilities of the episode it played."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def new_trial(self, task_keys):
        self.params = self.weight.clone().requires_grad_(True)
        self.log_probs: list[torch.Tensor] = []
        self.rewards: list[np.ndarray] = []
        self.steps_taken = 0

    def act(self, obs):
        mean = torch.as_tensor(obs) @ self.params.detach()
        action = mean + 0.1 * torch.randn_like(mean)
        self.actions = action
        self.obs = torch.as_tensor(obs)
        return action.numpy(), {}

    def observe(self, tr: Transition):
        self.log_probs.append((self.obs, self.actions))  # tensors made here must survive to end_episode
        self.rewards.append(tr.reward)

    def end_episode(self):
        # each step's tensors enter the graph as they are (an inference tensor would raise here)
        log_prob = -sum((((a - o @ self.params) / 0.1) ** 2).sum() for o, a in self.log_probs)
        (grad,) = torch.autograd.grad(log_prob * float(np.sum(self.rewards)), self.params)
        self.params = (self.params + 1e-4 * grad).detach().requires_grad_(True)
        self.log_probs, self.rewards = [], []
        self.steps_taken += 1


def test_an_agent_can_take_gradient_steps_on_what_it_observed():
    suite = PointNav()
    agent = InnerStepAgent(torch.zeros(2, 2))
    TrialSampler(suite).run(agent, suite.tasks("train")[:4], episodes=2, seed=0)
    assert agent.steps_taken == 2 and not torch.equal(agent.params.detach(), torch.zeros(2, 2))


# -- 4. task identity ----------------------------------------------------------------------------------
def test_meta_test_rows_get_fresh_keys_never_task_ids():
    from algorithms.rl2 import RL2Agent

    seen: list[np.ndarray] = []

    class KeyedAgent(RL2Agent):
        def new_trial(self, task_keys):
            seen.append(np.asarray(task_keys).copy())
            super().new_trial(task_keys)

    suite = PointNav()
    learner = RL2(suite.spec(), TINY_RL2, torch.device("cpu"))
    agent = KeyedAgent(learner.net, suite.spec(), torch.device("cpu"), evaluation=True)
    evaluate(agent, TrialSampler(suite), suite.tasks("test")[:3], split="test", iteration=0, env_steps=0,
             mark=0, seed=0)  # fmt: skip
    keys = np.concatenate(seen)
    assert len(set(keys.tolist())) == 3 and (keys < 0).all()  # distinct, and never a task id (ids >= 0)


# -- 5. evaluation cannot touch training ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["rl2", "noisy-eval"])
def test_frequent_evaluations_train_exactly_like_rare_ones(tmp_path, method):
    cls, cfg = (RL2, TINY_RL2) if method == "rl2" else (NoisyEvalReplay, ReplayConfig())
    rare = run(tmp_path / "rare", cls, cfg, eval_every_steps=10_000)
    often = run(tmp_path / "often", cls, cfg, eval_every_steps=400)
    (p_rare, e_rare), (p_often, e_often) = read(rare), read(often)
    pd.testing.assert_frame_equal(p_rare, p_often)
    assert e_often["mark"].nunique() > e_rare["mark"].nunique() == 2
    final = lambda e: e[e["mark"] == 4000].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(final(e_rare), final(e_often))


def test_train_step_cannot_sample_test_tasks():
    suite = PointNav()
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    learner = RL2(suite.spec(), TINY_RL2, torch.device("cpu"))
    with pytest.raises(ValueError, match="training tasks"):
        ctx.sample_trials(learner.make_agent(), suite.tasks("test")[:2])
    with pytest.raises(ValueError, match="evaluation agent"):
        ctx.sample_trials(learner.make_agent(evaluation=True), suite.tasks("train")[:2])


# -- 6. numbers independent of the process layout -----------------------------------------------------
def test_num_workers_1_2_3_give_identical_csvs_on_halfcheetah_vel(tmp_path):
    from benchmark.suites.locomotion import HalfCheetahVel

    cfg = RL2Config(hidden_size=8, encoder_hidden=8, meta_batch_size=7, epochs=1, minibatches=2)
    frames = []
    for workers in (1, 2, 3):
        path = run(tmp_path / str(workers), RL2, cfg, suite=HalfCheetahVel(), budget_steps=2800,
                   eval_every_steps=2800, eval_tasks=3, final_eval_max_tasks=3,
                   num_workers=workers)  # fmt: skip
        frames.append(read(path))
    for progress, ev in frames[1:]:
        pd.testing.assert_frame_equal(frames[0][0], progress)
        pd.testing.assert_frame_equal(frames[0][1], ev)


# -- 7. large learner state on disk, and state that would not load -----------------------------------------
@dataclass
class ReplayConfig:
    trials: int = 2


class ReplayLearner(MetaLearner):
    """Keeps every transition in an on-disk replay and fits a mean action to it (a toy with big state)."""

    name = "replay-toy"
    Config = ReplayConfig

    def __init__(self, spec: SuiteSpec, config: ReplayConfig, device, storage_dir=None) -> None:
        super().__init__(spec, config, device, storage_dir)
        self.replay = AppendOnlyArrays(
            storage_dir and storage_dir / "replay",
            {"obs": ((spec.obs_dim,), np.float32), "reward": ((), np.float32)},
        )
        self.bias = torch.zeros(spec.act_dim)

    def make_agent(self, evaluation: bool = False) -> AdaptiveAgent:
        learner = self

        class Agent(AdaptiveAgent):
            def new_trial(self, task_keys):
                self.n = len(task_keys)

            def act(self, obs):
                noise = 0.0 if self.evaluation else 0.3 * torch.randn(self.n, learner.spec.act_dim)
                return (learner.bias + noise).numpy(), {}

            def observe(self, tr):
                pass

        agent = Agent()
        agent.evaluation = evaluation
        return agent

    def train_step(self, ctx) -> dict[str, float]:
        batch = ctx.sample_trials(self.make_agent(), ctx.sample_tasks(self.config.trials))
        self.replay.append(obs=batch.obs[batch.valid], reward=batch.rewards[batch.valid])
        sample = self.replay.get("obs", ctx.rng.integers(0, len(self.replay), 64))
        self.bias = torch.as_tensor(sample.mean(0)).clamp(-1, 1)
        metrics = {"replay_rows": float(len(self.replay))}
        if len(self.replay) > 800:
            metrics["late_metric"] = float(self.bias.sum())  # a metric that first appears later
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"bias": self.bias.clone(), "replay": self.replay.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bias = state["bias"].clone()
        self.replay.restore(int(state["replay"]))


class NoisyEvalReplay(ReplayLearner):
    """Its evaluation agent explores with torch's generator too (as PEARL's posterior sampling does)."""

    name = "noisy-eval-toy"

    def make_agent(self, evaluation: bool = False) -> AdaptiveAgent:
        agent = super().make_agent(False)
        agent.evaluation = evaluation
        return agent


class CrashingReplay(ReplayLearner):
    """Dies in its 6th iteration: after the checkpoint at 1,600 steps, with 400 more rows on disk."""

    def train_step(self, ctx):
        if ctx.env_steps >= 2000:
            self.replay.state()  # the rows appended since the checkpoint reach the files
            raise KeyboardInterrupt("killed")
        return super().train_step(ctx)


def test_replay_on_disk_checkpoint_writes_lengths_and_resume_is_exact(tmp_path):
    whole = run(tmp_path / "whole", ReplayLearner, ReplayConfig(), checkpoint_every_steps=800)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", CrashingReplay, ReplayConfig(), checkpoint_every_steps=800)
    killed = tmp_path / "killed" / "point-nav" / "replay-toy" / "seed0"
    ckpt = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert ckpt["learner"]["replay"] == ckpt["env_steps"] == 1600  # the replay enters only as its length
    assert (killed / "storage" / "replay" / "obs.bin").stat().st_size > 1600 * 2 * 4  # rows after it
    resumed = run(tmp_path / "killed", ReplayLearner, ReplayConfig(), checkpoint_every_steps=800)
    (p_whole, e_whole), (p_res, e_res) = read(whole), read(resumed)
    pd.testing.assert_frame_equal(p_whole, p_res)
    pd.testing.assert_frame_equal(e_whole, e_res)
    assert (resumed / "storage" / "replay" / "obs.bin").stat().st_size == 4000 * 2 * 4


def test_progress_csv_keeps_a_metric_that_first_appears_later(tmp_path):
    progress, _ = read(run(tmp_path, ReplayLearner, ReplayConfig()))
    assert "late_metric" in progress.columns
    # 400 steps per iteration: the replay passes 800 rows in the 3rd of 10 iterations
    assert progress["late_metric"].isna().sum() == 2 and progress["late_metric"].notna().sum() == 8


def test_state_that_would_not_load_fails_at_the_first_checkpoint_naming_the_key(tmp_path):
    class NumpyState(ReplayLearner):
        def state_dict(self):
            return super().state_dict() | {"stats": {"running": np.zeros(3)}}

    with pytest.raises(ResultsError, match=r"learner\.stats\.running"):
        run(tmp_path, NumpyState, ReplayConfig())
    assert not (tmp_path / "point-nav" / "replay-toy" / "seed0" / "checkpoint.pt").exists()


# -- tuning hygiene: a validation split of the training tasks --------------------------------------------
def test_validation_run_holds_out_training_tasks_and_never_touches_test_or_ood(tmp_path):
    from benchmark.runner import validation_split

    suite = PointNav()
    pool, held = validation_split(suite, 20)
    assert len(held) == 20 and len(pool) == len(suite.tasks("train")) - 20
    assert not {t.task_id for t in held} & {t.task_id for t in pool}
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"), pool)
    learner = RL2(suite.spec(), TINY_RL2, torch.device("cpu"))
    with pytest.raises(ValueError, match="held out"):
        ctx.sample_trials(learner.make_agent(), held[:2])
    sampled = {t.task_id for _ in range(50) for t in ctx.sample_tasks(8)}
    assert sampled and not sampled & {t.task_id for t in held}

    _, ev = read(run(tmp_path, RL2, TINY_RL2, validation_tasks=20, final_eval_max_tasks=0))
    assert set(ev["split"]) == {"validation"}
    assert set(ev["task_id"]) <= {t.task_id for t in held} and ev["task_id"].nunique() == 20


# -- 8. threads: the update with update_threads, acting with torch_threads ---------------------------------
class ThreadsSeen(ReplayLearner):
    """Records the intra-op threads (torch, numpy's BLAS) of its update and of its agent's acting."""

    seen: dict[str, set[tuple[int, int]]] = {"update": set(), "act": set()}

    @staticmethod
    def now() -> tuple[int, int]:
        from threadpoolctl import threadpool_info

        blas = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
        assert len(blas) == 1
        return torch.get_num_threads(), blas.pop()

    def make_agent(self, evaluation: bool = False) -> AdaptiveAgent:
        agent = super().make_agent(evaluation)
        act = agent.act

        def recording_act(obs):
            if not agent.evaluation:
                ThreadsSeen.seen["act"].add(ThreadsSeen.now())
            return act(obs)

        agent.act = recording_act
        return agent

    def train_step(self, ctx):
        ThreadsSeen.seen["update"].add(self.now())
        metrics = super().train_step(ctx)
        ThreadsSeen.seen["update"].add(self.now())
        return metrics


def test_update_threads_default_is_torch_threads_whatever_the_layout():
    from benchmark.runner import update_threads

    assert update_threads(HarnessConfig(num_workers=2)) == 1  # safe where other processes hold the cores
    assert update_threads(HarnessConfig(num_workers=3, torch_threads=2)) == 2
    assert update_threads(HarnessConfig(num_workers=1, update_threads=2)) == 2  # as set
    assert TrMRL.parallel_update and not RL2.parallel_update  # what the perf rows measure with 2


def test_train_step_updates_with_update_threads_and_samples_with_torch_threads(tmp_path):
    ThreadsSeen.seen = {"update": set(), "act": set()}
    path = run(tmp_path, ThreadsSeen, ReplayConfig(), update_threads=2, torch_threads=1)
    assert ThreadsSeen.seen == {"update": {(2, 2)}, "act": {(1, 1)}}  # BLAS follows torch's count
    assert torch.get_num_threads() == 1  # the run's acting count after train_step
    assert json.loads((path / "config.json").read_text())["run"]["update_threads"] == 2


def test_resume_keeps_the_recorded_update_threads_and_refuses_another(tmp_path):
    from benchmark.runner import ResumeMismatchError

    def runner(**harness: Any) -> Runner:
        settings = {"budget_steps": 4000, "eval_every_steps": 1500, "checkpoint_every_steps": 1000,
                    "eval_tasks": 2, "final_eval_max_tasks": 2} | harness  # fmt: skip
        rid = RunId(algo="replay-toy", suite="point-nav", seed=0, profile="quick", out=tmp_path)
        return Runner(rid, PointNav(), ThreadsSeen, ReplayConfig(), HarnessConfig(**settings), resume=True)

    first = runner(update_threads=2)
    first.execute()
    config = first.dir / "config.json"
    assert runner().run_cfg.update_threads == 2  # left at 0: the run's own count, whatever the layout
    assert runner(num_workers=3).run_cfg.update_threads == 2
    with pytest.raises(ResumeMismatchError, match="update_threads 2 -> 3"):
        runner(update_threads=3)
    record = json.loads(config.read_text())
    del record["run"]["update_threads"]  # a run made before the setting: it updated at torch_threads
    config.write_text(json.dumps(record))
    assert runner().run_cfg.update_threads == 1
    with pytest.raises(ResumeMismatchError, match="update_threads 1 -> 2"):
        runner(update_threads=2)


@pytest.mark.parametrize(
    "algo, bad",
    [
        ("maml", {"activation": "sigmoid"}),
        ("pearl", {"eval_prior_episodes": 0, "eval_context_all_episodes": False}),
        ("trmrl", {"d_model": 30, "n_heads": 4}),
        ("varibad", {"policy_hidden": ()}),
    ],
)
def test_a_learner_built_directly_refuses_what_validate_refuses(algo, bad):
    """``MetaLearner.__init__`` runs the method's ``validate``: a learner built without the harness raises the
    same one-line ValueError, not an assertion or a crash deep in its networks."""
    from benchmark.registry import load_algorithm
    from metarl_protocol.settings import check_settings

    cls = load_algorithm(algo)
    config = cls.Config(**bad)
    with pytest.raises(ValueError) as refused:  # the harness: declared ranges, then the method's validate
        check_settings(config)
        cls.validate(config, PointNav().spec())
    with pytest.raises(ValueError, match=re.escape(str(refused.value))):
        cls(PointNav().spec(), config, torch.device("cpu"))


def test_settings_messages_say_whether_the_user_or_the_method_set_the_value():
    """A bad ``--set`` value is the user's; a default outside the default rule is the method author's:
    the message names the config field and says how to declare its range. A learner built directly checks
    the declared ranges too, as the harness does (a plugin could pass check_learner, then fail in run)."""
    from benchmark.config import ConfigError, resolve
    from metarl_protocol import setting

    @dataclass
    class AuthorConfig:
        init_log_std: float = -0.5  # no declared range: the default rule (finite, >= 0) refuses it
        lr: float = setting(1e-3, low=0.0, low_open=True)

    with pytest.raises(ConfigError) as err:
        resolve("quick", "point-nav", AuthorConfig, {}, {})
    assert str(err.value).startswith(
        "AuthorConfig.init_log_std=-0.5: expected >= 0; the field declares no range"
    )
    assert "metarl_protocol.settings.setting(default, low=..., high=...)" in str(err.value)
    with pytest.raises(ConfigError, match=r"^--set lr=0.0: expected > 0$"):
        resolve("quick", "point-nav", RL2Config, {}, {"lr": "0"})
    with pytest.raises(ValueError, match=r"^RL2Config.lr=-1.0: expected > 0$"):
        RL2(PointNav().spec(), RL2Config(lr=-1.0), torch.device("cpu"))

    @dataclass
    class ArrayConfig:  # a field no range applies to passes, whatever its type (an array compared to ""
        scale: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(2))  # raised before)

    assert resolve("quick", "point-nav", ArrayConfig, {}, {})[1].scale.shape == (2,)


def test_both_csv_logs_reach_the_disk_before_each_checkpoint(tmp_path, monkeypatch):
    """fsync of progress.csv and eval.csv before every checkpoint: after a machine crash a checkpoint never
    outlives the rows it needs (resume refuses a checkpoint whose records fall short)."""
    from benchmark.results import CsvLog

    events: list[str] = []
    sync, checkpoint = CsvLog.sync, Runner._checkpoint
    monkeypatch.setattr(CsvLog, "sync", lambda self: (events.append(f"sync {self.path.name}"), sync(self))[1])
    monkeypatch.setattr(
        Runner, "_checkpoint", lambda self, *a: (events.append("checkpoint"), checkpoint(self, *a))[1]
    )
    run(tmp_path, RL2, TINY_RL2)
    marks = [i for i, e in enumerate(events) if e == "checkpoint"]
    assert len(marks) >= 3  # every 1,000 of 4,000 steps
    for i in marks:
        assert sorted(events[i - 2 : i]) == ["sync eval.csv", "sync progress.csv"], events
