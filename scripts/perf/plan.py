"""What is measured: one job per row, the row it is compared with, and its target.

Rows (``kind``), env steps per second unless the unit says otherwise:

* ``raw``       random actions through the simulators: ``gymnasium.make("HalfCheetah-v5")`` on one
                core (ratio to 16.5k steps/s of a quiet machine: how busy this one is), one task env of
                each suite, and the suite's batch env as the sampler builds it (``B<n>`` tasks, 2 processes).
* ``sampler``   ``TrialSampler.run`` with every method's quick-profile agent at 20 tasks; ratio to the
                ``raw`` batch env of the same suite and batch replaying each trial, timed in the sampler
                row's own process (paired rounds, median: ``measure.measure_sampler``). Target: >= 0.8x
                on halfcheetah-vel, >= 0.9x on ant-dir and ml1-reach. ``sampler/null/...`` (no target):
                an agent whose policy costs nothing (``measure.null_agent``), the loop alone.
* ``train``     ``learner.train_step`` at the quick profile on halfcheetah-vel, KL early stop off;
                ratio to the library ``peer`` doing the same work (``work`` column, equal for both),
                paired in the row's own process (after each iteration the peer does the same work; the
                median of the rounds' ratios: ``measure.measure_train``). Target: >= 1.0x (MAML: no
                maintained library peer, n/a); peak memory <= 2 GB.
* ``peer``      Stable-Baselines3 PPO at each PPO method's rollout / minibatches / epochs, SB3 SAC at PEARL's
                nets and batch (gradient steps per second, as the PEARL row).
* ``breakdown`` one MAML-TRPO iteration split into sampling, inner loop, Fisher-vector products, line
                search (cProfile function totals): seconds per iteration, ratio = share of it.
* ``paper``     each method's paper profile on halfcheetah-vel for a few iterations: env steps per second
                with training, and the projected wall time of the harness's paper budget (20M steps + its
                evaluations). Target: TrMRL <= 3 h (float32, and ``/bf16``: its update's encoder pass in
                bfloat16, ``update_precision``).
* scaling rows (column ``scaling``): sampler and training throughput at 10 / 20 / 40 / 80 tasks per
                batch, and TrMRL (quick, trial memory) at windows 5 / 50 / 400 (``results/perf_scaling.*``).
* ``run``       the whole run's wall time. Target: <= 900 s (full sizes).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from scripts.perf.measure import Job, method_config, ppo_work

TARGET_SUITE = "halfcheetah-vel"
SAMPLER_SUITES = ("halfcheetah-vel", "ant-dir", "ml1-reach")
SAMPLER_TARGETS = {"halfcheetah-vel": 0.8, "ant-dir": 0.9, "ml1-reach": 0.9}  # min ratio to raw at 20 tasks
PPO_METHODS = ("rl2", "trmrl", "varibad")  # compared with SB3 PPO
SCALING_TASKS = (10, 20, 40, 80)
SCALING_WINDOWS = (5, 50, 400)
PAPER_HOURS = 3.0  # TrMRL paper profile on halfcheetah-vel, projected
RUN_SECONDS = 900.0  # nox -s perf
MEMORY_LIMIT_MB = 2048.0
QUIET_HALFCHEETAH = 16_500.0  # raw single-core HalfCheetah-v5 steps/s on a quiet 2-core project machine
# paper rows too slow to run whole: measured with fewer gradient steps, the update time scaled back up
PAPER_REDUCTIONS = {"pearl": {"grad_steps_per_iter": "10"}}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of a plan: ``FULL`` (the measurements) or ``QUICK`` (the smoke test, not measurements).

    ``episodes``: episodes of a raw batch-env row (a sampler round's, scaled by 200 / H at full size);
    ``single_steps``: env steps of the one-env raw rows; ``workers``: processes of the batch envs (and
    the update threads of ``parallel_update`` methods when ``--update-threads`` is 0);
    ``paper_iterations``: measured iterations of the paper rows; ``sac_grad_steps``: timed gradient
    steps of the SAC peer.
    """

    train_suite: str  # training, paper and scaling rows
    suites: tuple[str, ...]  # raw and sampler rows
    batch: int  # tasks per raw / sampler batch (the targets' 20)
    episodes: int
    single_steps: int
    workers: int
    iterations: int  # measured training iterations (after one warm-up)
    paper_iterations: int
    sac_grad_steps: int
    tasks: tuple[int, ...]  # scaling: tasks per batch
    windows: tuple[int, ...]  # scaling: TrMRL windows
    sampler_rounds: int  # sampler rows: rounds paired with the raw batch env (measure.measure_sampler)
    overrides: dict[str, str]  # applied to every method row (each method takes its own fields)


