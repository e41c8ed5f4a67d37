"""One TOML table being read, and the readers of the value kinds keys have.

Every error names the file, the table and the key, as in
``configs/prod.toml: [gateway].listen: 'x' is not host:port``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from wave_grpc.store_urls import StoreRole, StoreUrl


class ConfigError(ValueError):
    """A config problem; the message names the file and key."""


class KeyProblem(ConfigError):
    """A value refused at construction: the reader of its table adds the file and table to the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


_MAX_DURATION_SECONDS = 10 * 366 * 86400
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class Table:
    """Reads one TOML table, remembering which keys were used."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {where} must be a table")
        self.data: Mapping[str, Any] = data
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}.{key}: {problem}")

    def get(self, key: str, kind: type, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def string(self, key: str, default: str = "") -> str:
        return str(self.get(key, str, default))

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, bool, default))

    def integer(self, key: str, default: int) -> int:
        return int(self.get(key, int, default))

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in options:
            raise self.error(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def duration(self, key: str, default: timedelta) -> timedelta:
        self.used.add(key)
        if key not in self.data:
            return default
        return self._duration(key, self.data[key])

    def duration_or_off(self, key: str, default: timedelta | None) -> timedelta | None:
        """A duration, or "off" (also 0)."""
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if value == "off" or (value == 0 and not isinstance(value, bool)):
            return None
        return self._duration(key, value)

    def _duration(self, key: str, value: Any) -> timedelta:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = _DURATION.match(value) if isinstance(value, str) else None
            if not match:
                raise self.error(key, f'{value!r} is not a duration; use e.g. "36h", "90m", "30s", "500ms"')
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
        # Both spellings are judged alike: a number of seconds is no way around the bounds.
        if not seconds > 0:
            raise self.error(key, "must be positive")
        if not seconds <= _MAX_DURATION_SECONDS:
            raise self.error(key, "must be at most 10 years")
        result = timedelta(seconds=seconds)
        if result <= timedelta(0):  # also what rounds to nothing below a microsecond
            raise self.error(key, "must be positive (at least 1 microsecond)")
        return result

    def address(self, key: str, default: str) -> str:
        value = self.string(key, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise self.error(key, f"{value!r} is not host:port")
        return value

    def optional_address(self, key: str, default: str) -> str:
        """host:port, or empty for none."""
        return self.address(key, default) if self.data.get(key) else self.string(key, default)

    def readable_file(self, key: str, default: str) -> str:
        """An optional path to a file that must exist now, not at the first connection."""
        value = self.string(key, default)
        if value and not Path(value).expanduser().is_file():
            raise self.error(key, f"{value!r} is not a readable file")
        return str(Path(value).expanduser()) if value else ""

    def store_url(self, key: str, default: str, role: StoreRole) -> str:
        value = self.string(key, default)
        try:
            StoreUrl.parse(value, role)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], f"unknown key; known keys: {', '.join(sorted(self.used))}")
