"""Trial inputs for memory-based agents: each step sees (s_t, a_{t-1}, r_{t-1}, done_{t-1}).

The same quantities are built two ways and must agree: step by step while acting
(``PreviousStep``), and in bulk from a recorded trial batch for training (``previous_step_arrays``).
Rows of an environment that already terminated are not updated, so after a termination the next
valid step sees the terminating transition as its "previous" one.
"""

from __future__ import annotations

import numpy as np
import torch

from metarl_protocol import Transition


class PreviousStep:
    """Per-env (a_{t-1}, r_{t-1}, done_{t-1}) kept while acting; zeros at the start of a trial."""

    def __init__(self, num_envs: int, act_dim: int) -> None:
        self.action = np.zeros((num_envs, act_dim), np.float32)
        self.reward = np.zeros(num_envs, np.float32)
        self.done = np.zeros(num_envs, np.float32)

    def update(self, tr: Transition) -> None:
        """Store the transition's env action (clipped), reward and ``episode_done`` as the previous step.

        Only rows with ``tr.active`` change; the others keep their last values (module docstring).
        """
        a = tr.active
        self.action[a] = tr.action[a]
        self.reward[a] = tr.reward[a]
        self.done[a] = tr.episode_done[a]

    def features(self, obs: np.ndarray) -> np.ndarray:
        """(B, obs_dim + act_dim + 2) input row for the current step."""
        return np.concatenate([obs, self.action, self.reward[:, None], self.done[:, None]], axis=1).astype(
            np.float32
        )


def previous_step_arrays(
    env_actions: np.ndarray, rewards: np.ndarray, episode_done: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, T, ·) previous action / reward / done for every step, from recorded trials."""
    B, T = rewards.shape
    # index of the last valid step strictly before t (or -1): forward-fill of valid step indices
    idx = np.where(valid, np.arange(T)[None, :], -1)
    last_valid = np.maximum.accumulate(idx, axis=1)
    prev = np.concatenate([np.full((B, 1), -1), last_valid[:, :-1]], axis=1)
    has_prev = prev >= 0
    safe = np.maximum(prev, 0)
    rows = np.arange(B)[:, None]
    prev_a = np.where(has_prev[..., None], env_actions[rows, safe], 0.0).astype(np.float32)
    prev_r = np.where(has_prev, rewards[rows, safe], 0.0).astype(np.float32)
    prev_d = np.where(has_prev, episode_done[rows, safe], 0.0).astype(np.float32)
    return prev_a, prev_r, prev_d


def trial_features(batch: object, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, T, obs_dim + act_dim + 2) inputs of a recorded TrialBatch, equal to PreviousStep's."""
    prev_a, prev_r, prev_d = previous_step_arrays(
        batch.env_actions,
        batch.rewards,
        batch.episode_done,
        batch.valid,  # type: ignore[attr-defined]
    )
    feats = np.concatenate([batch.obs, prev_a, prev_r[..., None], prev_d[..., None]], axis=-1)  # type: ignore[attr-defined]
    return torch.as_tensor(feats, dtype=torch.float32, device=device)
