"""scripts/maml_few_shot.py: MAML's own few-shot check on a finished run, and its one-line errors."""

import re
from dataclasses import replace

import pytest
import torch

from algorithms.maml import MAML, MAMLConfig, few_shot_returns
from benchmark.cli import main as cli_main
from benchmark.sampler import TrialSampler
from benchmark.suites.point_nav import PointNav
from scripts.maml_few_shot import main
from tests.conftest import tiny_rl2_run

TINY_MAML = ["--set", "hidden_sizes=8,8", "--set", "meta_batch_size=2", "--set", "rollouts_per_task=2",
             "--set", "final_eval_max_tasks=2"]  # fmt: skip


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["run", "--algo", "maml", "--suite", "point-nav", "--out", str(out), "--no-progress",
            "--set", "budget_steps=1600", "--set", "eval_every_steps=100000000", *TINY_MAML]  # fmt: skip
    assert cli_main(argv) == 0
    return out / "point-nav" / "maml" / "seed0"


def test_prints_the_few_shot_returns_of_the_run_checkpoint(maml_run, capsys):
    assert main([str(maml_run), "--rollouts", "3", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"mean return: pre (\S+), post (\S+), post_mean (\S+)", out).groups()
    pre, post, post_mean = (float(v) for v in found)
    # the same check by hand: the run's resolved config (tiny settings from its recorded command) and weights
    suite = PointNav()
    tiny = {"hidden_sizes": (8, 8), "meta_batch_size": 2, "rollouts_per_task": 2}
    cfg = replace(MAMLConfig(), **(MAML.profile("quick", "point-nav") | tiny))
    learner = MAML(suite.spec(), cfg, torch.device("cpu"))
    learner.load_state_dict(torch.load(maml_run / "checkpoint.pt", weights_only=True)["learner"])
    torch.manual_seed(5)
    want = few_shot_returns(learner, TrialSampler(suite), list(suite.tasks("test")), 3, seed=5)
    assert [pre, post, post_mean] == pytest.approx([w.mean() for w in want], abs=0.006)
    assert len(re.findall(r"^\s+\d+\s+-?\d", out, flags=re.M)) == len(suite.tasks("test"))  # one row per task
    assert "normalised: pre" in out  # point-nav's test split has references


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--rollouts", "0"], "--rollouts 0"),
        (["--split", "nope"], "--split 'nope'"),  # the loading errors: tests/test_finished_run.py
        (["--seed", "-1"], "argument --seed: seed must be an integer from 0 to 2^64 - 1"),
        (["--rollouts", "x"], "argument --rollouts: invalid int value: 'x'"),
    ],
)
def test_bad_input_is_one_line_exit_2(maml_run, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main([str(maml_run), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_refuses_other_methods(tmp_path, capsys):
    run = tiny_rl2_run(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(run)])
    assert exc.value.code == 2 and "a run of 'rl2'" in capsys.readouterr().err
