"""The CLI contract: list / run, and one-line errors with exit code 2 for bad input."""

import argparse
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.config import ConfigError, HarnessConfig, parse_value, resolve
from tests.conftest import TINY_RL2


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def quick_run(tmp_path, *extra):
    return [
        "run",
        "--algo",
        "rl2",
        "--suite",
        "point-nav",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--set",
        "budget_steps=1600",  # 2 iterations of 4 trials x 2 episodes x 100 steps
        "--set",
        "eval_every_steps=800",
        *TINY_RL2,
        *extra,
    ]


def test_list_shows_suites_and_algorithms(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "rl2" in out and "point-nav" in out and "H=100" in out and "K=2" in out


def test_list_settings_shows_a_runs_values_for_a_suite_and_profile(capsys):
    """Without --suite: the dataclass defaults, said to be before any profile; with it: what a run of that
    profile on that suite starts from (RL²'s quick point-nav profile: gamma 0.9, 3.84M steps)."""
    code, out, _ = run_cli(capsys, "list", "--settings", "rl2")
    assert code == 0 and "default before any profile" in out and "  gamma=0.99  " in out
    code, out, _ = run_cli(capsys, "list", "--settings", "rl2", "--suite", "point-nav")
    assert code == 0 and "value of a quick run on point-nav" in out
    assert "  gamma=0.9  " in out and "  budget_steps=3840000  " in out and "  lr=0.001  " in out
    code, out, _ = run_cli(
        capsys, "list", "--settings", "rl2", "--suite", "halfcheetah-vel", "--profile", "paper"
    )
    assert code == 0 and "  hidden_size=256  " in out and "  gamma=0.99  " in out
    for argv, needle in (
        (["--suite", "point-nav"], "--suite and --profile apply to list --settings ALGO only"),
        (["--settings", "rl2", "--profile", "paper"], "--profile needs --suite"),
        (["--settings", "rl2", "--suite", "nowhere"], "unknown suite 'nowhere'"),
    ):
        code, _, err = run_cli(capsys, "list", *argv)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--algo", "nope"], "unknown algorithm 'nope'; accepted:"),
        (["run", "--algo", "rl2", "--suite", "nowhere"], "unknown suite 'nowhere'; accepted:"),
        (
            ["run", "--algo", "rl2", "--suite", "point-nav", "--set", "bogus=1"],
            "--set bogus: no such setting",
        ),
        (
            ["run", "--algo", "rl2", "--suite", "point-nav", "--set", "lr=fast"],
            "expected a value of type float",
        ),
        (["run", "--algo", "rl2", "--suite", "point-nav", "--set", "budget_steps=2.5"], "type int"),
        (
            ["run", "--algo", "rl2", "--suite", "point-nav", "--set", "lr=1e400"],
            "--set lr=1e400: out of a float's range (magnitude up to 1.8e308)",
        ),
        (["run", "--algo", "rl2", "--suite", "point-nav", "--set", "lr=-inf"], "--set lr=-inf: expected > 0"),
        (["run", "--algo", "rl2", "--seed", "-1"], "seed must be an integer from 0 to 2^64 - 1"),
        (["run", "--algo", "rl2", "--seed", "abc"], "seed must be an integer from 0 to 2^64 - 1"),
        (["run", "--algo", "rl2", "--seed", str(2**64)], "seed must be an integer from 0 to 2^64 - 1"),
        (["sweep", "--algo", "rl2", "--seeds", f"0,{2**64}"], "seed must be an integer from 0 to 2^64 - 1"),
        (["run", "--algo", "rl2", "--device", "cpu:1"], "expected cpu or cuda[:N]"),
        (
            ["run", "--algo", "rl2", "--suite", "point-nav", "--set", "validation_tasks=1000"],
            "--set validation_tasks=1000: the suite has only 1000 training tasks (accepted: 0 to 999",
        ),
        (
            ["run", "--algo", "trmrl", "--suite", "point-nav", "--set", "policy_hidden="],
            "policy_hidden=: needs at least one layer width",
        ),
        (
            ["run", "--algo", "trmrl", "--suite", "point-nav", "--set", "policy_hidden=64;64"],
            "expected comma-separated int values, e.g. policy_hidden=64,64",
        ),
        (
            ["run", "--algo", "pearl", "--suite", "point-nav", "--set", "prior_episodes=0"],
            "error: pearl: prior_episodes must be >= 1",
        ),
        (["run", "--algo", "rl2", "--profile", "huge"], "invalid choice"),
        (["run", "--algo", "rl2", "--device", "tpu"], "--device"),
        (["sweep", "--algo", "rl2", "--seeds", "4-1"], "empty"),
        (["run", "--algo", "trmrl", "--set", "update_threads=-1"], "update_threads=-1: expected >= 0"),
        (
            ["run", "--algo", "trmrl", "--set", f"update_threads={(os.cpu_count() or 1) + 1}"],
            f"expected at most {os.cpu_count() or 1} (this machine's cores",
        ),
        (["run", "--algo", "rl2", "--set", "torch_threads=100000"], "torch_threads=100000: expected at most"),
        (["run", "--algo", "rl2", "--set", "=3"], "--set '=3': the key is empty; expected key=value"),
        (  # refused before the list is built (80 GB of seeds)
            ["sweep", "--algo", "rl2", "--seeds", "0-10000000000"],
            "argument --seeds: '0-10000000000' names 10,000,000,001 seeds; a sweep takes at most 10,000",
        ),
        # a single-value option given twice: argparse kept the last value silently (a bad last value here,
        # so that the old behaviour fails fast instead of training)
        (["run", "--algo", "rl2", "--algo", "nope"], "argument --algo: given more than once; it takes one"),
        (
            ["run", "--algo", "rl2", "--suite", "nowhere", "--profile", "quick", "--profile", "paper"],
            "argument --profile: given more than once",
        ),
        (
            ["run", "--algo", "rl2", "--suite", "nowhere", "--out", "x"],
            "argument --out: given more",
        ),  # + --out
        (["sweep", "--algo", "rl2", "--algo", "nope"], "--algo: given more than once; list all its values"),
        (
            ["sweep", "--algo", "nope", "--seeds", "0", "--seeds", "1"],
            "argument --seeds: given more than once",
        ),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, argv, needle):
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarl-bench: error:") and needle in lines[0], err
    assert not any(tmp_path.iterdir()), "nothing may be written on bad input"


