"""Large, append-only learner state kept as raw files, so that a checkpoint holds only its length.

A replay buffer or a VAE trajectory buffer can grow to gigabytes; writing it into every
``checkpoint.pt`` would make checkpoints slow and huge. :class:`AppendOnlyArrays` instead appends
its rows to one raw binary file per field as they arrive, and a checkpoint stores the single integer
returned by :meth:`AppendOnlyArrays.state`. On resume, :meth:`AppendOnlyArrays.restore` cuts every
file back to that many rows (rows appended after the checkpoint, by the run that was killed, are
dropped) and reloads them.

Directory layout::

    <directory>/header.json     fields, row shapes and dtypes; written once, checked on every open
    <directory>/<field>.bin     rows of <field>, C order, no padding: row i at byte i * row_nbytes

Usage in a learner::

    self.buffer = AppendOnlyArrays(run_dir / "replay", {"obs": ((17,), np.float32), "done": ((), np.bool_)})
    self.buffer.append(obs=obs_batch, done=done_batch)   # obs_batch: (N, 17) float32, done_batch: (N,) bool
    state_dict()       -> {"replay_rows": self.buffer.state(), ...}
    load_state_dict(s) -> self.buffer.restore(s["replay_rows"])
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

__all__ = ["AppendOnlyArrays"]

HEADER = "header.json"
_FORMAT = "metarl_protocol.AppendOnlyArrays"
_VERSION = 1
_MIN_CAPACITY = 16


class AppendOnlyArrays:
    """Named arrays that only grow, mirrored in memory and (optionally) in one raw file per field.

    Args:
        directory: where the files live (created if missing), or ``None`` to keep everything in
            memory only (no files; :meth:`state` and :meth:`restore` then act on memory alone).
        fields: ``{name: (row_shape, dtype)}``. ``name`` must be a Python identifier (it is an
            :meth:`append` keyword and a file name); ``row_shape`` is the shape of one row (``()``
            for a scalar per row) and must hold at least one element; ``dtype`` is anything
            :func:`numpy.dtype` accepts, except object dtypes. Field ``f`` is stored as an array of
            shape ``(len(self), *row_shape)``.

    Raises:
        ValueError: ``fields`` is empty or malformed, or ``directory`` already holds a header that
            describes other fields, shapes or dtypes (the message says which).

    **Opening an existing directory loads nothing.** A new instance always has length 0, whatever
    the files hold. Old rows come back only through :meth:`restore` (the resume path, with the row
    count from the checkpoint). Without a :meth:`restore`, the first :meth:`append` or
    :meth:`state` empties the files, so a fresh run started in an old directory overwrites the old
    rows and never mixes them with its own. The header is checked at construction time, so a
    directory written with other fields or dtypes is refused before anything is touched.

    Invariant: once :meth:`state` has returned ``n``, each file holds exactly ``n`` rows and is
    synced to disk. Rows already in memory never change: an array returned by :meth:`view` or
    :meth:`get` stays valid after later appends (it just doesn't include the new rows).

    Not thread-safe; one writer per directory.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        fields: Mapping[str, tuple[tuple[int, ...], DTypeLike]],
    ) -> None:
        if not fields:
            raise ValueError("AppendOnlyArrays needs at least one field")
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, np.dtype] = {}
        for name, spec in fields.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"field name {name!r} is not a Python identifier")
            try:
                shape, dtype = spec
                shape = tuple(int(d) for d in shape)
                dtype = np.dtype(dtype)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"field {name!r}: expected (row_shape, dtype), got {spec!r} ({exc})"
                ) from None
            if dtype.hasobject:
                raise ValueError(
                    f"field {name!r}: dtype {dtype} holds Python objects, which have no raw form"
                )
            if any(d < 0 for d in shape) or math.prod(shape) == 0:
                raise ValueError(f"field {name!r}: row shape {shape} must hold at least one element")
            self._shapes[name], self._dtypes[name] = shape, dtype
        self._row_nbytes = {f: self._dtypes[f].itemsize * math.prod(self._shapes[f]) for f in self._shapes}

        self._len = 0
        self._data = {f: np.empty((0, *self._shapes[f]), self._dtypes[f]) for f in self._shapes}
        self._files: dict[str, Any] = {}  # field -> binary file opened for appending
        self._claimed = False  # True once the files hold exactly our rows (emptied or restored)
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._check_or_write_header()

    # -- description ---------------------------------------------------------------------------------
    @property
    def fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{name: (row_shape, dtype)}`` as normalised at construction."""
        return {f: (self._shapes[f], self._dtypes[f]) for f in self._shapes}

    def path(self, field: str) -> Path:
        """The file of ``field`` (``<directory>/<field>.bin``). Raises ValueError in memory mode."""
        if self.directory is None:
            raise ValueError("in-memory AppendOnlyArrays has no files")
        self._check_field(field)
        return self.directory / f"{field}.bin"

    def row_nbytes(self, field: str) -> int:
        """Bytes one row of ``field`` takes in its file (itemsize x elements per row)."""
        self._check_field(field)
        return self._row_nbytes[field]

    def __len__(self) -> int:
        """Number of rows (the same for every field)."""
        return self._len

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else str(self.directory)
        spec = ", ".join(f"{f}: {self._shapes[f]} {self._dtypes[f]}" for f in self._shapes)
        return f"AppendOnlyArrays({where}, {self._len} rows, {{{spec}}})"

    # -- writing -------------------------------------------------------------------------------------
    def append(self, /, **rows: ArrayLike) -> None:
        """Append ``N`` rows: one array of shape ``(N, *row_shape)`` and the field's exact dtype per field.

        Every field must be given, all with the same ``N`` (``N == 0`` is a no-op). Everything is
        checked before anything is written. The rows go to memory and (buffered) to the files;
        :meth:`state` makes them durable.

        Raises:
            ValueError: a field is missing or unknown, or an array has the wrong dtype, the wrong row
                shape or a different ``N`` from the others; the message names the field.
        """
        missing = [f for f in self._shapes if f not in rows]
        unknown = [f for f in rows if f not in self._shapes]
        if missing or unknown:
            parts = ([f"missing field(s) {', '.join(missing)}"] if missing else []) + (
                [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
            )
            raise ValueError(f"append: {'; '.join(parts)} (fields are {', '.join(self._shapes)})")
        arrays: dict[str, np.ndarray] = {}
        n: int | None = None
        first = ""
        for f in self._shapes:
            a = np.asarray(rows[f])
            shape, dtype = self._shapes[f], self._dtypes[f]
            if a.dtype != dtype:
                raise ValueError(f"append: field {f!r} has dtype {a.dtype}, expected {dtype}")
            if a.ndim != 1 + len(shape) or a.shape[1:] != shape:
                raise ValueError(
                    f"append: field {f!r} has shape {a.shape}, expected (N, {', '.join(map(str, shape))})"
                    if shape
                    else f"append: field {f!r} has shape {a.shape}, expected (N,)"
                )
            if n is None:
                n, first = a.shape[0], f
            elif a.shape[0] != n:
                raise ValueError(f"append: field {f!r} has {a.shape[0]} rows but field {first!r} has {n}")
            arrays[f] = np.ascontiguousarray(a)
        assert n is not None
        if n == 0:
            return
        self._claim()
        for f, a in arrays.items():
            if self.directory is not None:
                self._files[f].write(memoryview(a).cast("B"))
            self._reserve(f, self._len + n)
            self._data[f][self._len : self._len + n] = a
        self._len += n

    def state(self) -> int:
        """Flush and ``os.fsync`` every file; return the row count, the whole checkpoint state.

        Afterwards each file holds exactly ``len(self)`` rows on disk (see the class notes: without a
        prior :meth:`restore`, this empties files left by an earlier run).

        Raises:
            OSError: a file could not be written or synced, or its size is not ``len(self)`` rows
                (another writer touched it).
        """
        if self.directory is None:
            return self._len
        self._claim()
        for f, fh in self._files.items():
            fh.flush()
            os.fsync(fh.fileno())
            size = os.fstat(fh.fileno()).st_size
            if size != self._len * self._row_nbytes[f]:
                raise OSError(
                    f"{self.path(f)}: holds {size} bytes, expected {self._len} rows x "
                    f"{self._row_nbytes[f]} bytes; was it written by another process?"
                )
        return self._len

    def restore(self, n: int) -> None:
        """Resume from a checkpoint that recorded ``n = state()``: keep exactly the first ``n`` rows.

        Every file is truncated to ``n`` rows (rows written after the checkpoint, including a
        half-written last row, are discarded) and synced, and memory is reloaded from the files. In
        memory mode the first ``n`` rows held in memory are kept. All files are checked before any
        is truncated.

        Raises:
            ValueError: ``n`` is negative or not an int, or a file (or, in memory mode, memory) holds
                fewer than ``n`` rows; the message names the file and both counts.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise ValueError(f"restore: row count must be an int, got {type(n).__name__}")
        n = int(n)
        if n < 0:
            raise ValueError(f"restore: row count must be >= 0, got {n}")
        if self.directory is None:
            if n > self._len:
                raise ValueError(f"restore: {n} rows requested but only {self._len} are held in memory")
            self._len = n
            self._data = {f: a[:n].copy() for f, a in self._data.items()}
            return
        for fh in self._files.values():
            fh.close()
        self._files = {}
        for f in self._shapes:
            p = self.path(f)
            size = p.stat().st_size if p.exists() else 0
            held = size // self._row_nbytes[f]
            if held < n:
                raise ValueError(
                    f"restore: {p} holds {held} rows ({size} bytes of {self._row_nbytes[f]}-byte rows) "
                    f"but the checkpoint expects {n}"
                )
        data = {}
        for f in self._shapes:
            p, nbytes = self.path(f), n * self._row_nbytes[f]
            with p.open("r+b" if p.exists() else "w+b") as fh:
                fh.truncate(nbytes)
                fh.flush()
                os.fsync(fh.fileno())
            loaded = np.fromfile(p, dtype=self._dtypes[f], count=n * math.prod(self._shapes[f]))
            data[f] = loaded.reshape(n, *self._shapes[f])
        self._data, self._len = data, n
        self._open_for_append()
        self._claimed = True

    # -- reading -------------------------------------------------------------------------------------
    def view(self, field: str) -> np.ndarray:
        """Read-only view of the ``len(self)`` rows of ``field``, shape ``(len(self), *row_shape)``.

        Raises:
            KeyError: ``field`` is not a field.
        """
        self._check_field(field)
        v = self._data[field][: self._len]
        v.flags.writeable = False
        return v

    def get(self, field: str, index: Any) -> np.ndarray:
        """``view(field)[index]``: any numpy index (int, slice, integer or boolean array) into the rows.

        Fancy indices return a copy, basic ones a read-only view. Indices only reach the
        ``len(self)`` rows held, never spare capacity.

        Raises:
            KeyError: ``field`` is not a field.
            IndexError: ``index`` is out of range.
        """
        return self.view(field)[index]

    # -- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush and close the files (without fsync; call :meth:`state` for durability). Idempotent."""
        for fh in self._files.values():
            fh.close()
        self._files = {}

    def __enter__(self) -> AppendOnlyArrays:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------------
    def _check_field(self, field: str) -> None:
        if field not in self._shapes:
            raise KeyError(f"unknown field {field!r} (fields are {', '.join(self._shapes)})")

    def _header(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "fields": {
                f: {"shape": list(self._shapes[f]), "dtype": self._dtypes[f].str} for f in self._shapes
            },
        }

    def _check_or_write_header(self) -> None:
        assert self.directory is not None
        path, want = self.directory / HEADER, self._header()
        if not path.exists():
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(want, indent=2) + "\n")
            os.replace(tmp, path)
            return
        try:
            have = json.loads(path.read_text())
            if not isinstance(have, dict) or have.get("format") != _FORMAT:
                raise ValueError("not an AppendOnlyArrays header")
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: unreadable AppendOnlyArrays header ({exc})") from None
        if have.get("version") != _VERSION:
            raise ValueError(f"{path}: header version {have.get('version')!r}, this code reads {_VERSION}")
        have_fields, want_fields = have.get("fields", {}), want["fields"]
        if not isinstance(have_fields, dict) or not all(isinstance(v, dict) for v in have_fields.values()):
            raise ValueError(
                f"{path}: unreadable AppendOnlyArrays header ('fields' is not an object of objects)"
            )
        problems = []
        for f in sorted(set(have_fields) | set(want_fields)):
            if f not in want_fields:
                problems.append(f"the directory has field {f!r}, not asked for")
            elif f not in have_fields:
                problems.append(f"field {f!r} is asked for but not in the directory")
            elif have_fields[f] != want_fields[f]:
                h, w = have_fields[f], want_fields[f]
                have_shape, want_shape = tuple(h.get("shape", ())), tuple(w["shape"])
                problems.append(
                    f"field {f!r} is shape {have_shape} dtype {h.get('dtype')} in the directory, "
                    f"asked for shape {want_shape} dtype {w['dtype']}"
                )
        if problems:
            raise ValueError(f"{path}: header disagrees with the fields requested: {'; '.join(problems)}")

    def _open_for_append(self) -> None:
        assert self.directory is not None
        self._files = {f: self.path(f).open("ab") for f in self._shapes}

    def _claim(self) -> None:
        """Before writing: empty the files once, unless :meth:`restore` set them to our rows; open them."""
        if self.directory is None:
            return
        if not self._claimed:
            for f in self._shapes:
                with self.path(f).open("wb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(self.directory)
            self._claimed = True
        if not self._files:
            self._open_for_append()

    def _reserve(self, field: str, rows: int) -> None:
        """Grow the mirror of ``field`` to hold ``rows`` rows (capacity at least doubles: amortised O(1))."""
        a = self._data[field]
        if rows <= a.shape[0]:
            return
        grown = np.empty((max(rows, 2 * a.shape[0], _MIN_CAPACITY), *a.shape[1:]), a.dtype)
        grown[: self._len] = a[: self._len]
        self._data[field] = grown


def _fsync_dir(directory: Path) -> None:
    """Make file creations in ``directory`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
