"""PEARL (Rakelly et al. 2019, arXiv:1903.08254): off-policy SAC with a probabilistic context encoder.

What adapts: a latent task variable z (``latent_dim``). A context encoder maps each transition
(s, a, r) to a Gaussian factor N(mu_n, sigma_n^2) over z; the posterior q(z | c) is the product of
these factors over the context c (paper eq. 3 / Sec. 4.1; oyster ``PEARLAgent.infer_posterior`` and
``_product_of_gaussians``). Policy, twin Q, V and target V all take (s, z). The encoder is trained by
the Q (Bellman) loss plus ``kl_lambda`` * KL(q(z|c) || N(0, I)) (paper eq. 4; oyster
``PEARLSoftActorCritic._take_step``); V and the policy see z detached.

One ``train_step`` (oyster ``MetaRLAlgorithm.train``):

1. first call only: ``initial_episodes`` episodes with z ~ prior on every training task (RL + encoder
   buffers; oyster ``num_initial_steps``);
2. for ``num_tasks_sample`` training tasks: clear the task's encoder buffer; ``prior_episodes``
   episodes with z ~ N(0, I) redrawn per episode (RL + encoder buffers; ``num_steps_prior``); then
   ``posterior_episodes`` episodes with z ~ q(z | c), c = ``embedding_batch_size`` transitions drawn
   from that encoder buffer, z redrawn per episode (RL buffer only; ``num_extra_rl_steps_posterior``);
   each phase runs ``rollouts_per_task`` parallel rollouts of each task;
3. ``grad_steps_per_iter`` SAC steps, each on ``meta_batch`` tasks x ``batch_size`` RL transitions of
   that task (its most recent ``replay_size`` rows) and ``embedding_batch_size`` context transitions
   from its encoder buffer (never mixing tasks within a row of the batch).

Budget unit: environment steps (the harness's); progress.csv gets ``grad_steps`` and
``grad_steps_per_env_step``. Buffers: one ``AppendOnlyArrays`` under ``storage_dir / "replay"``
holding every transition with its task id and an encoder flag; per-task RL and encoder index sets
are rebuilt from it on resume, and the checkpoint stores only its row count and the per-task start
row of each encoder buffer ("clearing" a task's encoder buffer moves that start to the end). The
per-task replay cap ``replay_size`` (oyster 1e6) is a window over the task's most recent rows; the
files themselves keep everything (append-only).

Evaluation (``make_agent(evaluation=True)``, paper Sec. 6.3 / oyster ``collect_paths``): each row
starts a trial with z ~ N(0, I), accumulates its own context (every valid transition it observes;
rows never share context), and at each episode boundary after the first ``eval_prior_episodes``
episodes redraws z ~ q(z | all context so far of that row); with ``eval_context_all_episodes=False``
the context is only what the row saw in its prior episodes (the encoder's training distribution).
Actions are deterministic, tanh(mean), except in the first ``eval_stochastic_episodes`` episodes, which
sample actions as the training-time prior episodes do (the point-nav quick profile: its one exploration
episode; the reported return includes that episode's cost). Training agents draw z in ``new_trial`` /
``end_episode`` and action noise in ``act``; ``observe`` draws nothing.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from algorithms.common.nets import load_optimizer_state, mlp
from algorithms.common.numpy_acting import TanhGaussianActing, usable
from algorithms.common.sac import TanhGaussianPolicy, q_target, soft_update, v_target
from metarl_protocol import AdaptiveAgent, MetaLearner, SuiteSpec, TrainContext, Transition, TrialBatch
from metarl_protocol.settings import setting
from metarl_protocol.storage import AppendOnlyArrays

#: lower bound on an encoder factor's variance (oyster ``_product_of_gaussians``: clamp(min=1e-7))
MIN_VAR = 1e-7


@dataclass
class PEARLConfig:
    """Hyperparameters. Defaults: oyster ``configs/default.py`` and the issue's cheetah-vel facts.

    Step counts of oyster are given here in episodes of the suite's horizon H (200 on locomotion:
    2000 initial steps = 10 episodes, 400 prior = 2, 600 posterior = 3).
    """

    latent_dim: int = setting(5, low=1)  # default.py latent_size
    encoder_hidden: int = setting(
        200, low=1
    )  # 3 x 200 ReLU (oyster launch_experiment.py: encoder hidden [200, 200, 200])
    encoder_layers: int = setting(3, low=1)
    net_size: int = setting(300, low=1)  # default.py net_size: policy, Q1, Q2, V all 3 x 300 ReLU
    net_layers: int = setting(3, low=1)
    use_next_obs_in_context: bool = False  # default.py
    kl_lambda: float = 0.1  # default.py
    reward_scale: float = setting(
        5.0, low=0.0, low_open=True
    )  # default.py (the fixed entropy weight is 1 / reward_scale)
    gamma: float = setting(0.99, low=0.0, high=1.0)  # default.py discount
    tau: float = setting(0.005, low=0.0, high=1.0, low_open=True)  # default.py soft_target_tau
    lr: float = setting(3e-4, low=0.0, low_open=True)  # default.py policy_lr = qf_lr = vf_lr = context_lr
    policy_mean_reg: float = 1e-3  # oyster PEARLSoftActorCritic policy_mean_reg_weight
    policy_std_reg: float = 1e-3  # oyster PEARLSoftActorCritic policy_std_reg_weight
    meta_batch: int = setting(16, low=1)  # default.py: tasks per gradient step
    batch_size: int = setting(256, low=1)  # default.py: RL transitions per task per gradient step
    embedding_batch_size: int = setting(
        100, low=1
    )  # context transitions per task (issue: cheetah-vel 100; default.py 64)
    num_tasks_sample: int = setting(5, low=1)  # default.py: tasks that collect data per iteration
    initial_episodes: int = 10  # issue: 2000 steps per training task before training
    prior_episodes: int = 2  # issue: 400 steps with z ~ prior
    posterior_episodes: int = 3  # issue: 600 steps with z ~ posterior (RL buffer only)
    rollouts_per_task: int = setting(
        1, low=1
    )  # parallel rollouts of each sampled task per phase (1 in oyster)
    grad_steps_per_iter: int = 2000  # issue: cheetah-vel 2000 (4000 ant, humanoid)
    replay_size: int = setting(1_000_000, low=1)  # per task (oyster replay_buffer_size)
    # meta-test episodes with z ~ prior (default.py num_exp_traj_eval); 0 acts as 1, as in oyster: the first
    # episode has no context to infer from
    eval_prior_episodes: int = 1
    # meta-test context: True = every transition of the trial so far (paper, oyster collect_paths); False =
    # only the transitions of the prior (exploration) episodes, the kind of data the encoder is trained on
    eval_context_all_episodes: bool = True
    # meta-test episodes, counted from the first, that act with sampled actions (tanh of a draw of the
    # policy's Gaussian), later ones with tanh(mean). 0 = every episode deterministic (oyster
    # ``eval_deterministic=True``).
    # The encoder is trained only on context from prior-z episodes with *sampled* actions (oyster
    # ``collect_data`` with the stochastic policy); a mean-action exploration episode is data it never saw
    # (docs/tuning/pearl.md, run v1: 0.57 -> 0.86 normalised on validation tasks with 1 instead of 0)
    eval_stochastic_episodes: int = setting(0, low=0)
    # on the CPU the policy acts through a numpy copy of its MLP (numpy_acting.py; about half the per-call
    # cost at 10 envs), equal to the torch modules up to float32 rounding and drawing the same noise from
    # torch's generator; False: the torch modules, which reproduces runs of earlier commits exactly
    numpy_acting: bool = True
    # True: each of the four Adam optimizers as one fused kernel over its parameters (torch's fused=True),
    # about 5% more gradient steps per second at the perf row's sizes (README "Performance"); the same
    # update to float32 rounding, but the simulator amplifies rounding, so a run's numbers change (the
    # slow point-nav test's seed read 0.586 against 0.757 normalised). False (default): the multi-tensor
    # (foreach) implementation the tuned profiles and the committed results were run with. A resumed
    # checkpoint takes this setting's implementation, whichever wrote it
    fused_optimizer: bool = False


# -- the math -------------------------------------------------------------------------------------
def product_of_gaussians(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of N Gaussian factors over dim -2: mu, var (..., N, L) -> posterior (mu, var) (..., L).

    ``var = 1 / sum_n 1/var_n`` and ``mu = var * sum_n mu_n / var_n`` (paper Sec. 4.1; oyster
    ``_product_of_gaussians``, which clamps each var_n at 1e-7 as here). The prior is not a factor.
    """
    var = var.clamp(min=MIN_VAR)
    precision = (1.0 / var).sum(-2)
    post_var = 1.0 / precision
    return post_var * (mu / var).sum(-2), post_var


