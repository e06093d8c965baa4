"""VariBAD (Zintgraf et al., ICLR 2020): a variational belief over the task, PPO on the belief.

Paper: "VariBAD: A Very Good Method for Bayes-Adaptive Deep RL via Meta-Learning", ICLR 2020.
Official code (facts only, no code carried over): ``lmzintgraf/varibad``; hyperparameters from
``config/mujoco/args_cheetah_vel_varibad.py`` at commit a36d251 ("cheetah-vel config" below) and
``config/mujoco/args_humanoid_dir_varibad.py`` at commit 2ea44c5 ("humanoid config").

What adapts: a recurrent encoder q(m | tau_{:t}) reads every transition (a_t, r_t, s_{t+1}) of the
trial and outputs a diagonal Gaussian belief N(mu_t, diag(exp(logvar_t))) over a latent task
variable m. At the first step of a trial the belief is the prior N(0, I); the GRU hidden state is
carried across the episodes of the trial and cleared only at a new trial. The policy is an MLP on
[s_t, mu_t, logvar_t]; it has no memory of its own.

Training iteration (``VariBAD.train_step``), all counted in environment steps by the harness:

1. sample ``meta_batch_size`` trials of K = ``train_episodes`` (default ``spec.episodes_per_trial``)
   episodes on training tasks with the current (stochastic) policy; the agent updates the belief in
   ``observe``;
2. append the trials to the VAE trajectory buffer (``AppendOnlyArrays`` in the run directory);
3. recompute the beliefs of every step from the recorded trials with the encoder under
   ``torch.no_grad()`` (equal to the online ones; the RL loss never reaches the encoder, as the
   official default ``rlloss_through_encoder=False``). With ``rl_through_encoder`` (the official
   ``rlloss_through_encoder=True``, ``algorithms/ppo.py`` of ``lmzintgraf/varibad``) each PPO minibatch
   re-encodes its trials with the graph kept, so the PPO loss also trains the encoder. Departures from
   the official code there: the policy's Adam steps the encoder (in its own parameter group at the VAE
   learning rate; officially the VAE optimiser does), the encoder's gradient is clipped together with the
   policy's (officially unclipped by default), and the VAE keeps its separate updates after PPO
   (officially the VAE loss is added to every PPO minibatch). The paper's VariBAD does not do this
   (the point-nav quick profile does, docs/tuning/varibad.md);
4. PPO on the policy (GAE across the episodes of a trial, ``algorithms.common.ppo``), rewards divided
   by a running std of the discounted return (``norm_rew_for_policy=True``); with ``lr_anneal_steps``
   (the official ``policy_anneal_lr``) its learning rates fall linearly to 0 over that many env steps;
5. ``vae_updates`` Adam steps on the ELBO of ``vae_batch_trials`` trials drawn from the newest
   ``vae_buffer_size`` trials of the buffer.

ELBO of one trial with T valid transitions and beliefs q_0 = N(0, I), q_1, ..., q_T (q_t after t
transitions), to be minimised:

    L = sum_{t in E} [ sum_{j in D} (d(z_t, s_j, a_j, s_{j+1}) - r_j)^2 + kl_weight * KL(q_t || q_{t-1}) ]

with z_t ~ q_t (reparameterised), KL(q_0 || q_{-1}) := KL(q_0 || N(0, I)) = 0, E a subsample of
``subsample_elbos`` of the T + 1 belief indices and D a subsample of ``subsample_decodes`` of the T
transitions (0 = all; drawn without replacement per trial from the run's numpy generator): every
belief decodes rewards of the whole trial, past and future. The batch loss is the mean of L over
trials (terms summed, not averaged: ``vae_avg_elbo_terms=False``, ``vae_avg_reconstruction_terms=
False`` in the cheetah-vel config). Gradients through the GRU are truncated every ``tbptt`` steps.

Evaluation (``make_agent(evaluation=True)``): mean actions, belief carried across all episodes of the
meta-test trial, as in the paper's evaluation. Nothing else adapts; the learner is never touched.

Departures from the official code (stated, not hidden): the prior at t = 0 is exactly N(0, I) (the
official encoder maps a zero hidden state through its output heads); the value loss is plain 0.5 *
MSE without Huber loss or value clipping (the shared PPO block has neither); steps after an MDP
termination (``valid == False``) never enter the encoder, the buffer stores the valid transitions of a
trial packed to the front with their count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from algorithms.common.nets import GaussianHead, RunningNorm, gru_step, mlp
from algorithms.common.numpy_acting import MLP, GaussianActing, GRUCell, Normaliser, apply, linear, usable
from algorithms.common.ppo import PPOParams, gae_over_trials, ppo_update, scale_by_return_std
from metarl_protocol import AdaptiveAgent, MetaLearner, SuiteSpec, TrainContext, Transition
from metarl_protocol.settings import setting
from metarl_protocol.storage import AppendOnlyArrays


@dataclass
class VariBADConfig:
    """Hyperparameters; defaults are the cheetah-vel config's values unless marked otherwise."""

    # encoder q(m | tau): embeddings -> GRU -> (mu, logvar)
    latent_dim: int = setting(5, low=1)  # latent_dim (10 in the humanoid / ant-goal configs)
    action_embed: int = setting(16, low=1)  # action_embedding_size
    state_embed: int = setting(32, low=1)  # state_embedding_size
    reward_embed: int = setting(16, low=1)  # reward_embedding_size
    gru_hidden: int = setting(128, low=1)  # encoder_gru_hidden_size
    # reward decoder p(r | m, s, a, s'), deterministic (MSE)
    decoder_hidden: tuple[int, ...] = setting((64, 32), low=1)  # reward_decoder_layers
    decoder_state_action: bool = True  # input_prev_state and input_action (MuJoCo configs: True)
    # ELBO / VAE training
    kl_weight: float = 0.1  # kl_weight
    subsample_elbos: int = 50  # vae_subsample_elbos (0 = every belief; humanoid config: None = all)
    subsample_decodes: int = 50  # vae_subsample_decodes (0 = every reward)
    tbptt: int = 50  # tbptt_stepsize (0 = full backpropagation through the trial)
    vae_lr: float = setting(1e-3, low=0.0, low_open=True)  # lr_vae
    vae_buffer_size: int = setting(10_000, low=1)  # size_vae_buffer, in trials (the newest ones are sampled)
    vae_batch_trials: int = setting(10, low=1)  # vae_batch_num_trajs
    vae_updates: int = 1  # num_vae_updates (10 in the humanoid config)
    # policy: state and belief each normalised and embedded, then a tanh MLP
    policy_state_embed: int = setting(64, low=1)  # policy_state_embedding_dim
    policy_latent_embed: int = setting(64, low=1)  # policy_latent_embedding_dim
    policy_hidden: tuple[int, ...] = setting((128, 128), low=1)  # policy_layers, tanh
    normalize_state: bool = True  # norm_state_for_policy
    normalize_latent: bool = True  # norm_latent_for_policy
    normalize_rewards: bool = True  # norm_rew_for_policy (running std of the discounted return)
    init_std: float = setting(1.0, low=0.0, low_open=True)  # policy_init_std
    # on the CPU, act and update the belief through the numpy copies (NumpyActing: the same math, faster at
    # ~10 envs; equal to the torch modules up to float32 rounding); False: the torch modules
    numpy_acting: bool = True
    # rlloss_through_encoder (official default False): the PPO loss also trains the encoder, through the
    # beliefs the policy reads; its encoder gradient is applied with the VAE learning rate
    rl_through_encoder: bool = False
    # learning rate of that encoder group in the PPO optimizer (not an official option; 0 = vae_lr, the
    # official behaviour): a smaller PPO step on the encoder than the VAE's
    encoder_rl_lr: float = setting(0.0, low=0.0)
    # PPO (shared block)
    meta_batch_size: int = setting(16, low=1)  # trials per iteration (num_processes = 16)
    # episodes per training trial (max_rollouts_per_task, 2 on MuJoCo); 0 = the suite's training trial
    # length. The belief is carried over the meta-test trial (6 episodes on point-nav): trials as long as
    # that train the encoder and the policy on the belief of every episode it will be asked to act in
    train_episodes: int = setting(0, low=0)
    lr: float = setting(7e-4, low=0.0, low_open=True)  # lr_policy
    # policy_anneal_lr (official mujoco configs: False): PPO's learning rates (policy, and the encoder's
    # group with rl_through_encoder) fall linearly to 0 at this many env steps, factor 1 - steps / this at
    # the start of each iteration as the official LambdaLR over num_updates; 0 = constant
    lr_anneal_steps: int = setting(0, low=0)
    anneal_vae_lr: bool = False  # the VAE's learning rate follows that schedule too (not official)
    adam_eps: float = setting(1e-8, low=0.0, low_open=True)  # policy_eps
    epochs: int = setting(2, low=1)  # ppo_num_epochs
    minibatches: int = setting(4, low=1)  # ppo_num_minibatch (split over trials)
    clip: float = setting(0.1, low=0.0, low_open=True)  # ppo_clip_param
    gamma: float = setting(0.97, low=0.0, high=1.0)  # policy_gamma
    gae_lambda: float = setting(0.9, low=0.0, high=1.0)  # policy_tau
    entropy_coef: float = 0.01  # policy_entropy_coef
    value_coef: float = 0.5  # policy_value_loss_coef
    max_grad_norm: float = setting(0.5, low=0.0, low_open=True)  # policy_max_grad_norm
    normalize_advantages: bool = True  # the official PPO standardises advantages
    target_kl: float | None = setting(
        None, low=0.0, low_open=True
    )  # not in the official code (None = always all epochs)


