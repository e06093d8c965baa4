"""One run: meta-training to an env-step budget, evaluations at env-step marks, CSV logs, checkpoints.

The budget and the evaluation marks count environment steps, identical for every method: the loop
evaluates at the first iteration boundary at or past each mark (``mark`` column of eval.csv; the
steps actually consumed are in ``env_steps``) and stops at the first boundary at or past the budget;
the final evaluation stands for the budget.

Evaluation is isolated from training: its own torch generator state (``torch.random.fork_rng``
seeded from the run seed and the mark), its own environment reset seeds, an evaluation agent that
never changes the learner, and fresh task keys. So a run that evaluates often trains exactly like
one that evaluates rarely.

Iteration bookkeeping (what makes resume exact): an eval row's ``iteration`` is the number of
training iterations completed before it; a checkpoint taken after iteration ``c`` holds every RNG and
optimiser state and the next marks, so resuming truncates progress.csv to rows <= c and eval.csv to
rows < c, then replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from benchmark.config import HarnessConfig
from benchmark.errors import UsageError
from benchmark.evaluate import evaluate, headline, summarize
from benchmark.paths import file_in_the_way, what_is
from benchmark.registry import algorithm_source, suite_source
from benchmark.results import (
    CHECKPOINT,
    DONE_MARKER,
    EVAL_COLUMNS,
    CsvLog,
    ResultsError,
    kept_rows,
    load_checkpoint,
    load_learner_state,
    run_dir,
    save_checkpoint,
    write_csv_atomic,
    write_json,
)
from benchmark.sampler import TrialSampler
from benchmark.suites.base import Suite
from benchmark.suites.checks import tasks_fingerprint
from metarl_protocol import AdaptiveAgent, MetaLearner, Task, TrialBatch

PACKAGES = ("metarl-bench", "torch", "numpy", "gymnasium", "mujoco", "metaworld", "pandas")


class RunExistsError(ResultsError):
    """The output directory already holds a run and neither --resume nor --overwrite was given."""


class ResumeMismatchError(ResultsError):
    """``--resume`` with settings that differ from the ones the run was started with."""


#: Settings that may change on resume: a longer budget, and the number of simulator processes
#: (results do not depend on it: tested). Everything else must equal the run's config.json.
RESUMABLE_CHANGES = ("budget_steps", "num_workers")
#: what every checkpoint holds (``Runner._checkpoint``); "cuda_rng" too when the run is on CUDA
CHECKPOINT_FIELDS = (
    "iteration", "env_steps", "wall_time_s", "next_eval_mark", "next_checkpoint_mark", "learner", "numpy_rng",
    "torch_rng",
)  # fmt: skip


@dataclass
class RunId:
    """What identifies a run and where it is written: method, suite, seed, profile, results root, device."""

    algo: str
    suite: str
    seed: int
    profile: str
    out: Path
    device: str = "cpu"

    @property
    def dir(self) -> Path:
        """The run's directory, ``<out>/<suite>/<algo>/seed<N>`` (``results.run_dir``)."""
        return run_dir(self.out, self.suite, self.algo, self.seed)


def processes_used(suite: Suite, cfg: HarnessConfig) -> int:
    """Processes a run steps its simulators in: ``num_workers``, except point-nav (in-process, 1)."""
    return 1 if suite.family == "point-nav" else cfg.num_workers


def _update_threads_of_record(run: dict[str, Any], default: Any = None) -> Any:
    """The update threads a recorded ``run`` section stands for: its ``update_threads``, or for a run
    recorded before the setting existed its ``torch_threads`` (it updated with those), else ``default``."""
    return run.get("update_threads", run.get("torch_threads", default))


def recorded_update_threads(run_dir: Path) -> int | None:
    """The update threads a run directory's ``config.json`` recorded (``_update_threads_of_record``);
    None where there is no readable record (a new run, or one that ``--resume`` will refuse with its own
    message)."""
    try:
        count = _update_threads_of_record(json.loads((run_dir / "config.json").read_text()).get("run", {}))
    except (OSError, ValueError, AttributeError):
        return None
    return count if isinstance(count, int) and count > 0 else None


