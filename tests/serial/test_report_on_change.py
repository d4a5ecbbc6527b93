"""A serial point with ``on_change = true`` is reported when its quality changes or its value moves beyond
its deadband from the last *reported* value, and unchanged again at least every ``report_period``, so a
chatty sensor does not flood the uplink while a consumer can still tell "unchanged" from "gateway gone"."""

from __future__ import annotations

import asyncio
import itertools
import logging
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from drivers.serial import plugin
from drivers.serial.config import SerialConfig
from drivers.serial.driver import SerialDriver
from gateway.model import DEFAULT_REPORT_PERIOD, Quality
from gateway.schema import Problems, Table
from tests.support.serial import Collector, Pty, Responder, device_from_toml, wait_for


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


@asynccontextmanager
async def running(
    driver: SerialDriver, sink: Collector, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[None]:
    """Run the driver until the block ends; the block starts once the port is open (opening flushes it)."""
    caplog.set_level(logging.INFO, "fieldgate.serial")
    task = asyncio.create_task(driver.run(sink), name=f"{driver.name}.run")
    try:
        opened = f"{driver.name}: opened"
        await wait_for(
            lambda: any(opened in r.getMessage() for r in caplog.records),
            within=30.0,
            what="the port to open",
        )
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await driver.close()


def parse(text: str) -> tuple[SerialConfig, list[str]]:
    data = tomllib.loads(text)
    problems = Problems("gw.toml")
    section = Table(data["drivers"]["serial"], "drivers.serial", problems) if "drivers" in data else None
    devices = []
    for name, table in data["devices"].items():
        t = Table(table, f"devices.{name}", problems)
        t.consume("driver")
        devices.append((name, t))
    return plugin.parse(section, devices), problems.lines


def device(name: str, port: str, extra: str = "") -> str:
    return (
        f'[devices.{name}]\ndriver = "serial"\nport = "{port}"\n'
        'parser = { kind = "csv", columns = ["tag", "temperature", "state"] }\n' + extra
    )


def test_the_period_comes_from_the_point_else_device_else_driver_section() -> None:
    config, problems = parse(
        "[drivers.serial]\nreport_period = 120\n"
        + device("a", "/dev/ttyUSB0", "report_period = 30\n")
        + "[devices.a.points.t]\nfield = 'temperature'\non_change = true\nreport_period = 5\n"
        + "[devices.a.points.s]\nfield = 'state'\ntype = 'string'\non_change = true\n"
        + device("b", "/dev/ttyUSB1")
        + "[devices.b.points.t]\nfield = 'temperature'\non_change = true\ndeadband = 0.5\n"
    )
    assert problems == []
    got = {
        (d.name, p.name): (p.on_change, p.deadband, p.report_period) for d in config.specs for p in d.points
    }
    assert got == {
        ("a", "t"): (True, 0.0, 5.0),
        ("a", "s"): (True, 0.0, 30.0),
        ("b", "t"): (True, 0.5, 120.0),
    }
    config, problems = parse(device("c", "/dev/ttyUSB2") + "[devices.c.points.t]\nfield = 'temperature'\n")
    assert problems == []
    (point,) = config.specs[0].points
    assert (point.on_change, point.report_period) == (False, DEFAULT_REPORT_PERIOD)


def test_a_polled_command_s_points_take_the_device_period() -> None:
    config, problems = parse(
        '[devices.scale]\ndriver = "serial"\nport = "/dev/ttyUSB0"\nmode = "polled"\nreport_period = 60\n'
        "parser = { kind = 'regex', pattern = '^(?P<weight>[-0-9.]+) kg$' }\n"
        "[devices.scale.commands.weight]\nsend = 'W'\n"
        "points = [{ name = 'weight', field = 'weight', on_change = true, deadband = 0.01 }]\n"
    )
    assert problems == []
    (point,) = config.specs[0].all_points
    assert (point.on_change, point.deadband, point.report_period) == (True, 0.01, 60.0)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (
            "[devices.a.points.t]\nfield = 'temperature'\ndeadband = 0.5\n",
            "devices.a.points.t.deadband = 0.5: applies only with on_change = true",
        ),
        (
            "[devices.a.points.t]\nfield = 'temperature'\nreport_period = 5\n",
            "devices.a.points.t.report_period = 5.0: applies only with on_change = true",
        ),
        (
            "[devices.a.points.t]\nfield = 'temperature'\non_change = true\nreport_period = 0\n",
            "devices.a.points.t.report_period",
        ),
        (
            "[devices.a.points.t]\nfield = 'temperature'\non_change = true\ndeadband = -1\n",
            "devices.a.points.t.deadband",
        ),
        (
            "[devices.a.points.s]\nfield = 'state'\ntype = 'string'\non_change = true\ndeadband = 1\n",
            "devices.a.points.s.deadband = 1.0: a string point is reported on any change",
        ),
        (
            "report_period = -3\n[devices.a.points.t]\nfield = 'temperature'\n",
            "devices.a.report_period",
        ),
    ],
)
def test_a_setting_that_cannot_apply_is_an_error_naming_its_key(points: str, expected: str) -> None:
    _, problems = parse(device("a", "/dev/ttyUSB0") + points)
    assert any(expected in line for line in problems), problems


