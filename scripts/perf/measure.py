"""How the harness is measured. Every function takes one job (a dict from ``plan``) and returns
``count`` (what was counted: env steps, or gradient steps where the job says so), ``seconds`` (wall time
of the timed region only, ``profiling.tic``/``toc``) and ``notes``; some add fields ``report`` uses.

Only public API is used: suites' ``make_batch_env``, ``TrialSampler.run``, the method's ``profile``,
``Config``, ``make_agent`` and ``train_step`` (with a ``HarnessContext`` built as ``benchmark/runner.py``
builds it). Nothing is imported from inside ``algorithms``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from scripts.perf import profiling
from scripts.perf.profiling import tic, toc

Job = dict[str, Any]


def pick_tasks(suite: Any, n: int) -> list[Any]:
    """The first ``n`` training tasks (cycled): the same tasks for every row of a suite."""
    train = suite.tasks("train")
    return [train[i % len(train)] for i in range(n)]


def method_config(algo: str, suite: Any, profile: str, overrides: dict[str, str]) -> tuple[Any, Any, Any]:
    """(learner class, HarnessConfig, method config) at ``profile``, resolved as the CLI resolves them;
    overrides naming no field of this method are ignored (one override dict serves every method)."""
    from benchmark.config import resolve
    from benchmark.registry import load_algorithm

    cls = load_algorithm(algo)
    fields = set(cls.Config.__dataclass_fields__)
    own = {k: v for k, v in overrides.items() if k in fields}
    run_cfg, cfg = resolve(profile, suite.family, cls.Config, cls.profile(profile, suite.family), own)
    return cls, run_cfg, cfg


def update_threads(job: Job) -> int:
    """The intra-op threads a training row's update (and its peer's) runs with: the job's
    ``update_threads`` (``plan.measured_update_threads``), else ``torch_threads``."""
    return job.get("update_threads") or job["torch_threads"]


def ppo_work(rollout: int, minibatches: int, epochs: int) -> str:
    """The PPO work of one iteration, written identically for a method and its SB3 peer."""
    return f"rollout={rollout} minibatches={minibatches} epochs={epochs} updates={epochs * minibatches}"


def sac_work(layers: int, size: int, batch: int) -> str:
    """The SAC work of one gradient step, written identically for PEARL and its SB3 peer."""
    return f"nets={layers}x{size} batch={batch}"


# -- raw simulators --------------------------------------------------------------------------------
def flop_count(fn: Any) -> tuple[Any, float]:
    """(fn(), the floating-point operations of its torch matrix products, forward and backward).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` (mm, addmm, bmm, convolutions, attention; an
    element-wise op counts nothing, numpy nothing). Under the counter every torch op is intercepted, so
    ``fn`` runs slower there: call it outside a timed region.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, float(counter.get_total_flops())


def measure_gym_single(job: Job) -> dict[str, Any]:
    """``gymnasium.make(env_id)`` stepped with pre-drawn random actions on one core (auto reset)."""
    import gymnasium as gym
    import numpy as np

    env = gym.make(job["env_id"])
    rng = np.random.default_rng(0)
    n = job["steps"]
    actions = rng.uniform(env.action_space.low, env.action_space.high, (n, *env.action_space.shape))
    env.reset(seed=0)
    for a in actions[: min(n, 200)]:  # warm-up
        env.step(a)
    env.reset(seed=1)
    t0 = tic()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    dt = toc(t0)
    env.close()
    return {
        "count": n,
        "seconds": dt,
        "notes": "gymnasium.make (TimeLimit 1000, auto reset), actions pre-drawn",
    }


def _raw_episodes(env: Any, horizon: int, batch: int, episodes: int, seed: int) -> int:
    """Random-action episodes through a batch env exactly as the sampler drives it; valid env steps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    steps = 0
    for _ in range(episodes):
        env.reset(rng.integers(0, 2**31 - 1, size=batch))
        active = np.ones(batch, bool)
        for _ in range(horizon):
            action = rng.uniform(-1.0, 1.0, (batch, env.act_dim)).astype(np.float32)
            res = env.step(action, active)
            steps += int(active.sum())
            active &= ~res.terminated
    return steps


def measure_raw(job: Job) -> dict[str, Any]:
    """The suite's batch env (``make_batch_env(batch, workers)`` as the sampler builds it), random actions."""
    from benchmark.registry import load_suite

    suite = load_suite(job["suite"])
    batch = job["batch"]
    env = suite.make_batch_env(batch, job["workers"])
    try:
        env.set_tasks(pick_tasks(suite, batch))
        episodes = max(1, -(-job["min_steps"] // suite.horizon)) if job.get("min_steps") else job["episodes"]
        _raw_episodes(env, suite.horizon, batch, job["warmup_episodes"], seed=0)
        t0 = tic()
        steps = _raw_episodes(env, suite.horizon, batch, episodes, seed=1)
        dt = toc(t0)
        workers = getattr(env, "num_workers", 1)
    finally:
        env.close()
    where = f"{workers} processes (this one + {workers - 1} worker)" if workers > 1 else "in-process"
    valid = steps / (episodes * suite.horizon * batch)
    notes = f"{episodes} episodes x H={suite.horizon}, {where}; {valid:.0%} of row-steps valid"
    return {"count": steps, "seconds": dt, "notes": notes}


# -- the sampler -----------------------------------------------------------------------------------
def _replay(env: Any, trial: Any, seed: int) -> tuple[int, Any]:
    """A sampler trial's clipped actions through a raw batch env, reset from the trial's seeds:
    (valid steps, rewards (B, T) float32, 0 where a row was not live).

    The same physics as the trial (same tasks, reset seeds and actions; rows masked once terminated, as
    the sampler masks them) without the policy, so a terminating suite keeps as many rows alive as the
    trial did. ``trial.valid.sum()`` and ``trial.rewards`` are what to expect.
    """
    import numpy as np

    from benchmark.sampler import reset_seeds

    batch, horizon = trial.env_actions.shape[0], trial.horizon
    episodes = trial.env_actions.shape[1] // horizon
    rewards = np.zeros(trial.env_actions.shape[:2], np.float32)
    steps = 0
    for k, seeds in enumerate(reset_seeds(seed, episodes, batch)):
        env.reset(seeds)
        active = np.ones(batch, bool)
        for h in range(horizon):
            res = env.step(trial.env_actions[:, k * horizon + h], active.copy())
            rewards[:, k * horizon + h] = np.where(active, res.reward, 0.0)
            steps += int(active.sum())
            active &= ~res.terminated
    return steps, rewards


class _PolicyClock:
    """Wall time spent inside the agents' ``act`` and ``observe`` (all clones together), and the calls."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0


def _timed(agent: Any, clock: _PolicyClock) -> Any:
    """``agent`` with its ``act`` / ``observe`` timed into ``clock`` (two clock reads per call, ~0.1 us);
    clones (one per group of rows) share the clock."""
    from metarl_protocol import AdaptiveAgent

    class Timed(AdaptiveAgent):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def new_trial(self, task_keys: Any) -> None:
            self.inner.new_trial(task_keys)

        def act(self, obs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return self.inner.act(obs)
            finally:
                clock.seconds += time.perf_counter() - t0
                clock.calls += 1

        def observe(self, transition: Any) -> None:
            t0 = time.perf_counter()
            try:
                self.inner.observe(transition)
            finally:
                clock.seconds += time.perf_counter() - t0

        def end_episode(self) -> None:
            self.inner.end_episode()

        def clone(self) -> Any:
            return Timed(self.inner.clone())

    return Timed(agent)


def null_agent(act_dim: int) -> Any:
    """The ``null`` sampler row's agent: uniform random actions in [-1, 1] from numpy, no state, nothing
    learned: what the sampling loop costs with a policy that costs nothing."""
    import numpy as np

    from metarl_protocol import AdaptiveAgent

    class Null(AdaptiveAgent):
        def __init__(self) -> None:
            self.rng = np.random.default_rng(0)

        def new_trial(self, task_keys: Any) -> None:
            pass

        def act(self, obs: Any) -> Any:
            return self.rng.uniform(-1.0, 1.0, (len(obs), act_dim)).astype(np.float32), {}

        def observe(self, transition: Any) -> None:
            pass

    return Null()


def measure_sampler(job: Job) -> dict[str, Any]:
    """``TrialSampler.run`` with the method's freshly initialised training agent (stochastic actions; algo
    ``null``: ``null_agent``), paired with the raw batch env replaying the same trials in this same process.

    The machine's speed drifts (a shared host: the raw row alone moved 18k-32k steps/s between three runs
    a minute apart), so a ratio of two rows timed in different processes minutes apart measures the drift
    as much as the sampler. Here each of ``rounds`` rounds times one trial of ``episodes`` episodes of the
    sampler and a raw batch env of the same suite, batch and process layout (its own worker and load
    balance) replaying a sampler trial's actions from its reset seeds (``_replay``), back to back;
    ``ratio`` is the median of the rounds' sampler / raw rate ratios. Each round times the sampler's trial,
    then its replay (a replay must follow its trial; a replay that does not reproduce the trial's valid
    steps and rewards exactly raises). Replaying the policy's own actions keeps the physics equal: on a
    suite that terminates (ant-dir) random actions keep a different share of rows alive than a given
    policy does (51% of row-steps valid with random actions, 28-66% with our five fresh agents), and the
    cost of a step batch does not scale with its live rows alone. ``count`` / ``seconds`` are the sampler's
    over all rounds. The notes also give the agents' own time (``act`` + ``observe``, timed around each
    call) per ``act`` call and as a share of the sampler's time: what the policy costs against the loop.
    """
    import statistics

    import numpy as np
    import torch

    from benchmark.registry import load_suite
    from benchmark.sampler import TrialSampler

    suite = load_suite(job["suite"])
    torch.manual_seed(0)
    if job["algo"] == "null":
        agent = null_agent(suite.spec().act_dim)
    else:
        cls, _run, cfg = method_config(job["algo"], suite, job["profile"], job["overrides"])
        agent = cls(suite.spec(), cfg, torch.device("cpu")).make_agent()
    clock = _PolicyClock()
    agent = _timed(agent, clock)
    batch, episodes, rounds = job["batch"], job["episodes"], job.get("rounds", 1)
    sampler = TrialSampler(suite, num_workers=job["workers"])
    raw: Any = None
    count, seconds, raw_seconds = 0, 0.0, 0.0  # valid env steps (the same on both sides), times
    ratios, valid = [], []
    try:
        raw = suite.make_batch_env(batch, job["workers"])
        tasks = pick_tasks(suite, batch)
        raw.set_tasks(tasks)
        warm = sampler.run(agent, tasks, job["warmup_episodes"], seed=0)
        _replay(raw, warm, seed=0)
        clock.seconds, clock.calls = 0.0, 0
        for r in range(rounds):
            t0 = tic()
            trial = sampler.run(agent, tasks, episodes, seed=1 + r)
            dt = toc(t0)
            t0 = tic()
            steps, rewards = _replay(raw, trial, seed=1 + r)
            raw_dt = toc(t0)
            if steps != trial.env_steps or not np.array_equal(rewards, trial.rewards):
                raise RuntimeError(
                    f"the raw replay of round {r} diverged from the sampler's trial ({steps} against "
                    f"{trial.env_steps} valid steps, rewards equal: {np.array_equal(rewards, trial.rewards)})"
                )
            valid.append(float(trial.valid.mean()))
            count, seconds, raw_seconds = count + steps, seconds + dt, raw_seconds + raw_dt
            ratios.append(raw_dt / dt)  # the same steps on both sides: the rate ratio is the time ratio
    finally:
        sampler.close()
        if raw is not None:
            raw.close()
    agent_name = "null agent" if job["algo"] == "null" else f"{job['profile']} profile agent"
    rounds_read = " ".join(f"{x:.2f}" for x in ratios)
    notes = [
        f"trials of {episodes} episodes, {agent_name}",
        f"{statistics.mean(valid):.0%} of row-steps valid",
        f"ratio: median over {rounds} rounds paired with the raw batch env replaying the trials in this "
        f"process ({rounds_read}; raw there {count / raw_seconds:.0f} steps/s; every replay equal to its "
        "trial in valid steps and rewards)",
        f"policy (act + observe) {1e6 * clock.seconds / max(clock.calls, 1):.0f} us per act call "
        f"({clock.calls / (rounds * episodes * suite.horizon):.0f} per loop step), "
        f"{clock.seconds / seconds:.0%} of the sampler's time",
    ]
    # the loop runs every row to the horizon (terminated rows are masked, the policy still acts): on
    # terminating suites the rate counts only the valid steps, as the replay's does
    return {"count": count, "seconds": seconds, "ratio": statistics.median(ratios), "notes": "; ".join(notes)}


# -- training ----------------------------------------------------------------------------------------
def eval_steps(suite: Any, run_cfg: Any) -> int:
    """Env steps of the evaluations a run of ``run_cfg.budget_steps`` makes (periodic marks + final)."""
    marks = math.ceil(run_cfg.budget_steps / run_cfg.eval_every_steps)
    trial = suite.eval_episodes * suite.horizon
    final = 0
    for split in ("test", "ood"):
        try:
            final += len(suite.tasks(split))
        except Exception:  # noqa: BLE001 - a suite without this split
            pass
    return (marks * run_cfg.eval_tasks + final) * trial


def measure_train(job: Job) -> dict[str, Any]:
    """``learner.train_step(ctx)`` for ``iterations`` after ``warmup_iterations``; wall time split into
    sampling (``ctx.sample_trials``) and the rest (the update). With ``breakdown``, one more iteration
    runs under cProfile and is split into phases (``profiling.maml_breakdown``). With ``paired_peer`` (a
    peer job), the peer does one iteration's work after each timed iteration (``peers.PeerRounds``), and
    ``ratio`` is the median of the rounds' rate ratios: the host's drift between rows stays out of it."""
    import statistics

    import numpy as np
    import torch

    from benchmark.registry import load_suite
    from benchmark.runner import HarnessContext, intra_op_threads
    from benchmark.sampler import TrialSampler

    class TimedContext(HarnessContext):
        sampling = 0.0

        def sample_trials(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return super().sample_trials(*args, **kwargs)
            finally:
                self.sampling += time.perf_counter() - t0

    suite = load_suite(job["suite"])
    cls, run_cfg, cfg = method_config(job["algo"], suite, job["profile"], job["overrides"])
    workers = 1 if suite.family == "point-nav" else job["workers"]
    # threads as a run uses them: acting at torch_threads, train_step outside its sampling at update_threads
    threads = update_threads(job)
    torch.manual_seed(0)
    learner = cls(suite.spec(), cfg, torch.device("cpu"))
    sampler = TrialSampler(suite, num_workers=workers)
    ctx = TimedContext(
        suite, sampler, np.random.default_rng(0), torch.device("cpu"), None, job["torch_threads"]
    )

    def train_step() -> dict[str, float]:
        with intra_op_threads(threads):
            return learner.train_step(ctx)

    phases, peer = None, None
    try:
        first = None
        for _ in range(job["warmup_iterations"]):  # starts env workers, optimiser state, initial data
            first = train_step()
        unpaired = ""
        if job.get("paired_peer"):
            from scripts.perf.peers import PeerRounds

            try:
                peer = PeerRounds(job["paired_peer"])
            except ModuleNotFoundError as exc:  # the perf extra (the library peers) is not installed
                unpaired = f"not paired with {job['paired_peer']['id']}: {exc}"
        steps0, ctx.sampling = ctx.env_steps, 0.0
        grad0 = (first or {}).get("grad_steps", 0.0)
        stats: list[dict[str, float]] = []
        dt, ratios, peer_count, peer_seconds = 0.0, [], 0.0, 0.0
        for _ in range(job["iterations"]):
            steps_i, sampling_i = ctx.env_steps, ctx.sampling
            grads_i = stats[-1].get("grad_steps", 0.0) if stats else grad0
            t0 = tic()
            stats.append(train_step())
            dt_i = toc(t0)
            dt += dt_i
            if peer is not None:  # the same work of the peer, right after, in this process
                if "grad_steps" in stats[-1]:  # off-policy: gradient steps per second outside sampling
                    own = (stats[-1]["grad_steps"] - grads_i) / (dt_i - (ctx.sampling - sampling_i))
                else:
                    own = (ctx.env_steps - steps_i) / dt_i
                count_i, seconds_i = peer.round(profiled=False)  # not in a --profile of this row
                peer_count, peer_seconds = peer_count + count_i, peer_seconds + seconds_i
                ratios.append(own / (count_i / seconds_i))
        sampling, steps = ctx.sampling, ctx.env_steps - steps0
        if job.get("breakdown"):
            s0 = time.perf_counter()
            _, pst = profiling.profiled(train_step)
            phases = profiling.maml_breakdown(pst, time.perf_counter() - s0)
        flops = None
        if "grad_steps" in stats[-1] and job.get("kind") == "train":  # one more iteration, untimed, counted
            before = stats[-1]["grad_steps"]
            counted, total = flop_count(train_step)
            flops = total / max(counted["grad_steps"] - before, 1)
    finally:
        sampler.close()
        if peer is not None:
            peer.close()
    out: dict[str, Any] = {
        "env_steps": steps,
        "sampling_s": sampling,
        "update_s": dt - sampling,
        "iterations": job["iterations"],
        "budget_steps": run_cfg.budget_steps,
        "eval_steps": eval_steps(suite, run_cfg),
        "phases": phases,
    }
    share = sampling / dt if dt > 0 else 0.0
    notes = [
        f"{job['iterations']} it after {job['warmup_iterations']} warm-up",
        f"{steps // job['iterations']} env steps per it",
        f"sampling {share:.0%} / update {1 - share:.0%} of wall time",
    ]
    if "grad_steps" in stats[-1]:  # an off-policy method: its training rate is gradient steps per second
        grads = stats[-1]["grad_steps"] - grad0
        out |= {"count": grads, "seconds": dt - sampling, "unit": "grad steps/s"}
        out["work"] = sac_work(cfg.net_layers, cfg.net_size, cfg.meta_batch * cfg.batch_size)
        out["flops_per_grad_step"] = flops
        notes.append(f"{grads:g} gradient steps in {dt - sampling:.2f} s outside sampling")
    else:
        out |= {"count": steps, "seconds": dt}
        updates = float(np.mean([s.get("updates", float("nan")) for s in stats]))
        if hasattr(cfg, "epochs") and updates == updates:
            out["work"] = ppo_work(steps // job["iterations"], round(updates / cfg.epochs), cfg.epochs)
    sizes = ", ".join(
        f"{k}={getattr(cfg, k)}"
        for k in (
            "meta_batch_size",
            "rollouts_per_task",
            "num_tasks_sample",
            "grad_steps_per_iter",
            "hidden_size",
            "hidden_sizes",
            "d_model",
            "n_layers",
            "memory",
            "window",
            "net_size",
        )
        if hasattr(cfg, k)
    )
    notes += [sizes, f"env workers={workers}", f"update threads={threads}", *([unpaired] if unpaired else [])]
    if ratios:
        out["ratio"] = statistics.median(ratios)
        notes.append(
            f"ratio: median over {len(ratios)} rounds, each one iteration then the same work of "
            f"{job['paired_peer']['id']} in this process ({' '.join(f'{r:.2f}' for r in ratios)}; the "
            f"peer there {peer_count / peer_seconds:.0f} {out.get('unit', 'env steps/s')}; memory peak "
            "includes it)"
        )
    out["notes"] = "; ".join(notes)
    return out


def _sb3(job: Job) -> dict[str, Any]:
    from scripts.perf import peers

    return {"sb3_ppo": peers.measure_sb3_ppo, "sb3_sac": peers.measure_sb3_sac}[job["op"]](job)


MEASURES: dict[str, Callable[[Job], dict[str, Any]]] = {
    "gym_single": measure_gym_single,
    "raw": measure_raw,
    "sampler": measure_sampler,
    "train": measure_train,
    "sb3_ppo": _sb3,
    "sb3_sac": _sb3,
}
