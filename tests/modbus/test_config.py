"""How a field engineer describes buses, meters and register maps, and what we tell them when it is wrong."""

from __future__ import annotations

from drivers.modbus.codec import DataType, Order
from drivers.modbus.config import RegisterTable, SerialBus, TcpEndpoint, check_write, parse_address

from .helpers import parse

PLANT = """
[drivers.modbus]
max_connections_per_host = 2

[drivers.modbus.buses.rs485-1]
port = "/dev/serial/by-id/usb-FTDI-if00"
baudrate = 19200
parity = "even"
timeout = 0.3
inter_frame_pause = 0.01

[drivers.modbus.profiles.em24]
order = "CDAB"
max_gap = 4
forbidden = ["input:100-199"]
groups = { fast = 0.5 }
[drivers.modbus.profiles.em24.points.voltage]
address = "300001"
type = "int32"
scale = 0.1
unit = "V"
group = "fast"
[drivers.modbus.profiles.em24.points.energy]
table = "input"
address = 52
type = "uint64"
order = "ABCD"
unit = "kWh"
interval = 60

[devices.meter-a]
driver = "modbus"
bus = "rs485-1"
unit_id = 1
profile = "em24"

[devices.meter-b]
driver = "modbus"
bus = "rs485-1"
unit_id = 2
profile = "em24"
timeout = 0.8
[devices.meter-b.points.relay]
table = "coil"
address = 0
writable = true

[devices.plc]
driver = "modbus"
host = "10.0.0.5"
unit_id = 255
[devices.plc.points.setpoint]
address = "40010"
type = "float32"
writable = true
min = 0
max = 100
[devices.plc.points.alarm]
table = "input"
address = 3
type = "bool"
bit = 7
on_change = true
[devices.plc.points.name]
address = 20
type = "string"
length = 10
order = "BADC"
"""


def test_a_plant_with_a_shared_bus_a_profile_and_a_tcp_plc_parses_to_typed_settings() -> None:
    config, problems = parse(PLANT)
    assert problems == []
    assert [d.name for d in config.devices] == ["meter-a", "meter-b", "plc"]
    bus_link, tcp_link = config.links
    bus = bus_link.link
    assert isinstance(bus, SerialBus)
    assert (bus.port, bus.baudrate, bus.parity, bus.timeout, bus.inter_frame_pause) == (
        "/dev/serial/by-id/usb-FTDI-if00",
        19200,
        "E",
        0.3,
        0.01,
    )
    a, b = bus_link.devices
    # One profile, two meters with their own unit ids; the device's own settings win.
    assert (a.unit_id, b.unit_id, a.timeout, b.timeout) == (1, 2, 0.3, 0.8)
    voltage = a.points[0]
    assert (voltage.table, voltage.address, voltage.dtype, voltage.order) == (
        RegisterTable.INPUT,
        0,
        DataType.INT32,
        Order.CDAB,
    )
    assert (voltage.scale, voltage.unit, voltage.interval) == (0.1, "V", 0.5)
    energy = a.points[1]
    assert (energy.order, energy.interval) == (Order.ABCD, 60.0)
    assert a.limits.max_gap == 4 and a.limits.forbidden[0].start == 100
    assert [p.name for p in b.points] == ["voltage", "energy", "relay"]
    endpoint = tcp_link.link
    assert isinstance(endpoint, TcpEndpoint)
    assert (endpoint.host, endpoint.port, endpoint.connections) == ("10.0.0.5", 502, 2)
    setpoint, alarm, name = tcp_link.devices[0].points
    assert (setpoint.table, setpoint.address, setpoint.minimum, setpoint.maximum) == (
        RegisterTable.HOLDING,
        9,
        0,
        100,
    )
    assert (alarm.bit, alarm.on_change) == (7, True)
    assert (name.length, name.count, name.order) == (10, 5, Order.BADC)
    assert [p.name for p in config.devices[2].points] == ["setpoint", "alarm", "name"]


def test_the_register_notation_rule() -> None:
    assert parse_address("40001") == (RegisterTable.HOLDING, 0)
    assert parse_address("400001") == (RegisterTable.HOLDING, 0)
    assert parse_address("30010") == (RegisterTable.INPUT, 9)
    assert parse_address("00001") == (RegisterTable.COIL, 0)
    assert parse_address("10002") == (RegisterTable.DISCRETE, 1)
    assert parse_address("465536") == (RegisterTable.HOLDING, 65535)
    # Integers are always 0-based protocol addresses, never notation.
    assert parse_address(40001) == (None, 40001)
    assert isinstance(parse_address("40000"), str)  # register numbers are 1-based
    assert isinstance(parse_address("20001"), str)  # no table 2
    assert isinstance(parse_address("4001"), str)


