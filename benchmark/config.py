"""Run configuration: dataclass defaults < profile (quick | paper) < ``--set key=value`` overrides.

A profile sets the harness budget per suite family here and the method's hyperparameters in the
method's own ``profile()``; ``--set`` can override a field of either, with its type checked.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from metarl_protocol.settings import check_settings, setting

PROFILES = ("quick", "paper")


class ConfigError(ValueError):
    """A bad configuration value; the CLI prints its one-line message and exits 2."""


@dataclass
class HarnessConfig:
    """What the harness does around a method: step budget, evaluation cadence, checkpoints, resources.

    Budgets and cadences count environment steps, the same for every method on a (profile, suite
    family): a method's iterations are whatever it does between two marks. Periodic evaluations run at
    the first iteration boundary at or past each multiple of ``eval_every_steps`` (0 included); the
    final evaluation stands for ``budget_steps``.
    """

    budget_steps: int = setting(
        1_000_000, low=1
    )  # environment steps of meta-training (the run stops at the first
    # iteration boundary at or past it)
    eval_every_steps: int = setting(100_000, low=1)  # periodic evaluation marks, in env steps
    eval_tasks: int = setting(5, low=1)  # test tasks in a periodic evaluation (the final one uses all)
    eval_batch: int = setting(20, low=1)  # tasks evaluated in parallel
    final_eval_max_tasks: int = (
        0  # 0 = the protocol (every test / OOD task); N > 0 caps each split (smoke runs)
    )
    checkpoint_every_steps: int = setting(
        100_000, low=1
    )  # env steps between atomic checkpoints (and at the budget)
    validation_tasks: int = 0  # > 0: a tuning run; hold out this many training tasks as a validation
    # split, train on the rest, evaluate only on them (split "validation"; never test or OOD tasks)
    num_workers: int = setting(
        2, low=1
    )  # processes stepping simulators, the sampling one included (point-nav: in-process)
    torch_threads: int = setting(1, low=1)  # intra-op threads of the learner process while it acts
    # intra-op threads (torch and numpy's BLAS) of train_step outside its sampling, i.e. the update;
    # 0 = torch_threads, as runs made before this setting existed. 2 on an otherwise idle 2-core machine
    # speeds up the methods whose update gains from threads (MetaLearner.parallel_update: TrMRL, PEARL,
    # MAML) by 1.4-1.6x; where other processes hold the cores, threads that spin-wait for each other
    # make it several times slower (README "Performance")
    update_threads: int = setting(0, low=0)


# Harness budgets per (profile, family), in environment steps, identical for every method. quick:
# shows learning on 2 CPU cores (point-nav <= 5 min, locomotion <= 15 min per run); paper: the
# published budgets (TrMRL HalfCheetahVel: 2,500 iterations x 8,000 steps = 20M steps).
RUN_PROFILES: dict[tuple[str, str], dict[str, Any]] = {
    ("quick", "point-nav"): {
        "budget_steps": 3_840_000,  # 300 iterations of 64 trials x 2 episodes x 100 steps (RL², TrMRL)
        "eval_every_steps": 320_000,
        "eval_tasks": 10,
        "checkpoint_every_steps": 320_000,
    },
    ("paper", "point-nav"): {
        "budget_steps": 12_800_000,
        "eval_every_steps": 640_000,
        "eval_tasks": 20,
        "checkpoint_every_steps": 640_000,
    },
    ("quick", "locomotion"): {
        "budget_steps": 1_200_000,  # 150 iterations of 20 tasks x 2 episodes x 200 steps
        "eval_every_steps": 200_000,
        "eval_tasks": 5,
        "checkpoint_every_steps": 80_000,
    },
    ("paper", "locomotion"): {
        "budget_steps": 20_000_000,  # TrMRL paper, HalfCheetahVel: 2,500 x 8,000 steps
        "eval_every_steps": 400_000,
        "eval_tasks": 10,
        "checkpoint_every_steps": 200_000,
    },
    ("quick", "metaworld"): {
        "budget_steps": 1_500_000,  # 30 iterations of 10 goals x 10 episodes x 500 steps
        "eval_every_steps": 500_000,
        "eval_tasks": 5,
        "eval_batch": 25,
        "checkpoint_every_steps": 250_000,
    },
    ("paper", "metaworld"): {
        "budget_steps": 250_000_000,  # 2,000 iterations of 25 goals x 10 episodes x 500 steps
        "eval_every_steps": 6_250_000,
        "eval_tasks": 10,
        "eval_batch": 25,
        "checkpoint_every_steps": 3_125_000,
    },
}
#: The suite families with run profiles; a suite's ``family`` must be one of them.
FAMILIES = tuple(sorted({family for _, family in RUN_PROFILES}))


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation (``typing.get_type_hints``) of dataclass ``cls``, leaving out
    fields whose name starts with ``_``. Raises ``TypeError`` when ``cls`` is not a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if not f.name.startswith("_")}


def parse_value(key: str, raw: str, typ: Any) -> Any:
    """Parse a ``--set`` value according to the field's annotated type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw.lower() in ("none", "null") and len(args) < len(typing.get_args(typ)):
            return None
        typ = args[0]
        origin = typing.get_origin(typ)
    if origin is tuple and typing.get_args(typ)[0] in (int, float, str):
        return _parse_tuple(key, raw, typing.get_args(typ)[0])
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(raw)
        if typ is float:
            value = float(raw)
            if not (math.isinf(value) and "inf" not in raw.lower()):  # 1e400 overflows to inf
                return value
            raise ConfigError(f"--set {key}={raw}: out of a float's range (magnitude up to 1.8e308)")
        if typ is str:
            return raw
    except ConfigError:
        raise
    except ValueError:
        pass
    else:
        raise ConfigError(f"--set {key}: unsupported field type {typ}")
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"--set {key}={raw}: expected a value of type {name}")


