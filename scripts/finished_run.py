"""A finished run, loaded with the settings it recorded: the front shared by the scripts that replay one.

``read_record(run_dir)`` checks that RUN_DIR holds ``config.json`` and ``checkpoint.pt`` and returns the
parsed record (cheap: no torch import, so a script can refuse a run of the wrong method or suite first);
``load_run(run_dir, record, split, device)`` resolves the record's harness and method settings (the ones
in ``config.json``, not today's profile), builds the method's learner with the checkpoint's weights and
picks the tasks of ``split`` (``validation``: the held-out tasks of a tuning run). Both raise
``RunError`` with one line naming what was wrong and what is accepted; the scripts print it and exit 2.

A library module, not a command: ``python -m scripts.finished_run`` says so in one line and exits 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.paths import file_in_the_way, what_is


class RunError(Exception):
    """One line: what is wrong with the run directory or the request, and what is accepted."""


@dataclass
class FinishedRun:
    """A run's learner with its checkpoint's weights, its suite and the tasks of the requested split."""

    learner: Any  # the method's MetaLearner, weights loaded
    config: Any  # the method's config dataclass as recorded
    suite: Any  # benchmark.suites.base.Suite
    tasks: list[Any]  # metarl_protocol.Task of the split
    env_steps: Any  # env steps of the checkpoint ("?" where it does not say)
    finished: bool = True  # the run has its done marker (else the checkpoint is from part-way)

    @property
    def checkpoint_text(self) -> str:
        """ "checkpoint at N env steps", saying so when the run has not finished."""
        return f"checkpoint at {self.env_steps} env steps" + ("" if self.finished else " (an unfinished run)")


def read_record(run_dir: Path) -> dict[str, Any]:
    """config.json of a run directory that also holds checkpoint.pt; keys algo, suite, run, algo_config.

    Raises RunError where a file is missing, the directory or config.json cannot be read (``OSError``:
    no permission, a name too long), or the record is unreadable (not JSON, nested too deep to parse,
    a key missing or of another kind).
    """
    config_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoint.pt"
    try:
        if not config_path.is_file() or not ckpt_path.is_file():
            raise RunError(f"{run_dir}: not a run directory with config.json and checkpoint.pt")
        raw = config_path.read_bytes()
    except OSError as exc:
        where = exc.filename if exc.filename is not None else run_dir
        raise RunError(
            f"{where}: cannot be read ({exc.strerror or type(exc).__name__}); expected a readable run "
            "directory with config.json and checkpoint.pt"
        ) from None
    try:
        record = json.loads(raw)  # bytes: bad UTF-8 is a ValueError here
        return {
            "algo": str(record["algo"]),
            "suite": str(record["suite"]),
            "run": dict(record["run"]),
            "algo_config": dict(record["algo_config"]),
        }
    except RecursionError:
        raise RunError(
            f"{config_path}: unreadable run config (nested too deep to parse; a run writes a flat record)"
        ) from None
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: JSONDecodeError too
        raise RunError(f"{config_path}: unreadable run config ({type(exc).__name__}: {exc})") from None


def load_run(run_dir: Path, record: dict[str, Any], split: str, device_name: str) -> FinishedRun:
    """The run's learner (recorded settings, checkpoint weights on ``device_name``) and ``split``'s tasks.

    ``split``: one of the suite's splits, or ``validation`` for a tuning run (``--set validation_tasks=N``).
    Raises RunError for an unknown device, algorithm, suite or split, a record the config classes reject,
    or an unreadable checkpoint.
    """
    import torch

    from benchmark.cli import check_device
    from benchmark.config import HarnessConfig, from_record
    from benchmark.errors import ResultsError, UsageError
    from benchmark.registry import load_algorithm, load_suite
    from benchmark.results import load_checkpoint
    from benchmark.runner import validation_split

    try:
        check_device(device_name)
        device = torch.device(device_name)
        algo = load_algorithm(record["algo"])
        suite = load_suite(record["suite"])
    except UsageError as exc:
        raise RunError(str(exc)) from None
    except ValueError as exc:  # RegistryError: one line
        raise RunError(f"{run_dir}: {exc}") from None
    try:
        run_cfg = from_record(HarnessConfig, record["run"])
        config = from_record(algo.Config, record["algo_config"])
    except ValueError as exc:  # ConfigError: one line
        raise RunError(f"{run_dir / 'config.json'}: {exc}") from None
    try:
        state = load_checkpoint(run_dir / "checkpoint.pt", device)
    except ResultsError as exc:  # one line that names the file
        raise RunError(str(exc)) from None
    if split == "validation":
        if not run_cfg.validation_tasks:
            raise RunError(f"--split validation: {run_dir} was not a tuning run (accepted: test, ood, train)")
        try:
            tasks = validation_split(suite, run_cfg.validation_tasks)[1]
        except ValueError as exc:  # a recorded validation_tasks the suite cannot hold out
            raise RunError(f"--split validation: {run_dir / 'config.json'} records {exc}") from None
    elif split in suite.splits():
        tasks = suite.tasks(split)
    else:
        raise RunError(
            f"--split {split!r}: suite {suite.name} has {', '.join(suite.splits())} (and validation)"
        )
    learner = _restore(algo, suite, config, device, run_dir, state)
    finished = (run_dir / "done").exists()
    return FinishedRun(learner, config, suite, list(tasks), state.get("env_steps", "?"), finished)


def _restore(algo: Any, suite: Any, config: Any, device: Any, run_dir: Path, state: Any) -> Any:
    """The learner with the checkpoint's state. A method that keeps files under ``storage/`` (PEARL's and
    VariBAD's buffers) restores them from a temporary copy, so the run's own files are never opened for
    writing (the copy is the whole directory: a paper-budget replay is gigabytes, and takes that much
    room in the temporary directory while it loads). Raises RunError when the checkpoint or the storage
    is not this method's, naming the run's own files."""
    import shutil
    import tempfile

    from benchmark.errors import ResultsError
    from benchmark.results import load_learner_state

    if not isinstance(state, dict) or "learner" not in state:
        raise RunError(f"{run_dir / 'checkpoint.pt'}: not a checkpoint of a run (no learner state)")
    name = getattr(algo, "name", "") or "method's"
    with tempfile.TemporaryDirectory(prefix="metarl-run-") as tmp:
        storage = Path(tmp) / "storage"
        try:
            if (run_dir / "storage").is_dir():
                shutil.copytree(run_dir / "storage", storage)
            learner = algo(suite.spec(), config, device, storage)
            load_learner_state(
                learner,
                state["learner"],
                f"{run_dir / 'checkpoint.pt'}: does not restore the run's {name} learner",
            )
        except (ResultsError, ValueError, OSError) as exc:  # ValueError: a storage header
            blocking = _storage_in_the_way(run_dir / "storage", storage, exc)
            if blocking is not None:
                raise RunError(
                    f"{blocking}: is {what_is(blocking)}; expected a directory (the run's storage, where "
                    f"the {name} learner keeps its files)"
                ) from None
            raise RunError(
                " ".join(str(exc).replace(str(storage), str(run_dir / "storage")).split())
            ) from None
    return learner


def _storage_in_the_way(own: Path, copy: Path, exc: Exception) -> Path | None:
    """The file or broken symbolic link in the run's storage directory ``own`` (``storage`` itself or
    one under it) where the learner needed a directory, if that is what made restoring from ``copy``
    fail: the path ``exc`` names (an ``OSError``'s, mapped from the copy back to the run), else
    ``storage`` itself. None where nothing is in the way (the failure is another one)."""
    candidates = [own]
    named = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and named is not None and Path(named).is_relative_to(copy):
        candidates.insert(0, own / Path(named).relative_to(copy))
    for path in candidates:
        blocking = file_in_the_way(path)
        if blocking is not None and blocking.is_relative_to(own):
            return blocking
    return None


if __name__ == "__main__":
    import sys

    print(
        "python -m scripts.finished_run: error: a library module, not a command (accepted: python -m "
        "scripts.maml_few_shot RUN_DIR, python -m scripts.cheetah_posture RUN_DIR)",
        file=sys.stderr,
    )
    sys.exit(2)
