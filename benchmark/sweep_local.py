"""The local sweep backend: up to ``--jobs`` runs at once, each a child process on this machine.

A run killed by a signal (the OOM killer, a ``kill -9``) is started again with ``--resume`` up to
``--max-retries`` times; a run that exits with an error of its own is reported and not retried.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmark.sweep import (
    RunProcess,
    RunResult,
    RunSpec,
    SweepProgress,
    failure_reason,
    first_attempt_flags,
    read_progress_tail,
    run_argv,
)


def run_local(specs: list[RunSpec], args: argparse.Namespace, progress: SweepProgress) -> list[RunResult]:
    """Run every spec (at most ``args.jobs`` at once) and return one ``RunResult`` each, in spec order.

    Never raises for a failing run; ``KeyboardInterrupt`` kills the running children and propagates.
    """
    out = Path(args.out)
    pending = list(specs)
    running: dict[RunSpec, tuple[RunProcess, int]] = {}  # spec -> (process, attempt)
    results: dict[RunSpec, RunResult] = {}

    def start(spec: RunSpec, attempt: int) -> None:
        flags = first_attempt_flags(args) if attempt == 1 else ["--resume"]
        header = f"attempt {attempt}" + (
            " (retry after the previous attempt was killed)" if attempt > 1 else ""
        )
        proc = RunProcess(run_argv(spec, args, out, flags), spec.log_path(out), header)
        running[spec] = (proc, attempt)
        progress.update(spec, status="running", attempt=attempt)

    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                start(pending.pop(0), 1)
            for spec, (proc, attempt) in list(running.items()):
                tail = read_progress_tail(spec.run_dir(out) / "progress.csv")
                if tail:
                    progress.update(spec, iteration=tail[0], env_steps=tail[1])
                code = proc.poll()
                if code is None:
                    continue
                del running[spec]
                stdout, stderr = proc.finish()
                if code == 0:
                    results[spec] = RunResult(spec, "done", attempts=attempt, summary=stdout)
                    progress.update(spec, status="done")
                    if stdout.strip():
                        progress.write(stdout)
                elif code < 0 and attempt <= args.max_retries:  # killed: continue from its checkpoint
                    progress.write(
                        f"[sweep] {spec.name}: {failure_reason(code, stderr)}; retrying with --resume"
                    )
                    start(spec, attempt + 1)
                else:
                    reason = failure_reason(code, stderr)
                    if code < 0:
                        reason += f" ({attempt} attempts)"
                    results[spec] = RunResult(spec, "failed", reason, attempts=attempt)
                    progress.update(spec, status="failed", reason=reason)
            progress.refresh()
            time.sleep(0.2)
    finally:
        for proc, _ in running.values():  # interrupted: no orphaned writers
            proc.kill()
            proc.finish()
    return [results[s] for s in specs]
