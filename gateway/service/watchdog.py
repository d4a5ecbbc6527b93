"""Is the pipeline really alive? The answer decides whether the service pings systemd's watchdog.

The checks, and why each is honest (a quiet pipeline is not a stuck one):

- **The event loop turns.** The pings are sent from a task on the loop: a driver that blocks the loop
  (a synchronous read that never returns) stops them without any check.
- **Each driver's loop comes round.** A driver implementing :class:`gateway.model.Heartbeat` reports when
  its loop last made progress; silence beyond its own ``max_silence`` means it is stuck in an await that
  never ends. A driver waiting for an unplugged device still comes round (its retry timer fires), so a
  device fault never restarts the service. A driver that does not implement it is judged by the loop only.
- **The router keeps up.** It does nothing but CPU work on queued poll cycles: poll cycles waiting while
  it has routed nothing for ``router_stall`` seconds means it is stuck.
- **The pump hands messages over while the uplink is up.** Waiting messages, a sink that says it is
  connected (or has no notion of a connection, like the dry run) and nothing taken for ``pump_stall``
  seconds means it is stuck. While the uplink is down the pump legitimately waits.
- **The uplink's own loop**, when the sink implements :class:`gateway.model.Heartbeat`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.model import Driver, Heartbeat, MessageSink
from gateway.pipeline.queue import ReadingQueue
from gateway.pipeline.router import Router
from gateway.store import StoreStats

#: The router only computes: 15 s without routing a queued poll cycle is far beyond any honest delay.
ROUTER_STALL = 15.0
#: With the uplink connected, its keep-alive (at most a few minutes) notices a dead broker long before this.
PUMP_STALL = 180.0


class StoreView(Protocol):
    """What the checks read of the store (the memory and the SQLite store both have it)."""

    def stats(self) -> StoreStats: ...


class WatchedGateway(Protocol):
    """What the checks read from the running gateway (``gateway.app.Gateway`` has all of it)."""

    @property
    def readings(self) -> ReadingQueue: ...

    @property
    def router(self) -> Router: ...

    @property
    def store(self) -> StoreView: ...

    @property
    def sink(self) -> MessageSink: ...

    @property
    def running_drivers(self) -> list[Driver]: ...


@dataclass
class _Progress:
    """A counter and when it last moved."""

    value: int = -1
    since: float = 0.0

    def update(self, value: int, now: float) -> float:
        """Seconds since the counter last changed."""
        if value != self.value:
            self.value = value
            self.since = now
        return now - self.since


def sink_connected(sink: MessageSink) -> bool:
    """True when the sink says it is connected, or has no notion of a connection (the dry run)."""
    stats = sink.stats
    return True if stats is None else stats.connected


class Liveness:
    def __init__(
        self,
        gateway: WatchedGateway,
        *,
        router_stall: float = ROUTER_STALL,
        pump_stall: float = PUMP_STALL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway = gateway
        self._router_stall = router_stall
        self._pump_stall = pump_stall
        self._clock = clock
        self._routed = _Progress()
        self._taken = _Progress()

    def stuck(self) -> list[str]:
        """Why the pipeline is not alive, one reason per stuck part; empty when it is alive."""
        now = self._clock()
        gateway = self._gateway
        reasons = [
            f"{driver.name}: its loop made no progress for {now - last:.0f}s"
            for driver in gateway.running_drivers
            if (last := _silent_since(driver, now)) is not None
        ]
        routed_quiet = self._routed.update(gateway.router.counters.readings, now)
        if len(gateway.readings) and routed_quiet > self._router_stall:
            reasons.append(
                f"router: {len(gateway.readings)} poll cycles waiting, none routed for {routed_quiet:.0f}s"
            )
        store = gateway.store.stats()
        # Every take moves a message in flight; it leaves by ack or release: their sum only grows.
        taken_quiet = self._taken.update(store.in_flight + store.acked + store.released, now)
        waiting = store.depth - store.in_flight
        if waiting and sink_connected(gateway.sink) and taken_quiet > self._pump_stall:
            reasons.append(
                f"store.pump: {waiting} messages waiting with the uplink up, none handed over "
                f"for {taken_quiet:.0f}s"
            )
        if (last := _silent_since(gateway.sink, now)) is not None:
            reasons.append(f"uplink: its loop made no progress for {now - last:.0f}s")
        return reasons


def _silent_since(part: object, now: float) -> float | None:
    """The last progress time of a part whose loop is stuck; None when it is fine or not watched."""
    if not isinstance(part, Heartbeat):
        return None
    last = part.last_progress
    if last is None or now - last <= part.max_silence:
        return None
    return last


def describe(reasons: Sequence[str]) -> str:
    return "; ".join(reasons)
