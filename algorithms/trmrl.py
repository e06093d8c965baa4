"""TrMRL (Melo, "Transformers are Meta-Reinforcement Learners", ICML 2022): attention over recent memories.

Each step the agent turns (s_t, a_{t-1}, r_{t-1}, done_{t-1}) into a *working memory* with a bias-free
linear embedding plus a sinusoidal position. A causal transformer encoder without layer norm (ReLU FFN,
dropout 0) associates the last N working memories into an *episodic memory*; the memory at the current
step feeds a Gaussian MLP policy (64, 64, tanh). T-Fixup initialisation replaces layer norm.

Memory modes (``memory``):
* ``episode`` (the paper's): every layer attends to the last N = 5 steps of the current episode; the
  memory is cleared at every episode start.
* ``trial``: the window spans the episodes of a trial (``window = 0``: the whole training trial).

Positions are the step index inside the current episode (0 .. H-1) in both modes, so evaluation trials
longer than training trials stay within the positions seen in training.

Attention is a sliding window: at every layer, step t reads steps t-N+1 .. t of the layer below, so the
receptive field of L layers is L(N-1)+1 steps (the official code instead re-encodes the last N steps
from scratch at every step; that cannot be cached). Acting caches each layer's keys and values in a
ring buffer of N slots, so one step costs O(N); training re-encodes whole trials in batches with the
equivalent causal band mask (and, in ``episode`` mode, one sequence per episode), chunk by chunk when
the window is narrow (``Band``: O(T N) instead of O(T^2)). Steps of an
environment that already terminated (``active == False``) are treated like any other step on both
paths, so the cached rollout and the batched re-encode agree.

Training: PPO over whole trials (GAE across the episodes of a trial), AdamW with separate policy and
value learning rates, raw advantages (official ``center_adv=False``: neither centred nor scaled),
entropy coefficient 0, geometric learning-rate decay between iterations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

from algorithms.common.nets import GaussianHead, RunningNorm, load_optimizer_state, mlp
from algorithms.common.numpy_acting import (
    MLP,
    GaussianActing,
    Normaliser,
    apply,
    layer_norm,
    linear,
    usable,
    view,
)
from algorithms.common.ppo import PPOParams, gae_over_trials, ppo_update, scale_by_return_std
from algorithms.common.trial_inputs import PreviousStep, trial_features
from metarl_protocol import AdaptiveAgent, MetaLearner, SuiteSpec, TrainContext, Transition
from metarl_protocol.settings import setting


@dataclass
class TrMRLConfig:
    """Hyperparameters; defaults are the paper's HalfCheetahVel settings (official README command)."""

    # -- memory and encoder ---------------------------------------------------------------------------
    memory: str = setting(
        "episode", choices=("episode", "trial")
    )  # "episode": cleared at each episode start | "trial": spans the trial
    window: int = 5  # N working memories per layer; 0 = the whole training trial (trial mode)
    d_model: int = setting(128, low=1)
    n_heads: int = setting(16, low=1)
    n_layers: int = setting(4, low=1)
    d_ff: int = setting(512, low=1)
    normalize_observations: bool = False  # running mean/std of observations (quick locomotion, as RL²)
    tfixup: bool = True  # False: post-LN encoder layers with default initialisation (ablation)
    # working memory = embed_scale * embedding + position (Vaswani et al.: sqrt(d_model); the official
    # code has that line commented out, i.e. 1). At T-Fixup's small embedding scale the positions dominate.
    embed_scale: float = setting(1.0, low=0.0, low_open=True)
    # -- heads ----------------------------------------------------------------------------------------
    policy_hidden: tuple[int, ...] = setting((64, 64), low=1)
    init_std: float = setting(0.2, low=0.0, low_open=True)
    output_gain: float = setting(
        1.0, low=0.0, low_open=True
    )  # Xavier gain of the policy mean layer (official AntDir / Meta-World: 0.01)
    # value function: "shared" = MLP on the memory, its loss also trains the encoder;
    # "detached" = separate MLP on the memory (no gradient into the encoder);
    # "step" = separate MLP on the step input (official HalfCheetahVel / Meta-World: no --share_network)
    value_fn: str = setting("step", choices=("shared", "detached", "step"))
    value_hidden: tuple[int, ...] = setting((64, 64), low=1)
    # -- PPO over trials ------------------------------------------------------------------------------
    meta_batch_size: int = setting(20, low=1)  # trials (tasks) per iteration
    gamma: float = setting(0.9, low=0.0, high=1.0)
    gae_lambda: float = setting(0.8, low=0.0, high=1.0)
    value_lambda: float = setting(
        1.0, low=0.0, high=1.0
    )  # lambda of the value targets; 1 = discounted Monte-Carlo returns (official)
    clip: float = setting(0.1, low=0.0, low_open=True)
    policy_lr: float = setting(3e-5, low=0.0, low_open=True)
    value_lr: float = setting(2.5e-4, low=0.0, low_open=True)
    weight_decay: float = 0.01  # AdamW's default, as in the official code
    epochs: int = setting(10, low=1)
    minibatch_steps: int = setting(
        256, low=1
    )  # env steps per minibatch; rounded to whole trials (see _minibatches)
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = setting(1e6, low=0.0, low_open=True)  # the official code does not clip
    normalize_advantages: bool = False  # official center_adv=False: raw advantages
    # rewards / running std of the discounted return for PPO (VecNormalize-style; not in the official
    # code); the value function then learns returns on that scale
    normalize_rewards: bool = False
    target_kl: float | None = setting(
        None, low=0.0, low_open=True
    )  # early stop of the epochs (not in the official code; quick profiles)
    # -- geometric learning-rate decay between iterations ----------------------------------------------
    lr_decay_start: int = 100  # iteration where decay starts
    lr_decay_end: int = 750  # iteration where the factor reaches lr_min_factor (then stays)
    lr_min_factor: float = setting(0.1, low=0.0, high=1.0, low_open=True)  # 1.0 = constant learning rates
    decay_value_lr: bool = False  # HalfCheetahVel decays the policy lr only
    # -- acting ---------------------------------------------------------------------------------------
    # on the CPU, act through the numpy copy of the step (NumpyStep: the same math, about 2.5x faster at
    # 10 envs; equal to the torch modules up to float32 rounding); False: the torch modules
    numpy_acting: bool = True
    # training's re-encode attends chunk by chunk where the window is narrow (Band: the same softmax at
    # O(T N) instead of O(T^2)); False: always the full (T, T) band mask, as before 39451ee. Both agree to
    # float rounding; False with numpy_acting=False reproduces runs of earlier commits exactly
    chunked_attention: bool = True
    # arithmetic of the PPO update's encoder pass (embedding, attention, FFN; forward and backward):
    # "bfloat16" runs it under torch.autocast(bfloat16) (mixed precision: weights, optimizer state, heads,
    # losses and acting stay float32). On a CPU with AVX512-BF16 / AMX (or a CUDA GPU) its matmuls run
    # 3-4x faster; results then differ beyond float32 rounding (README "Performance"). Elsewhere bf16 is
    # emulated and slower
    update_precision: str = setting("float32", choices=("float32", "bfloat16"))
    # AdamW as one fused kernel over all parameters (torch's fused=True); False: torch's default
    # implementation, as before 3de5ff2 (the per-tensor loop on the CPU, foreach on CUDA). The same update
    # to float32 rounding; False reproduces runs of earlier commits exactly. A resumed checkpoint takes
    # this setting's implementation, whichever wrote it
    fused_optimizer: bool = True


