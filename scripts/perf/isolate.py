"""Each job in a fresh subprocess, with its peak resident memory.

``run_isolated(jobs)`` starts ``python -m scripts.perf --jobs JSON`` and reads back one result line per
job. A series (e.g. the sampler at 10 / 40 / 80 tasks) shares one subprocess to save start-up time:
its memory peaks then include the earlier jobs of the series (said in each row's notes).

``peak_rss_mb``: resident memory of the measuring process plus all its children (env workers), summed
and sampled every 50 ms with psutil (RSS counts shared library pages once per process), floored by the
kernel's ``ru_maxrss`` of the measuring process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

from scripts.perf.profiling import REPO

RESULT_TAG = "PERF-RESULT "
#: The longest wait for one subprocess (20 days): subprocess's timeout overflows past about 24.8 days.
MAX_WAIT_S = 20 * 86_400.0


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
        """Sum the RSS (bytes) of this process and every descendant now; keep the largest sum in ``peak``.
        A descendant that has gone or cannot be read is left out; an error on this process skips it."""
        import psutil

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
        """The peak in MiB: the largest sample, floored by this process's ``ru_maxrss`` (KiB on Linux)."""
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
        return max(self.peak, own) / 2**20


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one job in this process: the measured fields plus ``peak_rss_mb`` and ``load_1m``."""
    import torch

    from scripts.perf.measure import MEASURES

    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(job["torch_threads"])
    try:
        with PeakRSS() as mem:
            out = MEASURES[job["op"]](job)
    finally:
        torch.set_num_threads(threads)
    return out | {"peak_rss_mb": mem.peak_mb, "load_1m": load}


def serve(jobs_json: str) -> None:
    """Subprocess side: measure each job, print one tagged JSON line per job (an error does not stop it)."""
    for job in json.loads(jobs_json):
        try:
            res = run_one(job)
        except Exception as exc:  # noqa: BLE001 - reported as the row's error
            res = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        print(RESULT_TAG + json.dumps({"id": job["id"], **res}), flush=True)


def run_isolated(jobs: list[dict[str, Any]], timeout: float) -> dict[str, dict[str, Any]]:
    """Measure ``jobs`` in order in one fresh subprocess; id -> result (``{"error": ...}`` if none came).
    The subprocess gets ``timeout`` seconds per job, at most ``MAX_WAIT_S`` in all."""
    cmd = [sys.executable, "-m", "scripts.perf", "--jobs", json.dumps(jobs)]
    out: dict[str, dict[str, Any]] = {}
    total = min(timeout * len(jobs), MAX_WAIT_S)
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=total)
        stdout, why = proc.stdout, (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        why = why[0] if why else f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        why = f"timed out after {total:.0f} s"
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG) :])
            out[res.pop("id")] = res
    return {j["id"]: out.get(j["id"], {"error": why}) for j in jobs}
