"""The serial driver's configuration: what a good file becomes, and every mistake of a bad one at once."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points

import pytest

from drivers.serial import plugin
from drivers.serial.cli import register
from drivers.serial.config import (
    RS485,
    Command,
    DelimitedFraming,
    KeyValueParser,
    LengthFraming,
    LineFraming,
    NmeaParser,
    Point,
    Port,
    RegexParser,
    SerialConfig,
    StructParser,
)
from gateway.model import DeviceInfo, PointInfo
from gateway.registry import load_driver
from gateway.schema import Problems, SerialLine, Table


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


GOOD = r"""
[drivers.serial]
retry_initial = 0.5
retry_max = 10

[devices.gps]
driver = "serial"
port = "/dev/serial/by-id/usb-u-blox_AG_GNSS_receiver-if00"
baudrate = 38400
framing = { kind = "line", terminator = "\r\n", max_length = 90, checksum = "nmea" }
parser = { kind = "nmea" }
points = [{ name = "lat", field = "latitude", unit = "deg" }]
silence_timeout = 5

[devices.scale]
driver = "serial"
port = "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0"
baudrate = 9600
parity = "even"
bytesize = 7
stopbits = 2
xonxoff = true
mode = "polled"
retry_max = 5
framing = { kind = "line", terminator = "\r\n" }
parser = { kind = "regex", pattern = '(?P<w>[-0-9.]+) kg' }
rs485 = { rts_level_for_tx = false, rts_level_for_rx = true, delay_before_rx = 0.002 }

[devices.scale.commands.weight]
send = "W\r\n"
interval = 2
timeout = 0.3
points = [{ name = "weight", field = "w", unit = "kg" }]

[devices.scale.commands.status]
send = [0x1B, 0x3F]
framing = { kind = "delimited", start = 0x02, end = "\u0003", checksum = "sum8" }
parser = { kind = "keyvalue", separator = ";" }
points = [
  { name = "overload", field = "OL", type = "bool" },
  { name = "count", field = "N", type = "int", scale = 10 },
]

[devices.tank]
driver = "serial"
port = "/dev/ttyAMA0"
parser = { kind = "struct", format = "hH", byteorder = "little", fields = ["temp", "level"] }
points = [
  { name = "temp", field = "temp", unit = "degC", scale = 0.1 },
  { name = "level", field = 1, type = "int" },
]

[devices.tank.framing]
kind = "length"
header = [0xAA, 0x55]
length_size = 2
length_order = "little"
checksum = "crc16-modbus"
"""


def test_a_good_file_becomes_frozen_specs_and_device_infos() -> None:
    config, problems = parse(GOOD)
    assert problems == []
    gps, scale, tank = config.specs
    assert gps.port == Port(SerialLine("/dev/serial/by-id/usb-u-blox_AG_GNSS_receiver-if00", 38400))
    assert gps.framing == LineFraming(b"\r\n", 90, "nmea")
    assert gps.parser == NmeaParser()
    assert (gps.mode, gps.retry_initial, gps.retry_max, gps.silence_timeout) == ("stream", 0.5, 10.0, 5.0)

    assert scale.port == Port(
        SerialLine("/dev/serial/by-id/usb-FTDI_FT232R-if00-port0", 9600, 7, "E", 2),
        False,
        True,
        RS485(rts_level_for_tx=False, rts_level_for_rx=True, delay_before_rx=0.002),
    )
    assert scale.retry_max == 5.0
    assert scale.commands == (
        Command(
            "weight",
            b"W\r\n",
            2.0,
            0.3,
            LineFraming(b"\r\n"),
            RegexParser("(?P<w>[-0-9.]+) kg"),
            (Point("weight", "w", "float", "kg"),),
        ),
        Command(
            "status",
            b"\x1b?",
            1.0,
            1.0,
            DelimitedFraming(b"\x02", b"\x03", 256, "sum8"),
            KeyValueParser(";"),
            (Point("overload", "OL", "bool"), Point("count", "N", "int", None, 10.0)),
        ),
    )
    assert tank.framing == LengthFraming(b"\xaa\x55", 2, "little", 0, 256, "crc16-modbus")
    assert tank.parser == StructParser("<hH", ("temp", "level"))
    assert tank.points[1] == Point("level", "1", "int")

    assert config.devices == (
        DeviceInfo("gps", "serial", (PointInfo("lat", "deg"),)),
        DeviceInfo("scale", "serial", (PointInfo("weight", "kg"), PointInfo("overload"), PointInfo("count"))),
        DeviceInfo("tank", "serial", (PointInfo("temp", "degC"), PointInfo("level"))),
    )
    assert [d.name for d in plugin.build(config)] == ["serial[gps]", "serial[scale]", "serial[tank]"]
    # Settings compare equal across reloads, so an unchanged device keeps running on SIGHUP.
    assert parse(GOOD)[0].specs == config.specs


BAD = r"""
[drivers.serial]
retry_initial = 0

