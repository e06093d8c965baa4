"""MAML-TRPO (Finn, Abbeel & Levine, ICML 2017): a policy initialisation that one policy-gradient step adapts.

Sources of the method facts (code read only to check facts; this file is written from them):

* Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", Sec. 3.2 / 5.3,
  and the official code ``cbfinn/maml_rl``: ``maml_examples/maml_trpo_point.py`` (2D navigation:
  inner step 0.5, 20 rollouts per inner step, meta-batch 40, horizon 100, 100-100 ReLU, max KL 0.01,
  100 iterations), ``maml_examples/cluster_maml_trpo_cheetah.py`` (locomotion: inner step 0.1,
  20 rollouts, meta-batch 40, horizon 200, 100-100 ReLU); rllab's ``LinearFeatureBaseline`` (features,
  ridge 1e-5 raised x10 on failure) and ``ConjugateGradientOptimizer`` (10 CG iterations, damping 1e-5,
  backtracking 0.8^k, k < 15, accept only if the loss improves and the KL holds; rllab
  ``process_samples``: centred advantages, gamma 0.99, lambda 1).
* ProMP (Rothfuss et al. 2019, ``jonasrothfuss/ProMP``) and ``tristandeleu/pytorch-maml-rl``: 64-64 tanh
  Gaussian MLP with a learned state-independent log-std; baseline refit per task on that task's rollouts
  before its advantages are computed.
* Meta-World+ (``rainx0r/metaworld-algorithms``): 512-512 tanh, 10 rollouts per task, meta-batch 10 on
  ML1, inner step 0.1; evaluation = 10 adaptation episodes, one step, 3 scored episodes.

The method, top to bottom:

1. Policy pi_theta(a|s) = N(mu_theta(s), diag(exp(2 log_std))), mu an MLP, log_std a learned vector.
2. Inner step (per task i, on rollouts D_i of the current policy):
   L_i(theta) = -(1/N_i) sum_t log pi_theta(a_t|s_t) A_t, with A_t = G_t - b_i(s_t, t) (lambda = 1), b_i a
   linear baseline refit on D_i, A centred and scaled per task; theta'_i = theta - alpha grad L_i(theta).
   ALL parameters adapt (mean network and log-std), as in Finn's code.
3. Outer step (TRPO on the post-update rollouts D'_i of pi_{theta'_i}): maximise
   S(theta) = mean_i (1/N'_i) sum_t exp(log pi_{theta'_i(theta)}(a|s) - log pi_old(a|s)) A'_t
   subject to mean KL(pi_old || pi_{theta'_i(theta)}) <= max_kl, differentiating through the inner step
   (second order; ``torch.func.grad`` inside ``vmap`` over tasks, then ordinary autograd outside). The
   natural-gradient direction comes from conjugate gradient on the Fisher-vector product (Hessian of the
   KL through the inner step), then a backtracking line search.

One ``train_step`` = meta_batch_size tasks x rollouts_per_task single-episode rollouts with theta, the
inner step, the same number of rollouts with each theta'_i, one TRPO step: 2 * M * R * H env steps.

Acting at meta-test (``make_agent(evaluation=True)``; the harness's meta-test trial is the only
adaptation data): episode 0 is played by pi_theta; after every ``eval_adapt_every`` episodes, one inner
step per task key (each meta-test row is its own task) on the episodes played since the previous step
(all of them played with the current parameters, so the step is on-policy, as Finn's multi-step test),
at most ``eval_max_steps`` steps (default 1, 0 = no limit). The agent samples actions in every episode
it will learn from (a mean action gives a zero likelihood-ratio gradient) and, with
``eval_mean_when_done`` (default), acts with the mean in episodes no step will follow. Defaults on
point-nav: episode 0 sampled from pi_theta, one step on it, episodes 1-5 with the mean of pi_theta'.
Meta-World profile: 10 sampled episodes, one step on all 10, 3 scored episodes with the mean.

Training vs meta-test schedule: training takes one step on R single-episode rollouts per task (Finn's
setting) and scores the post-update rollouts; meta-test takes one step on the first episode of the
trial (or on ``eval_adapt_every`` episodes). Only one step from theta is ever meta-trained, which is why
the default meta-test takes one step (measurements in docs/tuning/maml.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from algorithms.common.nets import GaussianHead, mlp
from algorithms.common.numpy_acting import MLP, GaussianActing, usable
from algorithms.common.ppo import gae_over_trials
from metarl_protocol import AdaptiveAgent, MetaLearner, SuiteSpec, TrainContext, Transition, TrialBatch
from metarl_protocol.settings import setting

Params = dict[str, torch.Tensor]


@dataclass
class MAMLConfig:
    """Hyperparameters. Defaults: ProMP / pytorch-maml-rl policy, Finn's TRPO and baseline settings."""

    hidden_sizes: tuple[int, ...] = setting(
        (64, 64), low=1
    )  # ProMP / pytorch-maml-rl; Finn 100-100, Meta-World+ 512-512
    activation: str = setting(
        "tanh", choices=("tanh", "relu")
    )  # "tanh" (ProMP, Meta-World+) or "relu" (Finn)
    init_std: float = setting(1.0, low=0.0, low_open=True)  # rllab GaussianMLPPolicy init_std
    inner_lr: float = setting(
        0.1, low=0.0, low_open=True
    )  # alpha: 0.1 locomotion / Meta-World, 0.5 2D navigation (Finn)
    meta_batch_size: int = setting(20, low=1)  # tasks per iteration
    rollouts_per_task: int = setting(
        20, low=1
    )  # single-episode rollouts per task per inner step (Finn fast_batch_size)
    gamma: float = setting(0.99, low=0.0, high=1.0)
    gae_lambda: float = setting(1.0, low=0.0, high=1.0)  # rllab / Finn: lambda 1, i.e. A_t = G_t - b(s_t)
    normalize_advantages: bool = True  # rllab center_adv: per task, (A - mean) / (std + 1e-8)
    baseline_reg: float = setting(
        1e-5, low=0.0, low_open=True
    )  # ridge regulariser of the linear feature baseline (raised x10 on failure)
    max_kl: float = setting(0.01, low=0.0, low_open=True)  # TRPO step size (Finn meta_step_size)
    cg_iters: int = setting(10, low=1)
    cg_damping: float = 1e-5  # rllab ConjugateGradientOptimizer reg_coeff
    backtrack_ratio: float = setting(0.8, low=0.0, high=1.0, low_open=True, high_open=True)
    max_backtracks: int = setting(15, low=1)
    eval_adapt_every: int = setting(1, low=1)  # meta-test: one inner step after every this many episodes
    # meta-test: at most this many inner steps (0 = no limit). 1 (tuned, docs/tuning/maml.md): training only
    # ever takes one step from theta; further steps from adapted parameters diverged on point-nav validation
    eval_max_steps: int = 1
    eval_mean_when_done: bool = True  # meta-test: mean actions in episodes no inner step will follow
    # rows that act with the meta-parameters (all rows, until a key has adapted parameters) act through one
    # numpy MLP on the CPU (numpy_acting.py); equal to the per-task torch path up to float rounding. False:
    # every row through the per-task batched matmuls, which reproduces runs of earlier commits exactly
    numpy_acting: bool = True


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


