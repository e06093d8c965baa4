"""Smoke test of the perf benchmark (``python -m scripts.perf``): every kind of row for every method, each
ratio against the right reference row, statuses that follow from the targets, the scaling files.

The quick run uses tiny sizes on point-nav (its numbers are not measurements); the last tests check the
reporting arithmetic on made-up results, independent of timing.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import statistics
from pathlib import Path

import pytest

from benchmark.registry import algorithm_names
from scripts.perf import cli, isolate, plan, report

COLUMNS = [
    "id", "kind", "name", "suite", "batch", "scaling", "unit", "count", "seconds", "rate", "us_per_step",
    "work", "reference", "ratio", "target", "status", "projected_h", "peak_rss_mb", "load_1m", "notes",
]  # fmt: skip
HAVE_SB3 = importlib.util.find_spec("stable_baselines3") is not None


def _read(path):
    with path.open() as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _expected_status(row):
    checks = []
    for name in row["target"].split(", "):
        if name.startswith(">="):
            need = float(name[2:].split("x")[0])
            checks.append((name, None if row["ratio"] == "" else float(row["ratio"]) >= need))
        elif name.startswith("rss<="):
            checks.append((name, float(row["peak_rss_mb"]) <= float(name[5:-2]) * 1024))
        elif name.endswith("h projected"):
            checks.append((name, float(row["projected_h"]) <= float(name[2:].split("h")[0])))
        elif name.endswith("s"):
            checks.append((name, float(row["seconds"]) <= float(name[2:-1])))
    failed = [n for n, ok in checks if ok is False]
    if failed:
        return "FAIL " + ", ".join(failed)
    return "n/a (no reference)" if any(ok is None for _, ok in checks) else "PASS"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf") / "perf.csv"
    assert cli.main(["--quick", "--no-isolate", "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(not HAVE_SB3, reason="stable_baselines3 (extra perf) is not installed")
def test_quick_run_has_every_kind_of_row_for_every_method(quick_run):
    fields, rows = _read(quick_run)
    assert fields == COLUMNS
    by_id = {r["id"]: r for r in rows}
    assert {r["kind"] for r in rows} >= {"raw", "sampler", "train", "peer", "breakdown", "paper", "run"}
    assert not [r for r in rows if r["status"] in ("ERROR", "SKIP")]
    for algo in algorithm_names():
        for kind in ("sampler", "train", "paper"):
            assert any(r["kind"] == kind and r["name"] == algo for r in rows), (kind, algo)
    for r in rows:
        if r["rate"]:
            assert float(r["rate"]) > 0 and float(r["peak_rss_mb"]) > 0 and float(r["load_1m"]) >= 0, r
    # every sampler row times its agents' own calls; the null agent's cost nothing next to any method's
    policy_us = {}
    for r in rows:
        if r["kind"] == "sampler":
            found = re.search(r"policy \(act \+ observe\) (\d+) us per act call", r["notes"])
            policy_us[r["name"]] = float(found[1])
    assert set(policy_us) == {"null", *algorithm_names()}
    assert policy_us["null"] < min(v for k, v in policy_us.items() if k != "null"), policy_us
    phases = [r for r in rows if r["kind"] == "breakdown"]
    assert {r["name"] for r in phases} >= {"inner loop", "fisher-vector products", "line search", "sampling"}
    assert math.isclose(sum(float(r["ratio"]) for r in phases), 1.0, abs_tol=0.01)
    for r in (r for r in rows if r["kind"] == "paper"):
        assert float(r["projected_h"]) > 0, r
    assert by_id["paper/trmrl/point-nav"]["target"] == "<=3h projected"


@pytest.mark.skipif(not HAVE_SB3, reason="stable_baselines3 (extra perf) is not installed")
def test_quick_run_ratios_use_the_right_reference(quick_run):
    _, rows = _read(quick_run)
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        ref = by_id.get(r["reference"])
        if r["kind"] == "train" and r["target"].startswith(">="):  # the peer's rounds in the row's process
            peer_id, paired = r["reference"].split(", ")
            assert paired == "paired in-process" and peer_id in r["notes"], r
            rounds = [float(x) for x in re.search(r"in this process \(([\d. ]+);", r["notes"])[1].split()]
            assert math.isclose(float(r["ratio"]), statistics.median(rounds), abs_tol=0.006), r
            ref = by_id[peer_id]
        if r["kind"] == "sampler":  # the raw batch env of the same suite and batch, timed in the same process
            raw_id, paired = r["reference"].split(", ")
            assert paired == "paired in-process", r
            assert by_id[raw_id]["kind"] == "raw" and by_id[raw_id]["name"] == "batch env", r
            assert (by_id[raw_id]["suite"], by_id[raw_id]["batch"]) == (r["suite"], r["batch"]), r
            rounds = [float(x) for x in re.search(r"in this process \(([\d. ]+);", r["notes"])[1].split()]
            assert math.isclose(float(r["ratio"]), statistics.median(rounds), abs_tol=0.006), r
        elif r["kind"] == "train" and r["name"] in plan.PPO_METHODS and r["target"].startswith(">="):
            assert ref["kind"] == "peer" and ref["name"] == "sb3-ppo", r
            assert ref["work"] == r["work"] != "", (r["work"], ref["work"])  # equal work, measured
        elif r["kind"] == "train" and r["name"] == "pearl":
            assert ref["name"] == "sb3-sac" and ref["unit"] == r["unit"] == "grad steps/s", r
            assert ref["work"] == r["work"] != "", (r["work"], ref["work"])
            assert "per unit of work" in r["notes"], r  # both gradient steps' matmul work counted
            work = re.search(r"step (\d+) MFLOP against the peer's (\d+)", r["notes"])
            assert 0.8 <= float(work[1]) / float(work[2]) <= 1.5, r  # per step: a few more nets
        elif r["kind"] == "train" and r["name"] == "maml":
            assert r["ratio"] == "" and r["reference"].startswith("none"), r
        if ref is not None and r["ratio"] != "" and r["kind"] not in ("breakdown", "train"):
            assert math.isclose(float(r["ratio"]), float(r["rate"]) / float(ref["rate"]), rel_tol=0.01), r
        if r["target"]:
            assert r["status"] == _expected_status(r), r
    for algo in (*plan.PPO_METHODS, "pearl"):  # one equal-work row each, compared with its peer
        (row,) = [
            r for r in rows if r["kind"] == "train" and r["name"] == algo and r["target"].startswith(">=1x")
        ]
        assert row["ratio"] != "", row
    fields, table = _read(quick_run.with_name("perf_scaling.csv"))
    assert fields == report.SCALING_COLUMNS
    assert {s["axis"] for s in table} == {"tasks", "window"}
    assert {s["what"] for s in table if s["axis"] == "tasks"} == {"raw", "sampler", "train"}
    assert quick_run.with_name("perf_scaling.png").stat().st_size > 10_000


def test_full_plan_targets_and_references():
    """The full plan (not run): 20-task sampler rows with the issue's bounds, peers at equal sizes."""
    import argparse

    args = argparse.Namespace(quick=False, algos=None, suites=None, torch_threads=1, update_threads=0)
    jobs, _ = plan.build_plan(args)
    by_id = {j["id"]: j for j in jobs}
    for algo in algorithm_names():
        for suite, bound in (("halfcheetah-vel", 0.8), ("ant-dir", 0.9), ("ml1-reach", 0.9)):
            job = by_id[f"sampler/{algo}/{suite}/B20"]
            assert job["min_ratio"] == bound and job["reference"] == f"raw/{suite}/B20" and job["rounds"] == 3
        assert f"paper/{algo}/halfcheetah-vel" in by_id
    for algo in plan.PPO_METHODS:
        (train,) = [j for j in jobs if j["kind"] == "train" and j["name"] == algo and j.get("min_ratio")]
        peer = by_id[train["reference"]]
        assert peer["expect_work"].startswith(f"rollout={train['batch'] * 400} ")
        assert train["overrides"].get("target_kl", "none") == "none"
    assert by_id["paper/trmrl/halfcheetah-vel"]["max_hours"] == 3.0
    assert {j["scaling"] for j in jobs} == {"", "tasks", "window"}


