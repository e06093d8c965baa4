"""Aggregate statistics across suites (rliable methodology, numpy/scipy only).

Score of one run = its headline number on the test split at the latest evaluation, normalised:
(R - R_random) / (R_oracle - R_random) per episode where the suite has reference returns; success
suites without references (Meta-World) contribute their success rate as a fraction in [0, 1].
Suites with neither are left out. Interquartile mean (IQM) and mean over all runs of all suites a
method ran, each suite weighing the same whatever its number of seeds (each run weighs
1 / seeds of its suite), and the probability of improvement P(X > Y) over the suites both methods
ran, each with a stratified bootstrap 95% CI (runs resampled within each suite).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import style
from .data import Results, headline, method_order
from .stats import (
    DEFAULT_BOOT,
    probability_of_improvement_ci,
    stratified_bootstrap_ci,
    weighted_iqm,
    weighted_mean,
)
from .tables import TextTable, _write, fmt_estimate

STATISTICS = {"IQM": weighted_iqm, "Mean": weighted_mean}  # every suite weighs the same


def aggregate_scores(results: Results) -> pd.DataFrame:
    """One normalised score per run: ``suite, algo, seed, score, score_kind, done``."""
    rows = []
    for suite in results.suites:
        info, refs = results.info(suite), results.references(suite)
        if refs is None and not info.has_success:
            continue
        kind = "normalized return" if refs is not None else "success rate"
        for run in results.select(suite):
            if run.latest_mark("test") is None:
                continue
            score = headline(run, "test", normalized=True)
            rows.append(
                {
                    "suite": suite,
                    "algo": run.algo,
                    "seed": run.seed,
                    "score": score,
                    "score_kind": kind,
                    "done": run.done,
                }
            )
    return pd.DataFrame(rows, columns=["suite", "algo", "seed", "score", "score_kind", "done"])


def _strata(scores: pd.DataFrame, algo: str, suites: list[str]) -> list[np.ndarray]:
    sub = scores[scores["algo"] == algo]
    return [sub.loc[sub["suite"] == s, "score"].to_numpy() for s in suites]


def aggregate_table(results: Results, n_boot: int = DEFAULT_BOOT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-method IQM and mean with CIs, pairwise probability of improvement with CIs)."""
    scores = aggregate_scores(results)
    all_suites = sorted(scores["suite"].unique())
    algos = method_order(scores["algo"].unique())
    stat_rows = []
    for algo in algos:
        suites = sorted(scores.loc[scores["algo"] == algo, "suite"].unique())
        strata = _strata(scores, algo, suites)
        missing = [s for s in all_suites if s not in suites]
        for name, fn in STATISTICS.items():
            est = stratified_bootstrap_ci(strata, fn, n_boot=n_boot, rng=0)
            stat_rows.append(
                {
                    "algo": algo,
                    "statistic": name,
                    "value": est.value,
                    "low": est.low,
                    "high": est.high,
                    "n_runs": est.n,
                    "n_suites": len(suites),
                    "suites_missing": " ".join(missing),
                }
            )
    poi_rows = []
    for i, x in enumerate(algos):
        for y in algos[i + 1 :]:
            common = sorted(
                set(scores.loc[scores["algo"] == x, "suite"]) & set(scores.loc[scores["algo"] == y, "suite"])
            )
            if not common:
                continue
            est = probability_of_improvement_ci(
                _strata(scores, x, common), _strata(scores, y, common), n_boot=n_boot, rng=0
            )
            poi_rows.append(
                {
                    "algo_x": x,
                    "algo_y": y,
                    "value": est.value,
                    "low": est.low,
                    "high": est.high,
                    "n_suites": len(common),
                    "suites": " ".join(common),
                }
            )
    return (
        pd.DataFrame(
            stat_rows,
            columns=["algo", "statistic", "value", "low", "high", "n_runs", "n_suites", "suites_missing"],
        ),
        pd.DataFrame(poi_rows, columns=["algo_x", "algo_y", "value", "low", "high", "n_suites", "suites"]),
    )


