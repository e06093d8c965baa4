"""Methods and suites found through standard entry points (in-tree ones are registered the same way).

* ``metarl_bench.algorithms``: ``name = "package.module:MetaLearnerSubclass"``.
* ``metarl_bench.suites``: ``name = "package.module:factory"`` where calling ``factory()`` returns a
  ``Suite`` (the entry name is the suite name), or a mapping ``{suite_name: zero-arg factory}`` for a
  family of suites (e.g. every Meta-World ML1 task). Family mappings must be cheap to build.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from benchmark.suites.base import Suite
from metarl_protocol import MetaLearner

ALGORITHM_GROUP = "metarl_bench.algorithms"
SUITE_GROUP = "metarl_bench.suites"


class RegistryError(ValueError):
    """Unknown name; the message lists what is accepted."""


def _entry_points(group: str) -> dict[str, EntryPoint]:
    """Name -> entry point of ``group``, leaving out a name that two packages register (``_twice``)."""
    twice = _twice(group)
    return {ep.name: ep for ep in entry_points(group=group) if ep.name not in twice}


def _twice(group: str) -> dict[str, str]:
    """Names of ``group`` registered with two different targets -> a message naming both."""
    seen: dict[str, EntryPoint] = {}
    out: dict[str, str] = {}
    for ep in entry_points(group=group):
        if ep.name in seen and seen[ep.name].value != ep.value:
            out[ep.name] = (
                f"{ep.name!r} is registered twice: {_origin(seen[ep.name])} and {_origin(ep)}; uninstall one "
                "of the packages or rename its entry point"
            )
        seen.setdefault(ep.name, ep)
    return out


def _origin(ep: EntryPoint) -> str:
    """'module:attr (distribution version)', for messages."""
    dist = getattr(ep, "dist", None)
    return f"{ep.value} ({dist.name} {dist.version})" if dist is not None else ep.value


#: What a suite name may look like: it becomes a directory of the results tree.
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # matched with fullmatch


def algorithm_source(name: str) -> dict[str, str | None] | None:
    """Where algorithm ``name`` comes from, for a run's record: ``{"entry_point": "pkg.module:Class",
    "distribution": ..., "version": ...}`` (the installed package that registers it, None where its
    metadata does not say), so a plugin's results can be traced to its code; None for an unknown name."""
    return _source(_entry_points(ALGORITHM_GROUP).get(name))


def suite_source(name: str) -> dict[str, str | None] | None:
    """Where suite ``name`` comes from, as ``algorithm_source`` says it for a method: the entry point
    that registers it (a family's entry point for its members, e.g. ``metaworld`` for ``ml1-reach``)."""
    _suite_factories()
    return _source(_SUITE_ORIGIN.get(name))


def _source(ep: EntryPoint | None) -> dict[str, str | None] | None:
    if ep is None:
        return None
    dist = getattr(ep, "dist", None)
    return {
        "entry_point": ep.value,
        "distribution": dist.name if dist is not None else None,
        "version": dist.version if dist is not None else None,
    }


def _failure(exc: BaseException) -> str:
    """'failed to load: <type>: <message> (at <file>:<line>)' on one line, the line where it was raised."""
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
    return f"failed to load: {type(exc).__name__}: {' '.join(str(exc).split())}{at}"


def algorithm_names() -> list[str]:
    """Names of every ``metarl_bench.algorithms`` entry point, sorted; nothing is imported."""
    return sorted(_entry_points(ALGORITHM_GROUP))


def load_algorithm(name: str) -> type[MetaLearner]:
    """The ``MetaLearner`` subclass registered as ``name`` (its entry point imported).

    Raises ``RegistryError`` (one line) for an unknown name (listing the accepted ones), an entry point
    that fails to import (the error and where it was raised), an object that is not a ``MetaLearner``
    subclass, or a class without a ``Config`` dataclass.
    """
    eps = _entry_points(ALGORITHM_GROUP)
    twice = _twice(ALGORITHM_GROUP)
    if name in twice:
        raise RegistryError(f"algorithm {twice[name]}")
    if name not in eps:
        raise RegistryError(f"unknown algorithm {name!r}; accepted: {', '.join(sorted(eps))}")
    try:
        cls = eps[name].load()
    except Exception as exc:  # noqa: BLE001 - a plugin's import error, said in one line
        raise RegistryError(f"algorithm entry point {name!r} ({eps[name].value}) {_failure(exc)}") from None
    if not (isinstance(cls, type) and issubclass(cls, MetaLearner)):
        raise RegistryError(f"entry point {name!r} ({eps[name].value}) is not a MetaLearner subclass")
    if not (isinstance(getattr(cls, "Config", None), type) and dataclasses.is_dataclass(cls.Config)):
        raise RegistryError(
            f"entry point {name!r} ({eps[name].value}): its MetaLearner has no Config dataclass"
        )
    return cls


