"""MAML's own few-shot check (Finn et al. 2017, Sec. 5.3 / Fig. 4) on a finished run's checkpoint.

``python -m scripts.maml_few_shot RUN_DIR [--rollouts 20] [--split test] [--seed 0]`` loads the MAML run
in RUN_DIR (its ``checkpoint.pt``, with the settings recorded in its ``config.json``) and, for every task
of ``--split``, plays ``--rollouts`` single-episode rollouts with the meta-learned parameters theta
(sampled actions), takes one inner step on them (the training inner step: linear-baseline policy
gradient, step size ``inner_lr``), and plays ``--rollouts`` more with theta' (sampled actions, Finn's
reading) and ``--rollouts`` more with theta' acting with its mean (the protocol's way of acting once no
inner step follows; it separates the direction of the step from the action noise). It prints the mean
return per task before and after the step, and their normalised values where the split has harness
references (``(R - R_random) / (R_oracle - R_random)``, per episode).

This is Finn et al.'s setting (20 rollouts per inner step on 2D navigation), not the benchmark protocol:
the protocol's meta-test trial (``eval.csv``) adapts on the episodes it plays itself. Nothing is written;
bad input gets one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.maml_few_shot", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a MAML run directory (holds config.json and checkpoint.pt)")
    p.add_argument("--rollouts", type=int, default=20, help="rollouts per task per inner step (Finn: 20)")
    p.add_argument(
        "--split", default="test", help="task split: test, ood, train, or validation (tuning runs only)"
    )
    p.add_argument("--seed", type=int, default=0, help="environment and torch seed of the check")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"maml_few_shot: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rollouts < 1:
        fail(f"--rollouts {args.rollouts}: must be an integer >= 1")
    run = args.run_dir
    config_path, ckpt_path = run / "config.json", run / "checkpoint.pt"
    if not config_path.is_file() or not ckpt_path.is_file():
        fail(f"{run}: not a run directory with config.json and checkpoint.pt")
    try:
        record = json.loads(config_path.read_text())
        algo, suite_name = record["algo"], record["suite"]
        run_record, algo_record = dict(record["run"]), dict(record["algo_config"])
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: JSONDecodeError too
        fail(f"{config_path}: unreadable run config ({type(exc).__name__}: {exc})")
    if algo != "maml":
        fail(f"{run}: a run of {algo!r}; this check is MAML's (accepted: runs with algo 'maml')")

    import torch

    from algorithms.maml import MAML, MAMLConfig, few_shot_returns
    from benchmark.cli import check_device
    from benchmark.config import HarnessConfig, from_record
    from benchmark.errors import UsageError
    from benchmark.registry import load_suite
    from benchmark.results import load_checkpoint
    from benchmark.runner import validation_split
    from benchmark.sampler import TrialSampler

    try:  # the settings the run recorded (config.json), not today's profile
        check_device(args.device)
        device = torch.device(args.device)
        suite = load_suite(suite_name)
        run_cfg, algo_cfg = from_record(HarnessConfig, run_record), from_record(MAMLConfig, algo_record)
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

    learner = MAML(suite.spec(), algo_cfg, device)
    learner.load_state_dict(state["learner"])
    torch.manual_seed(args.seed)  # the action noise

    sampler = TrialSampler(suite, num_workers=1)
    try:
        pre, post, post_mean = few_shot_returns(learner, sampler, list(tasks), args.rollouts, seed=args.seed)
    finally:
        sampler.close()
    ref = suite.reference_returns(args.split) if args.split != "validation" else None
    print(
        f"{run}: {suite_name}, {len(tasks)} {args.split} tasks, {args.rollouts} rollouts per task, "
        f"inner_lr {algo_cfg.inner_lr}, checkpoint at {state.get('env_steps', '?')} env steps"
    )
    print(f"{'task':>8s} {'pre':>9s} {'post':>9s} {'post_mean':>9s}")
    for task, a, b, c in zip(tasks, pre, post, post_mean, strict=True):
        print(f"{task.task_id:8d} {a:9.2f} {b:9.2f} {c:9.2f}")
    print(f"mean return: pre {pre.mean():.2f}, post {post.mean():.2f}, post_mean {post_mean.mean():.2f}")
    if ref is not None:
        means = np.array([pre.mean(), post.mean(), post_mean.mean()])
        norm = (means - ref.random) / (ref.oracle - ref.random)
        print(
            f"normalised: pre {norm[0]:.3f}, post {norm[1]:.3f}, post_mean {norm[2]:.3f} "
            f"(random {ref.random:.2f}, oracle {ref.oracle:.2f} per episode)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
