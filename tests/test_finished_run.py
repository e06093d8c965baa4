"""scripts/finished_run.py: a finished run loaded with its recorded settings, and its one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.runner import validation_split
from benchmark.suites.point_nav import PointNav
from scripts.finished_run import RunError, load_run, read_record
from tests.conftest import tiny_rl2_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_rl2_run(tmp_path_factory.mktemp("runs"))


def test_loads_the_recorded_settings_and_the_checkpoint_weights(run_dir):
    record = read_record(run_dir)
    assert (record["algo"], record["suite"]) == ("rl2", "point-nav")
    loaded = load_run(run_dir, record, "test", "cpu")
    assert loaded.config.hidden_size == 16  # the recorded --set, not the profile's 128
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["learner"]["net"]
    for name, value in loaded.learner.net.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert [t.task_id for t in loaded.tasks] == [t.task_id for t in PointNav().tasks("test")]
    assert loaded.env_steps == 800


def test_validation_split_of_a_tuning_run_is_its_held_out_tasks(tmp_path):
    run = tiny_rl2_run(tmp_path, "--set", "validation_tasks=3")
    loaded = load_run(run, read_record(run), "validation", "cpu")
    assert [t.task_id for t in loaded.tasks] == [t.task_id for t in validation_split(PointNav(), 3)[1]]


@pytest.mark.parametrize(
    ("split", "device", "needle"),
    [
        ("nope", "cpu", "--split 'nope': suite point-nav has"),
        ("validation", "cpu", "was not a tuning run"),
        ("test", "tpu", "--device 'tpu'"),
        ("test", "mps", "--device 'mps': expected cpu or cuda"),  # a torch device, not one we run on
    ],
)
def test_bad_requests_raise_one_line(run_dir, split, device, needle):
    with pytest.raises(RunError) as exc:
        load_run(run_dir, read_record(run_dir), split, device)
    assert needle in str(exc.value) and len(str(exc.value).splitlines()) == 1


def test_missing_files_and_bad_records_raise_one_line(run_dir, tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        read_record(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    for text in ["{not json", '{"algo": "rl2"}']:
        (bad / "config.json").write_text(text)
        with pytest.raises(RunError, match="unreadable run config") as exc:
            read_record(bad)
        assert len(str(exc.value).splitlines()) == 1
    record = read_record(run_dir) | {"algo": "nope"}
    with pytest.raises(RunError, match="nope"):
        load_run(run_dir, record, "test", "cpu")


def test_a_run_with_storage_files_loads_without_touching_them(tmp_path):
    """PEARL keeps its replay under storage/: the learner restores it from a copy, with the buffer's
    rows, and the run's files stay byte for byte as they were (the analysis scripts only read)."""
    from benchmark.cli import main as cli_main
    from tests.test_cli import TINY_PEARL

    assert (
        cli_main(["run", "--algo", "pearl", "--suite", "point-nav", "--out", str(tmp_path), *TINY_PEARL]) == 0
    )
    run = tmp_path / "point-nav" / "pearl" / "seed0"
    for path in (run / "storage" / "replay").glob("*.bin"):  # rows past the checkpoint, as a kill leaves
        with path.open("ab") as fh:
            fh.write(path.read_bytes()[-64:])
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    loaded = load_run(run, read_record(run), "test", "cpu")
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["learner"]
    assert len(loaded.learner.buffer) == saved["replay_rows"] > 0 and loaded.finished
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_a_foreign_checkpoint_is_one_line_and_an_unfinished_run_says_so(run_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "checkpoint.pt"):
        (other / name).write_bytes((run_dir / name).read_bytes())
    loaded = load_run(other, read_record(other), "test", "cpu")  # no done marker
    assert not loaded.finished and loaded.checkpoint_text == "checkpoint at 800 env steps (an unfinished run)"
    state = torch.load(other / "checkpoint.pt", weights_only=True)
    state["learner"] = {"policy": {}}
    torch.save(state, other / "checkpoint.pt")
    with pytest.raises(RunError, match=r"checkpoint.pt: does not restore the run's rl2 learner \(KeyError"):
        load_run(other, read_record(other), "test", "cpu")


