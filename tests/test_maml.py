"""MAML-TRPO: the inner step, the second-order meta-gradient, the baseline, TRPO steps, per-task isolation."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from algorithms.maml import (
    MAML,
    MAMLConfig,
    MetaObjective,
    TaskData,
    adapt,
    baseline_features,
    expand,
    few_shot_returns,
    fit_linear_baseline,
    gaussian_log_prob,
    inner_loss,
    per_task_forward,
    task_data,
    trpo_step,
)
from benchmark.check import check_learner
from benchmark.cli import main
from benchmark.runner import HarnessContext
from benchmark.sampler import TrialSampler
from benchmark.suites.point_nav import PointNav, PointNavBatchEnv
from metarl_protocol import SuiteSpec, Transition
from tests.conftest import final_test_normalized

TINY = MAMLConfig(hidden_sizes=(8,), meta_batch_size=3, rollouts_per_task=2, cg_iters=3)


def spec(**kw) -> SuiteSpec:
    base = dict(obs_dim=2, act_dim=2, horizon=5, episodes_per_trial=1, eval_episodes=6, scored_episodes=(5,),
                family="point-nav")  # fmt: skip
    return SuiteSpec(**(base | kw))


def random_data(U: int, N: int, obs_dim: int, act_dim: int, seed: int, dtype=torch.float32) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(U, N, generator=g) > 0.2).to(dtype)
    return TaskData(
        obs=torch.randn(U, N, obs_dim, generator=g, dtype=dtype),
        actions=torch.randn(U, N, act_dim, generator=g, dtype=dtype),
        advantages=torch.randn(U, N, generator=g, dtype=dtype) * mask,
        mask=mask,
        returns=torch.zeros(U, dtype=dtype),
    )


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_stacked_forward_equals_vmap_of_functional_call(activation):
    """The acting / objective path (batched matmuls over stacked parameter sets) is the policy's own
    forward per set: values and gradients, for distinct and for expanded (shared) parameter sets."""
    from torch.func import functional_call

    cfg = MAMLConfig(hidden_sizes=(8, 6), activation=activation, init_std=0.6)
    learner = MAML(spec(obs_dim=3, act_dim=2), cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    meta = {k: v.detach() for k, v in learner.policy.named_parameters()}
    distinct = {
        k: (v + 0.3 * torch.randn(4, *v.shape, generator=g)).requires_grad_(True) for k, v in meta.items()
    }
    obs = torch.randn(4, 5, 3, generator=g)
    for params in (distinct, expand(meta, 4)):
        mean, log_std = per_task_forward(learner.policy, params, obs)
        ref_mean, ref_log_std = vmap(lambda p, o: functional_call(learner.policy, p, (o,)))(params, obs)
        assert mean.shape == (4, 5, 2) and log_std.shape == (4, 2)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(log_std, ref_log_std)
    (mean, _), (ref_mean, _) = (
        per_task_forward(learner.policy, distinct, obs),
        vmap(lambda p, o: functional_call(learner.policy, p, (o,)))(distinct, obs),
    )
    w = torch.randn(4, 5, 2, generator=g)
    got = torch.autograd.grad((mean * w).sum(), list(distinct.values()), allow_unused=True)
    ref = torch.autograd.grad((ref_mean * w).sum(), list(distinct.values()), allow_unused=True)
    for a, b in zip(got, ref, strict=True):
        if b is None:  # log_std does not reach the mean
            assert a is None or torch.all(a == 0)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inner_step_equals_the_hand_derived_policy_gradient_step():
    """Linear-Gaussian policy mu = W o + b, std = exp(s): grad of -(1/N) sum A log pi, derived by hand."""
    cfg = MAMLConfig(hidden_sizes=(), init_std=0.7, inner_lr=0.3)
    learner = MAML(spec(), cfg, torch.device("cpu"))
    with torch.no_grad():
        learner.policy.head.mean.weight.copy_(torch.tensor([[0.5, -0.2], [0.1, 0.3]]))
        learner.policy.head.mean.bias.copy_(torch.tensor([0.05, -0.1]))
    data = random_data(2, 7, 2, 2, seed=0)
    params = {k: v.detach() for k, v in learner.policy.named_parameters()}
    adapted = adapt(learner.policy, expand(params, 2), data, cfg.inner_lr)
    W, b, s = params["head.mean.weight"], params["head.mean.bias"], params["head.log_std"]
    var = torch.exp(2 * s)
    for i in range(2):
        o, a, A, m = data.obs[i], data.actions[i], data.advantages[i], data.mask[i]
        n = m.sum()
        diff = a - (o @ W.T + b)  # (N, 2)
        coef = (A * m).unsqueeze(-1)  # (N, 1)
        # d log pi / d mu = (a - mu) / var ; d log pi / d s = (a - mu)^2 / var - 1
        grad_W = -(coef * diff / var).T @ o / n
        grad_b = -(coef * diff / var).sum(0) / n
        grad_s = -(coef * (diff.square() / var - 1)).sum(0) / n
        torch.testing.assert_close(adapted["head.mean.weight"][i], W - 0.3 * grad_W)
        torch.testing.assert_close(adapted["head.mean.bias"][i], b - 0.3 * grad_b)
        torch.testing.assert_close(adapted["head.log_std"][i], s - 0.3 * grad_s)


def tiny_objective(seed: int = 0) -> tuple[MAML, MetaObjective]:
    torch.manual_seed(seed)
    cfg = MAMLConfig(hidden_sizes=(4,), inner_lr=0.5, init_std=0.8)
    learner = MAML(spec(), cfg, torch.device("cpu"))
    learner.policy.double()
    with torch.no_grad():  # a visible mean network so the second-order terms are not negligible
        learner.policy.head.mean.weight.normal_(0, 0.5)
    pre = random_data(3, 6, 2, 2, seed=1, dtype=torch.float64)
    post = random_data(3, 6, 2, 2, seed=2, dtype=torch.float64)
    return learner, MetaObjective(learner.policy, pre, post, cfg)


def test_meta_gradient_through_the_inner_step_matches_finite_differences():
    learner, obj = tiny_objective()
    theta = obj.flat_params().detach().clone()
    # away from theta_old so the ratio and the KL are not at their stationary point
    theta = theta + 0.05 * torch.randn(
        theta.shape, generator=torch.Generator().manual_seed(3), dtype=theta.dtype
    )
    t = theta.clone().requires_grad_(True)
    surrogate, kl = obj.terms(t)
    g_surr, g_kl = torch.autograd.grad([surrogate], [t])[0], torch.autograd.grad(obj.terms(t)[1], [t])[0]
    eps = 1e-6
    fd_surr, fd_kl = torch.zeros_like(theta), torch.zeros_like(theta)
    with torch.no_grad():
        for j in range(theta.numel()):
            e = torch.zeros_like(theta)
            e[j] = eps
            sp, kp = obj.terms(theta + e)
            sm, km = obj.terms(theta - e)
            fd_surr[j], fd_kl[j] = (sp - sm) / (2 * eps), (kp - km) / (2 * eps)
    torch.testing.assert_close(g_surr, fd_surr, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(g_kl, fd_kl, rtol=1e-5, atol=1e-8)
    # the second-order term matters here: a first-order gradient (inner gradient held fixed) differs
    names = obj.names
    params = obj.unflatten(theta)
    inner_g = vmap(grad(lambda p, o, a, adv, m: inner_loss(learner.policy, p, o, a, adv, m)))(
        expand(params, 3), obj.pre.obs, obj.pre.actions, obj.pre.advantages, obj.pre.mask
    )
    t2 = theta.clone().requires_grad_(True)
    p2 = obj.unflatten(t2)
    adapted = {k: p2[k].unsqueeze(0) - 0.5 * inner_g[k].detach() for k in names}
    mean, log_std = per_task_forward(learner.policy, adapted, obj.post.obs)
    lp = gaussian_log_prob(mean, log_std.unsqueeze(1), obj.post.actions)
    fo = ((torch.exp(lp - obj.old_log_prob) * obj.post.advantages * obj.post.mask).sum(1) / obj.n_post).mean()
    g_fo = torch.autograd.grad(fo, t2)[0]
    assert (g_fo - g_surr).norm() > 1e-3 * g_surr.norm()


def test_fisher_vector_product_equals_the_kl_hessian_through_the_inner_step():
    _, obj = tiny_objective()
    theta = obj.flat_params().detach().clone().requires_grad_(True)
    kl_grad = torch.autograd.grad(obj.terms(theta)[1], theta, create_graph=True)[0]
    fvp = obj.fisher_vector_product(theta.detach())
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=g, dtype=theta.dtype)
        hv = torch.autograd.grad(kl_grad @ v, theta, retain_graph=True)[0]
        torch.testing.assert_close(fvp(v), hv, rtol=1e-9, atol=1e-12)


def test_baseline_fit_equals_numpy_lstsq_on_the_same_features():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 3, 20, 2, generator=g) * 3  # (U, E, H, D)
    feats = baseline_features(obs).reshape(2, 60, -1)
    assert feats.shape[-1] == 2 * 2 + 4
    returns = torch.randn(2, 60, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 60, generator=g) > 0.3
    reg = 1e-5
    coef = fit_linear_baseline(feats, returns, mask, reg)
    for i in range(2):
        X = feats[i][mask[i]].numpy()
        y = returns[i][mask[i]].numpy()
        # ridge regression as least squares on the augmented system [X; sqrt(reg) I] c = [y; 0]
        X_aug = np.vstack([X, math.sqrt(reg) * np.eye(X.shape[1])])
        y_aug = np.concatenate([y, np.zeros(X.shape[1])])
        expected = np.linalg.lstsq(X_aug, y_aug, rcond=None)[0]
        np.testing.assert_allclose(coef[i].numpy(), expected, rtol=1e-6, atol=1e-8)
    # the features: clip(o), clip(o)^2, t/100, (t/100)^2, (t/100)^3, 1
    o = obs[0, 0, 7].double().clamp(-10, 10)
    t = 7 / 100
    expected_row = torch.cat([o, o**2, torch.tensor([t, t**2, t**3, 1.0], dtype=torch.float64)])
    torch.testing.assert_close(baseline_features(obs)[0, 0, 7], expected_row)


def test_advantages_are_returns_minus_the_refit_baseline():
    cfg = MAMLConfig(normalize_advantages=False, gamma=0.9)
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(1, 4, 10, 2, generator=g), torch.randn(1, 4, 10, 2, generator=g)
    rew = torch.randn(1, 4, 10, generator=g)
    valid = torch.ones(1, 4, 10, dtype=torch.bool)
    data = task_data(obs, act, rew, valid, torch.ones(1, 4, dtype=torch.bool), cfg)
    G = torch.zeros(1, 4, 10, dtype=torch.float64)
    run = torch.zeros(1, 4, dtype=torch.float64)
    for t in range(9, -1, -1):
        run = rew[..., t].double() + 0.9 * run
        G[..., t] = run
    feats = baseline_features(obs).reshape(1, 40, -1)
    coef = fit_linear_baseline(feats, G.reshape(1, 40), valid.reshape(1, 40), cfg.baseline_reg)
    b = (feats[0] @ coef[0]).float()
    torch.testing.assert_close(data.advantages[0], G.reshape(40).float() - b, rtol=1e-4, atol=1e-4)


def test_every_accepted_trpo_step_keeps_the_kl_bound_and_improves_the_surrogate():
    accepted = 0
    for seed in range(4):
        learner, obj = tiny_objective(seed)
        max_kl = 0.01
        cfg = replace(learner.config, max_kl=max_kl)
        theta_old = obj.flat_params().detach().clone()
        theta, stats = trpo_step(obj, cfg)
        with torch.no_grad():
            s_old, kl_old = obj.terms(theta_old)
            s_new, kl_new = obj.terms(theta)
        assert float(kl_old) < 1e-12
        if stats["accepted"]:
            accepted += 1
            assert float(kl_new) <= max_kl
            assert float(s_new) > float(s_old)
            assert not torch.equal(theta, theta_old)
        else:
            assert torch.equal(theta, theta_old)
    assert accepted >= 3


def test_train_step_metrics_respect_the_trust_region():
    suite = PointNav()
    learner = MAML(suite.spec(), TINY, torch.device("cpu"))
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    before = [p.detach().clone() for p in learner.policy.parameters()]
    for _ in range(3):
        stats = learner.train_step(ctx)
        assert stats["kl"] <= TINY.max_kl
        if stats["accepted"]:
            assert stats["surrogate_after"] > stats["surrogate_before"]
    assert ctx.env_steps == 3 * 2 * TINY.meta_batch_size * TINY.rollouts_per_task * suite.horizon
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters(), strict=True))


def test_adapting_one_task_never_changes_another_tasks_parameters():
    learner = MAML(spec(), MAMLConfig(hidden_sizes=(8,)), torch.device("cpu"))
    params = expand({k: v.detach() for k, v in learner.policy.named_parameters()}, 3)
    a = random_data(3, 6, 2, 2, seed=0)
    b = random_data(3, 6, 2, 2, seed=0)
    b.obs[0] += 1.0  # task 0's data changes
    b.advantages[0] = -b.advantages[0]
    out_a = adapt(learner.policy, params, a, 0.5)
    out_b = adapt(learner.policy, params, b, 0.5)
    for k in out_a:
        assert not torch.equal(out_a[k][0], out_b[k][0])
        torch.testing.assert_close(out_a[k][1:], out_b[k][1:], rtol=0, atol=0)


def drive(agent, goals: np.ndarray, keys: np.ndarray, episodes: int, horizon: int, seed: int) -> np.ndarray:
    """Run ``agent`` on point-nav goals by hand (one agent, no clones); returns actions (B, E*H, 2)."""
    torch.manual_seed(seed)
    env = PointNavBatchEnv(len(goals))
    env.goals = goals.astype(np.float64)
    agent.new_trial(keys)
    out = []
    for _ in range(episodes):
        obs = env.reset([0] * len(goals))
        for h in range(horizon):
            with torch.no_grad():
                action, _ = agent.act(obs)
            active = np.ones(len(goals), bool)
            res = env.step(action, active)
            done = np.full(len(goals), h == horizon - 1)
            tr = Transition(obs, np.clip(action, -1, 1), res.reward, res.obs, res.terminated, done, active)
            with torch.no_grad():
                agent.observe(tr)
            obs = res.obs
            out.append(action)
        agent.end_episode()
    return np.stack(out, 1)


def test_evaluation_rows_adapt_independently_and_only_from_their_own_episodes():
    suite = PointNav()
    cfg = MAMLConfig(hidden_sizes=(8,), inner_lr=0.5, eval_max_steps=0)
    learner = MAML(suite.spec(), cfg, torch.device("cpu"))
    keys = np.array([-1, -2, -3])
    goals_a = np.array([[0.4, 0.4], [-0.3, 0.2], [0.1, -0.4]])
    goals_b = goals_a.copy()
    goals_b[0] = [-0.4, -0.4]  # row 0's task changes
    agent_a, agent_b = learner.make_agent(evaluation=True), learner.make_agent(evaluation=True)
    acts_a = drive(agent_a, goals_a, keys, 3, 100, seed=0)
    acts_b = drive(agent_b, goals_b, keys, 3, 100, seed=0)
    assert agent_a.steps == 3  # a step after each of episodes 0-2 (the trial has 6; the last is not played)
    assert not np.array_equal(acts_a[0, 100:], acts_b[0, 100:])
    np.testing.assert_array_equal(acts_a[1:], acts_b[1:])
    for k in agent_a.params:
        assert not torch.equal(agent_a.params[k][0], agent_b.params[k][0])
        assert torch.equal(agent_a.params[k][1:], agent_b.params[k][1:])
    # the learner is untouched; the rows' parameters moved away from it
    meta = dict(learner.policy.named_parameters())
    assert all(not torch.equal(agent_a.params[k][1], meta[k].detach()) for k in meta)


def test_evaluation_acts_stochastically_only_in_episodes_it_learns_from():
    default = MAML(spec(eval_episodes=6), MAMLConfig(hidden_sizes=(8,)), torch.device("cpu"))
    agent = default.make_agent(evaluation=True)  # one step after episode 0, then mean actions
    assert [agent._learns_from_episode(e) for e in range(6)] == [True] + [False] * 5
    cfg = MAMLConfig(hidden_sizes=(8,), eval_max_steps=0)
    learner = MAML(spec(eval_episodes=6), cfg, torch.device("cpu"))
    agent = learner.make_agent(evaluation=True)
    assert [agent._learns_from_episode(e) for e in range(6)] == [True] * 5 + [False]
    mw = replace(cfg, eval_adapt_every=10, eval_max_steps=1)
    agent = MAML(spec(eval_episodes=13), mw, torch.device("cpu")).make_agent(evaluation=True)
    assert [agent._learns_from_episode(e) for e in range(13)] == [True] * 10 + [False] * 3
    train_agent = learner.make_agent()
    assert not any(train_agent._learns_from_episode(e) for e in range(6))
    # episodes 0-4 sample (different seeds, different actions); the last one is played with the mean of
    # the final adapted parameters (recompute it from the positions the actions led to)
    agent_a, agent_b = learner.make_agent(evaluation=True), learner.make_agent(evaluation=True)
    a = drive(agent_a, np.array([[0.3, 0.3]]), np.array([-1]), 6, 5, seed=0)
    b = drive(agent_b, np.array([[0.3, 0.3]]), np.array([-1]), 6, 5, seed=1)
    assert not np.array_equal(a[:, :5], b[:, :5])
    last = a[0, 25:]
    pos = np.vstack([np.zeros(2), np.cumsum(np.clip(last, -1, 1) * 0.1, 0)[:-1]]).astype(np.float32)
    with torch.no_grad():
        mean, _ = per_task_forward(learner.policy, agent_a.params, torch.as_tensor(pos)[None])
    np.testing.assert_allclose(last, mean[0].numpy(), rtol=1e-5, atol=1e-6)
    assert agent_a.steps == 5


def test_post_update_agent_acts_with_each_keys_adapted_parameters():
    learner = MAML(spec(), MAMLConfig(hidden_sizes=(8,)), torch.device("cpu"))
    meta = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    shifted = dict(meta)
    shifted["head.mean.bias"] = meta["head.mean.bias"] + 5.0
    agent = learner.make_agent(evaluation=True, adapted={7: shifted})
    agent.new_trial(np.array([3, 7, 7, 4]))
    agent.cfg = replace(agent.cfg, eval_mean_when_done=True)
    agent.episode = 5  # a mean-action episode
    obs = np.zeros((4, 2), np.float32)
    with torch.no_grad():
        actions, _ = agent.act(obs)
    np.testing.assert_allclose(actions[1:3] - actions[[0, 3]], 5.0, rtol=1e-5)


def test_mean_action_agent_acts_with_the_adapted_mean_in_training_rollouts():
    """The few-shot check's second reading: a training agent (no inner steps) that acts with the mean."""
    learner = MAML(spec(), MAMLConfig(hidden_sizes=(8,)), torch.device("cpu"))
    meta = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    shifted = dict(meta)
    shifted["head.mean.bias"] = meta["head.mean.bias"] + 0.5
    obs = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    with torch.no_grad():
        want, _ = torch.func.functional_call(learner.policy, shifted, (torch.as_tensor(obs),))
    for seed in (0, 1):  # no noise: the same actions under any torch seed
        torch.manual_seed(seed)
        agent = learner.make_agent(adapted={-1: shifted}, mean_actions=True)
        agent.new_trial(np.array([-1, -1, -1]))
        with torch.no_grad():
            actions, _ = agent.act(obs)
        np.testing.assert_allclose(actions, want.numpy(), rtol=1e-5, atol=1e-6)
    sampled = learner.make_agent(adapted={-1: shifted})  # the default samples around that mean
    sampled.new_trial(np.array([-1, -1, -1]))
    with torch.no_grad():
        noisy, _ = sampled.act(obs)
    assert np.abs(noisy - want.numpy()).max() > 1e-3


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_acting_equals_the_per_task_path_until_the_first_inner_step(activation):
    """Rows acting with theta go through one numpy MLP; after an inner step, each row's own parameters."""
    cfg = MAMLConfig(hidden_sizes=(16, 16), activation=activation, inner_lr=0.5, init_std=0.7)
    learner = MAML(PointNav().spec(), cfg, torch.device("cpu"))
    with torch.no_grad():
        learner.policy.head.mean.bias.add_(0.2)  # an off-centre mean, as after training
    goals, keys = np.array([[0.4, 0.4], [-0.3, 0.2], [0.1, -0.4]]), np.array([-1, -2, -3])
    fast, slow = (MAML(PointNav().spec(), replace(cfg, numpy_acting=flag), torch.device("cpu"))
                  for flag in (True, False))  # fmt: skip
    for other in (fast, slow):
        other.policy.load_state_dict(learner.policy.state_dict())
    # training rollouts with theta (sampled actions, log-probabilities): the same draws, float rounding apart
    obs = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    out = []
    for lrn in (fast, slow):
        agent = lrn.make_agent()
        agent.new_trial(keys)
        assert (agent.fast is not None) == (lrn is fast)
        torch.manual_seed(3)
        with torch.no_grad():
            out.append(agent.act(obs))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0][1]["log_prob"], out[1][1]["log_prob"], rtol=1e-5, atol=1e-5)
    # a meta-test trial: sampled episode 0 with theta, one step, mean actions with theta'_i after it
    acts_fast = drive(fast.make_agent(evaluation=True), goals, keys, 3, 100, seed=0)
    acts_slow = drive(slow.make_agent(evaluation=True), goals, keys, 3, 100, seed=0)
    np.testing.assert_allclose(acts_fast, acts_slow, rtol=1e-4, atol=1e-4)
    assert not np.allclose(acts_fast[0, 100:], acts_fast[1, 100:], atol=1e-3)  # rows now differ per task
    # rows with adapted parameters (post-update training rollouts) never take the shared path
    adapted = learner.make_agent(adapted={-1: dict(learner.policy.named_parameters())})
    adapted.new_trial(np.array([-1, -2]))
    assert adapted.fast is None


