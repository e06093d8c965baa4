"""``make_all``: every figure and table from a results tree, plus a README.md index; and the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark.paths import file_in_the_way, what_is

from . import style
from .adaptation import ood_suites, plot_adaptation, plot_ood_adaptation
from .aggregate import aggregate_scores, plot_aggregate, write_aggregate_table
from .curves import metaworld_suites_with_train, plot_learning_curves, plot_metaworld_curves
from .data import Results, ResultsError, Run, load_results
from .tables import (
    metaworld_suites,
    task_bin_suites,
    write_final_table,
    write_headline_table,
    write_metaworld_table,
    write_ood_table,
    write_task_bins_table,
)


@dataclass(frozen=True)
class Artifact:
    """One figure or table: its file stem, how to make it, what it shows, which suites fed it."""

    kind: str  # "figure" or "table"
    name: str
    make: Callable[[Results, Path], list[Path]]
    description: str
    suites: Callable[[Results], list[str]]
    uses: Callable[[Run], bool] = lambda run: run.latest_mark("test") is not None
    left_out_why: str = "no evaluation yet"


def _all_suites(results: Results) -> list[str]:
    return results.suites


def _aggregate_suites(results: Results) -> list[str]:
    return sorted(aggregate_scores(results)["suite"].unique())


ARTIFACTS = (
    Artifact(
        "figure",
        "learning_curves",
        plot_learning_curves,
        "Meta-training curves: headline test metric (return per episode on the headline episode(s); "
        "success rate in % for success suites) against environment steps, one panel per suite, mean "
        "over seeds with 95% Student-t CI bands over seeds. Every point averages the same tasks (the "
        "periodic evaluations' subset); where the final evaluation covers more tasks, its mean (the "
        "headline table's number) stands at the budget as a hollow marker with its own interval.",
        _all_suites,
    ),
    Artifact(
        "figure",
        "metaworld_curves",
        plot_metaworld_curves,
        "Meta-World: meta-train (train split) next to meta-test (test split) success rate against "
        "environment steps.",
        metaworld_suites_with_train,
    ),
    Artifact(
        "figure",
        "adaptation",
        plot_adaptation,
        "Fast adaptation: test metric per episode of the adaptation trial at the final evaluation, "
        "mean over seeds with a 95% Student-t CI over seeds.",
        _all_suites,
    ),
    Artifact(
        "figure",
        "ood_adaptation",
        plot_ood_adaptation,
        "Out-of-distribution adaptation: return per episode on test tasks and, in the panel beside them, "
        "on OOD tasks, same checkpoint.",
        ood_suites,
        lambda run: run.latest_mark("ood") is not None,
        "no OOD evaluation yet",
    ),
    Artifact(
        "figure",
        "aggregate",
        plot_aggregate,
        "Aggregate across suites: IQM and mean of the normalized score, and probability of "
        "improvement between methods, with 95% stratified bootstrap CIs.",
        _aggregate_suites,
    ),
    Artifact(
        "table",
        "headline",
        write_headline_table,
        "One number per method and suite (normalized return, or success rate on Meta-World, of the "
        "last meta-test episode(s)) with its 95% CI and seed count: the results page's table.",
        _all_suites,
    ),
    Artifact(
        "table",
        "final_performance",
        write_final_table,
        "Final headline metric per suite and method, raw and normalized, with 95% CIs.",
        _all_suites,
    ),
    Artifact(
        "table",
        "ood",
        write_ood_table,
        "OOD vs in-distribution test return per episode index, with 95% CIs and the drop.",
        ood_suites,
        lambda run: run.latest_mark("ood") is not None,
        "no OOD evaluation yet",
    ),
    Artifact(
        "table",
        "task_bins",
        write_task_bins_table,
        "Headline per group of test tasks ordered by their one parameter (halfcheetah-vel: target "
        "velocity), with 95% CIs: which tasks each method solves.",
        task_bin_suites,
    ),
    Artifact(
        "table",
        "metaworld",
        write_metaworld_table,
        "Meta-World meta-train / meta-test success measured here next to the published Meta-World "
        "paper numbers (ML10, ML45).",
        metaworld_suites,
    ),
    Artifact(
        "table",
        "aggregate",
        write_aggregate_table,
        "IQM / mean normalized score per method and pairwise probability of improvement.",
        _aggregate_suites,
    ),
)
_EXTENSIONS = {"figure": ("png", "pdf"), "table": ("md", "tex", "csv")}


#: the first line of every index ``make_all`` writes: how it knows a directory's outputs are its own
INDEX_TITLE = "# Results: figures and tables"


def _is_ours(out_dir: Path) -> bool:
    """Whether ``out_dir`` has no index or an index ``make_all`` wrote (so its outputs may be replaced)."""
    index = out_dir / "README.md"
    if not index.exists():
        return True
    try:
        with index.open(encoding="utf-8", errors="replace") as fh:
            return fh.readline().rstrip("\n") == INDEX_TITLE
    except OSError:
        return False


def default_out_dir(results_root: Path) -> Path:
    """``results/runs`` -> ``results``, unless ``results/README.md`` is a page of the user's own (not an
    index ``make_all`` wrote): then, as for any other root, the root itself."""
    results_root = Path(results_root)
    if results_root.resolve().name == "runs" and _is_ours(results_root.parent):
        return results_root.parent
    return results_root


def _folder(out_dir: Path, art: Artifact) -> Path:
    return out_dir / ("figures" if art.kind == "figure" else "tables")


def _files(out_dir: Path, art: Artifact) -> list[Path]:
    """Every file ``art`` may write under ``out_dir`` (one per extension of its kind)."""
    return [_folder(out_dir, art) / f"{art.name}.{ext}" for ext in _EXTENSIONS[art.kind]]


def _check_outputs(out_dir: Path) -> None:
    """Refuse a file (or broken link) where ``out_dir``, ``figures/``, ``tables/`` or a parent goes; a
    directory where one of the files ``make_all`` writes (or removes as stale) goes; and a directory
    whose ``README.md`` is a page of the user's own (an index of ours starts with ``INDEX_TITLE``): it and
    the figures beside it are not ours to replace.

    Raises ``ResultsError`` naming the path, before anything is written.
    """
    for sub in (out_dir / "figures", out_dir / "tables"):
        blocking = file_in_the_way(sub)
        if blocking is not None:
            raise ResultsError(f"{blocking}: {what_is(blocking)} where the directory {sub} goes")
    outputs = [path for art in ARTIFACTS for path in _files(out_dir, art)]
    in_the_way = next((p for p in [*outputs, out_dir / "README.md"] if p.is_dir()), None)
    if in_the_way is not None:
        raise ResultsError(
            f"{in_the_way}: a directory where an output file of metarl-bench figures goes; remove it or "
            "write the figures elsewhere with --out DIR"
        )
    if not _is_ours(out_dir):
        raise ResultsError(
            f"{out_dir / 'README.md'}: not an index written by metarl-bench figures, so neither it nor the "
            "figures and tables beside it are replaced; write them elsewhere with --out DIR"
        )


def make_all(results_root: Path | str, out_dir: Path | str | None = None) -> list[Path]:
    """Write every figure (``<out>/figures/*.png|pdf``), table (``<out>/tables/*.md|tex|csv``) and the
    index ``<out>/README.md``; return the written paths. Raises :class:`ResultsError` on bad input, when a
    file stands where ``<out>``, ``figures/``, ``tables/`` or one of their parents goes, when a directory
    stands where one of its files goes, and when ``<out>/README.md`` exists but is not an index of ours
    (nothing is written in each case)."""
    results_root = Path(results_root)
    out_dir = default_out_dir(results_root) if out_dir is None else Path(out_dir)
    results = load_results(results_root)
    _check_outputs(out_dir)
    written: list[Path] = []
    made: list[tuple[Artifact, list[Path]]] = []
    for art in ARTIFACTS:
        paths = art.make(results, _folder(out_dir, art))
        if paths:
            made.append((art, paths))
            written += paths
        else:  # nothing to show any more: drop a stale file of ours from an earlier render
            for path in _files(out_dir, art):
                path.unlink(missing_ok=True)
    index = out_dir / "README.md"
    out_dir.mkdir(parents=True, exist_ok=True)  # no figure may have made it
    index.write_text(render_index(results, made, out_dir), encoding="utf-8")
    written.append(index)
    return written


# ------------------------------------------------------------------------------------------------
# README.md index
# ------------------------------------------------------------------------------------------------
def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _under(root: Path, out_dir: Path) -> str:
    """Where the CSVs are, as the index says it: `runs/`, or this directory when it is the root."""
    rel = _rel(root, out_dir)
    return "under this directory" if rel == "." else f"under `{rel}/`"


def _seeds(runs: Sequence[Run]) -> str:
    seeds = sorted(r.seed for r in runs)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(str(s) for s in seeds)


def _group_line(runs: Sequence[Run]) -> str:
    r0 = runs[0]
    profiles = sorted({r.profile for r in runs})
    done = sum(r.done for r in runs)
    status = (
        "finished"
        if done == len(runs)
        else "in progress"
        if done == 0
        else f"{done} finished, {len(runs) - done} in progress"
    )
    its = sorted({r.budget_text for r in runs})
    steps = sorted({r.env_steps for r in runs})
    step_text = (
        style._fmt_steps(steps[0])
        if len(steps) == 1
        else f"{style._fmt_steps(steps[0])}-{style._fmt_steps(steps[-1])}"
    )
    profile_text = "/".join(profiles) + (" (MIXED PROFILES)" if len(profiles) > 1 else "")
    seeds = f"seed{'s' if len(runs) > 1 else ''} {_seeds(runs)}"
    differ = _differing_settings(runs)
    return (
        f"`{r0.suite}` / {style.display_name(r0.algo)}: {seeds}, profile {profile_text}, "
        f"progress {', '.join(its)}, {step_text} env steps, {status}"
        + (f"; SETTINGS DIFFER between these seeds, pooled all the same: {differ}" if differ else "")
    )


# harness settings that change no reported number (layout, threads: float rounding at most, bookkeeping)
_NOT_RESULTS = {"num_workers", "torch_threads", "update_threads", "checkpoint_every_steps", "eval_batch"}


def _differing_settings(runs: Sequence[Run]) -> str:
    """The settings (budget, harness, method) whose recorded values differ between ``runs`` of one
    method on one suite, as ``key (value, value)``, up to five; '' when none do. A key some runs do not
    record (a setting added to the code later) is left out."""
    recorded = []
    for run in runs:
        harness = run.config.get("run") if isinstance(run.config.get("run"), dict) else {}
        method = run.config.get("algo_config") if isinstance(run.config.get("algo_config"), dict) else {}
        values = {k: v for k, v in harness.items() if k not in _NOT_RESULTS} | method
        if "budget_steps" in run.config:
            values["budget_steps"] = run.config["budget_steps"]
        recorded.append({k: json.dumps(v, sort_keys=True) for k, v in values.items()})
    common = set.intersection(*(set(r) for r in recorded)) if recorded else set()
    differ = sorted(k for k in common if len({r[k] for r in recorded}) > 1)
    shown = [f"{k} ({', '.join(sorted({r[k] for r in recorded}))})" for k in differ[:5]]
    return ", ".join(shown) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")


def _suite_line(results: Results, suite: str, art: Artifact) -> str:
    parts, left_out = [], []
    for algo in results.algos_for(suite):
        runs = results.select(suite, algo)
        used = [r for r in runs if art.uses(r)]
        left_out += [
            f"{style.display_name(algo)} seed {r.seed}"
            + (" (a tuning run: validation split only)" if _tuning(r) else "")
            for r in runs
            if not art.uses(r)
        ]
        if used:
            running = sum(not r.done for r in used)
            text = f"{style.display_name(algo)} seed{'s' if len(used) > 1 else ''} {_seeds(used)}"
            parts.append(text + (f" ({running} in progress)" if running else ""))
    line = f"`{suite}`: " + ("; ".join(parts) if parts else "no runs")
    if left_out:
        line += f" — left out ({art.left_out_why}): {', '.join(left_out)}"
    return line


def _tuning(run: Run) -> bool:
    """A tuning run (``--set validation_tasks=N``): evaluated on its validation split, never on test."""
    return run.latest_mark("test") is None and run.latest_mark("validation") is not None


def _wall_minutes(run: Run) -> str:
    """Minutes on the run's clock at its last logged iteration ('—' before the first)."""
    if not len(run.progress):
        return "—"
    return f"{float(run.progress['wall_time_s'].iloc[-1]) / 60:.1f}"


def render_index(results: Results, made: list[tuple[Artifact, list[Path]]], out_dir: Path) -> str:
    """The Markdown text of ``<out_dir>/README.md``, starting with ``INDEX_TITLE``: its conventions; each
    artifact in ``made`` (with the files it wrote, linked relative to ``out_dir``), its description and
    the runs it drew or left out; every run (profile, progress, env steps, status, wall minutes, commit);
    the method x suite pairs not run; and the test-split reference returns used to normalise."""
    lines = [
        INDEX_TITLE,
        "",
        "Generated by `python -m benchmark.plots` (`benchmark.plots.make_all`) from the CSVs "
        f"{_under(results.root, out_dir)} alone; regenerate with `nox -s figures`. Do not edit by hand.",
        "",
        "Conventions: mean over seeds, 95% Student-t confidence intervals over seeds (exact coverage "
        "for normal per-seed values at any seed count; the seed count is stated with each method); "
        "aggregates over suites use a stratified bootstrap; a method with one seed has no CI. "
        "Episodes are numbered from 1 within a trial. "
        "Runs in progress have no final evaluation yet: their latest periodic evaluation (a subset of "
        "the test tasks) stands in for it.",
        "",
    ]
    if not made and any(_tuning(r) for r in results.runs):
        lines += [
            "No figure or table: the figures and tables draw test and OOD evaluations, and the runs found "
            "with evaluations are tuning runs, evaluated on their validation split only "
            f"({', '.join(f'{r.suite}/{r.algo}/seed{r.seed}' for r in results.runs if _tuning(r))}).",
            "",
        ]
    elif not made:
        lines += ["No figure or table yet: no run has logged an evaluation.", ""]
    for kind, heading in (("figure", "## Figures"), ("table", "## Tables")):
        entries = [(a, p) for a, p in made if a.kind == kind]
        if not entries:
            continue
        lines += [heading, ""]
        for art, paths in entries:
            files = ", ".join(f"[{p.suffix[1:].upper()}]({_rel(p, out_dir)})" for p in paths)
            lines.append(f"### {art.name} ({files})")
            lines.append("")
            if kind == "figure":
                png = next((p for p in paths if p.suffix == ".png"), None)
                if png is not None:
                    lines += [f"![{art.name}]({_rel(png, out_dir)})", ""]
            lines.append(art.description)
            lines.append("")
            lines.append("Runs (details under [Runs](#runs)):")
            lines += [f"- {_suite_line(results, suite, art)}" for suite in art.suites(results)]
            lines.append("")
    lines += ["## Runs", ""]
    lines += [f"- {_group_line(results.select(s, a))}" for s in results.suites for a in results.algos_for(s)]
    lines += [
        "",
        "| Suite | Method | Seed | Profile | Progress (done/budget) | Env steps | "
        "Latest eval mark (env steps) | Status | Wall (min) | Commit |",
        "|:---|:---|---:|:---|---:|---:|---:|:---|---:|:---|",
    ]
    for run in sorted(results.runs, key=lambda r: (r.suite, results.algos.index(r.algo), r.seed)):
        latest = run.eval["mark"].max() if len(run.eval) else None
        lines.append(
            f"| {run.suite} | {style.display_name(run.algo)} | {run.seed} | {run.profile} | "
            f"{run.budget_text} | {run.env_steps:,} | "
            f"{'—' if latest is None else int(latest)} | {'finished' if run.done else 'in progress'} | "
            f"{_wall_minutes(run)} | {(run.git_commit or '—')[:10]}{' (modified)' if run.git_dirty else ''} |"
        )
    lines += [
        "",
        "Wall (min): the run's own clock in progress.csv (`wall_time_s` of its last iteration: training "
        "and periodic evaluations, not the final evaluation), on whatever machine and load it ran: "
        "compare wall times only between runs made side by side on one machine. Commit: `git_commit` "
        'in config.json (the checkout the run was last started or resumed from; "(modified)": tracked '
        "files had uncommitted edits at a start or resume, `git_dirty`).",
    ]
    missing = [(s, a) for s in results.suites for a in results.algos if not results.select(s, a)]
    if missing:
        lines += [
            "",
            "Not run (method x suite with no results): "
            + ", ".join(f"{style.display_name(a)} on `{s}`" for s, a in missing)
            + ".",
        ]
    refs = [(s, results.references(s)) for s in results.suites if results.references(s) is not None]
    if refs:
        lines += [
            "",
            "## Reference returns used for normalization",
            "",
            "| Suite | Random | Oracle | Source |",
            "|:---|---:|---:|:---|",
        ]
        lines += [f"| {s} | {r.random:.4g} | {r.oracle:.4g} | {r.source or '—'} |" for s, r in refs]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmark.plots RESULTS_DIR [--out OUT]``; exit code 2 on malformed results."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.plots",
        description="Regenerate every figure and table from a results directory (CSV files only).",
    )
    parser.add_argument("results_dir", type=Path, help="results root laid out <suite>/<algo>/seed<N>/")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the parent of RESULTS_DIR if it is named 'runs' and the parent "
        "has no README.md of its own, else RESULTS_DIR itself)",
    )
    args = parser.parse_args(argv)
    try:
        paths = make_all(args.results_dir, args.out)
    except ResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
