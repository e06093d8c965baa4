"""scripts/maml_few_shot.py: MAML's own few-shot check on a finished run, and its one-line errors."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from algorithms.maml import MAML, MAMLConfig, few_shot_returns
from benchmark.cli import main as cli_main
from benchmark.sampler import TrialSampler
from benchmark.suites.point_nav import PointNav
from scripts.maml_few_shot import MAX_ROLLOUTS, main
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


def _copy_run(run, dest, edit=None, checkpoint=None):
    """A copy of ``run``'s config.json (``edit`` applied to the parsed record) and checkpoint.pt (or the
    bytes ``checkpoint``) in the new directory ``dest``."""
    dest.mkdir()
    record = json.loads((run / "config.json").read_text())
    if edit is not None:
        edit(record)
    (dest / "config.json").write_text(json.dumps(record))
    (dest / "checkpoint.pt").write_bytes(
        (run / "checkpoint.pt").read_bytes() if checkpoint is None else checkpoint
    )
    return dest


def _one_line_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("rollouts", ["99999999999999999999", str(MAX_ROLLOUTS + 1)])
def test_rollouts_are_capped_before_anything_is_loaded(tmp_path, capsys, rollouts):
    err = _one_line_exit_2(capsys, [str(tmp_path / "nothing"), "--rollouts", rollouts])
    assert f"--rollouts {rollouts}: must be an integer from 1 to {MAX_ROLLOUTS:,}" in err


def test_a_run_directory_that_cannot_be_read_is_one_line(maml_run, tmp_path, capsys, monkeypatch):
    err = _one_line_exit_2(capsys, [str(tmp_path / ("a" * 300))])  # ENAMETOOLONG
    assert "cannot be read (File name too long); expected a readable run directory" in err
    deep = _copy_run(maml_run, tmp_path / "deep")
    (deep / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    err = _one_line_exit_2(capsys, [str(deep)])
    assert f"{deep / 'config.json'}: unreadable run config (nested too deep to parse" in err
    locked = _copy_run(maml_run, tmp_path / "locked")
    real_open = Path.open

    def unreadable_config(self, *args, **kwargs):  # as a non-root user with config.json at mode 000
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", unreadable_config)
    err = _one_line_exit_2(capsys, [str(locked)])
    assert f"{locked / 'config.json'}: cannot be read (Permission denied)" in err


def test_a_corrupted_checkpoint_is_one_line_naming_it_once(maml_run, tmp_path, capsys):
    run = _copy_run(maml_run, tmp_path / "hello", checkpoint=b"hello\n")
    err = _one_line_exit_2(capsys, [str(run)])
    assert (
        err == f"maml_few_shot: {run / 'checkpoint.pt'}: corrupted or unreadable checkpoint (KeyError: 101)"
    )


def test_a_recorded_value_of_another_type_is_one_line(maml_run, tmp_path, capsys):
    run = _copy_run(maml_run, tmp_path / "typed", edit=lambda r: r["algo_config"].update(inner_lr="x"))
    err = _one_line_exit_2(capsys, [str(run)])
    assert f'{run / "config.json"}: recorded MAMLConfig.inner_lr="x": expected a number' in err


def test_a_validation_split_the_suite_cannot_hold_out_is_one_line(maml_run, tmp_path, capsys):
    run = _copy_run(maml_run, tmp_path / "val", edit=lambda r: r["run"].update(validation_tasks=5000))
    err = _one_line_exit_2(capsys, [str(run), "--split", "validation"])
    assert (
        f"--split validation: {run / 'config.json'} records validation_tasks=5000: the suite has only" in err
    )
