import numpy as np
import pytest
import torch
from torch import nn

from algorithms.common.nets import GaussianHead, RunningNorm, gru_step, mlp


def test_running_norm_matches_numpy_over_several_updates():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 100, 37)]
    norm = RunningNorm(4)
    x0 = torch.ones(2, 4)
    assert torch.equal(norm(x0), x0), "identity before any statistics"
    for c in chunks:
        norm.update(torch.tensor(c, dtype=torch.float32))
    data = np.concatenate(chunks)
    assert np.allclose(norm.mean.numpy(), data.mean(0), atol=1e-4)
    assert np.allclose(norm.var.numpy(), data.var(0), atol=1e-3)
    out = norm(torch.tensor(data, dtype=torch.float32)).numpy()
    assert np.allclose(out.mean(0), 0, atol=1e-3) and np.allclose(out.std(0), 1, atol=1e-3)
    assert "mean" in norm.state_dict() and float(norm.state_dict()["count"]) == len(data)
    feats = torch.tensor(np.concatenate([data[:3], rng.normal(size=(3, 2))], 1), dtype=torch.float32)
    lead = norm.leading(feats)  # (3, 6): the first 4 entries normalised, the last 2 unchanged
    assert torch.equal(lead[:, :4], norm(feats[:, :4])) and torch.equal(lead[:, 4:], feats[:, 4:])


def test_gaussian_head_log_prob_and_entropy():
    head = GaussianHead(3, 2, init_std=0.5)
    dist = head(torch.zeros(1, 3))
    assert torch.allclose(dist.stddev, torch.full((1, 2), 0.5))
    a = torch.tensor([[0.1, -0.2]])
    expected = torch.distributions.Normal(dist.mean, dist.stddev).log_prob(a).sum(-1)
    assert torch.allclose(GaussianHead.log_prob(dist, a), expected)
    assert mlp(3, (8, 8), 2)(torch.zeros(5, 3)).shape == (5, 2)


def test_gaussian_head_act_equals_the_distribution_path():
    head = GaussianHead(8, 3, init_std=0.4)
    with torch.no_grad():
        head.log_std.copy_(torch.tensor([-0.5, 0.1, 0.7]))
    x = torch.randn(5, 8)
    with torch.inference_mode():
        torch.manual_seed(3)
        dist = head(x)
        ref = dist.sample()
        torch.manual_seed(3)
        action, log_prob = head.act(x, deterministic=False)
        assert torch.equal(action, ref)  # the same draw from the generator
        assert torch.allclose(log_prob, GaussianHead.log_prob(dist, ref), atol=1e-5)
        mean, mean_log_prob = head.act(x, deterministic=True)
        assert torch.equal(mean, dist.mean)
        assert torch.allclose(mean_log_prob, GaussianHead.log_prob(dist, dist.mean), atol=1e-5)


def test_gru_step_is_bitwise_one_step_of_the_module():
    """The acting path's single GRU step equals nn.GRU on a length-1 sequence exactly, several steps
    in a row (RL² and VariBAD agents carry this hidden state across a whole trial)."""
    torch.manual_seed(0)
    gru = nn.GRU(7, 16, batch_first=True)
    xs = torch.randn(5, 4, 7)
    h_module = torch.randn(1, 5, 16)
    h_step = h_module[0].clone()
    for t in range(4):
        _, h_module = gru(xs[:, t : t + 1], h_module)
        h_step = gru_step(gru, xs[:, t], h_step)
        assert torch.equal(h_step, h_module[0])
    with pytest.raises(ValueError, match="single-layer"):
        gru_step(nn.GRU(7, 16, num_layers=2), xs[:, 0], h_step)


def test_numpy_acting_blocks_equal_the_torch_modules():
    """numpy_acting's MLP, GRU cell, normaliser and Gaussian head against the modules they copy."""
    from algorithms.common import numpy_acting as na

    torch.manual_seed(0)
    x = torch.randn(7, 5)
    seq = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        assert np.allclose(na.MLP(seq)(x.numpy()), seq(x).numpy(), atol=1e-6)
        gru = nn.GRU(5, 6)
        h = torch.randn(7, 6)
        ref = torch.gru_cell(x, h, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
        assert np.allclose(na.GRUCell(gru)(x.numpy(), h.numpy()), ref.numpy(), atol=1e-6)
        norm = RunningNorm(3)
        assert np.array_equal(na.Normaliser(norm)(x.numpy()), x.numpy())  # no statistics yet: identity
        norm.update(torch.randn(100, 3) * 0.01 + 2.0)  # tiny variance: the clip at 10 is reached
        assert np.allclose(na.Normaliser(norm)(x.numpy()), norm.leading(x).numpy(), atol=1e-5)
        head = GaussianHead(5, 2, init_std=0.3)
        for deterministic in (False, True):
            torch.manual_seed(3)
            a_ref, lp_ref = head.act(x, deterministic)
            torch.manual_seed(3)
            a, lp = na.GaussianActing(head)(x.numpy(), deterministic)
            assert np.allclose(a, a_ref.numpy(), atol=1e-6) and np.allclose(lp, lp_ref.numpy(), atol=1e-5)
    with pytest.raises(TypeError, match="Linear, Tanh and ReLU"):
        na.MLP(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid()))
    with pytest.raises(ValueError, match="single-layer"):
        na.GRUCell(nn.GRU(2, 3, num_layers=2))
    assert na.usable("cpu", True) and not na.usable("cpu", False) and not na.usable("cuda", True)