def test_list_and_figures_refuse_a_repeated_single_value_option(capsys, tmp_path):
    for argv in (
        ["list", "--settings", "rl2", "--settings", "nope"],
        ["list", "--settings", "rl2", "--suite", "point-nav", "--suite", "nowhere"],
        ["figures", str(tmp_path), "--out", str(tmp_path / "a"), "--out", str(tmp_path / "b")],
    ):
        code, out, err = run_cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, err
        assert "given more than once; it takes one value" in lines[0], err
    assert not any(tmp_path.iterdir())


def test_seeds_are_capped_before_the_list_is_built():
    from benchmark.cli import MAX_SEEDS, seeds_type

    assert seeds_type("0-9999") == list(range(10_000)) and MAX_SEEDS == 10_000
    assert seeds_type("5,0-2") == [5, 0, 1, 2]
    for text in ("0-10000", "0-9999,10000", f"0-{2**64 - 1}"):
        with pytest.raises(argparse.ArgumentTypeError, match="seeds; a sweep takes at most 10,000"):
            seeds_type(text)


def test_finished_run_refused_then_resume_and_overwrite(capsys, tmp_path):
    code, out, _ = run_cli(capsys, *quick_run(tmp_path))
    assert code == 0 and "headline [test]" in out
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    before = (run / "eval.csv").read_text()
    code, _, err = run_cli(capsys, *quick_run(tmp_path))
    assert code == 2 and "already holds a finished run" in err and len(err.strip().splitlines()) == 1
    assert (run / "eval.csv").read_text() == before
    code, out, _ = run_cli(capsys, *quick_run(tmp_path, "--resume"))  # finished: only the summary
    assert code == 0 and (run / "eval.csv").read_text() == before
    code, _, _ = run_cli(capsys, *quick_run(tmp_path, "--overwrite"))
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert (
        config["algo_config"]["hidden_size"] == 16
        and config["run"]["budget_steps"] == 1600
        and config["budget_steps"] == 1600
    )
    assert config["versions"]["torch"].startswith("2.13") and config["command"]
    refs = config["reference_returns"]
    assert set(refs) == {"test", "ood"} and all(r["oracle"] > r["random"] for r in refs.values())


def test_corrupted_checkpoint_is_one_line_error(capsys, tmp_path):
    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    (run / "done").unlink()
    (run / "checkpoint.pt").write_bytes(b"\x00garbage" * 10)
    eval_before = (run / "eval.csv").read_text()
    code, _, err = run_cli(capsys, *quick_run(tmp_path, "--resume"))
    assert code == 2 and "corrupted or unreadable checkpoint" in err and len(err.strip().splitlines()) == 1
    assert (run / "eval.csv").read_text() == eval_before


def test_set_parsing_types():
    assert parse_value("x", "true", bool) is True and parse_value("x", "3", int) == 3
    assert parse_value("x", "64,64", tuple[int, ...]) == (64, 64)
    with pytest.raises(ConfigError):
        parse_value("x", "maybe", bool)
    from algorithms.rl2 import RL2Config

    run, algo = resolve(
        "quick", "point-nav", RL2Config, {"hidden_size": 8}, {"lr": "1e-3", "budget_steps": "7000"}
    )
    assert (
        isinstance(run, HarnessConfig)
        and run.budget_steps == 7000
        and algo.lr == 1e-3
        and algo.hidden_size == 8
    )


