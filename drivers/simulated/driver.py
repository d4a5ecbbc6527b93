"""The simulated device loop: samples every point once per interval, on a drift-free schedule."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import TYPE_CHECKING

from gateway.model import Reading, ReadingSink

if TYPE_CHECKING:
    from drivers.simulated.config import Device, Point

log = logging.getLogger("fieldgate.drivers.simulated")


class _Signal:
    """The state of one simulated point."""

    def __init__(self, point: Point, start: float) -> None:
        self.point = point
        self.start = start
        self.rng = random.Random(point.seed)
        self.walk = (point.minimum + point.maximum) / 2

    def sample(self, now: float) -> float:
        p = self.point
        elapsed = now - self.start
        span = p.maximum - p.minimum
        if p.signal == "sine":
            value = p.minimum + span * (0.5 + 0.5 * math.sin(2 * math.pi * elapsed / p.period))
        elif p.signal == "ramp":
            value = p.minimum + span * ((elapsed / p.period) % 1.0)
        elif p.signal == "random-walk":
            self.walk = min(p.maximum, max(p.minimum, self.walk + self.rng.uniform(-p.step, p.step)))
            value = self.walk
        elif p.signal == "step":
            value = p.values[int(elapsed / p.hold) % len(p.values)]
        else:  # constant
            value = p.values[0]
        return round(value, p.decimals)


class SimulatedDriver:
    def __init__(self, device: Device) -> None:
        self._device = device
        self.samples = 0
        #: Ticks skipped because the loop fell behind its schedule (a busy event loop, a suspended host).
        self.skipped_ticks = 0
        self._last_progress: float | None = None

    @property
    def last_progress(self) -> float | None:
        """When the sampling loop last came round (``time.monotonic()``); None while not running."""
        return self._last_progress

    @property
    def max_silence(self) -> float:
        # Three missed ticks plus slack for a busy host: the loop does no I/O that could legitimately wait.
        return 3 * self._device.interval + 10.0

    @property
    def name(self) -> str:
        return f"simulated[{self._device.name}]"

    @property
    def settings(self) -> object:
        return self._device

    async def run(self, emit: ReadingSink) -> None:
        device = self._device
        loop = asyncio.get_running_loop()
        signals = [_Signal(p, time.time()) for p in device.points]
        log.info(
            "%s: simulating %d points every %gs",
            device.name,
            len(signals),
            device.interval,
            extra={"device": device.name},
        )
        next_tick = loop.time()
        try:
            while True:
                self._last_progress = time.monotonic()
                now = time.time()
                emit([Reading(device.name, s.point.name, s.sample(now), s.point.unit, now) for s in signals])
                self.samples += 1
                next_tick += device.interval
                behind = loop.time() - next_tick
                if behind > 0:
                    # Never queue up missed samples: skip to the next tick in the future.
                    missed = int(behind // device.interval) + 1
                    self.skipped_ticks += missed
                    next_tick += missed * device.interval
                await asyncio.sleep(next_tick - loop.time())
        finally:
            self._last_progress = None

    async def close(self) -> None:
        return None
