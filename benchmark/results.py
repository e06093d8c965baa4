"""The results layout and CSV schema (SPEC.md), atomic checkpoints, and truncation on resume.

``<out>/<suite>/<algo>/seed<N>/`` holds config.json, progress.csv, eval.csv, checkpoint.pt and, once
the run finished, a ``done`` marker. CSV rows are flushed as soon as they are written.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import ResultsError

EVAL_COLUMNS = ("iteration", "env_steps", "split", "task_id", "task", "episode", "return", "success")
PROGRESS_PREFIX = ("iteration", "env_steps", "wall_time_s")
DONE_MARKER = "done"
CHECKPOINT = "checkpoint.pt"


def run_dir(out: str | Path, suite: str, algo: str, seed: int) -> Path:
    return Path(out) / suite / algo / f"seed{seed}"


class CsvLog:
    """Append-only CSV with a fixed header; each row is flushed to disk when written."""

    def __init__(self, path: Path, columns: tuple[str, ...] | None = None) -> None:
        self.path = path
        self.columns = columns
        self._file = None
        self._writer: csv.DictWriter | None = None
        if path.exists() and path.stat().st_size > 0:
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
            if header:
                self.columns = tuple(header)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._writer is None:
            if self.columns is None:
                self.columns = tuple(rows[0])
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = self.path.open("a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=list(self.columns), extrasaction="ignore")
            if new:
                self._writer.writeheader()
        for row in rows:
            self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        assert self._file is not None
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._writer = None, None


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if value == value else ""
    return value


def truncate_csv(path: Path, keep: Any) -> None:
    """Rewrite ``path`` keeping only rows where ``keep(row)`` is true (atomically)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames
        rows = [r for r in reader if keep(r)]
    if not columns:
        return
    write_csv_atomic(path, columns, rows)


def write_csv_atomic(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Write a whole CSV to a temporary file and rename it over ``path``: never half-written."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, no arbitrary code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsError(f"{path}: corrupted or unreadable checkpoint ({first[:160]})") from None