def test_a_training_row_is_paired_with_its_peer_round_by_round(monkeypatch):
    """After each timed iteration the peer does one round in the row's process; the row's ratio is the
    median of the rounds' ratios (own rate / the round's peer rate), not a ratio of two separate rows."""
    import argparse

    from scripts.perf import measure, peers

    class FakePeer:  # 100, 1,000 and 10,000 units/s: each round's ratio lands in its own decade
        rates, closed, unprofiled = [1e2, 1e3, 1e4], [], []

        def __init__(self, job):
            self.job, self.n = job, 0

        def round(self, profiled=True):
            self.n += 1
            self.unprofiled.append(not profiled)  # paired rounds stay out of the row's --profile
            return self.rates[self.n - 1] * 0.5, 0.5

        def close(self):
            self.closed.append(self.job["id"])

    monkeypatch.setattr(peers, "PeerRounds", FakePeer)
    args = argparse.Namespace(quick=True, algos=["rl2"], suites=None, torch_threads=1, update_threads=0)
    jobs, _ = plan.build_plan(args)
    (job,) = [j for j in jobs if j["kind"] == "train" and j.get("paired_peer")]
    out = measure.measure_train({**job, "iterations": 3, "torch_threads": 1})
    rounds = [float(x) for x in re.search(r"in this process \(([\d. ]+);", out["notes"])[1].split()]
    # each round divides that iteration's own rate by that round's peer rate (own rates vary far less than
    # 5x between iterations), and the row's ratio is the middle one: the median, not a pooled ratio
    assert len(rounds) == 3 and rounds[0] > 5 * rounds[1] > 25 * rounds[2], out["notes"]
    assert math.isclose(out["ratio"], rounds[1], abs_tol=0.006), (out["ratio"], rounds)
    assert FakePeer.closed == [job["paired_peer"]["id"]] and FakePeer.unprofiled == [True] * 3


