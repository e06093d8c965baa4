"""``metarl-bench`` (also ``python -m benchmark``): list | run | sweep | figures.

Every user error ends in one line ``metarl-bench: error: ...`` and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from benchmark.config import PROFILES, ConfigError
from benchmark.errors import UsageError
from benchmark.launch import print_summary, resolve_run, run_one
from benchmark.paths import file_in_the_way, what_is

DEFAULT_SUITE = "halfcheetah-vel"
DEFAULT_OUT = "results/runs"


class _StoreOnce(argparse._StoreAction):
    """argparse's default action (store), refusing an option given twice: argparse would keep the last
    value silently (``--algo rl2 --algo trmrl`` ran trmrl alone)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's
        given = namespace.__dict__.setdefault("_given_once", set())
        if option_string is not None and self.dest in given:
            several = self.nargs in ("+", "*")
            accepted = f"list all its values after one {option_string}" if several else "it takes one value"
            raise argparse.ArgumentError(self, f"given more than once; {accepted}")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


class _OnceParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose options without an ``action`` refuse to be repeated (``_StoreOnce``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)


class _Parser(_OnceParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


class OneLineParser(_OnceParser):
    """argparse whose errors are one line ``PROG: error: ...`` on stderr and exit code 2 (no usage
    block), as the CLI's; for the scripts, which have no ``UsageError`` handler of their own."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` on stderr and exit with code 2 (``SystemExit``), no usage block."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def seed_type(text: str) -> int:
    """A seed: an integer from 0 to 2^64 - 1 (what ``torch.manual_seed`` takes)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**64 or str(value) != text.strip().lstrip("+"):
        raise argparse.ArgumentTypeError(f"seed must be an integer from 0 to 2^64 - 1, got {text!r}")
    return value


def out_dir(flag: str):  # noqa: ANN201 - an argparse type
    """An argparse type for a results directory; checks only (nothing is created): the path is not
    empty, and neither it nor a parent is a file or a broken symbolic link. Whether it
    can be written is left to the command (a finished run's summary needs no write)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{flag} must name a directory, got an empty path")
        path = Path(text)
        blocking = file_in_the_way(path.absolute())
        if blocking is not None:
            where = "" if blocking == path.absolute() else f" ({blocking})"
            raise argparse.ArgumentTypeError(f"{text}: is {what_is(blocking)}{where}, not a directory")
        return text

    return parse


#: The most seeds one sweep takes (``--seeds``): far more than any benchmark runs, and the list stays small.
MAX_SEEDS = 10_000


def seeds_type(text: str) -> list[int]:
    """'3', '0-4' or '0,2,5' (ranges and seeds mixed) -> list of seeds; at most ``MAX_SEEDS``, counted
    before the list is built."""
    parts: list[range] = []
    for part in text.split(","):
        if "-" in part.strip()[1:]:
            a, b = part.split("-", 1)
            lo, hi = seed_type(a), seed_type(b)
            if hi < lo:
                raise argparse.ArgumentTypeError(f"seed range {part!r} is empty")
            parts.append(range(lo, hi + 1))
        else:
            seed = seed_type(part)
            parts.append(range(seed, seed + 1))
    count = sum(r.stop - r.start for r in parts)  # len(range) overflows past 2^63
    if count > MAX_SEEDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} names {count:,} seeds; a sweep takes at most {MAX_SEEDS:,} (e.g. 0-9999)"
        )
    return [seed for r in parts for seed in r]


def _int_at_least(flag: str, low: int, accepted: str):  # noqa: ANN201 - an argparse type
    """An argparse type accepting integers >= ``low``; the error names ``flag`` and what is ``accepted``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be {accepted}, got {text!r}")
        return value

    return parse


def positive_int(flag: str):  # noqa: ANN201 - an argparse type
    """An argparse type accepting integers >= 1; the error names ``flag``."""
    return _int_at_least(flag, 1, "a positive integer")


def non_negative_int(flag: str):  # noqa: ANN201 - an argparse type
    """An argparse type accepting integers >= 0; the error names ``flag``."""
    return _int_at_least(flag, 0, "a non-negative integer")


_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)"
_ADDRESS = re.compile(rf"(ray://)?{_HOST}:(?P<port>[0-9]{{1,5}})")


