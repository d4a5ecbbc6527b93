"""The serial driver against simulated sensors on pseudo-terminal pairs.

Each test plays a sensor on the master end of a pty while the driver reads the slave path exactly as it
would read a USB adapter, and checks the readings emitted, the counters and the log lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import termios
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from drivers.serial.config import RS485, Port
from drivers.serial.driver import SerialDriver, open_port
from drivers.serial.framing import checksum_bytes, nmea_sentence
from gateway.errors import DeviceUnavailable
from gateway.model import Quality
from gateway.schema import SerialLine
from tests.support.serial import Collector, Pty, Responder, device_from_toml, wait_for

LOGGER = "fieldgate.serial"


@pytest.fixture
def pty() -> Iterator[Pty]:
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


# -- a weather station printing CSV lines ----------------------------------------------------------------
WEATHER_TOML = """
[devices.weather]
driver = "serial"
port = "{path}"
framing = {{ kind = "line", max_length = 80 }}
parser = {{ kind = "csv", columns = ["station", "temperature", "humidity", "pressure", "wind"] }}
points = [
  {{ name = "temperature", field = "temperature", unit = "degC" }},
  {{ name = "humidity", field = "humidity", unit = "%" }},
  {{ name = "pressure", field = "pressure", unit = "hPa", scale = 0.01 }},
  {{ name = "wind", field = 4, unit = "m/s" }},
]
"""


async def test_weather_station_csv_lines_become_readings_and_bad_lines_are_counted(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    driver = SerialDriver(device_from_toml("weather", WEATHER_TOML.format(path=pty.path)))
    sink = Collector()
    async with running(driver, sink):
        await opened(caplog, "weather")
        pty.write(b"WS1,21.5,45,101325,3.2\r\n")
        pty.write(b"WS1,21.7,err,101300,2.9\n")
        pty.write(b"#" * 200 + b"\n")
        pty.write(b"WS1,\xff\xfe,1\n")
        pty.write(b"WS1,22.0,44,101280,3.1\n")
        await wait_for(lambda: len(sink.batches) >= 3, what="three weather lines")

    assert [[(r.point, r.value, r.quality) for r in b] for b in sink.batches] == [
        [
            ("temperature", 21.5, Quality.GOOD),
            ("humidity", 45.0, Quality.GOOD),
            ("pressure", pytest.approx(1013.25), Quality.GOOD),
            ("wind", 3.2, Quality.GOOD),
        ],
        [
            ("temperature", 21.7, Quality.GOOD),
            ("humidity", None, Quality.BAD),
            ("pressure", pytest.approx(1013.0), Quality.GOOD),
            ("wind", 2.9, Quality.GOOD),
        ],
        [
            ("temperature", 22.0, Quality.GOOD),
            ("humidity", 44.0, Quality.GOOD),
            ("pressure", pytest.approx(1012.8), Quality.GOOD),
            ("wind", 3.1, Quality.GOOD),
        ],
    ]
    assert sink.batches[1][1].reason == "not a number: 'err'"
    assert sink.batches[0][2].unit == "hPa"
    counters = driver.counters
    assert (counters["overlong"], counters["undecodable"], counters["frames"]) == (1, 1, 4)


# -- a scale that answers commands -----------------------------------------------------------------------
SCALE_TOML = r"""
[devices.scale]
driver = "serial"
port = "{path}"
baudrate = 19200
mode = "polled"
framing = {{ kind = "line", terminator = "\r\n", max_length = 64 }}
parser = {{ kind = "regex", pattern = '^(?P<status>ST|US),GS,\s*(?P<weight>[-+]?[0-9.]+)\s*kg$' }}

[devices.scale.commands.weight]
send = "W\r\n"
interval = 0.05
timeout = 2.0
points = [
  {{ name = "weight", field = "weight", unit = "kg" }},
  {{ name = "stable", field = "status", type = "string" }},
]

[devices.scale.commands.temperature]
send = "T?\r\n"
interval = 0.05
timeout = 2.0
parser = {{ kind = "keyvalue", separator = ";" }}
points = [{{ name = "temperature", field = "T", unit = "degC" }}]

