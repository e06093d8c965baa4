"""The results layout and CSV schema (docs/protocol.md), atomic checkpoints, and the rows kept on resume.

``<out>/<suite>/<algo>/seed<N>/`` holds config.json, progress.csv, eval.csv, checkpoint.pt and, once
the run finished, a ``done`` marker. CSV rows are flushed as soon as they are written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import ResultsError

EVAL_COLUMNS = ("iteration", "mark", "env_steps", "split", "task_id", "task", "episode", "return", "success")
PROGRESS_PREFIX = ("iteration", "env_steps", "wall_time_s")
DONE_MARKER = "done"
CHECKPOINT = "checkpoint.pt"


def run_dir(out: str | Path, suite: str, algo: str, seed: int) -> Path:
    """A run's directory ``<out>/<suite>/<algo>/seed<N>`` (the path only; nothing is checked or created)."""
    return Path(out) / suite / algo / f"seed{seed}"


class CsvLog:
    """Append-only CSV; each row is flushed to disk when written.

    Args:
        path: the CSV file. If it exists and is not empty, its header gives the columns; the rows
            already there are kept and new rows are appended after them.
        columns: a fixed schema (eval.csv's ``EVAL_COLUMNS``), or ``None`` (progress.csv) for columns
            that grow with the rows.

    With ``columns=None`` every key of every row is kept. The first row's keys, in order, make
    the first header. When a later row brings keys not seen before, they are added as new columns
    at the end: the whole file is rewritten atomically (:func:`write_csv_atomic`) with the
    extended header, earlier rows get empty fields in the new columns, and appending continues.
    A key missing from a row is written as an empty field.

    With a fixed schema the columns never change. A row with a key outside them raises ValueError
    naming the keys, and nothing of that ``write`` call is written.

    Raises:
        ResultsError: from the constructor, if ``columns`` is given and ``path`` already has a
            different header; from :meth:`write`, if a row in the file being rewritten has more
            fields than its header.
    """

    def __init__(self, path: Path, columns: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.fixed = columns is not None
        self.columns: tuple[str, ...] | None = tuple(columns) if columns is not None else None
        header = None
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), None)
        self._has_header = bool(header)  # False: the file is missing, empty or has no header row
        if header:
            if self.fixed and tuple(header) != self.columns:
                expected = ",".join(self.columns or ())
                raise ResultsError(f"{self.path}: header {','.join(header)} is not the expected {expected}")
            self.columns = tuple(header)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` (dicts from column name to value; floats are written exactly, NaN as empty).

        Raises:
            ValueError: the schema is fixed and a row has keys outside it (they are named).
        """
        if not rows:
            return
        known = set(self.columns or ())
        new: dict[str, None] = {}  # ordered set: the unseen keys in order of appearance
        for row in rows:
            for key in row:
                if key not in known:
                    new[key] = None
        if new and self.fixed:
            raise ValueError(
                f"{self.path}: unknown column(s) {', '.join(map(str, new))}; "
                f"this log's columns are fixed: {', '.join(self.columns or ())}"
            )
        if new:
            self._add_columns(tuple(new))
        assert self.columns is not None
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(self.columns))
        if not self._has_header:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        # one write call for the whole batch, appended at the end of the file: a kill cuts at most the
        # last line, which readers and resume drop (see ``complete_lines``)
        data = text.getvalue().encode()
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | (0 if self._has_header else os.O_TRUNC)
        )
        try:
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        self._has_header = True

    def sync(self) -> None:
        """Force the rows written so far onto the disk (``fsync``): called before each checkpoint, so a
        machine crash cannot keep a checkpoint whose rows were lost (resume would refuse it for good)."""
        if not self.path.exists():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing stays open between writes (kept for callers that close their logs)."""

    def _add_columns(self, new: tuple[str, ...]) -> None:
        """Extend the header with ``new``; rows already on disk are rewritten, padded with empty fields."""
        old_columns = self.columns or ()
        self.columns = old_columns + new
        if not self._has_header:
            return
        reader = csv.DictReader(io.StringIO(complete_lines(self.path.read_bytes()).decode()))
        old = list(reader)
        for i, row in enumerate(old):
            if None in row:  # csv.DictReader's key for fields beyond the header
                raise ResultsError(f"{self.path}: row {i + 2} has more fields than the header")
        write_csv_atomic(self.path, self.columns, old)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if value == value else ""
    return value


def complete_lines(raw: bytes) -> bytes:
    """``raw`` without a last line cut off mid-write (no final newline), wherever it was cut.

    A kill can cut the last row anywhere, even inside a quoted field; everything up to the last
    newline was written whole, because rows are appended in one write call per batch.
    """
    if not raw or raw.endswith(b"\n"):
        return raw
    end = raw.rfind(b"\n")
    return raw[: end + 1] if end >= 0 else b""


def kept_rows(
    path: Path, keep: Any, columns: Sequence[str] | None = None
) -> tuple[list[str], list[dict[str, str]]] | None:
    """(header, the whole rows of ``path`` where ``keep(row)`` is true); None if the file is missing or
    has no header. Reads only: resume checks both CSVs with this before it changes anything.

    Raises:
        ResultsError: ``path`` is a directory, the file is not UTF-8 CSV text, its header differs from
            ``columns`` (when given), a row has more fields than the header, or ``keep`` fails on a row
            (e.g. a non-integer ``iteration``); the message names the file and the row.
    """
    if not path.exists():
        return None
    if path.is_dir():
        raise ResultsError(f"{path}: a directory, not the run's CSV file")
    try:
        reader = csv.DictReader(io.StringIO(complete_lines(path.read_bytes()).decode(), newline=""))
        header = reader.fieldnames
        if not header:
            return None
        if columns is not None and tuple(header) != tuple(columns):
            raise ResultsError(f"{path}: header {','.join(header)} is not the expected {','.join(columns)}")
        rows = []
        for i, row in enumerate(reader):
            if None in row:  # csv.DictReader's key for fields beyond the header
                raise ResultsError(f"{path}: row {i + 2} has more fields than the header")
            try:
                if keep(row):
                    rows.append(row)
            except (ValueError, KeyError, TypeError) as exc:
                raise ResultsError(
                    f"{path}: row {i + 2} is malformed ({type(exc).__name__}: {exc})"
                ) from None
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ResultsError(f"{path}: not a readable CSV file ({exc})") from None
    return list(header), rows


def write_csv_atomic(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Write a whole CSV to a temporary file and rename it over ``path``: never half-written."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically (a ``.tmp`` sibling, then ``os.replace``);
    values JSON cannot encode are written as their ``str``. File-system errors (``OSError``) propagate."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


# What ``torch.load(weights_only=True)`` (torch 2.13) loads, by exact type: subclasses are pickled by
# their class name and refused (numpy.float64 is a float, numpy.str_ a str, a namedtuple a tuple).
_WEIGHTS_ONLY_SCALARS = (
    type(None), bool, int, float, complex, str, bytes, bytearray,
    torch.Size, torch.dtype, torch.device, torch.layout, torch.qscheme,
)  # fmt: skip
_WEIGHTS_ONLY_TENSORS = (torch.Tensor, torch.nn.Parameter)
WEIGHTS_ONLY_ACCEPTS = (
    "torch tensors and nn.Parameters, None, bool, int, float, complex, str, bytes, bytearray, "
    "torch.Size, torch.dtype, torch.device, and list, tuple, dict, OrderedDict, Counter, set of those"
)


def check_weights_only(state: Any, root: str = "") -> None:
    """Raise ``ValueError`` if ``torch.load(weights_only=True)`` would refuse something in ``state``.

    A recursive walk over containers (dict keys included) and over the attributes that are pickled
    along with tensors, parameters and OrderedDicts (a module's state_dict carries ``_metadata``).
    It accepts exactly what torch 2.13's weights-only unpickler loads by default (see
    ``_WEIGHTS_ONLY_SCALARS`` and the containers below; checked by experiment in tests/test_results.py).
    The message is ``"<key path> is a <type>"``, e.g. ``"learner.buffer.rng is a numpy.ndarray"``:
    dict keys are joined with ``.``, sequence indices written ``[i]``.
    """
    seen: set[int] = set()  # containers already checked: shared references and cycles are fine

    def join(path: str, key: Any) -> str:
        name = key if type(key) is str else repr(key)
        return f"{path}.{name}" if path else name

    def fail(path: str, obj: Any) -> None:
        cls = type(obj)
        name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        raise ValueError(f"{path or 'the state itself'} is a {name}")

    def walk(obj: Any, path: str) -> None:
        cls = type(obj)
        if cls in _WEIGHTS_ONLY_SCALARS:
            return
        if id(obj) in seen:
            return
        if cls in _WEIGHTS_ONLY_TENSORS:
            seen.add(id(obj))
            for attr, value in vars(obj).items():  # Python attributes set on a tensor are pickled with it
                walk(value, join(path, attr))
        elif cls in (dict, OrderedDict, Counter):
            seen.add(id(obj))
            for key, value in obj.items():
                walk(key, f"{join(path, key)} (the key itself)")
                walk(value, join(path, key))
            if cls is OrderedDict:  # its attributes are pickled too (Counter's are not)
                for attr, value in vars(obj).items():
                    walk(value, join(path, attr))
        elif cls in (list, tuple):
            seen.add(id(obj))
            for i, value in enumerate(obj):
                walk(value, f"{path}[{i}]")
        elif cls is set:
            seen.add(id(obj))
            for value in obj:
                walk(value, f"{path}{{element}}")
        else:
            fail(path, obj)

    walk(state, root)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint.

    ``state`` is checked first (:func:`check_weights_only`), so what :func:`load_checkpoint` would
    refuse at resume fails here instead, at the first checkpoint, and nothing is written.

    Raises:
        ResultsError: ``state`` holds something ``torch.load(weights_only=True)`` refuses; the message
            names its key path (e.g. ``learner.buffer.rng``) and type, and what is accepted.
    """
    try:
        check_weights_only(state)
    except ValueError as exc:
        raise ResultsError(
            f"{path}: cannot checkpoint: {exc}, which torch.load(weights_only=True) refuses, so the run "
            f"could never resume from it. A checkpoint may hold only {WEIGHTS_ONLY_ACCEPTS} "
            "(numpy arrays: torch.as_tensor(a); numpy scalars: .item(); other objects: their state as "
            "plain values, e.g. json.dumps)"
        ) from None
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load_learner_state(learner: Any, state: Any, refusal: str) -> None:
    """``learner.load_state_dict(state)``, where a state of another method or shape is one line.

    What such a state raises (torch: missing or unexpected keys, size mismatches; a learner: a missing
    key, a storage file shorter than the state says) becomes ``ResultsError("<refusal> (<error>)")``;
    anything else (a bug, running out of memory) keeps its traceback.
    """
    try:
        learner.load_state_dict(state)
    except torch.OutOfMemoryError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        text = " ".join(str(exc).split())
        text = text if len(text) <= 200 else text[:200] + " ..."
        raise ResultsError(f"{refusal} ({type(exc).__name__}: {text})") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, no arbitrary code.

    Raises ``ResultsError`` (``<path>: corrupted or unreadable checkpoint (<why>)``, one line) for any
    failure to read or unpickle the file: a missing or unreadable file, a cut or foreign zip archive,
    bytes that are no pickle (the weights-only unpickler raises ``KeyError``, ``IndexError`` and the
    like on them), what the weights-only unpickler refuses. Running out of memory keeps its traceback.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a corrupted file makes the unpickler raise
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's message has terminal escapes
        text = " ".join(text.split("WeightsUnpickler error: ", 1)[-1].split())  # the refusal itself
        known = (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)
        if not text or not isinstance(exc, known):
            text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__  # e.g. KeyError: 101
        if len(text) > 160:  # whole sentences that fit, else a cut marked as such
            kept = ""
            for sentence in text.split(". "):
                more = f"{kept}. {sentence}" if kept else sentence
                if len(more) > 160:
                    break
                kept = more
            text = kept.rstrip(".") + "." if kept else text[:160] + " ..."
        raise ResultsError(f"{path}: corrupted or unreadable checkpoint ({text})") from None
