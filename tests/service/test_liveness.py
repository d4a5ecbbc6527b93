"""What the watchdog calls stuck, and what it must not: a quiet pipeline, a device that does not answer
or an uplink that is down are not reasons for systemd to restart the service."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.model import DeviceRoute
from gateway.model import DeviceInfo, Driver, Message, PointInfo, Reading, ReadingSink
from gateway.mqtt_topics import compile_template
from gateway.pipeline.queue import ReadingQueue
from gateway.pipeline.router import Router
from gateway.service.watchdog import Liveness
from gateway.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class UplinkStats:
    connected: bool


class Uplink:
    def __init__(self, connected: bool) -> None:
        self.stats = UplinkStats(connected)


class Loop:
    """A driver whose loop reports progress (the Heartbeat protocol)."""

    def __init__(self, name: str, last_progress: float | None, max_silence: float = 5.0) -> None:
        self.name = name
        self.settings: object = None
        self.last_progress = last_progress
        self.max_silence = max_silence

    async def run(self, emit: ReadingSink) -> None:
        return None

    async def close(self) -> None:
        return None


class Parts:
    """The gateway's parts the checks read, real ones."""

    def __init__(self, sink: object) -> None:
        device = DeviceInfo("meter-1", "simulated", (PointInfo("v"),))
        route = DeviceRoute(device, compile_template("t/{device}"), batch=True)
        self.readings = ReadingQueue(100)
        self.router = Router("gw", "lab", (route,), 1)
        self.store = MemoryStore(100)
        self.sink = sink
        self.running_drivers: list[Driver] = []


def cycle() -> list[Reading]:
    return [Reading("meter-1", "v", 1.0, None, 0.0)]


def test_a_quiet_pipeline_is_alive() -> None:
    clock = Clock()
    parts = Parts(sink=object())
    liveness = Liveness(parts, clock=clock)
    assert liveness.stuck() == []
    clock.now += 3600
    assert liveness.stuck() == []


def test_the_router_is_stuck_when_poll_cycles_wait_and_none_is_routed() -> None:
    clock = Clock()
    parts = Parts(sink=object())
    liveness = Liveness(parts, router_stall=15, clock=clock)
    parts.readings.put(cycle())
    assert liveness.stuck() == []
    clock.now += 16
    assert liveness.stuck() == ["router: 1 poll cycles waiting, none routed for 16s"]
    # It catches up: alive again.
    parts.router.route(parts.readings.get_nowait() or [])
    assert liveness.stuck() == []


def test_the_pump_is_stuck_only_while_the_uplink_is_up() -> None:
    clock = Clock()
    uplink = Uplink(connected=False)
    parts = Parts(sink=uplink)
    liveness = Liveness(parts, pump_stall=180, clock=clock)
    parts.store.append(Message("t/meter-1", b"{}"))
    liveness.stuck()
    clock.now += 600
    assert liveness.stuck() == []  # waiting for the connection is its job

    uplink.stats = UplinkStats(connected=True)
    clock.now += 181
    assert liveness.stuck() == [
        "store.pump: 1 messages waiting with the uplink up, none handed over for 781s"
    ]


def test_a_driver_loop_is_judged_by_its_own_heartbeat() -> None:
    clock = Clock()
    parts = Parts(sink=object())
    liveness = Liveness(parts, clock=clock)
    parts.running_drivers = [
        Loop("modbus[bus-1]", last_progress=clock.now - 4),  # within its 5 s
        Loop("serial[gps]", last_progress=None),  # between runs (restarting): not judged
        Loop("serial[scale]", last_progress=clock.now - 12),
    ]
    assert liveness.stuck() == ["serial[scale]: its loop made no progress for 12s"]
