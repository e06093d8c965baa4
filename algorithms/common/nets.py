"""Networks shared by the methods: MLPs and a diagonal Gaussian policy head."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int | None, activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear/activation stack; ``out_dim=None`` ends on the last hidden activation."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, width), activation()]
        last = width
    if out_dim is not None:
        layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Diagonal Gaussian over actions: a linear mean and a state-independent learned log-std.

    The log-std is clamped to [min_log_std, max_log_std] so PPO cannot collapse or explode it.
    """

    def __init__(
        self, in_dim: int, act_dim: int, init_std: float = 1.0, min_log_std: float = -5.0, max_log_std: float = 2.0
    ) -> None:
        super().__init__()
        self.mean = nn.Linear(in_dim, act_dim)
        nn.init.orthogonal_(self.mean.weight, gain=0.01)
        nn.init.zeros_(self.mean.bias)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.min_log_std, self.max_log_std = min_log_std, max_log_std

    def forward(self, features: torch.Tensor) -> Normal:
        log_std = self.log_std.clamp(self.min_log_std, self.max_log_std)
        return Normal(self.mean(features), log_std.exp().expand_as(self.mean.bias))

    @staticmethod
    def log_prob(dist: Normal, actions: torch.Tensor) -> torch.Tensor:
        return dist.log_prob(actions).sum(-1)

    @staticmethod
    def entropy(dist: Normal) -> torch.Tensor:
        return dist.entropy().sum(-1)