def test_a_training_row_without_the_peer_library_still_measures_itself(monkeypatch):
    """Without the perf extra the peer cannot run: the row is measured unpaired (no ratio) and says why."""
    import argparse

    from scripts.perf import measure, peers

    def missing(job):
        raise ModuleNotFoundError("No module named 'stable_baselines3'")

    monkeypatch.setattr(peers, "PeerRounds", missing)
    args = argparse.Namespace(quick=True, algos=["rl2"], suites=None, torch_threads=1, update_threads=0)
    jobs, _ = plan.build_plan(args)
    (job,) = [j for j in jobs if j["kind"] == "train" and j.get("paired_peer")]
    out = measure.measure_train({**job, "torch_threads": 1})
    assert "ratio" not in out and out["count"] > 0 and out["seconds"] > 0
    assert f"not paired with {job['paired_peer']['id']}: No module named 'stable_baselines3'" in out["notes"]


def test_only_a_kind_leaves_out_the_scaling_series_unless_asked():
    """``--only train peer`` measures the training rows and their peers, not the 10 / 40 / 80-task training
    series (it used to run them too); ``--only scaling`` runs every series with its references."""
    import argparse

    args = argparse.Namespace(quick=False, algos=["rl2"], suites=None, torch_threads=1, update_threads=0)
    jobs, _ = plan.build_plan(args)
    train = {j["id"] for j in plan.select(jobs, ["train", "peer"])}
    assert "train/rl2/halfcheetah-vel/B20" in train and any(i.startswith("peer/sb3-ppo/") for i in train)
    assert not {"train/rl2/halfcheetah-vel/B10", "train/rl2/halfcheetah-vel/B80"} & train
    sampler = {j["id"] for j in plan.select(jobs, ["sampler"])}
    assert "sampler/rl2/ant-dir/B20" in sampler and "sampler/rl2/halfcheetah-vel/B80" not in sampler
    scaling = {j["id"] for j in plan.select(jobs, ["scaling"])}
    assert {"train/rl2/halfcheetah-vel/B10", "sampler/rl2/halfcheetah-vel/B80"} <= scaling
    assert "train/rl2/halfcheetah-vel/B20" in scaling  # the series' 20-task point is the main row


