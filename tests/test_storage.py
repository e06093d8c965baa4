"""AppendOnlyArrays: raw append-only files plus an in-memory mirror, restored to a checkpointed length."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metarl_protocol.storage import AppendOnlyArrays

FIELDS = {"obs": ((3, 2), np.float32), "action": ((), np.int64), "done": ((), np.bool_)}


def rows(start: int, n: int) -> dict[str, np.ndarray]:
    """``n`` distinct rows numbered ``start..start+n-1`` (each value encodes its row number)."""
    idx = np.arange(start, start + n)
    return {
        "obs": (idx[:, None, None] * 10 + np.arange(6).reshape(3, 2)).astype(np.float32),
        "action": idx.astype(np.int64) * 7,
        "done": idx % 3 == 0,
    }


def assert_rows(store: AppendOnlyArrays, start: int, n: int) -> None:
    want = rows(start, n)
    assert len(store) == n
    for f in FIELDS:
        np.testing.assert_array_equal(store.view(f), want[f])
        assert store.view(f).dtype == np.dtype(FIELDS[f][1])


@pytest.mark.parametrize("directory", ["files", None])
def test_append_get_round_trip(tmp_path, directory):
    store = AppendOnlyArrays(None if directory is None else tmp_path / directory, FIELDS)
    assert len(store) == 0
    # many small appends force several regrowths of the mirror
    for start in range(0, 100, 5):
        store.append(**rows(start, 5))
    store.append(**rows(100, 0))  # N == 0 is a no-op
    assert_rows(store, 0, 100)
    assert store.get("obs", 37).shape == (3, 2)
    np.testing.assert_array_equal(store.get("obs", 37), rows(37, 1)["obs"][0])
    np.testing.assert_array_equal(store.get("action", np.array([99, 0, 42])), [99 * 7, 0, 42 * 7])
    np.testing.assert_array_equal(store.get("done", slice(3, 7)), [True, False, False, True])
    with pytest.raises(IndexError):  # spare capacity is never reachable
        store.get("action", 100)
    with pytest.raises(ValueError):  # the mirror is read-only from outside
        store.view("action")[0] = 1
    assert store.state() == 100
    if directory is not None:
        # the files hold exactly the rows, in C order, nothing else
        raw = np.fromfile(tmp_path / directory / "obs.bin", dtype=np.float32).reshape(-1, 3, 2)
        np.testing.assert_array_equal(raw, rows(0, 100)["obs"])
        assert (tmp_path / directory / "action.bin").stat().st_size == 100 * 8
        assert (tmp_path / directory / "done.bin").stat().st_size == 100


def test_restore_keeps_exactly_the_checkpointed_rows_and_truncates_the_files(tmp_path):
    d = tmp_path / "buf"
    store = AppendOnlyArrays(d, FIELDS)
    store.append(**rows(0, 30))
    n = store.state()  # the checkpoint
    store.append(**rows(30, 12))  # written after the checkpoint by the run that is then killed
    store.append(**rows(42, 5))
    store.close()
    with (d / "obs.bin").open("ab") as f:  # and a half-written last row
        f.write(b"\x01\x02\x03")

    resumed = AppendOnlyArrays(d, FIELDS)
    resumed.restore(n)
    assert_rows(resumed, 0, 30)
    for f, (shape, dtype) in FIELDS.items():
        assert (d / f"{f}.bin").stat().st_size == n * np.dtype(dtype).itemsize * int(np.prod(shape))
        assert resumed.row_nbytes(f) == np.dtype(dtype).itemsize * int(np.prod(shape))
    # the resumed run appends after the restored rows, on disk too
    resumed.append(**rows(30, 4))
    assert resumed.state() == 34
    again = AppendOnlyArrays(d, FIELDS)
    again.restore(34)
    assert_rows(again, 0, 34)


def test_restore_with_too_few_rows_raises_and_touches_nothing(tmp_path):
    d = tmp_path / "buf"
    store = AppendOnlyArrays(d, FIELDS)
    store.append(**rows(0, 10))
    store.state()  # the checkpoint: 10 rows
    store.append(**rows(10, 2))  # rows after it, which a successful restore(10) would cut
    store.close()
    sizes = {f: (d / f"{f}.bin").stat().st_size for f in FIELDS}
    assert sizes["obs"] == 12 * 24
    with (d / "action.bin").open("r+b") as f:  # one file lost rows
        f.truncate(6 * 8)
    resumed = AppendOnlyArrays(d, FIELDS)
    with pytest.raises(ValueError, match=r"action\.bin holds 6 rows .* expects 10"):
        resumed.restore(10)
    assert len(resumed) == 0
    # checked before truncating anything: the other files are intact
    assert (d / "obs.bin").stat().st_size == sizes["obs"]
    assert (d / "done.bin").stat().st_size == sizes["done"]
    with pytest.raises(ValueError, match="only 0 are held in memory"):
        AppendOnlyArrays(None, FIELDS).restore(1)
    with pytest.raises(ValueError, match=">= 0"):
        resumed.restore(-1)


def test_in_memory_mode_writes_no_files_and_restore_cuts_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = AppendOnlyArrays(None, FIELDS)
    store.append(**rows(0, 20))
    kept = store.view("action")
    assert store.state() == 20
    store.restore(8)
    assert_rows(store, 0, 8)
    store.append(**rows(8, 3))
    assert_rows(store, 0, 11)
    np.testing.assert_array_equal(kept, rows(0, 20)["action"])  # earlier views stay valid
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no files"):
        store.path("obs")


def test_opening_an_existing_directory_loads_nothing_and_the_first_append_overwrites(tmp_path):
    d = tmp_path / "buf"
    old = AppendOnlyArrays(d, FIELDS)
    old.append(**rows(0, 25))
    old.state()
    old.close()

    fresh = AppendOnlyArrays(d, FIELDS)  # a new run in an old directory, no restore
    assert len(fresh) == 0
    assert (d / "action.bin").stat().st_size == 25 * 8  # constructing alone does not write
    fresh.append(**rows(500, 2))
    assert_rows(fresh, 500, 2)
    assert fresh.state() == 2
    assert (d / "action.bin").stat().st_size == 2 * 8  # the old rows are gone, not mixed in
    np.testing.assert_array_equal(np.fromfile(d / "action.bin", dtype=np.int64), rows(500, 2)["action"])

    # state() alone (a checkpoint before any append) also leaves the files at its count
    AppendOnlyArrays(d, FIELDS).state()
    assert (d / "obs.bin").stat().st_size == 0

    # close() then append() keeps the rows (files are reopened, not emptied)
    store = AppendOnlyArrays(d, FIELDS)
    store.append(**rows(0, 3))
    store.close()
    store.append(**rows(3, 2))
    assert store.state() == 5
    assert (d / "done.bin").stat().st_size == 5


@pytest.mark.parametrize(
    ("field", "bad", "match"),
    [
        ("obs", np.zeros((4, 3, 2), np.float64), "'obs' has dtype float64, expected float32"),
        ("obs", np.zeros((4, 2, 3), np.float32), r"'obs' has shape \(4, 2, 3\), expected \(N, 3, 2\)"),
        ("obs", np.zeros((3, 2), np.float32), r"'obs' has shape \(3, 2\)"),  # the N dimension is missing
        ("action", np.zeros((4, 1), np.int64), r"'action' has shape \(4, 1\), expected \(N,\)"),
        ("action", np.zeros(4, np.int32), "'action' has dtype int32, expected int64"),
        ("done", np.zeros(5, np.bool_), "'done' has 5 rows but field 'obs' has 4"),
    ],
)
def test_append_rejects_a_wrong_shape_or_dtype_and_writes_nothing(tmp_path, field, bad, match):
    store = AppendOnlyArrays(tmp_path / "buf", FIELDS)
    store.append(**rows(0, 2))
    good = rows(2, 4)
    with pytest.raises(ValueError, match=match):
        store.append(**{**good, field: bad})
    assert_rows(store, 0, 2)
    assert store.state() == 2
    assert (tmp_path / "buf" / "obs.bin").stat().st_size == 2 * 24


def test_append_rejects_missing_or_unknown_fields():
    store = AppendOnlyArrays(None, FIELDS)
    good = rows(0, 2)
    with pytest.raises(ValueError, match="missing field.*done"):
        store.append(obs=good["obs"], action=good["action"])
    with pytest.raises(ValueError, match="unknown field.*reward"):
        store.append(**good, reward=np.zeros(2, np.float32))
    assert len(store) == 0


def test_a_directory_whose_header_disagrees_is_refused(tmp_path):
    d = tmp_path / "buf"
    store = AppendOnlyArrays(d, FIELDS)
    store.append(**rows(0, 3))
    store.state()
    header = json.loads((d / "header.json").read_text())
    assert header["fields"]["obs"] == {"shape": [3, 2], "dtype": "<f4"}

    with pytest.raises(ValueError, match=r"header disagrees.*'obs' is shape \(3, 2\) dtype <f4 .*dtype <f8"):
        AppendOnlyArrays(d, {**FIELDS, "obs": ((3, 2), np.float64)})
    with pytest.raises(ValueError, match=r"'obs' is shape \(3, 2\) .* asked for shape \(6,\)"):
        AppendOnlyArrays(d, {**FIELDS, "obs": ((6,), np.float32)})
    with pytest.raises(ValueError, match="'reward' is asked for but not in the directory"):
        AppendOnlyArrays(d, {**FIELDS, "reward": ((), np.float32)})
    with pytest.raises(ValueError, match="directory has field 'done', not asked for"):
        AppendOnlyArrays(d, {f: s for f, s in FIELDS.items() if f != "done"})
    # refused before touching anything; the same fields in another order are fine
    assert (d / "obs.bin").stat().st_size == 3 * 24
    same = AppendOnlyArrays(d, dict(reversed(FIELDS.items())))
    same.restore(3)
    assert_rows(same, 0, 3)

    (d / "header.json").write_text("not json")
    with pytest.raises(ValueError, match="unreadable AppendOnlyArrays header"):
        AppendOnlyArrays(d, FIELDS)


@pytest.mark.parametrize(
    "fields",
    [{}, {"not-an-identifier": ((), np.float32)}, {"x": ((0,), np.float32)}, {"x": ((), object)}],
)
def test_malformed_fields_are_refused(fields):
    with pytest.raises(ValueError):
        AppendOnlyArrays(None, fields)
