"""Runs are reproducible on CPU, and a run killed with SIGKILL resumes to identical CSVs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark.results import EVAL_COLUMNS
from tests.conftest import TINY_RL2

TINY_TRMRL = ["--set", "d_model=16", "--set", "n_heads=2", "--set", "n_layers=2", "--set", "d_ff=32",
              "--set", "meta_batch_size=4", "--set", "epochs=1", "--set", "eval_tasks=2"]  # fmt: skip
CASES = {
    # RL² on point-nav: checkpoints every 3 iterations, evaluations every 4
    "rl2-point-nav": ("rl2", "point-nav", ["--set", "budget_steps=9600", "--set", "eval_every_steps=3200",
                                           "--set", "checkpoint_every_steps=2400", *TINY_RL2]),
    # TrMRL through the CLI, with every checkpoint on an evaluation mark
    "trmrl-point-nav-ckpt-on-mark": ("trmrl", "point-nav", ["--set", "budget_steps=9600",
                                     "--set", "eval_every_steps=1600", "--set", "checkpoint_every_steps=1600",
                                     *TINY_TRMRL]),
    # a simulator suite stepped by a worker process
    "rl2-halfcheetah-workers": ("rl2", "halfcheetah-vel", ["--set", "budget_steps=19200",
                                "--set", "eval_every_steps=6400", "--set", "checkpoint_every_steps=3200",
                                "--set", "num_workers=2", "--set", "final_eval_max_tasks=2", *TINY_RL2]),
}  # fmt: skip


def cli(out: Path, case: str, *extra: str) -> subprocess.Popen:
    algo, suite, args = CASES[case]
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", "--algo", algo, "--suite", suite, "--seed", "3",
         "--no-progress", *args, "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip


def read(out: Path, case: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    algo, suite, _ = CASES[case]
    run = out / suite / algo / "seed3"
    progress = pd.read_csv(run / "progress.csv").drop(columns="wall_time_s")
    return progress, pd.read_csv(run / "eval.csv", keep_default_na=False)


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_same_csvs_and_sigkill_resume(tmp_path, case):
    algo, suite, _ = CASES[case]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    procs = [cli(a, case), cli(b, case)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    pa, ea = read(a, case)
    pb, eb = read(b, case)
    assert list(ea.columns) == list(EVAL_COLUMNS)
    assert len(pa) == 12
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ea, eb)

    # kill c after a checkpoint was written and a few more iterations ran
    proc = cli(c, case)
    run = c / suite / algo / "seed3"
    progress = run / "progress.csv"
    deadline = time.time() + 600
    while time.time() < deadline:
        if progress.exists() and len(progress.read_text().splitlines()) >= 1 + 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "done").exists(), "run finished before it was killed"
    resumed = cli(c, case, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    pc, ec = read(c, case)
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


def test_git_dirty_flags_uncommitted_edits_to_tracked_files_only(tmp_path):
    from benchmark.runner import git_commit, git_dirty

    assert git_dirty(tmp_path) is None and git_commit(tmp_path) is None  # not a checkout
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")  # fmt: skip
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
        if cmd[0] == "add":
            (tmp_path / "a.py").write_text("x = 1\n")
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True, env=env)
    assert git_dirty(tmp_path) is False and len(git_commit(tmp_path)) == 40
    (tmp_path / "new.py").write_text("untracked\n")
    assert git_dirty(tmp_path) is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True