def test_report_divides_by_the_reference_and_projects_the_paper_budget():
    jobs = [
        {"id": "raw/s/B20", "kind": "raw", "name": "batch env", "suite": "s", "batch": 20, "reference": ""},
        {"id": "sampler/a/s/B20", "kind": "sampler", "name": "a", "suite": "s", "batch": 20,
         "reference": "raw/s/B20", "min_ratio": 0.8},
        {"id": "paper/a/s", "kind": "paper", "name": "a", "suite": "s", "batch": 20, "reference": "",
         "update_scale": 10.0, "max_hours": 3.0},
    ]  # fmt: skip
    base = {"peak_rss_mb": 100.0, "load_1m": 1.0}
    results = {
        "raw/s/B20": {"count": 10_000, "seconds": 1.0, **base},
        "sampler/a/s/B20": {"count": 7_000, "seconds": 1.0, **base},
        "paper/a/s": {"count": 8_000, "seconds": 2.0, "env_steps": 8_000, "sampling_s": 1.0, "update_s": 1.0,
                      "budget_steps": 20_000_000, "eval_steps": 8_000, **base},
    }  # fmt: skip
    rows = {r["id"]: r for r in report.finish_rows(jobs, results, [])}
    assert rows["sampler/a/s/B20"]["ratio"] == 0.7 and rows["sampler/a/s/B20"]["status"] == "FAIL >=0.8x ref"
    results["sampler/a/s/B20"]["ratio"] = 0.85  # paired in its own process: that ratio, not rate / rate
    rows = {r["id"]: r for r in report.finish_rows(jobs, results, [])}
    assert rows["sampler/a/s/B20"]["ratio"] == 0.85 and rows["sampler/a/s/B20"]["status"] == "PASS"
    assert rows["sampler/a/s/B20"]["reference"] == "raw/s/B20, paired in-process"
    paper = rows["paper/a/s"]
    assert paper["rate"] == round(8_000 / (1.0 + 10 * 1.0), 1)  # the cut gradient steps scaled back
    hours = (20_000_000 / (8_000 / 11.0) + 8_000 / 8_000) / 3600
    assert paper["projected_h"] == round(hours, 2) and paper["status"] == "FAIL <=3h projected"


def test_a_series_runs_in_one_subprocess():
    jobs = [{"id": f"raw/point-nav/B{b}", "op": "raw", "suite": "point-nav", "batch": b, "workers": 1,
             "episodes": 1, "warmup_episodes": 1, "torch_threads": 1} for b in (2, 4)]  # fmt: skip
    res = isolate.run_isolated(jobs + [{**jobs[0], "id": "bad", "suite": "nope"}], timeout=120)
    for b in (2, 4):
        assert (
            res[f"raw/point-nav/B{b}"]["count"] == 100 * b and res[f"raw/point-nav/B{b}"]["peak_rss_mb"] > 10
        )
    assert "nope" in res["bad"]["error"]


def test_profile_prints_the_timed_region_only(capsys):
    assert cli.main(["--quick", "--profile", "sampler/rl2/point-nav/B2", "--top", "40"]) == 0
    printed = capsys.readouterr().out
    assert "steps/s under cProfile" in printed
    assert "sampler.py" in printed and "rl2.py" in printed  # the sampling loop and the policy
    assert "importlib" not in printed  # imports and set-up happen outside the timed region
    from scripts.perf import profiling

    assert profiling.PROFILER is None
    assert cli.main(["--quick", "--profile", "sampler/nope"]) == 2
    assert "unknown measurement 'sampler/nope'" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_SB3, reason="stable_baselines3 (extra perf) is not installed")
def test_profile_of_a_training_row_leaves_out_its_paired_peer(capsys):
    """The peer's rounds run between the row's timed iterations, outside its profiled regions."""
    assert cli.main(["--quick", "--profile", "train/rl2/point-nav/B2", "--top", "200"]) == 0
    printed = capsys.readouterr().out
    assert "rl2.py" in printed and "stable_baselines3" not in printed


def test_the_raw_replay_repeats_the_sampler_trial():
    """The sampler row's reference replays the trial's actions from its reset seeds: on ant-dir, where
    fresh ants fall, it counts the same valid steps (random actions would keep another share alive)."""
    import numpy as np
    import torch

    from benchmark.registry import load_suite
    from benchmark.sampler import TrialSampler
    from scripts.perf import measure

    suite = load_suite("ant-dir")
    cls, _run, cfg = measure.method_config("rl2", suite, "quick", {})
    torch.manual_seed(0)
    agent = cls(suite.spec(), cfg, torch.device("cpu")).make_agent()
    tasks = measure.pick_tasks(suite, 4)
    sampler, raw = TrialSampler(suite, num_workers=1), suite.make_batch_env(4, 1)
    try:
        trial = sampler.run(agent, tasks, 2, seed=7)
        raw.set_tasks(tasks)
        valid = int(trial.valid.sum())
        assert valid < trial.valid.size  # some ants fell: the check means something
        steps, rewards = measure._replay(raw, trial, seed=7)
        assert steps == valid and np.array_equal(rewards, trial.rewards)  # the same physics, bit for bit
        steps, rewards = measure._replay(raw, trial, seed=8)  # other reset seeds: other falls
        assert steps != valid and not np.array_equal(rewards, trial.rewards)
    finally:
        sampler.close()
        raw.close()