def test_broken_storage_is_one_line_naming_the_runs_own_files(tmp_path):
    from benchmark.cli import main as cli_main
    from tests.test_cli import TINY_PEARL

    assert (
        cli_main(["run", "--algo", "pearl", "--suite", "point-nav", "--out", str(tmp_path), *TINY_PEARL]) == 0
    )
    run = tmp_path / "point-nav" / "pearl" / "seed0"
    replay = run / "storage" / "replay"
    (replay / "obs.bin").write_bytes(b"")
    with pytest.raises(
        RunError, match=f"does not restore the run's pearl learner .*{replay / 'obs.bin'} holds 0 rows"
    ) as exc:
        load_run(run, read_record(run), "test", "cpu")
    assert "metarl-run-" not in str(exc.value) and len(str(exc.value).splitlines()) == 1
    (replay / "header.json").write_text("garbage")
    with pytest.raises(RunError, match=f"{replay / 'header.json'}: unreadable AppendOnlyArrays header"):
        load_run(run, read_record(run), "test", "cpu")
    # a file where the run kept a directory: named, with what was expected
    shutil.rmtree(replay)
    replay.write_text("")
    with pytest.raises(RunError) as exc:
        load_run(run, read_record(run), "test", "cpu")
    assert str(exc.value) == (
        f"{replay}: is a file; expected a directory (the run's storage, where the pearl learner keeps its "
        "files)"
    )
    shutil.rmtree(run / "storage")
    (run / "storage").write_text("")
    with pytest.raises(RunError) as exc:
        load_run(run, read_record(run), "test", "cpu")
    assert str(exc.value).startswith(f"{run / 'storage'}: is a file; expected a directory (the run's storage")
    (run / "storage").unlink()
    (run / "storage").symlink_to(tmp_path / "gone")
    with pytest.raises(RunError, match=f"{run / 'storage'}: is a broken symbolic link; expected a directory"):
        load_run(run, read_record(run), "test", "cpu")


def _copy(run, dest, config=None, checkpoint=None):
    """``run``'s config.json and checkpoint.pt copied into the new directory ``dest``, or the given text /
    bytes in their place."""
    dest.mkdir()
    (dest / "config.json").write_text((run / "config.json").read_text() if config is None else config)
    (dest / "checkpoint.pt").write_bytes(
        (run / "checkpoint.pt").read_bytes() if checkpoint is None else checkpoint
    )
    return dest