FULL = Sizes(TARGET_SUITE, SAMPLER_SUITES, 20, 2, 10_000, 2, 3, 2, 200, SCALING_TASKS, SCALING_WINDOWS, 3, {})
QUICK = Sizes(  # point-nav (numpy, H = 100) keeps the smoke test fast; HalfCheetah only in the peers
    "point-nav",
    ("point-nav",),
    2,
    1,
    200,
    1,
    1,
    1,
    2,
    (1, 2),
    (2, 4),
    1,
    {
        "meta_batch_size": "2",
        "epochs": "1",
        "minibatches": "2",
        "rollouts_per_task": "1",
        "cg_iters": "2",
        "num_tasks_sample": "2",
        "grad_steps_per_iter": "2",
        "meta_batch": "2",
        "batch_size": "16",
        "initial_episodes": "1",
        "prior_episodes": "1",
        "posterior_episodes": "1",
        "embedding_batch_size": "8",
        "vae_batch_trials": "2",
        "minibatch_steps": "200",
        "replay_size": "1000",
    },
)


#: untimed episodes before a batch-env row: ProcessBatchEnv drops its first episode's timings and
#: measures one episode per change of its split, so by then the split is the one training runs settle on
BALANCE_WARMUP_EPISODES = 4


def equal_work(algo: str, overrides: dict[str, str]) -> dict[str, str]:
    """Overrides that make a method do every epoch and minibatch (no KL early stop), as its peer does."""
    from benchmark.registry import load_algorithm

    fields = {f.name for f in dataclasses.fields(load_algorithm(algo).Config)}
    return {**overrides, **({"target_kl": "none"} if "target_kl" in fields else {})}


def tasks_per_iteration(cfg: Any) -> int:
    """Tasks a method's config samples per training iteration: ``meta_batch_size``, else
    ``num_tasks_sample``, else 0 (the ``B<n>`` of a training row's id)."""
    return int(getattr(cfg, "meta_batch_size", getattr(cfg, "num_tasks_sample", 0)))


def ppo_sizes(algo: str, cfg: Any, suite: Any) -> tuple[int, int, int]:
    """(rollout, minibatches, epochs) one iteration of a PPO method does, from its public config."""
    trial = suite.episodes_per_trial * suite.horizon
    rollout = cfg.meta_batch_size * trial
    if hasattr(cfg, "minibatches"):
        minibatches = cfg.minibatches
    else:  # TrMRL: minibatch_steps env steps per minibatch, rounded to whole trials (TrMRLConfig)
        minibatches = max(1, min(cfg.meta_batch_size, round(rollout / cfg.minibatch_steps)))
    return rollout, minibatches, cfg.epochs


