"""One run: meta-training loop, periodic and final evaluation, CSV logs, checkpoints, resume.

Iteration bookkeeping (what makes resume exact): an eval row's ``iteration`` is the number of
training iterations completed before it; a checkpoint taken after iteration ``c`` holds every RNG and
optimiser state, so resuming truncates progress.csv to rows <= c and eval.csv to rows < c, then
replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from algorithms.base import AdaptiveAgent, EnvSpec, MetaLearner
from benchmark.config import RunConfig
from benchmark.evaluate import evaluate, headline, summarize
from benchmark.results import (
    CHECKPOINT,
    DONE_MARKER,
    EVAL_COLUMNS,
    CsvLog,
    ResultsError,
    load_checkpoint,
    run_dir,
    save_checkpoint,
    truncate_csv,
    write_json,
)
from benchmark.sampler import TrialBatch, TrialSampler
from benchmark.suites.base import Suite, Task

PACKAGES = ("metarl-bench", "torch", "numpy", "gymnasium", "mujoco", "metaworld", "pandas")


class RunExistsError(ResultsError):
    """The output directory already holds a run and neither --resume nor --overwrite was given."""


@dataclass
class RunSpec:
    """Everything that identifies a run."""

    algo: str
    suite: str
    seed: int
    profile: str
    out: Path
    device: str = "cpu"

    @property
    def dir(self) -> Path:
        return run_dir(self.out, self.suite, self.algo, self.seed)


class HarnessContext:
    """The ``TrainContext`` a method sees: training tasks, trial sampling, the run's generator."""

    def __init__(
        self, suite: Suite, sampler: TrialSampler, rng: np.random.Generator, device: torch.device
    ) -> None:
        self.suite, self.sampler, self.rng, self.device = suite, sampler, rng, device
        self.env_steps = 0

    def train_tasks(self) -> Sequence[Task]:
        return self.suite.tasks("train")

    def sample_tasks(self, n: int) -> list[Task]:
        train = self.suite.tasks("train")
        idx = self.rng.choice(len(train), size=n, replace=n > len(train))
        return [train[i] for i in idx]

    def sample_trials(
        self,
        agent: AdaptiveAgent,
        tasks: Sequence[Task],
        episodes: int | None = None,
        deterministic: bool = False,
    ) -> TrialBatch:
        seed = int(self.rng.integers(0, 2**31 - 1))
        batch = self.sampler.run(agent, tasks, episodes or self.suite.episodes_per_trial, seed, deterministic)
        self.env_steps += batch.env_steps
        return batch


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class Runner:
    """Trains ``learner`` on ``suite`` under ``run`` settings, writing the results directory."""

    def __init__(
        self,
        spec: RunSpec,
        suite: Suite,
        learner_cls: type[MetaLearner],
        algo_config: Any,
        run: RunConfig,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.spec, self.suite, self.run_cfg = spec, suite, run
        self.learner_cls, self.algo_config = learner_cls, algo_config
        self.progress = progress
        self.dir = spec.dir
        self.device = torch.device(spec.device)
        self._prepare_dir(resume, overwrite)

    # -- directory ---------------------------------------------------------------------------------
    def _prepare_dir(self, resume: bool, overwrite: bool) -> None:
        exists = self.dir.exists() and any(self.dir.iterdir())
        self.finished = (self.dir / DONE_MARKER).exists()
        if exists and overwrite:
            shutil.rmtree(self.dir)
            exists = self.finished = False
        elif exists and not resume:
            state = "a finished run" if self.finished else "an unfinished run"
            raise RunExistsError(
                f"{self.dir} already holds {state}; pass --resume to continue it or --overwrite"
            )
        self.resuming = exists and resume
        self.dir.mkdir(parents=True, exist_ok=True)

    def config_record(self) -> dict[str, Any]:
        ref = self.suite.reference_returns()
        return {
            "algo": self.spec.algo,
            "suite": self.spec.suite,
            "seed": self.spec.seed,
            "profile": self.spec.profile,
            "device": self.spec.device,
            "iterations": self.run_cfg.iterations,
            "run": asdict(self.run_cfg),
            "algo_config": asdict(self.algo_config),
            "suite_info": {
                "family": self.suite.family,
                "horizon": self.suite.horizon,
                "episodes_per_trial": self.suite.episodes_per_trial,
                "eval_episodes": self.suite.eval_episodes,
                "has_success": self.suite.has_success,
                "headline_episodes": self.suite.headline_episodes(),
                "description": self.suite.description,
                "splits": {s: len(self.suite.tasks(s)) for s in self.suite.splits()},
            },
            "reference_returns": asdict(ref) if ref is not None else None,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "command": sys.argv,
        }

    # -- the loop ----------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Train (or resume) to the end, evaluate, and return the summary."""
        if self.finished:
            return self._summary_from_disk()
        torch.set_num_threads(self.run_cfg.torch_threads)
        cfg, suite = self.run_cfg, self.suite
        espec = EnvSpec(suite.obs_dim, suite.act_dim, suite.horizon, suite.episodes_per_trial, suite.family)
        torch.manual_seed(self.spec.seed)
        learner = self.learner_cls(espec, self.algo_config, self.device)
        rng = np.random.default_rng(self.spec.seed)
        start, env_steps, wall = 0, 0, 0.0
        ckpt_path = self.dir / CHECKPOINT
        if self.resuming and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, self.device)
            learner.load_state_dict(state["learner"])
            rng.bit_generator.state = json.loads(state["numpy_rng"])
            torch.set_rng_state(state["torch_rng"])
            start, env_steps, wall = (
                int(state["iteration"]),
                int(state["env_steps"]),
                float(state["wall_time_s"]),
            )
        if self.resuming:
            truncate_csv(self.dir / "progress.csv", lambda r: int(r["iteration"]) <= start)
            truncate_csv(self.dir / "eval.csv", lambda r: int(r["iteration"]) < start)
        write_json(self.dir / "config.json", self.config_record())

        progress_log = CsvLog(self.dir / "progress.csv")
        eval_log = CsvLog(self.dir / "eval.csv", EVAL_COLUMNS)
        sampler = TrialSampler(suite, num_workers=1 if suite.family == "point-nav" else cfg.num_workers)
        ctx = HarnessContext(suite, sampler, rng, self.device)
        ctx.env_steps = env_steps
        bar = _progress_bar(cfg.iterations, start, self.spec, enabled=self.progress)
        last_eval: float | None = None
        t0 = time.perf_counter() - wall
        try:
            for it in range(start, cfg.iterations):
                if it % cfg.eval_every == 0:
                    periodic = {
                        "test": suite.periodic_eval_tasks(cfg.eval_tasks),
                        "train": suite.periodic_train_eval_tasks(cfg.eval_tasks),
                    }
                    rows = self._evaluate(
                        learner, sampler, {k: v for k, v in periodic.items() if v}, it, ctx.env_steps
                    )
                    eval_log.write(rows)
                    last_eval = headline(rows, suite)["return"]
                metrics = learner.train_step(ctx)
                wall = time.perf_counter() - t0
                progress_log.write(
                    [
                        {
                            "iteration": it + 1,
                            "env_steps": ctx.env_steps,
                            "wall_time_s": round(wall, 3),
                            **metrics,
                        }
                    ]
                )
                if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                    self._checkpoint(learner, rng, it + 1, ctx.env_steps, wall)
                bar.update(1)
                bar.set_postfix(steps=f"{ctx.env_steps:.3g}", eval=_fmt(last_eval), refresh=False)
            bar.close()
            final_rows = self._evaluate(learner, sampler, self._final_tasks(), cfg.iterations, ctx.env_steps)
            eval_log.write(final_rows)
            (self.dir / DONE_MARKER).write_text(f"finished {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        finally:
            bar.close()
            progress_log.close()
            eval_log.close()
            sampler.close()
        return self._summary(final_rows)

    def _evaluate(
        self,
        learner: MetaLearner,
        sampler: TrialSampler,
        tasks_by_split: dict[str, list[Task]],
        iteration: int,
        env_steps: int,
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        agent = learner.make_agent()
        for split, tasks in tasks_by_split.items():
            # evaluation seeds depend on (run seed, iteration) only: never on the training generator
            seed = 1_000_003 * (self.spec.seed + 1) + iteration
            rows += evaluate(
                agent,
                sampler,
                tasks,
                split=split,
                iteration=iteration,
                env_steps=env_steps,
                seed=seed,
                batch_size=self.run_cfg.eval_batch,
            )
        return rows

    def _final_tasks(self) -> dict[str, list[Task]]:
        """The final tasks of the protocol; ``final_eval_max_tasks`` > 0 keeps that many per split."""
        tasks, cap = self.suite.final_eval_tasks(), self.run_cfg.final_eval_max_tasks
        if cap <= 0:
            return tasks
        keep = {
            s: np.unique(np.linspace(0, len(ts) - 1, min(cap, len(ts))).round().astype(int))
            for s, ts in tasks.items()
        }
        return {s: [ts[i] for i in keep[s]] for s, ts in tasks.items()}

    def _checkpoint(
        self, learner: MetaLearner, rng: np.random.Generator, iteration: int, env_steps: int, wall: float
    ) -> None:
        save_checkpoint(
            self.dir / CHECKPOINT,
            {
                "iteration": iteration,
                "env_steps": env_steps,
                "wall_time_s": wall,
                "learner": learner.state_dict(),
                "numpy_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(),
            },
        )

    # -- summaries ---------------------------------------------------------------------------------
    def _summary(self, final_rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "table": summarize(final_rows, self.suite),
            "headline": {s: headline(final_rows, self.suite, s) for s in {r["split"] for r in final_rows}},
        }

    def _summary_from_disk(self) -> dict[str, Any]:
        import pandas as pd

        df = pd.read_csv(self.dir / "eval.csv", keep_default_na=False)
        final = df[df["iteration"] == df["iteration"].max()].to_dict("records")
        return self._summary(final)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _progress_bar(total: int, start: int, spec: RunSpec, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        desc=f"{spec.algo}/{spec.suite}/seed{spec.seed}",
        unit="it",
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
    )
