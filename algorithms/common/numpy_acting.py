"""Acting on the CPU in numpy: the torch modules' math, read from their parameters, without torch's dispatch.

Acting makes one network call per env step for about ten envs, so its cost is per-operation overhead,
not arithmetic. On the 2-core development machine (torch 2.13, one thread) a (10, 64) x (64, 192) linear
map takes about 10 us through ``F.linear`` and about 5 us as a numpy matmul, and an element-wise op about
1-2 us against about 0.5 us. The helpers here hold **contiguous copies** of the weights (numpy's matmul
on a transposed view was up to 3x slower at 128 x 128): build them at the start of each trial, since the
weights never change during one and a method may change them between trials.

numpy's BLAS (OpenBLAS in the numpy wheels) starts as many threads as there are cores, which at these sizes
only contends with the env workers (RL²'s 256-unit GRU step on ml1-reach took 870 us instead of 260 us
with the machine busy). ``usable`` therefore sets numpy's BLAS pool to torch's thread count
(``torch.get_num_threads()``, which a run sets from ``torch_threads``) through threadpoolctl, so both
paths use the same number of threads.

Results equal the torch modules' up to float32 rounding (different summation order in the matrix
products): about 1e-6 on actions and values, checked per method in its tests. Random draws come from
torch's global generator exactly as ``GaussianHead.act`` draws them, so a seeded run draws the same
noise on either path. CPU tensors only; a method keeps its torch path for other devices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from algorithms.common.nets import GaussianHead, RunningNorm
from algorithms.common.sac import LOG_STD_MAX, LOG_STD_MIN, TanhGaussianPolicy

Linear = tuple[np.ndarray, np.ndarray | None]  # (W^T (in, out), bias (out,) or None), copies


def view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (parameter or buffer), sharing its memory."""
    return t.detach().numpy()


def linear(layer: nn.Linear) -> Linear:
    """``layer``'s weight transposed (so ``x @ W`` is ``x W^T``) and its bias, as contiguous copies."""
    return linear_parts(layer.weight, layer.bias)


def apply(lin: Linear, x: np.ndarray) -> np.ndarray:
    """x (..., in) -> x W^T + b (..., out)."""
    w, b = lin
    return x @ w if b is None else x @ w + b


_ACTIVATIONS: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {
    nn.Tanh: np.tanh,
    nn.ReLU: lambda x: np.maximum(x, 0.0),
}


