"""benchmark.results: CSV logs that keep every column, and checkpoints that are checked at save time."""

from __future__ import annotations

import collections
import csv
import io
import json
import warnings

import numpy as np
import pytest
import torch

from benchmark.errors import ResultsError
from benchmark.results import (
    CHECKPOINT,
    EVAL_COLUMNS,
    CsvLog,
    check_weights_only,
    load_checkpoint,
    save_checkpoint,
)


def read(path):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


# -- CsvLog ----------------------------------------------------------------------------------------


def test_a_metric_first_appearing_later_gets_a_column_and_earlier_rows_stay_empty(tmp_path):
    path = tmp_path / "progress.csv"
    log = CsvLog(path)
    log.write([{"iteration": 1, "env_steps": 10, "loss": 0.5}])
    log.write([{"iteration": 2, "env_steps": 20, "loss": 0.25}])
    # rows are on disk as soon as written, before close
    assert read(path) == (
        ["iteration", "env_steps", "loss"],
        [
            {"iteration": "1", "env_steps": "10", "loss": "0.5"},
            {"iteration": "2", "env_steps": "20", "loss": "0.25"},
        ],
    )
    log.write([{"iteration": 3, "env_steps": 30, "kl": 0.125, "loss": 0.75}])
    header, rows = read(path)
    assert header == ["iteration", "env_steps", "loss", "kl"]  # new columns go at the end
    assert [r["kl"] for r in rows] == ["", "", "0.125"]
    assert rows[2] == {"iteration": "3", "env_steps": "30", "loss": "0.75", "kl": "0.125"}
    # then plain appending continues; a metric missing from a row is an empty field; within one
    # write, keys new in its second row are kept too
    log.write(
        [{"iteration": 4, "env_steps": 40, "loss": 1.0}, {"iteration": 5, "env_steps": 50, "entropy": 2.0}]
    )
    header, rows = read(path)
    assert header == ["iteration", "env_steps", "loss", "kl", "entropy"]
    assert [r["iteration"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[3] == {"iteration": "4", "env_steps": "40", "loss": "1.0", "kl": "", "entropy": ""}
    assert rows[4] == {"iteration": "5", "env_steps": "50", "loss": "", "kl": "", "entropy": "2.0"}
    log.close()
    assert not list(tmp_path.glob("*.tmp"))


def test_a_reopened_log_reads_its_header_and_keeps_all_columns(tmp_path):
    path = tmp_path / "progress.csv"
    log = CsvLog(path)
    log.write([{"iteration": 1, "loss": 0.5}, {"iteration": 2, "loss": 0.25, "kl": 1.5}])
    log.close()

    reopened = CsvLog(path)  # e.g. after --resume
    assert reopened.columns == ("iteration", "loss", "kl")
    reopened.write([{"iteration": 3, "kl": 2.5}])  # only known keys: appended, no rewrite needed
    reopened.write([{"iteration": 4, "loss": 0.125, "grad_norm": 3.0}])
    header, rows = read(path)
    assert header == ["iteration", "loss", "kl", "grad_norm"]
    assert rows == [
        {"iteration": "1", "loss": "0.5", "kl": "", "grad_norm": ""},
        {"iteration": "2", "loss": "0.25", "kl": "1.5", "grad_norm": ""},
        {"iteration": "3", "loss": "", "kl": "2.5", "grad_norm": ""},
        {"iteration": "4", "loss": "0.125", "kl": "", "grad_norm": "3.0"},
    ]
    reopened.close()


def test_a_fixed_schema_refuses_unknown_keys_and_writes_nothing_of_that_call(tmp_path):
    path = tmp_path / "eval.csv"
    log = CsvLog(path, EVAL_COLUMNS)
    good = {"iteration": 0, "env_steps": 0, "split": "test", "task_id": 1, "task": "v=1", "episode": 0}
    log.write([{**good, "return": -3.5, "success": ""}])
    with pytest.raises(ValueError, match=r"unknown column\(s\) regret, extra"):
        log.write([{**good, "return": 1.0, "success": "", "regret": 0.5}, {**good, "extra": 1}])
    header, rows = read(path)
    assert header == list(EVAL_COLUMNS)
    assert [r["return"] for r in rows] == ["-3.5"]
    log.write([{**good, "return": 2.0}])  # a missing key is still an empty field
    log.close()
    header, rows = read(path)
    assert [(r["return"], r["success"]) for r in rows] == [("-3.5", ""), ("2.0", "")]

    # reopened, the fixed schema still refuses; a file with another header is refused at once
    reopened = CsvLog(path, EVAL_COLUMNS)
    with pytest.raises(ValueError, match="unknown column"):
        reopened.write([{**good, "regret": 1.0}])
    other = tmp_path / "other.csv"
    other.write_text("iteration,return\n0,1.0\n")
    with pytest.raises(ResultsError, match="other.csv: header iteration,return is not the expected"):
        CsvLog(other, EVAL_COLUMNS)


# -- checkpoints -----------------------------------------------------------------------------------


def test_a_numpy_array_in_the_state_fails_at_save_naming_its_key_path(tmp_path):
    path = tmp_path / CHECKPOINT
    state = {"iteration": 5, "learner": {"policy": {"w": torch.ones(2)}, "buffer": {"rng": np.zeros(3)}}}
    with pytest.raises(ResultsError) as err:
        save_checkpoint(path, state)
    msg = str(err.value)
    assert "learner.buffer.rng is a numpy.ndarray" in msg
    assert "weights_only=True" in msg
    for accepted in ("torch tensors", "None", "bool", "int", "float", "str", "list, tuple, dict"):
        assert accepted in msg
    assert "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its temporary file

    # a later bad checkpoint leaves the previous good one in place
    save_checkpoint(path, {"iteration": 5})
    with pytest.raises(ResultsError, match=r"optim\.state\.0\.step is a numpy\.float64"):
        save_checkpoint(path, {"iteration": 6, "optim": {"state": {0: {"step": np.float64(3.0)}}}})
    assert load_checkpoint(path) == {"iteration": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"replay": [torch.ones(1), (1, np.int64(2))]}, r"replay\[1\]\[1\] is a numpy\.int64"),
        ({"ids": {np.str_("a"): 1}}, r"ids\.np\.str_\('a'\) \(the key itself\) is a numpy\.str_"),
        ({"seen": {1, 2.5, frozenset()}}, r"seen\{element\} is a frozenset"),
        ({"gen": torch.Generator()}, r"gen is a torch\._C\.Generator"),
        (np.ones(2), "the state itself is a numpy.ndarray"),
    ],
)
def test_key_paths_in_the_message(tmp_path, state, where):
    with pytest.raises(ResultsError, match=where):
        save_checkpoint(tmp_path / CHECKPOINT, state)


