"""scripts/finished_run.py: a finished run loaded with its recorded settings, and its one-line errors."""

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
