"""Throughput and memory benchmark of metarl-bench, in one run: ``python scripts/perf.py`` (``nox -s perf``).

What is measured (every number is env steps per wall-clock second unless stated, on this machine's cores):

* ``raw``     random actions through the simulators, no policy.
  - ``raw/HalfCheetah-v5/single``: ``gymnasium.make("HalfCheetah-v5")`` on one core, the absolute reference
    (its ratio is to 16.5k steps/s, measured on a quiet 2-core machine of the project: it tells how
    busy the machine was).
  - ``raw1/<suite>``: one task env of the suite in-process (``make_batch_env(1, num_workers=1)``);
    ratio to the gymnasium HalfCheetah row (suite wrapper / simulator cost per core).
  - ``raw/<suite>/B<n>``: the SAME batch env the sampler uses (``make_batch_env(n, num_workers=2)``),
    episodes of the suite's horizon, per-env termination handled as the sampler does; ratio to ``raw1``
    of the suite (parallel speed-up; 2.0 would be perfect on 2 cores). With ``num_workers=2`` the
    measuring process steps one group itself and one spawned worker the other, exactly as in sampling.
    ``raw/<suite>/B<n>/inproc``: the same batch stepped in-process (``num_workers=1``), to see what the
    worker process buys.
* ``sampler`` ``TrialSampler(suite, num_workers=2).run(agent, tasks, episodes, seed)`` with each registered
  method's freshly initialised agent at its quick-profile config; ratio to ``raw`` of the same suite and
  batch size (the share of the raw simulator rate that survives the policy and the sampler loop).
* ``train``   ``learner.train_step(ctx)`` with a ``HarnessContext`` built as ``benchmark/runner.py`` does, at
  the quick profile on halfcheetah-vel, after one warm-up iteration: env steps / wall time including the
  PPO update; ratio to the faster of the Stable-Baselines3 rows. The peer, ``train/sb3-ppo-<vec>``:
  SB3 PPO (MlpPolicy) on HalfCheetah-v5 with RL²'s rollout size (meta_batch_size x episodes x horizon),
  epochs and minibatch size (rollout / minibatches), 2 env copies in ``DummyVecEnv`` and in
  ``SubprocVecEnv``: both are measured and the faster one is the reference (reported in its notes).
* ``window``  TrMRL acting cost (act + observe per step, batch 20, trial memory, the locomotion-size model
  of the paper = the ``TrMRLConfig`` defaults) at memory windows 5, 50 and 400, once the window is full;
  ``us_per_step`` is per batched step; ratio = cost(N) / cost(5).

Every measurement runs in a fresh subprocess of this script (``--one JOB``), so its peak memory is its own:
``peak_rss_mb`` is the resident memory of that process plus all its children (env workers), summed and
sampled every 50 ms with psutil (RSS counts shared library pages once per process), floored by the
kernel's ``ru_maxrss`` of the process. Torch uses 1 intra-op thread in the measuring process by default
(``--torch-threads``); env workers never run torch.

Targets (PASS/FAIL beside the numbers): sampler >= 0.8x raw for RL² (GRU) and TrMRL (transformer) on
halfcheetah-vel; RL² and TrMRL training throughput >= SB3 PPO's; TrMRL cost(400) / cost(5) <= 80 (at most
linear in the window); peak memory of a quick locomotion training run <= 2 GB.

Options: ``--quick`` (tiny sizes, for the smoke test), ``--out results/perf.csv``, ``--only KIND [KIND ...]``
(rows another selected row is compared with are measured too), ``--no-isolate`` (all in this process:
fast, but peak memory then accumulates across rows).

This module keeps its top-level imports light: env workers are started with ``spawn`` and re-import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [
    "id",
    "kind",
    "name",
    "suite",
    "batch",
    "steps",
    "seconds",
    "steps_per_s",
    "us_per_step",
    "reference",
    "ratio",
    "target",
    "status",
    "peak_rss_mb",
    "notes",
]
KINDS = ("raw", "sampler", "train", "window")
DEFAULT_SUITES = ("point-nav", "halfcheetah-vel", "ant-dir", "ml1-reach")
TARGET_SUITE = "halfcheetah-vel"
TARGET_ALGOS = ("rl2", "trmrl")
SPEC_HALFCHEETAH = (
    16_500.0  # raw single-core HalfCheetah-v5 steps/s on a quiet 2-core machine (project reference)
)
WINDOWS = (5, 50, 400)
MEMORY_LIMIT_MB = 2048.0
RESULT_TAG = "PERF-RESULT "

Job = dict[str, Any]


# ==================================================================================================
# Peak memory of this process and its children
# ==================================================================================================
class PeakRSS:
    """Samples RSS(self) + RSS(every descendant) in a thread; ``peak_mb`` after the ``with`` block."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        total = 0
        try:
            total = self.proc.memory_info().rss
            for child in self.proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.Error:
            return
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def peak_mb(self) -> float:
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
        return max(self.peak, own) / 2**20