[devices.gps]
driver = "serial"
baudrate = "fast"
parity = "sometimes"
stopbits = 3
framing = { kind = "line", checksum = "crc16-modbus", max_lenght = 10 }
parser = { kind = "nmea" }
points = [{ name = "lat", field = "lattitude" }, { name = "lat", field = "longitude", type = "double" }]

[devices.scale]
driver = "serial"
port = "/dev/ttyUSB0"
mode = "polled"
silence_timeout = 3
parser = { kind = "regex", pattern = '(unclosed' }
points = [{ name = "w" }]

[devices.scale.commands.weight]
send = "Wä€"
interval = -1
points = [{ name = "weight", field = "w", type = "int", scale = 0.5 }]

[devices.tank]
driver = "serial"
port = "/dev/ttyUSB0"
framing = { kind = "fixed", length = 1, header = [0xAA, 300], checksum = "crc16-modbus" }
parser = { kind = "struct", format = "<hX", fields = ["a", "b"] }
"""


def test_every_mistake_is_reported_at_once_with_its_key_path() -> None:
    _, problems = parse(BAD)
    assert problems == [
        "gw.toml: drivers.serial.retry_initial = 0: must be greater than 0",
        "gw.toml: devices.gps.port: is required",
        'gw.toml: devices.gps.baudrate = "fast": expected an integer',
        'gw.toml: devices.gps.parity = "sometimes": expected one of "none", "even", "odd", "mark", "space"',
        "gw.toml: devices.gps.stopbits = 3.0: expected 1, 1.5 or 2",
        'gw.toml: devices.gps.framing.checksum = "crc16-modbus": expected one of "none", "nmea"',
        "gw.toml: devices.gps.framing.max_lenght: unknown key",
        # The shared reader checks every name first and leaves a duplicate entry out (so its own
        # mistakes, here type = "double", show once it has a name of its own).
        'gw.toml: devices.gps.points[1].name = "lat": duplicate point name (first at devices.gps.points[0])',
        'gw.toml: devices.gps.points[0].field = "lattitude": is not produced by this parser (expected NMEA'
        " fields such as latitude, GGA.altitude, RMC.speed)",
        'gw.toml: devices.scale.parser.pattern = "(unclosed": is not a valid regular expression'
        " (missing ), unterminated subpattern)",
        "gw.toml: devices.scale.silence_timeout: is for streaming devices;"
        " a polled command has its own timeout",
        "gw.toml: devices.scale.points: a polled device lists its points under each command",
        'gw.toml: devices.scale.commands.weight.send = "Wä€": characters above U+00FF cannot be sent as one'
        " byte; use an array of bytes",
        "gw.toml: devices.scale.commands.weight.interval = -1: must be greater than 0",
        "gw.toml: devices.scale.commands.weight.points[0].scale = 0.5: an int point takes whole-number scale"
        ' and offset; use type = "float"',
        "gw.toml: devices.tank.framing.header = [170, 300]: every byte must be between 0 and 255",
        "gw.toml: devices.tank.framing.length = 1: is shorter than the header and checksum together",
        'gw.toml: devices.tank.parser.format = "<hX": give the byte order with byteorder = little/big, not in'
        " the format",
        'gw.toml: devices.tank.parser.format = "hX": is not a valid struct format'
        " (bad char in struct format)",
        "gw.toml: devices.tank.parser.fields = ['a', 'b']: names 2 values but the format unpacks 0",
        "gw.toml: devices.tank.points: at least one point is required ([devices.tank.points.<name>] with a"
        " field)",
        "gw.toml: devices.tank.port = \"/dev/ttyUSB0\": is already used by device 'scale'",
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [('"\\r\\n"', b"\r\n"), ("0x02", b"\x02"), ("[0xAA, 0x55]", b"\xaa\x55"), ('"\\u0002OK"', b"\x02OK")],
)
def test_byte_strings_may_be_text_a_byte_or_an_array(raw: str, expected: bytes) -> None:
    config, problems = parse(
        f"""
