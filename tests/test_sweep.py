"""Sweeps on both backends: bad input, per-run failures, killed runs resumed, Ray on a two-node cluster.

Every sweep here is tiny (point-nav, 6 iterations of 400 env steps, a checkpoint every 2 iterations).
The Ray tests share one two-node cluster (``ray.cluster_utils.Cluster``, one CPU per node) whose
nodes write runs under their own root (``METARL_BENCH_NODE_OUT``), never under the driver's ``--out``:
what the driver holds came back as bytes, as on a cluster without a shared filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from benchmark.cli import main
from benchmark.results import load_checkpoint
from benchmark.sweep import (
    RunResult,
    RunSpec,
    SweepProgress,
    failure_reason,
    read_progress_tail,
    results_table,
    store_files,
)

ALGOS = ("rl2", "trmrl")
SEEDS = (0, 1)
TINY = [
    "--set", "budget_steps=2400",  # 6 iterations of 2 trials x 2 episodes x 100 steps
    "--set", "eval_every_steps=800",
    "--set", "checkpoint_every_steps=800",  # after iterations 2, 4 and 6
    "--set", "final_eval_max_tasks=2",
    "--set", "meta_batch_size=2",
    "--set", "epochs=1",
    "--set", "eval_tasks=2",
    "--set", "torch_threads=1",
]  # fmt: skip
TIMING = "wall_time_s"


def sweep_argv(out: Path, algos=ALGOS, seeds="0-1", *extra: str) -> list[str]:
    return ["sweep", "--algo", *algos, "--suite", "point-nav", "--seeds", seeds, "--out", str(out),
            "--no-figures", *TINY, *extra]  # fmt: skip


def read_run(root: Path, algo: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    run = root / "point-nav" / algo / f"seed{seed}"
    progress = pd.read_csv(run / "progress.csv").drop(columns=TIMING)
    return progress, pd.read_csv(run / "eval.csv", keep_default_na=False)


def assert_same_run(a: Path, b: Path, algo: str, seed: int) -> None:
    (pa, ea), (pb, eb) = read_run(a, algo, seed), read_run(b, algo, seed)
    assert len(pa) == 6 and len(ea) > 0
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ea, eb)


# -- a method that diverges: a run failing for a reason of its own ------------------------------------
DIVERGING = '''
"""RL² that diverges: its loss is NaN at the second iteration (tests sweep failure reports)."""
from algorithms.rl2 import RL2


class Diverging(RL2):
    def train_step(self, ctx):
        metrics = super().train_step(ctx)
        self.iterations = getattr(self, "iterations", 0) + 1
        if self.iterations == 2:
            raise FloatingPointError("policy loss is NaN at iteration 2")
        return metrics
'''


def install_diverging_plugin(site: Path) -> Path:
    """An installed distribution (module + dist-info with an entry point) in ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "diverging_method.py").write_text(DIVERGING)
    info = site / "diverging_method-0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: diverging-method\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[metarl_bench.algorithms]\ndiverging = diverging_method:Diverging\n"
    )
    return site


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    return install_diverging_plugin(tmp_path_factory.mktemp("site"))


@pytest.fixture
def with_plugin(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))  # the driver resolves the runs' settings
    path = os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)  # the run processes
    return plugin_site


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The local backend's results for ALGOS x SEEDS: uninterrupted runs, two at a time."""
    out = tmp_path_factory.mktemp("reference") / "runs"
    assert main(sweep_argv(out, ALGOS, "0-1", "--jobs", "2")) == 0
    return out


