"""The watchdog tells a hung driver loop from a device fault: drivers that keep trying keep beating."""

from __future__ import annotations

import asyncio
import socket
import time
import tomllib
from pathlib import Path

from drivers.modbus import plugin as modbus
from drivers.serial import plugin as serial
from gateway.model import Heartbeat, Reading
from gateway.schema import Problems, Table
from tests.modbus.helpers import parse


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def beats_while_failing(driver: object, seconds: float = 1.5) -> list[float]:
    """Run the driver against a device that is not there; sample its heartbeat meanwhile."""
    assert isinstance(driver, Heartbeat)
    cycles: list[list[Reading]] = []
    task = asyncio.create_task(driver.run(lambda rs: cycles.append(list(rs))))  # type: ignore[attr-defined]
    beats = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if driver.last_progress is not None:
                beats.append(time.monotonic() - driver.last_progress)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert driver.last_progress is None, "a stopped driver has no heartbeat"
    return beats


async def test_a_modbus_link_to_a_dead_server_keeps_beating() -> None:
    config, problems = parse(
        f"""
[devices.meter]
driver = "modbus"
host = "127.0.0.1"
port = {closed_port()}
unit_id = 1
interval = 0.2
timeout = 0.2

[devices.meter.points.power]
address = 0
type = "float32"
"""
    )
    assert problems == []
    (driver,) = modbus.build(config)

    beats = await beats_while_failing(driver)

    assert beats, "the loop never came round"
    assert max(beats) < driver.max_silence  # type: ignore[attr-defined]


async def test_a_polled_serial_device_on_a_missing_port_keeps_beating(tmp_path: Path) -> None:
    data = tomllib.loads(
        f"""
port = "{tmp_path / "no-such-tty"}"
mode = "polled"
framing = {{ kind = "line" }}
parser = {{ kind = "keyvalue" }}
retry_initial = 0.1
retry_max = 0.2

[commands.weight]
send = "W\\r\\n"
interval = 0.2
timeout = 0.1
points.weight = {{ unit = "kg" }}
"""
    )
    problems = Problems("gateway.toml")
    config = serial.parse(None, [("scale", Table(data, "devices.scale", problems))])
    assert problems.lines == []
    (driver,) = serial.build(config)

    beats = await beats_while_failing(driver)

    assert beats and max(beats) < driver.max_silence  # type: ignore[attr-defined]
