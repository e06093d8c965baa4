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
import sys
from pathlib import Path

import numpy as np

from benchmark.cli import OneLineParser, seed_type
from scripts.finished_run import RunError, load_run, read_record

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
    """The command line (``argv``; None: ``sys.argv[1:]``): RUN_DIR, ``--split``, ``--seed``, ``--device``.
    A malformed one exits with one line on stderr and code 2 (``OneLineParser``)."""
    p = OneLineParser(prog="python -m scripts.cheetah_posture", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run directory (holds config.json and checkpoint.pt)")
    p.add_argument(
        "--split", default="test", help="task split: test, ood, train, or validation (tuning runs only)"
    )
    p.add_argument("--seed", type=seed_type, default=0, help="environment and torch seed of the trial")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    return p.parse_args(argv)


def fail(message: str) -> None:
    """Print ``cheetah_posture: MESSAGE`` on stderr and exit with code 2 (raises ``SystemExit``)."""
    print(f"cheetah_posture: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Play one meta-test trial per task of ``--split`` and print, per task and on average, the last
    episode's speed (m/s), flipped share and return; returns 0. Exits with code 2 (``fail``) for a run that
    is not on a HalfCheetah suite or that ``read_record`` / ``load_run`` refuse (``RunError``)."""
    args = parse_args(argv)
    run = args.run_dir
    try:
        record = read_record(run)
        if record["suite"] not in SUITES:
            accepted = ", ".join(SUITES)
            fail(f"{run}: a run on {record['suite']!r}; this check reads HalfCheetah (accepted: {accepted})")
        loaded = load_run(run, record, args.split, args.device)
    except RunError as exc:
        fail(str(exc))
    import torch

    from benchmark.sampler import TrialSampler

    suite, tasks = loaded.suite, loaded.tasks
    torch.manual_seed(args.seed)
    sampler = TrialSampler(suite, num_workers=1)
    try:
        agent = loaded.learner.make_agent(evaluation=True)
        batch = sampler.run(agent, tasks, suite.eval_episodes, seed=args.seed)
    finally:
        sampler.close()
    speed, flipped = posture(batch.obs, suite.horizon)
    returns = batch.rewards[:, -suite.horizon :].sum(1)
    print(
        f"{run}: {record['algo']} on {suite.name}, {len(tasks)} {args.split} tasks, episode "
        f"{suite.eval_episodes} of the meta-test trial, {loaded.checkpoint_text}"
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