def loadable(names: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Registered methods that import, and the reason each other one is skipped."""
    from benchmark.registry import algorithm_names, load_algorithm

    ok, skipped = [], {}
    for name in names or algorithm_names():
        try:
            load_algorithm(name)
            ok.append(name)
        except Exception as exc:  # noqa: BLE001 - a method being written must not stop the benchmark
            skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return ok, skipped


def measured_update_threads(cls: type, args: argparse.Namespace, workers: int) -> int:
    """The update threads a method's training rows run with (and its peer's): ``--update-threads``, or
    for 0 one per env worker for a method whose update gains from threads (``parallel_update``; a run
    gets this with ``--set update_threads=N`` on an otherwise idle machine), ``--torch-threads`` for
    the others."""
    if args.update_threads:
        return args.update_threads
    return max(workers, args.torch_threads) if cls.parallel_update else args.torch_threads


def build_plan(args: argparse.Namespace) -> tuple[list[Job], list[dict[str, Any]]]:
    """Every job, in measuring order (peers right before the rows compared with them), and SKIP rows.

    Jobs with the same ``group`` run in one subprocess (the scaling series); others each in their own.
    """
    from benchmark.registry import load_suite

    z = QUICK if args.quick else FULL
    algos, skipped = loadable(args.algos)
    skips = [
        {"id": f"*/{n}", "kind": "*", "name": n, "status": "SKIP", "notes": why} for n, why in skipped.items()
    ]
    common = {
        "torch_threads": args.torch_threads,
        "update_threads": args.update_threads,
        "workers": z.workers,
    }
    jobs: dict[str, Job] = {}

    def add(job: Job) -> str:
        if job["id"] in jobs:  # the same measurement serves two purposes (e.g. B20 in the scaling series)
            jobs[job["id"]]["scaling"] = jobs[job["id"]].get("scaling") or job.get("scaling", "")
        else:
            jobs[job["id"]] = {**common, "group": job["id"], "scaling": "", **job}
        return job["id"]

    def raw(suite: str, batch: int, **kw: Any) -> str:
        return add(
            {
                "id": f"raw/{suite}/B{batch}",
                "kind": "raw",
                "name": "batch env",
                "suite": suite,
                "batch": batch,
                "op": "raw",
                "episodes": z.episodes,
                "warmup_episodes": BALANCE_WARMUP_EPISODES,
                "reference": f"raw1/{suite}",
                **kw,
            }
        )

    def sampler(algo: str, suite: str, batch: int, overrides: dict, suffix: str = "", **kw: Any) -> str:
        horizon = load_suite(suite).horizon
        return add(
            {
                "id": f"sampler/{algo}/{suite}/B{batch}{suffix}",
                "kind": "sampler",
                "name": algo,
                "suite": suite,
                "batch": batch,
                "op": "sampler",
                "algo": algo,
                "profile": "quick",
                "overrides": overrides,
                # per round; a round of 2 episodes at H = 200 is ~0.3 s at 20 tasks (ml1-reach, H = 500: 1)
                "episodes": z.episodes if z is QUICK else max(1, z.episodes * 200 // horizon),
                "rounds": z.sampler_rounds,
                "warmup_episodes": BALANCE_WARMUP_EPISODES,
                "reference": f"raw/{suite}/B{batch}",
                **kw,
            }
        )

    def train(algo: str, profile: str, overrides: dict, suffix: str = "", **kw: Any) -> str:
        suite = load_suite(z.train_suite)
        cls, _r, cfg = method_config(algo, suite, profile, overrides)
        b = tasks_per_iteration(cfg)
        kw = {"update_threads": measured_update_threads(cls, args, z.workers), **kw}
        kind = "paper" if profile == "paper" else "train"
        return add(
            {
                "id": f"{kind}/{algo}/{z.train_suite}" + ("" if kind == "paper" else f"/B{b}") + suffix,
                "kind": kind,
                "name": algo,
                "suite": z.train_suite,
                "batch": b,
                "op": "train",
                "algo": algo,
                "profile": profile,
                "overrides": overrides,
                "iterations": z.iterations,
                "warmup_iterations": 1,
                "reference": "",
                **kw,
            }
        )

    # -- raw simulators and the sampler, every method at the targets' batch ------------------------
    single = add(
        {
            "id": "raw/HalfCheetah-v5/single",
            "kind": "raw",
            "name": "HalfCheetah-v5",
            "suite": "",
            "batch": 1,
            "op": "gym_single",
            "env_id": "HalfCheetah-v5",
            "steps": z.single_steps,
            "reference": "quiet",
        }
    )
    for suite_name in args.suites or z.suites:
        add(
            {
                "id": f"raw1/{suite_name}",
                "kind": "raw",
                "name": "one env",
                "suite": suite_name,
                "batch": 1,
                "op": "raw",
                "workers": 1,
                "min_steps": z.single_steps,
                "warmup_episodes": 1,
                "reference": single,
            }
        )
        raw(suite_name, z.batch)
        if suite_name == TARGET_SUITE and z.workers > 1:  # what the worker process buys
            add(
                {
                    **jobs[f"raw/{suite_name}/B{z.batch}"],
                    "id": f"raw/{suite_name}/B{z.batch}/inproc",
                    "name": "batch env in-process",
                    "workers": 1,
                    "group": f"raw/{suite_name}/B{z.batch}/inproc",
                }
            )
        sampler("null", suite_name, z.batch, z.overrides)  # the loop with a policy that costs nothing
        for algo in algos:
            sampler(algo, suite_name, z.batch, z.overrides, min_ratio=SAMPLER_TARGETS.get(suite_name))

    # -- training at equal work with the library peer ----------------------------------------------
    suite = load_suite(z.train_suite)
    for algo in algos:
        ov = equal_work(algo, z.overrides)
        cls, _r, cfg = method_config(algo, suite, "quick", ov)
        limits = {"max_rss_mb": MEMORY_LIMIT_MB}
        threads = measured_update_threads(cls, args, z.workers)  # the peer updates with as many
        tag = "" if threads == 1 else f"/u{threads}"
        if algo in PPO_METHODS:
            rollout, mbs, epochs = ppo_sizes(algo, cfg, suite)
            peer = add(
                {
                    "id": f"peer/sb3-ppo/HalfCheetah-v5/R{rollout}m{mbs}e{epochs}{tag}",
                    "kind": "peer",
                    "name": "sb3-ppo",
                    "suite": "HalfCheetah-v5",
                    "batch": 2,
                    "op": "sb3_ppo",
                    "vec": "dummy",
                    "env_id": "HalfCheetah-v5",
                    "n_envs": 2,
                    "rollout": rollout,
                    "minibatches": mbs,
                    "epochs": epochs,
                    "iterations": z.iterations,
                    "reference": single,
                    "expect_work": ppo_work(rollout, mbs, epochs),
                    "update_threads": threads,
                }
            )
            train(algo, "quick", ov, reference=peer, min_ratio=1.0, paired_peer=jobs[peer], **limits)
        elif algo == "pearl":
            batch = cfg.meta_batch * cfg.batch_size
            peer = add(
                {
                    "id": f"peer/sb3-sac/HalfCheetah-v5/{cfg.net_layers}x{cfg.net_size}b{batch}{tag}",
                    "kind": "peer",
                    "name": "sb3-sac",
                    "suite": "HalfCheetah-v5",
                    "batch": 1,
                    "op": "sb3_sac",
                    "env_id": "HalfCheetah-v5",
                    "net_layers": cfg.net_layers,
                    "net_size": cfg.net_size,
                    "batch_size": batch,
                    "learning_starts": 2000,
                    "grad_steps": z.sac_grad_steps,
                    "warmup_grad_steps": max(1, z.sac_grad_steps // 10),
                    "reference": "",
                    "update_threads": threads,
                }
            )
            # paired rounds: the peer's gradient steps of one PEARL iteration after each of PEARL's
            paired = {**jobs[peer], "grad_steps": cfg.grad_steps_per_iter}
            train(algo, "quick", ov, reference=peer, min_ratio=1.0, paired_peer=paired, **limits)
        elif algo == "maml":
            train(
                algo,
                "quick",
                ov,
                iterations=max(1, z.iterations - 1),
                breakdown=True,
                reference="none: no maintained library MAML-TRPO",
                **limits,
            )
        else:  # a plugin method: measured, no peer
            train(algo, "quick", ov, reference="none: no peer defined", **limits)

    # -- paper profiles: a few iterations, projected to the published budget -------------------------
    for algo in algos:
        cut = PAPER_REDUCTIONS.get(algo, {})
        ov = {**(z.overrides if args.quick else {}), **cut}
        _c, _r, full_cfg = method_config(algo, suite, "paper", z.overrides if args.quick else {})
        _c, _r, cut_cfg = method_config(algo, suite, "paper", ov)
        scale = {k: getattr(full_cfg, k) / getattr(cut_cfg, k) for k in cut}
        iters = (1, 0) if algo == "maml" and not args.quick else (z.paper_iterations, 1)  # 320k steps/it
        train(
            algo,
            "paper",
            ov,
            iterations=iters[0],
            warmup_iterations=iters[1],
            update_scale=scale.get("grad_steps_per_iter", 1.0),
            max_hours=PAPER_HOURS if algo == "trmrl" else None,
        )
        if algo == "trmrl":  # the same profile with its encoder's update in bfloat16 (mixed precision)
            train(
                algo,
                "paper",
                {**ov, "update_precision": "bfloat16"},
                suffix="/bf16",
                iterations=iters[0],
                warmup_iterations=iters[1],
                max_hours=PAPER_HOURS,
            )

    # -- scaling: tasks per batch, TrMRL windows ----------------------------------------------------------
    for b in z.tasks:
        raw(z.train_suite, b, scaling="tasks", group="scaling/raw")
        for algo in algos:
            sampler(  # one paired round (the 20-task rows above keep theirs)
                algo,
                z.train_suite,
                b,
                z.overrides,
                scaling="tasks",
                group=f"scaling/sampler/{algo}",
                rounds=1,
            )
        for algo in (a for a in algos if a in PPO_METHODS):
            ov = equal_work(algo, z.overrides | {"meta_batch_size": str(b)})
            train(
                algo,
                "quick",
                ov,
                scaling="tasks",
                group=f"scaling/train/{algo}",
                iterations=max(1, z.iterations - 1),
            )
    if "trmrl" in algos:
        b = z.batch
        for w in z.windows:
            ov = equal_work(
                "trmrl", z.overrides | {"memory": "trial", "window": str(w), "meta_batch_size": str(b)}
            )
            sampler(
                "trmrl",
                z.train_suite,
                b,
                ov,
                suffix=f"/N{w}",
                scaling="window",
                group="scaling/window/sampler",
                rounds=1,
            )
            train(
                "trmrl",
                "quick",
                ov,
                suffix=f"/N{w}",
                scaling="window",
                group="scaling/window/train",
                iterations=max(1, z.iterations - 1),
                reference=f"train/trmrl/{z.train_suite}/B{b}/N{z.windows[0]}",
            )
    return list(jobs.values()), skips


def select(jobs: list[Job], only: list[str] | None) -> list[Job]:
    """Jobs of the kinds in ``only`` plus, transitively, the rows they are compared with.

    The scaling series' own rows (group ``scaling/...``: other batch sizes and windows) are kept only with
    ``scaling`` in ``only``: ``--only train`` measures the training rows, not the training series too.
    """
    if not only:
        return jobs
    by_id = {j["id"]: j for j in jobs}
    keep = {
        j["id"]
        for j in jobs
        if (j["kind"] in only and not j["group"].startswith("scaling/"))
        or ("scaling" in only and j.get("scaling"))
    }
    frontier = list(keep)
    while frontier:
        ref = by_id[frontier.pop()].get("reference", "")
        if ref in by_id and ref not in keep:
            keep.add(ref)
            frontier.append(ref)
    return [j for j in jobs if j["id"] in keep]


def groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs by ``group`` (one subprocess each), in order of first appearance."""
    out: dict[str, list[Job]] = {}
    for j in jobs:
        out.setdefault(j["group"], []).append(j)
    return list(out.values())
