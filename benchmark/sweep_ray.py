"""The Ray sweep backend: one Ray task per run, on an existing cluster (``--address``) or a local one.

Each task asks Ray for the resources its run uses (``RunSpec.cpus``, ``RunSpec.gpus``) and runs
``metarl-bench run`` as a child process on its node, writing under the driver's ``--out`` path, or,
when ``METARL_BENCH_NODE_OUT`` is set on the node (a node-local disk), under that directory
(``node_out``).

* Retries: a task whose worker or node dies is retried by Ray (``max_retries``), and so is one whose
  run process was killed by a signal (``RunKilled``, the only exception in ``retry_exceptions``). A
  retry on the node that holds the run's directory continues it with ``--resume`` from its last
  checkpoint; on another node without a shared filesystem it starts the run again (same results).
  A run that exits with an error of its own returns normally with its reason: Ray never retries it.
* Results: every task returns its run's ``config.json``, ``progress.csv``, ``eval.csv`` and ``done``
  as bytes, and the driver writes them under ``--out`` (atomically), so the driver holds every run's
  results with or without a shared filesystem; checkpoints stay where the run ran.

This is the only module that imports ``ray``; ``metarl-bench list`` and ``run`` never import it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmark.errors import UsageError
from benchmark.sweep import (
    RunProcess,
    RunResult,
    RunSpec,
    SweepProgress,
    collect_files,
    failure_reason,
    first_attempt_flags,
    read_progress_tail,
    run_argv,
    store_files,
    write_atomic,
)

#: A node-local results root for the runs that node executes (no shared filesystem).
NODE_OUT_ENV = "METARL_BENCH_NODE_OUT"
#: Seconds ``probe`` waits for the head node's port to accept a connection.
PROBE_TIMEOUT_S = 5.0
RAY_EXTRA = "pip install 'metarl-bench[ray]' (or ray==2.60.0 with the pins of constraints.txt)"


class RunKilled(RuntimeError):
    """The run's process was killed by a signal (e.g. the OOM killer): Ray retries the task."""


def require_ray() -> None:
    """Raise ``UsageError`` (one line) when the ``ray`` package is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(
            f"--backend ray needs the ray package: {RAY_EXTRA}; or use --backend local"
        ) from None


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ``UsageError`` (one line) when nothing accepts a TCP connection at ``address`` (``HOST:PORT``
    or ``ray://HOST:PORT``) within ``timeout`` seconds: ``ray.init`` would retry for minutes, printing
    warnings, instead of failing."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise UsageError(
            f"could not connect to the Ray cluster at {address}: nothing answers there within {timeout:g} s "
            f"({why}); expected the address of a running head node (`ray start --head` prints it)"
        ) from None


def connect(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``), or start a
    local one when it is None. Returns True. Raises ``UsageError`` when the cluster cannot be reached."""
    import logging

    import ray

    if address not in (None, "auto"):
        probe(address)
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "(local)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"could not connect to the Ray cluster {where}: {first}") from None
    return True


