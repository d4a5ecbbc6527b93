"""Parsers: pure functions from a frame's payload to named fields, and from fields to readings.

A parser returns a ``dict`` of field name to raw value (``None`` for a field that is present but empty)
or a :class:`Rejected` saying why the frame made no sense. It never raises on any input. Points then
pick their field and convert it to their type with scale and offset (:class:`FramePlan`).
"""

from __future__ import annotations

import csv
import enum
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from drivers.serial.config import (
    CsvParser,
    JsonParser,
    KeyValueParser,
    NmeaParser,
    ParserSpec,
    PointSpec,
    RegexParser,
    StructParser,
)
from drivers.serial.framing import Counters
from gateway.model import Quality, Reading, Value

FieldValue = str | int | float | bool | None
Fields = dict[str, FieldValue]

#: A field a parser adds when the device itself marks part of the frame invalid: its value names the
#: fields that must not be published as good (space-separated), and it says why after a colon.
INVALID_FIELDS = "\x00invalid"


class Rejected(enum.Enum):
    UNDECODABLE = "undecodable"
    UNPARSABLE = "unparsable"


Parse = Callable[[bytes], Fields | Rejected]


def _text(payload: bytes, encoding: str) -> str | Rejected:
    try:
        return payload.decode(encoding)
    except UnicodeDecodeError:
        return Rejected.UNDECODABLE


def _cell(text: str) -> str | None:
    text = text.strip()
    return text or None


def regex_parser(spec: RegexParser) -> Parse:
    pattern = re.compile(spec.pattern)

    def parse(payload: bytes) -> Fields | Rejected:
        text = _text(payload, spec.encoding)
        if isinstance(text, Rejected):
            return text
        match = pattern.search(text)
        if match is None:
            return Rejected.UNPARSABLE
        return {k: (None if v is None else _cell(v)) for k, v in match.groupdict().items()}

    return parse


def csv_parser(spec: CsvParser) -> Parse:
    def parse(payload: bytes) -> Fields | Rejected:
        text = _text(payload, spec.encoding)
        if isinstance(text, Rejected):
            return text
        try:
            row = next(csv.reader([text], delimiter=spec.delimiter), [])
        except csv.Error:
            return Rejected.UNPARSABLE
        if not row:
            return Rejected.UNPARSABLE
        fields: Fields = {str(i): _cell(v) for i, v in enumerate(row)}
        for name, value in zip(spec.columns, row, strict=False):
            fields[name] = _cell(value)
        return fields

    return parse


def json_parser(spec: JsonParser) -> Parse:
    def parse(payload: bytes) -> Fields | Rejected:
        text = _text(payload, spec.encoding)
        if isinstance(text, Rejected):
            return text
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            return Rejected.UNPARSABLE
        if not isinstance(document, dict):
            return Rejected.UNPARSABLE
        # Nested objects and arrays become dotted keys ("wind.speed", "temps.0"); iterative so that a
        # deeply nested line cannot exhaust the stack.
        fields: Fields = {}
        stack: list[tuple[str, object]] = [("", document)]
        while stack:
            prefix, node = stack.pop()
            items: list[tuple[str, object]]
            if isinstance(node, dict):
                items = [(str(k), v) for k, v in node.items()]
            elif isinstance(node, list):
                items = [(str(i), v) for i, v in enumerate(node)]
            else:
                continue
            for key, value in items:
                path = f"{prefix}.{key}" if prefix else key
                if isinstance(value, dict | list):
                    stack.append((path, value))
                elif value is None or isinstance(value, str | int | float | bool):
                    fields[path] = value
        return fields

    return parse


def keyvalue_parser(spec: KeyValueParser) -> Parse:
    def parse(payload: bytes) -> Fields | Rejected:
        text = _text(payload, spec.encoding)
        if isinstance(text, Rejected):
            return text
        fields: Fields = {}
        for pair in text.split(spec.separator):
            key, sep, value = pair.partition(spec.assign)
            key = key.strip()
            if sep and key:
                fields[key] = _cell(value)
        return fields if fields else Rejected.UNPARSABLE

    return parse