# -- math -----------------------------------------------------------------------------------------------
def kl_diag_gaussians(
    mu: torch.Tensor, logvar: torch.Tensor, mu_prev: torch.Tensor, logvar_prev: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, e^logvar) || N(mu_prev, e^logvar_prev)) of diagonal Gaussians, summed over the last dim.

    Closed form: 0.5 * sum(logvar_prev - logvar - 1 + (e^logvar + (mu - mu_prev)^2) / e^logvar_prev).
    Shapes (..., L) -> (...). Paper eq. (10) / official ``vae.compute_kl_loss``.
    """
    var_ratio = torch.exp(logvar - logvar_prev)
    sq = (mu - mu_prev).pow(2) * torch.exp(-logvar_prev)
    return 0.5 * (logvar_prev - logvar - 1.0 + var_ratio + sq).sum(-1)


def subsample(
    lengths: np.ndarray, count: int, total: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``count`` distinct indices in [0, lengths[b]) drawn uniformly (0 = all ``total`` indices).

    Returns (idx (B, k) int64, mask (B, k) bool); ``mask`` is False where a row has fewer than k
    indices (idx then points at a padding position, never used). Without subsampling idx is
    arange(total) on every row and nothing is drawn from ``rng``.
    """
    B = len(lengths)
    if count <= 0 or count >= total:
        idx = np.broadcast_to(np.arange(total), (B, total)).copy()
    else:
        keys = rng.random((B, total))
        keys[np.arange(total)[None, :] >= lengths[:, None]] = 2.0  # padding sorts last
        idx = np.argsort(keys, axis=1, kind="stable")[:, :count]
    return idx.astype(np.int64), idx < lengths[:, None]