class MLP:
    """An ``nn.Sequential`` of ``nn.Linear`` and Tanh / ReLU modules (``nets.mlp``) as numpy calls.

    Raises:
        TypeError: for any other module in the stack.
    """

    def __init__(self, seq: nn.Sequential) -> None:
        self.steps: list[Linear | Callable[[np.ndarray], np.ndarray]] = []
        for m in seq:
            if isinstance(m, nn.Linear):
                self.steps.append(linear(m))
            elif type(m) in _ACTIVATIONS:
                self.steps.append(_ACTIVATIONS[type(m)])
            else:
                raise TypeError(f"numpy acting supports Linear, Tanh and ReLU layers, not {type(m).__name__}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for step in self.steps:
            x = apply(step, x) if isinstance(step, tuple) else step(x)
        return x


def layer_norm(norm: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``nn.LayerNorm`` over the last axis (biased variance, as torch); the identity for ``nn.Identity``."""
    if isinstance(norm, nn.Identity):
        return lambda x: x
    w, b, eps = view(norm.weight).copy(), view(norm.bias).copy(), np.float32(norm.eps)

    def normalise(x: np.ndarray) -> np.ndarray:
        centred = x - x.mean(-1, keepdims=True)
        return centred / np.sqrt(np.square(centred).mean(-1, keepdims=True) + eps) * w + b

    return normalise


class Normaliser:
    """``RunningNorm.leading``: the first ``dim`` features normalised and clipped, the rest unchanged.

    The statistics are read when this object is built (``RunningNorm.update`` replaces its buffers).
    """

    def __init__(self, norm: RunningNorm | None) -> None:
        self.active = norm is not None and float(norm.count) > 0
        if self.active:
            self.dim, self.clip = norm.mean.shape[0], norm.clip
            self.mean = view(norm.mean).copy()
            self.std = np.sqrt(view(norm.var) + np.float32(norm.eps)).astype(np.float32)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        if not self.active:
            return features
        out = features.copy()
        d = self.dim
        np.clip((features[:, :d] - self.mean) / self.std, -self.clip, self.clip, out=out[:, :d])
        return out


class GaussianActing:
    """``GaussianHead.act`` in numpy: mean = x W^T + b; sample = mean + std * noise; summed log-density.

    ``noise`` is drawn as ``torch.randn`` of the mean's shape from torch's global generator, the same
    draw ``GaussianHead.act`` makes with ``randn_like``.
    """

    def __init__(self, head: GaussianHead) -> None:
        self.mean = linear(head.mean)
        log_std = head.log_std.detach().clamp(head.min_log_std, head.max_log_std)
        self.std = view(log_std.exp()).copy()
        self.constant = float(log_std.sum()) + 0.5 * math.log(2 * math.pi) * log_std.numel()

    def __call__(self, features: np.ndarray, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        """features (B, in) -> actions (B, act_dim), log-probabilities (B,), both float32."""
        mean = apply(self.mean, features)
        if deterministic:
            return mean, np.full(mean.shape[0], -self.constant, np.float32)
        noise = torch.randn(mean.shape).numpy()
        log_prob = -0.5 * np.square(noise).sum(-1) - np.float32(self.constant)
        return mean + noise * self.std, log_prob.astype(np.float32)


class TanhGaussianActing:
    """``TanhGaussianPolicy.act`` / ``.deterministic`` in numpy (SAC's policy): h = MLP(x); the action is
    tanh(mean + exp(clamp(log_std)) * noise), or tanh(mean) when deterministic.

    ``noise`` is drawn as ``torch.randn`` of the mean's shape from torch's global generator, the same draw
    ``TanhGaussianPolicy.act`` makes with ``randn_like``; no log-probability (acting never uses it).
    """

    def __init__(self, policy: TanhGaussianPolicy) -> None:
        self.body = MLP(policy.body)
        self.mean, self.log_std = linear(policy.mean), linear(policy.log_std)

    def __call__(self, x: np.ndarray, deterministic: bool) -> np.ndarray:
        """x (B, in) float32 -> actions (B, act_dim) in (-1, 1)."""
        h = self.body(x)
        mean = apply(self.mean, h)
        if deterministic:
            return np.tanh(mean)
        log_std = np.clip(apply(self.log_std, h), LOG_STD_MIN, LOG_STD_MAX)
        return np.tanh(mean + np.exp(log_std) * torch.randn(mean.shape).numpy())


class GRUCell:
    """``torch.gru_cell`` on a single-layer ``nn.GRU``'s weights (gate order r, z, n, as torch):

    r = sigma(W_ir x + b_ir + W_hr h + b_hr), z = sigma(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) n + z h  (Cho et al. 2014; torch.nn.GRU docs).

    Raises:
        ValueError: for a multi-layer, bidirectional or bias-free GRU.
    """

    def __init__(self, gru: nn.GRU) -> None:
        if gru.num_layers != 1 or gru.bidirectional or not gru.bias:
            raise ValueError("GRUCell supports single-layer, unidirectional GRUs with biases only")
        self.input, self.hidden = (
            linear_parts(gru.weight_ih_l0, gru.bias_ih_l0),
            linear_parts(gru.weight_hh_l0, gru.bias_hh_l0),
        )
        self.size = gru.hidden_size

    def __call__(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        """x (B, in), h (B, H) -> next hidden (B, H)."""
        H = self.size
        gi, gh = apply(self.input, x), apply(self.hidden, h)
        rz = 1.0 / (1.0 + np.exp(-(gi[:, : 2 * H] + gh[:, : 2 * H])))
        n = np.tanh(gi[:, 2 * H :] + rz[:, :H] * gh[:, 2 * H :])
        z = rz[:, H:]
        return n + z * (h - n)


def linear_parts(weight: torch.Tensor, bias: torch.Tensor | None) -> Linear:
    """A (weight, bias) pair that is not an ``nn.Linear`` (e.g. a GRU's gates) as ``linear`` returns it."""
    return np.ascontiguousarray(view(weight).T), None if bias is None else view(bias).copy()


_blas_threads: int | None = None  # the size numpy's BLAS pool was last set to here


def usable(device: torch.device | str, enabled: bool) -> bool:
    """Whether a method acts in numpy: enabled by its config and acting on the CPU.

    When it does, numpy's BLAS pool is set to ``torch.get_num_threads()`` threads (once per change).
    """
    global _blas_threads
    if not (enabled and torch.device(device).type == "cpu"):
        return False
    threads = torch.get_num_threads()
    if threads != _blas_threads:
        threadpool_limits(limits=threads, user_api="blas")
        _blas_threads = threads
    return True
