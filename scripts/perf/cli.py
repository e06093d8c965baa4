"""Command line: plan, measure (each job or series in a fresh process), report.

``python -m scripts.perf`` writes ``results/perf.csv``, ``results/perf_scaling.csv`` and
``results/perf_scaling.png``, prints the table and the README Markdown. Options: ``--quick`` (tiny sizes,
the smoke test; numbers are not measurements), ``--only KIND ...`` (plus the rows they are compared
with), ``--no-isolate`` (everything in this process: faster, memory peaks accumulate), ``--profile ID``
(one measurement in this process under cProfile: what bounds its rate).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.cli import OneLineParser, positive_int
from benchmark.paths import file_in_the_way, what_is

KINDS = ("raw", "sampler", "train", "peer", "paper", "scaling")
DEFAULT_OUT = Path("results/perf.csv")
#: The program name that starts every message on stderr (``PROG: error: ...``).
PROG = "python -m scripts.perf"
#: The most seconds ``--timeout`` allows per measurement (a day): a series' subprocess gets its jobs' sum,
#: and Python's subprocess timeout overflows past about 24 days.
MAX_TIMEOUT_S = 86_400.0


def threads_arg(low: int) -> Any:
    """argparse type: an integer thread count from ``low`` to this machine's cores."""
    cores = os.cpu_count() or 1

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {low} to {cores}, got {text!r}"
            ) from None
        if not low <= value <= cores:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {low} to {cores} (this machine's cores)"
            )
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``argv``; None: ``sys.argv[1:]``); with the internal ``--jobs`` it returns at once.
    Otherwise names are checked before anything is measured: an unknown ``--suites`` or ``--algos`` name,
    or an ``--out`` that is not a ``.csv`` path, exits with one line on stderr and code 2 (as does any
    malformed option: ``OneLineParser``)."""
    from scripts.perf import __doc__ as overview

    p = OneLineParser(
        prog=PROG,
        description=overview,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (smoke test; numbers are not measurements)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV path (results/perf.csv; with --quick a temporary directory, so a smoke run never "
        "replaces the committed numbers); the scaling table and figure go next to it",
    )
    p.add_argument(
        "--only", nargs="+", choices=KINDS, metavar="KIND", help=f"measure only these kinds: {KINDS}"
    )
    p.add_argument("--suites", nargs="+", help="suites of the raw / sampler rows")
    p.add_argument("--algos", nargs="+", help="methods (default: every registered one)")
    p.add_argument(
        "--torch-threads", type=threads_arg(1), default=1, help="torch intra-op threads when acting (1)"
    )
    p.add_argument(
        "--update-threads",
        type=threads_arg(0),
        default=0,
        help="intra-op threads of the training rows' updates and their peers' (0: one per env worker for "
        "the methods whose update gains from threads, TrMRL, PEARL and MAML; --torch-threads for the others)",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=600.0,
        help=f"seconds allowed per measurement, at most {MAX_TIMEOUT_S:,.0f} (600)",
    )
    p.add_argument("--no-isolate", action="store_true", help="measure in this process (memory accumulates)")
    p.add_argument(
        "--profile",
        type=profile_id,
        metavar="ID",
        help="run measurement ID (e.g. sampler/rl2/halfcheetah-vel/B20) "
        "here under cProfile; print where its timed region spends its time (no CSV)",
    )
    p.add_argument(
        "--top", type=positive_int("--top"), default=20, help="functions printed by --profile (20)"
    )
    p.add_argument("--jobs", type=jobs_json, help=argparse.SUPPRESS)  # internal: JSON jobs, results on stdout
    args = p.parse_args(argv)
    if args.jobs is not None:
        return args
    from benchmark.registry import RegistryError, algorithm_names, load_suite

    try:  # names are checked here, before anything is measured (a method that fails to import is a SKIP row)
        for name in args.suites or []:
            load_suite(name)
    except RegistryError as exc:
        p.error(f"--suites: {exc}")
    unknown = [n for n in args.algos or [] if n not in algorithm_names()]
    if unknown:
        p.error(f"--algos: unknown algorithm {unknown[0]!r}; accepted: {', '.join(algorithm_names())}")
    out = args.out if args.out is not None or args.quick else DEFAULT_OUT
    problem = out_problem(out) if out is not None and args.profile is None else None
    if problem:
        p.error(f"--out {out}: {problem}")
    return args


def scaling_paths(out: Path) -> tuple[Path, Path]:
    """The scaling table's CSV and figure beside the perf CSV ``out``: ``<stem>_scaling.csv`` / ``.png``."""
    stem = out.with_name(out.stem + "_scaling")
    return stem.with_suffix(".csv"), stem.with_suffix(".png")