# ==================================================================================================
# Measurements (run inside the measuring process)
# ==================================================================================================
PROFILER: Any = None  # a cProfile.Profile while ``--profile`` runs: it sees only the timed regions


def _tic() -> float:
    """Start of a timed region (and of profiling, under ``--profile``)."""
    if PROFILER is not None:
        PROFILER.enable()
    return time.perf_counter()


def _toc(t0: float) -> float:
    """Seconds since ``_tic``; stops profiling."""
    dt = time.perf_counter() - t0
    if PROFILER is not None:
        PROFILER.disable()
    return dt


def _pick_tasks(suite: Any, n: int) -> list[Any]:
    train = suite.tasks("train")
    return [train[i % len(train)] for i in range(n)]


def _quick_config(algo: str, suite: Any, overrides: dict[str, str]) -> tuple[Any, Any, Any]:
    """(learner class, HarnessConfig, method config) at the quick profile, as the CLI resolves them."""
    from benchmark.config import resolve
    from benchmark.registry import load_algorithm

    cls = load_algorithm(algo)
    fields = set(cls.Config.__dataclass_fields__)
    run_cfg, cfg = resolve(
        "quick",
        suite.family,
        cls.Config,
        cls.profile("quick", suite.family),
        {k: v for k, v in overrides.items() if k in fields},
    )
    return cls, run_cfg, cfg


def _env_spec(suite: Any) -> Any:
    return suite.spec()


def measure_gym_single(job: Job) -> dict[str, Any]:
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
    t0 = _tic()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    dt = _toc(t0)
    env.close()
    return {
        "steps": n,
        "seconds": dt,
        "notes": "gymnasium.make (TimeLimit 1000, auto reset), actions pre-drawn",
    }