def test_every_mistake_in_a_file_is_reported_at_once_with_its_key_path() -> None:
    _, problems = parse(
        """
[drivers.modbus.buses.rs485-1]
port = "/dev/ttyUSB0"
parity = "X"
baudrat = 9600

[devices.m1]
driver = "modbus"
bus = "rs485-2"
[devices.m1.points.v]
address = "50001"
type = "int24"
[devices.m1.points.w]
table = "input"
address = 1
type = "float32"
order = "ABDC"
writable = true

[devices.m2]
driver = "modbus"
bus = "rs485-1"
host = "10.0.0.1"
forbidden = ["holding:10-20"]
[devices.m2.points.x]
address = 15
[devices.m2.points.s]
table = "coil"
address = 3
type = "int16"
"""
    )
    text = "\n".join(problems)
    assert (
        'gateway.toml: drivers.modbus.buses.rs485-1.parity = "X": expected one of "none", "even", "odd"'
        in text
    )
    assert "gateway.toml: drivers.modbus.buses.rs485-1.baudrat: unknown key" in text
    assert 'devices.m1.bus = "rs485-2": no such bus (buses: rs485-1)' in text
    assert 'devices.m1.points.v.address = "50001": register notation starts with 0' in text
    assert 'devices.m1.points.v.type = "int24": expected one of bool, int16' in text
    assert 'devices.m1.points.w.order = "ABDC": byte/word order must be ABCD, CDAB, BADC or DCBA' in text
    assert "devices.m1.points.w.writable = true: inputs are read-only in Modbus" in text
    assert "devices.m2.bus: name a serial bus" in text
    assert "devices.m2.points.x.address = 15: reads forbidden holding addresses 10..20" in text
    assert 'devices.m2.points.s.type = "int16": a coil holds one bit: its type is bool' in text
    assert len(problems) == 10


def test_unit_ids_on_one_bus_are_unique_and_points_need_an_existing_group() -> None:
    _, problems = parse(
        """
[drivers.modbus.buses.b]
port = "/dev/ttyS0"
[devices.a]
driver = "modbus"
bus = "b"
unit_id = 3
[devices.a.points.p]
address = 0
group = "fast"
[devices.c]
driver = "modbus"
bus = "b"
unit_id = 3
[devices.c.points.p]
address = 0
"""
    )
    assert any("devices.a.points.p.group" in p and "no such group" in p for p in problems)
    assert any("devices.c.unit_id = 3: already used on this bus by device a" in p for p in problems)


def test_writes_are_checked_against_the_points_type_range_and_allowed_values() -> None:
    config, problems = parse(
        """
[devices.d]
driver = "modbus"
host = "127.0.0.1"
[devices.d.points.sp]
address = 0
type = "int16"
scale = 0.1
writable = true
min = -10
max = 10
[devices.d.points.mode]
address = 1
writable = true
allowed = [0, 1, 4]
[devices.d.points.ro]
address = 2
"""
    )
    assert problems == []
    sp, mode, ro = config.links[0].devices[0].points
    assert check_write(sp, 2.5) is None
    assert "above the point's maximum" in (check_write(sp, 11) or "")
    assert "expected a number" in (check_write(sp, "x") or "")
    assert check_write(mode, 4) is None
    assert "not one of the allowed values" in (check_write(mode, 2) or "")
    assert "not writable" in (check_write(ro, 1) or "")


def test_points_keyed_by_name_or_listed_with_names_give_the_same_config() -> None:
    keyed, keyed_problems = parse(
        """
        [drivers.modbus.buses.line]
        port = "/dev/ttyUSB0"
        [drivers.modbus.profiles.meter.points.voltage]
        address = 0
        unit = "V"
        [drivers.modbus.profiles.meter.points.current]
        address = 1
        [devices.m1]
        driver = "modbus"
        bus = "line"
        profile = "meter"
        [devices.m1.points.relay]
        table = "coil"
        address = 3
        """.replace("\n        ", "\n")
    )
    listed, listed_problems = parse(
        """
        [[drivers.modbus.buses]]
        name = "line"
        port = "/dev/ttyUSB0"
        [[drivers.modbus.profiles]]
        name = "meter"
        points = [{ name = "voltage", address = 0, unit = "V" }, { name = "current", address = 1 }]
        [devices.m1]
        driver = "modbus"
        bus = "line"
        profile = "meter"
        [[devices.m1.points]]
        name = "relay"
        table = "coil"
        address = 3
        """.replace("\n        ", "\n")
    )

    assert keyed_problems == listed_problems == []
    assert keyed == listed
    assert [p.name for p in keyed.links[0].devices[0].points] == ["voltage", "current", "relay"]


def test_a_point_listed_twice_is_reported_once_where_it_repeats() -> None:
    _, problems = parse(
        """
        [devices.m1]
        driver = "modbus"
        host = "10.0.0.9"
        points = [{ name = "v", address = 0 }, { name = "v", address = 1 }]
        """.replace("\n        ", "\n")
    )

    assert problems == [
        'gateway.toml: devices.m1.points[1].name = "v": duplicate point name (first at devices.m1.points[0])'
    ]