def ray_address(text: str) -> str:
    """``auto``, ``HOST:PORT`` (a head node's address) or ``ray://HOST:PORT`` (Ray Client)."""
    match = _ADDRESS.fullmatch(text)
    if text == "auto" or (match and 1 <= int(match["port"]) <= 65535):
        return text
    raise argparse.ArgumentTypeError(
        f"--address {text!r}: expected auto, HOST:PORT (the head node, e.g. 10.0.0.5:6379) or ray://HOST:PORT"
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile", default="quick", choices=PROFILES, help="budget and hyperparameters (default quick)"
    )
    p.add_argument(
        "--out", default=DEFAULT_OUT, type=out_dir("--out"), help=f"results root (default {DEFAULT_OUT})"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a harness or method setting (repeatable); `metarl-bench list --settings ALGO`",
    )
    p.add_argument("--resume", action="store_true", help="continue an unfinished run from its checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run (kept until the new one has started, then deleted)",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N] (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``metarl-bench`` parser with its subcommands list, run, sweep and figures. A malformed
    command line raises ``UsageError`` (one line, exit 2 in ``main``) instead of argparse's usage and exit;
    ``--help`` still exits through ``SystemExit``."""
    parser = _Parser(prog="metarl-bench", description="Meta-RL benchmark: one protocol, tidy CSVs, figures.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_list = sub.add_parser("list", help="suites and algorithms (plugins included)")
    p_list.add_argument("--settings", metavar="ALGO", help="show every --set key for an algorithm")
    p_list.add_argument(
        "--suite", help="with --settings: the values a run on this suite starts from (its profile applied)"
    )
    p_list.add_argument("--profile", choices=PROFILES, help="with --settings --suite (default quick)")

    p_run = sub.add_parser("run", help="train and evaluate one (algo, suite, seed)")
    p_run.add_argument("--algo", required=True)
    p_run.add_argument("--suite", default=DEFAULT_SUITE)
    p_run.add_argument("--seed", type=seed_type, default=0)
    _add_run_options(p_run)

    p_sweep = sub.add_parser("sweep", help="algos x suites x seeds, then figures")
    p_sweep.add_argument(
        "--algo", nargs="+", required=True, help="algorithm names, or 'all' (every registered algorithm)"
    )
    p_sweep.add_argument("--suite", nargs="+", default=[DEFAULT_SUITE])
    p_sweep.add_argument(
        "--seeds",
        type=seeds_type,
        default=[0],
        help=f"3, 0-4 or 0,2,5 (default 0; at most {MAX_SEEDS:,} seeds)",
    )
    p_sweep.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: subprocesses on this machine; ray: one task per run on a Ray cluster",
    )
    p_sweep.add_argument(
        "--jobs", type=positive_int("--jobs"), default=None, help="runs at once, --backend local (default 1)"
    )
    p_sweep.add_argument(
        "--address",
        type=ray_address,
        default=None,
        help="--backend ray: cluster to join (auto, HOST:PORT or ray://HOST:PORT); default: a local one",
    )
    p_sweep.add_argument(
        "--max-retries",
        type=non_negative_int("--max-retries"),
        default=3,
        help="restarts (with --resume) of a run whose process, worker or node died (default 3)",
    )
    p_sweep.add_argument("--no-figures", action="store_true", help="skip figure regeneration at the end")
    _add_run_options(p_sweep)

    p_fig = sub.add_parser("figures", help="regenerate every figure and table from CSVs")
    p_fig.add_argument(
        "results", nargs="?", default=DEFAULT_OUT, help=f"results root (default {DEFAULT_OUT})"
    )
    p_fig.add_argument("--out", default=None, type=out_dir("--out"), help="where figures/ and tables/ go")
    return parser


# -- commands ----------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    """``metarl-bench list``: the registered algorithms (first docstring line, or why one failed to load)
    and suites (family, horizon H in steps, episodes per trial K, eval episodes, split and class sizes;
    ML1 suites other than ml1-reach by name only). With ``--settings ALGO``, every harness and method
    ``--set`` key with its default and accepted values instead. Returns 0.

    Raises ``RegistryError`` when ``--settings`` names an algorithm that is unknown or fails to load, or
    when a suite fails to load.
    """
    from benchmark import registry

    if (args.suite or args.profile) and not args.settings:
        raise UsageError("--suite and --profile apply to list --settings ALGO only")
    if args.profile and not args.suite:
        raise UsageError("--profile needs --suite (a profile's values differ per suite family)")
    if args.settings:
        import dataclasses

        from benchmark.config import HarnessConfig

        cls = registry.load_algorithm(args.settings)
        from metarl_protocol.settings import setting_range

        configs: tuple[Any, Any] = (HarnessConfig(), cls.Config())
        shown = "default before any profile; --suite S [--profile P] shows a run's"
        if args.suite:
            profile = args.profile or "quick"
            _, _, run_cfg, algo_cfg = resolve_run(args.settings, args.suite, profile, [], check_suite=False)
            configs, shown = (run_cfg, algo_cfg), f"value of a {profile} run on {args.suite}"
        for title, config in zip(("harness", args.settings), configs, strict=True):
            print(f"{title} settings (--set key=value; {shown}; accepted values):")
            for f in dataclasses.fields(config):
                value = getattr(config, f.name)
                accepted = "true or false" if isinstance(value, bool) else setting_range(f).describe()
                print(f"  {f.name}={value!r}  ({accepted})")
        return 0
    print("algorithms:")
    for name in registry.algorithm_names():
        try:
            cls = registry.load_algorithm(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is listed, not fatal
            print(f"  {name:<10} (failed to load: {type(exc).__name__}: {exc})")
            continue
        doc = ((sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().splitlines() or [""])[0]
        print(f"  {name:<10} {doc}")
    print("suites:  (H = horizon, K = episodes per training trial, eval = episodes per meta-test trial)")
    names = registry.suite_names()
    for problem in registry.PROBLEMS:  # a broken or clashing plugin suite: said, and the others listed
        print(f"metarl-bench: warning: {problem}", file=sys.stderr)
    for name in names:
        if name.startswith("ml1-") and name != "ml1-reach":
            continue
        try:
            info = registry.load_suite(name).summary()
        except Exception as exc:  # noqa: BLE001 - a broken plugin suite is listed, not fatal
            print(f"  {name:<16} (failed: {type(exc).__name__}: {' '.join(str(exc).split())})")
            continue
        splits = " ".join(f"{k}={v}" for k, v in info["splits"].items())
        classes = info.get("classes")
        if classes:
            splits += "  classes: " + " ".join(f"{k}={len(v)}" for k, v in classes.items())
            if len(classes.get("test", [])) <= 5:
                splits += f" (test: {', '.join(classes['test'])})"
        print(
            f"  {name:<16} {info['family']:<10} H={info['horizon']:<4} K={info['episodes_per_trial']:<3} "
            f"eval={info['eval_episodes']:<3} {splits}"
        )
    ml1 = [n for n in names if n.startswith("ml1-")]
    if ml1:
        print(f"  ... and the other ml1-<task> suites (same protocol as ml1-reach): {', '.join(ml1)}")
    return 0


def check_device(device: str, here: bool = True) -> None:
    """Refuse a malformed ``--device`` (``UsageError``, one line); with ``here``, also a CUDA device this
    machine lacks. Accepted: cpu, cuda, cuda:N."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r}: expected cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index is not None):
        raise UsageError(f"--device {device!r}: expected cpu or cuda[:N]")
    if here and dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")


def cmd_run(args: argparse.Namespace) -> int:
    """``metarl-bench run``: train and evaluate one (algo, suite, seed) and print its summary; returns 0.

    Raises ``UsageError`` (a bad or absent ``--device``, ``--resume`` with ``--overwrite``),
    ``RegistryError`` / ``ConfigError`` (unknown name, bad setting) and ``ResultsError`` (a file where
    the run directory goes, a run already there, a run in use or one that cannot be resumed) from
    ``run_one``.
    """
    check_device(args.device)
    summary = run_one(args.algo, args.suite, args.seed, args)
    print_summary(args.algo, args.suite, args.seed, summary)
    return 0


def plan_sweep(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """Every (algo, suite, seed) of a sweep as a ``RunSpec``, after validating the whole command line;
    returns ``(specs to run, refused)`` where ``refused`` holds a failed ``RunResult`` for each run whose
    own settings are invalid (e.g. a method-specific ``--set`` key another method of the sweep has, or a
    value out of one method's range): those runs never start and are reported in the failure table.

    Raises ``UsageError`` / ``ConfigError`` / ``RegistryError`` (exit 2) before anything is written: a
    flag that does not fit the backend, a repeated combination, a setting that every run refuses (a typo),
    an output directory that holds a run without ``--resume`` or ``--overwrite``, ray missing for
    ``--backend ray``.
    """
    from benchmark.errors import SuiteError
    from benchmark.results import run_dir
    from benchmark.runner import processes_used, recorded_update_threads, update_threads
    from benchmark.sweep import RunResult, RunSpec

    if args.backend == "local" and args.address is not None:
        raise UsageError("--address applies to --backend ray only (the cluster to join)")
    if args.backend == "ray" and args.jobs is not None:
        raise UsageError(
            "--jobs applies to --backend local only; with --backend ray the cluster's free CPUs decide"
        )
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    args.jobs = args.jobs or 1
    check_device(args.device, here=args.backend == "local")
    if "all" in args.algo:
        if len(args.algo) > 1:
            raise UsageError(
                "--algo all stands alone (it means every registered algorithm); got " + " ".join(args.algo)
            )
        from benchmark import registry

        args.algo = []
        for name in registry.algorithm_names():  # every one that loads; a broken plugin is said and left out
            try:
                registry.load_algorithm(name)
                args.algo.append(name)
            except registry.RegistryError as exc:
                print(f"sweep: --algo all leaves out {name}: {exc}", file=sys.stderr)
        if not args.algo:
            raise UsageError("--algo all: no registered algorithm loads (each is said above)")
    for flag, values in (("--algo", args.algo), ("--suite", args.suite), ("--seeds", args.seeds)):
        repeated = sorted((v for v, n in Counter(values).items() if n > 1), key=str)
        if repeated:  # two processes would write one run directory at once
            raise UsageError(
                f"{flag} repeats {', '.join(map(str, repeated))}: each (algo, suite, seed) may run once"
            )
    if args.backend == "ray":
        from benchmark.sweep_ray import require_ray

        require_ray()
    logs = Path(args.out) / "logs"
    if logs.exists() and not logs.is_dir():
        raise UsageError(f"{logs}: a file where the sweep's log directory goes")
    specs, refused, first_error = [], [], None
    for algo in args.algo:  # validate every name, setting and output directory before any run starts
        for suite_name in args.suite:
            try:
                _, suite, run_cfg, _ = resolve_run(algo, suite_name, args.profile, args.overrides)
            except (ConfigError, SuiteError) as exc:  # its own settings or suite: reported, the others go on
                first_error = first_error or exc
                for seed in args.seeds:
                    spec = RunSpec(algo, suite_name, seed, budget_steps=0)
                    what = "suite" if isinstance(exc, SuiteError) else "settings"
                    refused.append(RunResult(spec, "failed", f"refused its {what}: {exc}", attempts=0))
                continue
            cpus = max(processes_used(suite, run_cfg), run_cfg.torch_threads, update_threads(run_cfg))
            gpus = 1 if args.device.startswith("cuda") else 0
            for seed in args.seeds:
                path = run_dir(args.out, suite_name, algo, seed)
                blocking = file_in_the_way(path)
                if blocking is not None:
                    raise UsageError(f"{blocking}: {what_is(blocking)} where the run directory {path} goes")
                if not (args.resume or args.overwrite) and path.exists() and any(path.iterdir()):
                    state = "a finished" if (path / "done").exists() else "an unfinished"
                    raise UsageError(f"{path} already holds {state} run; pass --resume or --overwrite")
                run_cpus = cpus
                if args.resume and not run_cfg.update_threads:  # the run keeps its recorded count
                    run_cpus = max(cpus, recorded_update_threads(path) or 0)
                specs.append(RunSpec(algo, suite_name, seed, run_cfg.budget_steps, run_cpus, gpus))
    if not specs and first_error is not None:
        raise first_error  # no run accepts the settings: a mistake in the command, nothing to run
    return specs, refused


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep on its backend, then the figures; exit 1 with a table when any run failed."""
    from benchmark.sweep import SweepProgress, results_table

    specs, refused = plan_sweep(args)
    for r in refused:
        print(f"sweep: {r.spec.name} will not start: {r.reason}", file=sys.stderr)
    progress = SweepProgress(specs)
    if args.backend == "ray":
        import ray

        from benchmark.sweep_ray import check_resources, connect, run_ray

        connect(args.address)
        try:
            check_resources(specs, args.address)
            results = run_ray(specs, args, progress)
        finally:
            ray.shutdown()
    else:
        from benchmark.sweep_local import run_local

        results = run_local(specs, args, progress)
    progress.close()
    results = refused + list(results)
    failed = [r for r in results if r.status != "done"]
    if not args.no_figures and len(failed) < len(results):
        from benchmark.results import ResultsError

        try:  # from whatever finished (a failed run's partial CSVs are drawn as in progress)
            cmd_figures(argparse.Namespace(results=args.out, out=None))
        except ResultsError as exc:
            print(f"figures not regenerated: {exc}", file=sys.stderr)
    if failed:
        print(f"\n{len(failed)} of {len(results)} runs failed (logs: {Path(args.out) / 'logs'}):")
        print(results_table(results))
        print(f"metarl-bench: error: {len(failed)} of {len(results)} runs failed", file=sys.stderr)
        return 1
    print(f"\nall {len(results)} runs finished")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    """``metarl-bench figures``: every figure and table from the CSVs under ``args.results`` (written
    under ``args.out``, default ``make_all``'s), then the list of files written; returns 0.

    Raises ``UsageError`` when the results directory is missing or is a file, and ``ResultsError``
    from ``make_all`` (bad results, a file where an output directory goes).
    """
    from benchmark.plots import make_all

    root = Path(args.results)
    if root.exists() and not root.is_dir():
        raise UsageError(f"results directory {root} is a file, not a directory")
    if not root.is_dir():
        raise UsageError(f"results directory {root} does not exist")
    written = make_all(root, Path(args.out) if args.out else None)
    print(f"wrote {len(written)} files:")
    for path in written:
        print(f"  {path}")
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "sweep": cmd_sweep, "figures": cmd_figures}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run its command; returns the exit code: the
    command's (0, or 1 when a sweep had failed runs); 2 after a ``UsageError``, ``ConfigError``,
    ``RegistryError`` or ``ResultsError``, said in one line ``metarl-bench: error: ...`` on stderr;
    130 on Ctrl-C; 1 when the reader of stdout went away. Other exceptions propagate, as does a broken
    pipe of our own (not stdout's).
    """
    from benchmark.errors import SuiteError
    from benchmark.registry import RegistryError
    from benchmark.results import ResultsError

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, RegistryError, ResultsError, SuiteError) as exc:
        print(f"metarl-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metarl-bench: interrupted; resume with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():  # a pipe of our own (a simulator worker's): a real failure
            raise
        # the reader of our output went away (`metarl-bench list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll on this platform, or no real stdout
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
