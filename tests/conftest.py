"""Shared test helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

# small RL² settings so harness tests run in seconds
TINY_RL2 = [
    "--set",
    "hidden_size=16",
    "--set",
    "encoder_hidden=16",
    "--set",
    "meta_batch_size=4",
    "--set",
    "epochs=1",
    "--set",
    "minibatches=2",
    "--set",
    "eval_tasks=2",
]


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)


def final_test_normalized(run: Path) -> pd.Series:
    """Normalised return per meta-test episode (index: 0-based episode) at a run's final evaluation on
    the test split, with the test split's reference returns from the run's config.json."""
    ref = json.loads((run / "config.json").read_text())["reference_returns"]["test"]
    ev = pd.read_csv(run / "eval.csv")
    final = ev[(ev["mark"] == ev["mark"].max()) & (ev["split"] == "test")]
    per_episode = final.groupby("episode")["return"].mean()
    return (per_episode - ref["random"]) / (ref["oracle"] - ref["random"])


def rollout_with_acting_path(agent, suite, tasks: int, episodes: int, seed: int):
    """One sampler run of ``agent`` on the first training tasks with torch's noise stream seeded to 1,
    for comparing the numpy and torch acting paths on the same draws."""
    from benchmark.sampler import TrialSampler

    torch.manual_seed(1)
    return TrialSampler(suite).run(agent, suite.tasks("train")[:tasks], episodes=episodes, seed=seed)


def assert_acting_paths_agree(fast, ref, keys: tuple[str, ...] = ("log_prob", "value")) -> None:
    """Actions and the named extras of two TrialBatches agree to 1e-4 and are float32 on both paths."""
    assert np.abs(fast.actions - ref.actions).max() < 1e-4
    assert fast.actions.dtype == ref.actions.dtype == np.float32
    for key in keys:
        assert np.abs(fast.extras[key] - ref.extras[key]).max() < 1e-4, key
        assert fast.extras[key].dtype == ref.extras[key].dtype == np.float32, key


def tiny_rl2_run(out: Path, *extra: str, suite: str = "point-nav") -> Path:
    """A finished 800-step RL² run (TINY_RL2 settings plus ``extra`` --set arguments) under ``out``; its
    run directory."""
    from benchmark.cli import main as cli_main

    argv = ["run", "--algo", "rl2", "--suite", suite, "--out", str(out), "--no-progress", "--set",
            "budget_steps=800", "--set", "eval_every_steps=100000000", *TINY_RL2, *extra]  # fmt: skip
    assert cli_main(argv) == 0
    return out / suite / "rl2" / "seed0"
