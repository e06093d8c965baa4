"""Runs are reproducible on CPU, and a run killed with SIGKILL resumes to identical CSVs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmark.results import EVAL_COLUMNS
from tests.conftest import TINY_RL2

ARGS = [
    "--algo",
    "rl2",
    "--suite",
    "point-nav",
    "--seed",
    "3",
    "--no-progress",
    "--set",
    "budget_steps=9600",  # 12 iterations of 4 trials x 2 episodes x 100 steps
    "--set",
    "eval_every_steps=3200",
    "--set",
    "checkpoint_every_steps=2400",
    *TINY_RL2,
]


def cli(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", *ARGS, "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def read(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    run = out / "point-nav" / "rl2" / "seed3"
    progress = pd.read_csv(run / "progress.csv").drop(columns="wall_time_s")
    return progress, pd.read_csv(run / "eval.csv", keep_default_na=False)


def test_same_seed_same_csvs_and_sigkill_resume(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    procs = [cli(a), cli(b)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    pa, ea = read(a)
    pb, eb = read(b)
    assert list(ea.columns) == list(EVAL_COLUMNS)
    assert len(pa) == 12 and sorted(ea["iteration"].unique()) == [0, 4, 8, 12]
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ea, eb)

    # kill c after a checkpoint was written and a few more iterations ran
    proc = cli(c)
    progress = c / "point-nav" / "rl2" / "seed3" / "progress.csv"
    deadline = time.time() + 240
    while time.time() < deadline:
        if progress.exists() and len(progress.read_text().splitlines()) >= 1 + 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (c / "point-nav" / "rl2" / "seed3" / "done").exists(), "run finished before it was killed"
    resumed = cli(c, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    pc, ec = read(c)
    pd.testing.assert_frame_equal(pa, pc)
    pd.testing.assert_frame_equal(ea, ec)


def test_pipelined_simulator_runs_are_reproducible(tmp_path):
    """halfcheetah-vel with 2 processes: the sampler overlaps two groups of envs, still deterministic."""
    from benchmark.cli import main

    args = ["run", "--algo", "rl2", "--suite", "halfcheetah-vel", "--seed", "1", "--no-progress",
            "--set", "budget_steps=3200", "--set", "eval_every_steps=3200", "--set", "num_workers=2",
            "--set", "final_eval_max_tasks=2", *TINY_RL2]  # fmt: skip
    frames = []
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        run = tmp_path / name / "halfcheetah-vel" / "rl2" / "seed1"
        progress = pd.read_csv(run / "progress.csv").drop(columns="wall_time_s")
        frames.append((progress, pd.read_csv(run / "eval.csv", keep_default_na=False)))
    (pa, ea), (pb, eb) = frames
    assert len(pa) == 2 and pa["train_return"].notna().all()
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ea, eb)
