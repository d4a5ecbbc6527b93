"""A polled serial scale on a pty takes named commands between its polls: the reply comes back parsed and
as text, reads go through the commands that carry the points, and unknown names are refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from drivers.serial.driver import SerialDriver
from gateway.errors import CommandRefused, DeviceTimeout, UnknownTarget
from gateway.model import Commandable
from tests.support.serial import Collector, Pty, Responder, device_from_toml, wait_for

SCALE = r"""
[devices.scale]
driver = "serial"
port = "{path}"
mode = "polled"
framing = {{ kind = "line", terminator = "\r\n", max_length = 64 }}
parser = {{ kind = "regex", pattern = '^(?P<status>ST|US),GS,\s*(?P<weight>[-+]?[0-9.]+)\s*kg$' }}

[devices.scale.commands.weight]
send = "W\r\n"
interval = 0.05
timeout = 1.0
points = [{{ name = "weight", field = "weight", unit = "kg" }}]

[devices.scale.commands.tare]
send = "T\r\n"
poll = false          # only on request
timeout = 0.3

[devices.scale.commands.zero]
send = "Z\r\n"
poll = false
timeout = 0.2
"""


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


@contextlib.asynccontextmanager
async def scale_running(pty: Pty) -> AsyncIterator[tuple[SerialDriver, Responder, Collector]]:
    responder = Responder(pty, {b"W\r\n": b"ST,GS,  12.345 kg\r\n", b"T\r\n": b"OK TARE\r\n", b"Z\r\n": None})
    driver = SerialDriver(device_from_toml("scale", SCALE.format(path=pty.path)))
    sink = Collector()
    task = asyncio.create_task(driver.run(sink), name="serial[scale]")
    try:
        await wait_for(lambda: len(sink.values("weight")) >= 2, what="polls")
        yield driver, responder, sink
    finally:
        responder.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.close()


async def test_a_named_command_is_sent_between_polls_and_its_reply_returned(pty: Pty) -> None:
    async with scale_running(pty) as (driver, responder, sink):
        assert isinstance(driver, Commandable) and driver.command_devices == ("scale",)
        reply = await driver.send_command("scale", "tare")
        assert reply.reply == "OK TARE" and reply.readings == ()
        assert responder.heard.count(b"T\r\n") == 1
        polls = len(sink.values("weight"))
        await wait_for(lambda: len(sink.values("weight")) >= polls + 3, what="polling goes on")
        # The tare command is never polled.
        assert responder.heard.count(b"T\r\n") == 1

        readings = await driver.read_points("scale", ["weight"])
        assert [(r.point, r.value, r.unit) for r in readings] == [("weight", 12.345, "kg")]


async def test_unknown_names_are_refused_and_a_silent_device_times_out(pty: Pty) -> None:
    async with scale_running(pty) as (driver, _, _):
        with pytest.raises(UnknownTarget, match="no command 'reboot'") as unknown:
            await driver.send_command("scale", "reboot")
        assert unknown.value.code == "unknown-command"
        with pytest.raises(UnknownTarget, match="no point 'volts'"):
            await driver.read_points("scale", ["volts"])
        with pytest.raises(DeviceTimeout, match=r"no reply to command 'zero' within 0\.2s"):
            await driver.send_command("scale", "zero")
        # The poll goes on after the silent command.
        assert (await driver.send_command("scale", "tare")).reply == "OK TARE"


def test_a_streaming_device_takes_no_commands(pty: Pty) -> None:
    text = f"""
[devices.gps]
driver = "serial"
port = "{pty.path}"
parser = {{ kind = "nmea" }}
points = [{{ name = "lat", field = "latitude" }}]
"""
    driver = SerialDriver(device_from_toml("gps", text))
    assert driver.command_devices == ()
    with pytest.raises(CommandRefused, match="streams on its own"):
        asyncio.run(driver.send_command("gps", "x"))
