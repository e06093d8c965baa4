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
the protocol's meta-test trial (``eval.csv``) adapts on the episodes it plays itself. ``--rollouts`` is at
most ``MAX_ROLLOUTS`` (1,000, fifty times Finn's): every rollout of every task is held in memory at once.
Nothing is written; bad input gets one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmark.cli import OneLineParser, seed_type
from scripts.finished_run import RunError, load_run, read_record

#: The most rollouts per task per inner step: the rollouts of all tasks are sampled as one batch, held in
#: memory (1,000 on a 50-goal Meta-World split: 50,000 episodes of 500 steps, gigabytes).
MAX_ROLLOUTS = 1_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``argv``; None: ``sys.argv[1:]``): RUN_DIR, ``--rollouts``, ``--split``, ``--seed``,
    ``--device``. A malformed one exits with one line on stderr and code 2 (``OneLineParser``)."""
    p = OneLineParser(prog="python -m scripts.maml_few_shot", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a MAML run directory (holds config.json and checkpoint.pt)")
    p.add_argument(
        "--rollouts",
        type=int,
        default=20,
        help=f"rollouts per task per inner step, 1 to {MAX_ROLLOUTS:,} (Finn: 20)",
    )
    p.add_argument(
        "--split", default="test", help="task split: test, ood, train, or validation (tuning runs only)"
    )
    p.add_argument("--seed", type=seed_type, default=0, help="environment and torch seed of the check")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    return p.parse_args(argv)


def fail(message: str) -> None:
    """Print ``maml_few_shot: MESSAGE`` on stderr and exit with code 2 (raises ``SystemExit``)."""
    print(f"maml_few_shot: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Run the check (``algorithms.maml.few_shot_returns``) and print the mean return per task before the
    inner step, after it (sampled actions) and after it acting with the mean, then their means, normalised
    where the split has reference returns; returns 0. Exits with code 2 (``fail``) for ``--rollouts``
    outside 1 to ``MAX_ROLLOUTS``, a run of another method, or a run that ``read_record`` / ``load_run``
    refuse (``RunError``)."""
    args = parse_args(argv)
    if not 1 <= args.rollouts <= MAX_ROLLOUTS:
        fail(
            f"--rollouts {args.rollouts}: must be an integer from 1 to {MAX_ROLLOUTS:,} (all rollouts "
            "are held in memory at once)"
        )
    run = args.run_dir
    try:
        record = read_record(run)
        if record["algo"] != "maml":
            fail(
                f"{run}: a run of {record['algo']!r}; this check is MAML's (accepted: runs with algo 'maml')"
            )
        loaded = load_run(run, record, args.split, args.device)
    except RunError as exc:
        fail(str(exc))
    import torch

    from algorithms.maml import few_shot_returns
    from benchmark.sampler import TrialSampler

    learner, algo_cfg, suite, tasks = loaded.learner, loaded.config, loaded.suite, loaded.tasks
    torch.manual_seed(args.seed)  # the action noise

    sampler = TrialSampler(suite, num_workers=1)
    try:
        pre, post, post_mean = few_shot_returns(learner, sampler, tasks, args.rollouts, seed=args.seed)
    finally:
        sampler.close()
    ref = suite.reference_returns(args.split) if args.split != "validation" else None
    print(
        f"{run}: {suite.name}, {len(tasks)} {args.split} tasks, {args.rollouts} rollouts per task, "
        f"inner_lr {algo_cfg.inner_lr}, {loaded.checkpoint_text}"
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