def test_validate_names_the_bad_setting():
    for bad, name in [
        (MAMLConfig(activation="gelu"), "activation"),
        (MAMLConfig(rollouts_per_task=0), "rollouts_per_task"),
        (MAMLConfig(max_kl=0), "max_kl"),
        (MAMLConfig(backtrack_ratio=1.0), "backtrack_ratio"),
        (MAMLConfig(eval_max_steps=-1), "eval_max_steps"),
    ]:
        with pytest.raises(ValueError, match=name):
            MAML.validate(bad)
    for profile in ("quick", "paper"):
        for family in ("point-nav", "locomotion", "metaworld"):
            MAML.validate(replace(MAMLConfig(), **MAML.profile(profile, family)))


def test_check_learner_passes():
    check_learner(MAML, PointNav(), TINY)


# -- learning (slow) ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_maml_learns_point_nav(tmp_path):
    """A short budget under the benchmark protocol, then MAML's own few-shot check on the test goals."""
    code = main(["run", "--algo", "maml", "--suite", "point-nav", "--out", str(tmp_path), "--no-progress",
                 "--set", "budget_steps=1200000",  # 30 iterations of 20 tasks x 10 rollouts x 2 episodes
                 "--set", "eval_every_steps=100000000"])  # fmt: skip
    assert code == 0
    run = tmp_path / "point-nav" / "maml" / "seed0"
    normalized = final_test_normalized(run)
    assert normalized.iloc[-1] > normalized.iloc[0] + 0.1, normalized.round(3).to_dict()
    assert normalized.iloc[-1] >= 0.5, normalized.round(3).to_dict()
    # few-shot (Finn's setting): 20 rollouts, one step; the post-update return is far above the pre-update one
    suite = PointNav()
    learner = MAML(
        suite.spec(), replace(MAMLConfig(), **MAML.profile("quick", "point-nav")), torch.device("cpu")
    )
    learner.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["learner"])
    pre, post, _ = few_shot_returns(learner, TrialSampler(suite), list(suite.tasks("test")), 20, seed=0)
    ref = json.loads((run / "config.json").read_text())["reference_returns"]["test"]
    pre_n, post_n = (
        (np.array([pre.mean(), post.mean()]) - ref["random"]) / (ref["oracle"] - ref["random"])
    ).tolist()
    assert post_n >= 0.5 and post_n > pre_n + 0.2, (pre_n, post_n)