def sweep_process(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def run_processes(marker: str) -> list[psutil.Process]:
    """The ``metarl-bench run`` processes whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "benchmark" in cmd and "run" in cmd and any(marker in c for c in cmd):
            found.append(proc)
    return found


def wait_for_checkpoint(run: Path, timeout: float = 300) -> tuple[int, bytes]:
    """Wait until ``run`` holds a checkpoint and one more iteration; (checkpoint iteration, progress)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if (run / "checkpoint.pt").exists():
                it = int(load_checkpoint(run / "checkpoint.pt", "cpu")["iteration"])
                progress = (run / "progress.csv").read_bytes()
                if progress.count(b"\n") >= 1 + it + 1:
                    return it, progress
        except Exception:  # noqa: BLE001 - a checkpoint being replaced; look again
            pass
        time.sleep(0.05)
    raise AssertionError(f"{run}: no checkpoint within {timeout} s")


def assert_resumed_from_checkpoint(run: Path, checkpoint_it: int, progress_at_kill: bytes) -> None:
    """Rows up to the checkpoint are the killed attempt's own (wall times included): not a restart."""
    kept = progress_at_kill.splitlines(keepends=True)[: 1 + checkpoint_it]
    now = (run / "progress.csv").read_bytes().splitlines(keepends=True)
    assert now[: 1 + checkpoint_it] == kept
    assert len(now) == 1 + 6


# -- validation --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--address", "auto"], "--address applies to --backend ray only"),
        (["--backend", "ray", "--address", "head-node"], "expected auto, HOST:PORT"),
        (["--backend", "ray", "--address", "10.0.0.1:99999"], "expected auto, HOST:PORT"),
        (["--backend", "ray", "--address", "http://10.0.0.1:6379"], "expected auto, HOST:PORT"),
        (["--jobs", "0"], "--jobs must be a positive integer, got '0'"),
        (["--jobs", "two"], "--jobs must be a positive integer"),
        (["--backend", "ray", "--jobs", "2"], "--jobs applies to --backend local only"),
        (["--max-retries", "-1"], "--max-retries must be a non-negative integer"),
        (["--resume", "--overwrite"], "exclude each other"),
        (["--set", "no_such_key=1"], "no_such_key"),  # no run accepts it: a typo, refused up front
        (["--set", "meta_batch_size=0"], "meta_batch_size"),  # out of every method's range
    ],
)
def test_bad_sweep_input_is_one_line_exit_2_writing_nothing(capsys, tmp_path, extra, needle):
    code = main(sweep_argv(tmp_path / "runs", ALGOS, "0", *extra))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("metarl-bench: error:"), err
    assert needle in lines[0], err
    assert not any(tmp_path.iterdir())


def test_algo_all_plans_every_registered_algorithm_and_stands_alone(capsys, tmp_path):
    from benchmark import registry
    from benchmark.cli import build_parser, plan_sweep

    args = build_parser().parse_args(
        ["sweep", "--algo", "all", "--suite", "point-nav", "--seeds", "0-1", "--out", str(tmp_path / "runs")]
    )
    specs, refused = plan_sweep(args)
    assert refused == []
    names = registry.algorithm_names()
    assert {"rl2", "trmrl", "maml", "pearl", "varibad"} <= set(names)
    assert sorted((s.algo, s.seed) for s in specs) == sorted((a, seed) for a in names for seed in (0, 1))
    code = main(sweep_argv(tmp_path / "runs", ("all", "rl2"), "0"))
    err = capsys.readouterr().err
    assert code == 2 and "--algo all stands alone" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_resumed_run_reserves_the_update_threads_it_recorded(tmp_path):
    from benchmark.cli import build_parser, plan_sweep
    from benchmark.results import run_dir

    out = tmp_path / "runs"
    recorded = run_dir(out, "point-nav", "rl2", 1)
    recorded.mkdir(parents=True)
    (recorded / "config.json").write_text(json.dumps({"run": {"torch_threads": 1, "update_threads": 2}}))
    argv = ["sweep", "--algo", "rl2", "--suite", "point-nav", "--seeds", "0-1", "--out", str(out)]
    argv += ["--set", "num_workers=1", "--set", "torch_threads=1"]

    def cpus(*extra):
        specs, _ = plan_sweep(build_parser().parse_args(argv + list(extra)))
        return {s.seed: s.cpus for s in specs}

    assert cpus("--resume") == {0: 1, 1: 2}  # seed 1 will update with its recorded 2 threads
    assert cpus("--resume", "--set", "update_threads=1") == {0: 1, 1: 1}  # an explicit count decides
    assert cpus("--overwrite") == {0: 1, 1: 1}  # a fresh run: the command's own count