def _raw_episodes(env: Any, suite: Any, batch: int, episodes: int, seed: int) -> int:
    """Random-action episodes through a batch env exactly as the sampler drives it; valid env steps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    steps = 0
    for _ in range(episodes):
        obs = env.reset(rng.integers(0, 2**31 - 1, size=batch))
        active = np.ones(batch, bool)
        for _ in range(suite.horizon):
            action = rng.uniform(-1.0, 1.0, (batch, env.act_dim)).astype(np.float32)
            res = env.step(action, active)
            steps += int(active.sum())
            active &= ~res.terminated
        del obs
    return steps


def measure_raw(job: Job) -> dict[str, Any]:
    from benchmark.registry import load_suite

    suite = load_suite(job["suite"])
    batch, workers = job["batch"], job["workers"]
    env = suite.make_batch_env(batch, workers)
    try:
        env.set_tasks(_pick_tasks(suite, batch))
        if job.get("min_steps"):  # single env: episodes until enough steps for a stable rate
            episodes = max(1, -(-job["min_steps"] // suite.horizon))
        else:
            episodes = job["episodes"]
        _raw_episodes(env, suite, batch, job["warmup_episodes"], seed=0)
        t0 = _tic()
        steps = _raw_episodes(env, suite, batch, episodes, seed=1)
        dt = _toc(t0)
    finally:
        env.close()
    workers = getattr(env, "num_workers", 1) if suite.family != "point-nav" else 0
    where = (
        f"{workers} processes (groups {env.groups()}: this one + {workers - 1} worker)"
        if workers > 1
        else "in-process"
    )
    return {"steps": steps, "seconds": dt, "notes": f"episodes={episodes} x H={suite.horizon}, {where}"}


def measure_sampler(job: Job) -> dict[str, Any]:
    import torch

    from benchmark.registry import load_suite
    from benchmark.sampler import TrialSampler

    suite = load_suite(job["suite"])
    cls, _run, cfg = _quick_config(job["algo"], suite, job["overrides"])
    torch.manual_seed(0)
    learner = cls(_env_spec(suite), cfg, torch.device("cpu"))
    agent = learner.make_agent()
    batch = job["batch"]
    sampler = TrialSampler(suite, num_workers=job["workers"])
    try:
        sampler.env(batch)
        tasks = _pick_tasks(suite, batch)
        sampler.run(agent, tasks, job["warmup_episodes"], seed=0)
        t0 = _tic()
        out = sampler.run(agent, tasks, job["episodes"], seed=1)
        dt = _toc(t0)
    finally:
        sampler.close()
    return {
        "steps": out.env_steps,
        "seconds": dt,
        "notes": f"trials of {job['episodes']} episodes, quick profile, stochastic actions",
    }


def measure_train(job: Job) -> dict[str, Any]:
    import numpy as np
    import torch

    from benchmark.registry import load_suite
    from benchmark.runner import HarnessContext
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
    cls, run_cfg, cfg = _quick_config(job["algo"], suite, job["overrides"])
    workers = 1 if suite.family == "point-nav" else job["workers"]
    device = torch.device("cpu")
    torch.manual_seed(0)
    learner = cls(_env_spec(suite), cfg, device)
    sampler = TrialSampler(suite, num_workers=workers)
    ctx = TimedContext(suite, sampler, np.random.default_rng(0), device)
    try:
        learner.train_step(ctx)  # warm-up: starts the env workers, allocates optimiser state
        start, ctx.sampling = ctx.env_steps, 0.0
        updates = []
        t0 = _tic()
        for _ in range(job["iterations"]):
            updates.append(learner.train_step(ctx).get("updates", float("nan")))
        dt = _toc(t0)
    finally:
        sampler.close()
    share = ctx.sampling / dt if dt > 0 else 0.0
    sizes = ", ".join(
        f"{k}={getattr(cfg, k)}"
        for k in ("meta_batch_size", "epochs", "minibatches", "minibatch_steps", "hidden_size", "d_model")
        if hasattr(cfg, k)
    )
    return {
        "steps": ctx.env_steps - start,
        "seconds": dt,
        "batch": getattr(cfg, "meta_batch_size", None),
        "notes": f"{job['iterations']} it after 1 warm-up; {np.mean(updates):g} gradient updates per "
        f"iteration (KL early stop off: equal work with SB3); sampling {share:.0%} / update "
        f"{1 - share:.0%} of wall time; {sizes}; env workers={workers}",
    }


def measure_sb3(job: Job) -> dict[str, Any]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    vec_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[job["vec"]]
    n_envs, rollout = job["n_envs"], job["rollout"]
    env = make_vec_env(job["env_id"], n_envs=n_envs, seed=0, vec_env_cls=vec_cls)
    try:
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=rollout // n_envs,
            batch_size=job["minibatch"],
            n_epochs=job["epochs"],
            device="cpu",
            seed=0,
            verbose=0,
        )
        model.learn(rollout)  # warm-up iteration
        start = model.num_timesteps
        t0 = _tic()
        model.learn(job["iterations"] * rollout, reset_num_timesteps=False)
        dt = _toc(t0)
        steps = model.num_timesteps - start
    finally:
        env.close()
    return {
        "steps": steps,
        "seconds": dt,
        "notes": f"{job['iterations']} it after 1 warm-up; rollout {rollout} = {n_envs} envs x "
        f"{rollout // n_envs}, minibatch {job['minibatch']}, epochs {job['epochs']}, MlpPolicy (64, 64)",
    }


def measure_window(job: Job) -> dict[str, Any]:
    import dataclasses

    import numpy as np
    import torch

    from benchmark.registry import load_algorithm, load_suite
    from metarl_protocol import Transition

    suite = load_suite(job["suite"])
    cls = load_algorithm("trmrl")
    cfg = dataclasses.replace(cls.Config(), memory="trial", window=job["window"])
    torch.manual_seed(0)
    learner = cls(_env_spec(suite), cfg, torch.device("cpu"))
    agent = learner.make_agent()
    B, H = job["batch"], suite.horizon
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((B, suite.obs_dim)).astype(np.float32)
    reward = rng.standard_normal(B).astype(np.float32)
    no, yes = np.zeros(B, bool), np.ones(B, bool)

    def run(steps: int, start: int) -> None:
        for t in range(start, start + steps):
            h = t % H
            with torch.no_grad():  # as the sampler calls it
                action, _ = agent.act(obs)
            clipped = np.clip(action, -1.0, 1.0)
            done = yes if h == H - 1 else no
            with torch.no_grad():
                agent.observe(Transition(obs, clipped, reward, obs, no, done, yes))
            if h == H - 1:
                agent.end_episode()

    agent.new_trial(np.arange(B))
    warm = job["warmup_steps"]  # fills the window (count >= N) before timing
    run(warm, 0)
    t0 = _tic()
    run(job["steps"], warm)
    dt = _toc(t0)
    return {
        "steps": job["steps"] * B,
        "seconds": dt,
        "notes": f"memory=trial window={learner.net.window} (full), {cfg.n_layers} layers, "
        f"{cfg.n_heads} heads, d_model {cfg.d_model}, d_ff {cfg.d_ff}; no env; "
        "us_per_step = one act+observe for the batch",
    }


MEASURES: dict[str, Callable[[Job], dict[str, Any]]] = {
    "gym_single": measure_gym_single,
    "raw": measure_raw,
    "sampler": measure_sampler,
    "train": measure_train,
    "sb3": measure_sb3,
    "window": measure_window,
}


def run_one(job: Job) -> dict[str, Any]:
    """Measure one job in this process; returns the measured fields plus ``peak_rss_mb``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(job["torch_threads"])
    try:
        with PeakRSS() as mem:
            out = MEASURES[job["op"]](job)
    finally:
        torch.set_num_threads(threads)
    out["peak_rss_mb"] = mem.peak_mb
    return out


