"""Fast adaptation: metric per episode index within the trial at the final (latest) evaluation,
mean over seeds with a 95% Student-t CI over seeds; and the same for OOD tasks next to test tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from . import style
from .data import Results, Run, per_episode
from .stats import t_interval

ADAPT_COLUMNS = ["episode", "mean", "low", "high", "n_seeds"]


def seed_episode_matrix(runs: list[Run], split: str, paired_with: str | None = None) -> pd.DataFrame:
    """Rows = seeds, columns = 0-based episode index: mean metric over tasks at each run's latest
    evaluation covering ``split``. With ``paired_with="ood"`` the evaluation is the latest one that
    covers that split too (so test and OOD numbers come from the same checkpoint)."""
    rows = {}
    for run in runs:
        mark = run.latest_mark(paired_with or split)
        if mark is None:
            continue
        eps = per_episode(run, split, mark)
        if len(eps):
            rows[run.seed] = eps
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).T.sort_index(axis=0).sort_index(axis=1)


def summarize_matrix(matrix: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% Student-t CI over seeds (rows), per episode (column)."""
    out = []
    for ep in matrix.columns:
        est = t_interval(matrix[ep].to_numpy())
        out.append((int(ep), est.value, est.low, est.high, est.n))
    return pd.DataFrame(out, columns=ADAPT_COLUMNS)


def adaptation_table(
    results: Results, suite: str, algo: str, split: str = "test", paired_with: str | None = None
) -> pd.DataFrame:
    """Mean and 95% Student-t CI over seeds of the metric per 0-based episode index, for ``algo`` on
    ``suite`` (see ``seed_episode_matrix`` for ``paired_with``); columns ``ADAPT_COLUMNS``, no rows when no
    run has evaluated ``split``."""
    matrix = seed_episode_matrix(results.select(suite, algo), split, paired_with)
    return summarize_matrix(matrix) if not matrix.empty else pd.DataFrame({c: [] for c in ADAPT_COLUMNS})


def _draw(ax, table: pd.DataFrame, color: str, marker: str, linestyle: str = "-") -> None:
    x = table["episode"].to_numpy() + 1
    ax.plot(x, table["mean"], color=color, marker=marker, markersize=4, linestyle=linestyle)
    if np.isfinite(table["low"]).any():
        ax.fill_between(x, table["low"], table["high"], color=color, alpha=style.BAND_ALPHA, linewidth=0)


def _format_axes(ax, results: Results, suite: str) -> None:
    info = results.info(suite)
    lo, hi = min(info.headline_episodes) + 1, max(info.headline_episodes) + 1
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.5", alpha=0.1, linewidth=0, zorder=0)
    ax.set_xlabel("Episode in the adaptation trial")
    ax.set_ylabel(style.metric_label(info, headline=False))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.7, info.eval_episodes + 0.3)
    if info.has_success:
        ax.set_ylim(-3, 103)


def plot_adaptation(results: Results, out_dir: Path, name: str = "adaptation") -> list[Path]:
    """One panel per suite: test metric per episode of the trial at the latest evaluation."""
    suites = results.suites_with("test")
    if not suites:
        return []
    colors, markers = style.method_colors(results.algos), style.method_markers(results.algos)
    with style.paper_style():
        fig, axes = style.panel_grid(len(suites))
        labels = []
        for ax, suite in zip(axes, suites, strict=True):
            panel = {}
            for algo in results.algos_for(suite):
                runs = [r for r in results.select(suite, algo) if r.latest_mark("test") is not None]
                table = adaptation_table(results, suite, algo, "test")
                if table.empty:
                    continue
                _draw(ax, table, colors[algo], markers[algo])
                panel[algo] = style.legend_label(algo, len(runs), sum(not r.done for r in runs))
            labels.append(panel)
            _format_axes(ax, results, suite)
            if not results.info(suite).has_success:
                style.draw_references(ax, results.references(suite))
            ax.set_title(f"{suite} (meta-test)")
        span = (Patch(color="0.5", alpha=0.2, linewidth=0), "headline episode(s)")
        style.add_legends(fig, axes, labels, style.legend_handles(results.algos), extra=[span])
        style.suptitle(
            fig, "Fast adaptation at the final evaluation: mean over seeds, 95% Student-t CI over seeds"
        )
        return style.save_figure(fig, out_dir, name)


def ood_suites(results: Results) -> list[str]:
    """The suites where some run has OOD evaluation rows (``split == "ood"``)."""
    return results.suites_with("ood")


def plot_ood_adaptation(results: Results, out_dir: Path, name: str = "ood_adaptation") -> list[Path]:
    """Suites with an OOD split: test tasks (left) and OOD tasks (right, same y scale) metric per
    episode, both from the same checkpoint of each run."""
    suites = ood_suites(results)
    if not suites:
        return []
    colors, markers = style.method_colors(results.algos), style.method_markers(results.algos)
    with style.paper_style():
        fig, axes = style.panel_grid(2 * len(suites), ncols=2 if len(suites) == 1 else 4)
        labels = []
        for i, suite in enumerate(suites):
            ax_test, ax_ood = axes[2 * i], axes[2 * i + 1]
            ax_ood.sharey(ax_test)
            panel = {}
            for algo in results.algos_for(suite):
                runs = [r for r in results.select(suite, algo) if r.latest_mark("ood") is not None]
                for ax, split in ((ax_test, "test"), (ax_ood, "ood")):
                    table = adaptation_table(results, suite, algo, split, paired_with="ood")
                    if not table.empty:
                        _draw(ax, table, colors[algo], markers[algo])
                if runs:
                    panel[algo] = style.legend_label(algo, len(runs), sum(not r.done for r in runs))
            labels += [panel, panel]
            for ax, title in ((ax_test, "test tasks"), (ax_ood, "OOD tasks")):
                _format_axes(ax, results, suite)
                ax.set_title(f"{suite}: {title}")
            style.draw_references(ax_test, results.references(suite))
        span = (Patch(color="0.5", alpha=0.2, linewidth=0), "headline episode(s)")
        style.add_legends(fig, axes, labels, style.legend_handles(results.algos), extra=[span])
        style.suptitle(
            fig,
            "Out-of-distribution adaptation (same checkpoint for test and OOD tasks): "
            "mean over seeds, 95% Student-t CI over seeds",
        )
        return style.save_figure(fig, out_dir, name)