def _interval(ax, y: float, value: float, low: float, high: float, color: str) -> None:
    if np.isfinite(low) and np.isfinite(high):
        ax.barh(y, high - low, left=low, height=0.6, color=color, alpha=0.35, linewidth=0)
    ax.plot([value, value], [y - 0.3, y + 0.3], color=color, linewidth=2.2, solid_capstyle="butt")


def plot_aggregate(results: Results, out_dir: Path, name: str = "aggregate") -> list[Path]:
    """IQM and mean normalised score per method, and P(X > Y) per pair, with 95% stratified bootstrap CIs."""
    stats_df, poi_df = aggregate_table(results)
    if stats_df.empty:
        return []
    algos = method_order(stats_df["algo"].unique())
    colors = style.method_colors(results.algos)
    has_poi = not poi_df.empty
    top_h = 1.0 + 0.36 * len(algos)
    poi_h = 1.0 + 0.3 * len(poi_df) if has_poi else 0.0
    with style.paper_style():
        fig = style.new_figure(8.4, top_h + poi_h + 0.6)
        if has_poi:
            grid = fig.add_gridspec(2, 2, height_ratios=[top_h, poi_h])
            axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])]
        else:
            axes = list(fig.subplots(1, 2))
        span = stats_df[["value", "low", "high"]].to_numpy(dtype=float)
        lo, hi = np.nanmin(span), np.nanmax(span)
        pad = 0.05 * (hi - lo) if hi > lo else 0.05
        for ax, (stat, _) in zip(axes, STATISTICS.items(), strict=False):
            ax.set_xlim(lo - pad, hi + pad)  # same scale for IQM and mean
            sub = stats_df[stats_df["statistic"] == stat].set_index("algo")
            for i, algo in enumerate(algos):
                r = sub.loc[algo]
                _interval(ax, len(algos) - 1 - i, r["value"], r["low"], r["high"], colors[algo])
            ax.set_yticks(range(len(algos)))
            labels = []
            for algo in reversed(algos):
                r = sub.loc[algo]
                text = style.display_name(algo)
                if r["suites_missing"]:
                    text += "*"
                if int(r["n_runs"]) < 2 or not np.isfinite(r["low"]):
                    text += " (no CI)"
                labels.append(text)
            ax.set_yticklabels(labels if ax is axes[0] else [])
            ax.set_ylim(-0.6, len(algos) - 0.4)
            ax.set_xlabel(f"{stat} of normalized score")
            ax.set_title(stat)
            ax.grid(axis="y", visible=False)
        if has_poi:
            ax = axes[-1]
            n = len(poi_df)
            for i, r in enumerate(poi_df.itertuples()):
                _interval(ax, n - 1 - i, r.value, r.low, r.high, colors[r.algo_x])
            ax.set_yticks(range(n))
            ax.set_yticklabels(
                [
                    f"{style.display_name(r.algo_x)} vs {style.display_name(r.algo_y)}"
                    for r in reversed(list(poi_df.itertuples()))
                ]
            )
            ax.axvline(0.5, color="0.4", linestyle="--", linewidth=1)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.6, n - 0.4)
            ax.set_xlabel("P(X > Y), probability of improvement")
            ax.set_title("Probability of improvement (suites both methods ran)")
            ax.grid(axis="y", visible=False)
        kinds = sorted(aggregate_scores(results)["score_kind"].unique())
        note = "Score: " + " / ".join(kinds) + " (final evaluation, headline episodes, test tasks)."
        if stats_df["suites_missing"].astype(bool).any():
            note += "  * method misses some suites (aggregated over the suites it ran)."
        style.suptitle(fig, "Aggregate performance across suites: 95% stratified bootstrap CIs")
        fig.text(0.5, 0.0, note, ha="center", va="top", fontsize=8, color="0.25")
        return style.save_figure(fig, out_dir, name)