def update_threads(cfg: HarnessConfig) -> int:
    """Intra-op threads of a run's updates (``train_step`` outside its sampling): ``update_threads``, or
    ``torch_threads`` for 0 (the default). More threads help only where the update is made of large
    batched operations (``MetaLearner.parallel_update``) and the cores are otherwise idle: the threads
    spin-wait for each other, and other processes on the same cores make them several times slower."""
    return cfg.update_threads or cfg.torch_threads


def set_intra_op_threads(n: int) -> None:
    """Set torch's intra-op pool and numpy's BLAS pool (threadpoolctl) to ``n`` threads, together."""
    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (torch and numpy's BLAS), then restore torch's count
    from before it (BLAS follows). Nothing is touched when torch already has ``n``: a run whose
    update and acting thread counts are equal runs exactly as before this existed."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    set_intra_op_threads(n)
    try:
        yield
    finally:
        set_intra_op_threads(before)


def validation_split(suite: Suite, n: int) -> tuple[list[Task], list[Task]]:
    """(training tasks kept for meta-training, ``n`` held-out validation tasks), both from the train split.

    The validation tasks are evenly spaced over the training list (deterministic); hyperparameters
    are chosen on them, never on test or OOD tasks. Raises ``ValueError`` when fewer than ``n + 1``
    training tasks exist.
    """
    train = list(suite.tasks("train"))
    if n <= 0:
        return train, []
    if n >= len(train):
        raise ValueError(
            f"validation_tasks={n}: the suite has only {len(train)} training tasks (accepted: 0 to "
            f"{len(train) - 1}, leaving at least one to train on)"
        )
    held = set(np.linspace(0, len(train) - 1, n).round().astype(int).tolist())
    if len(held) < n:
        held = set(range(0, len(train), max(1, len(train) // n))[:n])
    return [t for i, t in enumerate(train) if i not in held], [train[i] for i in sorted(held)]


class HarnessContext:
    """The ``TrainContext`` a method sees: training tasks, trial sampling, the run's generator.

    ``train_pool`` (default: the suite's whole train split) is what ``train_step`` may sample; a
    tuning run passes the training tasks minus its validation tasks. ``acting_threads``: the intra-op
    threads its sampling runs with (the run's ``torch_threads``; the runner gives ``train_step`` its
    ``update_threads``, so sampling inside it goes back to the acting count); None leaves them as set.
    """

    def __init__(
        self,
        suite: Suite,
        sampler: TrialSampler,
        rng: np.random.Generator,
        device: torch.device,
        train_pool: Sequence[Task] | None = None,
        acting_threads: int | None = None,
    ) -> None:
        self.suite, self.sampler, self.rng, self.device = suite, sampler, rng, device
        self.acting_threads = acting_threads
        self.pool = list(suite.tasks("train") if train_pool is None else train_pool)
        self._pool_ids = {t.task_id for t in self.pool}
        self.env_steps = 0

    def train_tasks(self) -> Sequence[Task]:
        """The training pool ``train_step`` may sample (see ``TrainContext.train_tasks``)."""
        return self.pool

    def sample_tasks(self, n: int) -> list[Task]:
        """``n`` tasks of the training pool drawn with the run's generator, with replacement only when
        ``n`` exceeds the pool (see ``TrainContext.sample_tasks``)."""
        idx = self.rng.choice(len(self.pool), size=n, replace=n > len(self.pool))
        return [self.pool[i] for i in idx]

    def sample_trials(
        self, agent: AdaptiveAgent, tasks: Sequence[Task], episodes: int | None = None
    ) -> TrialBatch:
        """One trial per task (``episodes`` defaults to the suite's ``episodes_per_trial``), sampled with
        the acting intra-op threads and a reset seed drawn from the run's generator; adds the batch's
        valid steps to ``env_steps``. See ``TrainContext.sample_trials``.

        Raises ``ValueError`` for a task outside the train split or outside the training pool (a
        validation task), and for an evaluation agent.
        """
        outside = sorted({t.split for t in tasks if t.split != "train"})
        if outside:
            raise ValueError(f"train_step may only sample training tasks; got tasks of split {outside}")
        held = sorted({t.task_id for t in tasks} - self._pool_ids)
        if held:
            raise ValueError(f"train_step may only sample training tasks; tasks {held[:5]} are held out")
        if agent.evaluation:
            raise ValueError("train_step sampled with an evaluation agent; use make_agent(evaluation=False)")
        seed = int(self.rng.integers(0, 2**31 - 1))
        threads = torch.get_num_threads() if self.acting_threads is None else self.acting_threads
        with intra_op_threads(threads):
            batch = self.sampler.run(agent, tasks, episodes or self.suite.episodes_per_trial, seed)
        self.env_steps += batch.env_steps
        return batch


def _git(where: Path | None, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=where or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(where: Path | None = None) -> str | None:
    """HEAD of the checkout at ``where`` (default: the one this code runs from); None outside git."""
    out = _git(where, "rev-parse", "HEAD")
    return (out.stdout.strip() or None) if out is not None and out.returncode == 0 else None


def git_dirty(where: Path | None = None) -> bool | None:
    """Whether tracked files of the checkout at ``where`` (default: this code's) differ from HEAD:
    uncommitted edits, so the commit alone does not say what ran. Untracked files do not count; None
    outside a git checkout."""
    out = _git(where, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return bool(out.stdout.strip()) if out is not None and out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    """The Python version and the installed version of each of ``PACKAGES`` (None where not installed)."""
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
        run_id: RunId,
        suite: Suite,
        learner_cls: type[MetaLearner],
        algo_config: Any,
        run: HarnessConfig,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> None:
        self.run_id, self.suite, self.run_cfg = run_id, suite, dataclasses.replace(run)
        self.learner_cls, self.algo_config = learner_cls, algo_config
        self.progress = progress
        self.dir = run_id.dir
        self.device = torch.device(run_id.device)
        self._prepare_dir(resume, overwrite)  # a resumed run keeps its recorded update_threads
        # config.json records the update's thread count itself, not the rule (0) that chose it
        self.run_cfg.update_threads = update_threads(self.run_cfg)

    # -- directory ---------------------------------------------------------------------------------
    def _prepare_dir(self, resume: bool, overwrite: bool) -> None:
        """Decide what the run does with its directory and check a resume's settings; writes nothing.

        Every change on disk waits for ``execute``, after everything it needs has been read and
        checked (``_set_up``). ``overwrite`` moves the old run aside only then and deletes it once the
        new one is set up; a failure before that puts it back.
        """
        if resume and overwrite:
            raise UsageError("--resume and --overwrite exclude each other")
        blocking = file_in_the_way(self.dir)
        if blocking is not None:
            raise ResultsError(f"{blocking}: {what_is(blocking)} where the run directory {self.dir} goes")
        exists = self.dir.exists() and any(self.dir.iterdir())
        self.finished = (self.dir / DONE_MARKER).exists()
        self.replacing = exists and overwrite
        if self.replacing:
            exists = self.finished = False
        elif exists and not resume:
            state = "a finished run" if self.finished else "an unfinished run"
            raise RunExistsError(
                f"{self.dir} already holds {state}; pass --resume to continue it or --overwrite"
            )
        self.resuming = exists and resume
        self._was_dirty = False  # a resumed run started or resumed from a modified checkout before
        self._extend = False  # resuming a finished run to a longer budget: its done marker goes
        if self.resuming and (self.dir / "config.json").exists():
            self._check_resume_config()
        elif self.resuming and any((self.dir / f).exists() for f in (CHECKPOINT, "progress.csv", "eval.csv")):
            raise ResultsError(
                f"{self.dir}: config.json is missing, so the settings of the run to resume cannot be "
                "checked; restore it, or pass --overwrite to start the run again"
            )

    def _check_resume_config(self) -> None:
        """Refuse to resume with settings that differ from the run's (nothing is written before this).

        A longer ``budget_steps`` continues the run (a finished one too: its final evaluation is
        replaced by the one at the new budget); a shorter one is refused. A setting the run's
        config.json lacks (added to the code later) counts as unchanged while it has its default.
        ``update_threads`` left at 0 takes the run's recorded count (a run recorded before the setting
        existed updated with its ``torch_threads``).
        """
        path = self.dir / "config.json"
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{path}: unreadable config of the run to resume ({exc})") from None
        if not isinstance(old, dict) or not isinstance(old.get("run", {}), dict):
            raise ResultsError(
                f"{path}: not the config.json of a run (expected an object with a 'run' object)"
            )
        ours = {"algo": self.run_id.algo, "suite": self.run_id.suite, "seed": self.run_id.seed}
        theirs = {key: old.get(key) for key in ours}
        if theirs != ours:
            raise ResumeMismatchError(
                f"{path}: the config of the run {_run_name(theirs)}, not of {_run_name(ours)}: a run resumes "
                "under its own path (its records would be mixed with another run's), or --overwrite"
            )
        self._was_dirty = bool(old.get("git_dirty"))
        recorded = old.setdefault("run", {})
        recorded["update_threads"] = _update_threads_of_record(recorded, self.run_cfg.torch_threads)
        if not self.run_cfg.update_threads:
            self.run_cfg.update_threads = recorded["update_threads"]
        new = json.loads(json.dumps(self.config_record(), default=str))
        diffs = []
        for key in ("profile", "device"):
            if old.get(key) != new[key]:
                diffs.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
        changed = _suite_changes(old, new)
        if changed:
            raise ResumeMismatchError(
                f"{self.dir}: --resume of a run whose suite {self.run_id.suite!r} changed since it started: "
                f"{'; '.join(changed)}; its records hold the old suite's tasks and references, so it "
                "resumes only with the suite's code of then, or starts again with --overwrite"
            )
        for section, config in (("run", self.run_cfg), ("algo_config", self.algo_config)):
            before, after = old.get(section, {}), new[section]
            if not isinstance(before, dict):
                raise ResultsError(f"{path}: '{section}' is not an object")
            # a setting added to the code after the run was made, left at its default, is no change
            # (new settings default to the behaviour from before they existed)
            defaults = json.loads(json.dumps(asdict(type(config)()), default=str))
            for key in sorted(set(before) | set(after)):
                if key in RESUMABLE_CHANGES and section == "run":
                    continue
                if key not in before and key in defaults and after.get(key) == defaults[key]:
                    continue
                if before.get(key) != after.get(key):
                    diffs.append(f"{key} {before.get(key)!r} -> {after.get(key)!r}")
        old_budget, new_budget = recorded.get("budget_steps"), self.run_cfg.budget_steps
        if old_budget is not None and (isinstance(old_budget, bool) or not isinstance(old_budget, int)):
            raise ResultsError(f"{path}: run.budget_steps is {old_budget!r}, not an integer")
        if old_budget is not None and new_budget < old_budget:
            diffs.append(f"budget_steps {old_budget} -> {new_budget} (only a longer budget can resume)")
        if diffs:
            raise ResumeMismatchError(
                f"{self.dir}: --resume with settings that differ from the run's: {'; '.join(diffs)}; "
                "resume with the original settings (a longer budget_steps or another num_workers is "
                "accepted; update_threads left unset keeps the run's) or --overwrite"
            )
        if self.finished and old_budget is not None and new_budget > old_budget:
            self._extend = True  # continue to the new budget (the done marker goes in _set_up)
            self.finished = False

    def _read_checkpoint(self) -> dict[str, Any]:
        """The checkpoint to resume from, its fields checked (reads only).

        Raises ``ResultsError`` naming the file: unreadable, or not a checkpoint this runner wrote
        (a field missing or of the wrong kind).
        """
        path = self.dir / CHECKPOINT
        state = load_checkpoint(path, self.device)
        missing = [k for k in CHECKPOINT_FIELDS if not isinstance(state, dict) or k not in state]
        if missing:
            raise ResultsError(f"{path}: not a checkpoint of a run (missing {', '.join(missing)})")
        try:
            for key in ("iteration", "env_steps", "next_eval_mark", "next_checkpoint_mark"):
                int(state[key])
            float(state["wall_time_s"])
            np.random.default_rng().bit_generator.state = json.loads(state["numpy_rng"])
            rng_state = state["torch_rng"]
            if not isinstance(rng_state, torch.Tensor) or rng_state.dtype != torch.uint8:
                raise TypeError("torch_rng is not a uint8 tensor")
            if rng_state.numel() != torch.get_rng_state().numel():
                raise ValueError(
                    f"torch_rng holds {rng_state.numel()} bytes, not {torch.get_rng_state().numel()}"
                )
        except (TypeError, ValueError, KeyError) as exc:
            raise ResultsError(f"{path}: malformed checkpoint ({type(exc).__name__}: {exc})") from None
        # torch restores generator states from CPU byte tensors, whatever map_location moved them to
        state["torch_rng"] = state["torch_rng"].cpu()
        if "cuda_rng" in state:
            state["cuda_rng"] = [t.cpu() for t in state["cuda_rng"]]
        return state

    def _check_records(self, state: dict[str, Any] | None, kept: dict[str, Any]) -> None:
        """Refuse to resume a run whose records do not reach its checkpoint (reads only).

        With a checkpoint at iteration i, progress.csv must hold iterations 1..i and eval.csv every
        evaluation mark before the checkpoint's next one (0, E, 2E, ...): a missing or emptied CSV would
        otherwise be restarted and those rows lost for good. Without a checkpoint, progress.csv must not
        go on past the iteration that reached the first checkpoint mark (the checkpoint was written then:
        it is missing, not yet due), and a finished run must have one.
        """
        progress, evals = kept["progress.csv"], kept["eval.csv"]
        fix = "restore it, or pass --overwrite to start the run again"
        if state is None:
            first = self.run_cfg.checkpoint_every_steps
            # the iterations at or past the first mark (none is kept): a checkpoint followed the first
            past = kept_rows(self.dir / "progress.csv", lambda r: int(r["env_steps"]) >= first)
            finished = self.finished or self._extend
            if finished or (past is not None and len(past[1]) > 1):
                done = "finished" if finished else f"went past its first checkpoint at {first} env steps"
                raise ResultsError(f"{self.dir / CHECKPOINT}: missing, though the run {done}; {fix}")
            return
        it, next_eval = int(state["iteration"]), int(state["next_eval_mark"])
        iterations = [int(r["iteration"]) for r in (progress[1] if progress else [])]
        if iterations != list(range(1, it + 1)):
            have = f"iterations {iterations[0]}..{iterations[-1]}" if iterations else "no rows"
            raise ResultsError(
                f"{self.dir / 'progress.csv'}: {have} where the checkpoint needs 1..{it}; {fix}"
            )
        try:
            marks = {int(r["mark"]) for r in (evals[1] if evals else [])}
        except ValueError as exc:
            raise ResultsError(f"{self.dir / 'eval.csv'}: a malformed mark ({exc})") from None
        needed = set(range(0, next_eval, self.run_cfg.eval_every_steps))
        if not needed <= marks:
            raise ResultsError(
                f"{self.dir / 'eval.csv'}: no evaluation at mark(s) "
                f"{', '.join(map(str, sorted(needed - marks)[:5]))} before the checkpoint; {fix}"
            )

    def _set_up(self, rng: np.random.Generator) -> tuple[MetaLearner, tuple[int, int, float, int, int]]:
        """Build the learner (restored when resuming) and bring the directory to the resume point.

        Reads and checks everything first (the checkpoint, both CSVs, the learner's state and
        storage), and only then writes: the done marker of an extended run goes, the CSVs are cut back
        to the checkpoint, config.json is written. The one earlier change is the learner's own, last
        in its ``load_state_dict``: storage files cut back to the checkpoint's rows (PEARL's replay;
        rows written after the checkpoint, which a resume drops anyway). A storage directory the
        learner created is removed again if the setup fails. Returns (learner, (iteration, env steps,
        wall seconds, next evaluation mark, next checkpoint mark)).
        """
        cfg = self.run_cfg
        validation_split(self.suite, cfg.validation_tasks)  # raises on a split the suite cannot give
        torch.manual_seed(self.run_id.seed)
        counters: tuple[int, int, float, int, int] = (0, 0, 0.0, 0, cfg.checkpoint_every_steps)
        state, kept = None, {}
        if self.resuming and (self.dir / CHECKPOINT).exists():
            state = self._read_checkpoint()
            counters = (
                int(state["iteration"]),
                int(state["env_steps"]),
                float(state["wall_time_s"]),
                int(state["next_eval_mark"]),
                int(state["next_checkpoint_mark"]),
            )
        it = counters[0]
        if self.resuming:
            kept = {
                "progress.csv": kept_rows(self.dir / "progress.csv", lambda r: int(r["iteration"]) <= it),
                "eval.csv": kept_rows(
                    self.dir / "eval.csv", lambda r: int(r["iteration"]) < it, EVAL_COLUMNS
                ),
            }
            self._check_records(state, kept)
        storage = self.dir / "storage"
        had_storage = storage.exists()
        try:
            try:
                learner = self.learner_cls(self.suite.spec(), self.algo_config, self.device, storage)
            except ValueError as exc:  # metarl_protocol.storage: an unreadable or mismatched header
                if not self.resuming:
                    raise
                raise ResultsError(f"{self.dir}: cannot reopen the run's storage ({exc})") from None
            if state is not None:
                load_learner_state(
                    learner,
                    state["learner"],
                    f"{self.dir / CHECKPOINT}: does not restore this run's {self.run_id.algo} learner",
                )
                rng.bit_generator.state = json.loads(state["numpy_rng"])
                torch.set_rng_state(state["torch_rng"])
                if "cuda_rng" in state and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(state["cuda_rng"])
        except BaseException:
            if not had_storage:  # a storage directory the learner created for nothing
                shutil.rmtree(storage, ignore_errors=True)
            raise
        # -- everything checked: write
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._extend:
            (self.dir / DONE_MARKER).unlink()
        for name, rows in kept.items():
            if rows is not None:
                write_csv_atomic(self.dir / name, *rows)
        record = self.config_record()
        # dirty if any start or resume of the run was from a modified checkout (the commit is the latest)
        record["git_dirty"] = self._was_dirty or record["git_dirty"]
        write_json(self.dir / "config.json", record)
        return learner, counters

    def config_record(self) -> dict[str, Any]:
        """The run's ``config.json``: identity, budget (env steps), resolved harness and method
        settings, suite facts (``suite_info``), each split's reference returns (those the suite has),
        package versions, the method's and the suite's entry points and the packages that register them
        (``algo_source``, ``suite_source``),
        git commit and dirtiness, and the command line."""
        held_out = ("validation",) if self.run_cfg.validation_tasks else ()  # a tuning run's split
        refs = {s: self.suite.reference_returns(s) for s in (*self.suite.splits(), *held_out)}
        return {
            "algo": self.run_id.algo,
            "suite": self.run_id.suite,
            "seed": self.run_id.seed,
            "profile": self.run_id.profile,
            "device": self.run_id.device,
            "budget_steps": self.run_cfg.budget_steps,
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
                "tasks_sha256": tasks_fingerprint(self.suite),
            },
            "reference_returns": {s: asdict(r) for s, r in refs.items() if r is not None},
            "versions": package_versions(),
            "algo_source": algorithm_source(self.run_id.algo),  # a plugin's package and version
            "suite_source": suite_source(self.run_id.suite),
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "command": sys.argv,
        }

    # -- the loop ----------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Train (or resume) to the env-step budget, evaluate, and return the summary.

        The run directory is locked while this process runs it (``flock`` on the directory itself,
        released when the process ends, however it ends): a second process on the same run, such as a
        ``--resume`` while the run still trains or two sweeps on one ``--out``, is refused with a
        ``ResultsError`` before it reads or writes anything more.
        """
        if self.finished:
            return self._summary_from_disk()
        with contextlib.ExitStack() as locks:
            if self.dir.exists():
                locks.callback(os.close, self._lock())
            return self._execute(locks)

    def _lock(self) -> int:
        """An exclusive ``flock`` on the run directory; the descriptor that holds it (close to release)."""
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResultsError(
                f"{self.dir}: in use by another process running this run (it holds the run's lock); wait "
                "for it to end or stop it, then --resume"
            ) from None
        return fd

    def _execute(self, locks: contextlib.ExitStack) -> dict[str, Any]:
        locked = self.dir.exists()
        set_intra_op_threads(self.run_cfg.torch_threads)
        cfg, suite = self.run_cfg, self.suite
        rng = np.random.default_rng(self.run_id.seed)
        aside = None
        if self.replacing:  # --overwrite: the old run steps aside until the new one has started
            aside = Path(tempfile.mkdtemp(prefix=f".{self.dir.name}.replaced-", dir=self.dir.parent))
            self.dir.rename(aside)  # onto the new empty directory (POSIX rename)
        try:
            learner, (it, env_steps, wall, next_eval, next_ckpt) = self._set_up(rng)
            if aside is not None or not locked:  # a new directory: this process's from now on
                locks.callback(os.close, self._lock())
            sampler = TrialSampler(suite, num_workers=processes_used(suite, cfg))
        except BaseException:
            if aside is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                aside.rename(self.dir)
            raise
        if aside is not None:
            # this run's old copy, and any left by an overwrite that was killed while setting up
            for old in self.dir.parent.glob(f".{self.dir.name}.replaced-*"):
                shutil.rmtree(old)
            self.replacing = False

        progress_log = CsvLog(self.dir / "progress.csv")
        eval_log = CsvLog(self.dir / "eval.csv", EVAL_COLUMNS)
        train_pool, validation = validation_split(suite, cfg.validation_tasks)
        ctx = HarnessContext(suite, sampler, rng, self.device, train_pool, cfg.torch_threads)
        updating = update_threads(cfg)
        ctx.env_steps = env_steps
        bar = _progress_bar(cfg.budget_steps, env_steps, self.run_id, enabled=self.progress)
        last_eval: float | None = None
        t0 = time.perf_counter() - wall
        periodic = {
            "test": suite.periodic_eval_tasks(cfg.eval_tasks),
            "train": suite.periodic_train_eval_tasks(cfg.eval_tasks),
        }
        periodic = {k: v for k, v in periodic.items() if v}
        if validation:  # a tuning run: evaluations only on the held-out training tasks
            periodic = {"validation": validation[: cfg.eval_tasks]}
        try:
            while True:
                # every mark reached so far (several if one iteration crossed more than one)
                while next_eval < cfg.budget_steps and next_eval <= ctx.env_steps:
                    rows = self._evaluate(learner, sampler, periodic, it, ctx.env_steps, next_eval)
                    eval_log.write(rows)
                    last_eval = headline(rows, suite, rows[0]["split"])["return"] if rows else None
                    next_eval += cfg.eval_every_steps
                if ctx.env_steps >= cfg.budget_steps:
                    break
                before = ctx.env_steps
                with intra_op_threads(updating):  # its sampling goes back to torch_threads
                    metrics = learner.train_step(ctx)
                if ctx.env_steps == before:
                    raise RuntimeError(
                        f"{self.run_id.algo}: train_step consumed no environment steps; the budget counts "
                        "env steps, so every iteration must sample trials through ctx.sample_trials"
                    )
                it += 1
                wall = time.perf_counter() - t0
                row = {"iteration": it, "env_steps": ctx.env_steps, "wall_time_s": round(wall, 3)}
                progress_log.write([row | metrics])
                if ctx.env_steps >= next_ckpt or ctx.env_steps >= cfg.budget_steps:
                    while next_ckpt <= ctx.env_steps:
                        next_ckpt += cfg.checkpoint_every_steps
                    progress_log.sync()  # the records a checkpoint needs are on disk before it is
                    eval_log.sync()
                    self._checkpoint(learner, rng, it, ctx.env_steps, wall, next_eval, next_ckpt)
                bar.update(ctx.env_steps - before)
                bar.set_postfix(it=it, eval=_fmt(last_eval), refresh=False)
            bar.close()
            final_rows = self._evaluate(
                learner, sampler, self._final_tasks(validation), it, ctx.env_steps, cfg.budget_steps
            )
            eval_log.write(final_rows)
            (self.dir / DONE_MARKER).write_text(f"finished {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        finally:
            bar.close()
            progress_log.close()
            eval_log.close()
            sampler.close()
        return self._summary(final_rows)

    def eval_seed(self, mark: int) -> int:
        """Seed of the evaluation at env-step ``mark``: a function of (run seed, mark) only."""
        return int(np.random.SeedSequence([self.run_id.seed, mark, 0xE7A1]).generate_state(1)[0])

    def _evaluate(
        self,
        learner: MetaLearner,
        sampler: TrialSampler,
        tasks_by_split: dict[str, list[Task]],
        iteration: int,
        env_steps: int,
        mark: int,
    ) -> list[dict[str, Any]]:
        """Evaluate at ``mark`` in isolation: own torch RNG stream, own env seeds, an evaluation agent."""
        rows: list[dict[str, Any]] = []
        seed = self.eval_seed(mark)
        devices = [self.device] if self.device.type == "cuda" else []  # the CPU generator is always forked
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(seed)
            agent = learner.make_agent(evaluation=True)
            for split, tasks in tasks_by_split.items():
                rows += evaluate(
                    agent,
                    sampler,
                    tasks,
                    split=split,
                    iteration=iteration,
                    env_steps=env_steps,
                    mark=mark,
                    seed=seed,
                    batch_size=self.run_cfg.eval_batch,
                )
        return rows

    def _final_tasks(self, validation: list[Task]) -> dict[str, list[Task]]:
        """The final tasks of the protocol (a tuning run: its validation tasks only);
        ``final_eval_max_tasks`` > 0 keeps that many per split."""
        tasks = {"validation": validation} if validation else self.suite.final_eval_tasks()
        cap = self.run_cfg.final_eval_max_tasks
        if cap <= 0:
            return tasks
        keep = {
            s: np.unique(np.linspace(0, len(ts) - 1, min(cap, len(ts))).round().astype(int))
            for s, ts in tasks.items()
        }
        return {s: [ts[i] for i in keep[s]] for s, ts in tasks.items()}

    def _checkpoint(
        self,
        learner: MetaLearner,
        rng: np.random.Generator,
        iteration: int,
        env_steps: int,
        wall: float,
        next_eval: int,
        next_ckpt: int,
    ) -> None:
        state = {
            "iteration": iteration,
            "env_steps": env_steps,
            "wall_time_s": wall,
            "next_eval_mark": next_eval,
            "next_checkpoint_mark": next_ckpt,
            "learner": learner.state_dict(),
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        save_checkpoint(self.dir / CHECKPOINT, state)

    # -- summaries ---------------------------------------------------------------------------------
    def _summary(self, final_rows: list[dict[str, Any]]) -> dict[str, Any]:
        last = final_rows[0] if final_rows else {}
        return {
            "dir": str(self.dir),
            "budget_steps": self.run_cfg.budget_steps,
            "env_steps": int(last.get("env_steps", 0)),
            "iterations": int(last.get("iteration", 0)),
            "table": summarize(final_rows, self.suite),
            "headline": {s: headline(final_rows, self.suite, s) for s in {r["split"] for r in final_rows}},
        }

    def _summary_from_disk(self) -> dict[str, Any]:
        import pandas as pd

        path = self.dir / "eval.csv"
        try:
            df = pd.read_csv(path, keep_default_na=False)
            final = df[df["mark"] == df["mark"].max()].to_dict("records")
            return self._summary(final)
        except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ResultsError(f"{path}: cannot read the finished run's evaluation ({first})") from None


def _suite_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two config records' suite facts (the ``suite_info`` keys both recorded, its
    free-text description aside; ``tasks_sha256`` is a hash of every split's tasks) and reference returns
    (random, oracle) of the test split and of every other split both records hold (older records lack
    some splits, and a run made before tuning-only validation references may hold one)."""
    changes = []
    before, after = old.get("suite_info"), new["suite_info"]
    if isinstance(before, dict):
        for key in sorted((set(before) & set(after)) - {"description"}):
            if before[key] != after[key]:
                changes.append(f"suite_info.{key} {before[key]!r} -> {after[key]!r}")
    refs = [old.get("reference_returns"), new["reference_returns"]]
    refs = [r if isinstance(r, dict) else {} for r in refs]
    if "random" in refs[0]:  # written before references were kept per split: the test split's
        refs[0] = {"test": refs[0]}
    for split in sorted((set(refs[0]) & set(refs[1])) | {"test"}):
        pair = [
            (r[split].get("random"), r[split].get("oracle")) if isinstance(r.get(split), dict) else None
            for r in refs
        ]
        if pair[0] != pair[1]:
            changes.append(f"reference_returns.{split} (random, oracle) {pair[0]} -> {pair[1]}")
    return changes


def _run_name(ident: dict[str, Any]) -> str:
    """``rl2 on point-nav, seed 0`` from a run's algo / suite / seed."""
    return f"{ident.get('algo')} on {ident.get('suite')}, seed {ident.get('seed')}"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _progress_bar(total: int, start: int, spec: RunId, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        desc=f"{spec.algo}/{spec.suite}/seed{spec.seed}",
        unit="step",
        unit_scale=True,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
    )
