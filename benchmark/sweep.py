"""Sweeps: algos x suites x seeds, each run an independent ``metarl-bench run`` (resumable, one dir each).

Backends: ``local`` runs them in this process (``--jobs 1``, with progress bars and summaries) or
as up to ``--jobs`` subprocesses; ``ray`` submits one task per run to a Ray cluster (``ray`` must be
installed; ``RAY_ADDRESS`` selects the cluster, else a local one is started). Every run writes to
its own directory, so a sweep killed half-way is resumed with the same command plus ``--resume``.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from typing import Any


def run_argv(algo: str, suite: str, seed: int, args: argparse.Namespace) -> list[str]:
    argv = [
        "run",
        "--algo",
        algo,
        "--suite",
        suite,
        "--seed",
        str(seed),
        "--profile",
        args.profile,
        "--out",
        str(args.out),
        "--device",
        args.device,
    ]
    for pair in args.overrides:
        argv += ["--set", pair]
    if args.resume:
        argv.append("--resume")
    if args.overwrite:
        argv.append("--overwrite")
    return argv


def run_sweep(args: argparse.Namespace) -> list[int]:
    combos = list(itertools.product(args.algo, args.suite, args.seeds))
    if args.backend == "ray":
        return _ray(combos, args)
    if args.jobs <= 1:
        from benchmark.launch import print_summary, run_one

        for algo, suite, seed in combos:
            summary = run_one(algo, suite, seed, args)
            print_summary(algo, suite, seed, summary)
        return [0] * len(combos)
    return _subprocesses(combos, args)


def _subprocesses(combos: list[tuple[str, str, int]], args: argparse.Namespace) -> list[int]:
    """Up to ``--jobs`` runs at once; a new one starts as soon as any finishes."""
    pending = list(combos)
    running: list[tuple[tuple[str, str, int], subprocess.Popen[Any]]] = []
    codes: list[int] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            combo = pending.pop(0)
            cmd = [sys.executable, "-m", "benchmark", *run_argv(*combo, args), "--no-progress"]
            running.append((combo, subprocess.Popen(cmd)))
        finished = [(c, p) for c, p in running if p.poll() is not None]
        if not finished:
            time.sleep(0.2)
            continue
        for combo, proc in finished:
            running.remove((combo, proc))
            codes.append(proc.returncode)
            print(f"[sweep] {'/'.join(map(str, combo))} exited {proc.returncode}", file=sys.stderr)
    return codes


def _ray(combos: list[tuple[str, str, int]], args: argparse.Namespace) -> list[int]:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError:
        from benchmark.errors import UsageError

        raise UsageError(
            "--backend ray needs the ray package (pip install 'ray==2.*'); or use --backend local"
        ) from None

    @ray.remote(num_cpus=2)
    def one(argv: list[str]) -> int:
        """One run as its own ``python -m benchmark run`` process on the node; its exit code."""
        return subprocess.run([sys.executable, "-m", "benchmark", *argv, "--no-progress"]).returncode

    ray.init(ignore_reinit_error=True)
    return ray.get([one.remote(run_argv(*combo, args)) for combo in combos])
