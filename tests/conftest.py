"""Shared test helpers."""

from __future__ import annotations

import numpy as np
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
