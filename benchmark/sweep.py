"""Sweeps: algos x suites x seeds, each run an independent ``metarl-bench run`` child process.

This module plans a sweep (one ``RunSpec`` per run, with the resources it uses), launches one run
attempt as a child process (``RunProcess``, shared by both backends), shows progress
(``SweepProgress``: one line per run and an overall bar) and reports the outcome (``results_table``).
The backends are separate modules: ``benchmark.sweep_local`` (subprocesses on this machine) and
``benchmark.sweep_ray`` (one Ray task per run; the only module that imports ``ray``).

Failure policy, the same on both backends: a run whose process is killed by a signal (or whose Ray
worker or node dies) is retried up to ``--max-retries`` times, each retry with ``--resume`` so it
continues from its last checkpoint; a run that exits with an error of its own (a traceback, NaN, a
``metarl-bench: error``) is not retried: it is reported with its reason and the other runs go on.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmark.results import DONE_MARKER, run_dir

#: Small per-run files that make up a run's results on the driver (checkpoints may stay where they ran).
RESULT_FILES = ("config.json", "progress.csv", "eval.csv", DONE_MARKER)
#: Where sweeps keep each run's stderr (all attempts), beside the suite directories of ``--out``.
LOG_DIR = "logs"


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep and the resources it uses: CPU cores (the most of its simulator processes, its
    acting threads and its update threads, on ``--resume`` the update threads the run recorded) and GPUs
    (1 with ``--device cuda``)."""

    algo: str
    suite: str
    seed: int
    budget_steps: int
    cpus: int = 1
    gpus: int = 0

    @property
    def name(self) -> str:
        """``<algo>/<suite>/seed<N>``: the run in progress lines, messages and the failure table."""
        return f"{self.algo}/{self.suite}/seed{self.seed}"

    def run_dir(self, out: str | Path) -> Path:
        """The run's directory under the results root ``out``: ``<out>/<suite>/<algo>/seed<N>``."""
        return run_dir(out, self.suite, self.algo, self.seed)

    def log_path(self, out: str | Path) -> Path:
        """The file every attempt's stderr is appended to: ``<out>/logs/<suite>_<algo>_seed<N>.log``."""
        return Path(out) / LOG_DIR / f"{self.suite}_{self.algo}_seed{self.seed}.log"


@dataclass
class RunResult:
    """How a run of a sweep ended: ``status`` is ``done`` or ``failed`` (then ``reason`` says why)."""

    spec: RunSpec
    status: str
    reason: str = ""
    attempts: int = 1
    summary: str = ""  # the run's own stdout (its final-evaluation table)


def run_argv(spec: RunSpec, args: argparse.Namespace, out: str | Path, flags: list[str]) -> list[str]:
    """``metarl-bench run`` arguments of ``spec`` with the sweep's settings, writing under ``out``."""
    argv = ["run", "--algo", spec.algo, "--suite", spec.suite, "--seed", str(spec.seed)]
    argv += ["--profile", args.profile, "--out", str(out), "--device", args.device, "--no-progress"]
    for pair in args.overrides:
        argv += ["--set", pair]
    return argv + flags


def first_attempt_flags(args: argparse.Namespace) -> list[str]:
    """``--resume`` / ``--overwrite`` as the user gave them; retries always use ``--resume``."""
    return (["--resume"] if args.resume else []) + (["--overwrite"] if args.overwrite else [])


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGKILL when the process that started it dies (no orphaned writer)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(137)


class RunProcess:
    """One attempt of a run: ``python -m benchmark run ...`` as a child process.

    Its stdout (the summary) goes to a temporary file, its stderr is appended to ``log``. On Linux the
    child is killed when the launching process dies, so a retry never races an orphaned attempt.
    """

    def __init__(self, argv: list[str], log: Path, header: str) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with log.open("a") as fh:
            fh.write(f"=== {header} ({time.strftime('%Y-%m-%dT%H:%M:%S')}): metarl-bench {' '.join(argv)}\n")
        self._log_offset = log.stat().st_size
        self._err: IO[str] = log.open("a")
        self._out: IO[str] = tempfile.TemporaryFile("w+")
        parent = os.getpid()
        linux = sys.platform.startswith("linux")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmark", *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            preexec_fn=(lambda: _die_with_parent(parent)) if linux else None,  # noqa: PLW1509
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit code once the child ended (negative: killed by that signal), else None."""
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the child if it still runs (``Popen.kill``), then wait until it has ended."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def finish(self) -> tuple[str, str]:
        """(stdout, stderr of this attempt); closes the files. Call once the child ended."""
        self._err.close()
        self._out.seek(0)
        out = self._out.read()
        self._out.close()
        with self.log.open() as fh:
            fh.seek(self._log_offset)
            err = fh.read()
        return out, err


def failure_reason(code: int, stderr: str) -> str:
    """One line saying why a run attempt failed: the CLI's error line, a traceback's last line, or the
    signal that killed it."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("metarl-bench: error:"):
            return line.removeprefix("metarl-bench: error:").strip()
    if lines:
        return lines[-1]
    return f"exit code {code}"


