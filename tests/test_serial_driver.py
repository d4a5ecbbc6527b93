"""The serial driver against simulated sensors on pseudo-terminal pairs.

Each test plays a sensor on the master end of a pty while the driver reads the slave path exactly as it
would read a USB adapter, and checks the readings emitted, the counters and the log lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from drivers.serial.driver import SerialDriver
from drivers.serial.framing import checksum_bytes, nmea_sentence
from gateway.model import Quality
from serial_helpers import Collector, Pty, device_from_toml, wait_for

LOGGER = "fieldgate.serial"


@pytest.fixture
def pty() -> AsyncIterator[Pty]:
    p = Pty()
    yield p
    p.close()


@asynccontextmanager
async def running(driver: SerialDriver, sink: Collector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(driver.run(sink), name=f"{driver.name}.run")
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await driver.close()


def logged(caplog: pytest.LogCaptureFixture, text: str, level: int | None = None) -> int:
    return sum(1 for r in caplog.records if text in r.getMessage() and (level is None or r.levelno == level))


async def opened(caplog: pytest.LogCaptureFixture, device: str, count: int = 1) -> None:
    await wait_for(lambda: logged(caplog, f"serial[{device}]: opened") >= count, what=f"{device} to open")


# -- a GPS receiver streaming NMEA 0183 ---------------------------------------------------------------------
GPS_TOML = """
[devices.gps]
driver = "serial"
port = "{path}"
baudrate = 9600
framing = {{ kind = "line", terminator = "\\r\\n", max_length = 100, checksum = "nmea" }}
parser = {{ kind = "nmea" }}
points = [
  {{ name = "latitude", field = "GGA.latitude", unit = "deg" }},
  {{ name = "longitude", field = "GGA.longitude", unit = "deg" }},
  {{ name = "altitude", field = "GGA.altitude", unit = "m" }},
  {{ name = "fix", field = "GGA.fix_quality", type = "int" }},
  {{ name = "satellites", field = "GGA.satellites", type = "int" }},
  {{ name = "speed", field = "RMC.speed", unit = "km/h", scale = 1.852 }},
  {{ name = "course", field = "RMC.course", unit = "deg" }},
  {{ name = "utc", field = "RMC.utc", type = "string" }},
]
"""


async def test_gps_stream_gives_positions_and_drops_sentences_with_bad_checksums(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    driver = SerialDriver(device_from_toml("gps", GPS_TOML.format(path=pty.path)))
    sink = Collector()
    async with running(driver, sink):
        await opened(caplog, "gps")
        gga = nmea_sentence(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
        corrupt = nmea_sentence(b"GPGGA,123520,4807.038,N,01131.000,E,1,08,0.9,999.9,M,46.9,M,,")
        corrupt = corrupt[:-2] + (b"00" if corrupt[-2:] != b"00" else b"11")
        gsv = nmea_sentence(b"GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45")
        rmc = nmea_sentence(b"GPRMC,123521,A,4807.038,N,01131.000,E,022.4,084.4,291126,003.1,W")
        south = nmea_sentence(b"GNGGA,123522.50,3351.600,S,15112.600,W,2,11,1.1,-12.5,M,,M,,")
        stream = b"\r\n".join([gga, corrupt, gsv, rmc]) + b"\r\n\x00\xfe\x13garbage" + south + b"\r\n"
        # Sent in small pieces, as a 9600-baud line delivers it.
        for i in range(0, len(stream), 7):
            pty.write(stream[i : i + 7])
        await wait_for(lambda: len(sink.batches) >= 3, what="three fixes")

    by_batch = [{r.point: r.value for r in batch} for batch in sink.batches]
    assert by_batch[0] == {
        "latitude": pytest.approx(48.1173),
        "longitude": pytest.approx(11.516666667),
        "altitude": 545.4,
        "fix": 1,
        "satellites": 8,
    }
    assert by_batch[1] == {
        "speed": pytest.approx(22.4 * 1.852),
        "course": 84.4,
        "utc": "2026-11-29T12:35:21Z",
    }
    assert by_batch[2] == {
        "latitude": pytest.approx(-33.86),
        "longitude": pytest.approx(-151.21),
        "altitude": -12.5,
        "fix": 2,
        "satellites": 11,
    }
    assert len(sink.batches) == 3
    assert all(r.quality is Quality.GOOD and r.device == "gps" for r in sink.readings)
    assert {r.point: r.unit for r in sink.batches[0]}["altitude"] == "m"
    counters = driver.counters
    assert counters["bad_checksums"] == 1
    assert counters["frames"] == 4
    assert counters["garbage_bytes"] == len(b"\x00\xfe\x13garbage")