def test_report_puts_gradient_steps_of_unequal_work_side_by_side():
    """Where both a method's and its peer's gradient steps were counted, the row's notes give both and the
    rate per unit of work; the status still follows the gradient-step ratio."""
    jobs = [
        {"id": "peer/sac", "kind": "peer", "name": "sb3-sac", "suite": "h", "batch": 1, "reference": ""},
        {"id": "train/p", "kind": "train", "name": "p", "suite": "s", "batch": 5, "reference": "peer/sac",
         "min_ratio": 1.0},
    ]  # fmt: skip
    base = {"peak_rss_mb": 100.0, "load_1m": 1.0, "unit": "grad steps/s"}
    results = {
        "peer/sac": {"count": 100, "seconds": 1.0, "flops_per_grad_step": 1.0e9, **base},
        "train/p": {"count": 90, "seconds": 1.0, "flops_per_grad_step": 1.2e9, **base},
    }
    row = {r["id"]: r for r in report.finish_rows(jobs, results, [])}["train/p"]
    assert row["ratio"] == 0.9 and row["status"] == "FAIL >=1x ref"
    assert "per gradient step 1200 MFLOP against the peer's 1000" in row["notes"]
    assert "per unit of work 1.08x the peer" in row["notes"]
    del results["peer/sac"]["flops_per_grad_step"]
    row = {r["id"]: r for r in report.finish_rows(jobs, results, [])}["train/p"]
    assert "MFLOP" not in row["notes"]


def test_a_sampler_row_replays_its_own_trials_on_a_terminating_suite(monkeypatch):
    """measure_sampler replays each round's trial with that round's seeds (ant-dir, where seeds matter);
    a replay that differs from its trial raises instead of giving a ratio."""
    from scripts.perf import measure

    job = {"suite": "ant-dir", "algo": "null", "profile": "quick", "overrides": {}, "batch": 4,
           "workers": 1, "episodes": 1, "rounds": 2, "warmup_episodes": 1}  # fmt: skip
    res = measure.measure_sampler(job)
    assert res["ratio"] > 0 and "null agent" in res["notes"]
    replay = measure._replay
    monkeypatch.setattr(measure, "_replay", lambda env, trial, seed: replay(env, trial, seed + 1))
    with pytest.raises(RuntimeError, match="diverged"):
        measure.measure_sampler(job)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--suites", "nosuch"], "--suites: unknown suite 'nosuch'; accepted:"),
        (["--algos", "nosuch"], "--algos: unknown algorithm 'nosuch'; accepted:"),
        (
            ["--timeout", "0"],
            "argument --timeout: expected a number of seconds > 0 and at most 86,400 (a day), got '0'",
        ),
        (["--top", "-1"], "--top must be a positive integer"),
        (["--out", "."], "--out .: expected the path of a .csv file"),
        (
            ["--top", "3", "--top", "4", "--suites", "nosuch"],
            "argument --top: given more than once; it takes",
        ),
    ],
)
def test_bad_flags_are_one_line_before_anything_is_measured(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", "--only", "sampler", *argv])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("blocked", "needle"),
    [
        ("afile", "afile is a file, not a directory"),  # --out afile/perf.csv
        ("perf.csv/", "perf.csv is a directory"),
        ("perf_scaling.csv/", "perf_scaling.csv is a directory"),
        ("perf_scaling.png/", "perf_scaling.png is a directory"),
    ],
)
def test_an_out_that_cannot_be_written_is_one_line_before_anything_is_measured(
    capsys, tmp_path, blocked, needle
):
    """The files are written after every measurement (up to ten minutes of them): checked first."""
    path = tmp_path / blocked.rstrip("/")
    path.mkdir() if blocked.endswith("/") else path.write_text("")
    out = tmp_path / "afile" / "perf.csv" if blocked == "afile" else tmp_path / "perf.csv"
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", "--only", "raw", "--suites", "point-nav", "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exc.value.code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"python -m scripts.perf: error: --out {out}: ") and captured.out == ""