def run_isolated(job: Job, timeout: float) -> dict[str, Any]:
    """Measure one job in a fresh subprocess of this script; raises RuntimeError on failure."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    raise RuntimeError(tail[0])


# ==================================================================================================
# The plan
# ==================================================================================================
def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "episodes": 1,
            "warmup_episodes": 1,
            "single_steps": 200,
            "iterations": 1,
            "window_steps": 10,
            "suites": ("point-nav", "halfcheetah-vel"),
            "workers": 1,
            "sb3_vec": ("dummy",),
            "overrides": {"meta_batch_size": "2", "epochs": "1", "minibatches": "2"},
        }
    return {
        "episodes": 2,
        "warmup_episodes": 1,
        "single_steps": 10_000,
        "iterations": 3,
        "window_steps": 200,
        "suites": DEFAULT_SUITES,
        "workers": 2,
        "sb3_vec": ("dummy", "subproc"),
        "overrides": {},
    }


def _algorithms(names: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """Loadable registered methods, and the reason each unloadable one is skipped."""
    from benchmark.registry import algorithm_names, load_algorithm

    ok, skipped = [], {}
    for name in names or algorithm_names():
        try:
            load_algorithm(name)
            ok.append(name)
        except Exception as exc:  # noqa: BLE001 - a method being written must not stop the benchmark
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return ok, skipped


def build_plan(args: argparse.Namespace) -> tuple[list[Job], list[dict[str, Any]]]:
    """Every job of a full run, and SKIP rows for what cannot be measured here."""
    from benchmark.registry import load_suite

    s = _sizes(args.quick)
    suites = args.suites or list(s["suites"])
    workers = args.workers or s["workers"]
    episodes = args.episodes or s["episodes"]
    iterations = args.iterations or s["iterations"]
    overrides = dict(s["overrides"])
    common = {"torch_threads": args.torch_threads, "workers": workers, "overrides": overrides}
    algos, skipped = _algorithms(args.algos)
    skips = [
        {"id": f"*/{name}", "kind": "sampler/train", "name": name, "status": "SKIP", "notes": reason}
        for name, reason in skipped.items()
    ]
    jobs: list[Job] = []
    single = "raw/HalfCheetah-v5/single"
    jobs.append(
        {**common, "id": single, "kind": "raw", "name": "HalfCheetah-v5", "suite": "", "batch": 1,
         "op": "gym_single", "env_id": "HalfCheetah-v5", "steps": s["single_steps"], "reference": "spec"}
    )  # fmt: skip
    raw_done: set[str] = set()
    for suite_name in suites:
        suite = load_suite(suite_name)
        raw1 = f"raw1/{suite_name}"
        jobs.append(
            {**common, "id": raw1, "kind": "raw", "name": "one env", "suite": suite_name, "batch": 1,
             "op": "raw", "workers": 1, "min_steps": s["single_steps"], "warmup_episodes": 1,
             "reference": single}
        )  # fmt: skip
        for algo in algos:
            _cls, _run, cfg = _quick_config(algo, suite, overrides)
            batch = args.batch or int(getattr(cfg, "meta_batch_size", 20))
            raw = f"raw/{suite_name}/B{batch}"
            if raw not in raw_done:
                raw_done.add(raw)
                jobs.append(
                    {**common, "id": raw, "kind": "raw", "name": "batch env", "suite": suite_name,
                     "batch": batch, "op": "raw", "episodes": episodes,
                     "warmup_episodes": s["warmup_episodes"], "reference": raw1}
                )  # fmt: skip
                if workers > 1 and suite.family != "point-nav":  # the same batch without worker processes
                    jobs.append(
                        {**common, "id": f"{raw}/inproc", "kind": "raw", "name": "batch env in-process",
                         "suite": suite_name, "batch": batch, "op": "raw", "workers": 1, "episodes": episodes,
                         "warmup_episodes": s["warmup_episodes"], "reference": raw1}
                    )  # fmt: skip
            jobs.append(
                {**common, "id": f"sampler/{algo}/{suite_name}/B{batch}", "kind": "sampler", "name": algo,
                 "suite": suite_name, "batch": batch, "op": "sampler", "algo": algo, "episodes": episodes,
                 "warmup_episodes": s["warmup_episodes"], "reference": raw}
            )  # fmt: skip
    # the SB3 peer first, right before the rows compared with it (load on a shared machine drifts)
    train_suite = args.train_suite
    try:
        import stable_baselines3  # noqa: F401

        have_sb3 = True
    except ImportError:
        have_sb3 = False
        skips.append({"id": "train/sb3-ppo", "kind": "train", "name": "sb3-ppo", "status": "SKIP",
                      "notes": "stable_baselines3 is not installed (pip install -e .[perf])"})  # fmt: skip
    if have_sb3:
        suite = load_suite(train_suite)
        rollout, minibatch, epochs = _sb3_sizes(suite, overrides)
        for vec in s["sb3_vec"]:
            jobs.append(
                {**common, "id": f"train/sb3-ppo-{vec}/HalfCheetah-v5", "kind": "train",
                 "name": f"sb3-ppo-{vec}", "suite": "HalfCheetah-v5", "batch": 2, "op": "sb3", "vec": vec,
                 "env_id": "HalfCheetah-v5", "n_envs": 2, "rollout": rollout, "minibatch": minibatch,
                 "epochs": epochs, "iterations": iterations, "reference": single}
            )  # fmt: skip
    for algo in algos:
        # equal work with the SB3 peer: every epoch and minibatch runs (no KL early stop)
        from benchmark.registry import load_algorithm

        has_kl_stop = "target_kl" in {f.name for f in dataclasses.fields(load_algorithm(algo).Config)}
        equal = {**common, "overrides": {**overrides, **({"target_kl": "none"} if has_kl_stop else {})}}
        jobs.append(
            {**equal, "id": f"train/{algo}/{train_suite}", "kind": "train", "name": algo,
             "suite": train_suite, "batch": None, "op": "train", "algo": algo, "iterations": iterations,
             "reference": "sb3"}
        )  # fmt: skip
    if "trmrl" in algos:
        for n in WINDOWS:
            jobs.append(
                {**common, "id": f"window/trmrl/N{n}", "kind": "window", "name": f"trmrl N={n}",
                 "suite": TARGET_SUITE, "batch": 20, "op": "window", "window": n,
                 "warmup_steps": 2 * load_suite(TARGET_SUITE).horizon, "steps": s["window_steps"],
                 "reference": f"window/trmrl/N{WINDOWS[0]}"}
            )  # fmt: skip
    else:
        reason = f"trmrl not importable: {skipped.get('trmrl', 'not registered')}"
        skips.append(
            {"id": "window/trmrl", "kind": "window", "name": "trmrl", "status": "SKIP", "notes": reason}
        )
    return jobs, skips


def _sb3_sizes(suite: Any, overrides: dict[str, str]) -> tuple[int, int, int]:
    """(rollout, minibatch, epochs) of RL²'s quick config on the training suite (SB3 peer sizes)."""
    try:
        _cls, _run, cfg = _quick_config("rl2", suite, overrides)
        mb, minibatches, epochs = cfg.meta_batch_size, cfg.minibatches, cfg.epochs
    except Exception:  # noqa: BLE001 - no RL²: its defaults
        mb, minibatches, epochs = 20, 4, 4
    rollout = mb * suite.episodes_per_trial * suite.horizon
    return rollout, rollout // minibatches, epochs