class GaussianMLPPolicy(nn.Module):
    """obs (..., obs_dim) -> (mean (..., act_dim), log_std (act_dim,)) of a diagonal Gaussian.

    The mean is ``nets.mlp`` followed by ``GaussianHead``'s linear layer; log_std is the head's learned
    state-independent vector, clamped to the head's range.
    """

    def __init__(self, spec: SuiteSpec, cfg: MAMLConfig) -> None:
        super().__init__()
        self.body = mlp(spec.obs_dim, tuple(cfg.hidden_sizes), None, ACTIVATIONS[cfg.activation])
        width = cfg.hidden_sizes[-1] if cfg.hidden_sizes else spec.obs_dim
        self.head = GaussianHead(width, spec.act_dim, init_std=cfg.init_std)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (..., obs_dim) -> mean (..., act_dim), log_std (act_dim,) clamped to the head's range."""
        log_std = self.head.log_std.clamp(self.head.min_log_std, self.head.max_log_std)
        return self.head.mean(self.body(obs)), log_std

    def forward_stacked(self, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same map with U parameter sets stacked on dim 0: params (U, ...), obs (U, N, D) ->
        mean (U, N, A), log_std (U, A).

        Each linear layer is one batched matmul (``torch.baddbmm``) over the U sets; equal to ``vmap`` of
        ``functional_call`` up to float rounding, at a fraction of its per-call cost (acting calls this
        every env step). Differentiable in ``params``.
        """
        x = obs
        for i, layer in enumerate(self.body):
            if isinstance(layer, nn.Linear):
                w, b = params[f"body.{i}.weight"], params[f"body.{i}.bias"]
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            else:
                x = layer(x)
        w, b = params["head.mean.weight"], params["head.mean.bias"]
        mean = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        return mean, params["head.log_std"].clamp(self.head.min_log_std, self.head.max_log_std)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(actions; mean, exp(log_std)^2) summed over the last (action) dimension: (...,)."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the action dimension: (...,)."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).square()) / (2 * var_q) - 0.5).sum(-1)


# -- linear feature baseline and advantages ------------------------------------------------------------
def baseline_features(obs: torch.Tensor) -> torch.Tensor:
    """rllab LinearFeatureBaseline features of episodes obs (..., H, D) -> (..., H, 2D + 4), float64.

    [clip(o, -10, 10), clip(o, -10, 10)^2, t/100, (t/100)^2, (t/100)^3, 1] with t the step in the episode.
    """
    o = obs.to(torch.float64).clamp(-10.0, 10.0)
    H = obs.shape[-2]
    t = (torch.arange(H, dtype=torch.float64, device=obs.device) / 100.0).reshape(H, 1)
    t = t.expand(*obs.shape[:-1], 1)
    return torch.cat([o, o.square(), t, t.square(), t**3, torch.ones_like(t)], -1)


def fit_linear_baseline(
    features: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float = 1e-5, tries: int = 5
) -> torch.Tensor:
    """Ridge coefficients per task: features (U, N, F), returns (U, N), mask (U, N) -> (U, F) float64.

    Solves (X^T X + reg I) c = X^T y over the masked steps of each task (rllab LinearFeatureBaseline.fit);
    a task whose solution is not finite is solved again with reg x10, at most ``tries`` times in all.
    """
    m = mask.to(torch.float64).unsqueeze(-1)
    x = features.to(torch.float64) * m
    y = returns.to(torch.float64).unsqueeze(-1) * m
    xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(x.shape[-1], dtype=torch.float64, device=x.device)
    coef = torch.full(xty.shape, float("nan"), dtype=torch.float64, device=x.device)
    todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(tries):
        sol = torch.linalg.lstsq(xtx[todo] + reg * eye, xty[todo]).solution
        coef[todo] = sol
        todo = ~torch.isfinite(coef).all(-1).all(-1)
        if not bool(todo.any()):
            break
        reg *= 10
    return coef.squeeze(-1)


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_k gamma^k r_{t+k} within each episode: rewards (..., H) -> (..., H)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


@dataclass
class TaskData:
    """Rollouts of U tasks, each flattened to N = E episodes x H steps (padding has mask False)."""

    obs: torch.Tensor  # (U, N, obs_dim)
    actions: torch.Tensor  # (U, N, act_dim) as the agent returned them (pre-clip)
    advantages: torch.Tensor  # (U, N) baseline-subtracted (and per task normalised) advantages
    mask: torch.Tensor  # (U, N) float: 1 for valid steps
    returns: torch.Tensor  # (U,) mean undiscounted episode return per task (diagnostics)


def task_data(
    obs: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    valid: torch.Tensor,
    episode_mask: torch.Tensor,
    cfg: MAMLConfig,
) -> TaskData:
    """Episodes (U, E, H, ...) of U tasks -> TaskData with linear-baseline advantages.

    ``valid`` (U, E, H) marks real steps, ``episode_mask`` (U, E) real episodes (padding rows of tasks
    with fewer episodes are False). The baseline is refit per task on that task's episodes and then
    predicts them (pytorch-maml-rl / Finn's sampler order); advantages are GAE(gamma, lambda) with the
    baseline as value, i.e. G_t - b(s_t, t) for lambda 1.
    """
    U, E, H = rewards.shape
    mask = (valid & episode_mask.unsqueeze(-1)).to(torch.float32)
    rewards = rewards * mask
    feats = baseline_features(obs)  # (U, E, H, F)
    returns = discounted_returns(rewards.to(torch.float64), cfg.gamma)
    coef = fit_linear_baseline(
        feats.reshape(U, E * H, -1), returns.reshape(U, E * H), mask.reshape(U, E * H), cfg.baseline_reg
    )
    values = (feats @ coef.reshape(U, 1, -1, 1)).squeeze(-1).to(torch.float32) * mask
    adv, _ = gae_over_trials(
        rewards.reshape(U * E, H),
        values.reshape(U * E, H),
        mask.reshape(U * E, H) > 0,
        cfg.gamma,
        cfg.gae_lambda,
    )
    adv = adv.reshape(U, E * H)
    m = mask.reshape(U, E * H)
    if cfg.normalize_advantages:
        n = m.sum(1, keepdim=True).clamp_min(1.0)
        mean = (adv * m).sum(1, keepdim=True) / n
        std = (((adv - mean) ** 2 * m).sum(1, keepdim=True) / n).sqrt()
        adv = (adv - mean) / (std + 1e-8) * m
    ep_returns = (rewards.sum(-1) * episode_mask).sum(1) / episode_mask.sum(1).clamp_min(1)
    return TaskData(
        obs=obs.reshape(U, E * H, -1),
        actions=actions.reshape(U, E * H, -1),
        advantages=adv,
        mask=m,
        returns=ep_returns,
    )


def batch_task_data(
    batch: TrialBatch, tasks_per_batch: int, device: torch.device, cfg: MAMLConfig
) -> TaskData:
    """A TrialBatch of M tasks x R contiguous rows (any number of episodes) -> TaskData with U = M."""
    B, H, K = batch.num_trials, batch.horizon, batch.episodes
    M = tasks_per_batch
    R = B // M
    shape = (M, R * K, H)
    obs = batch.tensor("obs", device).reshape(*shape, -1)
    act = batch.tensor("actions", device).reshape(*shape, -1)
    rew = batch.tensor("rewards", device).reshape(shape)
    valid = batch.tensor("valid", device, torch.bool).reshape(shape)
    return task_data(obs, act, rew, valid, torch.ones(M, R * K, dtype=torch.bool, device=device), cfg)


# -- the inner step ---------------------------------------------------------------------------------------
def inner_loss(
    policy: nn.Module,
    params: Params,
    obs: torch.Tensor,
    actions: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Vanilla policy-gradient loss of ONE task: -(1/N) sum_t log pi(a_t|s_t) A_t over its N valid steps."""
    mean, log_std = functional_call(policy, params, (obs,))
    log_prob = gaussian_log_prob(mean, log_std, actions)
    return -(log_prob * adv * mask).sum() / mask.sum().clamp_min(1.0)


def adapt(policy: nn.Module, params: Params, data: TaskData, lr: float) -> Params:
    """One inner step per task: theta'_i = theta_i - lr * grad L_i(theta_i); params (U, ...) -> (U, ...).

    ``params`` holds one parameter set per task (stacked on dim 0; expand the meta-parameters for a
    shared start). The result stays differentiable with respect to ``params`` (second-order MAML).
    """
    grads = vmap(grad(lambda p, o, a, adv, m: inner_loss(policy, p, o, a, adv, m)))(
        params, data.obs, data.actions, data.advantages, data.mask
    )
    return {k: params[k] - lr * grads[k] for k in params}


def per_task_forward(
    policy: GaussianMLPPolicy, params: Params, obs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """params (U, ...) and obs (U, N, D) -> mean (U, N, A), log_std (U, A).

    ``GaussianMLPPolicy.forward_stacked`` (batched matmuls), equal to ``vmap`` of ``functional_call`` up
    to float rounding (tests/test_maml.py) at a fraction of its per-call cost.
    """
    return policy.forward_stacked(params, obs)


def expand(params: Params, n: int) -> Params:
    """Shared parameters -> (n, ...) stacked copies (a view; gradients flow back to the shared ones)."""
    return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}


# -- the agent ---------------------------------------------------------------------------------------------
class MAMLAgent(AdaptiveAgent):
    """Acts with one parameter set per task key; in evaluation it takes inner steps in ``end_episode``.

    ``adapted`` maps a task key to its adapted parameters (the training post-update rollouts); keys not in
    it use the meta-parameters. Rows sharing a key share (and, in evaluation, pool data for) one
    parameter set. All adaptation state is rebound in ``new_trial``, so shallow clones are independent.
    """

    def __init__(
        self,
        policy: GaussianMLPPolicy,
        spec: SuiteSpec,
        cfg: MAMLConfig,
        device: torch.device,
        evaluation: bool,
        adapted: dict[int, Params] | None = None,
        mean_actions: bool = False,
    ) -> None:
        self.policy, self.spec, self.cfg, self.device, self.evaluation = policy, spec, cfg, device, evaluation
        self.adapted = adapted or {}
        self.mean_actions = mean_actions  # act with the policy mean in every episode (few-shot check only)
        self.params: Params = {}
        self.fast: tuple[MLP, GaussianActing] | None = None  # numpy theta path, built per trial (new_trial)

    def new_trial(self, task_keys: np.ndarray) -> None:
        """Group the B rows by task key (U keys, padded to the largest group) and start each key at its
        ``adapted`` parameters or at theta; clear the episode buffer and step counters. While every row
        acts with theta, acting goes through one numpy MLP (``numpy_acting`` on the CPU). See
        AdaptiveAgent.new_trial."""
        keys = np.asarray(task_keys).tolist()
        uniq = list(dict.fromkeys(keys))
        index = {k: i for i, k in enumerate(uniq)}
        self.row_task = torch.as_tensor([index[k] for k in keys], device=self.device)
        counts = [keys.count(k) for k in uniq]
        width = max(counts)
        # padded layout (U, width): the row index of each task's j-th row (padding repeats its last row)
        pad, pos, seen = [], [], dict.fromkeys(uniq, 0)
        rows_of = {k: [r for r, kk in enumerate(keys) if kk == k] for k in uniq}
        for k in uniq:
            r = rows_of[k]
            pad.append(r + [r[-1]] * (width - len(r)))
        for k in keys:
            pos.append(seen[k])
            seen[k] += 1
        self.pad_index = torch.as_tensor(pad, device=self.device)  # (U, width)
        self.row_pos = torch.as_tensor(pos, device=self.device)  # (B,)
        self.row_mask = torch.as_tensor([[j < c for j in range(width)] for c in counts], device=self.device)
        meta = {k: v.detach() for k, v in self.policy.named_parameters()}
        self.params = {
            name: torch.stack([self.adapted.get(k, meta)[name].detach() for k in uniq]) for name in meta
        }
        # no key has adapted parameters yet: every row acts with theta, so one shared matrix product per layer
        # serves all rows (the per-task path reads one weight copy per task: memory-bound at 512-512)
        shared = not any(k in self.adapted for k in uniq)
        numpy_path = shared and usable(self.device, self.cfg.numpy_acting)
        self.fast = (MLP(self.policy.body), GaussianActing(self.policy.head)) if numpy_path else None
        self.episode, self.steps, self.since_step = 0, 0, 0
        self.buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_action: np.ndarray | None = None

    def _learns_from_episode(self, e: int) -> bool:
        """Whether an inner step follows episode ``e`` of a meta-test trial (0-based)."""
        cfg = self.cfg
        if not self.evaluation:
            return False
        step = e // cfg.eval_adapt_every + 1  # the (1-based) step this episode's group feeds
        # the step runs after episode step * every - 1, which must come before the trial's last episode
        before_last = step * cfg.eval_adapt_every < self.spec.eval_episodes
        return before_last and (cfg.eval_max_steps == 0 or step <= cfg.eval_max_steps)

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions (B, act_dim) from each row's task parameters: the mean with ``mean_actions`` or, in
        evaluation with ``eval_mean_when_done``, in episodes no inner step follows; a sample otherwise.
        Extras: ``log_prob`` (B,) of the pre-clip action, which is also kept for ``observe``. See
        AdaptiveAgent.act."""
        deterministic = self.mean_actions or (
            self.evaluation and self.cfg.eval_mean_when_done and not self._learns_from_episode(self.episode)
        )
        if self.fast is not None:  # every row acts with theta: one numpy MLP over the B rows
            body, head = self.fast
            action_np, log_prob_np = head(body(np.asarray(obs, dtype=np.float32)), deterministic)
            self._pending_action = action_np
            return action_np, {"log_prob": log_prob_np}
        o = torch.as_tensor(obs, device=self.device)
        mean, log_std = per_task_forward(self.policy, self.params, o[self.pad_index])
        mean = mean[self.row_task, self.row_pos]  # (B, A)
        log_std = log_std[self.row_task]  # (B, A)
        action = mean if deterministic else mean + torch.randn_like(mean) * log_std.exp()
        log_prob = gaussian_log_prob(mean, log_std, action)
        action_np = action.cpu().numpy()
        self._pending_action = action_np  # the pre-clip action, for the inner step's log-probabilities
        return action_np, {"log_prob": log_prob.cpu().numpy()}

    def observe(self, transition: Transition) -> None:
        """Evaluation only: buffer (obs, pre-clip action from ``act``, reward, active) of the step for the
        next inner step; a training agent keeps nothing. Asserts that ``act`` came first. See
        AdaptiveAgent.observe."""
        if not self.evaluation:
            return
        # the transition carries the clipped env action; the likelihood ratio needs the sampled one
        assert self._pending_action is not None, "observe() before act()"
        self.buffer.append(
            (
                transition.obs.copy(),
                self._pending_action,
                transition.reward.copy(),
                transition.active.copy(),
            )
        )

    def end_episode(self) -> None:
        """Evaluation only: once ``eval_adapt_every`` episodes that a step follows are buffered (at most
        ``eval_max_steps`` steps per trial, 0 = no limit), one inner step per task key on them (``adapt``,
        ``inner_lr``); its rows then act with their adapted parameters. Other episodes are dropped from the
        buffer. See AdaptiveAgent.end_episode."""
        if not self.evaluation:
            return
        learn = self._learns_from_episode(self.episode)
        self.episode += 1
        if not learn:
            self.buffer = []
            return
        self.since_step += 1
        if self.since_step < self.cfg.eval_adapt_every:
            return
        data = self._buffer_data()
        self.params = {
            k: v.detach() for k, v in adapt(self.policy, self.params, data, self.cfg.inner_lr).items()
        }
        self.fast = None  # the rows now act with their own adapted parameters
        self.steps += 1
        self.since_step = 0
        self.buffer = []

    def _buffer_data(self) -> TaskData:
        """The episodes since the last step, grouped by task key: (U, width * E, H, ...)."""
        H = self.spec.horizon
        obs, act, rew, act_mask = (np.stack(x, 1) for x in zip(*self.buffer, strict=True))  # (B, E*H, ...)
        B = obs.shape[0]
        E = obs.shape[1] // H

        def group(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            t = torch.as_tensor(x, device=self.device, dtype=dtype).reshape(B, E, H, *x.shape[2:])
            t = t[self.pad_index]  # (U, width, E, H, ...)
            return t.reshape(t.shape[0], -1, H, *x.shape[2:])

        U, width = self.pad_index.shape
        ep_mask = self.row_mask.unsqueeze(-1).expand(U, width, E).reshape(U, width * E)
        return task_data(
            group(obs, torch.float32),
            group(act, torch.float32),
            group(rew, torch.float32),
            group(act_mask, torch.bool),
            ep_mask,
            self.cfg,
        )


# -- TRPO outer step ---------------------------------------------------------------------------------------
def conjugate_gradient(fvp: Any, b: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve F x = b with ``iters`` conjugate-gradient iterations (F given as x -> F x)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        fp = fvp(p)
        step = rr / (p @ fp)
        x = x + step * p
        r = r - step * fp
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


class MetaObjective:
    """The outer objective S(theta) and mean KL(theta) of one iteration, as functions of flat theta.

    ``pre`` (U tasks) gives the inner step, ``post`` the post-update rollouts. ``old_mean`` / ``old_log_std``
    / ``old_log_prob`` are the post-update policy at the iteration's starting theta (no gradient).
    """

    def __init__(self, policy: GaussianMLPPolicy, pre: TaskData, post: TaskData, cfg: MAMLConfig) -> None:
        self.policy, self.pre, self.post, self.cfg = policy, pre, post, cfg
        self.names = [n for n, _ in policy.named_parameters()]
        self.shapes = [p.shape for _, p in policy.named_parameters()]
        self.n_post = post.mask.sum(1).clamp_min(1.0)  # (U,)
        theta0 = self.flat_params().detach()
        with torch.no_grad():
            mean, log_std = self.post_update_policy(theta0)
        self.old_mean, self.old_log_std = mean.detach(), log_std.detach()
        self.old_log_prob = gaussian_log_prob(self.old_mean, self.old_log_std.unsqueeze(1), post.actions)

    def flat_params(self) -> torch.Tensor:
        """The policy's current parameters theta as one vector (P,), in ``parameters()`` order."""
        return torch.cat([p.reshape(-1) for p in self.policy.parameters()])

    def unflatten(self, theta: torch.Tensor) -> Params:
        """Flat theta (P,) -> parameter name -> tensor of that parameter's shape (differentiable in theta)."""
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = shape.numel()
            out[name] = theta[i : i + n].reshape(shape)
            i += n
        return out

    def post_update_policy(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """theta -> inner step per task -> post-update mean (U, N, A) and log_std (U, A)."""
        U = self.pre.obs.shape[0]
        adapted = adapt(self.policy, expand(self.unflatten(theta), U), self.pre, self.cfg.inner_lr)
        return per_task_forward(self.policy, adapted, self.post.obs)

    def fisher_vector_product(self, theta: torch.Tensor) -> Any:
        """v -> F v, F the Hessian of the mean KL(pi_old || pi_{theta'(theta)}) at theta = theta_old.

        At theta_old the KL and its gradient with respect to the post-update outputs (mean, log_std) vanish,
        so its Hessian with respect to theta is exactly J^T D J (Gauss-Newton, no third derivatives): J the
        Jacobian of the outputs through the inner step, D the KL's output Hessian, diagonal for Gaussians:
        w_t / var for each mean and 2 sum_t w_t for each log-std, w_t = mask_t / (N_i U) the step's weight in
        the mean KL. J v by the double-vjp trick, J^T u by one vjp; the outputs' graph is built once.
        """
        theta = theta.detach().requires_grad_(True)
        mean, log_std = self.post_update_policy(theta)
        U = mean.shape[0]
        w = (self.post.mask / self.n_post.unsqueeze(1) / U).unsqueeze(-1)  # (U, N, 1)
        d_mean = (w * torch.exp(-2 * log_std.detach()).unsqueeze(1)).expand_as(mean)  # (U, N, A)
        d_log_std = 2 * w.sum(1).expand_as(log_std)  # (U, A)
        u_mean = torch.zeros_like(mean, requires_grad=True)
        u_log_std = torch.zeros_like(log_std, requires_grad=True)
        jt_u = torch.autograd.grad((mean, log_std), theta, (u_mean, u_log_std), create_graph=True)[0]

        def fvp(v: torch.Tensor) -> torch.Tensor:
            j_mean, j_log_std = torch.autograd.grad(jt_u, (u_mean, u_log_std), v, retain_graph=True)
            out = (d_mean * j_mean, d_log_std * j_log_std)
            return torch.autograd.grad((mean, log_std), theta, out, retain_graph=True)[0]

        return fvp

    def terms(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate S(theta) to maximise, mean KL(old || new)): scalars, means per task then over tasks."""
        mean, log_std = self.post_update_policy(theta)
        m = self.post.mask
        log_prob = gaussian_log_prob(mean, log_std.unsqueeze(1), self.post.actions)
        ratio = torch.exp(log_prob - self.old_log_prob)
        surrogate = ((ratio * self.post.advantages * m).sum(1) / self.n_post).mean()
        kl = gaussian_kl(self.old_mean, self.old_log_std.unsqueeze(1), mean, log_std.unsqueeze(1))
        return surrogate, ((kl * m).sum(1) / self.n_post).mean()


def trpo_step(objective: MetaObjective, cfg: MAMLConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One TRPO step from the policy's current parameters; returns (new flat theta, statistics).

    g = grad S; x ~= (F + damping I)^-1 g by conjugate gradient, F the Hessian of the mean KL through the
    inner step at theta_old (``MetaObjective.fisher_vector_product``); full step x * sqrt(2 max_kl / x^T F x);
    backtracking by ``backtrack_ratio``^k, k < ``max_backtracks``, accepting the first step whose surrogate
    improves and whose mean KL <= max_kl; if none, theta is unchanged (rllab ConjugateGradientOptimizer).
    """
    theta0 = objective.flat_params().detach().requires_grad_(True)
    surrogate0, _ = objective.terms(theta0)
    g = torch.autograd.grad(surrogate0, theta0)[0]
    fisher = objective.fisher_vector_product(theta0.detach())

    def fvp(v: torch.Tensor) -> torch.Tensor:
        return fisher(v) + cfg.cg_damping * v

    x = conjugate_gradient(fvp, g, cfg.cg_iters)
    shs = 0.5 * (x @ fvp(x))
    full_step = x * torch.sqrt(cfg.max_kl / shs.clamp_min(1e-12))
    old_surrogate = float(surrogate0.detach())
    theta_old = theta0.detach()
    stats = {"surrogate_before": old_surrogate, "grad_norm": float(g.norm())}
    with torch.no_grad():
        for k in range(cfg.max_backtracks):
            candidate = theta_old + cfg.backtrack_ratio**k * full_step
            surrogate, kl = objective.terms(candidate)
            if torch.isfinite(surrogate) and float(surrogate) > old_surrogate and float(kl) <= cfg.max_kl:
                return candidate, stats | {
                    "accepted": 1.0,
                    "backtracks": float(k),
                    "surrogate_after": float(surrogate),
                    "kl": float(kl),
                }
    return theta_old, stats | {
        "accepted": 0.0,
        "backtracks": float(cfg.max_backtracks),
        "surrogate_after": old_surrogate,
        "kl": 0.0,
    }


# -- the learner -------------------------------------------------------------------------------------------
class MAML(MetaLearner):
    """MAML-TRPO. Evaluation: the inner step(s) run in the agent's ``end_episode`` (see the module docstring).

    Budget: each ``train_step`` consumes 2 * meta_batch_size * rollouts_per_task * H environment steps.
    """

    name = "maml"
    parallel_update = True  # see MetaLearner.parallel_update; measured in README "Performance"
    Config = MAMLConfig

    def __init__(
        self, spec: SuiteSpec, config: MAMLConfig, device: torch.device, storage_dir: Path | None = None
    ) -> None:
        super().__init__(spec, config, device, storage_dir)  # validates the config
        self.policy = GaussianMLPPolicy(spec, config).to(device)
        self.iteration = 0

    @classmethod
    def profile(cls, profile: str, family: str) -> dict[str, Any]:
        """Paper: Finn et al. 2017's settings (``maml_trpo_point.py`` on point-nav,
        ``cluster_maml_trpo_cheetah.py`` on locomotion). Meta-World, both profiles: Meta-World+'s ML1
        settings. Quick: point-nav tuned (docs/tuning/maml.md), locomotion not tuned. See MetaLearner.profile.
        """
        if family == "point-nav":
            if profile == "paper":
                # Finn et al. 2017, maml_examples/maml_trpo_point.py: alpha 0.5, 20 rollouts, meta-batch 40,
                # 100-100 ReLU, max KL 0.01 (the harness's paper budget gives 80 iterations; Finn ran 100)
                return {
                    "hidden_sizes": (100, 100),
                    "activation": "relu",
                    "inner_lr": 0.5,
                    "rollouts_per_task": 20,
                    "meta_batch_size": 40,
                }
            # quick: Finn's alpha 0.5; meta-batch 20 (Finn: "20 is fairly stable"); 10 rollouts per inner step
            # (Finn: "10 works"): 96 iterations in 3.84M steps. Tuned on validation tasks, seed 100
            # (docs/tuning/maml.md): 20 rollouts (48 iterations) and 100-100 ReLU were no better, and slower.
            return {"hidden_sizes": (64, 64), "activation": "tanh", "inner_lr": 0.5, "rollouts_per_task": 10,
                    "meta_batch_size": 20}  # fmt: skip
        if family == "metaworld":
            # Meta-World+ (rainx0r/metaworld-algorithms) MAML-TRPO on ML1: 512-512 tanh, 10 rollouts per task,
            # meta-batch 10, alpha 0.1; evaluation: 10 adaptation episodes, one step, 3 scored episodes.
            # One iteration = 2 x 10 x 10 x 500 = 100k steps: quick (1.5M) gives 15 iterations, paper 2,500.
            return {
                "hidden_sizes": (512, 512),
                "activation": "tanh",
                "inner_lr": 0.1,
                "rollouts_per_task": 10,
                "meta_batch_size": 10,
                "eval_adapt_every": 10,
                "eval_max_steps": 1,
            }
        # locomotion (H = 200)
        if profile == "paper":
            # Finn et al. 2017, cluster_maml_trpo_cheetah.py: alpha 0.1, 20 rollouts, meta-batch 40,
            # 100-100 ReLU, max KL 0.01: 320k steps per iteration (the 20M-step paper budget: 62 iterations)
            return {
                "hidden_sizes": (100, 100),
                "activation": "relu",
                "inner_lr": 0.1,
                "rollouts_per_task": 20,
                "meta_batch_size": 40,
            }
        # quick: Finn's alpha 0.1 and policy, 10 tasks x 10 rollouts (80k steps per iteration: 15 iterations
        # in the 1.2M-step budget); not tuned here (no CPU time)
        return {"hidden_sizes": (100, 100), "activation": "relu", "inner_lr": 0.1, "rollouts_per_task": 10,
                "meta_batch_size": 10}  # fmt: skip

    @classmethod
    def validate(cls, config: MAMLConfig, spec: SuiteSpec | None = None) -> None:
        """Raise ``ValueError`` for an unknown ``activation``; meta_batch_size, rollouts_per_task, cg_iters,
        max_backtracks or eval_adapt_every < 1; eval_max_steps < 0; inner_lr, max_kl or init_std <= 0;
        backtrack_ratio outside (0, 1); gamma or gae_lambda outside [0, 1]; a hidden width < 1. The
        constructor calls it too. See MetaLearner.validate."""
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"activation={config.activation!r}: expected one of {sorted(ACTIVATIONS)}")
        for name in (
            "meta_batch_size",
            "rollouts_per_task",
            "cg_iters",
            "max_backtracks",
            "eval_adapt_every",
        ):
            if getattr(config, name) < 1:
                raise ValueError(f"{name}={getattr(config, name)}: expected an integer >= 1")
        if config.eval_max_steps < 0:
            raise ValueError(f"eval_max_steps={config.eval_max_steps}: expected >= 0 (0 = no limit)")
        for name in ("inner_lr", "max_kl", "init_std"):
            if not getattr(config, name) > 0:
                raise ValueError(f"{name}={getattr(config, name)}: expected a number > 0")
        if not 0 < config.backtrack_ratio < 1:
            raise ValueError(f"backtrack_ratio={config.backtrack_ratio}: expected a number in (0, 1)")
        if not (0 <= config.gamma <= 1 and 0 <= config.gae_lambda <= 1):
            raise ValueError(
                f"gamma={config.gamma}, gae_lambda={config.gae_lambda}: expected numbers in [0, 1]"
            )
        if any(h < 1 for h in config.hidden_sizes):
            raise ValueError(f"hidden_sizes={config.hidden_sizes}: expected positive widths")

    def make_agent(
        self, evaluation: bool = False, adapted: dict[int, Params] | None = None, mean_actions: bool = False
    ) -> MAMLAgent:
        """The agent; ``adapted`` (task key -> parameters) gives the post-update policy of training tasks;
        ``mean_actions`` makes it act with the policy mean throughout (the few-shot check's second
        reading)."""
        return MAMLAgent(self.policy, self.spec, self.config, self.device, evaluation, adapted, mean_actions)

    def adapt_tasks(self, batch: TrialBatch, num_tasks: int) -> tuple[dict[int, Params], TaskData]:
        """Inner step for each of ``num_tasks`` tasks of a batch (contiguous, equal rows per task).

        Returns task key -> detached adapted parameters, and the batch's TaskData (for the outer step).
        """
        data = batch_task_data(batch, num_tasks, self.device, self.config)
        meta = {k: v.detach() for k, v in self.policy.named_parameters()}
        with torch.no_grad():
            adapted = adapt(self.policy, expand(meta, num_tasks), data, self.config.inner_lr)
        keys = batch.task_keys.reshape(num_tasks, -1)[:, 0].tolist()
        return {k: {n: v[i] for n, v in adapted.items()} for i, k in enumerate(keys)}, data

    def train_step(self, ctx: TrainContext) -> dict[str, float]:
        """M = ``meta_batch_size`` distinct tasks x R = ``rollouts_per_task`` single-episode rollouts with
        theta, one inner step per task, R post-update rollouts per task, one ``trpo_step``: at most
        2 * M * R * H env steps. Returns the TRPO statistics, mean pre- and post-update returns and the mean
        action std. Raises ``ValueError`` if the sampled tasks are not distinct (meta_batch_size above the
        number of training tasks). See MetaLearner.train_step."""
        cfg = self.config
        tasks = ctx.sample_tasks(cfg.meta_batch_size)
        if len({t.task_id for t in tasks}) != len(tasks):
            raise ValueError("meta_batch_size exceeds the number of training tasks (tasks must be distinct)")
        rows = [t for t in tasks for _ in range(cfg.rollouts_per_task)]
        pre_batch = ctx.sample_trials(self.make_agent(), rows, episodes=1)
        adapted, pre = self.adapt_tasks(pre_batch, len(tasks))
        post_batch = ctx.sample_trials(self.make_agent(adapted=adapted), rows, episodes=1)
        post = batch_task_data(post_batch, len(tasks), self.device, cfg)
        objective = MetaObjective(self.policy, pre, post, cfg)
        theta, stats = trpo_step(objective, cfg)
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta, self.policy.parameters())
        self.iteration += 1
        return stats | {
            "pre_return": float(pre.returns.mean()),
            "post_return": float(post.returns.mean()),
            "action_std": float(self.policy.head.log_std.detach().exp().mean()),
        }

    def state_dict(self) -> dict[str, Any]:
        """The policy's parameters, the iteration count and the config (not read back); TRPO keeps no
        optimizer state. See MetaLearner.state_dict."""
        return {
            "policy": self.policy.state_dict(),
            "iteration": self.iteration,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the policy and the iteration count from a ``state_dict``."""
        self.policy.load_state_dict(state["policy"])
        self.iteration = int(state["iteration"])


def few_shot_returns(
    learner: MAML, sampler: Any, tasks: list[Any], rollouts: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAML's own few-shot check (Finn et al. 2017, Fig. 2): per task, mean return of ``rollouts``
    single-episode rollouts with theta (pre-update) and with theta' after one inner step on them.

    ``sampler`` is a ``benchmark.sampler.TrialSampler``; ``tasks`` may be any split (keys are fresh).
    Returns (pre, post, post_mean), each (n_tasks,) mean undiscounted returns: ``post`` plays theta' with
    sampled actions (Finn's reading, as in ``cbfinn/maml_rl`` and ``tristandeleu/pytorch-maml-rl``, whose
    post-update rollouts are sampled), ``post_mean`` plays the same theta' with its mean action (how the
    benchmark protocol acts once no inner step follows), which separates the step's direction from the
    action noise. Leaves the learner unchanged.
    """
    rows = [t for t in tasks for _ in range(rollouts)]
    keys = np.repeat(-1 - np.arange(len(tasks)), rollouts)
    pre_batch = sampler.run(learner.make_agent(), rows, 1, seed=seed, task_keys=keys)
    adapted, _ = learner.adapt_tasks(pre_batch, len(tasks))
    post_batch = sampler.run(learner.make_agent(adapted=adapted), rows, 1, seed=seed + 1, task_keys=keys)
    mean_batch = sampler.run(
        learner.make_agent(adapted=adapted, mean_actions=True), rows, 1, seed=seed + 1, task_keys=keys
    )
    pre, post, post_mean = (
        b.episode_returns().reshape(len(tasks), rollouts).mean(1) for b in (pre_batch, post_batch, mean_batch)
    )
    return pre, post, post_mean