def test_python_m_benchmark_and_console_script_agree():
    from pathlib import Path

    script = Path(sys.executable).parent / "metarl-bench"  # installed by pip next to the interpreter
    assert script.exists(), script
    outs = [
        subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        for cmd in ([sys.executable, "-m", "benchmark", "list"], [str(script), "list"])
    ]
    assert all(o.returncode == 0 for o in outs) and "point-nav" in outs[0].stdout
    assert outs[0].stdout == outs[1].stdout


def test_final_eval_cap_for_smoke_runs(capsys, tmp_path):
    code, _, _ = run_cli(capsys, *quick_run(tmp_path, "--set", "final_eval_max_tasks=3"))
    assert code == 0
    ev = pd.read_csv(tmp_path / "point-nav" / "rl2" / "seed0" / "eval.csv")
    final = ev[ev["mark"] == 1600]
    assert final.groupby("split")["task_id"].nunique().to_dict() == {"ood": 3, "test": 3}
    assert run_cli(capsys, *quick_run(tmp_path, "--overwrite", "--set", "final_eval_max_tasks=-1"))[0] == 2


def test_sweep_runs_every_combination_in_subprocesses_then_figures(capsys, tmp_path):
    argv = ["sweep", "--algo", "rl2", "--suite", "point-nav", "--seeds", "0-1", "--jobs", "2", "--out",
            str(tmp_path / "runs"), "--set", "budget_steps=1600", "--set", "eval_every_steps=800",
            *TINY_RL2]  # fmt: skip
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    for seed in (0, 1):
        assert (tmp_path / "runs" / "point-nav" / "rl2" / f"seed{seed}" / "done").exists()
    assert (tmp_path / "figures" / "adaptation.png").exists() and "wrote" in out
    code, _, err = run_cli(capsys, *argv)  # finished runs are refused, before anything starts
    assert code == 2 and "already holds a finished run" in err


def test_unknown_ml1_task_lists_every_valid_one(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--algo", "rl2", "--suite", "ml1-reech", "--out", str(tmp_path))
    assert code == 2 and "unknown ML1 task 'ml1-reech'" in err
    assert "ml1-reach" in err and "ml1-window-open" in err
    assert len(err.strip().splitlines()) == 1


def test_unfinished_run_refused_without_resume(capsys, tmp_path):
    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    (run / "done").unlink()
    before = (run / "eval.csv").read_text()
    code, _, err = run_cli(capsys, *quick_run(tmp_path))
    assert code == 2 and "already holds an unfinished run" in err and len(err.strip().splitlines()) == 1
    assert (run / "eval.csv").read_text() == before


def _snapshot(run):
    return {name: (run / name).read_bytes() for name in ("config.json", "eval.csv", "progress.csv")}


@pytest.mark.parametrize(
    "change,named",
    [
        (["--set", "lr=0.5"], "lr 0.001 -> 0.5"),
        (["--set", "hidden_size=32"], "hidden_size 16 -> 32"),  # architecture: was a 26-line traceback
        (["--set", "eval_every_steps=400"], "eval_every_steps 800 -> 400"),
        (["--set", "budget_steps=800"], "only a longer budget"),
        (["--profile", "paper"], "profile 'quick' -> 'paper'"),
    ],
)
def test_resume_refuses_changed_settings_naming_them_and_writes_nothing(capsys, tmp_path, change, named):
    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    (run / "done").unlink()  # as if killed before the end
    before = _snapshot(run)
    code, _, err = run_cli(capsys, *quick_run(tmp_path, "--resume", *change))
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(run) == before


def test_resume_of_a_run_made_before_a_setting_existed(capsys, tmp_path):
    """A setting missing from config.json (added to the code later) is no change at its dataclass default
    only: the behaviour from before it existed. A profile value away from the default is a change."""
    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    (run / "done").unlink()  # as if killed before the end
    config = json.loads((run / "config.json").read_text())
    assert config["algo_config"].pop("normalize_observations") is True  # RL2Config's default
    assert config["run"].pop("validation_tasks") == 0
    (run / "config.json").write_text(json.dumps(config))
    before = _snapshot(run)
    code, _, err = run_cli(capsys, *quick_run(tmp_path, "--resume", "--set", "normalize_observations=false"))
    assert code == 2 and "normalize_observations None -> False" in err, err  # away from its default
    assert _snapshot(run) == before
    profiled = json.loads(json.dumps(config))
    assert profiled["algo_config"].pop("target_kl") == 0.05  # the quick point-nav profile's, default None
    (run / "config.json").write_text(json.dumps(profiled))
    code, _, err = run_cli(capsys, *quick_run(tmp_path, "--resume"))
    assert code == 2 and "target_kl None -> 0.05" in err, err
    (run / "config.json").write_text(json.dumps(config))
    assert run_cli(capsys, *quick_run(tmp_path, "--resume"))[0] == 0  # at their defaults: resumes
    assert json.loads((run / "config.json").read_text())["algo_config"]["normalize_observations"] is True


def test_resume_with_a_longer_budget_equals_a_fresh_run_with_that_budget(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("benchmark.runner.git_dirty", lambda where=None: False)  # a clean checkout
    short, fresh = tmp_path / "short", tmp_path / "fresh"
    assert run_cli(capsys, *quick_run(short))[0] == 0  # finished at 1,600 steps
    # as if the first 1,600 steps had run from a checkout with uncommitted edits: that sticks
    config_path = short / "point-nav" / "rl2" / "seed0" / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"git_dirty": True}))
    longer = ["--set", "budget_steps=3200"]
    assert run_cli(capsys, *quick_run(short, "--resume", *longer))[0] == 0
    assert json.loads(config_path.read_text())["git_dirty"] is True
    assert run_cli(capsys, *quick_run(fresh, *longer))[0] == 0
    a, b = (p / "point-nav" / "rl2" / "seed0" for p in (short, fresh))
    for name in ("progress.csv", "eval.csv"):
        fa, fb = pd.read_csv(a / name), pd.read_csv(b / name)
        if name == "progress.csv":
            fa, fb = fa.drop(columns="wall_time_s"), fb.drop(columns="wall_time_s")
        pd.testing.assert_frame_equal(fa, fb)
    assert json.loads((a / "config.json").read_text())["budget_steps"] == 3200
    assert (a / "done").exists()


