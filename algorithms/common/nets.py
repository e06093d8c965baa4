"""Shared networks (MLPs, a diagonal Gaussian policy head, one GRU step) and optimizer resumption."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal


def mlp(
    in_dim: int, hidden: tuple[int, ...], out_dim: int | None, activation: type[nn.Module] = nn.Tanh
) -> nn.Sequential:
    """Linear/activation stack; ``out_dim=None`` ends on the last hidden activation."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, width), activation()]
        last = width
    if out_dim is not None:
        layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


def gru_step(gru: nn.GRU, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """One step of a single-layer ``nn.GRU``: x (B, in), hidden (B, H) -> next hidden (B, H).

    ``torch.gru_cell`` on the module's own weights: the same kernel ``nn.GRU`` runs per step on CPU, so
    the result is bitwise equal to ``gru(x[:, None], hidden[None])`` there (tests/test_nets.py; on CUDA,
    cuDNN's fused kernel may round differently), without the module's per-call checks (acting calls
    this every env step; about half the cost of ``nn.GRU``).
    """
    if gru.num_layers != 1 or gru.bidirectional or not gru.bias:
        raise ValueError("gru_step supports single-layer, unidirectional GRUs with biases only")
    return torch.gru_cell(x, hidden, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)


class GaussianHead(nn.Module):
    """Diagonal Gaussian over actions: a linear mean and a state-independent learned log-std.

    The log-std is clamped to [min_log_std, max_log_std] so PPO cannot collapse or explode it.
    """

    def __init__(
        self,
        in_dim: int,
        act_dim: int,
        init_std: float = 1.0,
        min_log_std: float = -5.0,
        max_log_std: float = 2.0,
    ) -> None:
        super().__init__()
        self.mean = nn.Linear(in_dim, act_dim)
        nn.init.orthogonal_(self.mean.weight, gain=0.01)
        nn.init.zeros_(self.mean.bias)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.min_log_std, self.max_log_std = min_log_std, max_log_std

    def forward(self, features: torch.Tensor) -> Normal:
        """features (..., in_dim) -> per-dimension Normal over actions (..., act_dim).

        Mean from the linear layer; std exp(log_std), log_std clamped to [min_log_std, max_log_std] and
        broadcast to the mean's shape. Sum over actions with ``log_prob`` / ``entropy``.
        """
        log_std = self.log_std.clamp(self.min_log_std, self.max_log_std)
        mean = self.mean(features)
        return Normal(mean, log_std.exp().expand_as(mean), validate_args=False)

    def act(self, features: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(action, log-probability) for one acting step, without building a distribution object.

        Equal to ``forward(features).sample()`` (the same draw from torch's generator) and its
        ``log_prob`` up to float rounding; a few ops instead of dozens, because acting runs every step.
        """
        log_std = self.log_std.clamp(self.min_log_std, self.max_log_std)
        mean = self.mean(features)
        constant = log_std.sum() + 0.5 * math.log(2 * math.pi) * log_std.numel()
        if deterministic:
            return mean, (-constant).expand(mean.shape[:-1])
        noise = torch.randn_like(mean)
        return mean + noise * log_std.exp(), -0.5 * noise.square().sum(-1) - constant

    @staticmethod
    def log_prob(dist: Normal, actions: torch.Tensor) -> torch.Tensor:
        """Log-density of actions (..., act_dim) under ``dist``, summed over the action dimension: (...,)."""
        return dist.log_prob(actions).sum(-1)

    @staticmethod
    def entropy(dist: Normal) -> torch.Tensor:
        """Entropy of ``dist`` summed over the action dimension: (..., act_dim) -> (...,)."""
        return dist.entropy().sum(-1)


class RunningNorm(nn.Module):
    """Observation normaliser with running mean / variance (as PPO on MuJoCo usually needs).

    Statistics change only through ``update`` (called by a method after its PPO update, so the
    log-probabilities of a batch are always computed under the statistics it was sampled with) and
    live in buffers, so they are part of ``state_dict`` and checkpoints.
    """

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(0.0))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the statistics of ``x`` (N, dim) into the running ones (parallel Welford)."""
        x = x.reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        n = x.shape[0]
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.var = (self.var * self.count + b_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> (x - mean) / sqrt(var + eps), clipped to [-clip, clip]; same shape.

        Returns ``x`` unchanged while no statistics have been merged (``count == 0``).
        """
        if self.count == 0:
            return x
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)

    def leading(self, features: torch.Tensor) -> torch.Tensor:
        """features (..., in) with their first ``dim`` entries (the observation) normalised, the rest
        (previous action, reward, flags of the trial features) unchanged."""
        dim = self.mean.shape[0]
        return torch.cat([self(features[..., :dim]), features[..., dim:]], -1)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` under ``optimizer``'s own implementation (fused / foreach).

    A saved state's parameter groups carry their writer's ``fused`` and ``foreach`` flags; torch keeps them
    on load, and decides from them where each parameter's ``step`` counter goes (to the parameter's device
    for a fused group, left as saved otherwise). The saved groups' flags are set to ``optimizer``'s
    constructor defaults first, so a resumed run uses the implementation its settings name, with the
    counter where that implementation expects it (a fused CUDA kernel rejects a CPU counter). The groups
    of ``state`` are not modified (its tensors may end up shared with the optimizer, as with torch's own
    ``load_state_dict``).
    """
    keys = [k for k in ("fused", "foreach") if k in optimizer.defaults]
    groups = [{**g, **{k: optimizer.defaults[k] for k in keys}} for g in state["param_groups"]]
    optimizer.load_state_dict({**state, "param_groups": groups})
