"""A single-layer GRU over whole trials, forward and backward in numpy, for training on the CPU.

RL²'s PPO update re-runs its GRU over minibatches of a few recorded trials (4 trials x 400 steps on
halfcheetah-vel quick). ``nn.GRU`` on the CPU records about a dozen autograd nodes per time step, and its
backward pass adds each step's weight gradient separately (2 x 400 small matrix products and 2,800
in-place adds per minibatch in the profiler); both costs are per-operation overhead, not arithmetic.
``NumpyGRU`` computes the same function with the backward written out:

- forward: the input projection of all steps in one product, then per step one (B, H) x (H, 3H)
  product and a few element-wise ops, keeping the gates;
- backward: the factors that do not depend on the incoming gradient for all steps at once, then per step
  (last to first) only the gradient of the hidden state: five numpy calls, one of them a (B, 3H) x (3H, H)
  product; the weight and bias gradients are then one product each over all steps.

The gate equations are PyTorch's ``nn.GRU`` (gates ordered r, z, n; ``b_hn`` inside the reset product):
``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``z = s(W_iz x + b_iz + W_hz h + b_hz)``,
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``, s the logistic function.
Results equal ``nn.GRU``'s up to float32 rounding (summation order in the products; tests/test_nets.py
checks outputs and every gradient, and ``torch.autograd.gradcheck`` in float64). Not twice
differentiable. numpy's BLAS threads follow torch's (``numpy_acting.usable`` sets them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


class NumpyGRU(torch.autograd.Function):
    """``apply(x, h0, w_ih, w_hh, b_ih, b_hh)``: x (B, T, I), h0 (B, H), weights as in ``nn.GRU``
    (w_ih (3H, I), w_hh (3H, H), b_ih and b_hh (3H,)) -> outputs (B, T, H), the hidden state after each
    step. CPU tensors of one float dtype."""

    @staticmethod
    def forward(ctx: Any, x, h0, w_ih, w_hh, b_ih, b_hh):  # type: ignore[override]
        """Outputs (B, T, H) for the inputs of the class docstring (call through ``NumpyGRU.apply``).

        Keeps w_ih, w_hh and the numpy intermediates (inputs, hidden states, gates) on ``ctx`` for backward.
        """
        B, T, n_in = x.shape
        H = w_hh.shape[1]
        dtype = _np(x).dtype
        xt = np.ascontiguousarray(_np(x).transpose(1, 0, 2))  # (T, B, I)
        gi = xt.reshape(T * B, n_in) @ np.ascontiguousarray(_np(w_ih).T)
        gi += _np(b_ih)
        gi[:, : 2 * H] += _np(b_hh)[: 2 * H]  # r and z add both biases outside any product
        gi = gi.reshape(T, B, 3 * H)  # input projections of every step, biases included
        # the logistic function as s(v) = tanh(v / 2) / 2 + 1 / 2: numpy's tanh is vectorised, scipy's expit
        # is not (about 0.7 against 3.7 us at 4 x 256). The r and z columns of the input projections and of
        # W_hh are halved once (exact: a power of two), so each step's sum is v / 2 already
        gi_rz, gi_n = gi[..., : 2 * H] * 0.5, np.ascontiguousarray(gi[..., 2 * H :])
        w_hh_t, b_hn = np.ascontiguousarray(_np(w_hh).T), _np(b_hh)[2 * H :]
        w_hh_t[:, : 2 * H] *= 0.5
        hs = np.empty((T + 1, B, H), dtype)  # hs[t] = hidden state before step t
        hs[0] = _np(h0)
        rz = np.empty((T, B, 2 * H), dtype)  # reset and update gates
        r, z = rz[..., :H], rz[..., H:]
        n = np.empty((T, B, H), dtype)  # candidate state
        ghn = np.empty((T, B, H), dtype)  # W_hn h + b_hn (the reset gate's operand)
        gh = np.empty((B, 3 * H), dtype)
        gh_rz, gh_n = gh[:, : 2 * H], gh[:, 2 * H :]
        for t in range(T):
            h, rzt, nt, hn, ghn_t = hs[t], rz[t], n[t], hs[t + 1], ghn[t]
            np.matmul(h, w_hh_t, out=gh)
            np.add(gi_rz[t], gh_rz, out=rzt)
            np.tanh(rzt, out=rzt)
            rzt *= 0.5
            rzt += 0.5
            np.add(gh_n, b_hn, out=ghn_t)
            np.multiply(r[t], ghn_t, out=nt)
            nt += gi_n[t]
            np.tanh(nt, out=nt)
            np.subtract(h, nt, out=hn)  # h' = n + z (h - n)
            hn *= z[t]
            hn += nt
        ctx.save_for_backward(w_ih, w_hh)
        ctx.arrays = (xt, hs, rz, n, ghn)
        return torch.from_numpy(np.ascontiguousarray(hs[1:].transpose(1, 0, 2)))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        """grad_out (B, T, H) -> gradients of (x, h0, w_ih, w_hh, b_ih, b_hh), each in its input's shape.

        The written-out backward pass of the module docstring; the gradient of x is None unless x requires
        one. Not twice differentiable (``once_differentiable``).
        """
        w_ih, w_hh = ctx.saved_tensors
        xt, hs, rz, n, ghn = ctx.arrays
        T, B, n_in = xt.shape
        H = hs.shape[2]
        dtype = hs.dtype
        w_hh_np = _np(w_hh)
        d_out = np.ascontiguousarray(grad_out.numpy().transpose(1, 0, 2), dtype=dtype)  # (T, B, H)
        r, z, h_prev = rz[..., :H], np.ascontiguousarray(rz[..., H:]), hs[:-1]
        # every factor that does not depend on the incoming gradient, for all steps at once: with dh the
        # gradient of the hidden state after step t, the gradients of W_hh h + b_hh are dh * m[:, g] per
        # gate g (r, z, n) and that of the candidate's pre-activation (W_in x + b_in) is dh * a
        a = (1 - z) * (1 - n * n)
        m = np.empty((T, B, 3, H), dtype)
        np.multiply(a * ghn, r * (1 - r), out=m[:, :, 0])  # reset gate, through r * (W_hn h + b_hn)
        np.multiply(h_prev - n, z * (1 - z), out=m[:, :, 1])  # update gate
        np.multiply(a, r, out=m[:, :, 2])  # W_hn h + b_hn, through the reset product
        d_gh = np.empty((T, B, 3, H), dtype)
        dhs = np.empty((T, B, H), dtype)  # dh of every step
        dh = np.zeros((B, H), dtype)
        prod = np.empty((B, H), dtype)
        # per step (last to first): five calls, only what depends on dh
        for t in range(T - 1, -1, -1):
            dh_t, dgh = dhs[t], d_gh[t]
            np.add(dh, d_out[t], out=dh_t)
            np.multiply(dh_t[:, None, :], m[t], out=dgh)
            np.matmul(dgh.reshape(B, 3 * H), w_hh_np, out=prod)  # through W_hh h
            np.multiply(dh_t, z[t], out=dh)  # through h' = ... + z h
            dh += prod
        d_gh = d_gh.reshape(T, B, 3 * H)
        d_gin = dhs * a
        d_gi = np.concatenate([d_gh[..., : 2 * H], d_gin], axis=2)  # r and z: the same pre-activation
        d_gi2, d_gh2 = d_gi.reshape(T * B, 3 * H), d_gh.reshape(T * B, 3 * H)
        dx = None
        if ctx.needs_input_grad[0]:
            dx_np = (d_gi2 @ _np(w_ih)).reshape(T, B, n_in).transpose(1, 0, 2)
            dx = torch.from_numpy(np.ascontiguousarray(dx_np))
        d_w_ih = torch.from_numpy(d_gi2.T @ xt.reshape(T * B, n_in))
        d_w_hh = torch.from_numpy(d_gh2.T @ h_prev.reshape(T * B, H))
        d_b_ih, d_b_hh = torch.from_numpy(d_gi2.sum(0)), torch.from_numpy(d_gh2.sum(0))
        return dx, torch.from_numpy(dh), d_w_ih, d_w_hh, d_b_ih, d_b_hh


def gru_over_trials(
    gru: nn.GRU, x: torch.Tensor, hidden: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gru(x, hidden)`` for a single-layer, unidirectional, batch-first ``nn.GRU`` with biases, through
    ``NumpyGRU``: x (B, T, in), hidden (1, B, H) or None (zeros) -> outputs (B, T, H), last hidden (1, B, H).

    Raises:
        ValueError: for another GRU layout, or tensors not on the CPU.
    """
    if gru.num_layers != 1 or gru.bidirectional or not gru.bias or not gru.batch_first:
        raise ValueError(
            "gru_over_trials supports single-layer, unidirectional, batch-first GRUs with biases only"
        )
    if x.device.type != "cpu":
        raise ValueError(f"gru_over_trials runs on the CPU, got a tensor on {x.device}")
    h0 = x.new_zeros(x.shape[0], gru.hidden_size) if hidden is None else hidden[0]
    out = NumpyGRU.apply(x, h0, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    return out, out[:, -1][None]
