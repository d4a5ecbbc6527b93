"""A device with on-change points, polled from a real pymodbus TCP server, stays on the per-cycle fast path:
every cycle reaches the sink as a ``PointBatch`` holding only what is news."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from types import ModuleType

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus.driver import build_drivers
from gateway.model import PointBatch, Quality, Reading

from .helpers import parse


class BatchSink:
    """Keeps what the driver hands over, as handed (the type matters here), and wakes waiters."""

    def __init__(self) -> None:
        self.calls: list[Sequence[Reading]] = []
        self._changed = asyncio.Event()

    def __call__(self, readings: Sequence[Reading]) -> None:
        self.calls.append(readings)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def reports(self, point: str) -> list[Reading]:
        return [r for call in self.calls for r in call if r.point == point]


async def test_a_changed_register_is_reported_and_an_unchanged_one_is_not_in_batches(
    simulator: ModuleType,
) -> None:
    moving = {"value": 100}

    async def act(fc: int, _start: int, _addr: int, _count: int, regs: list[int], _values: object) -> object:
        if fc == 4:  # the input table is refused: its on-change point is BAD every cycle
            return ExcCodes.ILLEGAL_ADDRESS
        if fc == 3:
            regs[0] = moving["value"]
        return None

    steady = list(struct.unpack(">HH", struct.pack(">f", 21.5)))
    server, port = await simulator.start_tcp(
        [simulator.device(1, holding=[100, *steady, 7], inputs=[5], action=act)], simulator.Faults()
    )
    config, problems = parse(
        f'[devices.m]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\ninterval = 0.02\nmax_gap = 0\n'
        "[devices.m.points.moving]\naddress = 0\non_change = true\ndeadband = 1\n"
        '[devices.m.points.steady]\naddress = 1\ntype = "float32"\non_change = true\n'
        "[devices.m.points.plain]\naddress = 3\n"
        '[devices.m.points.absent]\ntable = "input"\naddress = 0\non_change = true\n'
    )
    assert problems == []
    (drv,) = build_drivers(config)
    sink = BatchSink()
    task = asyncio.create_task(drv.run(sink), name="test.modbus.on_change")
    try:
        await sink.wait_for(lambda: len(sink.calls) >= 5)
        moving["value"] = 101  # within the deadband of 1: not news
        polled = drv.state("m").cycles
        await sink.wait_for(lambda: drv.state("m").cycles >= polled + 5)
        moving["value"] = 150
        await sink.wait_for(lambda: [r.value for r in sink.reports("moving")][-1:] == [150])
        polled = drv.state("m").cycles
        await sink.wait_for(lambda: drv.state("m").cycles >= polled + 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await drv.close()
        await server.shutdown()

    assert all(type(call) is PointBatch and len(call) > 0 for call in sink.calls)
    first = sink.calls[0]
    assert sorted(r.point for r in first) == ["absent", "moving", "plain", "steady"]
    assert [r.value for r in sink.reports("moving")] == [100, 150]
    assert [r.value for r in sink.reports("steady")] == [21.5]
    absent = sink.reports("absent")
    assert len(absent) == 1 and absent[0].quality is Quality.BAD and absent[0].value is None
    # The point that is not on change is in every cycle, and the only one in the cycles without news.
    assert len(sink.reports("plain")) == len(sink.calls)
    quiet = [call for call in sink.calls[1:] if [r.point for r in call] == ["plain"]]
    assert len(quiet) == len(sink.calls) - 2
    changed = next(call for call in sink.calls if any(r.point == "moving" and r.value == 150 for r in call))
    assert isinstance(changed, PointBatch)
    assert sorted(changed.names) == ["moving", "plain"] and changed.bad == {}
