"""The stages between drivers and the uplink: the reading queue, the router task and the store pump.

    drivers --emit--> ReadingQueue --router task--> store --pump task--> sink (uplink, or dry run)

The reading queue is what keeps polling on time when the uplink is slow: ``emit`` never blocks and, when
the queue is full, the oldest poll cycle is dropped (counted, logged once per episode).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from gateway.model import Message, PublishOutcome, PublishResult, Quality, Reading
from gateway.router import Router
from gateway.store import Store

log = logging.getLogger("fieldgate.pipeline")


class MessageSink(Protocol):
    """Where the pump hands messages: the uplink, or the dry-run printer."""

    async def run(self) -> None:
        """Serve until cancelled (connect, reconnect, refresh...)."""
        ...

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        """Wait for room (backpressure), hand the message over, return a future for its outcome."""
        ...


@dataclass
class DeviceCounters:
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
        counters = self.devices.get(readings[0].device)
        if counters is None:
            counters = self.devices[readings[0].device] = DeviceCounters()
        counters.cycles += 1
        counters.readings += len(readings)
        failing = 0
        for reading in readings:
            if reading.quality is Quality.BAD:
                failing += 1
                counters.last_error = f"{reading.point}: {reading.reason or 'no value'}"
                counters.last_error_at = reading.timestamp
        counters.bad += failing
        counters.failing = failing
        counters.last_reading = readings[-1].timestamp
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


async def route_forever(queue: ReadingQueue, router: Router, store: Store) -> None:
    """The router task: poll cycles in, messages into the store."""
    while True:
        readings = await queue.get()
        for message in router.route(readings):
            store.append(message)
        # Let drivers and the pump run between cycles even when the queue is long.
        await asyncio.sleep(0)


def route_pending(queue: ReadingQueue, router: Router, store: Store) -> int:
    """Route whatever is queued now (shutdown flush). Returns the number of poll cycles routed."""
    count = 0
    while (readings := queue.get_nowait()) is not None:
        for message in router.route(readings):
            store.append(message)
        count += 1
    return count


@dataclass
class PumpCounters:
    delivered: int = 0
    refused: int = 0
    lost: int = 0


async def pump_forever(store: Store, sink: MessageSink, counters: PumpCounters) -> None:
    """The store pump: oldest first into the sink; outcomes come back as acks or releases.

    It also tells the store whether the uplink delivers (sink-agnostic: from the outcomes, and from a
    send that has waited ``store.down_after`` seconds for room), which the store's ``outage`` mode uses.
    """

    def settle(message_id: int, future: asyncio.Future[PublishResult]) -> None:
        if future.cancelled():
            store.release(message_id)
            return
        result = future.result()
        if result.outcome is PublishOutcome.DELIVERED:
            counters.delivered += 1
            store.link_up()
            store.ack(message_id)
        elif result.outcome is PublishOutcome.REFUSED:
            # Final: the sink has counted and logged it with its topic; resending cannot help.
            counters.refused += 1
            store.ack(message_id)
        else:
            counters.lost += 1
            store.link_down()
            store.release(message_id)

    loop = asyncio.get_running_loop()
    sending_since: float | None = None

    async def watch() -> None:
        while True:
            await asyncio.sleep(min(1.0, store.down_after / 2))
            if sending_since is not None and loop.time() - sending_since >= store.down_after:
                store.link_down()

    watcher = asyncio.create_task(watch(), name="store.link-watch")
    try:
        while True:
            message_id, message = await store.take()
            sending_since = loop.time()
            try:
                future = await sink.send(message)
            except BaseException:
                store.release(message_id)
                raise
            finally:
                sending_since = None
            future.add_done_callback(lambda f, i=message_id: settle(i, f))  # type: ignore[misc]
    finally:
        watcher.cancel()


class DryRunSink:
    """Prints each message instead of publishing it (``fieldgate run --dry-run``, the offline demo)."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self._out = out if out is not None else sys.stdout
        self._quiet = quiet
        self.sent = 0

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        self.sent += 1
        if not self._quiet:
            self._out.write(f"{message.topic} {message.payload.decode()}\n")
            self._out.flush()
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult(PublishOutcome.DELIVERED))
        return future