def test_a_record_that_cannot_be_read_is_one_line(run_dir, tmp_path, monkeypatch):
    long = tmp_path / ("a" * 300)
    with pytest.raises(RunError, match="cannot be read \\(File name too long\\); expected a readable run"):
        read_record(long)
    deep = _copy(run_dir, tmp_path / "deep", config="[" * 200_000 + "]" * 200_000)
    with pytest.raises(RunError, match="unreadable run config \\(nested too deep to parse"):
        read_record(deep)
    binary = _copy(run_dir, tmp_path / "binary", config="")
    (binary / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(RunError, match="unreadable run config"):
        read_record(binary)
    locked = tmp_path / "locked"
    _copy(run_dir, locked)
    real_stat, real_open = Path.stat, Path.open

    def stat(self, *args, **kwargs):  # as a non-root user under a directory at mode 000
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(RunError) as exc:
        read_record(locked)
    assert str(exc.value) == (
        f"{locked / 'config.json'}: cannot be read (Permission denied); expected a readable run directory "
        "with config.json and checkpoint.pt"
    )
    monkeypatch.setattr(Path, "stat", real_stat)

    def unreadable(self, *args, **kwargs):  # config.json at mode 000
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", unreadable)
    with pytest.raises(RunError, match="config.json: cannot be read \\(Permission denied\\)"):
        read_record(locked)


def test_a_corrupted_checkpoint_is_one_line_naming_it_once(run_dir, tmp_path):
    whole = (run_dir / "checkpoint.pt").read_bytes()
    for name, data, why in [
        ("hello", b"hello\n", "(KeyError: 101)"),  # bytes the weights-only unpickler trips over
        (  # whole sentences, not torch's advice cut at 160 characters ("... there is a high)")
            "cut",
            whole[:3000],
            "(PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
            "internal miniz error.)",
        ),
    ]:
        run = _copy(run_dir, tmp_path / name, checkpoint=data)
        with pytest.raises(RunError) as exc:
            load_run(run, read_record(run), "test", "cpu")
        assert str(exc.value) == f"{run / 'checkpoint.pt'}: corrupted or unreadable checkpoint {why}"


def test_a_validation_split_the_suite_cannot_hold_out_is_one_line(run_dir, tmp_path):
    record = json.loads((run_dir / "config.json").read_text())
    record["run"]["validation_tasks"] = 5000
    run = _copy(run_dir, tmp_path / "val", config=json.dumps(record))
    with pytest.raises(RunError) as exc:
        load_run(run, read_record(run), "validation", "cpu")
    assert str(exc.value).startswith(
        f"--split validation: {run / 'config.json'} records validation_tasks=5000: the suite has only 1000 "
        "training tasks (accepted: 0 to 999"
    )


@pytest.mark.parametrize(
    ("cls", "record", "needle"),
    [
        ("MAMLConfig", {"inner_lr": "x"}, 'recorded MAMLConfig.inner_lr="x": expected a number'),
        (
            "MAMLConfig",
            {"hidden_sizes": "64"},
            'recorded MAMLConfig.hidden_sizes="64": expected a list of integers',
        ),
        ("MAMLConfig", {"hidden_sizes": [64, True]}, "hidden_sizes=[64, true]: expected a list of integers"),
        (
            "HarnessConfig",
            {"budget_steps": "abc"},
            'recorded HarnessConfig.budget_steps="abc": expected an integer',
        ),
        (
            "MAMLConfig",
            {"meta_batch_size": 2.5},
            "recorded MAMLConfig.meta_batch_size=2.5: expected an integer",
        ),
        ("MAMLConfig", {"cg_iters": True}, "recorded MAMLConfig.cg_iters=true: expected an integer"),
        ("MAMLConfig", {"numpy_acting": "yes"}, 'numpy_acting="yes": expected a bool (true or false)'),
        ("MAMLConfig", {"inner_lr": None}, "recorded MAMLConfig.inner_lr=null: expected a number"),
        ("MAMLConfig", {"inner_lr": False}, "recorded MAMLConfig.inner_lr=false: expected a number"),
        ("MAMLConfig", {"activation": 3}, "recorded MAMLConfig.activation=3: expected a string"),
        ("RL2Config", {"target_kl": "x"}, 'recorded RL2Config.target_kl="x": expected a number or null'),
    ],
)
def test_from_record_checks_each_value_against_its_field_type(cls, record, needle):
    from algorithms.maml import MAMLConfig
    from algorithms.rl2 import RL2Config
    from benchmark.config import ConfigError, HarnessConfig, from_record

    classes = {"MAMLConfig": MAMLConfig, "RL2Config": RL2Config, "HarnessConfig": HarnessConfig}
    with pytest.raises(ConfigError) as exc:
        from_record(classes[cls], record)
    assert str(exc.value) == needle or needle in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1


def test_from_record_takes_what_json_writes_and_defaults_for_missing_keys():
    from algorithms.maml import MAMLConfig
    from algorithms.rl2 import RL2Config
    from benchmark.config import from_record

    config = from_record(MAMLConfig, {"inner_lr": 1, "hidden_sizes": [8, 4], "numpy_acting": False})
    assert config.inner_lr == 1.0 and type(config.inner_lr) is float and config.hidden_sizes == (8, 4)
    assert config.meta_batch_size == MAMLConfig().meta_batch_size  # not recorded: the default
    assert from_record(RL2Config, {"target_kl": None}).target_kl is None
    assert from_record(RL2Config, {"target_kl": 0.02}).target_kl == 0.02


def test_running_the_library_module_says_it_is_one(tmp_path):
    for argv in (["--bogus", "/nonexistent"], ["--help"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "scripts.finished_run", *argv],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            timeout=60,
        )
        err = proc.stderr.strip()
        assert proc.returncode == 2 and proc.stdout == "" and len(err.splitlines()) == 1, (argv, proc)
        assert err.startswith("python -m scripts.finished_run: error: a library module, not a command")
