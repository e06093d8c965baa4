"""One look for every figure: method colours, display names, fonts, saving (Agg backend, PNG + PDF).

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, so no pyplot
global state is touched and no interactive backend is ever selected.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from .data import KNOWN_METHODS, References, SuiteInfo, method_order

# Fixed colours of the in-tree methods (Okabe-Ito / seaborn "colorblind"), identical in every figure.
METHOD_COLORS = {
    "trmrl": "#D55E00",  # vermillion
    "rl2": "#0173B2",  # blue
    "maml": "#029E73",  # green
    "pearl": "#CC78BC",  # purple
    "varibad": "#DE8F05",  # orange
}
# Plugins take these in alphabetical order of their names.
PLUGIN_PALETTE = ("#56B4E9", "#CA9161", "#949494", "#ECE133", "#FBAFE4", "#000000", "#8C564B", "#17BECF")
METHOD_MARKERS = {"trmrl": "o", "rl2": "s", "maml": "^", "pearl": "D", "varibad": "v"}
PLUGIN_MARKERS = ("P", "X", "*", "h", "<", ">", "p", "8")

DISPLAY_NAMES = {"trmrl": "TrMRL", "rl2": "RL²", "maml": "MAML", "pearl": "PEARL", "varibad": "VariBAD"}
LATEX_NAMES = {"trmrl": "TrMRL", "rl2": "RL$^2$", "maml": "MAML", "pearl": "PEARL", "varibad": "VariBAD"}

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.8,
    "pdf.fonttype": 42,  # embed TrueType: text stays editable/searchable in papers
    "ps.fonttype": 42,
    "savefig.dpi": 200,
    # plain tick labels: no "1e6" multiplier or "-5.437e1" offset above a nearly flat curve's axis
    "axes.formatter.useoffset": False,
    "axes.formatter.limits": (-5, 6),
}

BAND_ALPHA = 0.2
PANEL_W, PANEL_H = 4.0, 3.0


def display_name(algo: str) -> str:
    """The method's name in figures and Markdown (``rl2`` -> ``RL²``); a plugin's own name unchanged."""
    return DISPLAY_NAMES.get(algo, algo)


def latex_name(algo: str) -> str:
    """The method's name in LaTeX tables (``rl2`` -> ``RL$^2$``); a plugin's own name unchanged."""
    return LATEX_NAMES.get(algo, algo)


def _assign(algos: Iterable[str], fixed: dict[str, str], palette: Sequence[str]) -> dict[str, str]:
    """Fixed entries for the in-tree methods, then ``palette`` for plugins in alphabetical order."""
    algos = method_order(algos)
    plugins = [a for a in algos if a not in KNOWN_METHODS]
    out = {a: fixed[a] for a in algos if a in fixed}
    for i, a in enumerate(plugins):
        out[a] = palette[i % len(palette)]
    return out


def method_colors(algos: Iterable[str]) -> dict[str, str]:
    """Fixed colours for the in-tree methods, then the plugin palette in alphabetical order."""
    return _assign(algos, METHOD_COLORS, PLUGIN_PALETTE)


def method_markers(algos: Iterable[str]) -> dict[str, str]:
    """Fixed markers for the in-tree methods, then the plugin markers in alphabetical order."""
    return _assign(algos, METHOD_MARKERS, PLUGIN_MARKERS)


@contextmanager
def paper_style() -> Iterator[None]:
    """Apply the shared matplotlib settings (``RC``) inside the block; restored on exit."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure of ``width`` x ``height`` inches on its own Agg canvas (no pyplot)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.png`` and ``.pdf``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, bbox_inches="tight", pad_inches=0.05, metadata=_metadata(ext))
        paths.append(path)
    return paths


def _metadata(ext: str) -> dict[str, str | None]:
    # Reproducible PDFs: no creation date in the file.
    return {"CreationDate": None} if ext == "pdf" else {}


def _fmt_steps(x: float, _pos: int | None = None) -> str:
    ax = abs(x)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if ax >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.0f}"


STEPS_FORMATTER = FuncFormatter(_fmt_steps)


def episodes_text(episodes: Iterable[int]) -> str:
    """0-based headline indices -> human text with 1-based episode numbers ("episode 6", "episodes 11-13")."""
    eps = sorted(e + 1 for e in episodes)
    if len(eps) == 1:
        return f"episode {eps[0]}"
    if eps == list(range(eps[0], eps[-1] + 1)):
        return f"episodes {eps[0]}–{eps[-1]}"
    return "episodes " + ", ".join(str(e) for e in eps)


