"""Meta-training curves: headline test metric against environment steps, mean over seeds with 95 %
Student-t confidence bands over seeds; for Meta-World suites also meta-train next to meta-test.

Every point of a curve averages the same tasks (the periodic evaluations' subset). Where the final
evaluation covers more tasks than that subset (Meta-World: all 50 test goals against the periodic ones),
its number, the one the headline table reports, stands next to the curve's last point as a hollow marker
with its own interval, so the curve and the table can be read together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from . import style
from .data import Results, curve, final_covers_more_tasks, headline
from .stats import Estimate, t_interval

CURVE_COLUMNS = ["mark", "env_steps", "mean", "low", "high", "n_seeds"]


def curve_table(
    results: Results,
    suite: str,
    algo: str,
    split: str = "test",
    *,
    normalized: bool = False,
) -> pd.DataFrame:
    """Mean over seeds (with a 95% Student-t CI over seeds) of the headline metric at every evaluation.

    Seeds and methods are aligned by ``mark``, the env-step mark an evaluation stands for (the same
    marks for every method); the x position is the mark. ``env_steps`` is the mean number of steps the
    seeds had actually consumed at that evaluation. Runs in progress contribute the marks they reached.
    """
    frames = []
    for run in results.select(suite, algo):
        c = curve(run, split, normalized)
        if len(c):
            frames.append(c.assign(seed=run.seed))
    if not frames:
        return pd.DataFrame({c: [] for c in CURVE_COLUMNS})
    df = pd.concat(frames, ignore_index=True)
    rows = []
    for mark, grp in df.groupby("mark", sort=True):
        est = t_interval(grp["value"].to_numpy())
        rows.append((int(mark), float(grp["env_steps"].mean()), est.value, est.low, est.high, est.n))
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def final_point(results: Results, suite: str, algo: str, split: str = "test") -> tuple[int, Estimate] | None:
    """(mark, t-interval over seeds) of the final evaluation on all tasks of ``split`` (finished seeds),
    where it covers more tasks than the curve's points; else None. The value is the headline table's:
    per seed, the mean over tasks and headline episodes at the latest evaluation (``data.headline``)."""
    runs = [r for r in results.select(suite, algo) if r.done and r.latest_mark(split) is not None]
    if not any(final_covers_more_tasks(r, split) for r in runs):
        return None
    mark = max(int(r.latest_mark(split)) for r in runs)
    return mark, t_interval([headline(r, split) for r in runs])


def _draw_final(ax, mark: int, est: Estimate, color: str, marker: str) -> None:
    """A hollow marker (with its error bar where there are 2+ seeds) at the final evaluation."""
    err = None
    if np.isfinite(est.low):
        err = np.array([[est.value - est.low], [est.high - est.value]])
    marker_line = ax.errorbar(
        [mark], [est.value], yerr=err, color=color, marker=marker, markersize=6, markerfacecolor="white",
        markeredgewidth=1.3, capsize=3, linewidth=1.0, linestyle="none", zorder=4,
    )[0]  # fmt: skip
    # the marker sits on the right edge of the axes; the interval stays clipped to them
    marker_line.set_clip_on(False)


FINAL_HANDLE_LABEL = "final eval., all tasks"


def _draw(ax, table: pd.DataFrame, color: str, marker: str) -> None:
    x = table["mark"].to_numpy()
    few = len(table) <= 25
    ax.plot(
        x,
        table["mean"],
        color=color,
        marker=marker if few else None,
        markersize=3.5 if few else 0,
        clip_on=False if len(table) == 1 else True,
    )
    if len(table) == 1 and np.isfinite(table["low"]).all():  # a lone point: CI as an error bar
        mean = table["mean"].to_numpy()
        err = np.abs(np.stack([mean - table["low"].to_numpy(), table["high"].to_numpy() - mean]))
        ax.errorbar(x, mean, yerr=err, color=color, capsize=3, linewidth=1.2)
    elif np.isfinite(table["low"]).any():
        ax.fill_between(x, table["low"], table["high"], color=color, alpha=style.BAND_ALPHA, linewidth=0)


def _panel(ax, results: Results, suite: str, split: str, colors, markers) -> tuple[dict[str, str], bool]:
    """Draw one suite's curves for ``split``: (legend label per method, whether a final marker was drawn)."""
    info = results.info(suite)
    labels = {}
    finals = False
    for algo in results.algos_for(suite):
        table = curve_table(results, suite, algo, split)
        if table.empty:
            continue
        _draw(ax, table, colors[algo], markers[algo])
        final = final_point(results, suite, algo, split)
        if final is not None:
            _draw_final(ax, *final, colors[algo], markers[algo])
            finals = True
        runs = [r for r in results.select(suite, algo) if (r.eval["split"] == split).any()]
        labels[algo] = style.legend_label(algo, len(runs), sum(not r.done for r in runs))
    if split == "test" and not info.has_success:
        style.draw_references(ax, results.references(suite))
    ax.xaxis.set_major_formatter(style.STEPS_FORMATTER)
    ax.set_xlabel("Environment steps")
    ax.set_ylabel(style.metric_label(info))
    if info.has_success:
        ax.set_ylim(-3, 103)
    ax.set_xlim(left=0)
    return labels, finals