def test_backend_ray_without_ray_installed_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(sweep_argv(tmp_path / "runs", ("rl2",), "0", "--backend", "ray"))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--backend ray needs the ray package: pip install 'metarl-bench[ray]'" in err
    assert not any(tmp_path.iterdir())


def test_list_and_run_never_import_ray(tmp_path):
    code = (
        "import sys; from benchmark.cli import main\n"
        "assert main(['list']) == 0\n"
        "assert main(['run', '--algo', 'rl2', '--suite', 'point-nav', '--no-progress',"
        f" '--out', {str(tmp_path)!r},"
        " '--set', 'budget_steps=800', '--set', 'eval_every_steps=800', '--set', 'meta_batch_size=4',"
        " '--set', 'final_eval_max_tasks=1', '--set', 'eval_tasks=1']) == 0\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# -- pieces -------------------------------------------------------------------------------------------
def test_failure_reason_names_the_error_line_the_exception_or_the_signal():
    assert failure_reason(2, "warn\nmetarl-bench: error: --set lr: bad\n") == "--set lr: bad"
    trace = "Traceback (most recent call last):\n  File x\nFloatingPointError: loss is NaN\n"
    assert failure_reason(1, trace) == "FloatingPointError: loss is NaN"
    assert failure_reason(-9, "") == "killed by SIGKILL"
    assert failure_reason(3, "") == "exit code 3"


def test_progress_tail_ignores_a_cut_last_row(tmp_path):
    path = tmp_path / "progress.csv"
    assert read_progress_tail(path) is None
    path.write_text("iteration,env_steps,wall_time_s,loss\n1,800,0.5,0.1\n2,1600,1.0,0.")
    assert read_progress_tail(path) == (1, 800)
    path.write_text("iteration,env_steps,wall_time_s,loss\n1,800,0.5,0.1\n2,1600,1.0,0.2\n")
    assert read_progress_tail(path) == (2, 1600)


def test_progress_lines_and_failure_table():
    specs = [RunSpec("rl2", "point-nav", s, 4800) for s in range(3)]
    progress = SweepProgress(specs, stream=open(os.devnull, "w"), live=False)
    progress.update(specs[0], status="running", attempt=2, iteration=3, env_steps=2400, where="node a")
    progress.update(specs[1], status="failed", iteration=1, env_steps=800, reason="FloatingPointError: NaN")
    lines = progress.block()
    assert "running" in lines[0] and "it 3, 2,400/4,800 steps (attempt 2, resumed) on node a" in lines[0]
    assert "failed" in lines[1] and lines[1].endswith(": FloatingPointError: NaN")
    assert lines[2].split() == ["rl2/point-nav/seed2", "queued"]
    assert "3.20k/14.4k" in lines[3] and "1 running, 1 queued, 1 failed" in lines[3]
    table = results_table(
        [RunResult(specs[0], "done"), RunResult(specs[1], "failed", "FloatingPointError: NaN")]
    )
    assert table.splitlines()[2].split() == ["rl2/point-nav/seed1", "1", "FloatingPointError:", "NaN"]


def test_store_files_writes_what_came_back_and_drops_a_stale_done(tmp_path):
    run = tmp_path / "run"
    store_files(run, {"eval.csv": b"a\n", "done": b"x"})
    assert (run / "eval.csv").read_bytes() == b"a\n" and (run / "done").exists()
    store_files(run, {"eval.csv": b"b\n", "progress.csv": b"p\n"})
    assert (run / "eval.csv").read_bytes() == b"b\n" and not (run / "done").exists()
    assert sorted(p.name for p in run.iterdir()) == ["eval.csv", "progress.csv"]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_fresh(capsys, tmp_path, reference):
    """What a retry does when its first attempt died early: ``--resume`` without a checkpoint."""
    out = tmp_path / "runs"
    argv = ["run", "--algo", "rl2", "--suite", "point-nav", "--no-progress", "--out", str(out), *TINY]
    run = out / "point-nav" / "rl2" / "seed0"
    shutil.copytree(reference / "point-nav" / "rl2" / "seed0", run)
    (run / "checkpoint.pt").unlink()  # as if killed after iteration 1, before the first checkpoint
    (run / "done").unlink()
    lines = (run / "progress.csv").read_text().splitlines(keepends=True)
    (run / "progress.csv").write_text("".join(lines[:2]))
    (run / "eval.csv").write_text((run / "eval.csv").read_text() + "1,2,3")  # a row cut by the kill
    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    assert_same_run(reference, out, "rl2", 0)


# -- the local backend ----------------------------------------------------------------------------------
def test_local_failed_run_is_reported_and_the_others_go_on(capsys, tmp_path, with_plugin):
    """At --jobs 1 too: every run is its own process."""
    out = tmp_path / "runs"
    code = main(sweep_argv(out, ("diverging", "rl2"), "0", "--jobs", "1", "--max-retries", "2"))
    stdout, err = capsys.readouterr()
    assert code == 1 and "1 of 2 runs failed" in err
    assert (out / "point-nav" / "rl2" / "seed0" / "done").exists()
    assert not (out / "point-nav" / "diverging" / "seed0" / "done").exists()
    row = [line for line in stdout.splitlines() if line.startswith("diverging/point-nav/seed0")]
    assert row and row[0].split()[1] == "1", stdout  # one attempt: an error of its own is not retried
    assert row[0].endswith("FloatingPointError: policy loss is NaN at iteration 2"), stdout
    assert "rl2/point-nav/seed0" not in stdout.split("runs failed")[-1]
    log = (out / "logs" / "point-nav_diverging_seed0.log").read_text()
    assert "Traceback" in log and log.count("=== attempt") == 1


def assert_refused_run_reported(code: int, stdout: str, err: str, out: Path) -> None:
    """trmrl has no ``hidden_size``: it never starts and is reported; rl2 runs to the end."""
    assert code == 1 and "1 of 2 runs failed" in err, err
    assert "sweep: trmrl/point-nav/seed0 will not start: refused its settings:" in err
    assert (out / "point-nav" / "rl2" / "seed0" / "done").exists()
    assert not (out / "point-nav" / "trmrl").exists()  # nothing written for the refused run
    row = [line for line in stdout.splitlines() if line.startswith("trmrl/point-nav/seed0")]
    assert row and row[0].split()[1] == "0" and "hidden_size" in row[0], stdout  # never attempted


def test_local_run_with_a_setting_of_its_own_refused_is_reported_and_the_others_go_on(capsys, tmp_path):
    out = tmp_path / "runs"
    code = main(sweep_argv(out, ("rl2", "trmrl"), "0", "--set", "hidden_size=16"))
    stdout, err = capsys.readouterr()
    assert_refused_run_reported(code, stdout, err, out)


def test_local_run_killed_mid_run_resumes_from_its_checkpoint(tmp_path, reference):
    out = tmp_path / "runs"
    sweep = sweep_process(sweep_argv(out, ("rl2",), "0", "--jobs", "1"))
    run = out / "point-nav" / "rl2" / "seed0"
    checkpoint_it, progress_at_kill = wait_for_checkpoint(run)
    children = [p for p in run_processes(str(out)) if p.ppid() == sweep.pid]
    assert len(children) == 1
    children[0].send_signal(signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr
    assert "killed by SIGKILL; retrying with --resume" in stdout + stderr
    assert_resumed_from_checkpoint(run, checkpoint_it, progress_at_kill)
    assert_same_run(reference, out, "rl2", 0)
    log = (out / "logs" / "point-nav_rl2_seed0.log").read_text()
    assert "=== attempt 2 (retry" in log
    assert [line for line in log.splitlines() if line.startswith("=== attempt 2")][0].endswith("--resume")


# -- the Ray backend on a two-node cluster -----------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory, plugin_site):
    """A two-node Ray cluster on this machine (1 CPU per node); every node writes under node_root."""
    if os.environ.get("METARL_BENCH_REQUIRE_RAY"):
        import ray  # noqa: F401 - nox and CI install the ray extra: fail, never skip
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (nox -s tests installs it)")
    from ray.cluster_utils import Cluster

    from benchmark.sweep_ray import NODE_OUT_ENV

    node_root = tmp_path_factory.mktemp("nodes")
    env = {NODE_OUT_ENV: str(node_root), "PYTHONPATH": os.pathsep.join([str(plugin_site), os.getcwd()])}
    cluster = Cluster()
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, env_vars=env)
        cluster.wait_for_nodes()
        yield cluster.address, node_root
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
def test_ray_sweep_on_two_nodes_equals_the_local_backend(capsys, tmp_path, cluster, reference):
    address, node_root = cluster
    out = tmp_path / "runs"
    node_out = node_root / out.resolve().relative_to("/")  # where the nodes write this sweep's runs
    assert main(sweep_argv(out, ALGOS, "0-1", "--backend", "ray", "--address", address)) == 0
    capsys.readouterr()
    nodes = set()
    for algo in ALGOS:
        for seed in SEEDS:
            assert_same_run(reference, out, algo, seed)
            driver, node = (
                out / "point-nav" / algo / f"seed{seed}",
                node_out / "point-nav" / algo / f"seed{seed}",
            )
            assert sorted(p.name for p in driver.iterdir()) == [
                "config.json",
                "done",
                "eval.csv",
                "progress.csv",
            ]
            assert (node / "checkpoint.pt").exists()  # checkpoints stay where the run ran
            assert (driver / "eval.csv").read_bytes() == (node / "eval.csv").read_bytes()
            header = (out / "logs" / f"point-nav_{algo}_seed{seed}.log").read_text().splitlines()[0]
            nodes.add(header.split(" on node ")[1].split(",")[0])
    assert len(nodes) == 2, nodes  # both nodes ran runs


@pytest.mark.ray
def test_ray_worker_killed_mid_run_is_retried_and_resumes(tmp_path, cluster, reference):
    address, node_root = cluster
    out = tmp_path / "runs"
    sweep = sweep_process(sweep_argv(out, ("rl2",), "0", "--backend", "ray", "--address", address))
    node_out = node_root / out.resolve().relative_to("/")
    run = node_out / "point-nav" / "rl2" / "seed0"
    try:
        checkpoint_it, progress_at_kill = wait_for_checkpoint(run)
        (child,) = run_processes(str(node_out))
        worker = psutil.Process(child.ppid())
        assert "python" in worker.name().lower() or "ray" in " ".join(worker.cmdline()).lower()
        worker.send_signal(signal.SIGKILL)  # the Ray worker executing the run's task
        stdout, stderr = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, stderr
    assert "attempt 2, resumed" in stdout + stderr
    assert_resumed_from_checkpoint(run, checkpoint_it, progress_at_kill)
    assert_same_run(reference, out, "rl2", 0)
    log = (out / "logs" / "point-nav_rl2_seed0.log").read_text()
    retry = [line for line in log.splitlines() if line.startswith("=== ") and ", retry on node" in line]
    assert len(retry) == 1 and retry[0].endswith("--resume"), log


@pytest.mark.ray
def test_ray_failed_run_is_reported_and_the_others_go_on(capsys, tmp_path, cluster, with_plugin):
    address, node_root = cluster
    out = tmp_path / "runs"
    argv = sweep_argv(out, ("diverging", "rl2"), "0", "--backend", "ray", "--address", address)
    code = main(argv)
    stdout, err = capsys.readouterr()
    assert code == 1 and "1 of 2 runs failed" in err
    assert (out / "point-nav" / "rl2" / "seed0" / "done").exists()
    row = [line for line in stdout.splitlines() if line.startswith("diverging/point-nav/seed0")]
    assert row and row[0].split()[1] == "1", stdout  # not retried
    assert row[0].endswith("FloatingPointError: policy loss is NaN at iteration 2"), stdout
    log = (out / "logs" / "point-nav_diverging_seed0.log").read_text()  # came back from the node
    assert "Traceback" in log and log.count("=== sweep") == 1
    # the partial results came back too (figures draw it as in progress)
    assert (out / "point-nav" / "diverging" / "seed0" / "eval.csv").exists()


@pytest.mark.ray
def test_ray_run_with_a_setting_of_its_own_refused_is_reported_and_the_others_go_on(
    capsys, tmp_path, cluster
):
    address, _ = cluster
    out = tmp_path / "runs"
    argv = sweep_argv(
        out, ("rl2", "trmrl"), "0", "--set", "hidden_size=16", "--backend", "ray", "--address", address
    )
    code = main(argv)
    stdout, err = capsys.readouterr()
    assert_refused_run_reported(code, stdout, err, out)


def _need_ray():
    if os.environ.get("METARL_BENCH_REQUIRE_RAY"):
        import ray  # noqa: F401 - nox and CI install the ray extra: fail, never skip
    return pytest.importorskip("ray", reason="the ray extra is not installed (nox -s tests installs it)")


@pytest.mark.ray
def test_ray_address_where_nothing_listens_is_one_line_at_once(capsys, tmp_path):
    """ray.init would retry for minutes, printing GCS warnings: the address is probed first."""
    _need_ray()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = main(
        sweep_argv(tmp_path / "runs", ("rl2",), "0", "--backend", "ray", "--address", f"127.0.0.1:{port}")
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and time.monotonic() - start < 5, lines
    assert lines[0].startswith(
        f"metarl-bench: error: could not connect to the Ray cluster at 127.0.0.1:{port}"
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.ray
def test_ray_runs_no_node_can_hold_are_refused_by_their_resources(monkeypatch, capsys):
    """A task no node can ever schedule would wait forever, silently (a GPU run on a CPU-only cluster):
    refused on the local cluster the sweep starts; on a joined cluster (an autoscaler may add a node)
    a one-line warning, and the sweep goes on."""
    ray = _need_ray()
    from benchmark.errors import UsageError
    from benchmark.sweep_ray import check_resources

    nodes = [
        {"Alive": True, "Resources": {"CPU": 4.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 2.0}},  # dead: does not count
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    check_resources(
        [RunSpec("rl2", "point-nav", 0, 1, cpus=4), RunSpec("rl2", "point-nav", 1, 1, 1, 1)], None
    )
    for spec, needs in (
        (RunSpec("rl2", "point-nav", 0, 1, cpus=2, gpus=1), "it needs 2 CPU and 1 GPU on one node"),
        (RunSpec("rl2", "point-nav", 0, 1, cpus=5), "it needs 5 CPU on one node"),
    ):
        with pytest.raises(UsageError) as exc:
            check_resources([spec], None)
        assert str(exc.value).startswith("no node of the Ray cluster (local) can run rl2/point-nav/seed0")
        assert f"{needs}; the nodes have 1 CPU, 1 GPU; 4 CPU, 0 GPU;" in str(exc.value)
        capsys.readouterr()
        check_resources([spec], "10.0.0.5:6379")  # no raise
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            "sweep: warning: no node of the Ray cluster at 10.0.0.5:6379 can run rl2/point-nav/seed0"
        )
        assert err[0].endswith(
            "its runs wait until the cluster adds such a node (an autoscaler), Ctrl-C to stop"
        )


@pytest.mark.ray
@pytest.mark.skipif(torch.cuda.is_available(), reason="the local cluster would have the GPU")
def test_ray_sweep_of_gpu_runs_on_a_local_cluster_without_one_is_one_line_writing_nothing(capsys, tmp_path):
    _need_ray()
    out = tmp_path / "runs"
    code = main(sweep_argv(out, ("rl2",), "0", "--device", "cuda", "--backend", "ray"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines, lines
    assert "no node of the Ray cluster (local) can run rl2/point-nav/seed0: it needs" in lines[-1]
    assert "1 GPU on one node" in lines[-1] and lines[-1].endswith("--device cpu needs no GPU")
    assert not out.exists()
