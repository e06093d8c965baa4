"""Declared ranges for hyperparameters, checked before a run writes anything.

A method's ``Config`` dataclass (and the harness's ``HarnessConfig``) states the accepted values of a
field where it defines it::

    @dataclass
    class MyConfig:
        lr: float = setting(3e-4, low=0.0, low_open=True)      # lr > 0
        gamma: float = setting(0.99, low=0.0, high=1.0)         # 0 <= gamma <= 1
        memory: str = setting("episode", choices=("episode", "trial"))

``check_settings(config)`` raises ``ValueError`` with one line naming the first bad field, its value
and what is accepted. Fields without a declaration still get the default rule: numbers must be
finite and >= 0 (a negative count, rate or coefficient is never meant), strings non-empty.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

_KEY = "metarl_bench"


@dataclass(frozen=True)
class Range:
    """Accepted values of one setting: a numeric interval and/or a set of choices (None always ok
    where the field's type allows it)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def describe(self) -> str:
        """The accepted values in words: ``one of a, b``, ``> 0 and <= 1``, or ``any value``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) if parts else "any value"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is accepted: one of ``choices`` where they are given; else each element of a
        tuple; a number (not a bool) must be finite and inside the bounds; any other value passes."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, tuple):
            return all(self.accepts(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


DEFAULT_RANGE = Range(low=0.0)


def setting(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A dataclass field with ``default`` and its accepted values (see the module docstring)."""
    rng = Range(low, high, low_open, high_open, tuple(choices) if choices is not None else None)
    return dataclasses.field(default=default, metadata={_KEY: rng})


def setting_range(field: dataclasses.Field) -> Range:
    """The declared range of a dataclass field, or the default rule (finite and >= 0)."""
    return field.metadata.get(_KEY, DEFAULT_RANGE)


def check_settings(config: Any, overridden: Collection[str] | None = None) -> None:
    """Raise ``ValueError`` naming the first field of dataclass ``config`` outside its range.

    A field in ``overridden`` (the keys the user gave with ``--set``) is named as ``--set KEY=VALUE``;
    any other field (a default, a profile's value, a config built in code) as ``ConfigClass.KEY=VALUE``,
    and where it has no declared range the message says that the default rule refused it and how to
    declare one (a method author's fix, not the user's).
    """
    given = set(overridden or ())
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None:
            continue
        rng = setting_range(field)
        if isinstance(value, str) and rng.choices is None:
            if not value:
                named = _named(config, field.name, given, "''")
                raise ValueError(f"{named}: expected a non-empty string")
            continue
        if not rng.accepts(value):
            hint = ""
            if field.name not in given and _KEY not in field.metadata:
                hint = (
                    "; the field declares no range, so the default rule applies: declare its accepted "
                    "values with metarl_protocol.settings.setting(default, low=..., high=...)"
                )
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            raise ValueError(f"{_named(config, field.name, given, shown)}: expected {rng.describe()}{hint}")


def _named(config: Any, key: str, given: set[str], shown: Any) -> str:
    """``--set KEY=VALUE`` for a key the user gave, else ``ConfigClass.KEY=VALUE``."""
    return f"--set {key}={shown}" if key in given else f"{type(config).__name__}.{key}={shown}"
