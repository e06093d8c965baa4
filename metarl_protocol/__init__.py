"""The contract between the metarl-bench harness and meta-RL methods (see ``contract.py``).

Method authors import from here: ``from metarl_protocol import MetaLearner, AdaptiveAgent, ...``.
"""

from metarl_protocol.contract import (
    SPLITS,
    AdaptiveAgent,
    MetaLearner,
    SuiteSpec,
    Task,
    TrainContext,
    Transition,
    TrialBatch,
)
from metarl_protocol.settings import setting

__all__ = [
    "SPLITS",
    "AdaptiveAgent",
    "MetaLearner",
    "SuiteSpec",
    "Task",
    "TrainContext",
    "TrialBatch",
    "Transition",
    "setting",
]
