"""Figures and tables of metarl-bench: pure functions of the results files (CSV + config.json).

Nothing here imports training code, torch, gymnasium or the suites. Entry points:
``make_all(results_root, out_dir) -> list[Path]`` and ``python -m benchmark.plots RESULTS_DIR [--out OUT]``.
"""

from .adaptation import adaptation_table, plot_adaptation, plot_ood_adaptation
from .aggregate import aggregate_scores, aggregate_table, plot_aggregate, write_aggregate_table
from .curves import curve_table, plot_learning_curves, plot_metaworld_curves
from .data import Results, ResultsError, Run, load_results, load_run
from .report import default_out_dir, main, make_all
from .stats import (
    Estimate,
    bootstrap_ci,
    iqm,
    probability_of_improvement,
    probability_of_improvement_ci,
    stratified_bootstrap_ci,
    t_interval,
)
from .style import method_colors
from .tables import (
    final_table,
    headline_table,
    metaworld_table,
    ood_table,
    task_bins_table,
    write_final_table,
    write_headline_table,
    write_metaworld_table,
    write_ood_table,
    write_task_bins_table,
)

__all__ = [
    "Estimate",
    "Results",
    "ResultsError",
    "Run",
    "adaptation_table",
    "aggregate_scores",
    "aggregate_table",
    "bootstrap_ci",
    "curve_table",
    "default_out_dir",
    "final_table",
    "headline_table",
    "iqm",
    "load_results",
    "load_run",
    "main",
    "make_all",
    "metaworld_table",
    "method_colors",
    "ood_table",
    "plot_adaptation",
    "plot_aggregate",
    "plot_learning_curves",
    "plot_metaworld_curves",
    "plot_ood_adaptation",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "stratified_bootstrap_ci",
    "t_interval",
    "task_bins_table",
    "write_aggregate_table",
    "write_final_table",
    "write_headline_table",
    "write_metaworld_table",
    "write_ood_table",
    "write_task_bins_table",
]
