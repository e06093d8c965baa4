"""``check_learner`` passes the in-tree methods and the plugin example, and names each broken rule."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from algorithms.rl2 import RL2, RL2Agent, RL2Config
from algorithms.trmrl import TrMRL, TrMRLConfig
from benchmark.check import ContractError, check_agent, check_learner
from benchmark.suites.point_nav import PointNav

TINY_RL2 = RL2Config(hidden_size=16, encoder_hidden=8, meta_batch_size=4, epochs=1, minibatches=2)


@pytest.mark.parametrize(
    "cls,config",
    [
        (RL2, TINY_RL2),
        (TrMRL, TrMRLConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, meta_batch_size=4, epochs=1)),
        (
            TrMRL,
            TrMRLConfig(
                memory="trial",
                window=0,
                d_model=16,
                n_heads=2,
                n_layers=2,
                d_ff=32,
                meta_batch_size=4,
                epochs=1,
                normalize_observations=True,
            ),
        ),  # fmt: skip
    ],
)
def test_in_tree_methods_pass(cls, config):
    check_learner(cls, PointNav(), config)


def test_plugin_example_passes():
    sys.path.insert(0, str(Path(__file__).parent / "plugin_example"))
    try:
        from metarl_bench_example import LineNav, UniformRandom, UniformRandomConfig
    finally:
        sys.path.pop(0)
    check_learner(UniformRandom, LineNav(), UniformRandomConfig())


# -- broken methods: each breaks one rule --------------------------------------------------------------
class SharedMemoryAgent(RL2Agent):
    """Keeps a running sum that it mutates in place: shallow clones share it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = np.zeros(1, np.float32)

    def new_trial(self, task_keys):
        super().new_trial(task_keys)
        self.seen[:] = 0  # cleared in place, never rebound

    def act(self, obs):
        self.seen += obs.sum()  # in place: every clone writes the same array
        actions, extras = super().act(obs)
        return actions + 0.01 * self.seen, extras


class SharedMemory(RL2):
    def make_agent(self, evaluation=False):
        return SharedMemoryAgent(self.net, self.spec, self.device, evaluation)


class SharedObserveAgent(SharedMemoryAgent):
    """As SharedMemoryAgent, but the shared sum grows in observe: lock-step and pipelined sampling call
    the groups' observe and act in different interleavings, so the trials also differ between them; the
    rule broken is still clone independence, and it is the one named."""

    def act(self, obs):
        actions, extras = RL2Agent.act(self, obs)
        return actions + 0.01 * self.seen, extras

    def observe(self, transition):
        self.seen += transition.reward.sum()
        super().observe(transition)


class SharedObserve(RL2):
    def make_agent(self, evaluation=False):
        return SharedObserveAgent(self.net, self.spec, self.device, evaluation)


class NoisyObserveAgent(RL2Agent):
    def observe(self, transition):
        torch.rand(1)  # randomness outside act / end_episode depends on the call order
        super().observe(transition)


class NoisyObserve(RL2):
    def make_agent(self, evaluation=False):
        return NoisyObserveAgent(self.net, self.spec, self.device, evaluation)


class EvaluationTrains(RL2):
    """Its evaluation agent nudges the live network (as a method that adapts its learner's weights would)."""

    def make_agent(self, evaluation=False):
        if evaluation:
            with torch.no_grad():
                self.net.value.bias.add_(1.0)
        return super().make_agent(evaluation)


class ForgetsOptimizer(RL2):
    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])


class ForgetsCounter(RL2):
    """Counts its iterations (as a schedule would) but keeps the count out of state_dict."""

    def train_step(self, ctx):
        self.calls = getattr(self, "calls", 0) + 1
        return super().train_step(ctx) | {"calls": self.calls}


class NumpyState(RL2):
    def state_dict(self):
        return super().state_dict() | {"extra": np.zeros(2)}


class WideActionsAgent(RL2Agent):
    def act(self, obs):
        actions, extras = super().act(obs)
        return np.concatenate([actions, actions[:, :1]], axis=1), extras


class TransposedActionsAgent(RL2Agent):
    def act(self, obs):
        actions, extras = super().act(obs)
        return np.ascontiguousarray(actions.T), extras


class TransposedActions(RL2):
    """act returns (act_dim, rows): on point-nav (act_dim 2) a group of 2 rows would not show it."""

    def make_agent(self, evaluation=False):
        return TransposedActionsAgent(self.net, self.spec, self.device, evaluation)


class WideActions(RL2):
    """act returns one action dimension too many."""

    def make_agent(self, evaluation=False):
        return WideActionsAgent(self.net, self.spec, self.device, evaluation)


class WideEvaluationActions(RL2):
    """Only its evaluation agent returns one action dimension too many."""

    def make_agent(self, evaluation=False):
        cls = WideActionsAgent if evaluation else RL2Agent
        return cls(self.net, self.spec, self.device, evaluation)


class Thing:
    pass


class ObjectInState(RL2):
    def state_dict(self):
        return super().state_dict() | {"thing": Thing()}


class WrongEvaluationFlag(RL2):
    def make_agent(self, evaluation=False):
        return super().make_agent(False)


@pytest.mark.parametrize(
    "cls,message",
    [
        (SharedMemory, "clones must be independent"),
        (SharedObserve, "clones must be independent"),
        (NoisyObserve, "observe drew from torch's global generator"),
        (EvaluationTrains, "an evaluation changed the learner's state_dict"),
        (ForgetsOptimizer, r"does not restore the state \(keys in one only: \['optimizer\.state\."),
        (ForgetsCounter, r"differs from the uninterrupted one's, in metric\(s\) calls:"),
        (NumpyState, r"state_dict.extra is a numpy.ndarray, which torch.load\(weights_only=True\) refuses"),
        (ObjectInState, r"state_dict.thing is a (tests.)?test_check.Thing, which torch.load"),
        (TransposedActions, r"act returned actions of shape \(2, 3\), expected \(3, 2\)"),
        (WideActions, r"act returned actions of shape \(\d+, 3\), expected \(\d+, 2\)"),
        (WideEvaluationActions, r"act returned actions of shape \(\d+, 3\), expected \(\d+, 2\)"),
        (WrongEvaluationFlag, "make_agent\\(evaluation=True\\)"),
    ],
)
def test_each_broken_rule_is_named(cls, message):
    with pytest.raises(ContractError, match=message):
        check_learner(cls, PointNav(), TINY_RL2)


class ThreeTasks(PointNav):
    """point-nav with 3 training tasks: the clone check's other task used to be train[3 % 3], the same."""

    def _make_tasks(self, split):
        return super()._make_tasks(split)[:3]


def test_clone_independence_is_checked_on_a_suite_with_few_training_tasks():
    with pytest.raises(ContractError, match="clones must be independent"):
        check_agent(SharedMemory(ThreeTasks().spec(), TINY_RL2, torch.device("cpu")), ThreeTasks())
