"""A TCP slave whose answers pymodbus cannot decode (an unknown function code): bad readings named as bad
frames, one error line, no asyncio traceback, and good readings again as soon as it answers properly.

The slave is the scripted peer of ``tests/support/modbus_peer.py``: no real server sends a function code
0x63 on demand."""

from __future__ import annotations

import logging

import pytest

from drivers.modbus.driver import build_drivers
from gateway.model import Quality
from tests.support.modbus_peer import Answer, BadModbusPeer

from .conftest import Collector
from .helpers import parse
from .test_tcp import run_driver, stop


async def test_undecodable_answers_are_bad_frames_logged_once_and_the_device_recovers(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    peer = await BadModbusPeer().start()
    peer.feed([Answer("fc", 0x63)] * 3)
    config, _ = parse(
        f'[devices.odd]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {peer.port}\ninterval = 0.05\n'
        "timeout = 0.3\nretries = 0\nbackoff_max = 0.2\n"
        '[devices.odd.points.p]\ntable = "input"\naddress = 0\n'
    )
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(
            lambda: any(rs[0].quality is Quality.GOOD for _, rs in collector.of("odd")), within=20
        )
    finally:
        await stop(task, drv)
        await peer.close()

    first = collector.of("odd")[0][1][0]
    assert first.quality is Quality.BAD and "bad frame" in (first.reason or ""), first
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    errors = [
        r.getMessage() for r in caplog.records if r.name == "fieldgate.modbus" and r.levelno >= logging.ERROR
    ]
    assert len(errors) == 1 and "bad frame" in errors[0], errors
