"""The one validator of configuration tables: :class:`Section` and :class:`ConfigError`.

Every part that has settings (collectors, cost, impact, analytics, mappings, the web
config) reads its table through a :class:`Section`, so every error names the file and the
key the same way. This module imports nothing of mlsidecar: config.py and each part's
settings parser import it, and config.py imports the parsers, with no cycle.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar, overload

T = TypeVar("T")
N = TypeVar("N", int, float)


class ConfigError(Exception):
    """A configuration that cannot be used; the message names file and key."""

    def __init__(self, source: str, key: str, problem: str):
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class Section:
    """Reads one TOML table, type-checking each key and refusing unknown ones.

    ``source`` is the file (named in every error), ``prefix`` the dotted key of the table.
    Call :meth:`finish` once every key has been read: a key nobody read is an error.
    """

    def __init__(self, source: str, prefix: str, data: object):
        if not isinstance(data, dict):
            raise ConfigError(source, prefix, "must be a table")
        self.source = source
        self.prefix = prefix
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    @overload
    def get(self, name: str, kind: type[T], default: None) -> T | None: ...

    @overload
    def get(self, name: str, kind: type[T], default: T) -> T: ...

    def get(self, name: str, kind: type[T], default: T | None) -> T | None:
        """The value of ``name`` (``default`` when absent), which must be of ``kind``; an
        integer is taken for a float, and a TOML array is returned as a tuple."""
        self.used.add(name)
        if name not in self.data:
            return default
        v = self.data[name]
        if kind is float and type(v) is int:
            v = float(v)
        if kind is tuple:
            if not isinstance(v, list):
                raise self.error(name, f"must be a list, got {type(v).__name__}")
            return tuple(v)  # type: ignore[return-value]  # kind is tuple: T is a tuple
        if type(v) is not kind:
            raise self.error(name, f"must be {_kind_name(kind)}, got {type(v).__name__} {v!r}")
        return v  # checked against kind just above

    def positive(self, name: str, kind: type[N], default: N) -> N:
        v = self.get(name, kind, default)
        if v <= 0:
            raise self.error(name, f"must be > 0, got {v}")
        return v

    def table(self, name: str) -> Section:
        self.used.add(name)
        return Section(self.source, self.key(name), self.data.get(name, {}))

    def finish(self) -> None:
        """Refuse the keys no one read, with the nearest known one as a hint."""
        for k in self.data:
            if k not in self.used:
                hint = difflib.get_close_matches(str(k), sorted(self.used), n=1)
                extra = f" (did you mean '{self.key(hint[0])}'?)" if hint else ""
                raise self.error(str(k), f"unknown key{extra}")


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "a table"}.get(kind, kind.__name__)