@pytest.mark.parametrize("flags", [["--seeds", "0-2,1"], ["--algo", "rl2", "rl2"]])
def test_sweep_refuses_repeated_combinations_before_any_run(capsys, tmp_path, flags):
    argv = ["sweep", "--suite", "point-nav", "--out", str(tmp_path / "runs"), "--no-figures", *TINY_RL2]
    if "--algo" not in flags:
        argv += ["--algo", "rl2"]
    code, _, err = run_cli(capsys, *argv, *flags)
    assert code == 2 and "may run once" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_figures_refuse_duplicated_eval_rows_naming_the_file(capsys, tmp_path):
    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    ev = tmp_path / "point-nav" / "rl2" / "seed0" / "eval.csv"
    lines = ev.read_text().splitlines(keepends=True)
    ev.write_text("".join(lines + lines[1:3]))  # what two processes in one directory wrote
    code, _, err = run_cli(capsys, "figures", str(tmp_path))
    assert code == 2 and "duplicated evaluation row" in err and str(ev) in err


def test_a_write_cut_at_any_byte_is_dropped_by_readers_and_by_resume(capsys, tmp_path):
    """A kill leaves a prefix of the file: readers and resume keep exactly the whole rows before the cut."""
    from benchmark.plots.data import read_eval
    from benchmark.results import kept_rows as read_kept_rows
    from benchmark.results import write_csv_atomic

    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    ev = tmp_path / "point-nav" / "rl2" / "seed0" / "eval.csv"
    raw = ev.read_bytes()
    whole = raw.splitlines(keepends=True)
    header = len(whole[0])
    quoted = [i for i in range(header, len(raw)) if raw[i : i + 1] == b","][:40:7]  # inside "goal=(x,y)"
    rng = __import__("numpy").random.default_rng(0)
    offsets = sorted({*quoted, *rng.integers(header + 1, len(raw) - 1, 40).tolist()})
    for cut in offsets:
        ev.write_bytes(raw[:cut])
        kept_rows = raw[:cut].count(b"\n") - 1  # whole rows before the cut
        df = read_eval(ev, has_success=False, in_progress=True)
        assert len(df) == kept_rows, cut
        write_csv_atomic(ev, *read_kept_rows(ev, lambda r: True))  # what resume does with eval.csv
        assert ev.read_bytes() == b"".join(whole[: kept_rows + 1]), cut


def _bad_values(field):
    """Values of the right syntax (or type) that a setting must refuse, from its declared range."""
    import typing

    from metarl_protocol.settings import setting_range

    rng = setting_range(field)
    typ = field.type if not isinstance(field.type, str) else eval(field.type, typing.__dict__ | {})  # noqa: S307
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    base = args[0] if args and typing.get_origin(typ) is not tuple else typ
    if base is bool:
        return ["maybe"]
    if rng.choices is not None:
        return ["not-a-choice"]
    if base is str:
        return [""]
    below = (rng.low if rng.low is not None else 0) - (0 if rng.low_open else 1)
    if typing.get_origin(base) is tuple:
        return [f"64,{below:g}"]
    out = [f"{below:g}"]
    if rng.high is not None:
        out.append(f"{rng.high + 1:g}")
    out.append("2.5" if base is int else "nan")
    return out