def _parse_tuple(key: str, raw: str, inner: type) -> tuple[Any, ...]:
    """``64,64``, or as ``metarl-bench list --settings`` prints a tuple: ``(64, 64)``, ``(64,)``, ``()``
    (brackets too); empty text is the empty tuple. Raises ``ConfigError`` naming what is accepted."""
    body = raw.strip()
    if body[:1] + body[-1:] in ("()", "[]"):
        body = body[1:-1]
    parts = [part.strip() for part in body.split(",")]
    if len(parts) > 1 and parts[-1] == "":  # one trailing comma, as Python writes a 1-tuple
        parts.pop()
    if parts == [""]:
        return ()
    try:
        if "" in parts:
            raise ValueError
        return tuple(inner(part) for part in parts)
    except ValueError:
        raise ConfigError(
            f"--set {key}={raw}: expected comma-separated {inner.__name__} values, e.g. {key}=64,64 "
            "(or as `list --settings` prints it, (64, 64))"
        ) from None


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``--set`` pairs ``KEY=VALUE`` -> ``{key: raw value}``, both stripped, split at the first ``=``; a
    later pair for a key wins. Values stay text (``resolve`` types them). Raises ``ConfigError`` for a
    pair without ``=`` or with an empty key."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set {pair!r}: the key is empty; expected key=value, e.g. budget_steps=4000")
        out[key.strip()] = value.strip()
    return out


def apply(obj: Any, values: dict[str, Any]) -> Any:
    """A copy of dataclass ``obj`` with ``values`` set (keys must exist)."""
    return dataclasses.replace(obj, **values)