def test_numpy_acting_sets_numpy_blas_threads_to_torch_threads():
    from threadpoolctl import threadpool_info

    from algorithms.common import numpy_acting as na

    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert na.usable("cpu", True)
            blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
            assert blas and all(p["num_threads"] == threads for p in blas), blas
    finally:
        torch.set_num_threads(before)
        na.usable("cpu", True)


@pytest.mark.parametrize(("batch", "steps", "hidden"), [(4, 400, 128), (3, 7, 5), (1, 1, 3)])
def test_numpy_gru_equals_nn_gru_outputs_and_every_gradient(batch, steps, hidden):
    from algorithms.common.numpy_gru import gru_over_trials

    torch.manual_seed(0)
    gru = nn.GRU(6, hidden, batch_first=True)
    with torch.no_grad():  # biases large enough that a swapped gate or bias shows
        for p in (gru.bias_ih_l0, gru.bias_hh_l0):
            p.normal_()
    x = torch.randn(batch, steps, 6, requires_grad=True)
    h0 = (0.5 * torch.randn(1, batch, hidden)).requires_grad_()
    weights = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    want, want_last = gru(x, h0)
    got, got_last = gru_over_trials(gru, x, h0)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_last.detach().numpy(), want_last.detach().numpy(), rtol=1e-5, atol=1e-6)
    g = torch.randn_like(want)
    grads_want = torch.autograd.grad((want * g).sum() + want_last.sum(), [x, h0, *weights])
    grads_got = torch.autograd.grad((got * g).sum() + got_last.sum(), [x, h0, *weights])
    for name, a, b in zip(["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"], grads_got, grads_want, strict=True):
        scale = b.abs().max().item()
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=2e-5 * max(scale, 1.0), err_msg=name)


def test_numpy_gru_passes_gradcheck_in_float64():
    from algorithms.common.numpy_gru import NumpyGRU

    torch.manual_seed(1)
    inputs = [torch.randn(2, 5, 3), torch.randn(2, 4), torch.randn(12, 3), torch.randn(12, 4),
              torch.randn(12), torch.randn(12)]  # fmt: skip
    inputs = [t.double().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(NumpyGRU.apply, inputs)


def test_numpy_gru_refuses_other_layouts():
    from algorithms.common.numpy_gru import gru_over_trials

    with pytest.raises(ValueError, match="batch-first"):
        gru_over_trials(nn.GRU(3, 4), torch.zeros(5, 2, 3))
    with pytest.raises(ValueError, match="single-layer"):
        gru_over_trials(nn.GRU(3, 4, num_layers=2, batch_first=True), torch.zeros(2, 5, 3))


def _adam_after_steps(impl: dict, device: str = "cpu", steps: int = 3):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4).to(device)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2, **impl)
    x = torch.randn(16, 8, device=device)
    for _ in range(steps):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    return layer, opt, x


def test_a_resumed_optimizer_takes_its_own_implementation_and_the_same_update():
    """A foreach Adam's state loaded into a fused one (and back): the loader's flags win, the saved state is
    untouched, and the next step equals the writer's own next step to float32 rounding."""
    from copy import deepcopy

    from algorithms.common.nets import load_optimizer_state

    writer, opt, x = _adam_after_steps({"foreach": True})
    saved = deepcopy(opt.state_dict())
    load_optimizer_state(torch.optim.Adam(deepcopy(writer).parameters(), fused=True), saved)
    assert [(g["fused"], g["foreach"]) for g in saved["param_groups"]] == [(None, True)]  # untouched
    for impl, flags in (({"fused": True}, (True, None)), ({"foreach": True}, (None, True))):
        reader = deepcopy(writer)
        ropt = torch.optim.Adam(reader.parameters(), lr=1e-2, **impl)
        load_optimizer_state(ropt, deepcopy(saved))  # a copy each: torch may share the state's tensors
        assert [(g["fused"], g["foreach"]) for g in ropt.param_groups] == [flags]
        ropt.zero_grad()
        reader(x).square().mean().backward()
        ropt.step()
        expected = deepcopy(writer)
        eopt = torch.optim.Adam(expected.parameters(), lr=1e-2, foreach=True)
        eopt.load_state_dict(deepcopy(saved))
        eopt.zero_grad()
        expected(x).square().mean().backward()
        eopt.step()
        for a, b in zip(reader.parameters(), expected.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cpu_loaded_foreach_state_resumes_a_fused_cuda_optimizer():
    from algorithms.common.nets import load_optimizer_state

    _, opt, _ = _adam_after_steps({"foreach": True})
    layer, fused, x = _adam_after_steps({"fused": True}, device="cuda", steps=0)
    load_optimizer_state(fused, opt.state_dict())  # the counters were written on the CPU
    layer(x).square().mean().backward()
    fused.step()  # a CPU step counter would be rejected by the fused CUDA kernel
    assert all(s["step"].device.type == "cuda" for s in fused.state.values())