STREAM = """
[devices.probe]
driver = "serial"
port = "{path}"
framing = {{ kind = "line" }}
parser = {{ kind = "csv", columns = ["tag", "temperature", "state"] }}
points = [
  {{ name = "temperature", field = "temperature", unit = "degC", on_change = true, deadband = 0.5 }},
  {{ name = "state", field = "state", type = "string", on_change = true }},
  {{ name = "raw", field = "temperature" }},
]
"""


async def test_a_streaming_point_is_reported_when_it_moves_beyond_its_deadband_from_the_last_report(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    driver = SerialDriver(device_from_toml("probe", STREAM.format(path=pty.path)))
    sink = Collector()
    lines = [
        b"P,20.0,ON",  # first value: reported
        b"P,20.25,ON",  # 0.25 from 20.0: held back
        b"P,20.5,ON",  # 0.5 from 20.0, not beyond the deadband: held back
        b"P,20.75,ON",  # 0.75 from the last *reported* 20.0: reported
        b"P,20.5,OFF",  # the state changed; 0.25 from 20.75: only the state
        b"P,err,OFF",  # the temperature goes BAD: reported
        b"P,20.75,OFF",  # GOOD again at the last reported value: a quality change, reported
        b"P,21.5,END",
    ]
    async with running(driver, sink, caplog):
        pty.write(b"".join(line + b"\n" for line in lines))
        await wait_for(lambda: "END" in sink.values("state"), within=30.0, what="the last line")

    temperature = [(r.value, r.quality) for r in sink.readings if r.point == "temperature"]
    assert temperature == [
        (20.0, Quality.GOOD),
        (20.75, Quality.GOOD),
        (None, Quality.BAD),
        (20.75, Quality.GOOD),
        (21.5, Quality.GOOD),
    ]
    assert sink.values("state") == ["ON", "OFF", "END"]
    # A point without on_change is reported at every frame, as before.
    assert len(sink.values("raw")) == len(lines)


PERIODIC = """
[drivers.serial]
report_period = 3600

[devices.steady]
driver = "serial"
port = "{path}"
report_period = 0.3
framing = {{ kind = "line" }}
parser = {{ kind = "csv", columns = ["tag", "temperature", "state"] }}
points = [
  {{ name = "temperature", field = "temperature", on_change = true, deadband = 1 }},
  {{ name = "state", field = "state", type = "string", on_change = true, report_period = 3600 }},
  {{ name = "raw", field = "temperature" }},
]
"""


async def test_an_unchanged_streaming_point_is_reported_again_each_period(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    driver = SerialDriver(device_from_toml("steady", PERIODIC.format(path=pty.path)))
    sink = Collector()

    def reports() -> list[float]:
        return [r.timestamp for r in sink.readings if r.point == "temperature"]

    async def sensor() -> None:
        # A sensor printing the same line over and over, as many do.
        while True:
            pty.write(b"S,20.0,ON\n")
            await asyncio.sleep(0.02)

    async with running(driver, sink, caplog):
        writer = asyncio.create_task(sensor(), name="test.sensor")
        try:
            await wait_for(lambda: len(reports()) >= 4, within=30.0, what="four periodic reports")
        finally:
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writer

    gaps = [b - a for a, b in itertools.pairwise(reports())]
    # Never more often than the period (a lower bound: holds on a slow machine too) ...
    assert min(gaps) >= 0.25, gaps
    # ... while frames came far more often, and the hour-long period kept the state quiet.
    assert len(sink.values("raw")) > len(reports())
    assert sink.values("state") == ["ON"]


POLLED = r"""
[devices.scale]
driver = "serial"
port = "{path}"
mode = "polled"
framing = {{ kind = "line", terminator = "\r\n" }}
parser = {{ kind = "regex", pattern = '^(?P<weight>[-0-9.]+) kg$' }}

[devices.scale.commands.weight]
send = "W\r\n"
interval = 0.02
timeout = 2.0
points = [{{ name = "weight", field = "weight", unit = "kg", on_change = true, deadband = 0.01 }}]
"""


async def test_a_polled_point_answering_the_same_weight_is_reported_once(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    driver = SerialDriver(device_from_toml("scale", POLLED.format(path=pty.path)))
    sink = Collector()
    scale = Responder(pty, {b"W\r\n": b"12.50 kg\r\n"})
    try:
        async with running(driver, sink, caplog):
            await wait_for(lambda: len(scale.heard) >= 10, within=30.0, what="ten polls")
            scale.answers[b"W\r\n"] = b"12.60 kg\r\n"
            await wait_for(lambda: len(sink.values("weight")) >= 2, within=30.0, what="the new weight")
            heard = len(scale.heard)
            await wait_for(lambda: len(scale.heard) >= heard + 5, within=30.0, what="five more polls")
    finally:
        scale.stop()
    assert sink.values("weight") == [12.5, 12.6]
