"""PPO over whole trials: GAE across the episodes of a trial, the clipped loss, the update loop.

A trial is one episode of the meta-level (BAMDP) problem: the return keeps flowing across the
episode boundaries inside a trial and stops only at the end of the trial. Steps marked invalid
(after an MDP termination) are skipped: the value of the next valid step is bootstrapped through
them. Minibatches are whole trials, so recurrent and attention policies re-encode full sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch


def gae_over_trials(
    rewards: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (B, T) for trials that end (value 0) after their last step."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    validf = valid.to(rewards.dtype)
    for t in range(T - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * next_adv
        v = validf[:, t]
        adv[:, t] = a_t * v
        # invalid steps pass the carry through unchanged
        next_adv = v * a_t + (1 - v) * next_adv
        next_value = v * values[:, t] + (1 - v) * next_value
    return adv, adv + values


def scale_by_return_std(
    rewards: torch.Tensor, valid: torch.Tensor, gamma: float, return_norm: Any
) -> torch.Tensor:
    """Rewards (B, T) divided by the running std of the discounted return sum_k gamma^k r_{t-k}.

    PPO's usual MuJoCo reward scaling (baselines' / SB3's ``VecNormalize(norm_reward=True)``; VariBAD's
    ``norm_rew_for_policy``, ``utils/helpers.py`` of ``lmzintgraf/varibad``): the return accumulates
    over the whole trial, as GAE does. ``return_norm`` is a ``RunningNorm(1)`` whose statistics first
    absorb this batch's returns at the valid steps; the rewards are not centred.
    """
    ret = torch.zeros_like(rewards)
    acc = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in range(rewards.shape[1]):
        acc = acc * gamma + rewards[:, t]
        ret[:, t] = acc
    return_norm.update(ret[valid].unsqueeze(-1))
    return rewards / torch.sqrt(return_norm.var + 1e-8)


@dataclass
class PPOParams:
    """The knobs of the shared update loop (each method fills them from its own config)."""

    clip: float = 0.2
    epochs: int = 4
    minibatches: int = 4  # per epoch, split over trials
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True
    target_kl: float | None = None  # stop the update once a minibatch's approximate KL exceeds this

    @classmethod
    def from_config(cls, config: Any) -> PPOParams:
        """The fields of a method's hyperparameter dataclass that share a name with these knobs."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


def ppo_loss(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    params: PPOParams,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + value regression - entropy bonus, averaged over ``mask``."""
    m = mask.to(new_log_prob.dtype)
    n = m.sum().clamp_min(1.0)
    ratio = torch.exp(new_log_prob - old_log_prob)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - params.clip, 1 + params.clip) * advantages)
    policy_loss = -(surrogate * m).sum() / n
    value_loss = 0.5 * (((new_values - returns) ** 2) * m).sum() / n
    entropy_mean = (entropy * m).sum() / n
    loss = policy_loss + params.value_coef * value_loss - params.entropy_coef * entropy_mean
    with torch.no_grad():
        approx_kl = (((ratio - 1) - (new_log_prob - old_log_prob)) * m).sum() / n
        clip_frac = (((ratio - 1).abs() > params.clip).to(m.dtype) * m).sum() / n
    stats = {
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "entropy": entropy_mean.item(),
        "approx_kl": float(approx_kl),
        "clip_frac": float(clip_frac),
    }
    return loss, stats


Evaluate = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""Given trial indices (b,), returns new (log_prob, entropy, value), each (b, T)."""


def ppo_update(
    evaluate: Evaluate,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    valid: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: list[torch.nn.Parameter],
    params: PPOParams,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Epochs of minibatch PPO over trials; returns the mean of each loss statistic."""
    B = old_log_prob.shape[0]
    if params.normalize_advantages:
        m = valid.to(advantages.dtype)
        mean = (advantages * m).sum() / m.sum()
        std = (((advantages - mean) ** 2 * m).sum() / m.sum()).sqrt()
        advantages = (advantages - mean) / (std + 1e-8)
    n_mb = max(1, min(params.minibatches, B))
    totals: dict[str, float] = {}
    count = 0
    stopped = False
    for _ in range(params.epochs):
        if stopped:
            break
        order = torch.as_tensor(rng.permutation(B), device=old_log_prob.device)
        for idx in torch.tensor_split(order, n_mb):
            log_prob, entropy, value = evaluate(idx)
            loss, stats = ppo_loss(
                log_prob, old_log_prob[idx], advantages[idx], value, returns[idx], entropy, valid[idx], params
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(parameters, params.max_grad_norm))
            optimizer.step()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            count += 1
            if params.target_kl is not None and stats["approx_kl"] > params.target_kl:
                stopped = True
                break
    out = {k: v / count for k, v in totals.items()}
    out["updates"] = float(count)
    return out