def write_aggregate_table(results: Results, out_dir: Path, name: str = "aggregate") -> list[Path]:
    """Write ``aggregate_table`` as ``<out_dir>/<name>.md`` and ``.tex`` (IQM and mean per method, then
    P(X > Y) per pair of methods where some pair shares a suite) and ``.csv`` (every number, column
    ``table`` = ``statistic`` or ``poi``); return the three paths, or [] (nothing written) when no run has
    a score. Creates ``out_dir``."""
    stats_df, poi_df = aggregate_table(results)
    if stats_df.empty:
        return []
    rows = []
    for algo in method_order(stats_df["algo"].unique()):
        sub = stats_df[stats_df["algo"] == algo].set_index("statistic")
        cells = []
        for stat in STATISTICS:
            r = sub.loc[stat]
            if np.isfinite(r["low"]) and np.isfinite(r["high"]):
                est = {"mean": r["value"], "low": r["low"], "high": r["high"], "n_seeds": r["n_runs"]}
                cells.append(fmt_estimate(pd.Series(est), 2))
            else:  # no suite with two runs to resample: no CI, however many runs are pooled
                cells.append(f"{r['value']:.2f} (no CI)")
        r = sub.iloc[0]
        rows.append(
            [
                style.display_name(algo),
                str(int(r["n_suites"])),
                str(int(r["n_runs"])),
                *cells,
                r["suites_missing"].replace(" ", ", ") or "—",
            ]
        )
    poi_rows = [
        [
            f"{style.display_name(r.algo_x)} vs {style.display_name(r.algo_y)}",
            str(r.n_suites),
            fmt_estimate(pd.Series({"mean": r.value, "low": r.low, "high": r.high, "n_seeds": 2}), 2)
            if np.isfinite(r.low)
            else f"{r.value:.2f} (no CI)",
        ]
        for r in poi_df.itertuples()
    ]
    scores = aggregate_scores(results)
    kinds = ", ".join(
        f"{k}: {', '.join(sorted(g['suite'].unique()))}" for k, g in scores.groupby("score_kind")
    )
    t1 = TextTable(
        title="Aggregate normalized score across suites (IQM and mean, 95% stratified bootstrap CI)",
        header=["Method", "Suites", "Runs", "IQM [95% CI]", "Mean [95% CI]", "Suites not run"],
        rows=rows,
        label="tab:aggregate",
        n_text=1,
        notes=[
            f"Score per run ({kinds}); test tasks, headline episodes, latest evaluation.",
            "IQM = interquartile mean over all runs of all suites, each suite weighing the same (a run "
            "weighs 1 / seeds of its suite); CIs resample runs within each suite "
            f"({DEFAULT_BOOT} resamples), '(no CI)' where no suite has two runs. Methods missing suites "
            "are aggregated over the suites they ran.",
        ],
    )
    t2 = TextTable(
        title="Probability of improvement P(X > Y) over the suites both methods ran",
        header=["X vs Y", "Suites", "P(X > Y) [95% CI]"],
        rows=poi_rows,
        label="tab:poi",
        n_text=1,
        notes=[
            "P(X > Y) = mean over suites of the probability that a run of X scores higher than a run of Y "
            "(ties count 1/2); 0.5 = no difference."
        ],
    )
    numbers = stats_df.assign(table="statistic")
    if not poi_df.empty:
        poi = poi_df.rename(columns={"algo_x": "algo"}).assign(statistic="P(X>Y)", table="poi")
        numbers = pd.concat([numbers, poi], ignore_index=True)
    paths = _write(t1, numbers, out_dir, name)
    if poi_rows:
        paths[0].write_text(t1.markdown() + "\n" + t2.markdown(), encoding="utf-8")
        paths[1].write_text(t1.latex() + "\n" + t2.latex(), encoding="utf-8")
    return paths
