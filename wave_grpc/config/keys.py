"""Keys declared once: a section is a frozen dataclass whose fields say how they are read.

A field made by ``setting`` carries its TOML key, default, unit and bounds; the one
walker, ``read_table``, reads every such field of a section from its table (in
field order), judges it, builds the value and refuses keys nobody declared. So a
simple key is one line::

    retries: int = setting(3, at_least=0)

Keys that need more (a list of tables, credentials from three places, "off" for a
duration) name a reader, which gets the table, the key, its default and what was
read before it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, TypeVar

from wave_grpc.config.table import ConfigError, KeyProblem, Table
from wave_grpc.store_urls import StoreRole

T = TypeVar("T")
_METADATA = "wave_grpc.config.key"


@dataclass(frozen=True, slots=True)
class Reading:
    """What a field's reader is given."""

    table: Table
    key: str  # the TOML key
    default: Any
    earlier: Mapping[str, Any]  # this table's fields read so far, by field name
    tree: Mapping[str, Any]  # the config's sections read so far, by field name

    def error(self, problem: str, key: str = "") -> ConfigError:
        return self.table.error(key or self.key, problem)


Reader = Callable[[Reading], Any]


@dataclass(frozen=True, slots=True)
class Bounds:
    """An integer's allowed range, and how a message says it."""

    low: int
    high: int | None = None
    zero_means: str = ""  # what 0 stands for when it is the lowest value ("no limit")

    def problem(self, value: int, unit: str) -> str | None:
        if self.high is not None:
            inside = self.low <= value <= self.high
            return None if inside else f"must be between {self.low} and {self.high}, got {value}"
        if value >= self.low:
            return None
        if self.low == 0:
            return f"must be 0 ({self.zero_means}) or more" if self.zero_means else "must be 0 or more"
        if self.low == 1:
            return f"must be positive ({unit})" if unit else "must be 1 or more"
        return f"must be at least {self.low} {unit}".rstrip()


@dataclass(frozen=True, slots=True)
class Key:
    """How one field is read: the field's metadata."""

    read: Reader
    name: str = ""  # the TOML key, when it is not the field's name
    default_from: Callable[[Mapping[str, Any]], Any] | None = None  # a default from other sections
    unit: str = ""
    bounds: Bounds | None = None
    check: Callable[[Any], str | None] | None = None  # a value's problem, or None
    fills: bool = False  # the reader answers a mapping of several fields

    def problem(self, value: Any) -> str | None:
        if self.bounds is not None and (found := self.bounds.problem(value, self.unit)):
            return found
        return self.check(value) if self.check is not None else None


def _plain_reader(default: Any) -> Reader:
    kind = type(default)
    if kind is bool:
        return lambda r: r.table.boolean(r.key, r.default)
    if kind is int:
        return lambda r: r.table.integer(r.key, r.default)
    if kind is str:
        return lambda r: r.table.string(r.key, r.default)
    if kind is timedelta:
        return lambda r: r.table.duration(r.key, r.default)
    raise TypeError(f"setting({default!r}) needs read=: no plain reader for {kind.__name__}")


def setting(
    default: T,
    *,
    read: Reader | None = None,
    key: str = "",
    unit: str = "",
    at_least: int | None = None,
    at_most: int | None = None,
    zero_means: str = "",
    check: Callable[[Any], str | None] | None = None,
    default_from: Callable[[Mapping[str, Any]], Any] | None = None,
    repr: bool = True,  # as dataclasses.field's
) -> T:
    """A field read from its TOML key (the field's name unless ``key``); bool, int, str and timedelta need no reader."""
    bounds = None if at_least is None else Bounds(at_least, at_most, zero_means)
    spec = Key(read or _plain_reader(default), key, default_from, unit, bounds, check)
    return field(default=default, repr=repr, metadata={_METADATA: spec})


def filled_by_reader(default: T, read: Reader, *, repr: bool = True) -> T:
    """A field whose reader also answers other fields: it returns ``{field name: value}``."""
    return field(default=default, repr=repr, metadata={_METADATA: Key(read, fills=True)})


def section(kind: type[Any], where: str) -> Any:
    """A field that is a whole table, read by ``read_table``."""

    def read(r: Reading) -> Any:
        r.table.used.add(r.key)
        return read_table(kind, r.table.data.get(r.key, {}), where, r.table.source, r.earlier)

    return field(default=kind(), metadata={_METADATA: Key(read)})


# Readers for the kinds of value several keys share.
def choice(*options: str) -> Reader:
    return lambda r: r.table.choice(r.key, options, r.default)


def address(r: Reading) -> str:
    return r.table.address(r.key, r.default)


def optional_address(r: Reading) -> str:
    return r.table.optional_address(r.key, r.default)


def readable_file(r: Reading) -> str:
    return r.table.readable_file(r.key, r.default)


def duration_or_off(r: Reading) -> timedelta | None:
    return r.table.duration_or_off(r.key, r.default)


def store_url(role: StoreRole) -> Reader:
    return lambda r: r.table.store_url(r.key, r.default, role)


_KEYED_FIELDS: dict[type[Any], tuple[tuple[str, Key], ...]] = {}


def keyed_fields(kind: type[Any]) -> tuple[tuple[str, Key], ...]:
    """(field name, Key) of every field of ``kind`` read from TOML, in field order (kept per class:
    RegistryRoute is also built per request for unlisted registries)."""
    found = _KEYED_FIELDS.get(kind)
    if found is None:
        found = _KEYED_FIELDS[kind] = tuple(
            (f.name, f.metadata[_METADATA]) for f in fields(kind) if _METADATA in f.metadata
        )
    return found


class Validated:
    """A section value judged at construction, whoever builds it: bounds and checks, then ``check_together``."""

    __slots__ = ()

    def __post_init__(self) -> None:
        for name, spec in keyed_fields(type(self)):
            if not spec.fills and (problem := spec.problem(getattr(self, name))):
                raise KeyProblem(spec.name or name, problem)
        self.check_together()

    def check_together(self) -> None:
        """Rules over several keys of one section; raises KeyProblem."""


def read_table(kind: type[T], data: Any, where: str, source: str, tree: Mapping[str, Any]) -> T:
    """The one walker: every keyed field of ``kind`` read from the TOML table ``data``, then judged
    (bounds, checks, then ``check_together``); then keys nobody declared are refused."""
    table = Table(data, where, source)
    values: dict[str, Any] = {}
    for name, spec in keyed_fields(kind):
        default = spec.default_from(tree) if spec.default_from is not None else _default(kind, name)
        value = spec.read(Reading(table, spec.name or name, default, values, tree))
        if spec.fills:
            values.update(value)
        else:
            values[name] = value
    try:
        result = kind(**values)
    except KeyProblem as exc:
        raise table.error(exc.key, exc.problem) from None
    table.done()
    return result


def _default(kind: type[Any], name: str) -> Any:
    spec = next(f for f in fields(kind) if f.name == name)
    return None if spec.default is dataclasses.MISSING else spec.default