[devices.scale.commands.serial_number]
send = [0x1B, 0x53]
interval = 0.05
timeout = 0.1
points = [{{ name = "serial", field = "status", type = "string" }}]
"""


async def test_polled_scale_answers_its_commands_and_a_silent_command_gives_bad_readings(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    scale = Responder(
        pty, {b"W\r\n": b"ST,GS,  12.345 kg\r\n", b"T?\r\n": b"T=23.5;H=40\r\n", b"\x1bS": None}
    )
    driver = SerialDriver(device_from_toml("scale", SCALE_TOML.format(path=pty.path)))
    sink = Collector()
    try:
        async with running(driver, sink):
            await wait_for(lambda: len(sink.values("serial")) >= 3, what="three polls of every command")
    finally:
        scale.stop()

    first_cycle = [[(r.point, r.value, r.quality, r.reason) for r in b] for b in sink.batches[:3]]
    assert first_cycle == [
        [("weight", 12.345, Quality.GOOD, None), ("stable", "ST", Quality.GOOD, None)],
        [("temperature", 23.5, Quality.GOOD, None)],
        [("serial", None, Quality.BAD, "no reply within 0.1s")],
    ]
    assert scale.heard[:3] == [b"W\r\n", b"T?\r\n", b"\x1bS"]
    assert set(sink.values("weight")) == {12.345}
    # The silent command is reported once, not on every poll.
    assert logged(caplog, "no reply to command 'serial_number'", logging.WARNING) == 1
    assert driver.counters["timeouts"] >= 3


# -- a binary instrument: length-prefixed frames with CRC-16/Modbus ------------------------------------------
TANK_TOML = """
[devices.tank]
driver = "serial"
port = "{path}"
baudrate = 115200
framing = {{ kind = "length", header = [0xAA, 0x55], max_length = 32, checksum = "crc16-modbus" }}
parser = {{ kind = "struct", format = "hHB", byteorder = "big", fields = ["temperature", "level", "status"] }}
points = [
  {{ name = "temperature", field = "temperature", unit = "degC", scale = 0.01 }},
  {{ name = "level", field = "level", unit = "m", scale = 0.001, offset = -1.0 }},
  {{ name = "alarm", field = "status", type = "bool" }},
  {{ name = "status", field = 2, type = "int" }},
]
"""


def tank_frame(payload: bytes) -> bytes:
    body = b"\xaa\x55" + bytes((len(payload),)) + payload
    return body + checksum_bytes("crc16-modbus", body, "little")


async def test_binary_instrument_frames_with_crc_are_decoded_and_corrupt_ones_dropped(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    driver = SerialDriver(device_from_toml("tank", TANK_TOML.format(path=pty.path)))
    sink = Collector()
    good1 = tank_frame(struct.pack(">hHB", 2150, 3500, 0))
    corrupt = bytearray(tank_frame(struct.pack(">hHB", 2160, 3600, 0)))
    corrupt[5] ^= 0x01
    good2 = tank_frame(struct.pack(">hHB", -525, 980, 1))
    wrong_layout = tank_frame(struct.pack(">hHBB", 1, 2, 3, 4))
    async with running(driver, sink):
        await opened(caplog, "tank")
        pty.write(good1 + b"\x13\x37noise" + bytes(corrupt) + good2 + wrong_layout)
        await wait_for(lambda: driver.counters["unparsable"] == 1, what="the whole stream")

    assert [[(r.point, r.value) for r in b] for b in sink.batches] == [
        [("temperature", 21.5), ("level", pytest.approx(2.5)), ("alarm", False), ("status", 0)],
        [("temperature", -5.25), ("level", pytest.approx(-0.02)), ("alarm", True), ("status", 1)],
    ]
    assert driver.counters["bad_checksums"] == 1
    assert driver.counters["frames"] == 3


# -- faults: unplugged, missing at start; other devices carry on ------------------------------------------
def point_link(link: Path, target: str) -> None:
    """Re-point a stable name at a (new) pty, the way udev re-creates /dev/serial/by-id/... on replug."""
    tmp = link.with_suffix(".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


async def test_unplugged_port_is_reopened_with_one_error_and_one_recovery_line_while_others_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    first, other = Pty(), Pty()
    link = tmp_path / "weather"
    point_link(link, first.path)
    weather = SerialDriver(device_from_toml("weather", WEATHER_TOML.format(path=link)))
    neighbour = SerialDriver(device_from_toml("gps", GPS_TOML.format(path=other.path)))
    sink, neighbour_sink = Collector(), Collector()
    gga = nmea_sentence(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") + b"\r\n"
    second: Pty | None = None
    try:
        async with running(weather, sink), running(neighbour, neighbour_sink):
            await opened(caplog, "weather")
            await opened(caplog, "gps")
            first.write(b"WS1,21.5,45,101325,3.2\n")
            await wait_for(lambda: len(sink.batches) == 1, what="a reading before the unplug")

            first.close()
            await wait_for(
                lambda: logged(caplog, "serial[weather]", logging.ERROR) == 1, what="the error line"
            )
            # While the weather station is gone, the GPS on its own port keeps reporting.
            other.write(gga)
            await wait_for(lambda: len(neighbour_sink.batches) == 1, what="the neighbour's fix")
            # Several reopen attempts fail quietly meanwhile (debug only).
            await wait_for(lambda: logged(caplog, "still unavailable") >= 2, what="quiet retries")

            second = Pty()
            point_link(link, second.path)
            await wait_for(lambda: logged(caplog, "recovered") == 1, what="the recovery line")
            second.write(b"WS1,22.0,44,101280,3.1\n")
            await wait_for(lambda: len(sink.batches) == 2, what="a reading after the replug")
    finally:
        for p in (first, other, second):
            if p is not None:
                p.close()

    assert [b[0].value for b in sink.batches] == [21.5, 22.0]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("serial[weather]: ")
    assert "reopening with backoff" in errors[0].getMessage()
    recoveries = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recoveries) == 1
    assert recoveries[0].levelno == logging.INFO
    assert recoveries[0].getMessage().startswith("serial[weather]: recovered")


async def test_port_missing_at_start_is_logged_once_and_picked_up_when_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    link = tmp_path / "ttyUSB-weather"
    driver = SerialDriver(device_from_toml("weather", WEATHER_TOML.format(path=link)))
    sink = Collector()
    pty: Pty | None = None
    try:
        async with running(driver, sink):
            await wait_for(lambda: logged(caplog, "still unavailable") >= 2, what="quiet retries")
            pty = Pty()
            point_link(link, pty.path)
            await wait_for(lambda: logged(caplog, "recovered") == 1, what="the recovery line")
            pty.write(b"WS1,21.5,45,101325,3.2\n")
            await wait_for(lambda: len(sink.batches) == 1, what="a reading")
    finally:
        if pty is not None:
            pty.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"serial[weather]: cannot open {link}: No such file or directory;"
        " retrying in 0.05s, backing off up to 0.2s"
    ]


async def test_a_streaming_sensor_that_falls_silent_turns_its_points_bad_once(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    toml = WEATHER_TOML.format(path=pty.path).replace(
        'driver = "serial"', 'driver = "serial"\nsilence_timeout = 0.5'
    )
    driver = SerialDriver(device_from_toml("weather", toml))
    sink = Collector()
    async with running(driver, sink):
        await opened(caplog, "weather")
        pty.write(b"WS1,21.5,45,101325,3.2\n")
        await wait_for(lambda: len(sink.batches) == 2, what="a reading, then the silence")
        # Noise is not talking: the points stay BAD and nothing more is emitted for them.
        pty.write(b"\x00\x00")
        await wait_for(lambda: logged(caplog, "no frame for 0.5s") == 1, what="the warning")
        pty.write(b"WS1,22.0,44,101280,3.1\n")
        await wait_for(lambda: len(sink.batches) == 3, what="the sensor talking again")

    silence = sink.batches[1]
    assert [(r.point, r.value, r.quality, r.reason) for r in silence] == [
        (p, None, Quality.BAD, "no data for 0.5s") for p in ("temperature", "humidity", "pressure", "wind")
    ]
    assert sink.batches[2][0].value == 22.0
    assert logged(caplog, "no frame for 0.5s", logging.WARNING) == 1
    assert logged(caplog, "serial[weather]: frames arrive again", logging.INFO) == 1


async def test_polled_replies_that_make_no_sense_are_bad_and_a_command_that_answers_again_is_logged(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    answers: dict[bytes, bytes | None] = {
        b"W\r\n": b"E01 OVERLOAD\r\n",
        b"T?\r\n": b"T=\xb023\r\n",
        b"\x1bS": None,
    }
    scale = Responder(pty, answers)
    driver = SerialDriver(device_from_toml("scale", SCALE_TOML.format(path=pty.path)))
    sink = Collector()
    try:
        async with running(driver, sink):
            await wait_for(lambda: len(sink.batches) >= 3, what="one poll of every command")
            answers[b"\x1bS"] = b"ST,GS,1 kg\r\n"
            await wait_for(
                lambda: 1 in sink.values("serial") or "ST" in sink.values("serial"), what="an answer"
            )
    finally:
        scale.stop()

    assert [(r.point, r.quality, r.reason) for b in sink.batches[:3] for r in b] == [
        ("weight", Quality.BAD, "unparsable reply"),
        ("stable", Quality.BAD, "unparsable reply"),
        ("temperature", Quality.BAD, "undecodable reply"),
        ("serial", Quality.BAD, "no reply within 0.1s"),
    ]
    assert logged(caplog, "serial[scale]: command 'serial_number' answered again", logging.INFO) == 1
    assert driver.counters["unparsable"] >= 1
    assert driver.counters["undecodable"] >= 1


# -- port settings -------------------------------------------------------------------------------------------
def test_port_settings_reach_the_tty(pty: Pty) -> None:
    port = open_port("gas", Port(SerialLine(pty.path, 19200, 7, "E", 2), rtscts=True))
    try:
        _, _, cflag, _, ispeed, ospeed, _ = termios.tcgetattr(port.fileno())
        settings = (port.baudrate, port.bytesize, port.parity, port.stopbits, port.rtscts, port.xonxoff)
    finally:
        port.close()
    assert settings == (19200, 7, "E", 2, True, False)
    # What the tty itself keeps (a pty always stores 8 data bits without parity, so those two are not seen).
    assert (ispeed, ospeed) == (termios.B19200, termios.B19200)
    assert cflag & termios.CSTOPB
    assert cflag & termios.CRTSCTS


def test_rs485_direction_control_on_an_adapter_without_it_is_a_clear_error(pty: Pty) -> None:
    with pytest.raises(DeviceUnavailable) as raised:
        open_port("scale", Port(SerialLine(pty.path), rs485=RS485()))
    assert str(raised.value) == (
        f"scale: cannot open {pty.path}: Failed to set RS485 mode: [Errno 25] Inappropriate ioctl for device"
    )
