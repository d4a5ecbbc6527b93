"""Typed readers for TOML tables that collect every problem with its file, key path, value and reason.

The config loader and each driver plugin read their tables through :class:`Table`. A reader never
raises on bad input: it records a problem and returns a harmless placeholder, so one pass over a file
reports all of its errors at once. ``Table.finish()`` reports the keys nobody asked for (typos).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError, SecretError

T = TypeVar("T")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

#: The rule for every name a user gives (gateway id, site, devices, points, buses, commands, ...).
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
NAME_WHY = "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)


def valid_name(name: str) -> bool:
    """Whether ``name`` follows :data:`NAME_PATTERN`."""
    return _NAME.fullmatch(name) is not None


def key_path(parent: str, key: str | int) -> str:
    """Join a key to a dotted TOML path, quoting keys that are not bare and indexing arrays."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    part = key if _BARE_KEY.match(key) else '"' + key.replace('"', '\\"') + '"'
    return f"{parent}.{part}" if parent else part


def _show(value: object) -> str:
    """A short, TOML-like rendering of a bad value for an error line."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return '"' + text.replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "an array" if len(repr(value)) > 60 else repr(value)
    return repr(value)


class Problems:
    """Collects configuration problems for one file.

    ``base_dir`` anchors relative paths in the file (the config file's folder). ``offline`` skips the
    checks that only hold on the target machine (files, environment variables, serial ports exist), for
    validating a config on a laptop before it is deployed.
    """

    def __init__(self, file: str, *, base_dir: Path | None = None, offline: bool = False) -> None:
        self.file = file
        self.base_dir = base_dir if base_dir is not None else Path.cwd()
        self.offline = offline
        self.lines: list[str] = []

    def add(self, path: str, why: str, value: object = ..., *, secret: bool = False) -> None:
        """Record that ``path`` is wrong. ``value`` is shown unless it is a secret (then only hinted)."""
        if value is ...:
            self.lines.append(f"{self.file}: {path}: {why}")
        elif secret:
            self.lines.append(f"{self.file}: {path} = <hidden>: {why}")
        else:
            self.lines.append(f"{self.file}: {path} = {_show(value)}: {why}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret by reference: ``env:NAME`` or ``file:/path``. Its value never appears in repr or logs."""

    reference: str

    def __repr__(self) -> str:
        return f"Secret({self.reference!r})"

    def __str__(self) -> str:
        return self.reference

    def reveal(self) -> str:
        """Resolve the reference now (a file is re-read each time, so rotated secrets are picked up).

        Blocking file I/O: call from a worker thread on the event loop's hot paths.
        """
        kind, _, where = self.reference.partition(":")
        if kind == "env":
            value = os.environ.get(where)
            if value is None:
                raise SecretError(f"environment variable {where} is not set")
            return value
        try:
            return Path(where).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {where}: {exc.strerror}") from exc


_MISSING: object = object()
_ENTRIES_WHY = (
    "expected {what}s keyed by name ([{where}.<name>] tables) or an array of tables each with a name"
)


class Table:
    """A view of one TOML table that records problems instead of raising."""

    def __init__(self, data: Mapping[str, object], where: str, problems: Problems) -> None:
        self.data = data
        #: The table's dotted key path in the file, e.g. ``devices.meter-1``.
        self.where = where
        self.problems = problems
        self._used: set[str] = set()

    # -- bookkeeping -------------------------------------------------------------------------------
    def here(self, key: str | int) -> str:
        return key_path(self.where, key)

    def problem(self, key: str | int, why: str, value: object = ..., *, secret: bool = False) -> None:
        self.problems.add(self.here(key), why, value, secret=secret)

    def has(self, key: str) -> bool:
        return key in self.data

    def consume(self, *keys: str) -> None:
        """Mark keys as handled elsewhere (so :meth:`finish` does not call them unknown)."""
        self._used.update(keys)

    def finish(self) -> None:
        """Report every key that no reader asked for."""
        for key in self.data:
            if key not in self._used:
                self.problems.add(self.here(key), "unknown key")

    def _get(self, key: str, required: bool) -> object:
        self._used.add(key)
        if key in self.data:
            return self.data[key]
        if required:
            self.problem(key, "is required")
        return _MISSING

    # -- scalars -----------------------------------------------------------------------------------
    def string(
        self,
        key: str,
        default: str | None = None,
        *,
        choices: Sequence[str] | None = None,
        pattern: str | None = None,
        pattern_why: str = "",
    ) -> str:
        raw = self._get(key, default is None)
        if raw is _MISSING:
            return default if default is not None else ""
        if not isinstance(raw, str):
            self.problem(key, "expected a string", raw)
            return default or ""
        if choices is not None and raw not in choices:
            self.problem(key, "expected one of " + ", ".join(f'"{c}"' for c in choices), raw)
            return default if default is not None else choices[0]
        if pattern is not None and not re.fullmatch(pattern, raw):
            self.problem(key, pattern_why or f"does not match {pattern}", raw)
        return raw

    def optional_string(self, key: str) -> str | None:
        raw = self._get(key, False)
        if raw is _MISSING:
            return None
        if not isinstance(raw, str):
            self.problem(key, "expected a string", raw)
            return None
        return raw

    def integer(
        self, key: str, default: int | None = None, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self._get(key, default is None)
        if raw is _MISSING:
            return default if default is not None else 0
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.problem(key, "expected an integer", raw)
            return default if default is not None else 0
        if minimum is not None and raw < minimum:
            self.problem(key, f"must be at least {minimum}", raw)
        if maximum is not None and raw > maximum:
            self.problem(key, f"must be at most {maximum}", raw)
        return raw

    def optional_integer(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        if key not in self.data:
            self._used.add(key)
            return None
        return self.integer(key, 0, minimum=minimum, maximum=maximum)

    def number(
        self,
        key: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> float:
        raw = self._get(key, default is None)
        if raw is _MISSING:
            return default if default is not None else 0.0
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            self.problem(key, "expected a number", raw)
            return default if default is not None else 0.0
        value = float(raw)
        if math.isnan(value) or math.isinf(value):
            self.problem(key, "expected a finite number", raw)
            return default if default is not None else 0.0
        if positive and value <= 0:
            self.problem(key, "must be greater than 0", raw)
        if minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum:g}", raw)
        if maximum is not None and value > maximum:
            self.problem(key, f"must be at most {maximum:g}", raw)
        return value

    def optional_number(
        self, key: str, *, minimum: float | None = None, maximum: float | None = None, positive: bool = False
    ) -> float | None:
        if key not in self.data:
            self._used.add(key)
            return None
        return self.number(key, 0.0, minimum=minimum, maximum=maximum, positive=positive)

    def boolean(self, key: str, default: bool) -> bool:
        raw = self._get(key, False)
        if raw is _MISSING:
            return default
        if not isinstance(raw, bool):
            self.problem(key, "expected true or false", raw)
            return default
        return raw

    def raw(self, key: str) -> object | None:
        """The value as TOML gave it (for keys whose type depends on another key), or None."""
        raw = self._get(key, False)
        return None if raw is _MISSING else raw

    def strings(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        raw = self._get(key, False)
        if raw is _MISSING:
            return tuple(default)
        if isinstance(raw, str):
            return (raw,)
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            self.problem(key, "expected a string or an array of strings", raw)
            return tuple(default)
        return tuple(str(v) for v in raw)

    def secret(self, key: str, *, required: bool = True) -> Secret | None:
        """A secret by reference. Inline values are refused so that a secret never sits in a config file."""
        raw = self._get(key, required)
        if raw is _MISSING:
            return None
        if not isinstance(raw, str):
            self.problem(key, "expected a secret reference string (env:NAME or file:/path)", raw, secret=True)
            return None
        kind, sep, where = raw.partition(":")
        if not sep or kind not in ("env", "file") or not where:
            self.problem(
                key,
                "secrets are given by reference: env:NAME or file:/path, never inline",
                raw,
                secret=True,
            )
            return None
        if kind == "file" and not Path(where).is_absolute():
            where = str(self.problems.base_dir / where)
            raw = f"file:{where}"
        if not self.problems.offline:
            if kind == "env" and where not in os.environ:
                self.problem(key, f"environment variable {where} is not set", raw)
            if kind == "file" and not os.access(where, os.R_OK):
                self.problem(key, "file does not exist or is not readable", raw)
        return Secret(raw)

    def path(self, key: str, *, required: bool = False, must_exist: bool = True) -> Path | None:
        """A file path; relative paths are taken from the config file's folder."""
        raw = self._get(key, required)
        if raw is _MISSING:
            return None
        if not isinstance(raw, str) or not raw:
            self.problem(key, "expected a path", raw)
            return None
        path = self.problems.base_dir / raw
        if must_exist and not self.problems.offline and not path.exists():
            self.problem(key, "no such file", raw)
        return path

    # -- nesting -----------------------------------------------------------------------------------
    def table(self, key: str, *, required: bool = False) -> Table | None:
        raw = self._get(key, required)
        if raw is _MISSING:
            return None
        if not isinstance(raw, Mapping):
            self.problem(key, "expected a table", raw)
            return None
        return Table(raw, self.here(key), self.problems)

    def table_or_empty(self, key: str) -> Table:
        return self.table(key) or Table({}, self.here(key), self.problems)

    def named_tables(self, key: str) -> list[tuple[str, Table]]:
        """``[key.<name>]`` tables, in file order."""
        outer = self.table(key)
        if outer is None:
            return []
        result = []
        for name, value in outer.data.items():
            outer.consume(name)
            if not isinstance(value, Mapping):
                outer.problem(name, "expected a table", value)
                continue
            result.append((name, Table(value, outer.here(name), self.problems)))
        return result

    def named_entries(self, key: str, *, what: str = "entry") -> list[tuple[str, Table]]:
        """Named sub-entries written either way, as ``(name, table)`` in file order.

        Keyed by name (preferred: TOML itself refuses a name given twice)::

            [devices.x.points.voltage]          # or points = { voltage = { ... } }

        or as an array of tables each with a ``name`` key::

            [[devices.x.points]]                # or points = [ { name = "voltage", ... } ]
            name = "voltage"

        Names follow :data:`NAME_PATTERN`. In the keyed form a ``name`` key may repeat the key but
        not contradict it. In the array form a name used twice is reported and the later entry left
        out, so a caller never sees a duplicate. An entry that is not a table, or an array entry
        without a usable name, is reported and left out. ``what`` names the entries in messages
        ("point", "command"). A missing key gives an empty list; whether that is allowed is the
        caller's business.
        """
        raw = self._get(key, False)
        if raw is _MISSING:
            return []
        where = self.here(key)
        if isinstance(raw, Mapping):
            return self._keyed_entries(raw, where, what)
        if isinstance(raw, list):
            return self._array_entries(raw, where, what)
        self.problem(key, _ENTRIES_WHY.format(what=what, where=where), raw)
        return []

    def _keyed_entries(self, raw: Mapping[str, object], where: str, what: str) -> list[tuple[str, Table]]:
        if raw and not any(isinstance(v, Mapping) for v in raw.values()):
            # One plain [x.points] table of settings: a single entry written without its name.
            self.problems.add(where, _ENTRIES_WHY.format(what=what, where=where))
            return []
        result: list[tuple[str, Table]] = []
        for name, value in raw.items():
            path = key_path(where, name)
            if not isinstance(value, Mapping):
                self.problems.add(path, f"expected a table (one per {what}, keyed by its name)", value)
                continue
            if not valid_name(name):
                self.problems.add(path, NAME_WHY, name)
            entry = Table(value, path, self.problems)
            if "name" in value:
                entry.consume("name")
                if value["name"] != name:
                    entry.problem(
                        "name",
                        f'contradicts the table key "{name}" (the key names the {what}; leave name out)',
                        value["name"],
                    )
            result.append((name, entry))
        return result

    def _array_entries(self, raw: list[object], where: str, what: str) -> list[tuple[str, Table]]:
        result: list[tuple[str, Table]] = []
        first: dict[str, str] = {}
        for i, item in enumerate(raw):
            path = key_path(where, i)
            if not isinstance(item, Mapping):
                self.problems.add(path, f'expected a table with name = "..." (one per {what})', item)
                continue
            entry = Table(item, path, self.problems)
            name = entry.string("name", pattern=NAME_PATTERN, pattern_why=NAME_WHY)
            if not name:  # missing, empty or not a string: reported by string()
                continue
            if name in first:
                entry.problem("name", f"duplicate {what} name (first at {first[name]})", name)
                continue
            first[name] = path
            result.append((name, entry))
        return result

    def array_of_tables(self, key: str) -> list[Table]:
        """``[[key]]`` entries (or an inline array of tables), in file order."""
        raw = self._get(key, False)
        if raw is _MISSING:
            return []
        if not isinstance(raw, list):
            self.problem(key, "expected an array of tables", raw)
            return []
        result = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                self.problems.add(key_path(self.here(key), i), "expected a table", item)
                continue
            result.append(Table(item, key_path(self.here(key), i), self.problems))
        return result

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)


# -- settings several drivers share -------------------------------------------------------------------------
#: Parity as written in a config file, and pyserial's letter for it.
PARITIES = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


@dataclass(frozen=True, slots=True)
class SerialLine:
    """A serial port's line settings, read the same way for a Modbus bus and a serial sensor."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    #: pyserial's letter (N, E, O, M or S); written ``none``, ``even``, ``odd``... in the file.
    parity: str = "N"
    stopbits: float = 1

    @property
    def bits_per_character(self) -> float:
        """Start bit, data bits, parity bit and stop bits: what one character costs on the wire."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits


def read_serial_line(
    table: Table,
    *,
    bytesizes: tuple[int, ...] = (5, 6, 7, 8),
    parities: tuple[str, ...] = tuple(PARITIES),
) -> SerialLine:
    """``port``, ``baudrate``, ``bytesize``, ``parity`` and ``stopbits`` of ``table``, defaults from
    :class:`SerialLine`; a protocol narrows the bytesizes and parities it allows."""
    defaults = SerialLine(port="")
    port = table.string("port")
    baudrate = table.integer("baudrate", defaults.baudrate, minimum=50, maximum=4_000_000)
    bytesize = table.integer("bytesize", defaults.bytesize, minimum=min(bytesizes), maximum=max(bytesizes))
    default_parity = next(word for word, letter in PARITIES.items() if letter == defaults.parity)
    parity = table.string("parity", default_parity, choices=parities)
    stopbits = table.number("stopbits", defaults.stopbits)
    if stopbits not in (1, 1.5, 2):
        table.problem("stopbits", "expected 1, 1.5 or 2", stopbits)
        stopbits = defaults.stopbits
    return SerialLine(
        port=port, baudrate=baudrate, bytesize=bytesize, parity=PARITIES.get(parity, "N"), stopbits=stopbits
    )


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls``: config parsers read their defaults from the
    frozen config types, so each default is written once (a slotted dataclass has no class attribute)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise TypeError(f"{cls.__name__} has no field {name!r}")