def out_problem(out: Path) -> str | None:
    """Why the CSV ``out`` and the scaling CSV and PNG beside it could not be written, or None: checked
    before anything is measured, so a mistake costs no measurements. Refused, in one line each: a path
    not ending in ``.csv``; a directory or a broken symbolic link at one of the three files (writing
    would replace the link silently); a file or broken link in the way of their directory; a directory
    or file name longer than the file system takes; a directory this process may not write, by its
    permissions or for real: a temporary file is created and removed in it (where the directory is
    still to be made, a temporary directory in its nearest existing parent); any other ``OSError`` on
    the way (no permission to look, a path too long)."""
    accepted = "expected the path of a .csv file in a writable directory (the scaling files go beside it)"
    if out.suffix != ".csv":
        return accepted
    targets = (out, *scaling_paths(out))
    try:
        parent = out.absolute().parent
        blocking = file_in_the_way(parent)
        if blocking is not None:
            return f"{blocking} is {what_is(blocking)}, not a directory; {accepted}"
        existing = next(p for p in (parent, *parent.parents) if p.exists())
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        # the names written: the directories still to be made, the files (the CSVs by way of a .tmp file)
        written = [(d, d) for d in parent.relative_to(existing).parts]
        written += [(p.name, p.name + (".tmp" if p.suffix == ".csv" else "")) for p in targets]
        for name, longest in written:
            size = len(os.fsencode(longest))
            if size > name_max:
                tmp = " with the .tmp of its atomic write" if longest != name else ""
                return (
                    f"{name[:40]}...: a name of {size} bytes{tmp}, longer than the {name_max} this file "
                    f"system takes; {accepted}"
                )
        for path in targets:
            if path.is_dir():
                return f"{path} is a directory; {accepted}"
            if path.is_symlink() and not path.exists():
                return f"{path} is {what_is(path)}; {accepted}"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{existing} is not writable; {accepted}"
    except OSError as exc:
        where = exc.filename if exc.filename is not None else out
        return f"{where} cannot be looked at ({exc.strerror or type(exc).__name__}); {accepted}"
    try:  # for real: what the permissions, the file system and its mount allow
        if existing == parent:
            fd, probe = tempfile.mkstemp(prefix=".perf-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".perf-probe-", dir=existing))
    except OSError as exc:
        made = "a file" if existing == parent else "a directory"
        return f"{existing}: cannot create {made} in it ({exc.strerror or type(exc).__name__}); {accepted}"
    return None


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0 and at most ``MAX_TIMEOUT_S``."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0 and at most {MAX_TIMEOUT_S:,.0f} (a day), got {text!r}"
        )
    return value


