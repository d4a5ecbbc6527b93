"""Cloud-to-device commands on the wire: the request JSON parsed strictly, the response JSON built.

Nothing here raises on a payload but :class:`Malformed`; numbers that JSON cannot carry (NaN, infinities)
are refused in requests and encoded as ``null`` with a bad quality in responses.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.model import (
    Quality,
    Reading,
    Value,
    clean_reading,
    json_value,
)

#: Names in commands (points, serial commands): what a config may declare.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


#: At most this many points in one read command.
MAX_READ_POINTS = 256


#: Longest string value a write may carry (Modbus strings are at most 250 characters).
MAX_STRING_VALUE = 256


_TOP_KEYS = frozenset({"write", "read", "send", "expires_at"})


# -- commands and their parser ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WritePoint:
    point: str
    value: Value

    def describe(self) -> str:
        return f"write {self.point} = {self.value!r}"


@dataclass(frozen=True, slots=True)
class ReadPoints:
    #: Empty: every point of the device.
    points: tuple[str, ...] = ()

    def describe(self) -> str:
        return "read " + (", ".join(self.points) if self.points else "all points")


@dataclass(frozen=True, slots=True)
class SendCommand:
    command: str

    def describe(self) -> str:
        return f"send {self.command}"


Command = WritePoint | ReadPoints | SendCommand


@dataclass(frozen=True, slots=True)
class Request:
    command: Command
    #: Unix seconds after which the command must not run (from the JSON), or None.
    expires_at: float | None = None


class Malformed(ValueError):
    """The payload is not a command; the text says why (short, safe to log and send back)."""


def _reject_constant(name: str) -> Any:
    raise Malformed(f"{name} is not a number JSON allows")


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise Malformed(f"{what} must be a name (1-64 letters, digits, '.', '_', '-')")
    return value


def _value(value: object) -> Value:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Malformed("value must be a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING_VALUE:
            raise Malformed(f"value: strings are at most {MAX_STRING_VALUE} characters")
        return value
    raise Malformed("value must be a number, a string, true or false")


def parse_command(payload: bytes, max_payload: int) -> Request:
    """The command in ``payload``; raises :class:`Malformed` for anything else (never another error)."""
    if len(payload) > max_payload:
        raise Malformed(f"payload of {len(payload)} bytes exceeds the limit of {max_payload}")
    try:
        text = payload.decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant)
    except Malformed:
        raise
    except UnicodeDecodeError as exc:
        raise Malformed("payload is not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:
        raise Malformed("payload is not valid JSON") from exc
    if not isinstance(data, dict):
        raise Malformed("payload must be a JSON object")
    unknown = sorted(k for k in data if k not in _TOP_KEYS)
    if unknown:
        shown = ", ".join(repr(k[:32]) for k in unknown[:3])
        raise Malformed(f"unknown key(s) {shown}; a command has one of write, read, send (and expires_at)")
    kinds = [k for k in ("write", "read", "send") if k in data]
    if len(kinds) != 1:
        raise Malformed("a command has exactly one of write, read, send")
    expires_at: float | None = None
    if "expires_at" in data:
        raw = data["expires_at"]
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise Malformed("expires_at must be a number (Unix seconds)")
        expires_at = float(raw)
    body = data[kinds[0]]
    command: Command
    if kinds[0] == "write":
        if not isinstance(body, dict) or set(body) != {"point", "value"}:
            raise Malformed('write needs {"point": <name>, "value": <value>} and nothing else')
        command = WritePoint(_name(body["point"], "write.point"), _value(body["value"]))
    elif kinds[0] == "read":
        points: tuple[str, ...] = ()
        if body is None or body == "all":
            pass
        elif isinstance(body, dict) and set(body) <= {"points"}:
            raw_points = body.get("points", [])
            if raw_points == "all":
                raw_points = []
            if not isinstance(raw_points, list) or len(raw_points) > MAX_READ_POINTS:
                raise Malformed(f"read.points must be a list of at most {MAX_READ_POINTS} point names")
            points = tuple(dict.fromkeys(_name(p, "read.points[]") for p in raw_points))
        else:
            raise Malformed('read needs {"points": [<name>, ...]} (or {} for all points)')
        command = ReadPoints(points)
    else:
        if not isinstance(body, dict) or set(body) != {"command"}:
            raise Malformed('send needs {"command": <name>} and nothing else')
        command = SendCommand(_name(body["command"], "send.command"))
    return Request(command, expires_at)


# -- outcomes -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    #: ``done``, ``refused`` or ``failed``.
    status: str
    #: One word for refused/failed: malformed, expired, busy, not-writable, out-of-range, invalid-value,
    #: unknown-device, unknown-point, unknown-command, not-supported, timeout, device-error.
    reason: str | None = None
    detail: str | None = None
    readings: tuple[Reading, ...] = ()
    reply: str | None = None

    def summary(self) -> str:
        if self.status == "done":
            parts = [f"{r.point} = {_shown(r)}" for r in self.readings[:8]]
            more = f" (+{len(self.readings) - 8} more)" if len(self.readings) > 8 else ""
            text = ", ".join(parts) + more
            if self.reply is not None:
                text = (text + "; " if text else "") + f"reply {self.reply[:80]!r}"
            return "done" + (f": {text}" if text else "")
        return f"{self.status} ({self.reason}): {self.detail}"


def _shown(r: Reading) -> str:
    if r.quality is Quality.BAD:
        return f"BAD ({r.reason})"
    return f"{r.value!r}" + (f" {r.unit}" if r.unit else "")


def _reading_json(r: Reading) -> dict[str, object]:
    # The router's rule: a value that is not a finite number is null with a bad quality.
    r = clean_reading(r)
    out: dict[str, object] = {"point": r.point, "value": r.value, "timestamp": round(r.timestamp, 3)}
    if r.unit:
        out["unit"] = r.unit
    if r.quality is not Quality.GOOD:
        out["quality"] = r.quality.value
        out["reason"] = r.reason
    return out


def response_payload(device: str | None, request: Request | None, outcome: Outcome) -> bytes:
    """The JSON a requester gets back (see gateway/commands/README.md, "Responses")."""
    body: dict[str, object] = {"status": outcome.status}
    if device is not None:
        body["device"] = device
    if request is not None:
        cmd = request.command
        if isinstance(cmd, WritePoint):
            body["command"] = "write"
            body["point"] = cmd.point
        elif isinstance(cmd, ReadPoints):
            body["command"] = "read"
        else:
            body["command"] = "send"
            body["name"] = cmd.command
    if outcome.status == "done":
        if request is not None and isinstance(request.command, WritePoint) and outcome.readings:
            back = clean_reading(outcome.readings[0])
            body["value"] = back.value
            if back.unit:
                body["unit"] = back.unit
        body["readings"] = [_reading_json(r) for r in outcome.readings]
        if outcome.reply is not None:
            body["reply"] = json_value(outcome.reply)
    else:
        body["reason"] = outcome.reason
        body["detail"] = json_value(outcome.detail)
    return json.dumps(body, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")
