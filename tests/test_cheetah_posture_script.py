"""scripts/cheetah_posture.py: speed and time on its back of a finished HalfCheetah run, and its errors."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.sampler import TrialSampler
from scripts.cheetah_posture import main, posture
from scripts.finished_run import load_run, read_record
from tests.conftest import tiny_rl2_run

ROW = re.compile(r"^v_goal=\S+\s+(-?\d+\.\d+)\s+(\d+\.\d+)\s+(-?\d+\.\d+)$", flags=re.M)


def test_posture_reads_the_last_episode_after_the_start_up():
    H = 60
    obs = np.zeros((2, 2 * H, 17), np.float32)
    obs[:, :H, 8] = 9.0  # the first episode is ignored
    obs[:, H : H + 50, 8] = -5.0  # so are the first 50 steps of the last one
    obs[0, H + 50 :, 8] = 2.0
    obs[1, H + 50 :, 8] = np.arange(10)  # mean 4.5
    obs[0, H : H + 15, 1] = 3.1  # on its back for half of the last episode (pitch +-pi: either way over)
    obs[0, H + 15 : H + 30, 1] = -3.1
    obs[1, H:, 1] = -1.4  # tilted, not flipped
    obs[1, :H, 1] = 3.1
    speed, flipped = posture(obs, H)
    assert speed.tolist() == pytest.approx([2.0, 4.5])
    assert flipped.tolist() == pytest.approx([0.5, 0.0])


@pytest.fixture(scope="module")
def cheetah_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return tiny_rl2_run(
        out, "--set", "final_eval_max_tasks=2", "--set", "num_workers=1", suite="halfcheetah-vel"
    )


def test_prints_each_test_task_as_the_evaluation_agent_plays_it(cheetah_run, capsys):
    assert main([str(cheetah_run), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    rows = np.array([[float(v) for v in m] for m in ROW.findall(out)])
    # the same trial by hand: the run as loaded (tests/test_finished_run.py), the evaluation agent, seed 3
    loaded = load_run(cheetah_run, read_record(cheetah_run), "test", "cpu")
    suite, tasks = loaded.suite, loaded.tasks
    assert suite.name == "halfcheetah-vel" and rows.shape == (len(tasks), 3)
    torch.manual_seed(3)
    agent = loaded.learner.make_agent(evaluation=True)
    batch = TrialSampler(suite).run(agent, tasks, suite.eval_episodes, seed=3)
    last = batch.obs[:, -suite.horizon :]
    assert rows[:, 0] == pytest.approx(last[:, 50:, 8].mean(1), abs=0.006)
    assert rows[:, 1] == pytest.approx((np.abs(last[:, :, 1]) > 1.5).mean(1), abs=0.006)
    assert rows[:, 2] == pytest.approx(batch.rewards[:, -suite.horizon :].sum(1), abs=0.06)
    summary = re.search(r"mean: speed (\S+) m/s, flipped (\S+) of the steps, .* in (\d+) of (\d+) tasks", out)
    assert float(summary[1]) == pytest.approx(rows[:, 0].mean(), abs=0.006)
    assert int(summary[4]) == len(tasks)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--split", "nope"], "--split 'nope'"),  # the loading errors: tests/test_finished_run.py
        (["--device", "tpu"], "--device 'tpu'"),
        (["--seed", "-1"], "argument --seed: seed must be an integer from 0 to 2^64 - 1, got '-1'"),
        (["--seed", str(2**64)], "seed must be an integer from 0 to 2^64 - 1"),
        (["--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_bad_input_is_one_line_exit_2(cheetah_run, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main([str(cheetah_run), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_refuses_other_suites(tmp_path, capsys):
    run = tiny_rl2_run(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(run)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "a run on 'point-nav'" in err and len(err.splitlines()) == 1


def test_a_run_directory_that_cannot_be_read_is_one_line(tmp_path, capsys, monkeypatch):
    """read_record's refusals (tests/test_finished_run.py), as the script prints them."""

    def refused(run):
        with pytest.raises(SystemExit) as exc:
            main([str(run)])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "cannot be read (File name too long)" in refused(tmp_path / ("a" * 300))
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "config.json").write_text("{" + '"a":{' * 100_000 + "}" * 100_001)
    (deep / "checkpoint.pt").write_bytes(b"")
    assert refused(
        deep
    ) == f"cheetah_posture: {deep / 'config.json'}: unreadable run config (nested too deep " + (
        "to parse; a run writes a flat record)"
    )
    real_stat = Path.stat

    def stat(self, *args, **kwargs):  # as a non-root user under a directory at mode 000
        if self.parent == deep:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert f"{deep / 'config.json'}: cannot be read (Permission denied); expected a readable run" in refused(
        deep
    )