def read_progress_tail(path: Path) -> tuple[int, int] | None:
    """(iteration, env_steps) of the last complete row of a run's progress.csv, or None."""
    try:
        with path.open("rb") as fh:
            header = fh.readline().decode().strip().split(",")
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 4096))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return None
    rows = [r for r in tail.split("\n")[:-1] if r]  # the part after the last newline may be cut
    if not rows or "iteration" not in header or "env_steps" not in header:
        return None
    cells = rows[-1].split(",")
    try:
        return int(cells[header.index("iteration")]), int(cells[header.index("env_steps")])
    except (ValueError, IndexError):
        return None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def collect_files(directory: Path) -> dict[str, bytes]:
    """The ``RESULT_FILES`` present in a run directory, by name."""
    return {name: (directory / name).read_bytes() for name in RESULT_FILES if (directory / name).is_file()}


def store_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write a run's result files (from ``collect_files``, maybe on another node) into ``directory``;
    a ``done`` marker that the files do not include is removed (the run there did not finish)."""
    for name, data in files.items():
        if name in RESULT_FILES:
            write_atomic(directory / name, data)
    if DONE_MARKER not in files:
        (directory / DONE_MARKER).unlink(missing_ok=True)


# -- progress -----------------------------------------------------------------------------------------
@dataclass
class _RunState:
    spec: RunSpec
    status: str = "queued"
    iteration: int = 0
    env_steps: int = 0
    attempt: int = 0
    reason: str = ""
    where: str = ""

    def line(self, width: int) -> str:
        head = f"  {self.spec.name:<{width}}  {self.status:<8}"
        if self.status == "queued":
            return head
        steps = f"it {self.iteration}, {self.env_steps:,}/{self.spec.budget_steps:,} steps"
        extra = f" (attempt {self.attempt}, resumed)" if self.attempt > 1 else ""
        where = f" on {self.where}" if self.where and self.status == "running" else ""
        if self.status == "failed":
            return f"{head}  {steps}{extra}: {self.reason}"
        return f"{head}  {steps}{extra}{where}"


@dataclass
class SweepProgress:
    """One line per run (queued, running with its iteration and steps, done, failed with the reason)
    and an overall bar of env steps over every run's budget.

    On a terminal the block is redrawn in place; otherwise (logs, CI) a run's line is printed when its
    status changes and the whole block every ``interval`` seconds.
    """

    specs: list[RunSpec]
    stream: Any = None
    live: bool | None = None
    interval: float = 60.0
    _states: dict[str, _RunState] = field(default_factory=dict)
    _drawn: int = 0
    _last_block: float = 0.0
    _start: float = 0.0

    def __post_init__(self) -> None:
        self.stream = self.stream or sys.stderr
        if self.live is None:
            self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._states = {s.name: _RunState(s) for s in self.specs}
        self._width = max((len(s.name) for s in self.specs), default=10)
        self._start = self._last_block = time.monotonic()

    def update(self, spec: RunSpec, **changes: Any) -> None:
        """Change a run's ``status``, ``iteration``, ``env_steps``, ``attempt``, ``reason`` or ``where``."""
        state = self._states[spec.name]
        before = (state.status, state.attempt)
        for key, value in changes.items():
            if value is not None:
                setattr(state, key, value)
        if not self.live and (state.status, state.attempt) != before:
            self._print(state.line(self._width))
            if state.status in ("done", "failed"):
                self._print(self.overall())

    def write(self, text: str) -> None:
        """Print ``text`` above the live block."""
        self._clear()
        self._print(text.rstrip("\n"))
        self.refresh(force=True)

    def overall(self) -> str:
        """The overall bar: env steps of every run against the sum of their budgets, with counts."""
        from tqdm import tqdm

        states = list(self._states.values())
        total = sum(s.spec.budget_steps for s in states)
        n = sum(s.spec.budget_steps if s.status == "done" else min(s.env_steps, s.spec.budget_steps)
                for s in states)  # fmt: skip
        counts = {k: sum(s.status == k for s in states) for k in ("done", "running", "queued", "failed")}
        meter = tqdm.format_meter(
            n, total, time.monotonic() - self._start, ncols=100, prefix="sweep", unit="step", unit_scale=True
        )
        return meter + "  " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)

    def block(self) -> list[str]:
        """The block's lines: one per run (in ``specs`` order), then the overall bar."""
        return [s.line(self._width) for s in self._states.values()] + [self.overall()]

    def refresh(self, force: bool = False) -> None:
        """Redraw the block (terminal) or print it if ``interval`` seconds passed (otherwise)."""
        now = time.monotonic()
        if self.live:
            if force or now - self._last_block >= 0.5:  # at most twice a second
                self._last_block = now
                self._clear()
                lines = self.block()
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
                self._drawn = len(lines)
        elif force or now - self._last_block >= self.interval:
            self._last_block = now
            if any(s.status == "running" for s in self._states.values()):
                self._print("\n".join(self.block()))

    def close(self) -> None:
        """Leave the final block on the stream."""
        if self.live:
            self.refresh(force=True)
        else:
            self._print("\n".join(self.block()))

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def results_table(results: list[RunResult]) -> str:
    """The failed runs as a table (run, attempts, reason); empty when none failed."""
    failed = [r for r in results if r.status != "done"]
    if not failed:
        return ""
    width = max(len(r.spec.name) for r in failed)
    lines = [f"{'run':<{width}}  attempts  reason", f"{'-' * width}  --------  ------"]
    lines += [f"{r.spec.name:<{width}}  {r.attempts:>8}  {r.reason}" for r in failed]
    return "\n".join(lines)
