"""Soft actor-critic pieces (SAC "v1", Haarnoja et al. 2018, arXiv:1801.01290): tanh-Gaussian policy, targets.

SAC v1 learns twin Q functions, a state-value function V and a slowly moving target copy of V, with a
fixed entropy weight (here folded into a reward scale, as in rlkit / PEARL's ``oyster``). The pieces
below are pure functions of tensors so that they can be checked by hand (tests/test_pearl.py):

* ``q_target = reward_scale * r + (1 - terminal) * gamma * V_target(s')``           (Haarnoja et al. eq. 8)
* ``v_target = min(Q1(s, a~pi), Q2(s, a~pi)) - log pi(a|s)``                          (eq. 5, twin-Q min from
  Fujimoto et al. 2018, as in rlkit's ``SoftActorCritic`` and oyster's ``PEARLSoftActorCritic``)
* tanh-Gaussian log-probability by the change of variables ``a = tanh(u)``:
  ``log pi(a) = log N(u; mu, sigma) - sum_i log(1 - tanh(u_i)^2)`` (Haarnoja et al. appendix C, eq. 21).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from algorithms.common.nets import mlp

#: log-std bounds of the policy (rlkit / oyster ``TanhGaussianPolicy``: LOG_SIG_MIN -20, LOG_SIG_MAX 2)
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def tanh_log_det_jacobian(u: torch.Tensor) -> torch.Tensor:
    """``sum_i log(1 - tanh(u_i)^2)`` for pre-tanh values u (..., act_dim) -> (...).

    Computed as ``2 (log 2 - u - softplus(-2u))``, which is the same quantity without the 1e-6
    epsilon oyster adds inside the log (exact identity: 1 - tanh^2 u = 4 e^{-2u} / (1 + e^{-2u})^2).
    """
    return (2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))).sum(-1)


def tanh_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log-density of ``a = tanh(u)`` where ``u ~ N(mean, exp(log_std)^2)``: all (..., act_dim) -> (...)."""
    normal = -0.5 * ((u - mean) / log_std.exp()).square() - log_std - 0.5 * math.log(2 * math.pi)
    return normal.sum(-1) - tanh_log_det_jacobian(u)


class TanhGaussianPolicy(nn.Module):
    """MLP (ReLU) from an input vector to a tanh-squashed diagonal Gaussian over actions in (-1, 1).

    Both the mean and the log-std are outputs of the network (state-dependent std, clamped to
    [LOG_STD_MIN, LOG_STD_MAX]); the output layers start near zero (uniform +-3e-3, rlkit's init_w).
    """

    def __init__(self, in_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.body = mlp(in_dim, hidden, None, nn.ReLU)
        self.mean = nn.Linear(hidden[-1], act_dim)
        self.log_std = nn.Linear(hidden[-1], act_dim)
        for layer in (self.mean, self.log_std):
            nn.init.uniform_(layer.weight, -3e-3, 3e-3)
            nn.init.uniform_(layer.bias, -3e-3, 3e-3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, in_dim) -> (mean, log_std), each (N, act_dim), of the pre-tanh Gaussian."""
        h = self.body(x)
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised draw: (action (N, act_dim), log_prob (N,), mean, log_std). Draws torch's RNG."""
        mean, log_std = self(x)
        u = mean + log_std.exp() * torch.randn_like(mean)
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std), mean, log_std

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The action of ``sample`` alone (N, act_dim): the same draw of torch's RNG, bitwise the same
        action, without the log-probability acting never uses."""
        mean, log_std = self(x)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))

    def deterministic(self, x: torch.Tensor) -> torch.Tensor:
        """``tanh(mean)`` (N, act_dim): the evaluation action of SAC and PEARL."""
        return torch.tanh(self(x)[0])


def q_target(
    reward: torch.Tensor, terminal: torch.Tensor, next_v: torch.Tensor, reward_scale: float, gamma: float
) -> torch.Tensor:
    """Soft Bellman target for Q: ``reward_scale * r + (1 - terminal) * gamma * V_target(s')`` (all (N,))."""
    return reward_scale * reward + (1.0 - terminal) * gamma * next_v


def v_target(q1: torch.Tensor, q2: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    """Target for V: ``min(Q1, Q2) - log pi`` at a fresh policy action (all (N,))."""
    return torch.minimum(q1, q2) - log_pi


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) target + tau source`` (parameters only)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(1.0 - tau).add_(s, alpha=tau)
