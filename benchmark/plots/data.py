"""Loading and validating a results tree; per-run metrics derived from ``eval.csv``.

Pure functions of the results files: nothing here imports training code, torch or gymnasium.

Layout (docs/protocol.md, "Results layout and CSV schema")::

    <root>/<suite>/<algo>/seed<N>/config.json
                                 /progress.csv
                                 /eval.csv
                                 /done          (present once the run finished)

Every malformed or missing input raises :class:`ResultsError` with a one-line message that names the
file and what is wrong; ``python -m benchmark.plots`` turns it into exit code 2.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.errors import ResultsError  # noqa: F401 - re-exported

PROGRESS_COLUMNS = ("iteration", "env_steps", "wall_time_s")
EVAL_COLUMNS = ("iteration", "env_steps", "split", "task_id", "task", "episode", "return", "success")
# integer columns and the least value each may hold (None: any); ``mark`` is absent from older eval.csv files
PROGRESS_INTEGERS = {"iteration": 0, "env_steps": 0}
EVAL_INTEGERS = {"iteration": 0, "mark": 0, "env_steps": 0, "task_id": None, "episode": 0}
SPLITS = ("train", "test", "ood", "validation")
SUITE_INFO_KEYS = (
    "family",
    "horizon",
    "episodes_per_trial",
    "eval_episodes",
    "has_success",
    "headline_episodes",
)
CONFIG_KEYS = ("suite", "algo", "seed", "profile", "suite_info")
BUDGET_KEYS = ("budget_steps", "iterations")  # env-step budget; ``iterations`` in runs written before it

# Display order of the in-tree methods; plugins follow alphabetically.
KNOWN_METHODS = ("trmrl", "rl2", "maml", "pearl", "varibad")

_SEED_DIR = re.compile(r"^seed(\d+)$")


def _fail(path: Path | str, what: str) -> ResultsError:
    return ResultsError(f"{path}: {what}")


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteInfo:
    """The protocol facts of a suite as recorded in ``config.json["suite_info"]``."""

    family: str
    horizon: int
    episodes_per_trial: int
    eval_episodes: int
    has_success: bool
    headline_episodes: tuple[int, ...]

    @property
    def is_metaworld(self) -> bool:
        """Whether the family is Meta-World (``metaworld``, ignoring case, ``-`` and ``_``)."""
        return self.family.lower().replace("-", "").replace("_", "") == "metaworld"

    @property
    def metric(self) -> str:
        """``"success"`` (plotted in %) where the suite has a success notion, else ``"return"``."""
        return "success" if self.has_success else "return"


@dataclass(frozen=True)
class References:
    """The test split's per-episode reference returns: normalised = (R - random) / (oracle - random).

    Figures normalise only test-split numbers; other splits are plotted raw.
    """

    random: float
    oracle: float
    source: str = ""

    def normalize(self, returns: Any) -> Any:
        """``(returns - random) / (oracle - random)``, elementwise; a number, array or Series of per-episode
        returns in, the same shape out (0 = random, 1 = oracle)."""
        return (returns - self.random) / (self.oracle - self.random)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_config(path: Path) -> tuple[dict[str, Any], SuiteInfo, References | None]:
    """Read and validate ``config.json``; return the raw dict, its suite info and references."""
    if not path.is_file():
        raise _fail(path, "file not found (every run directory needs its config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise _fail(path, f"invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(config, dict):
        raise _fail(path, f"expected a JSON object, got {type(config).__name__}")
    for key in CONFIG_KEYS:
        if key not in config:
            raise _fail(path, f"missing key {key!r} (expected: {', '.join(CONFIG_KEYS)})")
    for key in ("suite", "algo", "profile"):
        if not isinstance(config[key], str) or not config[key]:
            raise _fail(path, f"key {key!r} must be a non-empty string, got {config[key]!r}")
    if not any(k in config for k in BUDGET_KEYS):
        raise _fail(path, f"missing key 'budget_steps' (expected: {', '.join(CONFIG_KEYS)}, budget_steps)")
    for key in ("seed", *(k for k in BUDGET_KEYS if k in config)):
        if _as_int(config[key]) is None:
            raise _fail(path, f"key {key!r} must be an integer, got {config[key]!r}")
    raw = config["suite_info"]
    if not isinstance(raw, dict):
        raise _fail(path, f"key 'suite_info' must be an object, got {raw!r}")
    for key in SUITE_INFO_KEYS:
        if key not in raw:
            raise _fail(path, f"missing key 'suite_info.{key}' (expected: {', '.join(SUITE_INFO_KEYS)})")
    ints = {}
    for key in ("horizon", "episodes_per_trial", "eval_episodes"):
        value = _as_int(raw[key])
        if value is None or value < 1:
            raise _fail(path, f"key 'suite_info.{key}' must be a positive integer, got {raw[key]!r}")
        ints[key] = value
    if not isinstance(raw["has_success"], bool):
        raise _fail(path, f"key 'suite_info.has_success' must be true or false, got {raw['has_success']!r}")
    headline = raw["headline_episodes"]
    if (
        not isinstance(headline, list)
        or not headline
        or any(_as_int(h) is None or not 0 <= _as_int(h) < ints["eval_episodes"] for h in headline)
    ):
        raise _fail(
            path,
            f"key 'suite_info.headline_episodes' must be a non-empty list of episode indices in "
            f"[0, {ints['eval_episodes'] - 1}], got {headline!r}",
        )
    info = SuiteInfo(
        family=str(raw["family"]),
        has_success=raw["has_success"],
        headline_episodes=tuple(sorted({int(h) for h in headline})),
        **ints,
    )
    # ``reference_returns``: {split: {random, oracle, source}}; runs written before references were kept
    # per split hold one object, which was computed for (and is used only on) the test split
    refs = None
    ref_raw = config.get("reference_returns")
    if isinstance(ref_raw, dict) and "random" in ref_raw:
        ref_raw = {"test": ref_raw}
    if ref_raw is not None and not isinstance(ref_raw, dict):
        raise _fail(path, "key 'reference_returns' must be null or an object {split: {random, oracle}}")
    test_raw = (ref_raw or {}).get("test")
    if test_raw is not None:
        if not isinstance(test_raw, dict) or "random" not in test_raw or "oracle" not in test_raw:
            raise _fail(path, "key 'reference_returns.test' must be an object with 'random' and 'oracle'")
        rand, oracle = _as_float(test_raw["random"]), _as_float(test_raw["oracle"])
        if rand is None or oracle is None:
            raise _fail(path, f"reference returns must be finite numbers, got {test_raw!r}")
        if oracle == rand:
            raise _fail(path, f"reference returns have oracle == random ({oracle}); cannot normalise")
        refs = References(random=rand, oracle=oracle, source=str(test_raw.get("source", "")))
    return config, info, refs


# ------------------------------------------------------------------------------------------------
# CSV files
# ------------------------------------------------------------------------------------------------
def read_csv_checked(
    path: Path,
    required: Sequence[str],
    numeric: Sequence[str] = (),
    *,
    optional_numeric: Sequence[str] = (),
    integer: dict[str, int | None] | None = None,
    in_progress: bool = False,
) -> pd.DataFrame:
    """Read a CSV, check its columns, coerce numeric ones; raise :class:`ResultsError` on any defect.

    ``numeric`` columns must hold a number in every row; ``optional_numeric`` ones may be empty (NaN).
    ``integer`` columns (those the file has) must hold an integer in every row, at least the least value
    given (None: any) and below 2**53; they come back as int64. A file with a header and no rows is valid
    (a run that has not logged anything yet). For a run in progress (``in_progress=True``) a missing file
    means "nothing logged yet" (the harness creates its CSVs on the first write) and a last line cut off
    mid-write (no final newline) is dropped; in a finished run's file such a line is an error.
    """
    expected = ", ".join(required)
    integer = integer or {}
    if not path.is_file():
        if in_progress and not path.exists():
            dtypes = {c: np.int64 if c in integer else float if c in numeric else object for c in required}
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
        raise _fail(path, f"file not found (expected a CSV with columns: {expected})")
    raw = path.read_bytes()
    if not raw.strip():
        raise _fail(path, f"empty file (expected a header row: {expected})")
    lines = raw.count(b"\n")
    if not raw.endswith(b"\n"):
        if not in_progress:
            raise _fail(
                path,
                f"last line (line {lines + 1}) is cut off: no newline at its end (a finished run's CSV ends "
                "every row with a newline; a cut row is dropped only while the run is in progress)",
            )
        if lines >= 1:
            # a run in progress may have been killed mid-row: drop the cut last line wherever it was cut
            # (even inside a quoted field) before parsing; everything before it was written whole
            raw = raw[: raw.rfind(b"\n") + 1]
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _fail(path, f"cannot parse CSV ({first})") from None
    df = df.fillna("")
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise _fail(path, f"missing column{'s' if len(missing) > 1 else ''} {names} (expected: {expected})")
    for col in df.columns:
        df[col] = df[col].str.strip()
    required_numbers = dict.fromkeys([*numeric, *(c for c in integer if c in df.columns)])
    for col, allow_empty in [(c, False) for c in required_numbers] + [(c, True) for c in optional_numeric]:
        text = df[col]
        empty = text == ""
        values = pd.to_numeric(text.where(~empty, None), errors="coerce")
        bad = values.isna() & ~empty
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise _fail(path, f"non-numeric value {text.iloc[i]!r} in column {col!r} (line {i + 2})")
        if not allow_empty and empty.any():
            i = int(np.flatnonzero(empty.to_numpy())[0])
            raise _fail(path, f"empty value in column {col!r} (line {i + 2})")
        values = values.to_numpy(dtype=float, na_value=np.nan)
        if col in integer:
            bad = (values != np.round(values)) | (np.abs(values) >= 2**53)  # also inf
            if integer[col] is not None:
                bad |= values < integer[col]
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                kind = "an integer" if integer[col] is None else f"an integer >= {integer[col]}"
                raise _fail(
                    path,
                    f"invalid value {text.iloc[i]!r} in column {col!r} (line {i + 2}; expected {kind} "
                    "below 2**53)",
                )
            df[col] = values.astype(np.int64)
            continue
        if np.isinf(values).any():
            i = int(np.flatnonzero(np.isinf(values))[0])
            raise _fail(path, f"infinite value {text.iloc[i]!r} in column {col!r} (line {i + 2})")
        df[col] = values
    return df


def read_progress(path: Path, in_progress: bool = False) -> pd.DataFrame:
    """``progress.csv``: ``iteration, env_steps, wall_time_s`` then method metrics (kept as read)."""
    df = read_csv_checked(
        path, PROGRESS_COLUMNS, PROGRESS_COLUMNS, integer=PROGRESS_INTEGERS, in_progress=in_progress
    )
    for col in df.columns:
        if col not in PROGRESS_COLUMNS:
            df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce")
    return df


def read_eval(path: Path, has_success: bool, in_progress: bool = False) -> pd.DataFrame:
    """``eval.csv``: one row per evaluated episode, validated against the schema."""
    df = read_csv_checked(
        path,
        EVAL_COLUMNS,
        ("return", "success") if has_success else ("return",),
        optional_numeric=() if has_success else ("success",),
        integer=EVAL_INTEGERS,
        in_progress=in_progress,
    )
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        i = int(np.flatnonzero(bad_split.to_numpy())[0])
        raise _fail(
            path,
            f"invalid split {df['split'].iloc[i]!r} (line {i + 2}; expected one of: {', '.join(SPLITS)})",
        )
    succ = df["success"].to_numpy(dtype=float)
    bad_s = ~np.isnan(succ) & (succ != 0) & (succ != 1)
    if bad_s.any():
        i = int(np.flatnonzero(bad_s)[0])
        raise _fail(path, f"success must be 0 or 1, got {succ[i]:g} (line {i + 2})")
    # ``mark``: the env-step mark an evaluation stands for. eval.csv files written before the column
    # existed evaluated at iteration boundaries of equal-sized iterations: their mark is env_steps.
    if "mark" not in df.columns:
        df["mark"] = df["env_steps"]
    key = ["mark", "split", "task_id", "episode"]
    dup = df.duplicated(key, keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        r = df.iloc[i]
        raise _fail(
            path,
            f"duplicated evaluation row (line {i + 2}: mark {r['mark']}, split {r['split']}, task_id "
            f"{r['task_id']}, episode {r['episode']}); two writers shared this run directory",
        )
    return df


# ------------------------------------------------------------------------------------------------
# runs and result sets
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One ``<suite>/<algo>/seed<N>`` directory, validated."""

    path: Path
    suite: str
    algo: str
    seed: int
    config: dict[str, Any]
    info: SuiteInfo
    references: References | None
    progress: pd.DataFrame
    eval: pd.DataFrame
    done: bool
    _values: dict[bool, pd.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """``<suite>/<algo>/seed<N>``, for messages."""
        return f"{self.suite}/{self.algo}/seed{self.seed}"

    @property
    def profile(self) -> str:
        """The profile the run was made with (``config.json["profile"]``, e.g. ``quick`` or ``paper``)."""
        return str(self.config["profile"])

    @property
    def budget_text(self) -> str:
        """Progress against the plan: env steps / budget (or iterations / iterations for old runs)."""
        if "budget_steps" in self.config:
            return f"{self.env_steps:,}/{int(self.config['budget_steps']):,} steps"
        return f"{self.iterations_logged}/{int(self.config['iterations'])} it"

    @property
    def iterations_logged(self) -> int:
        """Number of rows in ``progress.csv`` (meta-training iterations completed)."""
        return len(self.progress)

    @property
    def env_steps(self) -> int:
        """Largest env step count in progress.csv or eval.csv (0 before any logging)."""
        values = [df["env_steps"].max() for df in (self.progress, self.eval) if len(df)]
        return int(max(values)) if values else 0

    @property
    def eval_marks(self) -> list[int]:
        """The env-step marks of its evaluations in eval.csv (any split), ascending."""
        return sorted(self.eval["mark"].unique().tolist())

    def latest_mark(self, split: str = "test") -> int | None:
        """Env-step mark of the latest evaluation that covered ``split`` (the budget for finished runs)."""
        marks = self.eval.loc[self.eval["split"] == split, "mark"]
        return int(marks.max()) if len(marks) else None

    @property
    def git_dirty(self) -> bool:
        """True when config.json says the checkout had uncommitted edits to tracked files."""
        return self.config.get("git_dirty") is True

    @property
    def git_commit(self) -> str | None:
        """The commit config.json records (``git_commit``, or the older ``commit`` / ``git.commit``);
        None where it records none."""
        cfg = self.config
        for key in ("git_commit", "commit"):
            if isinstance(cfg.get(key), str):
                return cfg[key]
        git = cfg.get("git")
        if isinstance(git, dict) and isinstance(git.get("commit"), str):
            return git["commit"]
        return None


def load_run(run_dir: Path | str) -> Run:
    """Load and validate one run directory."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    config, info, refs = parse_config(config_path)
    match = _SEED_DIR.match(run_dir.name)
    expected = {"suite": run_dir.parent.parent.name, "algo": run_dir.parent.name}
    for key, value in expected.items():
        if config[key] != value:
            raise _fail(config_path, f"{key} {config[key]!r} does not match the directory name {value!r}")
    if match and int(match.group(1)) != int(config["seed"]):
        raise _fail(
            config_path, f"seed {config['seed']!r} does not match the directory name {run_dir.name!r}"
        )
    done = (run_dir / "done").exists()
    progress = read_progress(run_dir / "progress.csv", in_progress=not done)
    evals = read_eval(run_dir / "eval.csv", info.has_success, in_progress=not done)
    too_long = evals["episode"] >= info.eval_episodes
    if too_long.any():
        i = int(np.flatnonzero(too_long.to_numpy())[0])
        raise _fail(
            run_dir / "eval.csv",
            f"episode index {evals['episode'].iloc[i]} exceeds suite_info.eval_episodes = "
            f"{info.eval_episodes} (line {i + 2})",
        )
    return Run(
        path=run_dir,
        suite=str(config["suite"]),
        algo=str(config["algo"]),
        seed=int(config["seed"]),
        config=config,
        info=info,
        references=refs,
        progress=progress,
        eval=evals,
        done=done,
    )


def method_order(algos: Iterable[str]) -> list[str]:
    """In-tree methods in their fixed order, then plugins alphabetically."""
    algos = set(algos)
    return [m for m in KNOWN_METHODS if m in algos] + sorted(algos - set(KNOWN_METHODS))


@dataclass
class Results:
    """All runs under one results root."""

    root: Path
    runs: list[Run] = field(default_factory=list)

    @property
    def suites(self) -> list[str]:
        """Point-nav, locomotion, Meta-World, then other families; by name within a family."""
        family = {r.suite: r.info.family.lower().replace("-", "").replace("_", "") for r in self.runs}
        rank = {"pointnav": 0, "locomotion": 1, "metaworld": 2}
        return sorted(family, key=lambda s: (rank.get(family[s], 3), family[s], s))

    @property
    def algos(self) -> list[str]:
        """Every method with a run, in-tree ones in their fixed order, then plugins (``method_order``)."""
        return method_order(r.algo for r in self.runs)

    def select(self, suite: str | None = None, algo: str | None = None) -> list[Run]:
        """The runs of ``suite`` and ``algo`` (None: any), sorted by suite, method, seed; may be empty."""
        picked = (
            r for r in self.runs if (suite is None or r.suite == suite) and (algo is None or r.algo == algo)
        )
        return sorted(picked, key=lambda r: (r.suite, r.algo, r.seed))

    def algos_for(self, suite: str) -> list[str]:
        """The methods with a run on ``suite``, in ``method_order``."""
        return method_order(r.algo for r in self.runs if r.suite == suite)

    def suites_with(self, split: str) -> list[str]:
        """Suites in which some run has evaluation rows of ``split``."""
        return [s for s in self.suites if any((r.eval["split"] == split).any() for r in self.select(s))]

    def info(self, suite: str) -> SuiteInfo:
        """The suite facts of ``suite`` as its first run (by method, seed) recorded them; ``IndexError``
        when no run has that suite."""
        return self.select(suite)[0].info

    def references(self, suite: str) -> References | None:
        """The test split's reference returns of ``suite`` from its first run (by method, seed), None
        where that run has none; ``IndexError`` when no run has that suite."""
        return self.select(suite)[0].references


def load_results(root: Path | str) -> Results:
    """Discover and validate every ``<suite>/<algo>/seed<N>/`` run under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise _fail(root, "results directory not found")
    runs = []
    for seed_dir in sorted(root.glob("*/*/seed*")):
        if seed_dir.is_dir() and _SEED_DIR.match(seed_dir.name):
            runs.append(load_run(seed_dir))
    if not runs:
        raise _fail(
            root,
            "no runs found (expected <suite>/<algo>/seed<N>/ directories with config.json, "
            "progress.csv and eval.csv)",
        )
    _check_same_suite(runs)
    return Results(root=root, runs=runs)


def _check_same_suite(runs: Sequence[Run]) -> None:
    """Runs of one suite are pooled, normalised and drawn with one set of suite facts and references:
    refuse runs that recorded different ``suite_info``, test references or tasks under one ``task_id``
    (a suite whose definition changed between the runs), naming both runs."""
    first: dict[str, Run] = {}
    hashed: dict[str, Run] = {}
    tasks: dict[tuple[str, str, int], tuple[str, Run]] = {}
    for run in sorted(runs, key=lambda r: (r.suite, r.algo, r.seed)):
        ref = first.setdefault(run.suite, run)
        differs, file = None, "config.json"
        pair = [None if r is None else (r.random, r.oracle) for r in (run.references, ref.references)]
        # a hash of every split's tasks (runs since the key was added record it): against the first
        # run of the suite that recorded one
        sha_run = hashed.setdefault(run.suite, run) if run.config["suite_info"].get("tasks_sha256") else run
        sha = [r.config["suite_info"].get("tasks_sha256") for r in (run, sha_run)]
        if run.info != ref.info:
            key = next(k for k in SUITE_INFO_KEYS if getattr(run.info, k) != getattr(ref.info, k))
            differs = f"suite_info.{key} = {getattr(run.info, key)!r} (there: {getattr(ref.info, key)!r})"
        elif pair[0] != pair[1]:
            differs = f"test reference returns (random, oracle) = {pair[0]} (there: {pair[1]})"
        elif sha[0] != sha[1]:
            hashes = [f"{str(h)[:12]}..." for h in sha]
            differs = f"other tasks (suite_info.tasks_sha256 {hashes[0]}, there: {hashes[1]})"
            ref = sha_run
        else:
            pairs = run.eval[["split", "task_id", "task"]].drop_duplicates()
            for split, task_id, task in pairs.itertuples(index=False):
                seen, where = tasks.setdefault((run.suite, split, int(task_id)), (str(task), run))
                if seen != str(task) and where is run:  # one run's records mix two task sets
                    raise _fail(
                        run.path / "eval.csv",
                        f"holds two tasks under {split} task_id {task_id} ({seen!r} and {task!r}): its "
                        "records mix two definitions of the suite (resumed after it changed); rerun it",
                    )
                if seen != str(task):
                    differs = f"{split} task_id {task_id} = {task!r} (there: {seen!r})"
                    ref, file = where, "eval.csv"
                    break
        if differs:
            raise _fail(
                run.path / file,
                f"recorded {differs}, unlike {ref.path / file}; runs of suite {run.suite!r} are pooled, so "
                "they must come from one definition of the suite: rerun the older ones with this code, or "
                "keep them under separate results directories",
            )


# ------------------------------------------------------------------------------------------------
# per-run metrics (one number per run, or per run and episode index)
# ------------------------------------------------------------------------------------------------
def episode_values(run: Run, normalized: bool = False) -> pd.DataFrame:
    """``eval.csv`` rows with a ``value`` column: success in % (success suites) or return.

    With ``normalized=True`` the value is the normalised return (or the success rate as a
    fraction in [0, 1] for success suites without reference returns).
    """
    if normalized in run._values:
        return run._values[normalized]
    df = run.eval
    if run.info.has_success and (not normalized or run.references is None):
        value = df["success"] * (1.0 if normalized else 100.0)
    elif normalized:
        if run.references is None:
            raise ValueError(f"{run.name}: no reference returns to normalise with")
        value = run.references.normalize(df["return"])
    else:
        value = df["return"]
    run._values[normalized] = df.assign(value=value.astype(float))
    return run._values[normalized]


def _task_means(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Average duplicate episodes of one task first, so every task weighs the same."""
    return rows.groupby(keys + ["task_id"], as_index=False, sort=True)["value"].mean()


def _periodic_tasks(run: Run, rows: pd.DataFrame) -> set | None:
    """Task ids of a finished run's periodic evaluations in ``rows`` (one split; every mark but the last,
    the final evaluation); None while the run is in progress or has a single evaluation."""
    if not run.done or rows["mark"].nunique() < 2:
        return None
    return set(rows.loc[rows["mark"] != rows["mark"].max(), "task_id"])


def final_covers_more_tasks(run: Run, split: str = "test") -> bool:
    """Whether a finished run's final evaluation of ``split`` covers tasks its periodic ones did not."""
    rows = run.eval[run.eval["split"] == split]
    periodic = _periodic_tasks(run, rows)
    if periodic is None:
        return False
    return bool(set(rows.loc[rows["mark"] == rows["mark"].max(), "task_id"]) - periodic)


def curve(run: Run, split: str = "test", normalized: bool = False) -> pd.DataFrame:
    """Headline metric at every evaluation of ``split``: columns ``mark, env_steps, value``.

    ``mark`` is the env-step mark the evaluation stands for (the same for every method);
    ``env_steps`` the steps the run had actually consumed when it evaluated. Every point averages the
    same tasks (the periodic evaluations' subset, also at the final mark).
    """
    df = episode_values(run, normalized)
    rows = df[(df["split"] == split) & df["episode"].isin(run.info.headline_episodes)]
    if rows.empty:
        return pd.DataFrame({"mark": [], "env_steps": [], "value": []})
    periodic = _periodic_tasks(run, rows)
    if periodic is not None:
        # every point on the same tasks: the final evaluation covers more tasks than the periodic
        # ones, so the curve's last point keeps only the periodic evaluations' tasks
        rows = rows[rows["task_id"].isin(periodic)]
    per_task = _task_means(rows, ["mark"])
    out = per_task.groupby("mark", as_index=False)["value"].mean()
    steps = rows.groupby("mark")["env_steps"].max()
    out["env_steps"] = out["mark"].map(steps)
    return out[["mark", "env_steps", "value"]]


def per_episode(
    run: Run, split: str = "test", mark: int | None = None, normalized: bool = False
) -> pd.Series:
    """Mean metric over tasks per episode index at one evaluation mark (default: the latest on ``split``)."""
    if mark is None:
        mark = run.latest_mark(split)
        if mark is None:
            return pd.Series(dtype=float, name="value")
    df = episode_values(run, normalized)
    rows = df[(df["split"] == split) & (df["mark"] == mark)]
    per_task = _task_means(rows, ["episode"])
    return per_task.groupby("episode")["value"].mean()


def headline(run: Run, split: str = "test", mark: int | None = None, normalized: bool = False) -> float:
    """One number per run: mean over tasks and headline episodes at one evaluation (default: latest)."""
    eps = per_episode(run, split, mark, normalized)
    eps = eps[eps.index.isin(run.info.headline_episodes)]
    return float(eps.mean()) if len(eps) else float("nan")


def seed_summary(runs: Sequence[Run]) -> str:
    """``"3 seeds"``, ``"1 seed"``, ``"3 seeds, 1 in progress"``."""
    n = len(runs)
    text = f"{n} seed{'s' if n != 1 else ''}"
    running = sum(not r.done for r in runs)
    if running:
        text += f", {running} in progress" if n > 1 else ", in progress"
    return text