def from_record(config_cls: type, record: dict[str, Any]) -> Any:
    """The config dataclass a run recorded in its config.json (``run`` or ``algo_config``), rebuilt.

    Each recorded value must be of its field's annotated type, as JSON writes it: ``bool`` a JSON bool,
    ``int`` a JSON integer (not a bool), ``float`` a JSON number (not a bool; an integer becomes a
    float), ``str`` a string, ``tuple[T, ...]`` a list of T, and ``X | None`` also null. JSON lists
    become tuples where the field is a tuple; fields missing from ``record`` keep their defaults (a
    setting added after the run was made). Raises ``ConfigError`` (one line) for a key the class does
    not have, a value of another type (``recorded Class.key=value: expected ...``) or a value outside
    its declared range.
    """
    import json

    name = config_cls.__name__

    kinds = {  # what a JSON value of a plain type is called, alone and in a list
        bool: ("a bool (true or false)", "bools"),
        int: ("an integer", "integers"),
        float: ("a number", "numbers"),
        str: ("a string", "strings"),
    }

    def expected(typ: Any) -> str:  # what the annotation accepts, as JSON
        origin, args = typing.get_origin(typ), typing.get_args(typ)
        if origin in (typing.Union, types.UnionType):
            parts = [expected(a) for a in args if a is not type(None)]
            return " or ".join([*parts, *(["null"] if type(None) in args else [])])
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in kinds:
            return f"a list of {kinds[args[0]][1]}"
        if typ is tuple or origin is tuple:
            return f"a list of {len(args)} values" if args else "a list"
        return kinds[typ][0] if typ in kinds else getattr(typ, "__name__", str(typ))

    def typed(typ: Any, value: Any) -> Any:  # ``value`` as ``typ`` holds it; ValueError if not
        origin, args = typing.get_origin(typ), typing.get_args(typ)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            for arg in (a for a in args if a is not type(None)):
                try:
                    return typed(arg, value)
                except ValueError:
                    pass
            raise ValueError
        if typ is tuple or origin is tuple:  # tuple, tuple[T, ...] or tuple[T1, T2]: a list
            if not isinstance(value, (list, tuple)):
                raise ValueError
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(typed(args[0], v) for v in value)
            if args and len(args) != len(value):
                raise ValueError
            return tuple(typed(a, v) for a, v in zip(args, value, strict=True)) if args else tuple(value)
        if typ is bool and isinstance(value, bool):
            return value
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond a float's range
                raise ValueError from None
        if typ is str and isinstance(value, str):
            return value
        if typ in kinds:
            raise ValueError
        return value  # a type JSON has no form for: left to the class and its range check

    types_ = field_types(config_cls)
    unknown = sorted(set(record) - set(types_))
    if unknown:
        raise ConfigError(f"recorded setting(s) {', '.join(unknown)} not in {name}")
    values = {}
    for key, value in record.items():
        try:
            values[key] = typed(types_[key], value)
        except ValueError:
            shown = json.dumps(value, default=str)
            shown = shown if len(shown) <= 60 else shown[:60] + " ..."
            raise ConfigError(f"recorded {name}.{key}={shown}: expected {expected(types_[key])}") from None
    try:
        config = apply(config_cls(), values)
        check_settings(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"recorded {name}: {exc}") from None
    return config


def resolve(
    profile: str,
    family: str,
    algo_config_cls: type,
    algo_profile: dict[str, Any],
    overrides: dict[str, str],
) -> tuple[HarnessConfig, Any]:
    """Build (HarnessConfig, method config) from defaults, profile and typed ``--set`` overrides."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; accepted: {', '.join(PROFILES)}")
    if (profile, family) not in RUN_PROFILES:
        raise ConfigError(f"suite family {family!r} has no run profiles; accepted: {', '.join(FAMILIES)}")
    run = apply(HarnessConfig(), RUN_PROFILES[(profile, family)])
    algo = apply(algo_config_cls(), algo_profile)
    run_types, algo_types = field_types(HarnessConfig), field_types(algo_config_cls)
    run_set, algo_set = {}, {}
    for key, raw in overrides.items():
        if key in run_types:
            run_set[key] = parse_value(key, raw, run_types[key])
        elif key in algo_types:
            algo_set[key] = parse_value(key, raw, algo_types[key])
        else:
            accepted = ", ".join(sorted(run_types) + sorted(algo_types))
            raise ConfigError(f"--set {key}: no such setting; accepted: {accepted}")
    run, algo = apply(run, run_set), apply(algo, algo_set)
    for config, given in ((run, run_set), (algo, algo_set)):  # declared ranges, before anything is written
        try:
            check_settings(config, given)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    cores = os.cpu_count() or 1
    for key in ("torch_threads", "update_threads"):  # torch crashes or hangs at thousands of threads
        if getattr(run, key) > cores:
            raise ConfigError(
                f"--set {key}={getattr(run, key)}: expected at most {cores} (this machine's cores; more "
                "threads than cores only wait for each other)"
            )
    return run, algo
