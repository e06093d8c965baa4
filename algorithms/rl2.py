"""RL² (Duan et al. 2016; Wang et al. 2016): a GRU policy over whole trials, trained with PPO.

Each step the GRU reads (s_t, a_{t-1}, r_{t-1}, done_{t-1}); its hidden state is the agent's memory of
the task and is kept across the episodes of a trial, cleared only at a new trial. The policy and
value heads read the hidden state. Training re-runs the GRU over recorded trials and applies PPO with
GAE across the episode boundaries of a trial (algorithms.common.ppo).
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
from algorithms.common.numpy_gru import gru_over_trials
from algorithms.common.ppo import PPOParams, gae_over_trials, ppo_update
from algorithms.common.trial_inputs import PreviousStep, trial_features
from metarl_protocol import AdaptiveAgent, MetaLearner, SuiteSpec, TrainContext, Transition
from metarl_protocol.settings import setting


@dataclass
class RL2Config:
    """Hyperparameters; the defaults are generic PPO values, each suite family's are in ``RL2.profile`` (the
    Meta-World reference there: GRU 256, gamma 0.99, lambda 1, clip 0.2)."""

    hidden_size: int = setting(256, low=1)
    encoder_hidden: int = 64  # an MLP embeds the step input before the GRU (0 = none)
    meta_batch_size: int = setting(20, low=1)  # trials (tasks) per iteration
    gamma: float = setting(0.99, low=0.0, high=1.0)
    gae_lambda: float = setting(0.95, low=0.0, high=1.0)
    clip: float = setting(0.2, low=0.0, low_open=True)
    lr: float = setting(3e-4, low=0.0, low_open=True)
    epochs: int = setting(4, low=1)
    minibatches: int = setting(4, low=1)
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = setting(0.5, low=0.0, low_open=True)
    init_std: float = setting(1.0, low=0.0, low_open=True)
    normalize_advantages: bool = True
    normalize_observations: bool = True  # running mean/std of observations (updated after each PPO update)
    # on the CPU, act through the numpy copy of the step (NumpyStep: the same math, faster at ~10 envs;
    # equal to the torch modules up to float32 rounding); False: the torch modules
    numpy_acting: bool = True
    # on the CPU, the PPO update's GRU pass over recorded trials runs in numpy with a hand-written
    # backward (algorithms.common.numpy_gru; forward + backward at 4 trials x 400 steps, 128 units: 35-37 ms
    # against nn.GRU's 70-73 ms; equal up to float32 rounding); False: nn.GRU, as runs of earlier commits
    numpy_training: bool = True
    target_kl: float | None = setting(
        0.02, low=0.0, low_open=True
    )  # early stop of the epochs (CleanRL-style); none = always all epochs


class RL2Network(nn.Module):
    """Step embedding -> GRU -> (Gaussian policy, value)."""

    def __init__(self, spec: SuiteSpec, cfg: RL2Config) -> None:
        super().__init__()
        self.cfg = cfg
        in_dim = spec.obs_dim + spec.act_dim + 2
        self.obs_norm = RunningNorm(spec.obs_dim) if cfg.normalize_observations else None
        if cfg.encoder_hidden > 0:
            self.encoder: nn.Module = mlp(in_dim, (cfg.encoder_hidden,), None, nn.ReLU)
            gru_in = cfg.encoder_hidden
        else:
            self.encoder, gru_in = nn.Identity(), in_dim
        self.gru = nn.GRU(gru_in, cfg.hidden_size, batch_first=True)
        self.policy = GaussianHead(cfg.hidden_size, spec.act_dim, init_std=cfg.init_std)
        self.value = nn.Linear(cfg.hidden_size, 1)

    def forward(
        self, features: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.distributions.Normal, torch.Tensor, torch.Tensor]:
        """features (B, T, in) -> (action distribution, value (B, T), last hidden (1, B, H))."""
        out, hidden = self.core(features, hidden)
        return self.policy(out), self.value(out).squeeze(-1), hidden

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """Step inputs (..., in) with the observation part normalised (identity when normalisation is off)."""
        return features if self.obs_norm is None else self.obs_norm.leading(features)

    def core(self, features: torch.Tensor, hidden: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, in) -> GRU outputs (B, T, H) and last hidden (1, B, H)."""
        x = self.encoder(self.normalize(features))
        if usable(x.device, self.cfg.numpy_training):
            return gru_over_trials(self.gru, x, hidden)
        return self.gru(x, hidden)

    def core_step(self, features: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """One acting step of ``core``: features (B, in), hidden (B, H) -> next hidden = output (B, H)."""
        return gru_step(self.gru, self.encoder(self.normalize(features)), hidden)


class NumpyStep:
    """``RL2Network.core_step`` and the heads in numpy, for acting on the CPU (numpy_acting.py).

    Holds copies of the network's parameters and the hidden state (B, H); build it at the start of each
    trial (the normaliser's statistics are read then).
    """

    def __init__(self, net: RL2Network, num_envs: int) -> None:
        self.normalize = Normaliser(net.obs_norm)
        self.encoder = MLP(net.encoder) if isinstance(net.encoder, nn.Sequential) else (lambda x: x)
        self.gru, self.policy, self.value = GRUCell(net.gru), GaussianActing(net.policy), linear(net.value)
        self.hidden = np.zeros((num_envs, net.gru.hidden_size), np.float32)

    def __call__(
        self, features: np.ndarray, deterministic: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """features (B, in) raw step inputs -> action (B, act_dim), log-probability (B,), value (B,)."""
        self.hidden = self.gru(self.encoder(self.normalize(features)), self.hidden)
        action, log_prob = self.policy(self.hidden, deterministic)
        return action, log_prob, apply(self.value, self.hidden)[:, 0]


class RL2Agent(AdaptiveAgent):
    """Acts step by step, carrying the GRU hidden state across the episodes of a trial."""

    def __init__(self, net: RL2Network, spec: SuiteSpec, device: torch.device, evaluation: bool) -> None:
        self.net, self.spec, self.device, self.evaluation = net, spec, device, evaluation
        self.prev: PreviousStep | None = None
        self.hidden: torch.Tensor | None = None
        self.fast: NumpyStep | None = None  # the numpy step (numpy_acting on the CPU), built per trial

    def new_trial(self, task_keys: np.ndarray) -> None:
        """Zero previous-step inputs and a cleared hidden state (zeros at the first ``act``), kept from then
        on across all episodes of the trial; build the numpy step (``numpy_acting`` on the CPU), which reads
        the parameters and the normaliser now. See AdaptiveAgent.new_trial."""
        num_envs = len(task_keys)
        self.prev = PreviousStep(num_envs, self.spec.act_dim)
        self.hidden = None
        self.fast = NumpyStep(self.net, num_envs) if usable(self.device, self.net.cfg.numpy_acting) else None

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One GRU step on (s_t, a_{t-1}, r_{t-1}, done_{t-1}) (B, obs_dim + act_dim + 2): actions
        (B, act_dim), the mean in evaluation and a sample otherwise; extras ``log_prob`` (B,) and ``value``
        (B,). Asserts that ``new_trial`` came first. See AdaptiveAgent.act."""
        assert self.prev is not None, "call new_trial() first"
        if self.fast is not None:
            action, log_prob, value = self.fast(self.prev.features(obs), self.evaluation)
            return action, {"log_prob": log_prob, "value": value}
        # nothing here enters a gradient later: inference mode is cheaper than the sampler's no_grad
        with torch.inference_mode():
            x = torch.as_tensor(self.prev.features(obs), device=self.device)
            if self.hidden is None:
                self.hidden = torch.zeros(len(x), self.net.gru.hidden_size, device=self.device)
            self.hidden = out = self.net.core_step(x, self.hidden)
            action, log_prob = self.net.policy.act(out, deterministic=self.evaluation)
            value = self.net.value(out).squeeze(-1)
        return action.cpu().numpy(), {"log_prob": log_prob.cpu().numpy(), "value": value.cpu().numpy()}

    def observe(self, transition: Transition) -> None:
        """Keep the transition's action, reward and ``episode_done`` as the next step's previous-step
        input (active rows only, ``PreviousStep.update``). See AdaptiveAgent.observe."""
        assert self.prev is not None
        self.prev.update(transition)


class RL2(MetaLearner):
    """RL² (Duan et al. 2016; Wang et al. 2016): a GRU policy over whole trials, trained with PPO.

    ``RL2(spec, config, device, storage_dir)``: ``config`` is an ``RL2Config`` (hyperparameters at the top
    of this module); the network (``RL2Network``) lives on ``device``; ``storage_dir`` is not used. Acting:
    the GRU hidden state, the agent's memory of the task, is kept across the episodes of a trial and
    cleared at a new trial; the evaluation agent acts with the mean action. A ``train_step`` samples
    ``meta_batch_size`` training trials and applies PPO (Adam) with GAE across the episode boundaries of a
    trial (``algorithms.common.ppo``).
    """

    name = "rl2"
    Config = RL2Config

    def __init__(
        self, spec: SuiteSpec, config: RL2Config, device: torch.device, storage_dir: Path | None = None
    ) -> None:
        super().__init__(spec, config, device, storage_dir)
        self.net = RL2Network(spec, config).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, eps=1e-5)
        self.ppo = PPOParams.from_config(config)

    @classmethod
    def profile(cls, profile: str, family: str) -> dict[str, Any]:
        """Meta-World: the Meta-World paper's RL² baseline values (GRU 256, gamma 0.99, lambda 1, clip
        0.2). Point-nav (both profiles) and locomotion quick: as chosen in docs/tuning/rl2.md; locomotion
        paper: 20 tasks per iteration as TrMRL. See MetaLearner.profile."""
        if family == "metaworld":
            # Meta-World reference (Meta-World paper, RL² baseline): GRU 256, gamma 0.99, lambda 1,
            # clip 0.2, 10 episodes per trial
            base = {"hidden_size": 256, "gamma": 0.99, "gae_lambda": 1.0, "clip": 0.2, "lr": 5e-4}
            return base | {"meta_batch_size": 25 if profile == "paper" else 10}
        if family == "point-nav":
            # chosen as recorded in docs/tuning/rl2.md (init std 0.2: exploration through the mean)
            return {
                "hidden_size": 128,
                "meta_batch_size": 64,
                "gamma": 0.9,
                "gae_lambda": 0.9,
                "lr": 1e-3,
                "epochs": 8,
                "init_std": 0.2,
                "target_kl": 0.05,
            }
        # locomotion: 20 tasks x 2 episodes per iteration as TrMRL; quick chosen as recorded in
        # docs/tuning/rl2.md
        if profile == "paper":
            return {
                "hidden_size": 256,
                "meta_batch_size": 20,
                "gamma": 0.99,
                "gae_lambda": 0.95,
                "init_std": 0.5,
            }
        return {
            "hidden_size": 128,
            "meta_batch_size": 20,
            "gamma": 0.9,
            "gae_lambda": 0.95,
            "init_std": 0.5,
            "lr": 5e-4,
            "epochs": 8,
            "minibatches": 5,
            "target_kl": 0.03,
        }

    def make_agent(self, evaluation: bool = False) -> RL2Agent:
        """Evaluation: mean actions (the GRU memory is the only thing that adapts)."""
        return RL2Agent(self.net, self.spec, self.device, evaluation)

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """``meta_batch_size`` trials (the suite's training trial length) with the stochastic policy; GAE
        (gamma, gae_lambda) across each trial; ``ppo_update`` over minibatches of whole trials, re-running
        the GRU (in numpy on the CPU with ``numpy_training``); then the observation normaliser absorbs the
        batch. Returns the PPO statistics, ``train_return`` and ``action_std``. See MetaLearner.train_step."""
        cfg = self.config
        tasks = ctx.sample_tasks(cfg.meta_batch_size)
        batch = ctx.sample_trials(self.make_agent(), tasks)
        feats = trial_features(batch, self.device)
        actions = batch.tensor("actions", self.device)
        valid = batch.tensor("valid", self.device, torch.bool)
        old_log_prob = batch.tensor("log_prob", self.device)
        values = batch.tensor("value", self.device)
        rewards = batch.tensor("rewards", self.device)
        advantages, returns = gae_over_trials(rewards, values, valid, cfg.gamma, cfg.gae_lambda)

        def evaluate(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            dist, value, _ = self.net(feats[idx])
            return GaussianHead.log_prob(dist, actions[idx]), GaussianHead.entropy(dist), value

        stats = ppo_update(
            evaluate,
            old_log_prob,
            advantages,
            returns,
            valid,
            self.optimizer,
            list(self.net.parameters()),
            self.ppo,
            ctx.rng,
        )
        if self.net.obs_norm is not None:
            self.net.obs_norm.update(feats[..., : self.spec.obs_dim][valid])
        stats["train_return"] = float(batch.episode_returns().mean())
        stats["action_std"] = self.net.policy.log_std.exp().mean().item()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The network (with the normaliser's statistics), the Adam state and the config (not read back).
        See MetaLearner.state_dict."""
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load the network and the Adam state of a ``state_dict``."""
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