def profile_id(text: str) -> str:
    """argparse type: a measurement ID (not empty; whether the plan has it is checked once it is built)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "expected a measurement ID, e.g. sampler/rl2/halfcheetah-vel/B20, got an empty one"
        )
    return text


def jobs_json(text: str) -> str:
    """argparse type of the internal ``--jobs``: a JSON list of job objects, each with a string ``id`` (as
    ``isolate.run_isolated`` passes them); the text is returned as given."""
    import json

    try:
        jobs = json.loads(text)
    except (ValueError, RecursionError):
        jobs = None
    if not isinstance(jobs, list) or not all(
        isinstance(j, dict) and isinstance(j.get("id"), str) for j in jobs
    ):
        raise argparse.ArgumentTypeError(
            '(internal) expected a JSON list of jobs, each an object with a string "id", as '
            "scripts.perf.isolate passes them"
        )
    return text


def profile_one(jobs: list[dict[str, Any]], job_id: str, top: int) -> int:
    """Profile one planned measurement's timed region with cProfile and print the totals."""
    from scripts.perf import profiling
    from scripts.perf.isolate import run_one

    by_id = {j["id"]: j for j in jobs}
    if job_id not in by_id:
        print(
            f"{PROG}: error: --profile: unknown measurement {job_id!r}; accepted: {', '.join(by_id)}",
            file=sys.stderr,
        )
        return 2
    out, stats = profiling.profiled(lambda: run_one(by_id[job_id]), whole=False)
    print(
        f"{job_id}: {out['count'] / max(out['seconds'], 1e-9):,.0f} {out.get('unit', 'env steps/s')} "
        "under cProfile (slower than unprofiled)"
    )
    profiling.print_profile(stats, top)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m scripts.perf``. With the internal ``--jobs``: measure those jobs here (``serve``),
    return 0. With ``--profile ID``: ``profile_one``, 0 (2 for an unknown ID). Otherwise plan, measure each
    group in a fresh subprocess (``--no-isolate``: here), write the CSV (``--out``; default
    ``results/perf.csv``, with ``--quick`` a temporary directory) and the scaling CSV and figure beside it,
    print the table and the README Markdown; returns 1 when a row is an ERROR, else 0."""
    args = parse_args(argv)
    if args.jobs is not None:
        from scripts.perf.isolate import serve

        serve(args.jobs)
        return 0
    from scripts.perf import plan, report
    from scripts.perf.isolate import run_isolated, run_one

    t_start = time.perf_counter()
    jobs, skips = plan.build_plan(args)
    if args.profile is not None:
        return profile_one(jobs, args.profile, args.top)
    jobs = plan.select(jobs, args.only)
    for s in skips:
        print(f"skip {s['id']}: {s['notes']}", flush=True)
    load0 = os.getloadavg()
    mode = "in this process" if args.no_isolate else "a fresh subprocess per row or series"
    print(
        f"{len(jobs)} measurements ({mode}; torch threads {args.torch_threads}, update threads "
        f"{args.update_threads or 'per method (parallel_update)'}; {os.cpu_count()} cores; "
        f"load average {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f})",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    done = 0
    for group in plan.groups(jobs):
        t0 = time.perf_counter()
        if args.no_isolate:
            got = {}
            for job in group:
                try:
                    got[job["id"]] = run_one(job)
                except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
                    got[job["id"]] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        else:
            got = run_isolated(group, args.timeout)
        results |= got
        for job in group:
            done += 1
            r = got[job["id"]]
            msg = (
                f"ERROR {r['error']}"
                if "error" in r
                else f"{r['count'] / max(r['seconds'], 1e-9):,.0f} {r.get('unit', 'env steps/s')}"
            )
            print(f"[{done:2d}/{len(jobs)}] {job['id']:<48} {msg}", flush=True)
        print(f"      ({time.perf_counter() - t0:.1f} s)", flush=True)
    rows = report.finish_rows(jobs, results, skips)
    elapsed = time.perf_counter() - t_start
    rows.append(
        report.run_row(elapsed, None if args.quick or args.only else plan.RUN_SECONDS, os.getloadavg())
    )
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="perf-quick-")) / "perf.csv" if args.quick else DEFAULT_OUT
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    report.write_csv(rows, out)
    table = report.scaling_rows(rows)
    scaling_csv, scaling_png = scaling_paths(out)
    report.write_csv(table, scaling_csv, report.SCALING_COLUMNS)
    if table:
        title = (
            f"halfcheetah-vel, quick-profile agents, {os.cpu_count()} cores, load average at start "
            f"{load0[0]:.1f}{' (QUICK sizes: not measurements)' if args.quick else ''}"
        )
        report.scaling_figure(table, scaling_png, title)
    print()
    print(report.format_table(rows))
    print("\nREADME table:\n" + report.markdown(rows))
    quick = ", QUICK sizes" if args.quick else ""
    print(f"\nwrote {out}, {scaling_csv.with_suffix('')}.csv/.png ({elapsed:.0f} s{quick})")
    return 1 if any(r["status"] == "ERROR" for r in rows) else 0
