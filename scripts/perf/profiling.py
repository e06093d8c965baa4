"""Timed regions, and cProfile over them: what bounds a measured rate.

``tic()`` / ``toc()`` bracket the region a rate is computed from; while ``PROFILER`` is a
``cProfile.Profile`` (``--profile ID``, or ``maml_breakdown``), only those regions are profiled, so
imports and set-up never show up. Function-level totals come from ``pstats`` (no change to the code
being measured).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROFILER: Any = None  # a cProfile.Profile while a profile is taken


def tic() -> float:
    """Start of a timed region (and of profiling while ``PROFILER`` is set)."""
    if PROFILER is not None:
        PROFILER.enable()
    return time.perf_counter()


def toc(t0: float) -> float:
    """Seconds since ``tic``; stops profiling."""
    dt = time.perf_counter() - t0
    if PROFILER is not None:
        PROFILER.disable()
    return dt


def profiled(fn: Any, whole: bool = True) -> tuple[Any, Any]:
    """Run ``fn()`` under cProfile; returns (its result, ``pstats.Stats``).

    ``whole``: profile all of ``fn``; otherwise only its ``tic``/``toc`` regions (``--profile ID``).
    """
    import cProfile
    import pstats

    global PROFILER
    profiler = cProfile.Profile()
    if whole:
        profiler.enable()
    else:
        PROFILER = profiler
    try:
        out = fn()
    finally:
        PROFILER = None
        profiler.disable()
    return out, pstats.Stats(profiler)


def _entries(stats: Any, file_suffix: str, name: str) -> list[tuple[tuple, tuple]]:
    return [(k, v) for k, v in stats.stats.items() if k[0].endswith(file_suffix) and k[2] == name]


def cumtime(stats: Any, file_suffix: str, name: str, pick: str = "sum") -> tuple[float, int]:
    """(cumulative seconds, calls) of functions ``name`` defined in a file ending with ``file_suffix``.

    ``pick="max"``: only the entry with the largest cumulative time (two nested closures of one name).
    """
    found = _entries(stats, file_suffix, name)
    if not found:
        return 0.0, 0
    if pick == "max":
        found = [max(found, key=lambda kv: kv[1][3])]
    return sum(v[3] for _, v in found), sum(v[1] for _, v in found)


def maml_breakdown(stats: Any, total: float) -> list[tuple[str, float, str]]:
    """One MAML-TRPO iteration split into phases from cProfile function-level totals (maml.py unchanged).

    Returns (phase, seconds, how) with the phases disjoint; ``other`` is the rest of ``total``:
    sampling (``HarnessContext.sample_trials``, both batches), inner loop (``MAML.adapt_tasks``: the
    per-task inner gradient step and baseline fits before the post-update rollouts), post-update data
    (``batch_task_data`` called by ``train_step``), Fisher-vector products (``fisher_vector_product``
    builds the graph; the ``fvp`` closure of ``trpo_step`` runs every product, CG and step size), line
    search (``MetaObjective.terms``: every surrogate/KL evaluation, the initial one included).
    """
    sampling, n_s = cumtime(stats, "benchmark/runner.py", "sample_trials")
    inner, _ = cumtime(stats, "algorithms/maml.py", "adapt_tasks")
    post = 0.0
    for _key, value in _entries(stats, "algorithms/maml.py", "batch_task_data"):
        for caller, cst in value[4].items():
            if caller[2] == "train_step":
                post += cst[3]
    build, _ = cumtime(stats, "algorithms/maml.py", "fisher_vector_product")
    products, n_fvp = cumtime(stats, "algorithms/maml.py", "fvp", pick="max")
    search, n_terms = cumtime(stats, "algorithms/maml.py", "terms")
    phases = [
        ("sampling", sampling, f"sample_trials, {n_s} calls"),
        ("inner loop", inner, "MAML.adapt_tasks (inner step + baseline fits of the pre-update batch)"),
        ("post-update data", post, "batch_task_data of the post-update batch (returns, baseline fits)"),
        ("fisher-vector products", build + products, f"graph build + {n_fvp} products (CG + step size)"),
        ("line search", search, f"MetaObjective.terms, {n_terms} evaluations incl. the initial surrogate"),
    ]
    return phases + [("other", max(0.0, total - sum(p[1] for p in phases)), "gradient of S, bookkeeping")]


def print_profile(stats: Any, top: int) -> None:
    """Own time per function, then cumulative time per repository function (sampler loop, agent, envs)."""
    total = max(stats.total_tt, 1e-9)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    print(f"{'own time':>9} {'share':>6} {'calls':>8}  function (timed region of this process only)")
    for (file, line, name), (_cc, calls, tottime, _cum, _callers) in rows:
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        print(f"{tottime:8.3f}s {tottime / total:6.1%} {calls:8d}  {where}")
    ours = [(k, st) for k, st in stats.stats.items() if str(REPO) in k[0] and "scripts" not in k[0]]
    print(f"\n{'with callees':>12} {'share':>6} {'calls':>8}  repository function")
    for (file, line, name), (_cc, calls, _tt, cum, _callers) in sorted(
        ours, key=lambda kv: kv[1][3], reverse=True
    )[:top]:
        rel = Path(file).resolve().relative_to(REPO)
        print(f"{cum:11.3f}s {cum / total:6.1%} {calls:8d}  {rel}:{line}({name})")