def metric_label(info: SuiteInfo, headline: bool = True, sep: str = "\n") -> str:
    """Axis label with units (two lines by default; ``sep=" "`` for one line), e.g.
    "Return per episode\n(sum of rewards, episode 6)" or "Success rate (%)\n(episodes 11–13)"."""
    where = episodes_text(info.headline_episodes) if headline else ""
    if info.has_success:
        return f"Success rate (%){sep}({where})" if where else "Success rate (%)"
    return f"Return per episode{sep}(sum of rewards{', ' + where if where else ''})"


def short_source(source: str) -> str:
    """The first clause of a reference's source: "pomdp-baselines (Ni et al. ...)" -> "pomdp-baselines",
    "computed by the harness on the 20 test goals: ..." -> "computed by the harness"."""
    cut = len(source)
    for sep in (" (", ":", ";", ",", " on "):
        i = source.find(sep)
        if i > 0:
            cut = min(cut, i)
    return source[:cut].strip() or "reference"


REFERENCE_STYLE = {"oracle": "--", "random": ":"}


def draw_references(ax, refs: References | None) -> None:
    """Horizontal lines at the per-episode oracle and random returns of the test split, each labelled
    in the panel with its name and (short) source, e.g. "oracle, pomdp-baselines". Raw-return panels
    of the test split only: references are per-episode returns of that split."""
    if refs is None:
        return
    where = short_source(refs.source)
    for name, value in (("oracle", refs.oracle), ("random", refs.random)):
        ax.axhline(value, color="0.35", linestyle=REFERENCE_STYLE[name], linewidth=0.9, zorder=1)
        ax.text(
            0.99,
            value,
            f"{name}, {where}",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.3",
        )


def suptitle(fig: Figure, text: str) -> None:
    """Figure title, wrapped to the figure width."""
    width = fig.get_figwidth()
    fig.suptitle(textwrap.fill(text, width=max(40, int(width * 10))))


# ------------------------------------------------------------------------------------------------
# panels and legends
# ------------------------------------------------------------------------------------------------
def panel_grid(
    n_panels: int, ncols: int = 3, width: float = PANEL_W, height: float = PANEL_H, extra_height: float = 0.0
) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes on a grid (unused cells removed)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    if n_panels == 1:
        width, height = width * 1.4, height * 1.15
    fig = new_figure(width * ncols, height * nrows + extra_height)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.remove()
    return fig, axes[:n_panels]


def legend_label(algo: str, n_seeds: int, n_running: int = 0) -> str:
    """``"TrMRL (3 seeds)"``, ``"MAML (1 seed, no CI)"``, ``"RL² (3 seeds, 1 in progress)"``."""
    parts = [f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"]
    if n_running:
        parts.append("in progress" if n_running == n_seeds == 1 else f"{n_running} in progress")
    if n_seeds < 2:
        parts.append("no CI")
    return f"{display_name(algo)} ({', '.join(parts)})"


def add_legends(
    fig: Figure,
    axes: list,
    labels_per_panel: list[dict[str, str]],
    handles: dict[str, object],
    ncol: int | None = None,
    extra: Sequence[tuple[object, str]] = (),
) -> None:
    """One legend below the figure when every method is labelled the same in every panel, else one
    legend under each panel; ``extra`` (handle, label) entries are appended to every legend.
    Legends never sit on top of data."""
    merged: dict[str, str] = {}
    consistent = True
    for labels in labels_per_panel:
        for algo, label in labels.items():
            consistent &= merged.setdefault(algo, label) == label
    if not merged:
        return
    order = method_order(merged)
    if consistent:
        texts = [merged[a] for a in order] + [t for _, t in extra]
        # as many columns as fit the figure width (legend text at 9 pt, ~0.075 in per character)
        entry_w = 0.6 + 0.075 * max(len(t) for t in texts)
        fit = max(1, int(fig.get_figwidth() / entry_w))
        fig.legend(
            [handles[a] for a in order] + [h for h, _ in extra],
            texts,
            loc="outside lower center",
            ncol=ncol or min(len(texts), fit, 5),
        )
        return
    for ax, labels in zip(axes, labels_per_panel, strict=True):
        algos = method_order(labels)
        if algos:
            n = len(algos) + len(extra)
            ax.legend(
                [handles[a] for a in algos] + [h for h, _ in extra],
                [labels[a] for a in algos] + [t for _, t in extra],
                loc="upper center",
                bbox_to_anchor=(0.5, -0.24),
                ncol=1 if n < 3 else 2,
                fontsize=8,
            )


def legend_handles(algos: Sequence[str]) -> dict[str, Line2D]:
    """One legend handle per method, in its fixed colour and marker."""
    colors, markers = method_colors(algos), method_markers(algos)
    return {a: Line2D([], [], color=colors[a], marker=markers[a], markersize=4) for a in algos}