def check_resources(specs: list[RunSpec], address: str | None) -> None:
    """When no live node of the cluster ``connect`` joined has the CPUs and GPUs one of ``specs`` asks
    for, Ray keeps that task waiting without a word. On the local cluster this sweep started (``address``
    None) no node can ever come: raise ``UsageError`` (one line). On a cluster joined by ``--address`` an
    autoscaler may add one (a head with ``--num-cpus=0`` that scales workers on demand is common): say so
    on stderr in one line and go on."""
    import ray

    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - a client that cannot list nodes: Ray schedules (or waits) as before
        return
    for spec in specs:
        if not any(n.get("CPU", 0) >= spec.cpus and n.get("GPU", 0) >= spec.gpus for n in nodes):
            where = f"at {address}" if address else "(local)"
            need = f"{spec.cpus} CPU" + (f" and {spec.gpus} GPU" if spec.gpus else "")
            sizes = sorted({f"{n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for n in nodes})
            hint = (
                "; --device cpu needs no GPU"
                if spec.gpus
                else "; fewer num_workers, torch_threads or update_threads (--set) need fewer CPUs"
            )
            message = (
                f"no node of the Ray cluster {where} can run {spec.name}: it needs {need} on one node; "
                f"the nodes have {'; '.join(sizes) or 'nothing'}"
            )
            if address is None:
                raise UsageError(message + hint)
            print(
                f"sweep: warning: {message} now; its runs wait until the cluster adds such a node (an "
                "autoscaler), Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            return


def node_out(out: str | Path) -> Path:
    """Where this node writes the runs of a sweep whose driver writes under ``out`` (absolute): ``out``
    itself, or ``$METARL_BENCH_NODE_OUT/<out without its leading />`` when that variable is set here
    (distinct sweeps stay apart, and a resumed sweep finds its runs)."""
    local = os.environ.get(NODE_OUT_ENV)
    return Path(local) / Path(out).relative_to(Path(out).anchor) if local else Path(out)


class _Monitor:
    """Driver-side view of what the tasks are doing (progress only; nothing depends on it)."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}

    def started(self, name: str, pid: int, node: str) -> int:
        entry = self.runs.setdefault(name, {"attempt": 0})
        entry.update(attempt=entry["attempt"] + 1, pid=pid, node=node, iteration=0, env_steps=0)
        return entry["attempt"]

    def progress(self, name: str, iteration: int, env_steps: int) -> None:
        self.runs.setdefault(name, {"attempt": 1}).update(iteration=iteration, env_steps=env_steps)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.runs


def execute(spec: RunSpec, args: argparse.Namespace, out: str, sweep_id: str, monitor: Any) -> dict[str, Any]:
    """The body of a run's Ray task, on its node: run it to the end and return its result files.

    An earlier attempt of the same sweep on this node (its log names the sweep) makes this one a
    retry, run with ``--resume``. Raises ``RunKilled`` when the run's process is killed by a signal.
    """
    import ray

    root = node_out(out)
    node = ray.get_runtime_context().get_node_id()[:8]
    log = spec.log_path(root)
    tag = f"sweep {sweep_id}"
    retry = log.is_file() and tag in log.read_text(errors="replace")
    flags = ["--resume"] if retry else first_attempt_flags(args)
    header = f"{tag}, {'retry' if retry else 'attempt'} on node {node}, pid {os.getpid()}"
    proc = RunProcess(run_argv(spec, args, root, flags), log, header)
    monitor.started.remote(spec.name, os.getpid(), node)
    progress = spec.run_dir(root) / "progress.csv"
    while (code := proc.poll()) is None:
        time.sleep(0.5)
        tail = read_progress_tail(progress)
        if tail:
            monitor.progress.remote(spec.name, *tail)
    stdout, stderr = proc.finish()
    if code < 0:
        raise RunKilled(failure_reason(code, stderr))
    return {
        "code": code,
        "reason": failure_reason(code, stderr) if code else "",
        "stdout": stdout,
        "files": collect_files(spec.run_dir(root)),
        "log": log.read_bytes()[-(1 << 20) :],
    }


def run_ray(specs: list[RunSpec], args: argparse.Namespace, progress: SweepProgress) -> list[RunResult]:
    """Submit one task per spec to the cluster ``connect`` joined, and collect one ``RunResult`` each.

    Never raises for a failing run; ``KeyboardInterrupt`` cancels the tasks and propagates. Call
    ``ray.shutdown()`` afterwards (``cli`` does).
    """
    import ray

    out = Path(args.out).resolve()
    sweep_id = uuid.uuid4().hex[:12]
    monitor = ray.remote(num_cpus=0)(_Monitor).remote()
    task = ray.remote(execute)
    refs: dict[Any, RunSpec] = {}
    for spec in specs:
        ref = task.options(
            num_cpus=spec.cpus,
            num_gpus=spec.gpus,
            max_retries=args.max_retries,
            retry_exceptions=[RunKilled],
            name=f"metarl-bench {spec.name}",
        ).remote(spec, args, str(out), sweep_id, monitor)
        refs[ref] = spec
    results: dict[RunSpec, RunResult] = {}
    snapshot: dict[str, dict[str, Any]] = {}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            try:
                snapshot = ray.get(monitor.snapshot.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the monitor only feeds the display
                pass
            for spec in specs:
                info = snapshot.get(spec.name)
                if info and spec not in results:
                    progress.update(
                        spec,
                        status="running",
                        attempt=info["attempt"],
                        iteration=info.get("iteration"),
                        env_steps=info.get("env_steps"),
                        where=f"node {info.get('node')}",
                    )
            for ref in ready:
                spec = refs[ref]
                attempts = snapshot.get(spec.name, {}).get("attempt", 1)
                results[spec] = _collect(ref, spec, out, attempts, progress)
            progress.refresh()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return [results[s] for s in specs]


def _collect(ref: Any, spec: RunSpec, out: Path, attempts: int, progress: SweepProgress) -> RunResult:
    """The result of a finished task: its files written under the driver's ``out``, its status shown."""
    import ray

    try:
        value = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        reason = f"{cause} ({attempts} attempts)" if isinstance(cause, RunKilled) else _one_line(cause)
        progress.update(spec, status="failed", reason=reason)
        return RunResult(spec, "failed", reason, attempts)
    except ray.exceptions.RayError as exc:  # worker or node died on every attempt, cancelled, ...
        reason = f"{type(exc).__name__}: {_one_line(exc)} ({attempts} attempts)"
        progress.update(spec, status="failed", reason=reason)
        return RunResult(spec, "failed", reason, attempts)
    store_files(spec.run_dir(out), value["files"])
    write_atomic(spec.log_path(out), value["log"])
    if value["code"] == 0:
        progress.update(spec, status="done")
        if value["stdout"].strip():
            progress.write(value["stdout"])
        return RunResult(spec, "done", attempts=attempts, summary=value["stdout"])
    progress.update(spec, status="failed", reason=value["reason"])
    return RunResult(spec, "failed", value["reason"], attempts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