def test_a_normal_state_saves_and_loads_back(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(5, 3)).pow(2).mean().backward()
    opt.step()
    rng = np.random.default_rng(1)
    state = {
        "iteration": 7,
        "env_steps": 1400,
        "wall_time_s": 12.5,
        "learner": {
            "net": net.state_dict(),
            "opt": opt.state_dict(),
            "log_alpha": torch.tensor(0.1),
            "done": False,
        },
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "replay_rows": 0,
        "note": None,
    }
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded.keys() == state.keys()
    assert (loaded["iteration"], loaded["env_steps"], loaded["wall_time_s"]) == (7, 1400, 12.5)
    assert loaded["numpy_rng"] == state["numpy_rng"] and loaded["note"] is None
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    net2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    net2.load_state_dict(loaded["learner"]["net"])
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["learner"]["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


# The check must accept exactly what torch's weights-only unpickler loads: each candidate is
# round-tripped through torch.save / torch.load(weights_only=True) and the check must agree.
class _Sub(dict):
    pass


class _TensorSub(torch.Tensor):
    pass


_Point = collections.namedtuple("_Point", "x y")


def _tensor_with(attr):
    t = torch.ones(2)
    t.extra = attr
    return t


def _param_with(attr):
    p = torch.nn.Parameter(torch.ones(2))
    p.extra = attr
    return p


def _odict_with(attr):
    d = collections.OrderedDict(a=1)
    d.extra = attr
    return d


def _counter_with(attr):
    c = collections.Counter(a=1)
    c.extra = attr  # Counter drops its attributes when pickled
    return c


def _cycle():
    a = []
    a.append(a)
    return a


CANDIDATES = {
    "none": None, "bool": True, "int": 3, "bigint": 2**100, "float": 1.5, "nan": float("nan"),
    "complex": 1j, "str": "s", "bytes": b"x", "bytearray": bytearray(b"x"), "list": [1, [2]],
    "tuple": (1, (2,)), "dict_keys": {1: "a", (1, "b"): 2, None: 3, 2.5: 4}, "set": {1, "a", (2, 3)},
    "ordereddict": collections.OrderedDict(a=1), "counter": collections.Counter(a=2),
    "module_state_dict": torch.nn.Linear(2, 2).state_dict(), "tensor": torch.ones(2),
    "tensor_view": torch.arange(10)[2:5], "tensor_bf16": torch.ones(2, dtype=torch.bfloat16),
    "tensor_requires_grad": torch.ones(2, requires_grad=True) * 2, "sparse": torch.ones(2).to_sparse(),
    "parameter": torch.nn.Parameter(torch.ones(2)), "size": torch.Size([2, 3]), "dtype": torch.float16,
    "device": torch.device("cpu"), "layout": torch.sparse_coo, "shared": [torch.ones(1)] * 2,
    "cycle": _cycle(), "tensor_attr_int": _tensor_with(3), "param_attr_int": _param_with(3),
    "odict_attr_dict": _odict_with({"v": 1}), "counter_attr_ndarray": _counter_with(np.ones(1)),
    # refused
    "ndarray": np.ones(3), "ndarray_int": np.arange(3), "np_float64": np.float64(1.0),
    "np_int64": np.int64(1), "np_bool": np.bool_(True), "np_str": np.str_("a"),
    "np_dtype": np.dtype("float32"), "legacy_np_state": np.random.get_state(),
    "frozenset": frozenset({1}), "dict_subclass": _Sub(a=1), "namedtuple": _Point(1, 2),
    "defaultdict": collections.defaultdict(list), "generator": torch.Generator(),
    "module": torch.nn.Linear(1, 1), "structseq": torch.max(torch.ones(2, 2), 0), "slice": slice(1, 2),
    "range": range(3), "ellipsis": ..., "type": int, "tensor_subclass": torch.ones(2).as_subclass(_TensorSub),
    "ndarray_in_dict_key": {(1, np.int64(2)): 1}, "ndarray_in_list": [1, {"a": np.ones(1)}],
    "ndarray_tensor_attr": _tensor_with(np.ones(1)), "ndarray_param_attr": _param_with(np.ones(1)),
    "ndarray_odict_attr": _odict_with(np.ones(1)), "np_in_counter": collections.Counter({"a": np.float64(2)}),
}  # fmt: skip


def _torch_loads(obj) -> bool:
    buf = io.BytesIO()
    torch.save({"x": obj}, buf)
    buf.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.load(buf, weights_only=True)
        except Exception:
            return False
    return True


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_the_check_accepts_exactly_what_torch_weights_only_loads(name):
    obj = CANDIDATES[name]
    loads = _torch_loads(obj)
    try:
        check_weights_only({"x": obj})
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == loads, f"{name}: torch loads it: {loads}, check accepts it: {accepted}"


def test_the_candidates_cover_both_outcomes():
    results = {name: _torch_loads(obj) for name, obj in CANDIDATES.items()}
    assert results["ordereddict"] and results["tensor_attr_int"] and results["counter_attr_ndarray"]
    assert not results["ndarray"] and not results["np_float64"] and not results["ndarray_odict_attr"]