# ---------------------------------------------------------------------------------------------------
# The encoder: explicit attention so T-Fixup scaling and the key/value cache are visible
# ---------------------------------------------------------------------------------------------------


KV = tuple[torch.Tensor, torch.Tensor]  # one layer's (keys, values) ring buffers


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """(length, d_model) sin/cos table of Vaswani et al."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def band_mask(length: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(length, length) bool: query i may read key j iff j <= i (causal) and i - j < window."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    return (j <= i) & (i - j < window)


class Band:
    """The sliding-window causal mask of one re-encode, in the cheaper of two layouts.

    Query i reads keys j with i - window < j <= i. When the band is narrow against the sequence
    (4 * chunk <= length, chunk = max(16, window)), the sequence is cut into chunks of ``chunk`` steps
    and each chunk's queries attend over the keys of their own and the previous chunk (2 * chunk keys
    under a (chunks, chunk, 2 * chunk) mask), which holds the whole band since chunk >= window. That is
    the same softmax over the same keys (the masked keys get weight exactly 0), at a cost of
    O(length * chunk) instead of O(length^2). On the CPU (one thread), forward + backward of the
    attention alone: paper HalfCheetahVel (window 5, 200-step episodes, 16 heads) 3.3 against 9.9 ms per
    layer for 2 episodes; quick locomotion (window 25, 8 heads) 14 against 19 ms for 8 episodes.
    Otherwise (short sequences, wide windows, or ``chunked=False``) the full (length, length) mask of
    ``band_mask``.
    Attributes: ``chunk`` (0 = full mask) and ``mask``.
    """

    def __init__(
        self, length: int, window: int, device: torch.device | str = "cpu", chunked: bool = True
    ) -> None:
        chunk = max(16, window)
        if chunked and 4 * chunk <= length:
            self.chunk = chunk
            n = -(-length // chunk)
            i = (
                torch.arange(n, device=device)[:, None, None] * chunk
                + torch.arange(chunk, device=device)[:, None]
            )
            j = (torch.arange(n, device=device)[:, None, None] - 1) * chunk + torch.arange(
                2 * chunk, device=device
            )
            self.mask = (j <= i) & (i - j < window) & (j >= 0)  # (chunks, chunk, 2 chunk), global indices
        else:
            self.chunk = 0
            self.mask = band_mask(length, window, device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d_head) under the band) v for q, k, v (B, heads, length, d_head)."""
        if not self.chunk:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        B, h, T, d = q.shape
        C, n = self.chunk, self.mask.shape[0]
        pad = n * C - T  # padded steps come after every real query: causally masked as keys
        # chunks take the place of heads (4-D inputs, as every fused kernel expects): (B * heads, n, C, d)
        q, k, v = (F.pad(t, (0, 0, 0, pad)).reshape(B * h, n, C, d) for t in (q, k, v))
        # keys / values of the previous chunk (zeros before the first, masked by j >= 0) and this one
        k, v = (torch.cat([F.pad(t, (0, 0, 0, 0, 1, 0))[:, :n], t], dim=2) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return out.reshape(B, h, n * C, d)[:, :, :T]


class SelfAttention(nn.Module):
    """Multi-head self-attention with q, k, v stacked in one projection (as nn.MultiheadAttention)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # rows [0:d] -> q, [d:2d] -> k, [2d:3d] -> v
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, 3d) -> q, k, v each (B, heads, T, d_head)."""
        B, T, _ = x.shape
        return [t.reshape(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in x.chunk(3, dim=-1)]

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        """Heads (B, heads, Tq, d_head) -> output projection (B, Tq, d)."""
        B, _, Tq, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(B, Tq, -1))

    def forward(self, x: torch.Tensor, band: Band) -> torch.Tensor:
        """Whole sequences x (B, T, d), each step attending over the sliding window ``band``."""
        q, k, v = self._split(self.qkv(x))
        return self._merge(band.attend(q, k, v))

    def step(self, x: torch.Tensor, cache: KV, slot: int, filled: int) -> torch.Tensor:
        """One new step x (B, 1, d): write its key/value into ring-buffer ``slot``, read ``filled`` slots.

        Attention is order-free over keys (positions are already inside the keys and values), so the
        ring buffer needs no reordering: the window is simply the set of filled slots.
        """
        q, k, v = self._split(self.qkv(x))
        k_cache, v_cache = cache
        k_cache[:, :, slot] = k[:, :, 0]
        v_cache[:, :, slot] = v[:, :, 0]
        # one query, no mask: the same softmax(q k^T / sqrt(d_head)) v written out, cheaper at this size
        # than the fused kernel's dispatch (equal to float rounding; tests/test_trmrl.py)
        scores = (q @ k_cache[:, :, :filled].transpose(-1, -2)) * self.d_head**-0.5
        return self._merge(torch.softmax(scores, -1) @ v_cache[:, :, :filled])


class EncoderLayer(nn.Module):
    """x + attn(x), then x + FFN(x) (ReLU); post-LN only when T-Fixup is off."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, layer_norm: bool) -> None:
        super().__init__()
        self.attn = SelfAttention(d_model, n_heads)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.norm2 = nn.LayerNorm(d_model) if layer_norm else nn.Identity()

    def _residuals(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + attended)
        return self.norm2(x + self.ff2(F.relu(self.ff1(x))))

    def forward(self, x: torch.Tensor, band: Band) -> torch.Tensor:
        """Whole sequences x (B, T, d_model) -> (B, T, d_model), attention over the window ``band``."""
        return self._residuals(x, self.attn(x, band))

    def step(self, x: torch.Tensor, cache: KV, slot: int, filled: int) -> torch.Tensor:
        """One acting step x (B, 1, d_model) -> (B, 1, d_model); writes this layer's key / value ring
        buffers ``cache`` in place (``SelfAttention.step``)."""
        return self._residuals(x, self.attn.step(x, cache, slot, filled))


class TrMRLNetwork(nn.Module):
    """Working memory (embedding + position) -> encoder -> episodic memory -> (Gaussian policy, value)."""

    def __init__(self, spec: SuiteSpec, cfg: TrMRLConfig) -> None:
        super().__init__()
        if cfg.memory not in ("episode", "trial"):
            raise ValueError(f"memory must be 'episode' or 'trial', not {cfg.memory!r}")
        if cfg.value_fn not in ("shared", "detached", "step"):
            raise ValueError(f"value_fn must be 'shared', 'detached' or 'step', not {cfg.value_fn!r}")
        self.cfg, self.horizon = cfg, spec.horizon
        # window N; 0 means "everything": the episode (episode mode) or the training trial (trial mode)
        full = spec.horizon if cfg.memory == "episode" else spec.horizon * spec.episodes_per_trial
        self.window = min(cfg.window, full) if cfg.window > 0 else full
        in_dim = spec.obs_dim + spec.act_dim + 2
        self.obs_norm = RunningNorm(spec.obs_dim) if cfg.normalize_observations else None
        self.embed = nn.Linear(in_dim, cfg.d_model, bias=False)
        self.register_buffer("positions", sinusoidal_positions(spec.horizon, cfg.d_model), persistent=False)
        self.layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, layer_norm=not cfg.tfixup)
            for _ in range(cfg.n_layers)
        )
        self.policy_body = mlp(cfg.d_model, cfg.policy_hidden, None, nn.Tanh)
        self.policy = GaussianHead(cfg.policy_hidden[-1], spec.act_dim, init_std=cfg.init_std)
        self.value = mlp(in_dim if cfg.value_fn == "step" else cfg.d_model, cfg.value_hidden, 1, nn.Tanh)
        self._init_weights(cfg)

    def _init_weights(self, cfg: TrMRLConfig) -> None:
        """Xavier-uniform everywhere, then T-Fixup's scaling (official code: what is scaled, by what)."""
        L, d = cfg.n_layers, cfg.d_model
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            nn.init.zeros_(layer.attn.qkv.bias)  # as nn.MultiheadAttention; FFN biases keep nn.Linear's
            nn.init.zeros_(layer.attn.out.bias)
        if cfg.tfixup:
            with torch.no_grad():
                # embedding ~ N(0, std = d^-1/2) (torch.nn.init.normal_ takes the std), times (9 L)^-1/4
                nn.init.normal_(self.embed.weight, 0.0, d**-0.5)
                self.embed.weight.mul_((9 * L) ** -0.25)
                scale = 0.67 * L**-0.25
                for layer in self.layers:
                    # FFN = both linear maps; the attention output projection
                    layer.ff1.weight.mul_(scale)
                    layer.ff2.weight.mul_(scale)
                    layer.attn.out.weight.mul_(scale)
                    # the official code scales the whole stacked in-projection (q, k AND v) by
                    # scale * sqrt(2); Xavier on the stacked (3d, d) matrix has std sqrt(1/(2d)), so each
                    # of q, k, v ends at std scale * d^-1/2: T-Fixup's 0.67 L^-1/4 times a square Xavier
                    layer.attn.qkv.weight.mul_(scale * math.sqrt(2.0))
        # (tfixup off: nn.Linear's default init for the embedding, Xavier for the encoder, post-LN)
        # heads as garage's GaussianMLPModule: Xavier-uniform weights, zero biases
        for m in [*self.policy_body, *self.value]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.policy.mean.weight, gain=cfg.output_gain)
        nn.init.zeros_(self.policy.mean.bias)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """Step inputs with the observation part normalised (identity when normalisation is off)."""
        return feats if self.obs_norm is None else self.obs_norm.leading(feats)

    # -- the two paths through the encoder -----------------------------------------------------------
    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """Batched re-encode of whole trials: feats (B, T = K*H, in) -> memory (B, T, d)."""
        B, T, _ = feats.shape
        H = self.horizon
        if self.cfg.memory == "episode":  # episodes never see each other: one sequence per episode
            x = feats.reshape(B * (T // H), H, -1)
            positions = torch.arange(H, device=feats.device)
        else:
            x = feats
            positions = torch.arange(T, device=feats.device) % H
        band = Band(x.shape[1], self.window, feats.device, self.cfg.chunked_attention)
        x = self.cfg.embed_scale * self.embed(x) + self.positions[positions]
        for layer in self.layers:
            x = layer(x, band)
        return x.reshape(B, T, -1)

    def new_cache(self, num_envs: int, device: torch.device) -> list[KV]:
        """Per layer, key and value ring buffers (B, heads, N, d_head)."""
        shape = (num_envs, self.cfg.n_heads, self.window, self.cfg.d_model // self.cfg.n_heads)
        return [(torch.zeros(shape, device=device), torch.zeros(shape, device=device)) for _ in self.layers]

    def encode_step(self, feats: torch.Tensor, position: int, cache: list[KV], count: int) -> torch.Tensor:
        """Cached step: feats (B, in) of step ``count`` since the memory was cleared -> memory (B, d)."""
        slot, filled = count % self.window, min(count + 1, self.window)
        x = (self.cfg.embed_scale * self.embed(feats) + self.positions[position]).unsqueeze(1)
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x = layer.step(x, layer_cache, slot, filled)
        return x[:, 0]

    def heads(self, memory: torch.Tensor, feats: torch.Tensor) -> tuple[Normal, torch.Tensor]:
        """Action distribution and value from the episodic memory (and, for value_fn="step", the input)."""
        return self.policy(self.policy_body(memory)), self.value_of(memory, feats)

    def value_of(self, memory: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Value (...) by ``value_fn``: an MLP on the memory (..., d_model) (``"shared"``), on the memory
        detached (``"detached"``) or on the step input ``feats`` (..., in) (``"step"``)."""
        value_in = {"shared": memory, "detached": memory.detach(), "step": feats}[self.cfg.value_fn]
        return self.value(value_in).squeeze(-1)


# ---------------------------------------------------------------------------------------------------
# Acting: one cached encoder step per env step
# ---------------------------------------------------------------------------------------------------


class NumpyStep:
    """``TrMRLNetwork.encode_step`` and the heads in numpy, for acting on the CPU (numpy_acting.py).

    The same computation as the torch path, written out: working memory = embed_scale * W_e x + position;
    per layer, the new key / value go to ring-buffer slot ``count % N`` and the query attends over the
    filled slots, softmax(q K^T / sqrt(d_head)) V, then the residual FFN. Holds copies of the network's
    parameters, so build it at the start of each trial (statistics of the normaliser are read then).
    Cache per layer: keys and values (B, heads, N, d_head), float32.
    """

    def __init__(self, net: TrMRLNetwork, num_envs: int) -> None:
        cfg = net.cfg
        self.scale, self.window, self.d_model = cfg.embed_scale, net.window, cfg.d_model
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.normalize = Normaliser(net.obs_norm)
        self.embed, self.positions = linear(net.embed), view(net.positions)
        self.layers = [
            (linear(m.attn.qkv), linear(m.attn.out), linear(m.ff1), linear(m.ff2), layer_norm(m.norm1),
             layer_norm(m.norm2))
            for m in net.layers
        ]  # fmt: skip
        shape = (num_envs, self.n_heads, self.window, self.d_head)
        self.cache = [(np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in net.layers]
        self.policy_body, self.policy = MLP(net.policy_body), GaussianActing(net.policy)
        self.value = MLP(net.value)
        self.value_on_step = cfg.value_fn == "step"

    def __call__(
        self, features: np.ndarray, position: int, count: int, deterministic: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """features (B, in) raw step inputs -> action (B, act_dim), log-probability (B,), value (B,)."""
        B, d = features.shape[0], self.d_model
        feats = self.normalize(features)
        slot, filled = count % self.window, min(count + 1, self.window)
        x = self.scale * apply(self.embed, feats) + self.positions[position]
        for (qkv, out, ff1, ff2, norm1, norm2), (keys, values) in zip(self.layers, self.cache, strict=True):
            y = apply(qkv, x)  # (B, 3d): q | k | v
            q = y[:, :d].reshape(B, self.n_heads, 1, self.d_head)
            keys[:, :, slot] = y[:, d : 2 * d].reshape(B, self.n_heads, self.d_head)
            values[:, :, slot] = y[:, 2 * d :].reshape(B, self.n_heads, self.d_head)
            scores = (q @ keys[:, :, :filled].transpose(0, 1, 3, 2)) * self.d_head**-0.5
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            attended = (weights @ values[:, :, :filled]).reshape(B, d)  # heads merged back to (B, d)
            x = norm1(x + apply(out, attended))
            x = norm2(x + apply(ff2, np.maximum(apply(ff1, x), 0.0)))
        action, log_prob = self.policy(self.policy_body(x), deterministic)
        value = self.value(feats if self.value_on_step else x)[:, 0]
        return action, log_prob, value


class TrMRLAgent(AdaptiveAgent):
    """Acts step by step; keeps the key/value cache (cleared per episode or per trial)."""

    def __init__(self, net: TrMRLNetwork, spec: SuiteSpec, device: torch.device, evaluation: bool) -> None:
        self.net, self.spec, self.device, self.evaluation = net, spec, device, evaluation
        self.prev: PreviousStep | None = None
        self.cache: list[KV] | None = None
        self.fast: NumpyStep | None = None  # the numpy step (numpy_acting on the CPU), built per trial
        self.count = 0  # steps written since the memory was last cleared
        self.position = 0  # step index inside the current episode

    def new_trial(self, task_keys: np.ndarray) -> None:
        """Zero previous-step inputs, an empty memory (key / value cache) and step counters at 0; build the
        numpy step (``numpy_acting`` on the CPU), which reads the parameters and the normaliser now. See
        AdaptiveAgent.new_trial."""
        num_envs = len(task_keys)
        self.prev = PreviousStep(num_envs, self.spec.act_dim)
        self.num_envs, self.cache = num_envs, None  # allocated at the first torch-path act (inference mode)
        self.count = self.position = 0
        numpy_path = usable(self.device, self.net.cfg.numpy_acting)
        self.fast = NumpyStep(self.net, num_envs) if numpy_path else None

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One cached encoder step on (s_t, a_{t-1}, r_{t-1}, done_{t-1}) (B, obs_dim + act_dim + 2) at the
        current episode position: actions (B, act_dim), the mean in evaluation and a sample otherwise;
        extras ``log_prob`` (B,) and ``value`` (B,). Asserts that ``new_trial`` came first. See
        AdaptiveAgent.act."""
        assert self.prev is not None, "call new_trial() first"
        features = self.prev.features(obs)
        if self.fast is not None:
            action, log_prob, value = self.fast(features, self.position, self.count, self.evaluation)
        else:
            action, log_prob, value = self._torch_step(features)
        self.count += 1
        self.position += 1
        return action, {"log_prob": log_prob, "value": value}

    def _torch_step(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same step through the torch modules (off the CPU, or with numpy_acting off)."""
        # nothing here enters a gradient later: inference mode is cheaper than the sampler's no_grad
        with torch.inference_mode():
            if self.cache is None:
                self.cache = self.net.new_cache(self.num_envs, self.device)
            feats = self.net.normalize(torch.as_tensor(features, device=self.device))
            memory = self.net.encode_step(feats, self.position, self.cache, self.count)
            action, log_prob = self.net.policy.act(
                self.net.policy_body(memory), deterministic=self.evaluation
            )
            value = self.net.value_of(memory, feats)
        return action.cpu().numpy(), log_prob.cpu().numpy(), value.cpu().numpy()

    def observe(self, transition: Transition) -> None:
        """Keep the transition's action, reward and ``episode_done`` as the next step's previous-step input
        (``PreviousStep.update``). See AdaptiveAgent.observe."""
        assert self.prev is not None
        self.prev.update(transition)  # inactive rows keep their last valid (a, r, done), as trial_features

    def end_episode(self) -> None:
        """Position back to 0; in ``"episode"`` memory mode the memory is also cleared, in ``"trial"`` mode it
        carries over. See AdaptiveAgent.end_episode."""
        self.position = 0
        if self.net.cfg.memory == "episode":
            self.count = 0  # the ring buffer is overwritten from slot 0; old entries are never read


# ---------------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------------


class TrMRL(MetaLearner):
    """TrMRL (Melo, "Transformers are Meta-Reinforcement Learners", ICML 2022), trained with PPO over trials.

    ``TrMRL(spec, config, device, storage_dir)``: ``config`` is a ``TrMRLConfig`` (hyperparameters at the top
    of this module; defaults the paper's HalfCheetahVel settings); the network (``TrMRLNetwork``) lives on
    ``device``; ``storage_dir`` is not used. Raises ``ValueError`` (from ``TrMRLNetwork``) for an unknown
    ``memory`` or ``value_fn``. Acting: one cached encoder step per env step, the memory cleared per episode
    or per trial (``memory``); the evaluation agent acts with the mean action. A ``train_step`` samples
    ``meta_batch_size`` trials and applies PPO over whole trials (AdamW with separate policy and value
    learning rates, geometric learning-rate decay between iterations; module docstring).
    """

    name = "trmrl"
    parallel_update = True  # see MetaLearner.parallel_update; measured in README "Performance"
    Config = TrMRLConfig

    def __init__(
        self, spec: SuiteSpec, config: TrMRLConfig, device: torch.device, storage_dir: Path | None = None
    ) -> None:
        super().__init__(spec, config, device, storage_dir)
        cfg = config
        self.net = TrMRLNetwork(spec, cfg).to(device)
        value_params = list(self.net.value.parameters())
        ids = {id(p) for p in value_params}
        policy_params = [p for p in self.net.parameters() if id(p) not in ids]  # embedding, encoder, policy
        # fused: one kernel for all parameters (the per-tensor loop costs ~1.2 ms more per paper-profile
        # update step on the CPU); the same AdamW to float rounding
        self.optimizer = torch.optim.AdamW(
            [{"params": policy_params, "lr": cfg.policy_lr}, {"params": value_params, "lr": cfg.value_lr}],
            weight_decay=cfg.weight_decay,
            fused=cfg.fused_optimizer or None,
        )

        def decay(iteration: int) -> float:  # geometric from lr_decay_start to lr_decay_end
            span = max(1, cfg.lr_decay_end - cfg.lr_decay_start)
            progress = min(max(iteration - cfg.lr_decay_start, 0), span) / span
            return cfg.lr_min_factor**progress

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [decay, decay if cfg.decay_value_lr else (lambda _: 1.0)]
        )
        self.ppo = PPOParams.from_config(config)
        self.return_norm = RunningNorm(1).to(device)  # running variance of discounted returns

    @classmethod
    def validate(cls, config: TrMRLConfig, spec: SuiteSpec | None = None) -> None:
        """Settings that only make sense together (single settings are checked by their ranges)."""
        if config.d_model % config.n_heads:
            raise ValueError(
                f"n_heads={config.n_heads} must divide d_model={config.d_model} (--set either to fit)"
            )
        if not config.policy_hidden:
            raise ValueError("--set policy_hidden=: needs at least one layer width >= 1, e.g. 64,64")

    @classmethod
    def profile(cls, profile: str, family: str) -> dict[str, Any]:
        """Meta-World: the official Meta-World command (quick: fewer tasks and epochs, larger learning
        rates). Point-nav (both profiles): a small test-bed encoder (docs/tuning/trmrl.md). Locomotion: paper
        = the dataclass defaults; quick as chosen in docs/tuning/trmrl.md. See MetaLearner.profile."""
        if family == "metaworld":
            # official Meta-World command: 4 layers / 4 heads / d 32 / FFN 128, constant lr 5e-5
            paper = {"d_model": 32, "n_heads": 4, "n_layers": 4, "d_ff": 128, "gamma": 0.9,
                     "gae_lambda": 0.95, "clip": 0.2, "policy_lr": 5e-5, "value_lr": 5e-5,
                     "minibatch_steps": 32, "epochs": 10, "meta_batch_size": 25, "init_std": 1.0,
                     "output_gain": 0.01, "lr_min_factor": 1.0}  # fmt: skip
            if profile == "paper":
                return paper
            return paper | {"meta_batch_size": 10, "epochs": 4, "policy_lr": 3e-4, "value_lr": 3e-4}
        if family == "point-nav":
            # quick test bed: a small encoder whose window (one episode = 100 steps) crosses episode
            # boundaries; departures from the paper and the choice recorded in docs/tuning/trmrl.md
            return {"memory": "trial", "window": 100, "d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64,
                    "embed_scale": 32**0.5, "meta_batch_size": 64, "gamma": 0.9, "gae_lambda": 0.95,
                    "clip": 0.2, "policy_lr": 1e-3, "value_lr": 1e-3, "epochs": 4, "minibatch_steps": 3200,
                    "normalize_advantages": True, "init_std": 0.5, "output_gain": 0.01, "value_fn": "shared",
                    "max_grad_norm": 1.0, "lr_decay_start": 100, "lr_decay_end": 300, "lr_min_factor": 0.1,
                    "decay_value_lr": True}  # fmt: skip
        # locomotion: the paper's HalfCheetahVel settings are the dataclass defaults; quick chosen as
        # recorded in docs/tuning/trmrl.md (RL²'s quick PPO recipe on a small encoder)
        if profile == "paper":
            return {}
        # (validation split, seeds 100-101: constant learning rates, policy lr 5e-4, init std 0.5 as RL²'s;
        # a 25-step window instead of the paper's 5; the official AntDir / Meta-World output gain 0.01;
        # seeds 100-103: rewards scaled by the std of the discounted return, 0.672 against 0.646;
        # seeds 100-105: gamma 0.97 with the value head on the memory, its loss training the encoder
        # ("shared"), 0.821 against 0.669 (at gamma 0.9 the cheetah learns to run on its back); then both
        # learning rates decayed x0.1 over the second half of the 150 quick iterations, 0.897 against 0.821)
        return {"d_model": 64, "n_heads": 8, "n_layers": 2, "d_ff": 256, "window": 25, "policy_lr": 5e-4,
                "value_lr": 1e-3, "lr_decay_start": 75, "lr_decay_end": 150, "lr_min_factor": 0.1,
                "decay_value_lr": True, "init_std": 0.5, "output_gain": 0.01, "gamma": 0.97,
                "value_fn": "shared", "normalize_observations": True, "normalize_advantages": True,
                "normalize_rewards": True, "clip": 0.2, "gae_lambda": 0.95, "epochs": 8,
                "minibatch_steps": 1600, "target_kl": 0.03}  # fmt: skip

    def make_agent(self, evaluation: bool = False) -> TrMRLAgent:
        """Evaluation: mean actions (the episodic memory is the only thing that adapts)."""
        return TrMRLAgent(self.net, self.spec, self.device, evaluation)

    def _minibatches(self, num_trials: int, trial_steps: int) -> int:
        """``minibatch_steps`` env steps per minibatch, rounded to whole trials (at least one trial each)."""
        return max(1, min(num_trials, round(num_trials * trial_steps / self.config.minibatch_steps)))

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """``meta_batch_size`` trials with the stochastic policy; rewards scaled with ``normalize_rewards``;
        GAE advantages (gae_lambda) and value targets (value_lambda) across each trial; ``ppo_update`` over
        minibatches of whole trials (about ``minibatch_steps`` env steps each), re-encoded in batch (under
        bfloat16 autocast with ``update_precision="bfloat16"``); then the observation normaliser update and
        one learning-rate schedule step. Returns the PPO statistics, ``policy_lr`` (this iteration's),
        ``train_return`` and ``action_std``. See MetaLearner.train_step."""
        cfg = self.config
        batch = ctx.sample_trials(self.make_agent(), ctx.sample_tasks(cfg.meta_batch_size))
        raw_feats = trial_features(batch, self.device)
        feats = self.net.normalize(raw_feats)
        actions = batch.tensor("actions", self.device)
        valid = batch.tensor("valid", self.device, torch.bool)
        old_log_prob = batch.tensor("log_prob", self.device)
        values = batch.tensor("value", self.device)
        rewards = batch.tensor("rewards", self.device)
        if cfg.normalize_rewards:
            rewards = scale_by_return_std(rewards, valid, cfg.gamma, self.return_norm)
        advantages, _ = gae_over_trials(rewards, values, valid, cfg.gamma, cfg.gae_lambda)
        _, returns = gae_over_trials(rewards, values, valid, cfg.gamma, cfg.value_lambda)
        self.ppo.minibatches = self._minibatches(*rewards.shape)

        bf16 = cfg.update_precision == "bfloat16"

        def evaluate(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                memory = self.net.encode(feats[idx])
            dist, value = self.net.heads(memory.float(), feats[idx])  # heads and losses in float32
            return GaussianHead.log_prob(dist, actions[idx]), GaussianHead.entropy(dist), value

        stats = ppo_update(
            evaluate, old_log_prob, advantages, returns, valid, self.optimizer,
            list(self.net.parameters()), self.ppo, ctx.rng,
        )  # fmt: skip
        if self.net.obs_norm is not None:  # after the update: the batch was sampled under the old statistics
            self.net.obs_norm.update(raw_feats[..., : self.spec.obs_dim][valid])
        stats["policy_lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        stats["train_return"] = float(batch.episode_returns().mean())
        stats["action_std"] = self.net.policy.log_std.exp().mean().item()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The network (with the normaliser's statistics), the AdamW and scheduler states, the return
        normaliser and the config (not read back). See MetaLearner.state_dict."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "return_norm": self.return_norm.state_dict(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a ``state_dict``; the optimizer under this learner's ``fused_optimizer``; a state without
        ``return_norm`` (older checkpoints) keeps the fresh return normaliser."""
        self.net.load_state_dict(state["net"])
        load_optimizer_state(self.optimizer, state["optimizer"])  # under this learner's fused_optimizer
        self.scheduler.load_state_dict(state["scheduler"])
        if "return_norm" in state:  # checkpoints written before normalize_rewards existed: unused there
            self.return_norm.load_state_dict(state["return_norm"])
