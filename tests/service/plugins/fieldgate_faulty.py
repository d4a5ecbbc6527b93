"""A test-only driver plugin, found through its entry point when this folder is on PYTHONPATH.

Its devices misbehave on purpose, the way real drivers with bugs or dead peers do: ``bad_points`` are
read as BAD quality every cycle (a device that does not answer), ``hang_after`` poll cycles into the run
the loop either awaits something that never happens (``hang = "await"``, the event loop still turns) or
blocks the event loop in a synchronous call (``hang = "block"``); ``crash_after`` poll cycles into each run
the driver raises (a bug), so the gateway's supervisor restarts it again and again. ``secret`` takes a
secret reference (like a driver that logs in to its device), so the secret-file permission check can be
exercised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.model import DeviceInfo, Driver, DriverConfig, PointInfo, Quality, Reading, ReadingSink
from gateway.schema import Secret, Table


@dataclass(frozen=True, slots=True)
class FaultyDevice:
    name: str
    interval: float
    points: tuple[str, ...]
    bad_points: tuple[str, ...]
    hang_after: int
    hang: str
    max_silence: float
    secret: Secret | None
    crash_after: int = 0


@dataclass(frozen=True, slots=True)
class FaultyConfig:
    faulty: tuple[FaultyDevice, ...]

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        return tuple(
            DeviceInfo(d.name, "faulty", tuple(PointInfo(p) for p in d.points + d.bad_points))
            for d in self.faulty
        )


class FaultyDriver:
    def __init__(self, device: FaultyDevice) -> None:
        self.device = device
        self._last_progress: float | None = None

    @property
    def name(self) -> str:
        return f"faulty[{self.device.name}]"

    @property
    def settings(self) -> object:
        return self.device

    @property
    def last_progress(self) -> float | None:
        return self._last_progress

    @property
    def max_silence(self) -> float:
        return self.device.max_silence

    async def run(self, emit: ReadingSink) -> None:
        d = self.device
        cycles = 0
        try:
            while True:
                self._last_progress = time.monotonic()
                now = time.time()
                emit(
                    [Reading(d.name, p, 1.0, None, now) for p in d.points]
                    + [
                        Reading(d.name, p, None, None, now, Quality.BAD, "timeout after 1s")
                        for p in d.bad_points
                    ]
                )
                cycles += 1
                if d.crash_after and cycles >= d.crash_after:
                    raise RuntimeError(f"faulty driver bug after {cycles} cycles (on purpose)")
                if d.hang_after and cycles >= d.hang_after:
                    if d.hang == "block":
                        time.sleep(3600)  # noqa: ASYNC251 - the fault under test: a loop-blocking call
                    await asyncio.Event().wait()
                await asyncio.sleep(d.interval)
        finally:
            self._last_progress = None

    async def close(self) -> None:
        return None


class FaultyPlugin:
    def parse(self, section: Table | None, devices: Sequence[tuple[str, Table]]) -> FaultyConfig:
        if section is not None:
            section.finish()
        parsed = []
        for name, table in devices:
            parsed.append(
                FaultyDevice(
                    name=name,
                    interval=table.number("interval", 0.1, positive=True),
                    points=table.strings("points", ("value",)),
                    bad_points=table.strings("bad_points", ()),
                    hang_after=table.integer("hang_after", 0, minimum=0),
                    hang=table.string("hang", "await", choices=("await", "block")),
                    max_silence=table.number("max_silence", 1.0, positive=True),
                    secret=table.secret("secret", required=False),
                    crash_after=table.integer("crash_after", 0, minimum=0),
                )
            )
            table.finish()
        return FaultyConfig(tuple(parsed))

    def build(self, config: DriverConfig) -> Sequence[Driver]:
        assert isinstance(config, FaultyConfig)
        return [FaultyDriver(d) for d in config.faulty]


plugin = FaultyPlugin()