def test_every_setting_of_every_method_refuses_a_bad_value_in_one_line_writing_nothing(capsys, tmp_path):
    import dataclasses

    from benchmark.config import HarnessConfig
    from benchmark.registry import algorithm_names, load_algorithm

    checked = 0
    for algo in algorithm_names():
        fields = dataclasses.fields(HarnessConfig) + dataclasses.fields(load_algorithm(algo).Config)
        for field in fields:
            for bad in _bad_values(field):
                out = tmp_path / "out"
                code, _, err = run_cli(
                    capsys, "run", "--algo", algo, "--suite", "point-nav", "--out", str(out),
                    "--no-progress", "--set", f"{field.name}={bad}",
                )  # fmt: skip
                assert code == 2, f"{algo}: --set {field.name}={bad} was accepted"
                assert len(err.strip().splitlines()) == 1 and field.name in err, err
                assert not out.exists(), f"{algo}: --set {field.name}={bad} wrote {out}"
                checked += 1
    assert checked > 100


def test_every_profile_of_every_method_passes_its_declared_ranges():
    from benchmark.config import PROFILES
    from benchmark.registry import algorithm_names, load_algorithm

    for algo in algorithm_names():
        cls = load_algorithm(algo)
        for profile in PROFILES:
            for family in ("point-nav", "locomotion", "metaworld"):
                resolve(profile, family, cls.Config, cls.profile(profile, family), {})  # raises if not


def test_from_record_rebuilds_the_recorded_configs():
    """config.json records configs as JSON (tuples become lists): from_record gives back the same objects."""
    from dataclasses import asdict

    from algorithms.maml import MAML, MAMLConfig
    from benchmark.config import from_record

    run, algo = resolve(
        "quick", "point-nav", MAMLConfig, MAML.profile("quick", "point-nav"), {"hidden_sizes": "8,4"}
    )
    for config in (run, algo):
        record = json.loads(json.dumps(asdict(config)))
        assert from_record(type(config), record) == config
    assert from_record(MAMLConfig, {}) == MAMLConfig()
    with pytest.raises(ConfigError, match="not_a_setting"):
        from_record(MAMLConfig, {"not_a_setting": 1})
    with pytest.raises(ConfigError, match="inner_lr"):
        from_record(MAMLConfig, {"inner_lr": -1.0})
    assert isinstance(from_record(HarnessConfig, {"budget_steps": 5}), HarnessConfig)