def kl_to_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag var) || N(0, I)) summed over the last dim: (..., L) -> (...) in nats.

    ``0.5 * sum(var + mu^2 - 1 - log var)``; PEARL sums it over the tasks of a batch (oyster
    ``compute_kl_div``) and weights it by ``kl_lambda``.
    """
    return 0.5 * (var + mu.square() - 1.0 - var.log()).sum(-1)


class ContextEncoder(nn.Module):
    """MLP (ReLU) from one context transition (C,) to the factor's (mu (L,), var (L,)), var = softplus."""

    def __init__(self, context_dim: int, cfg: PEARLConfig) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.net = mlp(context_dim, (cfg.encoder_hidden,) * cfg.encoder_layers, 2 * cfg.latent_dim, nn.ReLU)

    def forward(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (..., C) -> mu (..., L), var (..., L)."""
        out = self.net(context)
        return out[..., : self.latent_dim], nn.functional.softplus(out[..., self.latent_dim :])

    def posterior(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (T, N, C) of T tasks -> posterior (mu, var) (T, L) per task."""
        return product_of_gaussians(*self(context))


def context_features(
    obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray, use_next_obs: bool
) -> np.ndarray:
    """(s, a, r[, s']) of N transitions: (N, obs_dim), (N, act_dim), (N,), (N, obs_dim) -> (N, C) float32."""
    parts = [obs, action, reward[..., None]] + ([next_obs] if use_next_obs else [])
    return np.concatenate(parts, -1).astype(np.float32)


class QNet(nn.Module):
    """Q(s, a, z) or V(s, z): an MLP (ReLU) from the concatenated inputs to a scalar (N,)."""

    def __init__(self, in_dim: int, cfg: PEARLConfig) -> None:
        super().__init__()
        self.net = mlp(in_dim, (cfg.net_size,) * cfg.net_layers, 1, nn.ReLU)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Inputs (..., ·), e.g. (s, a, z) or (s, z), concatenated on the last dim -> value (...)."""
        return self.net(torch.cat(inputs, -1)).squeeze(-1)


# -- the agent ------------------------------------------------------------------------------------
class PEARLAgent(AdaptiveAgent):
    """B rows acting with a per-row z.

    Modes: ``"prior"`` (training: z ~ N(0, I), redrawn every episode), ``"posterior"`` (training: z ~
    the posterior given for the row's task key, redrawn every episode), ``"online"`` (evaluation: see
    the module docstring). Every piece of per-row state is rebound, never mutated in place, so shallow
    clones are independent.
    """

    def __init__(
        self,
        learner: PEARL,
        evaluation: bool,
        mode: str,
        posteriors: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.policy, self.encoder = learner.policy, learner.encoder
        self.cfg, self.device, self.evaluation, self.mode = learner.config, learner.device, evaluation, mode
        self.posteriors = posteriors or {}
        self.z: torch.Tensor | None = None  # (B, L)
        self.fast: TanhGaussianActing | None = None  # numpy copy of the policy, built per trial

    def new_trial(self, task_keys: np.ndarray) -> None:
        """Draw each row's z (B, L): from its task key's posterior in ``"posterior"`` mode (``KeyError`` for
        a key without one), else from N(0, I); clear the online context sums and the episode count; build
        the numpy policy copy (``numpy_acting`` on the CPU). See AdaptiveAgent.new_trial."""
        B, L = len(task_keys), self.cfg.latent_dim
        self.episodes = 0
        if usable(self.device, self.cfg.numpy_acting):
            self.fast = TanhGaussianActing(self.policy)
        if self.mode == "posterior":
            self.post_mu = torch.stack([self.posteriors[int(k)][0] for k in task_keys])
            self.post_var = torch.stack([self.posteriors[int(k)][1] for k in task_keys])
            self.z = self.post_mu + self.post_var.sqrt() * torch.randn(B, L, device=self.device)
        else:
            self.z = torch.randn(B, L, device=self.device)
        # online context: running sums of the factors' precisions and precision-weighted means
        self.precision = torch.zeros(B, L, device=self.device)
        self.weighted_mu = torch.zeros(B, L, device=self.device)

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions (B, act_dim) in (-1, 1) from the policy on [obs, z]: tanh(mean) in evaluation after the
        first ``eval_stochastic_episodes`` episodes, tanh of a sample otherwise; no extras. Asserts that
        ``new_trial`` came first. See AdaptiveAgent.act."""
        assert self.z is not None, "call new_trial() first"
        deterministic = self.evaluation and self.episodes >= self.cfg.eval_stochastic_episodes
        if self.fast is not None:  # the same policy in numpy, the same noise draw
            x = np.concatenate([np.asarray(obs, dtype=np.float32), self.z.numpy()], -1)
            return self.fast(x, deterministic), {}
        x = torch.cat([torch.as_tensor(obs, device=self.device), self.z], -1)
        action = self.policy.deterministic(x) if deterministic else self.policy.act(x)
        return action.cpu().numpy(), {}

    def observe(self, transition: Transition) -> None:
        """``"online"`` (evaluation) mode only: add each active row's encoder factor of (s, a, r[, s']) to
        its running precision sums (every episode, or only the first ``eval_prior_episodes`` with
        ``eval_context_all_episodes=False``). Training modes keep no context. See AdaptiveAgent.observe."""
        if self.mode != "online":
            return
        if not self.cfg.eval_context_all_episodes and self.episodes >= self.cfg.eval_prior_episodes:
            return
        feats = context_features(
            transition.obs, transition.action, transition.reward, transition.next_obs,
            self.cfg.use_next_obs_in_context,
        )  # fmt: skip
        mu, var = self.encoder(torch.as_tensor(feats, device=self.device))
        var = var.clamp(min=MIN_VAR)
        active = torch.as_tensor(transition.active, device=self.device, dtype=torch.float32)[:, None]
        self.precision = self.precision + active / var
        self.weighted_mu = self.weighted_mu + active * mu / var

    def end_episode(self) -> None:
        """Count the episode and redraw every row's z (B, L): ``"posterior"`` mode from the given posterior;
        ``"prior"`` mode and the first ``eval_prior_episodes`` evaluation episodes from N(0, I); later
        evaluation episodes from the product of the row's own context factors (the prior for a row with
        none yet). See AdaptiveAgent.end_episode."""
        assert self.z is not None
        self.episodes += 1
        with torch.no_grad():
            noise = torch.randn_like(self.z)
            if self.mode == "posterior":
                self.z = self.post_mu + self.post_var.sqrt() * noise
            elif self.mode == "prior" or self.episodes < self.cfg.eval_prior_episodes:
                self.z = noise
            else:  # online posterior over everything this row has observed; rows without context: prior
                has = (self.precision > 0).all(-1, keepdim=True)
                post_var = 1.0 / self.precision.clamp(min=1e-12)
                post = post_var * self.weighted_mu + post_var.sqrt() * noise
                self.z = torch.where(has, post, noise)


# -- the learner ----------------------------------------------------------------------------------
class PEARL(MetaLearner):
    """PEARL (Rakelly et al. 2019, arXiv:1903.08254): SAC v1 on (s, z), z inferred by a context encoder.

    ``PEARL(spec, config, device, storage_dir)``: ``config`` is a ``PEARLConfig`` (hyperparameters and their
    oyster sources at the top of this module); the encoder, policy, Q1, Q2, V and target V live on
    ``device``; the replay is an ``AppendOnlyArrays`` under ``storage_dir / "replay"`` (in memory when
    ``storage_dir`` is None). Acting: training agents draw z from the prior (or, in the posterior phase,
    from a task's posterior), redrawn each episode; the evaluation agent infers z from its own context
    (module docstring). A ``train_step`` collects prior and posterior episodes on ``num_tasks_sample``
    training tasks, then takes ``grad_steps_per_iter`` SAC + encoder steps (oyster ``MetaRLAlgorithm.train``).
    """

    name = "pearl"
    parallel_update = True  # see MetaLearner.parallel_update; measured in README "Performance"
    Config = PEARLConfig

    def __init__(
        self, spec: SuiteSpec, config: PEARLConfig, device: torch.device, storage_dir: Path | None = None
    ) -> None:
        super().__init__(spec, config, device, storage_dir)
        cfg, o, a, L = config, spec.obs_dim, spec.act_dim, config.latent_dim
        self.context_dim = 2 * o + a + 1 if cfg.use_next_obs_in_context else o + a + 1
        self.encoder = ContextEncoder(self.context_dim, cfg).to(device)
        self.policy = TanhGaussianPolicy(o + L, a, (cfg.net_size,) * cfg.net_layers).to(device)
        self.q1, self.q2 = QNet(o + a + L, cfg).to(device), QNet(o + a + L, cfg).to(device)
        self.v = QNet(o + L, cfg).to(device)
        self.v_target = copy.deepcopy(self.v)
        impl = {"fused": True} if cfg.fused_optimizer else {"foreach": True}
        self.opt = {
            "policy": torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, **impl),
            "q": torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.lr, **impl),
            "v": torch.optim.Adam(self.v.parameters(), lr=cfg.lr, **impl),
            "context": torch.optim.Adam(self.encoder.parameters(), lr=cfg.lr, **impl),
        }
        self.buffer = AppendOnlyArrays(
            None if storage_dir is None else Path(storage_dir) / "replay",
            {
                "obs": ((o,), np.float32),
                "action": ((a,), np.float32),
                "reward": ((), np.float32),
                "next_obs": ((o,), np.float32),
                "terminal": ((), np.float32),
                "task": ((), np.int64),
                "enc": ((), np.bool_),
            },
        )
        self.rl_rows: dict[int, np.ndarray] = {}  # task id -> buffer rows of that task (ascending)
        self.enc_rows: dict[int, np.ndarray] = {}  # task id -> rows of its current encoder buffer
        self.enc_start: dict[int, int] = {}  # task id -> first buffer row of its current encoder buffer
        self.grad_steps = 0  # gradient steps taken so far
        self.env_steps = 0  # environment steps this learner collected (its own count, for the ratio)
        self.iterations = 0

    # -- profiles and validation -------------------------------------------------------------------
    @classmethod
    def profile(cls, profile: str, family: str) -> dict[str, Any]:
        """Paper: point-nav from oyster ``configs/point-robot.json``, Meta-World from garage's
        ``pearl_metaworld_ml1_*.py`` examples, locomotion the issue's cheetah-vel facts (step counts as
        episodes of H). Quick: point-nav tuned (docs/tuning/pearl.md); Meta-World and locomotion smaller and
        not tuned. See MetaLearner.profile."""
        if family == "point-nav":
            if profile == "paper":
                # oyster configs/point-robot.json (path length 20 there; H = 100 here): 200 initial,
                # 200 prior and 200 extra posterior steps per task = 2 episodes each; 1000 grad steps per
                # iteration; reward scale 100; kl 0.1; the rest from default.py
                return {
                    "reward_scale": 100.0,
                    "kl_lambda": 0.1,
                    "initial_episodes": 2,
                    "prior_episodes": 2,
                    "posterior_episodes": 2,
                    "grad_steps_per_iter": 1000,
                    "embedding_batch_size": 64,
                }
            # quick: chosen on 50 validation tasks, seed 100 (docs/tuning/pearl.md, runs t1-t5). Cuts from the
            # paper, for 3.84M env steps in about 10 minutes on 2 CPU cores: nets 2 x 64 (encoder 2 x 64),
            # meta batch 8 x 64 transitions, 500 grad steps per 25,600 env steps (0.0195 per env step vs
            # oyster's 2.5: one paper-size step took 1.17 s here, a quick one 14 ms; 500 rather than 250
            # reached the validation plateau by 1.6M instead of ~3M steps, run g500). Changed: gamma 0.9 and
            # lr 1e-3 (fewer, larger steps); 128 tasks x 1 episode per phase (refreshing many encoder
            # buffers: the encoder memorised stale ones, t3); meta-test context from the prior episode only
            # (the all-episode posterior collapsed after episode 1, t4); the exploration episode samples its
            # actions like the training prior episodes whose data the encoder learns from (v1: 0.57 -> 0.86)
            return {
                "reward_scale": 100.0,
                "kl_lambda": 0.1,
                "gamma": 0.9,
                "lr": 1e-3,
                "net_size": 64,
                "net_layers": 2,
                "encoder_hidden": 64,
                "encoder_layers": 2,
                "meta_batch": 8,
                "batch_size": 64,
                "embedding_batch_size": 64,
                "num_tasks_sample": 128,
                "initial_episodes": 1,
                "prior_episodes": 1,
                "posterior_episodes": 1,
                "rollouts_per_task": 1,
                "grad_steps_per_iter": 500,
                "eval_prior_episodes": 1,
                "eval_context_all_episodes": False,
                "eval_stochastic_episodes": 1,
            }
        if family == "metaworld":
            # garage examples/torch/pearl_metaworld_ml1_*.py (H = 500): latent 7, reward scale 10, 15 tasks
            # per iteration, 4000 initial steps (8 episodes), 750 prior (1.5 -> 2 episodes), 750 extra
            # posterior (2 episodes), 4000 grad steps per epoch, embedding batch 64, batch 256, meta batch 16
            paper = {
                "latent_dim": 7,
                "reward_scale": 10.0,
                "num_tasks_sample": 15,
                "initial_episodes": 8,
                "prior_episodes": 2,
                "posterior_episodes": 2,
                "grad_steps_per_iter": 4000,
                "embedding_batch_size": 64,
                "eval_prior_episodes": 1,
            }
            if profile == "paper":
                return paper
            # quick (not tuned: no Meta-World run was made for this method): smaller nets, fewer grad steps
            return paper | {
                "net_size": 128,
                "encoder_hidden": 128,
                "initial_episodes": 1,
                "prior_episodes": 1,
                "posterior_episodes": 1,
                "num_tasks_sample": 10,
                "grad_steps_per_iter": 200,
                "meta_batch": 8,
                "batch_size": 128,
            }
        # locomotion: the cheetah-vel facts (H = 200): 5 tasks, 2000 initial (10 episodes), 400
        # prior (2), 600 posterior (3), 2000 grad steps, embedding 100, reward scale 5, kl 0.1
        paper = {
            "reward_scale": 5.0,
            "kl_lambda": 0.1,
            "num_tasks_sample": 5,
            "initial_episodes": 10,
            "prior_episodes": 2,
            "posterior_episodes": 3,
            "grad_steps_per_iter": 2000,
            "embedding_batch_size": 100,
        }
        if profile == "paper":
            return paper
        # quick (not tuned: no locomotion run was made for this method)
        return paper | {
            "net_size": 128,
            "encoder_hidden": 128,
            "initial_episodes": 2,
            "grad_steps_per_iter": 200,
            "meta_batch": 8,
            "batch_size": 128,
        }

    @classmethod
    def validate(cls, config: PEARLConfig, spec: SuiteSpec | None = None) -> None:
        """Raise ``ValueError`` for a size or count < 1 (latent_dim, network widths and depths, meta_batch,
        batch sizes, num_tasks_sample, initial / prior episodes, rollouts_per_task, replay_size);
        posterior_episodes, grad_steps_per_iter or eval_prior_episodes < 0; reward_scale or lr <= 0;
        kl_lambda < 0; gamma outside [0, 1] or tau outside (0, 1]; eval_prior_episodes = 0 with
        ``eval_context_all_episodes=False`` (the posterior would see no context); and, given ``spec``,
        eval_prior_episodes >= spec.eval_episodes (no posterior episode left). See MetaLearner.validate."""
        positive = (
            "latent_dim", "encoder_hidden", "encoder_layers", "net_size", "net_layers", "meta_batch",
            "batch_size", "embedding_batch_size", "num_tasks_sample", "initial_episodes", "prior_episodes",
            "rollouts_per_task", "replay_size",
        )  # fmt: skip
        for name in positive:
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        for name in ("posterior_episodes", "grad_steps_per_iter", "eval_prior_episodes"):
            if getattr(config, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
        for name in ("reward_scale", "lr"):
            if not getattr(config, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")
        if config.kl_lambda < 0:
            raise ValueError(f"kl_lambda must be >= 0, got {config.kl_lambda}")
        if not 0 <= config.gamma <= 1 or not 0 < config.tau <= 1:
            raise ValueError(f"need 0 <= gamma <= 1 and 0 < tau <= 1, got {config.gamma}, {config.tau}")
        if config.eval_prior_episodes == 0 and not config.eval_context_all_episodes:
            raise ValueError(
                "eval_prior_episodes=0 with eval_context_all_episodes=false leaves the meta-test posterior "
                "without context (z stays at the prior); use eval_prior_episodes >= 1 or "
                "eval_context_all_episodes=true"
            )
        if spec is not None and config.eval_prior_episodes >= spec.eval_episodes:
            raise ValueError(
                f"eval_prior_episodes={config.eval_prior_episodes} leaves no posterior episode in a "
                f"meta-test trial of {spec.eval_episodes} episodes; use 0..{spec.eval_episodes - 1}"
            )

    # -- agents ------------------------------------------------------------------------------------
    def make_agent(self, evaluation: bool = False) -> PEARLAgent:
        """Training: z ~ prior per episode, stochastic actions. Evaluation: prior then online posterior,
        deterministic actions after the first ``eval_stochastic_episodes`` (module docstring)."""
        return PEARLAgent(self, evaluation, "online" if evaluation else "prior")

    # -- buffers -----------------------------------------------------------------------------------
    def _add(self, batch: TrialBatch, enc: bool) -> None:
        """Append the valid steps of ``batch`` (rows labelled with their task ids) to the buffer."""
        valid = batch.valid
        task = np.broadcast_to(np.array([t.task_id for t in batch.tasks], np.int64)[:, None], valid.shape)
        start = len(self.buffer)
        task_rows = task[valid]
        self.buffer.append(
            obs=batch.obs[valid],
            action=batch.env_actions[valid],
            reward=batch.rewards[valid],
            next_obs=batch.next_obs[valid],
            terminal=batch.terminated[valid].astype(np.float32),
            task=task_rows,
            enc=np.full(len(task_rows), enc),
        )
        rows = start + np.arange(len(task_rows))
        for t in np.unique(task_rows).tolist():
            mine = rows[task_rows == t]
            self.rl_rows[t] = np.concatenate([self.rl_rows.get(t, np.zeros(0, np.int64)), mine])
            if enc:
                self.enc_rows[t] = np.concatenate([self.enc_rows.get(t, np.zeros(0, np.int64)), mine])

    def _clear_encoder_buffer(self, task_id: int) -> None:
        self.enc_start[task_id] = len(self.buffer)
        self.enc_rows[task_id] = np.zeros(0, np.int64)

    def _rebuild_index(self) -> None:
        """Per-task RL and encoder rows from the buffer's task and enc columns (after a restore)."""
        task, enc = self.buffer.view("task"), self.buffer.view("enc")
        order = np.argsort(task, kind="stable")
        ids, starts = np.unique(task[order], return_index=True)
        self.rl_rows, self.enc_rows = {}, {}
        for t, rows in zip(ids.tolist(), np.split(order, starts[1:]), strict=True):
            self.rl_rows[t] = rows.astype(np.int64)
            self.enc_rows[t] = rows[enc[rows] & (rows >= self.enc_start.get(t, 0))].astype(np.int64)

    def sample_rl(self, tasks: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``n`` RL transitions of each task (uniform, with replacement, from its last ``replay_size``
        rows): dict of (T, n, ...) tensors obs, action, reward, next_obs, terminal and the rows used."""
        idx = []
        for t in tasks.tolist():
            rows = self.rl_rows[t][-self.config.replay_size :]
            idx.append(rows[rng.integers(0, len(rows), n)])
        rows = np.stack(idx)  # (T, n)
        out = {
            f: torch.as_tensor(self.buffer.get(f, rows), device=self.device)
            for f in ("obs", "action", "reward", "next_obs", "terminal")
        }
        out["rows"] = torch.as_tensor(rows)
        return out

    def sample_context(self, tasks: np.ndarray, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` transitions of each task's encoder buffer (uniform, with replacement) -> (T, n, C)."""
        idx = []
        for t in tasks.tolist():
            rows = self.enc_rows[t]
            idx.append(rows[rng.integers(0, len(rows), n)])
        rows = np.stack(idx)
        b = {f: self.buffer.get(f, rows) for f in ("obs", "action", "reward", "next_obs")}
        feats = context_features(
            b["obs"], b["action"], b["reward"], b["next_obs"], self.config.use_next_obs_in_context
        )
        return torch.as_tensor(feats, device=self.device)

    # -- one SAC step --------------------------------------------------------------------------------
    def sac_step(self, rl: dict[str, torch.Tensor], context: torch.Tensor) -> dict[str, float]:
        """One PEARL gradient step (oyster ``_take_step``): rl fields (T, b, ...), context (T, N, C), T tasks.

        Order: posterior and z (reparameterised); KL and Q losses step the encoder and Q nets; then V
        towards min Q - log pi at a fresh action (z detached), the target V by Polyak; then the policy.
        """
        cfg = self.config
        T, b = rl["reward"].shape
        mu, var = self.encoder.posterior(context)  # (T, L)
        z_task = mu + var.sqrt() * torch.randn_like(mu)
        z = z_task[:, None].expand(T, b, -1).reshape(T * b, -1)
        zd = z.detach()
        obs = rl["obs"].reshape(T * b, -1)
        action = rl["action"].reshape(T * b, -1)
        next_obs = rl["next_obs"].reshape(T * b, -1)
        reward, terminal = rl["reward"].reshape(-1), rl["terminal"].reshape(-1)

        # encoder + Q: Bellman error through z, plus the KL bottleneck
        kl = kl_to_standard_normal(mu, var).sum()
        with torch.no_grad():
            target_q = q_target(reward, terminal, self.v_target(next_obs, z), cfg.reward_scale, cfg.gamma)
        q1, q2 = self.q1(obs, action, z), self.q2(obs, action, z)
        q_loss = (q1 - target_q).square().mean() + (q2 - target_q).square().mean()
        self.opt["q"].zero_grad()
        self.opt["context"].zero_grad()
        (q_loss + cfg.kl_lambda * kl).backward()
        self.opt["q"].step()
        self.opt["context"].step()

        # V and policy, z detached; Q evaluated after its update (as oyster)
        x = torch.cat([obs, zd], -1)
        new_action, log_pi, mean, log_std = self.policy.sample(x)
        q1_new, q2_new = self.q1(obs, new_action, zd), self.q2(obs, new_action, zd)
        min_q_new = torch.minimum(q1_new, q2_new)
        v_pred = self.v(obs, zd)
        target_v = v_target(q1_new, q2_new, log_pi).detach()
        v_loss = (v_pred - target_v).square().mean()  # oyster vf_criterion = MSELoss
        self.opt["v"].zero_grad()
        v_loss.backward()
        self.opt["v"].step()
        soft_update(self.v_target, self.v, cfg.tau)

        policy_loss = (log_pi - min_q_new).mean()
        reg = cfg.policy_mean_reg * mean.square().mean() + cfg.policy_std_reg * log_std.square().mean()
        self.opt["policy"].zero_grad()
        # gradients into the policy only: the Q nets pass the gradient through to the action but their
        # own weight gradients (unused, zeroed before the next Q step) are not computed
        (policy_loss + reg).backward(inputs=list(self.policy.parameters()))
        self.opt["policy"].step()
        self.grad_steps += 1
        return {
            "q_loss": q_loss.item(),
            "v_loss": v_loss.item(),
            "policy_loss": policy_loss.item(),
            "kl": kl.item() / T,
            "log_pi": log_pi.mean().item(),
            "q_mean": q1.mean().item(),
            "z_var": var.mean().item(),
        }

    # -- one iteration -----------------------------------------------------------------------------
    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """One iteration, steps 1-3 of the module docstring: at iteration 0 ``initial_episodes`` prior
        episodes on every training task; prior and posterior episodes on ``num_tasks_sample`` sampled tasks;
        ``grad_steps_per_iter`` calls of ``sac_step``. Returns the phases' mean returns, the steps' mean
        losses and the counters (grad_steps, env_steps_collected, grad_steps_per_env_step, replay_rows).
        See MetaLearner.train_step."""
        cfg = self.config
        steps0 = ctx.env_steps
        stats: dict[str, float] = {}
        if self.iterations == 0:  # before training: prior data on every training task
            tasks = list(ctx.train_tasks())
            for t in tasks:
                self._clear_encoder_buffer(t.task_id)
            batch = ctx.sample_trials(self.make_agent(), tasks, episodes=cfg.initial_episodes)
            self._add(batch, enc=True)
        tasks = ctx.sample_tasks(cfg.num_tasks_sample)
        rows = [t for t in tasks for _ in range(cfg.rollouts_per_task)]
        for t in tasks:
            self._clear_encoder_buffer(t.task_id)
        prior = ctx.sample_trials(self.make_agent(), rows, episodes=cfg.prior_episodes)
        self._add(prior, enc=True)
        stats["prior_return"] = float(prior.episode_returns().mean())
        if cfg.posterior_episodes > 0:
            ids = np.array([t.task_id for t in tasks], np.int64)
            with torch.no_grad():
                mu, var = self.encoder.posterior(self.sample_context(ids, cfg.embedding_batch_size, ctx.rng))
            posteriors = {int(k): (mu[i], var[i]) for i, k in enumerate(ids)}
            agent = PEARLAgent(self, False, "posterior", posteriors)
            post = ctx.sample_trials(agent, rows, episodes=cfg.posterior_episodes)
            self._add(post, enc=False)
            stats["posterior_return"] = float(post.episode_returns().mean())
        task_ids = np.array(sorted(self.enc_rows), np.int64)
        losses: list[dict[str, float]] = []
        for _ in range(cfg.grad_steps_per_iter):
            batch_tasks = ctx.rng.choice(task_ids, cfg.meta_batch, replace=True)
            rl = self.sample_rl(batch_tasks, cfg.batch_size, ctx.rng)
            context = self.sample_context(batch_tasks, cfg.embedding_batch_size, ctx.rng)
            losses.append(self.sac_step(rl, context))
        if losses:
            stats |= {k: float(np.mean([m[k] for m in losses])) for k in losses[0]}
        self.iterations += 1
        stats["grad_steps"] = float(self.grad_steps)
        self.env_steps += ctx.env_steps - steps0
        stats["env_steps_collected"] = float(self.env_steps)
        stats["grad_steps_per_env_step"] = self.grad_steps / max(self.env_steps, 1)
        stats["replay_rows"] = float(len(self.buffer))
        return stats

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Encoder, policy, Q1, Q2, V, target V and the four Adam states; the replay's row count
        (``AppendOnlyArrays.state``: flushes and syncs the files, ``OSError`` if that fails); each task's
        encoder-buffer start row (str keys); the grad_steps / env_steps / iterations counters; the config
        (not read back). See MetaLearner.state_dict."""
        return {
            "encoder": self.encoder.state_dict(),
            "policy": self.policy.state_dict(),
            "q1": self.q1.state_dict(),
            "q2": self.q2.state_dict(),
            "v": self.v.state_dict(),
            "v_target": self.v_target.state_dict(),
            "opt": {k: o.state_dict() for k, o in self.opt.items()},
            "replay_rows": self.buffer.state(),
            "enc_start": {str(k): int(v) for k, v in sorted(self.enc_start.items())},
            "grad_steps": self.grad_steps,
            "env_steps": self.env_steps,
            "iterations": self.iterations,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load networks and optimizers (under this learner's ``fused_optimizer``), cut the replay files
        back to the checkpoint's rows (``ValueError`` from ``AppendOnlyArrays.restore`` if fewer are
        stored), restore the counters and encoder-buffer starts and rebuild the per-task row index."""
        for name in ("encoder", "policy", "q1", "q2", "v", "v_target"):
            getattr(self, name).load_state_dict(state[name])
        for k, o in self.opt.items():  # under this learner's fused_optimizer, whichever wrote the state
            load_optimizer_state(o, state["opt"][k])
        enc_start = {int(k): int(v) for k, v in state["enc_start"].items()}
        counters = int(state["grad_steps"]), int(state["iterations"]), int(state["env_steps"])
        # last: cutting the replay files back to the checkpoint's rows is the one change on disk
        self.buffer.restore(int(state["replay_rows"]))
        self.enc_start = enc_start
        self.grad_steps, self.iterations, self.env_steps = counters
        self._rebuild_index()
