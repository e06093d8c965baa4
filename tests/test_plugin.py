"""A separately installed distribution registers a method and a suite through entry points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

PLUGIN = Path(__file__).parent / "plugin_example"


def test_installed_plugin_runs_through_the_cli(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(PLUGIN),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert list(site.glob("metarl_bench_example_plugin-*.dist-info"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    listed = subprocess.run(
        [sys.executable, "-m", "benchmark", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert listed.returncode == 0 and "uniform-random" in listed.stdout and "line-nav" in listed.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmark",
            "run",
            "--algo",
            "uniform-random",
            "--suite",
            "line-nav",
            "--out",
            str(tmp_path / "out"),
            "--set",
            "budget_steps=480",  # 3 iterations of 4 trials x 2 episodes x 20 steps
            "--set",
            "eval_every_steps=160",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    run_dir = tmp_path / "out" / "line-nav" / "uniform-random" / "seed0"
    source = json.loads((run_dir / "config.json").read_text())["algo_source"]  # the plugin's code, traceable
    assert source == {
        "entry_point": "metarl_bench_example:UniformRandom",
        "distribution": "metarl-bench-example-plugin",
        "version": "0.1.0",
    }
    ev = pd.read_csv(run_dir / "eval.csv")
    assert (
        set(ev["episode"]) == {0, 1, 2}
        and ev["iteration"].max() == 3
        and sorted(set(ev["mark"])) == [0, 160, 320, 480]
    )