def select(jobs: list[Job], only: Sequence[str] | None) -> list[Job]:
    """Jobs of the kinds in ``only`` plus, transitively, the rows they are compared with."""
    if not only:
        return jobs
    by_id = {j["id"]: j for j in jobs}
    keep = {j["id"] for j in jobs if j["kind"] in only}
    frontier = list(keep)
    while frontier:
        ref = by_id[frontier.pop()]["reference"]
        refs = [j["id"] for j in jobs if j["op"] == "sb3"] if ref == "sb3" else [ref]
        for r in refs:
            if r in by_id and r not in keep:
                keep.add(r)
                frontier.append(r)
    return [j for j in jobs if j["id"] in keep]


# ==================================================================================================
# Rows: rates, references, ratios, targets
# ==================================================================================================
def finish_rows(
    jobs: list[Job], results: dict[str, dict[str, Any]], skips: list[dict[str, Any]]
) -> list[dict]:
    rows: dict[str, dict[str, Any]] = {}
    for job in jobs:
        res = results[job["id"]]
        row = {c: "" for c in COLUMNS}
        row.update({k: job.get(k, "") for k in ("id", "kind", "name", "suite", "batch")})
        if "error" in res:
            row.update(status="ERROR", notes=res["error"])
            rows[job["id"]] = row
            continue
        steps, seconds = res["steps"], res["seconds"]
        batch = res.get("batch") or job.get("batch") or 1
        row.update(
            batch=batch, steps=steps, seconds=round(seconds, 3), peak_rss_mb=round(res["peak_rss_mb"], 1)
        )
        row["steps_per_s"] = round(steps / seconds, 1) if seconds > 0 else ""
        row["us_per_step"] = round(1e6 * seconds * batch / steps, 1) if steps else ""
        notes = [res.get("notes", "")]
        if job["op"] in ("sampler", "train", "sb3", "window"):
            notes.append(f"torch threads {job['torch_threads']}")
        row["notes"] = "; ".join(n for n in notes if n)
        rows[job["id"]] = row

    def rate(rid: str) -> float | None:
        r = rows.get(rid)
        return r["steps_per_s"] if r and r["steps_per_s"] != "" else None

    sb3 = [j["id"] for j in jobs if j["op"] == "sb3" and rate(j["id"])]
    best_sb3 = max(sb3, key=lambda i: rate(i) or 0.0) if sb3 else None
    if best_sb3:
        rows[best_sb3]["notes"] += "; fastest SB3 vec env: the training reference"
    for job in jobs:
        row = rows[job["id"]]
        if row["status"] == "ERROR":
            continue
        ref = job["reference"]
        if ref == "spec":
            row["reference"] = f"quiet machine {SPEC_HALFCHEETAH:.0f}/s"
            row["ratio"] = round(row["steps_per_s"] / SPEC_HALFCHEETAH, 3)
        elif ref == "sb3":
            row["reference"] = best_sb3 or "sb3 (not measured)"
            if best_sb3:
                row["ratio"] = round(row["steps_per_s"] / rate(best_sb3), 3)
        elif job["op"] == "window":
            row["reference"] = ref
            base = rows.get(ref)
            if base and base["us_per_step"] not in ("", 0):
                row["ratio"] = round(row["us_per_step"] / base["us_per_step"], 2)
        else:
            row["reference"] = ref
            if rate(ref):
                row["ratio"] = round(row["steps_per_s"] / rate(ref), 3)
        _target(job, row)
    return list(rows.values()) + [{**{c: "" for c in COLUMNS}, **s} for s in skips]


