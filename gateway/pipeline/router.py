"""Turns readings into MQTT messages: topic per device (or point), JSON payload, sequence numbers.

Payloads (UTF-8 JSON) carry the gateway's sequence number and the sampling time so that consumers can
order and de-duplicate (Event Grid does not guarantee ordering). Batched (default), one poll cycle::

    {"seq": 7, "gateway": "gw-1", "device": "boiler", "ts": 1764400000.5,
     "points": {"temperature": {"value": 71.2, "unit": "°C", "quality": "good"}}}

Unbatched, one reading::

    {"seq": 8, "gateway": "gw-1", "device": "boiler", "ts": 1764400000.5,
     "point": "temperature", "value": 71.2, "unit": "°C", "quality": "good"}

A reading that is not good carries ``"reason"``; a value that is not a finite number (a meter's NaN for
"not available") goes out as ``null`` with quality ``bad`` and reason ``not a finite number (nan)``
(``gateway.model.clean_reading``, the rule command responses follow too); a point sampled at another
moment than the message's ``ts`` carries its own ``"ts"``. A message routed while the wall clock is not
set yet (``gateway.pipeline.clock``) carries ``"clock": "unsynced"``; otherwise there is no such key.

``format = "compact"`` (opt-in) writes ``compact-payload.schema.json`` instead, and ``gateway_batch``
(compact only) gathers every device that polled in an interval into one message; with ``point_lists``
a device entry carries its values in the order of a point list sent now and then instead of point
names; see README.md.

A :class:`PointBatch` (the drivers' per-cycle fast path) is encoded from its columns: the JSON text is
assembled from per-point fragments cached by name and unit, with no dictionary per point. The text is
the one ``json`` would write for the same readings.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.config.model import DeviceRoute, TelemetrySettings
from gateway.model import NOT_FINITE, Message, PointBatch, Quality, Reading, clean_reading, json_value

#: The value types ``%r`` writes as ``json`` does (bool is not among them: ``True`` is not ``true``).
_NUMBER_TYPES = frozenset((int, float))

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _point_body(reading: Reading, ts: float) -> dict[str, object]:
    # Normally done at the reading queue already; here too so that no caller can publish NaN as good.
    reading = clean_reading(reading)
    body: dict[str, object] = {"value": reading.value}
    if reading.unit is not None:
        body["unit"] = reading.unit
    body["quality"] = reading.quality.value
    if reading.quality is not Quality.GOOD and reading.reason:
        body["reason"] = reading.reason
    if reading.timestamp != ts:
        body["ts"] = reading.timestamp
    return body


def _value_text(value: object) -> str:
    # The text json writes: ints and finite floats by their repr (bool is not an int here).
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    if type(value) is int:
        return int.__repr__(value)
    return _encode(json_value(value))


def _plain_numbers(values: Sequence[object], stamps: Sequence[float], ts: float) -> bool:
    """Every value a finite int or float (not a bool), every stamp ``ts``: a cycle ``%r`` and ``repr``
    write as ``json`` does. Checked in C-speed passes, not per point in Python."""
    if stamps.count(ts) != len(values) or not _NUMBER_TYPES.issuperset(map(type, values)):
        return False
    try:
        return math.isfinite(sum(values))  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float: the general path says what it is
        return False


def _columns(
    readings: Sequence[Reading],
) -> tuple[Sequence[str], Sequence[object], Sequence[float], dict[int, tuple[Quality, str | None]]]:
    """Names, values, timestamps and the not-good points of a cycle, from either form."""
    if isinstance(readings, PointBatch):
        return readings.names, readings.values, readings.stamps, readings.bad
    bad: dict[int, tuple[Quality, str | None]] = {
        i: (r.quality, r.reason) for i, r in enumerate(readings) if r.quality is not Quality.GOOD
    }
    return [r.point for r in readings], [r.value for r in readings], [r.timestamp for r in readings], bad


#: A device's point list grows by the points it has not reported before (a serial sensor whose lines
#: do not all carry every field keeps one list); beyond this size the list starts again from the cycle's
#: own points, so a device reporting ever new names cannot grow it without bound.
_POINT_LIST_MAX_BYTES = 16 * 1024


@dataclass(slots=True)
class PointList:
    """The order a device's compact entries carry their values in (``[telemetry] point_lists``).

    Its key is the first 8 hex digits of BLAKE2b (4-byte digest) over the UTF-8 text
    ``[[names...],[units...]]`` (compact JSON): the same list has the same key across restarts and
    gateways, so a consumer may keep lists it has seen.
    """

    names: tuple[str, ...]
    units: tuple[str | None, ...]
    index: dict[str, int]
    key: str
    #: ``,"l":[..],"u":[..]``: what an entry that carries the list adds.
    text: str
    #: Monotonic time it was last carried by an entry (never: -inf).
    sent_at: float = -math.inf

    @classmethod
    def of(cls, names: Sequence[str], units: Sequence[str | None]) -> PointList:
        names_text, units_text = _encode(list(names)), _encode(list(units))
        key = hashlib.blake2b(f"[{names_text},{units_text}]".encode(), digest_size=4).hexdigest()
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            index.setdefault(name, i)
        return cls(tuple(names), tuple(units), index, key, f',"l":{names_text},"u":{units_text}')

    def where(self, names: Sequence[str], units: Sequence[str | None]) -> list[int] | None:
        """The list index of each point of a cycle; None when one is not in the list (or its unit
        differs)."""
        index, own_units = self.index, self.units
        out: list[int] = []
        for name, unit in zip(names, units, strict=True):
            j = index.get(name)
            if j is None or own_units[j] != unit:
                return None
            out.append(j)
        return out

    def grown(self, names: Sequence[str], units: Sequence[str | None]) -> PointList | None:
        """This list with a cycle's new points added (and its units where they changed); None when
        that would make it larger than a list should be."""
        merged_names, merged_units = list(self.names), list(self.units)
        index = dict(self.index)
        for name, unit in zip(names, units, strict=True):
            j = index.get(name)
            if j is None:
                index[name] = len(merged_names)
                merged_names.append(name)
                merged_units.append(unit)
            else:
                merged_units[j] = unit
        grown = PointList.of(merged_names, merged_units)
        return None if len(grown.text) > _POINT_LIST_MAX_BYTES else grown


@dataclass
class RouterCounters:
    """Readings in and messages out of the router, and what it could not route."""

    readings: int = 0
    messages: int = 0
    #: Readings for a device the config does not know (e.g. a driver still running during a reload).
    unrouted: int = 0


class Router:
    def __init__(
        self,
        gateway_id: str,
        site: str,
        routes: Iterable[DeviceRoute],
        qos: int,
        *,
        first_seq: int = 1,
        telemetry: TelemetrySettings | None = None,
    ):
        self.gateway_id = gateway_id
        self.site = site
        self.qos = qos
        self.next_seq = first_seq
        self.counters = RouterCounters()
        #: False while the wall clock is not set yet (None: not checked).
        self.clock_synced: Callable[[], bool] | None = None
        self._routes: dict[str, DeviceRoute] = {}
        self._topics: dict[tuple[str, str], str] = {}
        self._gateway_json = _encode(gateway_id)
        #: '"name":{"value":' by point name, and ',"unit":..,"quality":"good"' by unit.
        self._heads: dict[str, str] = {}
        self._tails: dict[str | None, str] = {}
        self._names: dict[str, str] = {}
        #: device -> (names, units, template) of its last all-numbers cycle (``_points_numbers``).
        self._layouts: dict[str, tuple[list[str], list[str | None], str]] = {}
        self.compact = False
        self.gateway_batch = 0.0
        self.point_lists = False
        self._point_list_period = 600.0
        #: device -> its point list (``point_lists``); one per routed device.
        self._lists: dict[str, PointList] = {}
        self._batch_topic = ""
        self._batch_bytes = 48 * 1024
        #: The gateway-level batch being filled: (device entry JSON text, its newest timestamp).
        self._pending: list[tuple[str, float]] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self.set_routes(routes)
        if telemetry is not None:
            self.set_telemetry(telemetry)

    def set_telemetry(self, telemetry: TelemetrySettings) -> None:
        """Payload format and gateway-level batching (``[telemetry]``)."""
        self.compact = telemetry.format == "compact"
        self.gateway_batch = telemetry.gateway_batch if self.compact else 0.0
        self._batch_bytes = telemetry.gateway_batch_bytes
        self.point_lists = self.compact and telemetry.point_lists
        self._point_list_period = telemetry.point_list_period
        if telemetry.gateway_topic is not None:
            self._batch_topic = telemetry.gateway_topic.render(
                {"gateway": self.gateway_id, "site": self.site}
            )

    @property
    def gateway_batch_topic(self) -> str | None:
        """Where the gateway-level batch goes, when it is on (``[telemetry] gateway_batch``)."""
        return self._batch_topic if self.gateway_batch > 0 and self._batch_topic else None

    def set_routes(self, routes: Iterable[DeviceRoute]) -> None:
        self._routes = {route.device.name: route for route in routes}
        self._topics.clear()

    def topic(self, route: DeviceRoute, point: str = "") -> str:
        key = (route.device.name, point)
        topic = self._topics.get(key)
        if topic is None:
            topic = route.topic.render(
                {
                    "gateway": self.gateway_id,
                    "site": self.site,
                    "device": route.device.name,
                    "driver": route.device.driver,
                    "point": point,
                }
            )
            self._topics[key] = topic
        return topic

    def produces(self, topic: str) -> bool:
        """True when ``topic`` is one the router publishes (or would, for a point not seen yet)."""
        for route in self._routes.values():
            marker = "\x00"
            pattern = re.escape(self.topic(route) if route.batch else self._render(route, marker))
            if re.fullmatch(pattern.replace(re.escape(marker), "[^/]+"), topic):
                return True
        return False

    def _render(self, route: DeviceRoute, point: str) -> str:
        return route.topic.render(
            {
                "gateway": self.gateway_id,
                "site": self.site,
                "device": route.device.name,
                "driver": route.device.driver,
                "point": point,
            }
        )

    def route(self, readings: Sequence[Reading]) -> list[Message]:
        """One poll cycle of one device in, its messages out."""
        if not readings:
            return []
        device = readings[0].device
        route = self._routes.get(device)
        if route is None:
            self.counters.unrouted += len(readings)
            return []
        self.counters.readings += len(readings)
        if self.compact:
            return self._route_compact(route, readings)
        if route.batch and isinstance(readings, PointBatch):
            ts = readings.timestamp
            messages = [self._message_text(route, self.topic(route), ts, self._points_text(readings, ts))]
        elif route.batch:
            ts = max(r.timestamp for r in readings)
            messages = [
                self._message(
                    route, self.topic(route), ts, {"points": {r.point: _point_body(r, ts) for r in readings}}
                )
            ]
        else:
            messages = []
            for r in readings:
                body = {"point": r.point, **_point_body(r, r.timestamp)}
                messages.append(self._message(route, self.topic(route, r.point), r.timestamp, body))
        self.counters.messages += len(messages)
        return messages

    # -- the default format from columns -----------------------------------------------------------
    def _points_text(self, batch: PointBatch, ts: float) -> str:
        return self._points_numbers(batch, ts) or self._points_any(batch, ts)

    def _points_numbers(self, batch: PointBatch, ts: float) -> str | None:
        """The common cycle - every point good, sampled at ``ts``, a finite int or float - in one ``%``
        formatting of a per-device template; None for any other cycle. ``%r`` writes ints and floats
        as ``json`` does; bools, None, text and non-finite numbers take the general path."""
        values = batch.values
        if batch.bad or not _plain_numbers(values, batch.stamps, ts):
            return None
        names = batch.names if type(batch.names) is list else list(batch.names)
        units = batch.units if type(batch.units) is list else list(batch.units)
        layout = self._layouts.get(batch.device)
        if layout is None or layout[0] != names or layout[1] != units:
            # "%" in a name or unit is literal text in the template.
            template = ",".join(
                self._name(name).replace("%", "%%")
                + ':{"value":%r'
                + self._tail(unit).replace("%", "%%")
                + "}"
                for name, unit in zip(names, units, strict=True)
            )
            layout = self._layouts[batch.device] = (list(names), list(units), template)
        return '"points":{' + layout[2] % tuple(values) + "}"

    def _tail(self, unit: str | None) -> str:
        tail = self._tails.get(unit)
        if tail is None:
            unit_text = "" if unit is None else f',"unit":{_encode(unit)}'
            tail = self._tails[unit] = f'{unit_text},"quality":"good"'
        return tail

    def _points_any(self, batch: PointBatch, ts: float) -> str:
        heads, tails, bad = self._heads, self._tails, batch.bad
        isfinite, float_repr, int_repr = math.isfinite, float.__repr__, int.__repr__
        parts: list[str] = []
        for i, (name, unit, value, stamp) in enumerate(
            zip(batch.names, batch.units, batch.values, batch.stamps, strict=True)
        ):
            if bad and i in bad:
                parts.append(f"{self._name(name)}:{_encode(_point_body(batch[i], ts))}")
                continue
            head = heads.get(name)
            if head is None:
                head = heads[name] = f'{self._name(name)}:{{"value":'
            tail = tails.get(unit) or self._tail(unit)
            end = "}" if stamp == ts else f',"ts":{_value_text(stamp)}}}'
            # _value_text inlined for the two common kinds: this loop runs once per reading.
            kind = type(value)
            if kind is float and isfinite(value):  # type: ignore[arg-type]
                text = float_repr(value)
            elif kind is int:
                text = int_repr(value)
            elif kind is float or kind is str:
                # NaN, infinities and text take the one rule of the slow path (clean_reading).
                parts.append(f"{self._name(name)}:{_encode(_point_body(batch[i], ts))}")
                continue
            else:
                text = _value_text(value)
            parts.append(head + text + tail + end)
        return '"points":{' + ",".join(parts) + "}"

    def _name(self, name: str) -> str:
        text = self._names.get(name)
        if text is None:
            text = self._names[name] = _encode(name)
        return text

    def _clock_text(self) -> str:
        """``,"clock":"unsynced"`` while the wall clock is not set yet, else nothing."""
        if self.clock_synced is not None and not self.clock_synced():
            return ',"clock":"unsynced"'
        return ""

    def _message_text(self, route: DeviceRoute, topic: str, ts: float, body: str) -> Message:
        seq = self.next_seq
        self.next_seq += 1
        device = route.device.name
        payload = (
            f'{{"seq":{seq},"gateway":{self._gateway_json},"device":{self._name(device)},'
            f'"ts":{_value_text(ts)},{body}{self._clock_text()}}}'
        )
        return Message(
            topic=topic, payload=payload.encode(), qos=self.qos, seq=seq, timestamp=ts, device=device
        )

    # -- the compact format ------------------------------------------------------------------------
    def _device_entry(
        self, device: str, readings: Sequence[Reading], indices: Iterable[int], ts: float
    ) -> str:
        """``{"n":device,"p":{..},"pt":{..},"q":{..}`` (open: the caller closes it, maybe after a "t")."""
        names, values, stamps, bad = _columns(readings)
        name_text = self._name
        p: list[str] = []
        pt: list[str] = []
        q: list[str] = []
        for i in indices:
            key = name_text(names[i])
            p.append(f"{key}:{_value_text(values[i])}")
            if stamps[i] != ts:
                pt.append(f"{key}:{_value_text(stamps[i])}")
            if bad and i in bad:
                quality, reason = bad[i]
                q.append(f"{key}:{_encode([quality.value, reason] if reason else [quality.value])}")
            elif type(values[i]) is float and not math.isfinite(values[i]):  # type: ignore[arg-type]
                # The one rule for numbers JSON cannot carry: null, bad (as clean_reading writes it).
                q.append(f"{key}:{_encode([Quality.BAD.value, f'{NOT_FINITE} ({values[i]})'])}")
        text = f'{{"n":{name_text(device)},"p":{{{",".join(p)}}}'
        if pt:
            text += f',"pt":{{{",".join(pt)}}}'
        if q:
            text += f',"q":{{{",".join(q)}}}'
        return text

    def _entry(self, device: str, readings: Sequence[Reading], ts: float) -> str:
        if self.point_lists:
            return self._list_entry(device, readings, ts)
        return self._device_entry(device, readings, range(len(readings)), ts)

    def _point_list(
        self, device: str, names: Sequence[str], units: Sequence[str | None]
    ) -> tuple[PointList, list[int] | None]:
        """The device's point list for a cycle, and where the cycle's points are in it (None: the
        whole list, in order)."""
        current = self._lists.get(device)
        if current is not None:
            same = len(names) == len(current.names) and tuple(names) == current.names
            if same and tuple(units) == current.units:
                return current, None
            where = current.where(names, units)
            if where is not None:
                return current, where
            grown = current.grown(names, units)
            where = None if grown is None else grown.where(names, units)
            if grown is not None and where is not None:
                self._lists[device] = grown
                return grown, None if where == list(range(len(grown.names))) else where
        # The first cycle, or one no list can take (too many points, a name twice with two units):
        # the cycle's own points, in order.
        self._lists[device] = current = PointList.of(names, units)
        return current, None

    def _list_entry(self, device: str, readings: Sequence[Reading], ts: float) -> str:
        """``{"n":device,"k":key,"i":[..],"v":[..],"pt":{..},"q":{..},"l":[..],"u":[..]`` (open), where
        ``i``, ``pt`` and ``q`` are there only when needed and ``l``/``u`` only when the list is due."""
        names, values, stamps, bad = _columns(readings)
        units = readings.units if isinstance(readings, PointBatch) else [r.unit for r in readings]
        plist, where = self._point_list(device, names, units)
        if not bad and _plain_numbers(values, stamps, ts):
            text = f'{{"n":{self._name(device)},"k":"{plist.key}"'
            if where is not None:
                text += f',"i":{_encode(where)}'
            return text + f',"v":[{",".join(map(repr, values))}]' + self._list_due(plist)
        isfinite, float_repr, int_repr = math.isfinite, float.__repr__, int.__repr__
        v: list[str] = []
        pt: list[str] = []
        q: list[str] = []
        for i, (value, stamp) in enumerate(zip(values, stamps, strict=True)):
            # The value's text inlined for the two common kinds: this loop runs once per reading.
            kind = type(value)
            if kind is float and isfinite(value):  # type: ignore[arg-type]
                v.append(float_repr(value))
            elif kind is int:
                v.append(int_repr(value))
            else:
                v.append(_value_text(value))
                if kind is float:  # NaN or an infinity: null, bad (the rule of clean_reading)
                    j = i if where is None else where[i]
                    q.append(f'"{j}":{_encode([Quality.BAD.value, f"{NOT_FINITE} ({value})"])}')
            if stamp != ts:
                pt.append(f'"{i if where is None else where[i]}":{_value_text(stamp)}')
        for i, (quality, reason) in bad.items():
            j = i if where is None else where[i]
            q.append(f'"{j}":{_encode([quality.value, reason] if reason else [quality.value])}')
        text = f'{{"n":{self._name(device)},"k":"{plist.key}"'
        if where is not None:
            text += f',"i":{_encode(where)}'
        text += f',"v":[{",".join(v)}]'
        if pt:
            text += f',"pt":{{{",".join(pt)}}}'
        if q:
            text += f',"q":{{{",".join(q)}}}'
        return text + self._list_due(plist)

    def _list_due(self, plist: PointList) -> str:
        """The list's text when it is due on an entry (new, or ``point_list_period`` since), else ''."""
        now = time.monotonic()
        if now - plist.sent_at >= self._point_list_period:
            plist.sent_at = now
            return plist.text
        return ""

    def _compact_message(self, topic: str, ts: float, entries: Sequence[str], device: str) -> Message:
        seq = self.next_seq
        self.next_seq += 1
        payload = (
            f'{{"s":{seq},"g":{self._gateway_json},"t":{_value_text(ts)},"d":[{",".join(entries)}]'
            f"{self._clock_text()}}}"
        )
        return Message(
            topic=topic, payload=payload.encode(), qos=self.qos, seq=seq, timestamp=ts, device=device
        )

    def _route_compact(self, route: DeviceRoute, readings: Sequence[Reading]) -> list[Message]:
        device = route.device.name
        stamps = readings.stamps if isinstance(readings, PointBatch) else [r.timestamp for r in readings]
        messages: list[Message] = []
        if not route.batch:
            for i in range(len(readings)):
                entry = self._device_entry(device, readings, (i,), stamps[i]) + "}"
                point = readings.names[i] if isinstance(readings, PointBatch) else readings[i].point
                messages.append(self._compact_message(self.topic(route, point), stamps[i], [entry], device))
        elif self.gateway_batch > 0:
            ts = max(stamps)
            entry = self._entry(device, readings, ts)
            entry += f',"t":{_value_text(ts)}}}'
            # Room for the envelope: {"s":..,"g":..,"t":..,"d":{..}}
            size = len(entry.encode()) + 1
            if self._pending and self._pending_bytes + size > self._batch_bytes - 96 - len(
                self._gateway_json
            ):
                messages.append(self._flush())
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append((entry, ts))
            self._pending_bytes += size
        else:
            ts = max(stamps)
            entry = self._entry(device, readings, ts) + "}"
            messages.append(self._compact_message(self.topic(route), ts, [entry], device))
        self.counters.messages += len(messages)
        return messages

    def _flush(self) -> Message:
        entries, stamps = zip(*self._pending, strict=True)
        self._pending = []
        self._pending_bytes = 0
        ts = max(stamps)
        # A device entry whose "t" equals the message's needs none: drop the redundant key.
        suffix = f',"t":{_value_text(ts)}}}'
        trimmed = [e[: -len(suffix)] + "}" if e.endswith(suffix) else e for e in entries]
        return self._compact_message(self._batch_topic, ts, trimmed, "")

    # -- the gateway-level batch -------------------------------------------------------------------
    def batch_wait(self) -> float | None:
        """Seconds until the pending gateway-level batch is due; None when nothing waits."""
        if not self._pending:
            return None
        return max(0.0, self._pending_since + self.gateway_batch - time.monotonic())

    def flush_due(self) -> list[Message]:
        """The gateway-level batch, when its interval is over."""
        wait = self.batch_wait()
        return self.flush() if wait is not None and wait <= 0 else []

    def flush(self) -> list[Message]:
        """The gateway-level batch now, whatever its age (shutdown, benchmarks)."""
        if not self._pending:
            return []
        self.counters.messages += 1
        return [self._flush()]

    def _message(self, route: DeviceRoute, topic: str, ts: float, body: dict[str, object]) -> Message:
        seq = self.next_seq
        self.next_seq += 1
        payload = {"seq": seq, "gateway": self.gateway_id, "device": route.device.name, "ts": ts, **body}
        if self.clock_synced is not None and not self.clock_synced():
            payload["clock"] = "unsynced"
        return Message(
            topic=topic,
            payload=_encode(payload).encode(),
            qos=self.qos,
            seq=seq,
            timestamp=ts,
            device=route.device.name,
        )
