"""Smoke test of scripts/perf.py: the tiniest sizes, every kind of row, the CSV columns."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "perf.py"
COLUMNS = [
    "id", "kind", "name", "suite", "batch", "steps", "seconds", "steps_per_s", "us_per_step",
    "reference", "ratio", "target", "status", "peak_rss_mb", "notes",
]  # fmt: skip


def _load_perf():
    spec = importlib.util.spec_from_file_location("metarl_perf_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _have_sb3() -> bool:
    return importlib.util.find_spec("stable_baselines3") is not None


def test_perf_quick_writes_every_kind(tmp_path, capsys):
    perf = _load_perf()
    out = tmp_path / "perf.csv"
    assert perf.main(["--quick", "--no-isolate", "--out", str(out)]) == 0
    with out.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    by_id = {r["id"]: r for r in rows}
    assert {r["kind"] for r in rows if r["status"] != "SKIP"} >= {"raw", "sampler", "train"}
    measured = [r for r in rows if r["status"] not in ("SKIP", "ERROR")]
    for r in measured:
        assert float(r["steps_per_s"]) > 0 and float(r["peak_rss_mb"]) > 0, r
        assert r["reference"], r
    assert float(by_id["raw/HalfCheetah-v5/single"]["ratio"]) > 0
    assert float(by_id["sampler/rl2/halfcheetah-vel/B2"]["ratio"]) > 0
    row = by_id["sampler/rl2/halfcheetah-vel/B2"]  # the status follows from the ratio and its target
    assert row["status"] == ("PASS" if float(row["ratio"]) >= 0.8 else "FAIL >=0.8x raw"), row
    if "window/trmrl/N5" in by_id:  # TrMRL importable
        assert float(by_id["window/trmrl/N5"]["ratio"]) == 1.0
        assert by_id["window/trmrl/N400"]["target"] == "<=80x N5"
    if _have_sb3():
        sb3 = by_id["train/sb3-ppo-dummy/HalfCheetah-v5"]
        assert float(sb3["steps_per_s"]) > 0
        assert by_id["train/rl2/halfcheetah-vel"]["reference"] == sb3["id"]
        assert float(by_id["train/rl2/halfcheetah-vel"]["ratio"]) > 0
    else:
        assert by_id["train/sb3-ppo"]["status"] == "SKIP"
    printed = capsys.readouterr().out
    assert "raw/HalfCheetah-v5/single" in printed and "status" in printed


def test_perf_one_measurement_in_a_subprocess():
    perf = _load_perf()
    job = {"id": "raw/HalfCheetah-v5/single", "op": "gym_single", "env_id": "HalfCheetah-v5", "steps": 100,
           "torch_threads": 1}  # fmt: skip
    res = perf.run_isolated(job, timeout=120)
    assert res["steps"] == 100 and res["seconds"] > 0 and res["peak_rss_mb"] > 10


def test_perf_profile_prints_the_timed_region_only(capsys):
    perf = _load_perf()
    assert perf.main(["--quick", "--profile", "sampler/rl2/point-nav/B2", "--top", "40"]) == 0
    printed = capsys.readouterr().out
    assert "steps/s under cProfile" in printed
    assert "sampler.py" in printed and "rl2.py" in printed  # the sampling loop and the policy
    assert "importlib" not in printed  # imports and set-up happen outside the timed region
    assert perf.PROFILER is None
    assert perf.main(["--quick", "--profile", "sampler/nope"]) == 2
    assert "unknown measurement 'sampler/nope'" in capsys.readouterr().err