def _final_legend(any_final: bool) -> list[tuple[object, str]]:
    if not any_final:
        return []
    handle = Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none", markersize=6)
    return [(handle, FINAL_HANDLE_LABEL)]


def plot_learning_curves(results: Results, out_dir: Path, name: str = "learning_curves") -> list[Path]:
    """One panel per suite: test-split headline metric vs env steps, one line per method."""
    suites = results.suites_with("test")
    if not suites:
        return []
    colors, markers = style.method_colors(results.algos), style.method_markers(results.algos)
    with style.paper_style():
        fig, axes = style.panel_grid(len(suites))
        labels, finals = [], False
        for ax, suite in zip(axes, suites, strict=True):
            panel_labels, panel_final = _panel(ax, results, suite, "test", colors, markers)
            labels.append(panel_labels)
            finals |= panel_final
            ax.set_title(f"{suite} (meta-test)")
        style.add_legends(fig, axes, labels, style.legend_handles(results.algos), extra=_final_legend(finals))
        style.suptitle(fig, "Meta-training curves: mean over seeds, 95% Student-t CI over seeds")
        return style.save_figure(fig, out_dir, name)


def metaworld_suites_with_train(results: Results) -> list[str]:
    """The Meta-World suites where some run has train-split evaluation rows (meta-train curves)."""
    return [s for s in results.suites_with("train") if results.info(s).is_metaworld]


def plot_metaworld_curves(results: Results, out_dir: Path, name: str = "metaworld_curves") -> list[Path]:
    """Meta-World suites with train-split rows: meta-train (left) and meta-test (right) success curves."""
    suites = metaworld_suites_with_train(results)
    if not suites:
        return []
    colors, markers = style.method_colors(results.algos), style.method_markers(results.algos)
    with style.paper_style():
        fig, axes = style.panel_grid(2 * len(suites), ncols=2)
        labels, finals = [], False
        for i, suite in enumerate(suites):
            pair = ((axes[2 * i], "train", "meta-train"), (axes[2 * i + 1], "test", "meta-test"))
            for ax, split, title in pair:
                panel_labels, panel_final = _panel(ax, results, suite, split, colors, markers)
                labels.append(panel_labels)
                finals |= panel_final
                ax.set_title(f"{suite} ({title})")
        style.add_legends(fig, axes, labels, style.legend_handles(results.algos), extra=_final_legend(finals))
        style.suptitle(
            fig, "Meta-World success during meta-training: mean over seeds, 95% Student-t CI over seeds"
        )
        return style.save_figure(fig, out_dir, name)
