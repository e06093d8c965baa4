"""Throughput and memory benchmark of metarl-bench: ``python -m scripts.perf`` (``nox -s perf``).

The package reads top to bottom in four steps:

* ``plan``      WHAT is measured: one ``Job`` (a JSON-able dict) per row, the row it is compared with
                (``reference``), and the target it must meet.
* ``measure``   HOW the harness is measured (raw simulators, the trial sampler, ``learner.train_step``
                at the quick and paper profiles); ``peers`` measures the library peers
                (Stable-Baselines3 PPO and SAC) at the same work.
* ``isolate``   WHERE: each job (or series of jobs) in a fresh subprocess, its peak resident memory
                sampled with psutil; ``profiling`` puts a timed region under cProfile.
* ``report``    HOW it is REPORTED: rates, ratios to the reference, PASS/FAIL per target, projected paper
                wall times, ``results/perf.csv``, ``results/perf_scaling.{csv,png}`` and the README table.

``cli`` ties them together. Top-level imports stay light: env workers are spawned and re-import modules.
"""