def _expand(name: str, ep: EntryPoint) -> dict[str, Callable[[], Suite]]:
    """Load one suite entry point: a single suite, or a family mapping of suites (name -> factory).

    Raises ``RegistryError`` when it gives neither. A member whose name cannot be a results directory,
    or that is a suite instance rather than a factory, is left out and its reason kept in ``_REFUSED``
    (``load_suite`` says it for that name); the other members load.
    """
    obj = ep.load()
    if isinstance(obj, type) and issubclass(obj, Suite):
        out: dict[str, Callable[[], Suite]] = {name: obj}
    else:
        produced = obj()
        if isinstance(produced, Mapping):
            out = dict(produced)
        elif isinstance(produced, Suite):
            out = {name: lambda: produced}
        else:
            raise RegistryError(f"suite entry point {name!r} ({ep.value}) gave neither a Suite nor a mapping")
    for key, factory in list(out.items()):
        if not isinstance(key, str) or not SUITE_NAME.fullmatch(key):
            _REFUSED[str(key)] = (
                f"suite entry point {name!r} ({ep.value}) names a suite {key!r}: a suite name is letters, "
                "digits and . _ + - (not starting with one of those), as it names a results directory"
            )
        elif not callable(factory) or isinstance(factory, Suite):
            _REFUSED[key] = (
                f"suite entry point {name!r} ({ep.value}) maps {key!r} to {factory!r}: a family mapping "
                "holds zero-argument factories (a Suite class or function), not suite instances"
            )
        else:
            continue
        del out[key]
    return out


#: Suite names left out -> why: an entry point that failed to load, or a family member refused by
#: ``_expand`` (filled by ``_suite_factories``).
_REFUSED: dict[str, str] = {}


#: The entry point each family member came from (filled by ``_suite_factories``).
_SUITE_ORIGIN: dict[str, EntryPoint] = {}
#: Suite names two entry points give: name -> both origins (filled by ``_suite_factories``).
_AMBIGUOUS: dict[str, str] = {}


@cache
def _suite_factories() -> dict[str, Callable[[], Suite]]:
    """Every suite of every entry point; a plugin that fails to load is skipped and said in ``PROBLEMS``.
    A suite name given by two entry points is left out (``load_suite`` refuses it by name)."""
    out: dict[str, Callable[[], Suite]] = {}
    _SUITE_ORIGIN.clear()
    _AMBIGUOUS.clear()
    _REFUSED.clear()
    PROBLEMS.clear()
    for name, ep in _entry_points(SUITE_GROUP).items():
        try:
            expanded = _expand(name, ep)
        except RegistryError as exc:
            _REFUSED[name] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            _REFUSED[name] = f"suite entry point {name!r} ({ep.value}) {_failure(exc)}"
            continue
        for key, factory in expanded.items():
            if key in _SUITE_ORIGIN and _SUITE_ORIGIN[key].name != ep.name:
                _AMBIGUOUS[key] = f"{_origin(_SUITE_ORIGIN[key])} and {_origin(ep)}"
            _SUITE_ORIGIN.setdefault(key, ep)
            out.setdefault(key, factory)
    for key, where in _AMBIGUOUS.items():
        out.pop(key, None)
        PROBLEMS.append(f"suite {key!r} is registered twice ({where}); left out")
    PROBLEMS.extend(f"{why}; left out" for why in _REFUSED.values())  # failed entry points included
    return out


#: What ``_suite_factories`` left out and why, one line each (``metarl-bench list`` prints them; a run
#: is told only about the suite it asks for).
PROBLEMS: list[str] = []


def suite_names() -> list[str]:
    """Every suite name, family members included, sorted. Loads every suite entry point (cached per
    process); one that fails to load, or a name two entry points give, is left out and said in
    ``PROBLEMS``."""
    return sorted(_suite_factories())


@cache
def load_suite(name: str) -> Suite:
    """The suite instance (cached: suites build their task sets once per process)."""
    twice = _twice(SUITE_GROUP)
    if name in twice:
        raise RegistryError(f"suite {twice[name]}")
    factories = _suite_factories()  # every entry point: a family member may take another suite's name
    if name in _REFUSED:
        raise RegistryError(_REFUSED[name])
    if name in _AMBIGUOUS:
        raise RegistryError(
            f"suite {name!r} is registered twice ({_AMBIGUOUS[name]}); uninstall one of the packages or "
            "rename its suite"
        )
    if name not in factories:
        names = sorted(factories)
        shown = [n for n in names if not n.startswith("ml1-")]
        ml1 = [n for n in names if n.startswith("ml1-")]
        if name.startswith("ml1-") and ml1:  # an unknown Meta-World task: list every valid ML1 suite
            raise RegistryError(f"unknown ML1 task {name!r}; accepted: {', '.join(ml1)}")
        more = f", and {len(ml1)} ml1-<task> suites ({', '.join(ml1[:3])}, ...)" if ml1 else ""
        raise RegistryError(f"unknown suite {name!r}; accepted: {', '.join(shown)}{more}")
    try:
        suite = factories[name]()
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, said in one line
        why = _failure(exc).removeprefix("failed to load: ")
        raise RegistryError(f"suite {name!r} could not be built: {why}") from None
    if not isinstance(suite, Suite):
        raise RegistryError(f"suite {name!r}: its factory returned {type(suite).__name__}, not a Suite")
    if not suite.name:
        suite.name = name
    return suite