def _tree(root):
    """Every file under ``root`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _save(path, state):
    import torch

    torch.save(state, path)


def _break_eval_header(run):
    text = (run / "eval.csv").read_text()
    (run / "eval.csv").write_text("it,mark" + text[text.index("\n") :])


def _break_eval_row(run):
    lines = (run / "eval.csv").read_text().splitlines(keepends=True)
    lines[2] = "x" + lines[2]  # a non-integer iteration
    (run / "eval.csv").write_text("".join(lines))


def _drop_checkpoint_field(field):
    def breaks(run):
        import torch

        state = torch.load(run / "checkpoint.pt", weights_only=True)
        del state[field]
        _save(run / "checkpoint.pt", state)

    return breaks


def _edit_checkpoint(edit):
    def breaks(run):
        import torch

        _save(run / "checkpoint.pt", edit(torch.load(run / "checkpoint.pt", weights_only=True)))

    return breaks


def _foreign_learner_state(run):
    import torch

    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["learner"] = {"net": {}}
    _save(run / "checkpoint.pt", state)


def _keep_lines(name, n):
    def breaks(run):
        lines = (run / name).read_text().splitlines(keepends=True)
        (run / name).write_text("".join(lines[:n]))

    return breaks


def _csv_directory(name):
    def breaks(run):
        (run / name).unlink()
        (run / name).mkdir()
        (run / name / "kept").write_text("a file, so the directory shows in the before/after tree")

    return breaks


def _config(edit):
    def breaks(run):
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(edit(config)))

    return breaks


@pytest.mark.parametrize(
    ("breaks", "named"),
    [
        (_break_eval_header, "eval.csv: header it,mark"),
        (_break_eval_row, "eval.csv: row 3 is malformed (ValueError"),
        (lambda run: open(run / "eval.csv", "ab").write(b"\xff\xfe,1\n"), "eval.csv: not UTF-8 text"),
        (lambda run: _save(run / "checkpoint.pt", {}), "checkpoint.pt: not a checkpoint of a run (missing"),
        (_drop_checkpoint_field("numpy_rng"), "(missing numpy_rng)"),
        (_edit_checkpoint(lambda c: c | {"torch_rng": c["torch_rng"][:10]}), "torch_rng holds 10 bytes"),
        (
            _foreign_learner_state,
            "rl2 learner (RuntimeError: Error(s) in loading state_dict for RL2Network: Missing",
        ),
        (lambda run: (run / "config.json").write_text("[]"), "not the config.json of a run"),
        (lambda run: (run / "config.json").write_bytes(b"\xff{}"), "unreadable config of the run to resume"),
        (_config(lambda c: c | {"run": c["run"] | {"budget_steps": "1600"}}), "run.budget_steps is '1600'"),
        (lambda run: (run / "config.json").unlink(), "config.json is missing"),
        # records that do not reach the checkpoint: resuming would restart them and lose their rows
        (lambda run: (run / "eval.csv").unlink(), "eval.csv: no evaluation at mark(s) 0, 800 before the"),
        (lambda run: (run / "eval.csv").write_text(""), "eval.csv: no evaluation at mark(s) 0, 800 before"),
        (
            lambda run: (run / "progress.csv").unlink(),
            "progress.csv: no rows where the checkpoint needs 1..2",
        ),
        (
            lambda run: (run / "progress.csv").write_text("iteration,env_"),
            "progress.csv: no rows where the checkpoint needs 1..2",
        ),
        (_keep_lines("progress.csv", 2), "progress.csv: iterations 1..1 where the checkpoint needs 1..2"),
        (_csv_directory("eval.csv"), "eval.csv: a directory, not the run's CSV file"),
        (lambda run: (run / "checkpoint.pt").unlink(), "checkpoint.pt: missing, though the run finished"),
        (
            _config(lambda c: c | {"seed": 5}),
            "the config of the run rl2 on point-nav, seed 5, not of rl2 on point-nav, seed 0",
        ),
    ],
)
def test_a_resume_that_cannot_go_on_changes_nothing(capsys, tmp_path, breaks, named):
    """A finished run resumed to a longer budget (the case that removes its done marker and cuts its
    CSVs back) with one of its files broken: one line, exit 2, every file as it was, done included."""
    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    breaks(run)
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *quick_run(tmp_path, "--resume", "--set", "budget_steps=2400"))
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before


def test_resume_refuses_an_unfinished_run_whose_checkpoint_went_missing(capsys, tmp_path):
    """Checkpoints at 800 and 1,600 steps; without its checkpoint (and done marker) the run went on past
    its first checkpoint, so the checkpoint is lost, not yet due: refused, files as they were. A run
    killed before its first checkpoint still starts afresh (test_sweep)."""
    argv = quick_run(tmp_path, "--set", "checkpoint_every_steps=800")
    assert run_cli(capsys, *argv)[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    (run / "done").unlink()
    (run / "checkpoint.pt").unlink()
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 2 and "checkpoint.pt: missing, though the run went past its first checkpoint at 800" in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("link", ["point-nav/rl2/seed0", "point-nav"])
def test_a_broken_symbolic_link_where_the_run_directory_goes_is_one_line(capsys, tmp_path, link):
    """At the run directory or above it (the suite's directory): one line, not a FileExistsError."""
    (tmp_path / link).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / link).symlink_to(tmp_path / "nowhere")
    code, _, err = run_cli(capsys, *quick_run(tmp_path))
    assert code == 2 and f"{tmp_path / link}: a broken symbolic link where the run directory" in err, err
    assert not (tmp_path / "nowhere").exists()


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_to_start(capsys, tmp_path, monkeypatch):
    from algorithms.rl2 import RL2

    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    before = _tree(tmp_path)

    def fails(*args, **kwargs):
        raise RuntimeError("the learner could not be built")

    monkeypatch.setattr(RL2, "__init__", fails)
    with pytest.raises(RuntimeError, match="could not be built"):
        main(quick_run(tmp_path, "--overwrite"))
    assert _tree(tmp_path) == before  # no ".seed0.replaced-*" left over either
    monkeypatch.undo()
    monkeypatch.setattr("benchmark.runner.TrialSampler", fails)  # set up, but the simulators fail
    with pytest.raises(RuntimeError, match="could not be built"):
        main(quick_run(tmp_path, "--overwrite"))
    assert _tree(tmp_path) == before
    code, _, err = run_cli(capsys, *quick_run(tmp_path, "--resume", "--overwrite"))
    assert code == 2 and "--resume and --overwrite exclude each other" in err
    assert _tree(tmp_path) == before
    monkeypatch.undo()
    stale = tmp_path / "point-nav" / "rl2" / ".seed0.replaced-killed"  # an overwrite killed in its setup
    (stale / "storage").mkdir(parents=True)
    assert run_cli(capsys, *quick_run(tmp_path, "--overwrite", "--set", "lr=0.002"))[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    assert json.loads((run / "config.json").read_text())["algo_config"]["lr"] == 0.002
    assert sorted(p.name for p in run.parent.iterdir()) == ["seed0"]  # the old run is gone, nothing hidden


def test_bad_output_paths_are_one_line_errors(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for argv, needle in [
        (quick_run(afile), f"argument --out: {afile}: is a file, not a directory"),
        (quick_run(afile / "below"), f"{afile / 'below'}: is a file ({afile}), not a directory"),
        (
            quick_run(dangling / "below"),
            f"{dangling / 'below'}: is a broken symbolic link ({dangling}), not a directory",
        ),
        (quick_run(""), "--out must name a directory, got an empty path"),
        (["figures", str(tmp_path), "--out", str(afile)], f"--out: {afile}: is a file, not a directory"),
        (["figures", str(afile)], f"results directory {afile} is a file, not a directory"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dangling"]


def test_tuple_settings_accept_the_form_list_prints():
    for text in ("64,64", "(64, 64)", "[64,64]", " 64 , 64 ", "64,64,"):
        assert parse_value("policy_hidden", text, tuple[int, ...]) == (64, 64), text
    for text in ("64", "64,", "(64,)", "[64]"):
        assert parse_value("policy_hidden", text, tuple[int, ...]) == (64,), text
    assert parse_value("policy_hidden", "", tuple[int, ...]) == parse_value("x", "()", tuple[int, ...]) == ()
    for text in ("64;64", "64,,64", "(64", "a,b"):
        with pytest.raises(
            ConfigError, match="expected comma-separated int values, e.g. policy_hidden=64,64"
        ):
            parse_value("policy_hidden", text, tuple[int, ...])


def test_a_closed_pipe_ends_list_without_a_traceback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "list", "--settings", "trmrl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # as `| head` does once it has its lines
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()


TINY_PEARL = [
    f"--set={kv}"
    for kv in (
        "budget_steps=400", "eval_every_steps=400", "eval_tasks=1", "final_eval_max_tasks=1",
        "num_tasks_sample=1", "initial_episodes=1", "prior_episodes=1", "posterior_episodes=0",
        "grad_steps_per_iter=2", "meta_batch=2", "batch_size=8", "embedding_batch_size=8", "net_size=8",
        "encoder_hidden=8",
    )
]  # fmt: skip


def _tiny_pearl_run(capsys, out):
    """A finished 400-step PEARL run under ``out``; the command line that made it."""
    argv = ["run", "--algo", "pearl", "--suite", "point-nav", "--out", str(out), "--no-progress", *TINY_PEARL]
    assert run_cli(capsys, *argv)[0] == 0
    return argv


@pytest.mark.parametrize(
    ("breaks", "named"),
    [
        (lambda replay: (replay / "header.json").write_text("{"), "cannot reopen the run's storage"),
        (lambda replay: (replay / "obs.bin").write_bytes(b""), "obs.bin holds 0 rows"),
    ],
)
def test_a_pearl_resume_with_broken_replay_storage_changes_nothing(capsys, tmp_path, breaks, named):
    argv = _tiny_pearl_run(capsys, tmp_path)
    breaks(tmp_path / "point-nav" / "pearl" / "seed0" / "storage" / "replay")
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *argv, "--resume", "--set", "budget_steps=800")
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before


def test_a_pearl_resume_refused_late_leaves_its_replay_files_and_storage_as_they_were(capsys, tmp_path):
    """PEARL's replay rows written after the checkpoint (a kill between checkpoints) stay on disk when
    the checkpoint is refused after the buffer could have been cut back; a missing storage directory is
    not created by a refused resume."""
    import torch

    argv = _tiny_pearl_run(capsys, tmp_path)
    run = tmp_path / "point-nav" / "pearl" / "seed0"
    for path in (run / "storage" / "replay").glob("*.bin"):
        with path.open("ab") as fh:
            fh.write(path.read_bytes()[-64:])  # rows past the checkpoint's count
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["learner"]["enc_start"] = {"x": 1}
    torch.save(state, run / "checkpoint.pt")
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *argv, "--resume", "--set", "budget_steps=800")
    assert code == 2 and "does not restore this run's pearl learner (ValueError" in err, err
    assert _tree(tmp_path) == before
    shutil.rmtree(run / "storage")
    before = _tree(tmp_path)
    code, _, err = run_cli(capsys, *argv, "--resume", "--set", "budget_steps=800")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before and not (run / "storage").exists()


def test_a_broken_pipe_of_our_own_is_not_taken_for_a_closed_stdout(monkeypatch):
    """Only a closed stdout ends quietly; a BrokenPipeError from elsewhere (a dead simulator worker's
    pipe) keeps its traceback."""
    import benchmark.cli as cli

    def dead_worker(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(cli.COMMANDS, "list", dead_worker)
    with pytest.raises(BrokenPipeError):
        main(["list"])


def test_a_broken_or_bare_plugin_is_one_line_not_a_traceback(capsys, tmp_path, monkeypatch):
    """An algorithm entry point that does not import is one line wherever it is named, and left out (and
    said) by --algo all; a plugin module without a docstring is listed."""
    import dataclasses
    import types
    from importlib.metadata import EntryPoint

    from benchmark import registry
    from metarl_protocol import MetaLearner

    bare = types.ModuleType("metarl_bench_test_bare")  # no module docstring
    config = dataclasses.make_dataclass("ToyConfig", [])
    bare.Toy = type("Toy", (MetaLearner,), {"__module__": bare.__name__, "Config": config})
    monkeypatch.setitem(sys.modules, bare.__name__, bare)
    real = registry._entry_points

    def with_plugins(group):
        eps = real(group)
        if group == registry.ALGORITHM_GROUP:
            for name, value in (
                ("broken", "metarl_bench_no_such_module:Nope"),
                ("bare", f"{bare.__name__}:Toy"),
            ):
                eps[name] = EntryPoint(name, value, group)
        return eps

    monkeypatch.setattr(registry, "_entry_points", with_plugins)
    for argv in (["run", "--algo", "broken"], ["list", "--settings", "broken"]):
        code, _, err = run_cli(capsys, *argv, *(["--out", str(tmp_path)] if argv[0] == "run" else []))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "algorithm entry point 'broken' (metarl_bench_no_such_module:Nope) failed to load" in err
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "  bare" in out and "  broken     (failed to load: RegistryError" in out
    code, _, err = run_cli(capsys, "sweep", "--algo", "all", "--suite", "point-nav", "--set", "bogus=1",
                           "--out", str(tmp_path))  # fmt: skip
    assert code == 2 and "sweep: --algo all leaves out broken:" in err and "bogus" in err.splitlines()[-1]
    assert not any(tmp_path.iterdir())
    # an import error whose message spans lines (numpy's C-extension one does): one line, with where
    noisy = types.ModuleType("metarl_bench_test_noisy")
    noisy.__getattr__ = lambda attr: (_ for _ in ()).throw(
        ImportError("\n\nIMPORTANT: PLEASE READ THIS\n\nfailed.\n")
    )
    monkeypatch.setitem(sys.modules, noisy.__name__, noisy)
    real_with = registry._entry_points
    monkeypatch.setattr(
        registry,
        "_entry_points",
        lambda group: real_with(group) | {"noisy": EntryPoint("noisy", f"{noisy.__name__}:Toy", group)},
    )
    code, _, err = run_cli(capsys, "run", "--algo", "noisy", "--out", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "failed to load: ImportError: IMPORTANT: PLEASE READ THIS failed. (at " in err
    monkeypatch.setattr(registry, "algorithm_names", lambda: ["broken", "noisy"])  # none loads
    code, _, err = run_cli(capsys, "sweep", "--algo", "all", "--suite", "point-nav", "--out", str(tmp_path))
    assert code == 2 and err.strip().splitlines()[-1].endswith(
        "--algo all: no registered algorithm loads (each is said above)"
    )


def test_files_where_directories_go_are_one_line(capsys, tmp_path):
    (tmp_path / "point-nav").mkdir()
    (tmp_path / "point-nav" / "rl2").write_text("not a directory")
    for argv in (
        quick_run(tmp_path),
        ["sweep", "--algo", "rl2", "--suite", "point-nav", "--out", str(tmp_path)],
    ):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and f"{tmp_path / 'point-nav' / 'rl2'}: a file where the run directory" in err, err
    (tmp_path / "point-nav" / "rl2").unlink()
    (tmp_path / "logs").write_text("mine")
    code, _, err = run_cli(capsys, "sweep", "--algo", "rl2", "--suite", "point-nav", "--out", str(tmp_path))
    assert code == 2 and "logs: a file where the sweep's log directory goes" in err, err
    assert (tmp_path / "logs").read_text() == "mine"


def test_a_run_in_use_by_another_process_is_refused(capsys, tmp_path):
    """While one process holds a run (its directory's flock), a --resume or --overwrite of it is one
    line, exit 2, and changes nothing; once the holder lets go, the resume runs."""
    import fcntl

    assert run_cli(capsys, *quick_run(tmp_path))[0] == 0
    run = tmp_path / "point-nav" / "rl2" / "seed0"
    (run / "done").unlink()  # as if it were still training
    before = _tree(tmp_path)
    holder = os.open(run, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        for flag in ("--resume", "--overwrite"):
            code, _, err = run_cli(capsys, *quick_run(tmp_path, flag))
            assert code == 2 and "in use by another process running this run" in err, err
            assert len(err.strip().splitlines()) == 1 and _tree(tmp_path) == before
    finally:
        os.close(holder)
    assert run_cli(capsys, *quick_run(tmp_path, "--resume"))[0] == 0 and (run / "done").exists()