# -- NMEA 0183 -------------------------------------------------------------------------------------------
class _Malformed(Exception):
    """A field of a sentence that passed framing does not have its documented form."""


def _nmea_float(text: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise _Malformed from exc
    if not math.isfinite(value):
        raise _Malformed
    return value


def _nmea_int(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not text.isascii():
        raise _Malformed
    return int(text)


def _nmea_coordinate(text: str, hemisphere: str, positive: str, negative: str, limit: int) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` and N/S or E/W to signed decimal degrees."""
    if not text:
        return None
    value = _nmea_float(text)
    if value is None or value < 0 or hemisphere not in (positive, negative):
        raise _Malformed
    degrees = int(value // 100)
    minutes = value - degrees * 100
    if minutes >= 60 or degrees > limit:
        raise _Malformed
    result = degrees + minutes / 60
    if result > limit:
        raise _Malformed
    return -result if hemisphere == negative else result


def _nmea_time(text: str) -> str | None:
    """``hhmmss[.sss]`` to ``hh:mm:ss[.sss]``."""
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    if len(whole) != 6 or not whole.isdigit() or not whole.isascii() or (fraction and not fraction.isdigit()):
        raise _Malformed
    hh, mm, ss = int(whole[:2]), int(whole[2:4]), int(whole[4:])
    if hh > 23 or mm > 59 or ss > 60:
        raise _Malformed
    return f"{whole[:2]}:{whole[2:4]}:{whole[4:]}" + (f".{fraction}" if fraction else "")


def _nmea_date(text: str) -> str | None:
    """``ddmmyy`` to ``yyyy-mm-dd``: NMEA 0183 sends a two-digit year, and GPS began in 1980."""
    if not text:
        return None
    if len(text) != 6 or not text.isdigit() or not text.isascii():
        raise _Malformed
    dd, mm = int(text[:2]), int(text[2:4])
    if not (1 <= dd <= 31 and 1 <= mm <= 12):
        raise _Malformed
    century = "19" if int(text[4:]) >= 80 else "20"
    return f"{century}{text[4:]}-{text[2:4]}-{text[:2]}"


def _gga(f: list[str]) -> Fields:
    if len(f) < 10:
        raise _Malformed
    return {
        "time": _nmea_time(f[1]),
        "latitude": _nmea_coordinate(f[2], f[3], "N", "S", 90),
        "longitude": _nmea_coordinate(f[4], f[5], "E", "W", 180),
        "fix_quality": _nmea_int(f[6]),
        "satellites": _nmea_int(f[7]),
        "hdop": _nmea_float(f[8]),
        "altitude": _nmea_float(f[9]),
        "geoid_separation": _nmea_float(f[11]) if len(f) > 11 else None,
    }


def _rmc(f: list[str]) -> Fields:
    if len(f) < 10:
        raise _Malformed
    time, date = _nmea_time(f[1]), _nmea_date(f[9])
    if f[2] not in ("A", "V", ""):
        raise _Malformed
    variation = _nmea_float(f[10]) if len(f) > 10 else None
    if variation is not None and len(f) > 11 and f[11] == "W":
        variation = -variation
    return {
        "time": time,
        "status": f[2] or None,
        "valid": f[2] == "A",
        "latitude": _nmea_coordinate(f[3], f[4], "N", "S", 90),
        "longitude": _nmea_coordinate(f[5], f[6], "E", "W", 180),
        "speed": _nmea_float(f[7]),
        "course": _nmea_float(f[8]),
        "date": date,
        "utc": f"{date}T{time}Z" if date and time else None,
        "magnetic_variation": variation,
    }


def _vtg(f: list[str]) -> Fields:
    if len(f) < 9:
        raise _Malformed
    return {
        "course": _nmea_float(f[1]),
        "course_magnetic": _nmea_float(f[3]),
        "speed": _nmea_float(f[5]),
        "speed_kmh": _nmea_float(f[7]),
    }


def _gll(f: list[str]) -> Fields:
    if len(f) < 7:
        raise _Malformed
    if f[6] not in ("A", "V", ""):
        raise _Malformed
    return {
        "latitude": _nmea_coordinate(f[1], f[2], "N", "S", 90),
        "longitude": _nmea_coordinate(f[3], f[4], "E", "W", 180),
        "time": _nmea_time(f[5]),
        "status": f[6] or None,
        "valid": f[6] == "A",
    }


_SENTENCES: dict[str, Callable[[list[str]], Fields]] = {"GGA": _gga, "RMC": _rmc, "VTG": _vtg, "GLL": _gll}

#: Fields of a sentence that the receiver repeats stale when it has no fix (GGA fix quality 0, RMC/GLL
#: status V): they go out with bad quality and the reason "no fix", never as good values.
_FIX_FIELDS = {
    "GGA": ("latitude", "longitude", "altitude", "geoid_separation", "hdop"),
    "RMC": ("latitude", "longitude", "speed", "course", "magnetic_variation"),
    "GLL": ("latitude", "longitude"),
}


def _no_fix(kind: str, values: Fields) -> bool:
    if kind == "GGA":
        return values.get("fix_quality") in (0, None)
    return kind in ("RMC", "GLL") and values.get("status") != "A"


def nmea_parser(spec: NmeaParser) -> Parse:
    def parse(payload: bytes) -> Fields | Rejected:
        text = _text(payload, "ascii")
        if isinstance(text, Rejected):
            return text
        text = text.strip()
        star = text.rfind("*")
        if star >= 0 and len(text) - star == 3:
            text = text[:star]
        if not text.startswith(("$", "!")):
            return Rejected.UNPARSABLE
        f = text[1:].split(",")
        address = f[0]
        # Talker (GP, GN, GL, ...) then sentence type; proprietary ($P...) sentences are not decoded.
        kind = address[2:] if len(address) == 5 and not address.startswith("P") else ""
        decode = _SENTENCES.get(kind)
        if decode is None:
            # A well-formed sentence we do not map (GSV, GSA, ...): nothing to report, nothing wrong.
            return {"sentence": kind or address} if address.isalnum() else Rejected.UNPARSABLE
        try:
            values = decode(f)
        except _Malformed:
            return Rejected.UNPARSABLE
        fields: Fields = {"sentence": kind}
        for key, value in values.items():
            fields[key] = value
            fields[f"{kind}.{key}"] = value
        if _no_fix(kind, values):
            names = [n for key in _FIX_FIELDS[kind] for n in (key, f"{kind}.{key}")]
            fields[INVALID_FIELDS] = " ".join(names) + ":no fix"
        return fields

    return parse


def struct_parser(spec: StructParser) -> Parse:
    layout = struct.Struct(spec.format)

    def parse(payload: bytes) -> Fields | Rejected:
        if len(payload) != layout.size:
            return Rejected.UNPARSABLE
        values = layout.unpack(payload)
        fields: Fields = {}
        for i, value in enumerate(values):
            # Byte-string values ("4s") become text with padding NULs removed.
            item = value.rstrip(b"\x00").decode("latin-1") if isinstance(value, bytes) else value
            fields[str(i)] = item
            if i < len(spec.fields):
                fields[spec.fields[i]] = item
        return fields

    return parse


def build_parser(spec: ParserSpec) -> Parse:
    if isinstance(spec, RegexParser):
        return regex_parser(spec)
    if isinstance(spec, CsvParser):
        return csv_parser(spec)
    if isinstance(spec, JsonParser):
        return json_parser(spec)
    if isinstance(spec, KeyValueParser):
        return keyvalue_parser(spec)
    if isinstance(spec, NmeaParser):
        return nmea_parser(spec)
    return struct_parser(spec)


# -- fields to readings ----------------------------------------------------------------------------------
_TRUE = frozenset({"1", "true", "on", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "off", "no", "n", "f"})


def _shown(raw: FieldValue) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 64:
        return f"<{'-' if raw < 0 else ''}integer of {raw.bit_length()} bits>"
    text = repr(raw)
    return text if len(text) <= 24 else text[:21] + "..."


def convert(point: PointSpec, raw: FieldValue) -> tuple[Value | None, str | None]:
    """The point's value from a raw field, or ``(None, reason)``; never raises, whatever the device sent
    (a 311-digit integer overflows a float: that is a bad reading, not an exception)."""
    try:
        return _convert(point, raw)
    except (ArithmeticError, ValueError):
        return None, f"out of range: {_shown(raw)}"


def _convert(point: PointSpec, raw: FieldValue) -> tuple[Value | None, str | None]:
    if raw is None:
        return None, "no value in frame"
    if point.type == "string":
        if isinstance(raw, bool):
            return ("true" if raw else "false"), None
        return str(raw), None
    if point.type == "bool":
        if isinstance(raw, bool):
            return raw, None
        if isinstance(raw, int | float):
            return raw != 0, None
        word = raw.strip().lower()
        if word in _TRUE:
            return True, None
        if word in _FALSE:
            return False, None
        return None, f"not a bool: {_shown(raw)}"
    number: float | int
    if isinstance(raw, bool):
        number = int(raw)
    elif isinstance(raw, int | float):
        number = raw
    else:
        text = raw.strip()
        try:
            number = int(text) if point.type == "int" and text.lstrip("+-").isdigit() else float(text)
        except (ValueError, OverflowError):
            return None, f"not a number: {_shown(raw)}"
    if isinstance(number, float) and not math.isfinite(number):
        return None, f"not a finite number: {_shown(raw)}"
    if point.type == "int":
        if isinstance(number, float):
            if not number.is_integer():
                return None, f"not an integer: {_shown(raw)}"
            number = int(number)
        return number * int(point.scale) + int(point.offset), None
    value = float(number) * point.scale + point.offset
    if not math.isfinite(value):
        return None, f"out of range: {_shown(raw)}"
    return value, None


@dataclass(frozen=True, slots=True)
class FramePlan:
    """A parser and the points it feeds, compiled once per stream or command."""

    device: str
    parse: Parse
    points: tuple[PointSpec, ...]
    #: Polled replies must carry every point (missing ones are BAD); stream frames carry what they carry.
    missing_is_bad: bool
    counters: Counters

    def readings(self, payload: bytes, now: float) -> list[Reading] | Rejected:
        fields = self.parse(payload)
        if isinstance(fields, Rejected):
            if fields is Rejected.UNDECODABLE:
                self.counters.undecodable += 1
            else:
                self.counters.unparsable += 1
            return fields
        invalid: dict[str, str] = {}
        marked = fields.get(INVALID_FIELDS)
        if isinstance(marked, str):
            names, _, why = marked.partition(":")
            invalid = dict.fromkeys(names.split(), why)
        out: list[Reading] = []
        for point in self.points:
            if point.field in invalid:
                out.append(self.bad(point, now, invalid[point.field]))
                continue
            if point.field not in fields:
                if self.missing_is_bad:
                    out.append(self.bad(point, now, "not in reply"))
                continue
            value, reason = convert(point, fields[point.field])
            if reason is not None:
                out.append(self.bad(point, now, reason))
            else:
                out.append(Reading(self.device, point.name, value, point.unit, now))
        return out

    def bad(self, point: PointSpec, now: float, reason: str) -> Reading:
        return Reading(self.device, point.name, None, point.unit, now, Quality.BAD, reason)

    def all_bad(self, now: float, reason: str) -> list[Reading]:
        return [self.bad(p, now, reason) for p in self.points]


def build_plan(
    device: str, spec: ParserSpec, points: tuple[PointSpec, ...], counters: Counters, *, missing_is_bad: bool
) -> FramePlan:
    return FramePlan(device, build_parser(spec), points, missing_is_bad, counters)
