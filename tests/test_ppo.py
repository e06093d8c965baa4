import numpy as np
import torch

from algorithms.common.nets import RunningNorm
from algorithms.common.ppo import PPOParams, gae_over_trials, ppo_loss, scale_by_return_std


def reference_gae(r, v, gamma, lam):
    T = len(r)
    adv = np.zeros(T)
    last = 0.0
    for t in reversed(range(T)):
        nv = v[t + 1] if t + 1 < T else 0.0
        delta = r[t] + gamma * nv - v[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_matches_textbook_recursion_across_episode_boundaries():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
    adv, ret = gae_over_trials(
        torch.tensor(r), torch.tensor(v), torch.ones(3, 40, dtype=torch.bool), 0.9, 0.8
    )
    for b in range(3):
        assert np.allclose(adv[b].numpy(), reference_gae(r[b], v[b], 0.9, 0.8))
    assert torch.allclose(ret, adv + torch.tensor(v))


def test_rewards_are_divided_by_the_std_of_the_discounted_returns_of_valid_steps():
    r = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.5, 3.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    norm = RunningNorm(1)
    norm.update(torch.tensor([[4.0], [6.0]]))  # earlier batches: mean 5, variance 1, count 2
    out = scale_by_return_std(r, valid, 0.5, norm)
    returns = [1.0, 2.5, -1.0, 0.0, 3.0]  # sum_k 0.5^k r_{t-k} at the valid steps, trial by trial
    allr = np.array([4.0, 6.0, *returns])
    assert norm.count == 7 and np.isclose(norm.var.item(), allr.var())
    assert torch.allclose(out, r / np.sqrt(allr.var() + 1e-8))


def test_gae_skips_invalid_steps():
    rng = np.random.default_rng(1)
    r, v = rng.normal(size=(1, 10)), rng.normal(size=(1, 10))
    valid = np.ones((1, 10), bool)
    valid[0, 3:6] = False  # terminated episode tail: no reward, not sent to the env
    adv, _ = gae_over_trials(torch.tensor(r), torch.tensor(v), torch.tensor(valid), 0.99, 0.95)
    keep = valid[0]
    expected = reference_gae(r[0][keep], v[0][keep], 0.99, 0.95)
    assert np.allclose(adv[0].numpy()[keep], expected)
    assert (adv[0].numpy()[~keep] == 0).all()


def test_ppo_loss_clips_and_masks():
    p = PPOParams(clip=0.2, value_coef=0.0, entropy_coef=0.0)
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[2.0, 0.5, 1.0, 3.0]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    zeros = torch.zeros(1, 4)
    loss, stats = ppo_loss(new, old, adv, zeros, zeros, zeros, mask, p)
    # min(r*A, clip(r)*A): 1.2, -0.8, 1.0 -> mean over the 3 valid steps
    assert np.isclose(loss.item(), -(1.2 - 0.8 + 1.0) / 3)
    assert np.isclose(stats["clip_frac"], 2 / 3)


def test_ppo_loss_value_and_entropy_terms():
    """loss = -surrogate + value_coef * 0.5 * mean((V - R)^2) - entropy_coef * mean(entropy) (masked)."""
    p = PPOParams(clip=0.2, value_coef=0.5, entropy_coef=0.01)
    zeros = torch.zeros(1, 3)
    values = torch.tensor([[1.0, 2.0, 50.0]])
    returns = torch.tensor([[0.0, 4.0, 0.0]])
    entropy = torch.tensor([[1.5, 0.5, 99.0]])
    mask = torch.tensor([[True, True, False]])
    loss, stats = ppo_loss(zeros, zeros, zeros, values, returns, entropy, mask, p)
    value_loss = 0.5 * (1.0**2 + 2.0**2) / 2
    assert np.isclose(stats["value_loss"], value_loss) and np.isclose(stats["entropy"], 1.0)
    assert np.isclose(loss.item(), 0.5 * value_loss - 0.01 * 1.0)
    v = values.clone().requires_grad_(True)
    loss, _ = ppo_loss(zeros, zeros, zeros, v, returns, entropy, mask, p)
    loss.backward()
    # d/dV of 0.5 * 0.5 * mean((V - R)^2) over the 2 valid steps = 0.5 * (V - R) / 2; masked step: 0
    assert torch.allclose(v.grad, torch.tensor([[0.25, -0.5, 0.0]]))
