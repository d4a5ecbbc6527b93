"""The reading queue between the drivers and the router task.

It is what keeps polling on time when the uplink is slow: ``emit`` never blocks and, when the queue is
full, the oldest poll cycle is dropped (counted, logged once per episode).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.model import PointBatch, Quality, Reading, clean_batch, clean_reading
from gateway.pipeline.router import Router
from gateway.store import Store

log = logging.getLogger("fieldgate.pipeline")


@dataclass
class DeviceCounters:
    """One device's poll cycles and readings as they entered the reading queue."""

    cycles: int = 0
    readings: int = 0
    #: Readings whose quality was not good (the driver could not read the point).
    bad: int = 0
    last_reading: float | None = None
    #: Points that could not be read in the device's latest poll cycle (0: all good).
    failing: int = 0
    #: The reason of the latest bad reading ("point: reason") and its time, kept after recovery.
    last_error: str | None = None
    last_error_at: float | None = None
    #: Readings made safe at the boundary: text that was not valid Unicode, a value that was not finite.
    repaired: int = 0


@dataclass
class ReadingQueue:
    """Bounded queue of poll cycles; drop-oldest when full."""

    max_cycles: int
    dropped: int = 0
    devices: dict[str, DeviceCounters] = field(default_factory=dict)
    _cycles: deque[Sequence[Reading]] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _overflowing: bool = False

    def __len__(self) -> int:
        return len(self._cycles)

    def put(self, readings: Sequence[Reading]) -> None:
        """The drivers' ``emit``: never blocks."""
        if not readings:
            return
        # The boundary to the drivers: whatever a device sent is made safe to encode here, once.
        repaired: list[tuple[str, object, object, Quality]] = []
        if isinstance(readings, PointBatch):
            for index, sent in clean_batch(readings):
                quality = readings.bad.get(index, (Quality.GOOD, None))[0]
                repaired.append((readings.names[index], sent, readings.values[index], quality))
        else:
            cleaned = [clean_reading(r) for r in readings]
            repaired = [
                (new.point, old.value, new.value, new.quality)
                for old, new in zip(readings, cleaned, strict=True)
                if old is not new
            ]
            readings = cleaned
        device = readings.device if isinstance(readings, PointBatch) else readings[0].device
        counters = self.devices.get(device)
        if counters is None:
            counters = self.devices[device] = DeviceCounters()
        if repaired:
            if not counters.repaired:
                point, was, published, quality = repaired[0]
                log.warning(
                    "%s: point %s sent %s; published as %r (%s), counted as repaired (logged once a device)",
                    device,
                    point,
                    "a value that is not a finite number"
                    if published is None and was is not None
                    else "text that is not valid Unicode",
                    published,
                    quality.value,
                )
            counters.repaired += len(repaired)
        counters.cycles += 1
        counters.readings += len(readings)
        failing = 0
        if isinstance(readings, PointBatch):
            # The fast path: only the points that are not good are looked at.
            for index, (quality, reason) in readings.bad.items():
                if quality is Quality.BAD:
                    failing += 1
                    counters.last_error = f"{readings.names[index]}: {reason or 'no value'}"
                    counters.last_error_at = readings.stamps[index]
            counters.last_reading = readings.stamps[-1]
        else:
            for reading in readings:
                if reading.quality is Quality.BAD:
                    failing += 1
                    counters.last_error = f"{reading.point}: {reading.reason or 'no value'}"
                    counters.last_error_at = reading.timestamp
            counters.last_reading = readings[-1].timestamp
        counters.bad += failing
        counters.failing = failing
        if len(self._cycles) >= self.max_cycles:
            self._cycles.popleft()
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.error(
                    "reading queue full (%d poll cycles): dropping the oldest until the router catches up",
                    self.max_cycles,
                )
        elif self._overflowing and len(self._cycles) < self.max_cycles // 2:
            self._overflowing = False
            log.info("reading queue drained; %d poll cycles were dropped so far", self.dropped)
        self._cycles.append(readings)
        self._ready.set()

    async def get(self) -> Sequence[Reading]:
        while not self._cycles:
            self._ready.clear()
            await self._ready.wait()
        return self._cycles.popleft()

    def get_nowait(self) -> Sequence[Reading] | None:
        return self._cycles.popleft() if self._cycles else None


@dataclass
class SetAside:
    """Poll cycles the router could not turn into messages (a bug met by a device's data): each is
    logged with its traceback the first time per device, then at debug level until that device's
    cycles route again, and counted; never retried."""

    cycles: int = 0
    readings: int = 0
    _failing: set[str] = field(default_factory=set)

    def hit(self, readings: Sequence[Reading]) -> None:
        device = readings[0].device if readings else "?"
        self.cycles += 1
        self.readings += len(readings)
        if device in self._failing:
            log.debug("%s: poll cycle set aside again (%d so far)", device, self.cycles, exc_info=True)
            return
        self._failing.add(device)
        log.exception(
            "%s: a poll cycle of %d readings could not be routed; set aside (counted), the gateway goes on",
            device,
            len(readings),
        )

    def ok(self, readings: Sequence[Reading]) -> None:
        if self._failing and readings and readings[0].device in self._failing:
            self._failing.discard(readings[0].device)
            log.info(
                "%s: poll cycles are routed again (%d set aside so far)", readings[0].device, self.cycles
            )


def route_cycle(readings: Sequence[Reading], router: Router, store: Store, set_aside: SetAside) -> None:
    """One poll cycle into the store; a cycle the router fails on is set aside, not retried."""
    try:
        messages = router.route(readings)
    except Exception:
        set_aside.hit(readings)
        return
    set_aside.ok(readings)
    for message in messages:
        store.append(message)


async def route_forever(queue: ReadingQueue, router: Router, store: Store, set_aside: SetAside) -> None:
    """The router task: poll cycles in, messages into the store."""
    while True:
        wait = router.batch_wait()
        if wait is None:
            readings: Sequence[Reading] | None = await queue.get()
        else:
            # A gateway-level batch is filling: wake up when it is due even if no device polls.
            try:
                async with asyncio.timeout(wait):
                    readings = await queue.get()
            except TimeoutError:
                readings = None
        if readings is not None:
            route_cycle(readings, router, store, set_aside)
        for message in router.flush_due():
            store.append(message)
        # Let drivers and the pump run between cycles even when the queue is long.
        await asyncio.sleep(0)


def route_pending(queue: ReadingQueue, router: Router, store: Store, set_aside: SetAside) -> int:
    """Route whatever is queued now (shutdown flush). Returns the number of poll cycles routed."""
    count = 0
    while (readings := queue.get_nowait()) is not None:
        route_cycle(readings, router, store, set_aside)
        count += 1
    for message in router.flush():
        store.append(message)
    return count
