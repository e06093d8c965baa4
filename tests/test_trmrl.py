"""TrMRL: T-Fixup scales, causal / windowed attention, cached rollout == batched re-encode, stability."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from algorithms.common.trial_inputs import trial_features
from algorithms.trmrl import Band, TrMRL, TrMRLConfig, TrMRLNetwork, band_mask
from benchmark.runner import HarnessContext
from benchmark.sampler import TrialSampler
from benchmark.suites.point_nav import PointNav
from metarl_protocol import SuiteSpec
from tests.conftest import assert_acting_paths_agree, final_test_normalized, rollout_with_acting_path
from tests.test_sampler import FallingSuite

POINT = PointNav().spec()
SMALL = {"d_model": 32, "n_heads": 4, "n_layers": 3, "d_ff": 64}


def test_tfixup_initial_scales():
    L, d, ff = 4, 128, 512
    net = TrMRLNetwork(
        SuiteSpec(20, 6, 200, 2, 6, (5,), "locomotion"), TrMRLConfig(n_layers=L, d_model=d, d_ff=ff)
    )
    s = 0.67 * L**-0.25
    xavier = lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))  # std of Xavier-uniform

    def close(w: torch.Tensor, expected: float) -> None:
        assert abs(w.std().item() / expected - 1) < 0.05, (w.std().item(), expected)

    close(net.embed.weight, d**-0.5 * (9 * L) ** -0.25)  # N(0, std d^-1/2) * (9L)^-1/4
    for layer in net.layers:
        close(layer.ff1.weight, s * xavier(d, ff))
        close(layer.ff2.weight, s * xavier(ff, d))
        close(layer.attn.out.weight, s * xavier(d, d))
        q, k, v = layer.attn.qkv.weight.chunk(3, dim=0)
        for w in (q, k, v):  # stacked (3d, d) Xavier * s * sqrt(2) = s * d^-1/2
            close(w, s * math.sqrt(2) * xavier(d, 3 * d))
            close(w, s * d**-0.5)
        assert isinstance(layer.norm1, torch.nn.Identity)
    # the ablation: layer norm, no T-Fixup scaling
    plain = TrMRLNetwork(POINT, TrMRLConfig(tfixup=False, n_layers=L, d_model=d, d_ff=ff))
    assert isinstance(plain.layers[0].norm1, torch.nn.LayerNorm)
    close(plain.layers[0].ff1.weight, xavier(d, ff))


def _perturb_after(net: TrMRLNetwork, feats: torch.Tensor, t: int) -> torch.Tensor:
    """Memory difference at every step when inputs at steps >= t are changed."""
    other = feats.clone()
    other[:, t:] += torch.randn_like(other[:, t:])
    with torch.no_grad():
        return (net.encode(feats) - net.encode(other)).abs().amax(dim=(0, 2))


def test_encoder_is_causal_and_windowed():
    feats = torch.randn(3, 200, 6)
    trial = TrMRLNetwork(POINT, TrMRLConfig(memory="trial", window=0, **SMALL))
    diff = _perturb_after(trial, feats, 130)
    assert diff[:130].max() == 0 and diff[130:].min() > 0
    # episode mode: steps of episode 2 (100..199) never see episode 1; window N limits the past per layer
    N, L = 5, SMALL["n_layers"]
    ep = TrMRLNetwork(POINT, TrMRLConfig(memory="episode", window=N, **SMALL))
    other = feats.clone()
    other[:, :100] += 1.0  # change all of episode 1
    with torch.no_grad():
        assert torch.equal(ep.encode(feats)[:, 100:], ep.encode(other)[:, 100:])
    # one changed step at t reaches t .. t + L(N-1) and nothing else (receptive field of L layers)
    other = feats.clone()
    other[:, 40] += 1.0
    with torch.no_grad():
        diff = (ep.encode(feats) - ep.encode(other)).abs().amax(dim=(0, 2))
    reach = 40 + L * (N - 1)
    assert diff[:40].max() == 0 and diff[40 : reach + 1].min() > 0 and diff[reach + 1 :].max() == 0
    one_layer = TrMRLNetwork(POINT, TrMRLConfig(memory="episode", window=N, **(SMALL | {"n_layers": 1})))
    with torch.no_grad():
        diff = (one_layer.encode(feats) - one_layer.encode(other)).abs().amax(dim=(0, 2))
    assert diff[40:45].min() > 0 and diff[45:].max() == 0  # exactly the last N working memories


@pytest.mark.parametrize(
    "memory,window,suite",
    [("episode", 5, "point"), ("trial", 0, "point"), ("trial", 30, "point"), ("episode", 3, "falling"),
     ("trial", 0, "falling")],
)  # fmt: skip
def test_cached_rollout_equals_batched_reencode(memory, window, suite):
    s = PointNav() if suite == "point" else FallingSuite()
    spec = s.spec()
    cfg = TrMRLConfig(memory=memory, window=window, value_fn="shared", **SMALL)
    learner = TrMRL(spec, cfg, torch.device("cpu"))
    # 3 episodes: longer than a training trial, so the trial-mode ring buffer wraps around
    batch = TrialSampler(s).run(learner.make_agent(), s.tasks("train")[:5], episodes=3, seed=1)
    if suite == "falling":
        assert not batch.valid.all()  # terminated rows are kept stepping (valid False) on both paths
    feats = trial_features(batch)
    with torch.no_grad():
        dist, value = learner.net.heads(learner.net.encode(feats), feats)
    log_prob = dist.log_prob(torch.as_tensor(batch.actions)).sum(-1)
    assert torch.allclose(value, torch.as_tensor(batch.extras["value"]), atol=1e-5)
    assert torch.allclose(log_prob, torch.as_tensor(batch.extras["log_prob"]), atol=1e-4)


@pytest.mark.parametrize("normalize_rewards", [False, True])
def test_state_dict_loads_weights_only_and_resumes_exactly(normalize_rewards):
    suite = PointNav()
    cfg = TrMRLConfig(
        meta_batch_size=4, epochs=1, lr_decay_start=0, lr_decay_end=2, normalize_rewards=normalize_rewards,
        **SMALL,
    )  # fmt: skip

    def ctx(seed):
        return HarnessContext(suite, TrialSampler(suite), np.random.default_rng(seed), torch.device("cpu"))

    a = TrMRL(POINT, cfg, torch.device("cpu"))
    a.train_step(ctx(0))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = TrMRL(POINT, cfg, torch.device("cpu"))
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"] < cfg.policy_lr
    torch.manual_seed(5)
    sa = a.train_step(ctx(1))
    torch.manual_seed(5)
    sb = b.train_step(ctx(1))
    assert sa == sb
    assert torch.equal(a.return_norm.var, b.return_norm.var)  # the reward scale resumed with the run


def test_100_iterations_without_layer_norm_stay_finite():
    suite = PointNav()
    suite.horizon = 25  # short episodes keep 100 iterations fast
    spec = suite.spec()
    cfg = TrMRLConfig(memory="trial", window=0, d_model=16, n_heads=2, n_layers=4, d_ff=32,
                      meta_batch_size=4, epochs=2, minibatch_steps=100, policy_lr=1e-3, value_lr=1e-3,
                      value_fn="shared")  # fmt: skip
    learner = TrMRL(spec, cfg, torch.device("cpu"))
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    for _ in range(100):
        stats = learner.train_step(ctx)
        assert all(np.isfinite(v) for v in stats.values()), stats
    assert all(torch.isfinite(p).all() for p in learner.net.parameters())


@pytest.mark.slow
def test_learns_point_nav(tmp_path):
    from benchmark.cli import main

    args = ["run", "--algo", "trmrl", "--suite", "point-nav", "--out", str(tmp_path), "--no-progress",
            "--set", "budget_steps=1920000", "--set", "meta_batch_size=32",  # half the quick budget
            "--set", "eval_every_steps=10000000", "--set", "eval_tasks=5"]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "point-nav" / "trmrl" / "seed0"
    normalized = final_test_normalized(run)
    assert normalized.iloc[-1] > 0.6, normalized
    assert normalized[1] > normalized[0], normalized


def test_observation_normalisation_keeps_rollout_and_reencode_equal():
    suite = PointNav()
    cfg = TrMRLConfig(
        memory="trial", window=20, normalize_observations=True, meta_batch_size=4, epochs=1, **SMALL
    )
    learner = TrMRL(POINT, cfg, torch.device("cpu"))
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    learner.train_step(ctx)  # statistics are updated after the PPO update
    assert float(learner.net.obs_norm.count) == 4 * 200
    batch = TrialSampler(suite).run(learner.make_agent(), suite.tasks("train")[:3], episodes=2, seed=2)
    feats = learner.net.normalize(trial_features(batch))
    with torch.no_grad():
        dist, value = learner.net.heads(learner.net.encode(feats), feats)
    assert torch.allclose(value, torch.as_tensor(batch.extras["value"]), atol=1e-5)
    log_prob = dist.log_prob(torch.as_tensor(batch.actions)).sum(-1)
    assert torch.allclose(log_prob, torch.as_tensor(batch.extras["log_prob"]), atol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [{"memory": "episode", "window": 5, "value_fn": "step"},
     {"memory": "trial", "window": 30, "value_fn": "shared", "normalize_observations": True},
     {"memory": "trial", "window": 0, "value_fn": "detached", "tfixup": False}],
)  # fmt: skip
@pytest.mark.parametrize("evaluation", [False, True])
def test_numpy_acting_equals_torch_acting(overrides, evaluation):
    """The numpy step (CPU default) draws the same noise and matches the torch modules to float rounding."""
    suite = PointNav()
    out = {}
    for numpy_acting in (True, False):
        cfg = TrMRLConfig(numpy_acting=numpy_acting, meta_batch_size=4, epochs=1, **SMALL, **overrides)
        torch.manual_seed(0)
        learner = TrMRL(POINT, cfg, torch.device("cpu"))
        if cfg.normalize_observations:  # non-trivial statistics, as after training
            learner.net.obs_norm.update(torch.randn(500, POINT.obs_dim) * 2.0 + 0.5)
        agent = learner.make_agent(evaluation)
        out[numpy_acting] = rollout_with_acting_path(agent, suite, tasks=3, episodes=3, seed=4)
        assert (agent.fast is not None) == numpy_acting
    assert_acting_paths_agree(out[True], out[False])


@pytest.mark.parametrize(
    "length,window", [(200, 5), (203, 7), (200, 25), (400, 100), (40, 3), (64, 16), (65, 1)]
)
def test_band_attention_equals_full_masked_attention(length, window):
    """Chunked (narrow band) or full layout: the same outputs and gradients as the (T, T) band mask."""
    band = Band(length, window)
    assert band.chunk == (max(16, window) if 4 * max(16, window) <= length else 0)
    assert Band(length, window, chunked=False).chunk == 0
    q, k, v = (torch.randn(3, 2, length, 4, requires_grad=True) for _ in range(3))
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(length, window))
    out = band.attend(q, k, v)
    assert out.shape == full.shape
    assert torch.allclose(out, full, atol=1e-5)
    weights = torch.randn_like(full)
    for a, b in zip(
        torch.autograd.grad((full * weights).sum(), (q, k, v)),
        torch.autograd.grad((out * weights).sum(), (q, k, v)),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-5)


def test_bfloat16_update_runs_the_encoder_in_bf16_and_the_heads_in_float32():
    """update_precision="bfloat16": the encoder's linear layers compute in bf16 during the update (so
    autocast is really on), the heads get float32 inputs, the parameters stay float32, and the first
    minibatch's log-probabilities match the float32 acting's to bf16 rounding (approx KL near 0)."""
    suite = PointNav()
    cfg = TrMRLConfig(meta_batch_size=4, epochs=1, minibatch_steps=10**6, **SMALL)
    for precision in ("float32", "bfloat16"):
        seen: dict[str, set] = {"encoder": set(), "heads": set()}
        encoder_dtypes, head_dtypes = seen["encoder"], seen["heads"]
        torch.manual_seed(0)
        learner = TrMRL(POINT, replace(cfg, update_precision=precision), torch.device("cpu"))
        net = learner.net
        net.layers[0].ff1.register_forward_hook(lambda m, i, o, s=encoder_dtypes: s.add(o.dtype))
        net.policy_body.register_forward_pre_hook(lambda m, i, s=head_dtypes: s.add(i[0].dtype))
        ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
        stats = learner.train_step(ctx)
        want = torch.bfloat16 if precision == "bfloat16" else torch.float32
        assert seen["encoder"] == {want}, (precision, seen)  # acting goes through numpy: no float32 call
        assert seen["heads"] == {torch.float32}, (precision, seen)
        assert all(p.dtype == torch.float32 for p in net.parameters())
        assert 0 <= stats["approx_kl"] < 1e-3, (precision, stats)


def test_fused_optimizer_setting_picks_the_adamw_implementation_also_on_resume():
    """fused_optimizer=true (default): one fused AdamW kernel; false: torch's default (the per-tensor loop
    on the CPU, as earlier runs). A checkpoint written under either setting resumes under the learner's."""
    fused = TrMRL(POINT, TrMRLConfig(**SMALL), torch.device("cpu"))
    loop = TrMRL(POINT, TrMRLConfig(fused_optimizer=False, **SMALL), torch.device("cpu"))
    assert all(g["fused"] for g in fused.optimizer.param_groups)
    assert not any(g["fused"] or g["foreach"] for g in loop.optimizer.param_groups)
    suite = PointNav()
    ctx = HarnessContext(suite, TrialSampler(suite), np.random.default_rng(0), torch.device("cpu"))
    loop.train_step(ctx)  # optimizer state to carry over
    resumed = TrMRL(POINT, TrMRLConfig(**SMALL), torch.device("cpu"))
    resumed.load_state_dict(loop.state_dict())
    assert all(g["fused"] for g in resumed.optimizer.param_groups)
    stats = resumed.train_step(ctx)  # the loop's state drives the fused kernel
    assert all(np.isfinite(v) for v in stats.values())
    back = TrMRL(POINT, TrMRLConfig(fused_optimizer=False, **SMALL), torch.device("cpu"))
    back.load_state_dict(resumed.state_dict())
    assert not any(g["fused"] or g["foreach"] for g in back.optimizer.param_groups)
