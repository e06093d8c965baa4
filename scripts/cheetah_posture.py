"""How a finished run's HalfCheetah moves: forward speed and time spent on its back, per task.

``python -m scripts.cheetah_posture RUN_DIR [--split test] [--seed 0] [--device cpu]`` loads the run in
RUN_DIR (its ``checkpoint.pt``, with the settings recorded in its ``config.json``; any registered method)
on ``halfcheetah-vel`` or ``halfcheetah-dir``, plays one meta-test trial per task of ``--split`` with the
method's evaluation agent (as the evaluator does: ``make_agent(evaluation=True)``, the suite's
``eval_episodes`` episodes, adaptation state kept across them) and reads the last episode:

* **speed**: the torso's forward velocity (m/s; observation index 8, ``qvel[0]`` of HalfCheetah-v5), mean
  over the episode's steps from step 50 on (after the start-up);
* **flipped**: the share of the episode's steps with the torso's pitch (observation index 1, rad) beyond
  1.5 in absolute value, i.e. the cheetah on its back;
* **return** of that episode (raw).

Why: at a short discount PPO policies on halfcheetah-vel learn to run on their backs, a well-known local
optimum that caps their speed (``docs/tuning/trmrl.md``, twelfth round; about 1 m/s against targets of up
to 3 m/s), and the return alone does not say so. Nothing is written; bad input gets one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SUITES = ("halfcheetah-vel", "halfcheetah-dir")
PITCH, SPEED = 1, 8  # HalfCheetah-v5 observation indices: rooty (rad), x velocity of the torso (m/s)
FLIP_RAD = 1.5  # |pitch| beyond this: on its back
SETTLE_STEPS = 50  # speed is averaged from this step of the episode on


def posture(obs: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Speed and flipped share of the last episode of each trial.

    ``obs`` (B, K * H, 17): a trial batch's observations, ``horizon`` H. Returns (speed (B,) in m/s: mean
    of obs[..., 8] over steps SETTLE_STEPS .. H-1 of the last episode; flipped (B,) in [0, 1]: share of
    that episode's steps with |obs[..., 1]| > FLIP_RAD).
    """
    last = obs[:, -horizon:]
    return last[:, SETTLE_STEPS:, SPEED].mean(1), (np.abs(last[:, :, PITCH]) > FLIP_RAD).mean(1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.cheetah_posture", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run directory (holds config.json and checkpoint.pt)")
    p.add_argument(
        "--split", default="test", help="task split: test, ood, train, or validation (tuning runs only)"
    )
    p.add_argument("--seed", type=int, default=0, help="environment and torch seed of the trial")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"cheetah_posture: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = args.run_dir
    config_path, ckpt_path = run / "config.json", run / "checkpoint.pt"
    if not config_path.is_file() or not ckpt_path.is_file():
        fail(f"{run}: not a run directory with config.json and checkpoint.pt")
    try:
        record = json.loads(config_path.read_text())
        algo_name, suite_name = record["algo"], record["suite"]
        run_record, algo_record = dict(record["run"]), dict(record["algo_config"])
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: JSONDecodeError too
        fail(f"{config_path}: unreadable run config ({type(exc).__name__}: {exc})")
    if suite_name not in SUITES:
        fail(f"{run}: a run on {suite_name!r}; this check reads HalfCheetah (accepted: {', '.join(SUITES)})")

    import torch

    from benchmark.cli import check_device
    from benchmark.config import HarnessConfig, from_record
    from benchmark.errors import UsageError
    from benchmark.registry import load_algorithm, load_suite
    from benchmark.results import load_checkpoint
    from benchmark.runner import validation_split
    from benchmark.sampler import TrialSampler

    try:  # the settings the run recorded (config.json), not today's profile
        check_device(args.device)
        device = torch.device(args.device)
        algo = load_algorithm(algo_name)
        suite = load_suite(suite_name)
        run_cfg, algo_cfg = from_record(HarnessConfig, run_record), from_record(algo.Config, algo_record)
        state = load_checkpoint(ckpt_path, device)
    except UsageError as exc:
        fail(str(exc))
    except ValueError as exc:  # RegistryError, ConfigError, ResultsError: one line each
        fail(f"{run}: {exc}")
    if args.split == "validation":
        if not run_cfg.validation_tasks:
            fail(f"--split validation: {run} was not a tuning run (accepted: test, ood, train)")
        tasks = validation_split(suite, run_cfg.validation_tasks)[1]
    elif args.split in suite.splits():
        tasks = suite.tasks(args.split)
    else:
        fail(f"--split {args.split!r}: suite {suite_name} has {', '.join(suite.splits())} (and validation)")

    learner = algo(suite.spec(), algo_cfg, device)
    learner.load_state_dict(state["learner"])
    torch.manual_seed(args.seed)
    sampler = TrialSampler(suite, num_workers=1)
    try:
        agent = learner.make_agent(evaluation=True)
        batch = sampler.run(agent, list(tasks), suite.eval_episodes, seed=args.seed)
    finally:
        sampler.close()
    speed, flipped = posture(batch.obs, suite.horizon)
    returns = batch.rewards[:, -suite.horizon :].sum(1)
    print(
        f"{run}: {algo_name} on {suite_name}, {len(tasks)} {args.split} tasks, episode {suite.eval_episodes} "
        f"of the meta-test trial, checkpoint at {state.get('env_steps', '?')} env steps"
    )
    print(f"{'task':<28s} {'speed m/s':>9s} {'flipped':>8s} {'return':>9s}")
    for task, v, f, r in zip(tasks, speed, flipped, returns, strict=True):
        print(f"{task.description:<28s} {v:9.2f} {f:8.2f} {r:9.1f}")
    on_back = int((flipped > 0.5).sum())
    print(
        f"mean: speed {speed.mean():.2f} m/s, flipped {flipped.mean():.2f} of the steps, return "
        f"{returns.mean():.1f}; on its back for most of the episode in {on_back} of {len(tasks)} tasks"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