def _target(job: Job, row: dict[str, Any]) -> None:
    checks: list[tuple[str, bool | None]] = []
    ratio = row["ratio"] if row["ratio"] != "" else None
    if job["op"] == "sampler" and job["suite"] == TARGET_SUITE and job["algo"] in TARGET_ALGOS:
        checks.append((">=0.8x raw", None if ratio is None else ratio >= 0.8))
    if job["op"] == "train" and job["suite"] == TARGET_SUITE and job["algo"] in TARGET_ALGOS:
        checks.append((">=1x SB3", None if ratio is None else ratio >= 1.0))
        checks.append((f"rss<={MEMORY_LIMIT_MB / 1024:.0f}GB", row["peak_rss_mb"] <= MEMORY_LIMIT_MB))
    if job["op"] == "window" and job["window"] == max(WINDOWS):
        checks.append(("<=80x N5", None if ratio is None else ratio <= 80))
    if not checks:
        return
    row["target"] = ", ".join(name for name, _ in checks)
    failed = [name for name, ok in checks if ok is False]
    unknown = [name for name, ok in checks if ok is None]
    row["status"] = f"FAIL {', '.join(failed)}" if failed else ("n/a (no reference)" if unknown else "PASS")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    from benchmark.results import write_csv_atomic  # imported here: env workers re-import this module

    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(path, COLUMNS, rows)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["id", "steps/s", "us/step", "reference", "ratio", "target", "status", "peak MB"]
    keys = ["id", "steps_per_s", "us_per_step", "reference", "ratio", "target", "status", "peak_rss_mb"]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    body = [[cell(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    numeric = {1, 2, 4, 7}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(head), "  ".join("-" * w for w in widths), *(line(b) for b in body)]
    notes = [f"  {r['id']}: {r['notes']}" for r in rows if r.get("notes")]
    return "\n".join(out + ["", "notes:", *notes])


# ==================================================================================================
# Command line
# ==================================================================================================
def profile_one(jobs: list[Job], job_id: str, top: int) -> int:
    """Profile one planned measurement with cProfile (what bounds a rate that misses its target)."""
    import cProfile
    import pstats

    by_id = {j["id"]: j for j in jobs}
    if job_id not in by_id:
        print(
            f"perf.py: error: unknown measurement {job_id!r}; accepted: {', '.join(by_id)}", file=sys.stderr
        )
        return 2
    global PROFILER
    PROFILER = profiler = cProfile.Profile()
    out = run_one(by_id[job_id])
    PROFILER = None
    print(
        f"{job_id}: {out['steps'] / max(out['seconds'], 1e-9):,.0f} steps/s under cProfile "
        "(slower than unprofiled)"
    )
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    print(f"{'own time':>9} {'share':>6} {'calls':>8}  function (timed region of this process only)")
    for (file, line, name), (_cc, calls, tottime, _cum, _callers) in rows:
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        print(f"{tottime:8.3f}s {tottime / total:6.1%} {calls:8d}  {where}")
    # the same time by stage: cumulative time of this repository's functions (sampler loop, agent, envs)
    ours = [
        (key, st)
        for key, st in stats.stats.items()  # type: ignore[attr-defined]
        if str(REPO) in key[0] and "scripts" not in key[0]
    ]
    print(f"\n{'with callees':>12} {'share':>6} {'calls':>8}  repository function")
    for (file, line, name), (_cc, calls, _tt, cumtime, _callers) in sorted(
        ours, key=lambda kv: kv[1][3], reverse=True
    )[:top]:
        rel = Path(file).resolve().relative_to(REPO)
        print(f"{cumtime:11.3f}s {cumtime / total:6.1%} {calls:8d}  {rel}:{line}({name})")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (smoke test; numbers are not measurements)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("results/perf.csv"), help="CSV path (default results/perf.csv)"
    )
    p.add_argument(
        "--only", nargs="+", choices=KINDS, metavar="KIND", help=f"measure only these kinds: {KINDS}"
    )
    p.add_argument(
        "--suites", nargs="+", help=f"suites of raw/sampler rows (default {' '.join(DEFAULT_SUITES)})"
    )
    p.add_argument("--algos", nargs="+", help="methods (default: every registered one)")
    p.add_argument("--train-suite", default=TARGET_SUITE, help=f"suite of the training rows ({TARGET_SUITE})")
    p.add_argument("--episodes", type=int, help="episodes per measured trial (default 2)")
    p.add_argument("--iterations", type=int, help="measured training iterations after 1 warm-up (default 3)")
    p.add_argument("--workers", type=int, help="processes stepping simulators, this one included (default 2)")
    p.add_argument(
        "--batch", type=int, help="tasks per raw/sampler batch (default: each method's quick meta_batch_size)"
    )
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads when measuring (1)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per measurement")
    p.add_argument(
        "--no-isolate", action="store_true", help="measure in this process (peak memory accumulates)"
    )
    p.add_argument(
        "--profile",
        metavar="ID",
        help="run the one measurement ID (e.g. sampler/rl2/halfcheetah-vel/B20) in this process under "
        "cProfile and print where the time goes (no CSV)",
    )
    p.add_argument("--top", type=int, default=20, help="functions printed by --profile (20)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one JSON job, result printed on stdout
    args = p.parse_args(argv)
    for name in ("batch", "workers", "episodes", "iterations"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(RESULT_TAG + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    t_start = time.perf_counter()
    jobs, skips = build_plan(args)
    if args.profile:
        return profile_one(jobs, args.profile, args.top)
    jobs = select(jobs, args.only)
    for s in skips:
        print(f"skip {s['id']}: {s['notes']}", flush=True)
    mode = "in this process" if args.no_isolate else "one fresh subprocess each"
    print(f"{len(jobs)} measurements ({mode}; torch threads {args.torch_threads}; {os.cpu_count()} cores)")
    results: dict[str, dict[str, Any]] = {}
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        try:
            results[job["id"]] = run_one(job) if args.no_isolate else run_isolated(job, args.timeout)
            msg = f"{results[job['id']]['steps'] / max(results[job['id']]['seconds'], 1e-9):,.0f} steps/s"
        except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
            results[job["id"]] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            msg = "ERROR " + results[job["id"]]["error"]
        print(f"[{i:2d}/{len(jobs)}] {job['id']:<40} {msg}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    rows = finish_rows(jobs, results, skips)
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    write_csv(rows, out)
    print()
    print(format_table(rows))
    print(f"\nwrote {out} ({time.perf_counter() - t_start:.0f} s{', QUICK sizes' if args.quick else ''})")
    return 1 if any(r["status"] == "ERROR" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
