"""PEARL: the posterior, KL, SAC targets and tanh-Gaussian density against closed forms; per-task replay;
the harness contract (check_learner, exact resume with the buffers); it learns on point-nav (slow)."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from algorithms.common.sac import TanhGaussianPolicy, q_target, tanh_gaussian_log_prob, v_target
from algorithms.pearl import (
    PEARL,
    PEARLConfig,
    context_features,
    kl_to_standard_normal,
    product_of_gaussians,
)
from benchmark.check import check_learner
from benchmark.cli import main
from benchmark.runner import HarnessContext
from benchmark.sampler import TrialSampler
from benchmark.suites.point_nav import PointNav
from metarl_protocol import Transition
from tests.conftest import final_test_normalized

TINY = PEARLConfig(
    net_size=16, net_layers=2, encoder_hidden=16, encoder_layers=2, meta_batch=4, batch_size=8,
    embedding_batch_size=8, num_tasks_sample=3, initial_episodes=1, prior_episodes=1,
    posterior_episodes=1, grad_steps_per_iter=3,
)  # fmt: skip


def make(cfg: PEARLConfig = TINY, storage=None) -> tuple[PEARL, PointNav]:
    suite = PointNav()
    return PEARL(suite.spec(), cfg, torch.device("cpu"), storage), suite


def test_product_of_gaussians_equals_closed_form():
    # two 1-D factors by hand: N(1, 1) x N(3, 1) ~ N(2, 1/2); N(0, 1) x N(2, 3): var 3/4, mean 3/4 * 2/3
    mu = torch.tensor([[[1.0], [3.0]], [[0.0], [2.0]]])
    var = torch.tensor([[[1.0], [1.0]], [[1.0], [3.0]]])
    m, v = product_of_gaussians(mu, var)
    assert torch.allclose(m, torch.tensor([[2.0], [0.5]])) and torch.allclose(
        v, torch.tensor([[0.5], [0.75]])
    )
    # random factors: sum of the factors' log-densities minus the posterior's is constant in z
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(7, 3, generator=g, dtype=torch.float64)
    var = torch.rand(7, 3, generator=g, dtype=torch.float64) + 0.1
    m, v = product_of_gaussians(mu, var)
    z = torch.randn(5, 1, 3, generator=g, dtype=torch.float64)
    diff = Normal(mu, var.sqrt()).log_prob(z).sum(1) - Normal(m, v.sqrt()).log_prob(z[:, 0])
    assert torch.allclose(diff, diff[:1].expand_as(diff), atol=1e-9)
    # and the encoder's posterior is permutation invariant over the context
    learner, _ = make()
    ctx = torch.randn(2, 9, learner.context_dim, generator=g)
    a = learner.encoder.posterior(ctx)
    b = learner.encoder.posterior(ctx[:, torch.randperm(9, generator=g)])
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b, strict=True))


def test_kl_equals_closed_form():
    assert kl_to_standard_normal(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(0.5)
    # mu 0, var e: 0.5 (e - 1 - 1) per dim
    val = kl_to_standard_normal(torch.zeros(2), torch.full((2,), math.e)).item()
    assert val == pytest.approx(math.e - 2.0, rel=1e-6)
    g = torch.Generator().manual_seed(1)
    mu, var = torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g) + 0.05
    ref = torch.distributions.kl_divergence(Normal(mu, var.sqrt()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl_to_standard_normal(mu, var), ref, atol=1e-5)


def test_sac_targets_equal_hand_computation():
    r, term, next_v = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 5.0])
    # scale 2, gamma 0.5: [2 + 0.5 * 10, -4 + 0]
    assert torch.equal(q_target(r, term, next_v, reward_scale=2.0, gamma=0.5), torch.tensor([7.0, -4.0]))
    q1, q2, log_pi = torch.tensor([1.0, 5.0]), torch.tensor([3.0, 2.0]), torch.tensor([0.5, -1.0])
    assert torch.equal(v_target(q1, q2, log_pi), torch.tensor([0.5, 3.0]))


def test_learner_q_loss_uses_the_target_v_at_the_sampled_z():
    """The Q loss of one sac_step equals a hand computation from the networks on a tiny batch."""
    cfg = PEARLConfig(**{**TINY.__dict__, "reward_scale": 3.0, "gamma": 0.9})
    learner, _ = make(cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # make the target V differ from V, as it does after training
        for p in learner.v_target.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    T, b, o, a = 2, 3, 2, 2
    rl = {
        "obs": torch.randn(T, b, o, generator=g),
        "action": torch.rand(T, b, a, generator=g) * 2 - 1,
        "reward": torch.randn(T, b, generator=g),
        "next_obs": torch.randn(T, b, o, generator=g),
        "terminal": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    }
    context = torch.randn(T, 4, learner.context_dim, generator=g)
    torch.manual_seed(5)
    with torch.no_grad():
        mu, var = learner.encoder.posterior(context)
        z = mu + var.sqrt() * torch.randn(T, cfg.latent_dim)  # the step's first draw
        losses = 0.0
        for t in range(T):
            zt = z[t].expand(b, -1)
            target = 3.0 * rl["reward"][t] + 0.9 * (1 - rl["terminal"][t]) * learner.v_target(
                rl["next_obs"][t], zt
            )
            for q in (learner.q1, learner.q2):
                losses += ((q(rl["obs"][t], rl["action"][t], zt) - target) ** 2).sum() / (T * b)
    torch.manual_seed(5)
    stats = learner.sac_step(rl, context)
    assert stats["q_loss"] == pytest.approx(losses.item(), rel=1e-5)


def test_tanh_gaussian_log_prob_is_the_change_of_variables():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(6, 2, generator=g, dtype=torch.float64)
    log_std = torch.randn(6, 2, generator=g, dtype=torch.float64) * 0.5
    u = mean + log_std.exp() * torch.randn(6, 2, generator=g, dtype=torch.float64) * 2
    # log N(u) - log |det d tanh(u)/du|, the Jacobian diagonal taken by autograd
    jac = torch.autograd.functional.jacobian(lambda x: torch.tanh(x).sum(0), u)  # (2, 6, 2)
    diag = torch.stack([jac[i, :, i] for i in range(2)], -1)
    ref = Normal(mean, log_std.exp()).log_prob(u).sum(-1) - diag.abs().log().sum(-1)
    assert torch.allclose(tanh_gaussian_log_prob(u, mean, log_std), ref, atol=1e-9)
    dist = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    a = torch.tanh(u).clamp(-1 + 1e-12, 1 - 1e-12)
    assert torch.allclose(tanh_gaussian_log_prob(u, mean, log_std), dist.log_prob(a).sum(-1), atol=1e-6)
    # the policy's sample reports the density of the action it returns
    policy = TanhGaussianPolicy(3, 2, (8,)).double()
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    action, log_pi, m, ls = policy.sample(x)
    assert torch.allclose(log_pi, tanh_gaussian_log_prob(torch.atanh(action), m, ls), atol=1e-6)
    # acting draws the same action from the same RNG state, without the log-probability
    torch.manual_seed(0)
    assert torch.equal(policy.act(x), action)


def test_replay_sampling_never_mixes_tasks_and_encoder_buffers_are_cleared():
    learner, suite = make()
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    learner.train_step(ctx)
    learner.train_step(ctx)
    task_col = learner.buffer.view("task")
    tasks = np.array(sorted(learner.rl_rows))[:: max(1, len(learner.rl_rows) // 50)]
    rng = np.random.default_rng(1)
    rl = learner.sample_rl(tasks, 32, rng)
    assert np.array_equal(task_col[rl["rows"].numpy()], np.repeat(tasks[:, None], 32, 1))
    # context rows of a task come from its encoder buffer only: compare with that task's features
    feats = context_features(
        *(learner.buffer.view(f) for f in ("obs", "action", "reward", "next_obs")), False
    )
    context = learner.sample_context(tasks, 16, rng).numpy()
    for i, t in enumerate(tasks.tolist()):
        own = feats[learner.enc_rows[t]]
        assert all((own == row).all(-1).any() for row in context[i]), f"context of task {t} from elsewhere"
    # a task sampled in the last iteration has an encoder buffer of exactly that iteration's prior rows
    sampled = [t for t in learner.enc_start if learner.enc_start[t] > 0]
    assert sampled
    for t in sampled:
        rows = learner.enc_rows[t]
        assert len(rows) == TINY.prior_episodes * TINY.rollouts_per_task * suite.horizon
        assert (rows >= learner.enc_start[t]).all() and (task_col[rows] == t).all()
        assert learner.buffer.view("enc")[rows].all()


def test_evaluation_context_is_per_row_and_equals_the_product_of_its_factors():
    learner, _ = make(PEARLConfig(**{**TINY.__dict__, "eval_prior_episodes": 1}))
    agent = learner.make_agent(evaluation=True)
    agent.new_trial(np.array([-1, -2, -3]))
    g = np.random.default_rng(0)
    seen: list[list[np.ndarray]] = [[], [], []]
    with torch.no_grad():
        for step in range(4):
            obs = g.normal(size=(3, 2)).astype(np.float32)
            action, _ = agent.act(obs)
            assert np.allclose(
                action, learner.policy.deterministic(torch.cat([torch.as_tensor(obs), agent.z], -1))
            )
            active = np.array([True, step < 2, True])
            tr = Transition(obs, np.clip(action, -1, 1), g.normal(size=3).astype(np.float32), obs + 0.1,
                            np.zeros(3, bool), np.zeros(3, bool), active)  # fmt: skip
            agent.observe(tr)
            for i in range(3):
                if active[i]:
                    seen[i].append(
                        context_features(tr.obs[i], tr.action[i], tr.reward[i], tr.next_obs[i], False)
                    )
    z_prior = agent.z
    agent.end_episode()
    for i in range(3):
        mu, var = learner.encoder(torch.as_tensor(np.stack(seen[i])))
        m, v = product_of_gaussians(mu, var)
        assert torch.allclose(1.0 / agent.precision[i], v, rtol=1e-5)
        assert torch.allclose(agent.weighted_mu[i] / agent.precision[i], m, rtol=1e-4, atol=1e-6)
    assert not torch.equal(agent.z, z_prior)


def test_check_learner_passes_including_exact_resume_of_the_buffers():
    check_learner(PEARL, PointNav(), TINY)


def test_validate_names_bad_settings():
    spec = PointNav().spec()
    with pytest.raises(ValueError, match="eval_prior_episodes"):
        PEARL.validate(PEARLConfig(eval_prior_episodes=6), spec)
    with pytest.raises(ValueError, match="eval_prior_episodes=0 with eval_context_all_episodes=false"):
        PEARL.validate(PEARLConfig(eval_prior_episodes=0, eval_context_all_episodes=False), spec)
    PEARL.validate(PEARLConfig(eval_prior_episodes=0), spec)  # every episode's context: as 1
    with pytest.raises(ValueError, match="meta_batch"):
        PEARL.validate(PEARLConfig(meta_batch=0), spec)
    PEARL.validate(PEARLConfig(**PEARL.profile("quick", "point-nav")), spec)


@pytest.mark.slow
def test_pearl_adapts_on_point_nav(tmp_path):
    """A third of the quick budget: the posterior episodes beat the prior one and doing nothing (0.29).

    Measured (seed 0, 2-core machine shared with one other run): normalised 0.094 0.757 0.763 0.757 0.766
    0.764 (2m43) with the quick profile's 500 gradient steps per iteration; with 250 it was 0.163 0.481
    0.473 0.478 0.477 0.479 (3m57, busier machine). The full quick budget reaches 0.845-0.903 (seeds 3-7).
    """
    code = main(["run", "--algo", "pearl", "--suite", "point-nav", "--out", str(tmp_path), "--no-progress",
                 "--set", "budget_steps=1280000",  # 50 iterations, 25,000 grad steps
                 "--set", "eval_every_steps=10000000"])  # fmt: skip
    assert code == 0
    run = tmp_path / "point-nav" / "pearl" / "seed0"
    normalized = final_test_normalized(run)
    print("normalised return per meta-test episode:", normalized.round(3).to_dict())
    assert normalized.iloc[-1] > normalized.iloc[0] + 0.15, normalized.round(3).to_dict()
    assert normalized.iloc[-1] >= 0.60, normalized.round(3).to_dict()


def test_evaluation_context_can_stop_after_the_prior_episodes():
    learner, _ = make(PEARLConfig(**{**TINY.__dict__, "eval_context_all_episodes": False}))
    agent = learner.make_agent(evaluation=True)
    agent.new_trial(np.array([-1, -2]))
    obs = np.ones((2, 2), np.float32)
    tr = Transition(obs, np.zeros((2, 2), np.float32), -np.ones(2, np.float32), obs, np.zeros(2, bool),
                    np.zeros(2, bool), np.ones(2, bool))  # fmt: skip
    with torch.no_grad():
        agent.observe(tr)
    after_prior = agent.precision.clone()
    agent.end_episode()  # episode 1 (the only prior one) ends: z from the posterior of its context
    with torch.no_grad():
        agent.observe(tr)
    assert torch.equal(agent.precision, after_prior) and (after_prior > 0).all()


def test_evaluation_samples_actions_only_in_its_first_stochastic_episodes():
    """eval_stochastic_episodes=1: the exploration episode acts like the training prior episodes (sampled
    actions, the data the encoder is trained on), later episodes with tanh(mean); 0 keeps every episode
    deterministic."""
    obs = np.array([[0.1, -0.2], [0.3, 0.0]], np.float32)
    for n in (0, 1):
        learner, _ = make(PEARLConfig(**{**TINY.__dict__, "eval_stochastic_episodes": n}))
        agent = learner.make_agent(evaluation=True)
        agent.new_trial(np.array([-1, -2]))
        x = torch.cat([torch.as_tensor(obs), agent.z], -1)
        torch.manual_seed(3)
        with torch.no_grad():
            action, _ = agent.act(obs)
        torch.manual_seed(3)
        sampled = learner.policy.sample(x)[0].detach().numpy()
        deterministic = learner.policy.deterministic(x).detach().numpy()
        assert np.allclose(action, sampled if n else deterministic) and not np.allclose(
            sampled, deterministic
        )
        agent.end_episode()
        with torch.no_grad():
            action, _ = agent.act(obs)
        x = torch.cat([torch.as_tensor(obs), agent.z], -1)
        assert np.allclose(action, learner.policy.deterministic(x).detach().numpy())


def test_numpy_acting_equals_the_torch_policy_with_the_same_noise():
    """numpy_acting (the CPU default) acts as the torch modules do, to float32 rounding, drawing the same
    noise from torch's generator; numpy_acting=False keeps the torch path."""
    learner, _ = make()
    with torch.no_grad():  # move the output layers off their near-zero init, so the test can see them
        for layer in (learner.policy.mean, learner.policy.log_std):
            layer.weight.normal_(0.0, 0.5)
            layer.bias.normal_(0.0, 0.3)
    slow, _ = make(PEARLConfig(**{**TINY.__dict__, "numpy_acting": False}))
    slow.policy.load_state_dict(learner.policy.state_dict())
    obs = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    for evaluation in (False, True):
        actions = []
        for lrn in (learner, slow):
            agent = lrn.make_agent(evaluation=evaluation)
            torch.manual_seed(5)
            agent.new_trial(np.array([-1, -2, -3, -4]))
            assert (agent.fast is not None) == (lrn is learner)
            with torch.no_grad():
                actions.append(np.concatenate([agent.act(obs)[0] for _ in range(3)]))
        np.testing.assert_allclose(actions[0], actions[1], rtol=1e-5, atol=1e-6)
        assert np.abs(actions[0]).max() > 0.05


def test_fused_optimizer_setting_picks_the_adam_implementation_also_on_resume(tmp_path):
    """fused_optimizer=true: each Adam one fused kernel; false (default): the foreach implementation of
    earlier runs. A checkpoint written under either setting resumes under the learner's."""
    from dataclasses import replace

    def impl(learner):
        return {(g["fused"], g["foreach"]) for o in learner.opt.values() for g in o.param_groups}

    fused, suite = make(replace(TINY, fused_optimizer=True))
    loop, _ = make(TINY, tmp_path)  # the default; its replay files are what the resumes read
    assert impl(fused) == {(True, None)} and impl(loop) == {(None, True)}
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    loop.train_step(ctx)  # optimizer state to carry over
    resumed, _ = make(replace(TINY, fused_optimizer=True), tmp_path)
    resumed.load_state_dict(loop.state_dict())
    assert impl(resumed) == {(True, None)}
    stats = resumed.train_step(ctx)  # the foreach run's state drives the fused kernels
    assert all(np.isfinite(v) for v in stats.values())
    back, _ = make(replace(TINY, fused_optimizer=False), tmp_path)
    back.load_state_dict(resumed.state_dict())
    assert impl(back) == {(None, True)}
