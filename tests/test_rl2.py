"""RL²: acting step by step and re-running the GRU over recorded trials agree; it learns on point-nav."""

import numpy as np
import pytest
import torch

from algorithms.common.nets import GaussianHead
from algorithms.common.trial_inputs import trial_features
from algorithms.rl2 import RL2, RL2Config
from benchmark.cli import main
from benchmark.runner import HarnessContext
from benchmark.sampler import TrialSampler
from benchmark.suites.point_nav import PointNav
from tests.conftest import assert_acting_paths_agree, final_test_normalized, rollout_with_acting_path


def make(cfg: RL2Config | None = None) -> tuple[RL2, PointNav]:
    suite = PointNav()
    return RL2(suite.spec(), cfg or RL2Config(hidden_size=32, encoder_hidden=16), torch.device("cpu")), suite


def test_sampled_log_probs_and_values_equal_the_training_recomputation():
    learner, suite = make()
    batch = TrialSampler(suite).run(learner.make_agent(), suite.tasks("train")[:6], episodes=2, seed=0)
    with torch.no_grad():
        dist, value, _ = learner.net(trial_features(batch))
        log_prob = GaussianHead.log_prob(dist, batch.tensor("actions"))
    assert torch.allclose(log_prob, batch.tensor("log_prob"), atol=1e-4)
    assert torch.allclose(value, batch.tensor("value"), atol=1e-5)


def test_numpy_training_pass_equals_nn_gru_pass_and_its_gradients():
    """numpy_training (the PPO update's GRU pass in numpy) against nn.GRU on the same recorded trials."""
    learner, suite = make()
    batch = TrialSampler(suite).run(learner.make_agent(), suite.tasks("train")[:6], episodes=2, seed=0)
    feats, actions = trial_features(batch), batch.tensor("actions")
    results = []
    for numpy_training in (True, False):
        learner.net.cfg = RL2Config(hidden_size=32, encoder_hidden=16, numpy_training=numpy_training)
        learner.net.zero_grad()
        dist, value, _ = learner.net(feats)
        (GaussianHead.log_prob(dist, actions).sum() + value.square().sum()).backward()
        grads = [p.grad.clone() for p in learner.net.parameters() if p.grad is not None]
        results.append((value.detach(), grads))
    (v_np, g_np), (v_torch, g_torch) = results
    assert len(g_np) == len(g_torch) == len([p for p in learner.net.parameters() if p.requires_grad])
    torch.testing.assert_close(v_np, v_torch, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_np, g_torch, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_evaluation_agent_acts_with_the_mean_and_state_resets_per_trial():
    learner, suite = make()
    sampler = TrialSampler(suite)
    tasks = suite.tasks("test")[:3]
    torch.manual_seed(0)
    a = sampler.run(learner.make_agent(evaluation=True), tasks, episodes=2, seed=0)
    agent = learner.make_agent(evaluation=True)
    sampler.run(agent, suite.tasks("test")[5:8], episodes=2, seed=1)  # another trial first
    torch.manual_seed(123)  # a different action-noise stream: mean actions must not use it
    b = sampler.run(agent, tasks, episodes=2, seed=0)
    assert np.array_equal(a.actions, b.actions), "new_trial must clear the memory; mean actions draw no noise"
    torch.manual_seed(123)
    c = sampler.run(learner.make_agent(), tasks, episodes=2, seed=0)  # the training agent does sample
    assert not np.array_equal(a.actions, c.actions)


def test_train_step_changes_parameters_and_state_dict_round_trips(tmp_path):
    learner, suite = make(
        RL2Config(hidden_size=16, encoder_hidden=8, meta_batch_size=4, epochs=1, minibatches=2)
    )
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    before = [p.detach().clone() for p in learner.net.parameters()]
    stats = learner.train_step(ctx)
    assert ctx.env_steps == 4 * 2 * 100
    assert all(np.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.net.parameters(), strict=True))
    torch.save(learner.state_dict(), tmp_path / "s.pt")
    clone, _ = make(RL2Config(hidden_size=16, encoder_hidden=8, meta_batch_size=4, epochs=1, minibatches=2))
    clone.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for a, b in zip(clone.net.parameters(), learner.net.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_rl2_adapts_on_point_nav(tmp_path):
    """A short budget: the final test evaluation beats random clearly and episode 2 beats episode 1."""
    code = main(["run", "--algo", "rl2", "--suite", "point-nav", "--out", str(tmp_path), "--no-progress",
                 "--set", "budget_steps=2560000",  # 200 iterations
                 "--set", "eval_every_steps=10000000"])  # fmt: skip
    assert code == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    normalized = final_test_normalized(run)
    assert normalized.iloc[1] > normalized.iloc[0], normalized.round(3).to_dict()
    assert normalized.iloc[-1] >= 0.5, normalized.round(3).to_dict()


@pytest.mark.parametrize("encoder_hidden", [16, 0])
@pytest.mark.parametrize("evaluation", [False, True])
def test_numpy_acting_equals_torch_acting(encoder_hidden, evaluation):
    """The numpy step (CPU default) draws the same noise and matches the torch modules to float rounding."""
    out = {}
    for numpy_acting in (True, False):
        torch.manual_seed(0)
        learner, suite = make(
            RL2Config(hidden_size=32, encoder_hidden=encoder_hidden, numpy_acting=numpy_acting)
        )
        learner.net.obs_norm.update(torch.randn(500, suite.spec().obs_dim) * 2.0 + 0.5)  # as after training
        agent = learner.make_agent(evaluation)
        out[numpy_acting] = rollout_with_acting_path(agent, suite, tasks=4, episodes=2, seed=3)
        assert (agent.fast is not None) == numpy_acting
    assert_acting_paths_agree(out[True], out[False])
