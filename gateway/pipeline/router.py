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
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gateway.config.model import DeviceRoute
from gateway.model import Message, Quality, Reading, clean_reading

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


@dataclass
class RouterCounters:
    readings: int = 0
    messages: int = 0
    #: Readings for a device the config does not know (e.g. a driver still running during a reload).
    unrouted: int = 0


class Router:
    def __init__(
        self, gateway_id: str, site: str, routes: Iterable[DeviceRoute], qos: int, *, first_seq: int = 1
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
        self.set_routes(routes)

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
        if route.batch:
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