[devices.x]
driver = "serial"
port = "/dev/ttyS0"
mode = "polled"
parser = {{ kind = "json" }}
[devices.x.commands.c]
send = {raw}
points = [{{ name = "v", field = "v" }}]
"""
    )
    assert problems == []
    assert config.specs[0].commands[0].send == expected


def test_long_binary_frames_without_a_header_are_refused() -> None:
    _, problems = parse(
        """
[devices.x]
driver = "serial"
port = "/dev/ttyS0"
framing = { kind = "length", max_length = 1000, checksum = "sum8" }
parser = { kind = "json" }
points = [{ name = "v", field = "v" }]
"""
    )
    assert problems == [
        "gw.toml: devices.x.framing.max_length = 1000: checksummed frames without a header may be at most"
        " 256 bytes; add a header"
    ]


def test_the_plugin_and_its_command_are_registered_as_entry_points() -> None:
    assert load_driver("serial") is plugin
    (command,) = [ep for ep in entry_points(group="fieldgate.cli") if ep.name == "serial"]
    assert command.load() is register


KEYED = r"""
[devices.scale]
driver = "serial"
port = "/dev/ttyUSB1"
mode = "polled"
parser = { kind = "keyvalue" }

[devices.scale.commands.weight]
send = "W\r\n"

[devices.scale.commands.weight.points.weight]
field = "W"
unit = "kg"

[devices.scale.commands.weight.points.tare]
field = "T"

[devices.scale.commands.status]
send = "S\r\n"
points.overload = { field = "OL", type = "bool" }

[devices.tank]
driver = "serial"
port = "/dev/ttyUSB2"
parser = { kind = "csv" }

[devices.tank.points.level]
field = 0
"""

ARRAYS = r"""
[devices.scale]
driver = "serial"
port = "/dev/ttyUSB1"
mode = "polled"
parser = { kind = "keyvalue" }

[[devices.scale.commands]]
name = "weight"
send = "W\r\n"
points = [{ name = "weight", field = "W", unit = "kg" }, { name = "tare", field = "T" }]

[[devices.scale.commands]]
name = "status"
send = "S\r\n"

[[devices.scale.commands.points]]
name = "overload"
field = "OL"
type = "bool"

[devices.tank]
driver = "serial"
port = "/dev/ttyUSB2"
parser = { kind = "csv" }
points = [{ name = "level", field = 0 }]
"""


def test_points_and_commands_keyed_by_name_or_listed_with_names_give_the_same_config() -> None:
    keyed, keyed_problems = parse(KEYED)
    listed, listed_problems = parse(ARRAYS)

    assert keyed_problems == listed_problems == []
    assert keyed == listed
    assert [c.name for c in keyed.specs[0].commands] == ["weight", "status"]
    assert [p.name for p in keyed.specs[0].all_points] == ["weight", "tare", "overload"]