def pack_valid(
    valid: np.ndarray, **fields: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Move each trial's valid steps to the front, in order (padding after them keeps zeros).

    valid (B, T) bool; each field (B, T, ...). Returns (packed fields, lengths (B,) = valid steps per
    trial, before (B, T) = valid steps strictly before step t, i.e. the index of step t's belief).
    """
    B, T = valid.shape
    order = np.argsort(~valid, axis=1, kind="stable")
    rows = np.arange(B)[:, None]
    lengths = valid.sum(1).astype(np.int64)
    keep = np.arange(T)[None, :] < lengths[:, None]
    packed = {}
    for name, arr in fields.items():
        p = arr[rows, order]
        p[~keep] = 0
        packed[name] = np.ascontiguousarray(p)
    before = np.cumsum(valid, axis=1) - valid
    return packed, lengths, before.astype(np.int64)


# -- networks -------------------------------------------------------------------------------------------
def embed(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear + ReLU feature extractor (the official ``FeatureExtractor`` with ReLU)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())


class BeliefEncoder(nn.Module):
    """(a_t, r_t, s_{t+1}) embeddings (16 / 16 / 32) -> GRU (128) -> belief mean and log-variance (L)."""

    def __init__(self, spec: SuiteSpec, cfg: VariBADConfig) -> None:
        super().__init__()
        self.action = embed(spec.act_dim, cfg.action_embed)
        self.reward = embed(1, cfg.reward_embed)
        self.state = embed(spec.obs_dim, cfg.state_embed)
        self.gru = nn.GRU(
            cfg.action_embed + cfg.reward_embed + cfg.state_embed, cfg.gru_hidden, batch_first=True
        )
        self.mu = nn.Linear(cfg.gru_hidden, cfg.latent_dim)
        self.logvar = nn.Linear(cfg.gru_hidden, cfg.latent_dim)

    def inputs(self, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """(B, T, act), (B, T), (B, T, obs) -> (B, T, 64) GRU inputs."""
        return torch.cat([self.action(action), self.reward(reward.unsqueeze(-1)), self.state(next_obs)], -1)

    def forward(
        self,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        hidden: torch.Tensor | None = None,
        tbptt: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posteriors after each of T transitions: mu, logvar (B, T, L) and the last hidden (1, B, H).

        ``tbptt > 0`` cuts the gradient through the hidden state every ``tbptt`` steps (values unchanged).
        """
        x = self.inputs(action, reward, next_obs)
        if tbptt <= 0:
            out, hidden = self.gru(x, hidden)
        else:
            chunks = []
            for start in range(0, x.shape[1], tbptt):
                o, hidden = self.gru(x[:, start : start + tbptt], hidden)
                chunks.append(o)
                hidden = hidden.detach()
            out = torch.cat(chunks, 1)
        return self.mu(out), self.logvar(out), hidden

    def step(
        self, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One transition per row (acting): (B, act), (B,), (B, obs), hidden (B, H) -> mu, logvar (B, L)
        and the next hidden (B, H); equal to ``forward`` on a length-1 sequence."""
        hidden = gru_step(self.gru, self.inputs(action, reward, next_obs), hidden)
        return self.mu(hidden), self.logvar(hidden), hidden


class RewardDecoder(nn.Module):
    """r_hat = MLP(64-32, ReLU)([m, emb(s'), emb(s), emb(a)]); (s, a) only with ``decoder_state_action``."""

    def __init__(self, spec: SuiteSpec, cfg: VariBADConfig) -> None:
        super().__init__()
        self.use_sa = cfg.decoder_state_action
        self.next_state = embed(spec.obs_dim, cfg.state_embed)
        in_dim = cfg.latent_dim + cfg.state_embed
        if self.use_sa:
            self.state = embed(spec.obs_dim, cfg.state_embed)
            self.action = embed(spec.act_dim, cfg.action_embed)
            in_dim += cfg.state_embed + cfg.action_embed
        self.net = mlp(in_dim, tuple(cfg.decoder_hidden), 1, nn.ReLU)

    def forward(
        self, z: torch.Tensor, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
    ) -> torch.Tensor:
        """z (..., L) and obs / action / next_obs (..., ·), broadcastable -> predicted rewards (...)."""
        parts = [self.next_state(next_obs)]
        if self.use_sa:
            parts += [self.state(obs), self.action(action)]
        shape = torch.broadcast_shapes(z.shape[:-1], parts[0].shape[:-1])
        x = torch.cat([z.expand(*shape, -1)] + [p.expand(*shape, -1) for p in parts], -1)
        return self.net(x).squeeze(-1)


class BeliefPolicy(nn.Module):
    """[norm(s), norm(mu, logvar)] -> ReLU embeddings (64 + 64) -> tanh MLPs -> Gaussian policy, value."""

    def __init__(self, spec: SuiteSpec, cfg: VariBADConfig) -> None:
        super().__init__()
        L = cfg.latent_dim
        self.state_norm = RunningNorm(spec.obs_dim) if cfg.normalize_state else None
        self.latent_norm = RunningNorm(2 * L) if cfg.normalize_latent else None
        self.state = embed(spec.obs_dim, cfg.policy_state_embed)
        self.latent = embed(2 * L, cfg.policy_latent_embed)
        width = cfg.policy_state_embed + cfg.policy_latent_embed
        hidden = tuple(cfg.policy_hidden)
        self.actor = mlp(width, hidden, None, nn.Tanh)
        self.critic = mlp(width, hidden, 1, nn.Tanh)
        self.head = GaussianHead(hidden[-1], spec.act_dim, init_std=cfg.init_std)

    def features(self, obs: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """obs (..., obs_dim), mu / logvar (..., L) -> (..., 128) embedded input."""
        latent = torch.cat([mu, logvar], -1)
        if self.state_norm is not None:
            obs = self.state_norm(obs)
        if self.latent_norm is not None:
            latent = self.latent_norm(latent)
        return torch.cat([self.state(obs), self.latent(latent)], -1)

    def forward(
        self, obs: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.distributions.Normal, torch.Tensor]:
        """obs (..., obs_dim), mu / logvar (..., L) -> (Normal over actions (..., act_dim), value (...)).

        Actor and critic are separate tanh MLPs on the same ``features``.
        """
        x = self.features(obs, mu, logvar)
        return self.head(self.actor(x)), self.critic(x).squeeze(-1)

    def update_norms(self, obs: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Merge (N, ·) inputs into the running statistics (after a PPO update, as RL²)."""
        if self.state_norm is not None:
            self.state_norm.update(obs)
        if self.latent_norm is not None:
            self.latent_norm.update(torch.cat([mu, logvar], -1))


# -- agent ----------------------------------------------------------------------------------------------
class NumpyActing:
    """``BeliefPolicy`` and ``BeliefEncoder.step`` in numpy, for acting on the CPU (numpy_acting.py).

    Holds copies of the parameters; build it at the start of each trial (the normalisers' statistics are
    read then). Arrays are (B, ·) float32.
    """

    def __init__(self, encoder: BeliefEncoder, policy: BeliefPolicy) -> None:
        self.embed_action, self.embed_reward = MLP(encoder.action), MLP(encoder.reward)
        self.embed_state, self.gru = MLP(encoder.state), GRUCell(encoder.gru)
        self.mu, self.logvar = linear(encoder.mu), linear(encoder.logvar)
        self.state_norm, self.latent_norm = Normaliser(policy.state_norm), Normaliser(policy.latent_norm)
        self.policy_state, self.policy_latent = MLP(policy.state), MLP(policy.latent)
        self.actor, self.critic = MLP(policy.actor), MLP(policy.critic)
        self.head = GaussianActing(policy.head)

    def act(
        self, obs: np.ndarray, mu: np.ndarray, logvar: np.ndarray, deterministic: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``BeliefPolicy``: (action (B, act_dim), log-probability (B,), value (B,))."""
        latent = self.latent_norm(np.concatenate([mu, logvar], -1))
        x = np.concatenate([self.policy_state(self.state_norm(obs)), self.policy_latent(latent)], -1)
        action, log_prob = self.head(self.actor(x), deterministic)
        return action, log_prob, self.critic(x)[:, 0]

    def step(
        self, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray, hidden: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``BeliefEncoder.step``: one transition per row -> mu, logvar (B, L), next hidden (B, H)."""
        x = np.concatenate(
            [self.embed_action(action), self.embed_reward(reward[:, None]), self.embed_state(next_obs)], -1
        )
        hidden = self.gru(x, hidden)
        return apply(self.mu, hidden), apply(self.logvar, hidden), hidden


class VariBADAgent(AdaptiveAgent):
    """Acts on [s, belief]; ``observe`` advances the encoder one transition on the rows still active.

    Extras per step: ``log_prob``, ``value`` and the belief the action was taken under
    (``belief_mu``, ``belief_logvar``, (B, L)).
    """

    def __init__(self, learner: VariBAD, evaluation: bool) -> None:
        self.encoder, self.policy = learner.encoder, learner.policy
        self.latent_dim, self.gru_hidden = learner.config.latent_dim, learner.config.gru_hidden
        self.device, self.evaluation = learner.device, evaluation
        self.numpy_acting = learner.config.numpy_acting
        self.fast: NumpyActing | None = None  # the numpy copies (numpy_acting on the CPU), built per trial
        # torch tensors, or numpy arrays on the numpy path
        self.hidden: Any = None
        self.mu: Any = None
        self.logvar: Any = None

    def new_trial(self, task_keys: np.ndarray) -> None:
        """Every row starts at the prior belief N(0, I) (mu = logvar = 0, (B, L)) with a zero GRU hidden
        state (B, gru_hidden), carried from then on across all episodes of the trial; build the numpy copies
        (``numpy_acting`` on the CPU), which read the parameters and normalisers now. See
        AdaptiveAgent.new_trial."""
        B = len(task_keys)  # rebinding (never mutating) keeps shallow clones independent
        self.fast = NumpyActing(self.encoder, self.policy) if usable(self.device, self.numpy_acting) else None
        if self.fast is not None:
            self.hidden = np.zeros((B, self.gru_hidden), np.float32)
            self.mu = np.zeros((B, self.latent_dim), np.float32)  # prior N(0, I)
            self.logvar = np.zeros((B, self.latent_dim), np.float32)
            return
        self.hidden = torch.zeros(B, self.gru_hidden, device=self.device)
        self.mu = torch.zeros(B, self.latent_dim, device=self.device)  # prior N(0, I)
        self.logvar = torch.zeros(B, self.latent_dim, device=self.device)

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions (B, act_dim) from the policy on [obs, belief]: the mean in evaluation and a sample
        otherwise; extras as the class docstring. Asserts that ``new_trial`` came first. See
        AdaptiveAgent.act."""
        assert self.mu is not None and self.logvar is not None, "call new_trial() first"
        if self.fast is not None:
            obs = np.asarray(obs, np.float32)
            action, log_prob, value = self.fast.act(obs, self.mu, self.logvar, self.evaluation)
            beliefs = {"belief_mu": self.mu, "belief_logvar": self.logvar}  # never mutated: rebound
            return action, {"log_prob": log_prob, "value": value, **beliefs}
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        x = self.policy.features(o, self.mu, self.logvar)
        action, log_prob = self.policy.head.act(self.policy.actor(x), deterministic=self.evaluation)
        value = self.policy.critic(x).squeeze(-1)
        extras = {
            "log_prob": log_prob.cpu().numpy(),
            "value": value.cpu().numpy(),
            "belief_mu": self.mu.cpu().numpy(),
            "belief_logvar": self.logvar.cpu().numpy(),
        }
        return action.cpu().numpy(), extras

    def observe(self, transition: Transition) -> None:
        """One encoder step on (a_t, r_t, s_{t+1}) of every row; belief and hidden state change only on the
        rows with ``transition.active``. See AdaptiveAgent.observe."""
        assert self.mu is not None and self.logvar is not None
        if self.fast is not None:
            mu, logvar, hidden = self.fast.step(
                np.asarray(transition.action, np.float32),
                np.asarray(transition.reward, np.float32),
                np.asarray(transition.next_obs, np.float32),
                self.hidden,
            )
            active = np.asarray(transition.active, bool)[:, None]
            self.mu = np.where(active, mu, self.mu)
            self.logvar = np.where(active, logvar, self.logvar)
            self.hidden = np.where(active, hidden, self.hidden)
            return
        dev = self.device
        a = torch.as_tensor(transition.action, dtype=torch.float32, device=dev)
        r = torch.as_tensor(transition.reward, dtype=torch.float32, device=dev)
        s = torch.as_tensor(transition.next_obs, dtype=torch.float32, device=dev)
        mu, logvar, hidden = self.encoder.step(a, r, s, self.hidden)  # one GRU step on every row
        active = torch.as_tensor(transition.active, device=dev)[:, None]
        self.mu = torch.where(active, mu, self.mu)
        self.logvar = torch.where(active, logvar, self.logvar)
        self.hidden = torch.where(active, hidden, self.hidden)


# -- learner --------------------------------------------------------------------------------------------
class VariBAD(MetaLearner):
    """VariBAD (Zintgraf et al., ICLR 2020): PPO on [state, belief], the belief from a recurrent VAE encoder.

    ``VariBAD(spec, config, device, storage_dir)``: ``config`` is a ``VariBADConfig`` (hyperparameters at the
    top of this module, defaults from the official cheetah-vel config); encoder, decoder and policy live on
    ``device``; the VAE's trial buffer is an ``AppendOnlyArrays`` under ``storage_dir / "vae_buffer"`` (in
    memory when ``storage_dir`` is None), each row one trial of ``train_episodes`` x H steps. Acting: the
    belief starts at the prior N(0, I), the encoder updates it after each transition, and it is carried
    across the episodes of a trial; the evaluation agent acts with the mean action. A ``train_step`` is
    steps 1-5 of the module docstring: sample trials, store them, PPO on the policy, VAE updates.
    """

    name = "varibad"
    Config = VariBADConfig

    def __init__(
        self, spec: SuiteSpec, config: VariBADConfig, device: torch.device, storage_dir: Path | None = None
    ) -> None:
        super().__init__(spec, config, device, storage_dir)
        cfg = config
        self.encoder = BeliefEncoder(spec, cfg).to(device)
        self.decoder = RewardDecoder(spec, cfg).to(device)
        self.policy = BeliefPolicy(spec, cfg).to(device)
        self.return_norm = RunningNorm(1).to(device)  # running variance of discounted returns
        groups = [{"params": list(self.policy.parameters()), "lr": cfg.lr}]
        if cfg.rl_through_encoder:
            groups.append({"params": list(self.encoder.parameters()), "lr": cfg.encoder_rl_lr or cfg.vae_lr})
        self.policy_optimizer = torch.optim.Adam(groups, eps=cfg.adam_eps)
        self.base_lrs = [g["lr"] for g in groups]
        self.vae_optimizer = torch.optim.Adam(
            [*self.encoder.parameters(), *self.decoder.parameters()], lr=cfg.vae_lr
        )
        self.ppo = PPOParams.from_config(cfg)
        self.train_episodes = cfg.train_episodes or spec.episodes_per_trial
        T = self.train_episodes * spec.horizon
        self.buffer = AppendOnlyArrays(
            None if storage_dir is None else Path(storage_dir) / "vae_buffer",
            {
                "obs": ((T, spec.obs_dim), np.float32),
                "action": ((T, spec.act_dim), np.float32),
                "reward": ((T,), np.float32),
                "next_obs": ((T, spec.obs_dim), np.float32),
                "length": ((), np.int64),
            },
        )

    @classmethod
    def validate(cls, config: VariBADConfig, spec: SuiteSpec | None = None) -> None:
        """Raise ``ValueError`` for a size or count < 1 (embeddings, gru_hidden, latent_dim, VAE buffer and
        batch, meta_batch_size, epochs, minibatches); subsample_elbos, subsample_decodes, tbptt or
        vae_updates < 0; an empty ``policy_hidden`` or a width < 1 there or in ``decoder_hidden``;
        kl_weight < 0; init_std, lr or vae_lr <= 0. See MetaLearner.validate."""
        positive = ("latent_dim", "action_embed", "state_embed", "reward_embed", "gru_hidden",
                    "vae_buffer_size", "vae_batch_trials", "policy_state_embed", "policy_latent_embed",
                    "meta_batch_size", "epochs", "minibatches")  # fmt: skip
        for name in positive:
            if getattr(config, name) < 1:
                raise ValueError(f"{name}={getattr(config, name)}: must be >= 1")
        for name in ("subsample_elbos", "subsample_decodes", "tbptt", "vae_updates"):
            if getattr(config, name) < 0:
                raise ValueError(f"{name}={getattr(config, name)}: must be >= 0 (0 = all / none)")
        if not config.policy_hidden or min(config.policy_hidden) < 1:
            raise ValueError(f"policy_hidden={config.policy_hidden}: needs at least one layer width >= 1")
        if any(w < 1 for w in config.decoder_hidden):
            raise ValueError(f"decoder_hidden={config.decoder_hidden}: widths must be >= 1")
        if config.kl_weight < 0 or config.init_std <= 0 or config.lr <= 0 or config.vae_lr <= 0:
            raise ValueError("kl_weight must be >= 0 and init_std, lr, vae_lr > 0")

    @classmethod
    def profile(cls, profile: str, family: str) -> dict[str, Any]:
        """Point-nav (both profiles): chosen on validation goals (docs/tuning/varibad.md), with
        ``rl_through_encoder``. Meta-World: the cheetah-vel values with meta_batch_size 25 (paper) / 10
        (quick). Locomotion: the cheetah-vel config (the dataclass defaults). See MetaLearner.profile."""
        if family == "point-nav":
            # chosen on validation goals (docs/tuning/varibad.md). t1-t5 (the paper's VariBAD: the RL loss
            # stops at the beliefs) never left the "stand still" level: the VAE alone learns goal inference
            # too slowly for this budget (on random-walk trials its belief explains ~0% of the goal's
            # variance after 400-1000 VAE updates, while a supervised read-out of the same encoder learns it
            # in ~250), and the policy settles at the start before the belief is informative. t6 adds the
            # official rlloss_through_encoder option (rl_through_encoder), so PPO also shapes the encoder
            # (validation 0.63 at iteration 75). Otherwise t5's values: the decoder reads (m, s') (the
            # reward depends on s' only); full backpropagation through the 200-step trial (tbptt 0);
            # the official exploration (init_std 1.0, entropy 0.01); RL2's tuned point-nav PPO recipe
            # (gamma 0.9, lr 1e-3, 8 epochs, clip 0.2, KL stop 0.05); 64 trials per iteration as RL2 / TrMRL.
            # Eighth round: twice the encoder's PPO step (encoder_rl_lr 2e-3: the belief is informative
            # sooner) with every learning rate, the VAE's too, falling linearly to 0 at the quick budget
            # (3.84M env steps; steadies the late swings): validation seeds 100-103 0.816 against 0.787.
            return {"decoder_state_action": False, "tbptt": 0, "meta_batch_size": 64, "vae_updates": 5,
                    "init_std": 1.0, "entropy_coef": 0.01, "gamma": 0.9, "lr": 1e-3, "epochs": 8,
                    "clip": 0.2, "target_kl": 0.05, "rl_through_encoder": True, "encoder_rl_lr": 2e-3,
                    "lr_anneal_steps": 3_840_000, "anneal_vae_lr": True}  # fmt: skip
        if family == "metaworld":
            # no official Meta-World VariBAD config: the cheetah-vel values; 10 goals per iteration as RL²'s
            # quick profile (25 for paper, as the Meta-World reference batch)
            return {"meta_batch_size": 25 if profile == "paper" else 10}
        # locomotion: the cheetah-vel config (the dataclass defaults) for both profiles; the profile hook
        # only sees the family, so the per-environment values (humanoid-dir / ant-goal: latent_dim 10, more
        # VAE updates; humanoid: lr 1e-3, clip 0.05, no subsampling) need --set on those suites.
        return {}

    # -- beliefs ----------------------------------------------------------------------------------------
    def beliefs(
        self,
        env_actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        valid: np.ndarray,
        grad: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Belief (mu, logvar), each (B, T, L), under which each step of recorded trials was taken.

        Step t's belief is the posterior after the valid transitions before t (the prior N(0, I) at the
        first), exactly as the agent computes it online. ``grad=False``: no gradient reaches the encoder;
        ``grad=True`` keeps the graph (``rl_through_encoder``; truncated every ``tbptt`` steps).
        """
        packed, lengths, before = pack_valid(valid, action=env_actions, reward=rewards, next_obs=next_obs)
        dev = self.device
        with torch.set_grad_enabled(grad):
            mu, logvar, _ = self.encoder(
                *(
                    torch.as_tensor(packed[k], dtype=torch.float32, device=dev)
                    for k in ("action", "reward", "next_obs")
                ),
                tbptt=self.config.tbptt if grad else 0,
            )
            mu, logvar = with_prior(mu), with_prior(logvar)
            idx = torch.as_tensor(before, device=dev)[..., None].expand(-1, -1, mu.shape[-1])
            return mu.gather(1, idx), logvar.gather(1, idx)

    # -- the VAE ----------------------------------------------------------------------------------------
    def elbo_loss(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        lengths: np.ndarray,
        rng: np.random.Generator,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO (module docstring) averaged over B packed trials (B, T, ·) of ``lengths`` steps.

        ``noise`` (B, E, L) replaces the reparameterisation draw from torch's generator (tests).
        """
        cfg = self.config
        T = obs.shape[1]
        mu, logvar, _ = self.encoder(action, reward, next_obs, tbptt=cfg.tbptt)
        mu, logvar = with_prior(mu), with_prior(logvar)  # (B, T + 1, L): q_0 = N(0, I), ..., q_T
        e_idx, e_mask = subsample(lengths + 1, cfg.subsample_elbos, T + 1, rng)
        d_idx, d_mask = subsample(lengths, cfg.subsample_decodes, T, rng)
        dev = obs.device
        e_idx_t, d_idx_t = torch.as_tensor(e_idx, device=dev), torch.as_tensor(d_idx, device=dev)
        e_m = torch.as_tensor(e_mask, device=dev, dtype=obs.dtype)
        d_m = torch.as_tensor(d_mask, device=dev, dtype=obs.dtype)

        def pick(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # (B, N, D) at (B, k) -> (B, k, D)
            return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))

        mu_e, logvar_e = pick(mu, e_idx_t), pick(logvar, e_idx_t)
        prev = (e_idx_t - 1).clamp_min(0)  # q_{-1} := q_0 = N(0, I): KL 0 at t = 0
        kl = kl_diag_gaussians(mu_e, logvar_e, pick(mu, prev), pick(logvar, prev))  # (B, E)
        if noise is None:
            noise = torch.randn_like(mu_e)
        z = mu_e + noise * torch.exp(0.5 * logvar_e)  # (B, E, L)
        r_hat = self.decoder(
            z[:, :, None],
            pick(obs, d_idx_t)[:, None],
            pick(action, d_idx_t)[:, None],
            pick(next_obs, d_idx_t)[:, None],
        )  # (B, E, D)
        r = reward.gather(1, d_idx_t)[:, None]  # (B, 1, D)
        rec = ((r_hat - r).pow(2) * d_m[:, None]).sum(-1)  # (B, E)
        per_trial = ((rec + cfg.kl_weight * kl) * e_m).sum(-1)
        with torch.no_grad():
            stats = {
                "vae_reconstruction": float((rec * e_m).sum(-1).mean()),
                "vae_kl": float((kl * e_m).sum(-1).mean()),
            }
        return per_trial.mean(), stats

    def vae_update(self, rng: np.random.Generator) -> dict[str, float]:
        """One Adam step on ``vae_batch_trials`` trials drawn with replacement from the newest rows."""
        cfg, n = self.config, len(self.buffer)
        lo = max(0, n - cfg.vae_buffer_size)
        idx = rng.integers(lo, n, size=cfg.vae_batch_trials)
        dev = self.device
        t = {
            k: torch.as_tensor(self.buffer.get(k, idx), device=dev)
            for k in ("obs", "action", "reward", "next_obs")
        }
        loss, stats = self.elbo_loss(
            t["obs"], t["action"], t["reward"], t["next_obs"], self.buffer.get("length", idx), rng
        )
        self.vae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_optimizer.step()
        return {"vae_loss": float(loss.detach())} | stats

    # -- the policy ------------------------------------------------------------------------------------
    def normalized_rewards(self, rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Rewards / running std of the discounted return sum_k gamma^k r_{t-k} (VecNormalize-style).

        The statistics absorb this batch's returns first; (B, T) -> (B, T).
        """
        if not self.config.normalize_rewards:
            return rewards
        return scale_by_return_std(rewards, valid, self.config.gamma, self.return_norm)

    def ppo_step(self, batch: Any, rng: np.random.Generator) -> dict[str, float]:
        """PPO update on a recorded TrialBatch: the policy (and the encoder with ``rl_through_encoder``)."""
        cfg, dev = self.config, self.device
        obs = batch.tensor("obs", dev)
        mu, logvar = self.beliefs(batch.env_actions, batch.rewards, batch.next_obs, batch.valid)
        actions = batch.tensor("actions", dev)
        valid = batch.tensor("valid", dev, torch.bool)
        rewards = self.normalized_rewards(batch.tensor("rewards", dev), valid)
        advantages, returns = gae_over_trials(
            rewards, batch.tensor("value", dev), valid, cfg.gamma, cfg.gae_lambda
        )

        def evaluate(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if cfg.rl_through_encoder:  # re-encode this minibatch's trials with the graph kept
                i = idx.cpu().numpy()
                m, lv = self.beliefs(
                    batch.env_actions[i], batch.rewards[i], batch.next_obs[i], batch.valid[i], True
                )
            else:
                m, lv = mu[idx], logvar[idx]
            dist, value = self.policy(obs[idx], m, lv)
            return GaussianHead.log_prob(dist, actions[idx]), GaussianHead.entropy(dist), value

        stats = ppo_update(
            evaluate, batch.tensor("log_prob", dev), advantages, returns, valid, self.policy_optimizer,
            [p for g in self.policy_optimizer.param_groups for p in g["params"]], self.ppo, rng,
        )  # fmt: skip
        self.policy.update_norms(obs[valid], mu[valid], logvar[valid])
        return stats

    def lr_factor(self, env_steps: int) -> float:
        """Multiplier of PPO's learning rates in an iteration starting at ``env_steps`` (1: no annealing)."""
        if not self.config.lr_anneal_steps:
            return 1.0
        return max(0.0, 1.0 - env_steps / self.config.lr_anneal_steps)

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """Steps 1-5 of the module docstring: set PPO's learning rates (``lr_anneal_steps``; the VAE's too
        with ``anneal_vae_lr``); ``meta_batch_size`` trials of ``train_episodes`` episodes; append them (valid
        steps packed to the front) to the VAE buffer; ``ppo_step``; ``vae_updates`` calls of ``vae_update``.
        Returns the PPO and VAE statistics, ``train_return``, ``action_std``, ``vae_buffer_trials`` and
        ``policy_lr``. See MetaLearner.train_step."""
        cfg = self.config
        factor = self.lr_factor(ctx.env_steps)
        for group, base in zip(self.policy_optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        if cfg.anneal_vae_lr:
            for group in self.vae_optimizer.param_groups:
                group["lr"] = cfg.vae_lr * factor
        tasks = ctx.sample_tasks(cfg.meta_batch_size)
        batch = ctx.sample_trials(self.make_agent(), tasks, episodes=self.train_episodes)
        packed, lengths, _ = pack_valid(
            batch.valid,
            obs=batch.obs,
            action=batch.env_actions,
            reward=batch.rewards,
            next_obs=batch.next_obs,
        )
        self.buffer.append(
            obs=packed["obs"].astype(np.float32), action=packed["action"].astype(np.float32),
            reward=packed["reward"].astype(np.float32), next_obs=packed["next_obs"].astype(np.float32),
            length=lengths,
        )  # fmt: skip
        stats = self.ppo_step(batch, ctx.rng)
        for _ in range(cfg.vae_updates):
            stats |= self.vae_update(ctx.rng)
        stats["train_return"] = float(batch.episode_returns().mean())
        stats["action_std"] = self.policy.head.log_std.exp().mean().item()
        stats["vae_buffer_trials"] = float(len(self.buffer))
        stats["policy_lr"] = self.base_lrs[0] * factor
        return stats

    def make_agent(self, evaluation: bool = False) -> VariBADAgent:
        """Evaluation: mean actions; the belief (GRU state) is carried across all episodes of the trial."""
        return VariBADAgent(self, evaluation)

    def state_dict(self) -> dict[str, Any]:
        """Encoder, decoder, policy (with its normalisers), return normaliser, both Adam states, the VAE
        buffer's row count (``AppendOnlyArrays.state``: flushes and syncs the files, ``OSError`` if that
        fails) and the config (not read back). See MetaLearner.state_dict."""
        return {
            "encoder": self.encoder.state_dict(),
            "decoder": self.decoder.state_dict(),
            "policy": self.policy.state_dict(),
            "return_norm": self.return_norm.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "vae_optimizer": self.vae_optimizer.state_dict(),
            "vae_buffer_rows": self.buffer.state(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a ``state_dict`` and cut the VAE buffer's files back to its rows (``ValueError`` from
        ``AppendOnlyArrays.restore`` if fewer are stored)."""
        self.encoder.load_state_dict(state["encoder"])
        self.decoder.load_state_dict(state["decoder"])
        self.policy.load_state_dict(state["policy"])
        self.return_norm.load_state_dict(state["return_norm"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        self.buffer.restore(int(state["vae_buffer_rows"]))


def with_prior(x: torch.Tensor) -> torch.Tensor:
    """(B, T, L) posteriors -> (B, T + 1, L) with the prior's zeros (mean 0, log-variance 0) in front."""
    return torch.cat([torch.zeros_like(x[:, :1]), x], 1)