def test_an_out_in_a_directory_that_cannot_be_written_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # as a non-root user in a read-only dir
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", "--only", "raw", "--out", str(tmp_path / "new" / "perf.csv")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and f"--out {tmp_path / 'new' / 'perf.csv'}: {tmp_path} is not writable" in err


@pytest.fixture
def nothing_measured(monkeypatch):
    """Fail the test if the command gets as far as planning (measuring starts right after)."""

    def boom(args):
        raise AssertionError("bad input reached the measurements")

    monkeypatch.setattr(plan, "build_plan", boom)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--timeout", "3e6"], "argument --timeout: expected a number of seconds > 0 and at most 86,400"),
        (["--timeout", "1e308"], "at most 86,400 (a day), got '1e308'"),
        (["--timeout", "nan"], "got 'nan'"),
        (["--profile", ""], "argument --profile: expected a measurement ID, e.g. sampler/rl2/"),
        (["--profile", " "], "got an empty one"),
        (["--jobs", "abc"], "argument --jobs: (internal) expected a JSON list of jobs"),
        (["--jobs", ""], "argument --jobs: (internal) expected a JSON list of jobs"),
        (["--jobs", "[1]"], 'each an object with a string "id"'),
    ],
)
def test_out_of_range_and_empty_values_are_one_line_before_anything_is_measured(
    nothing_measured, capsys, argv, needle
):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", "--only", "raw", *argv])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert err.startswith("python -m scripts.perf: error: ")


def test_the_longest_timeout_passes():
    assert cli.parse_args(["--quick", "--timeout", "86400"]).timeout == 86_400.0


def test_an_unknown_profile_id_has_the_one_prefix(capsys, monkeypatch):
    monkeypatch.setattr(plan, "build_plan", lambda args: ([{"id": "raw/a"}], []))
    assert cli.main(["--quick", "--profile", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "python -m scripts.perf: error: --profile: unknown measurement 'nope'; accepted: raw/a"


def _out_refused(capsys, out):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--quick", "--only", "raw", "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and captured.out == "", err
    assert err.startswith(f"python -m scripts.perf: error: --out {out}: ")
    return err


def test_an_out_the_file_system_refuses_is_one_line(nothing_measured, capsys, tmp_path, monkeypatch):
    """Checked for real before measuring: names too long, a file system that takes no files, a
    directory that cannot even be looked at; nothing is left behind by the check."""
    err = _out_refused(capsys, tmp_path / ("a" * 300 + ".csv"))
    assert "a name of 308 bytes with the .tmp of its atomic write, longer than the 255" in err
    err = _out_refused(capsys, tmp_path / "new" / ("b" * 250 + ".csv"))  # perf.csv.tmp: 258 bytes
    assert "longer than the 255 this file system takes" in err
    if Path("/proc/self").is_dir():  # procfs: writable by its permissions, takes no new file
        err = _out_refused(capsys, Path("/proc/x.csv"))
        assert "/proc: cannot create a file in it" in err
    real_mkstemp = cli.tempfile.mkstemp

    def read_only(*args, **kwargs):  # a read-only mount: permissions say yes, the file system no
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cli.tempfile, "mkstemp", read_only)
    err = _out_refused(capsys, tmp_path / "perf.csv")
    assert f"{tmp_path}: cannot create a file in it (Read-only file system)" in err
    monkeypatch.setattr(cli.tempfile, "mkstemp", real_mkstemp)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_stat = Path.stat

    def stat(self, *args, **kwargs):  # as a non-root user under a directory at mode 000
        if self.is_relative_to(locked) and self != locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    err = _out_refused(capsys, locked / "sub" / "perf.csv")
    assert f"{locked / 'sub'} cannot be looked at (Permission denied)" in err
    monkeypatch.setattr(Path, "stat", real_stat)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked"]  # no probe file left


def test_a_broken_symbolic_link_at_out_is_refused_not_replaced(nothing_measured, capsys, tmp_path):
    for name in ("perf.csv", "perf_scaling.png"):
        link = tmp_path / name
        link.symlink_to(tmp_path / "gone")
        err = _out_refused(capsys, tmp_path / "perf.csv")
        assert f"{link} is a broken symbolic link; expected the path of a .csv file" in err
        assert link.is_symlink() and not link.exists()
        link.unlink()
