"""Three slaves on one RS-485 bus (RTU over joined pseudo-terminals): one dies, the others keep their pace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU

from drivers.modbus.driver import ModbusLinkDriver, build_drivers
from gateway.errors import DeviceProtocolError, DeviceRefused, DeviceTimeout, DriverError
from gateway.model import Quality

from .conftest import Collector
from .helpers import parse

BUS = """
[drivers.modbus.buses.rs485-1]
port = "{port}"
baudrate = 115200
timeout = 0.05
retries = 1
backoff_max = 0.4
inter_frame_pause = 0.002

[drivers.modbus.profiles.meter]
interval = 0.1
[drivers.modbus.profiles.meter.points.volts]
table = "input"
address = 0
type = "uint16"
scale = 0.1
[drivers.modbus.profiles.meter.points.energy]
table = "input"
address = 1
type = "uint32"

[devices.m1]
driver = "modbus"
bus = "rs485-1"
unit_id = 1
profile = "meter"
[devices.m2]
driver = "modbus"
bus = "rs485-1"
unit_id = 2
profile = "meter"
[devices.m3]
driver = "modbus"
bus = "rs485-1"
unit_id = 3
profile = "meter"
"""


class Bus:
    def __init__(self, faults: Any, server: Any, modem: Any) -> None:
        self.faults = faults
        self.server = server
        self.modem = modem


@pytest.fixture
async def bus(simulator: ModuleType, null_modem: Any) -> AsyncIterator[Bus]:
    faults = simulator.Faults()
    slaves = [simulator.device(u, inputs=[2300 + u, 0, 1000 * u]) for u in (1, 2, 3)]
    server = await simulator.start_rtu(slaves, null_modem.server_path, faults)
    yield Bus(faults, server, null_modem)
    await server.shutdown()


def rate(collector: Collector, device: str, since: float) -> tuple[int, float]:
    """Poll cycles per second of ``device`` from its emits after ``since`` (first to last)."""
    times = [t for t, _ in collector.of(device) if t >= since]
    return len(times), (len(times) - 1) / (times[-1] - times[0])


async def start(config_text: str, collector: Collector) -> tuple[ModbusLinkDriver, asyncio.Task[None]]:
    config, problems = parse(config_text)
    assert problems == []
    (drv,) = build_drivers(config)
    return drv, asyncio.create_task(drv.run(collector), name="test.bus")


async def finish(drv: ModbusLinkDriver, task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await drv.close()


async def test_three_slaves_share_the_bus_read_their_own_values_and_writes_share_the_queue(
    bus: Bus, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate.modbus")
    text = BUS.format(port=bus.modem.client_path) + (
        '[devices.m2.points.limit]\naddress = 0\ntype = "int16"\nwritable = true\ninterval = 5\n'
    )
    drv, task = await start(text, collector)
    try:
        await collector.wait_for(lambda: all(len(collector.of(d)) >= 2 for d in ("m1", "m2", "m3")))
        # A write goes through the bus owner's queue between the polls, and is read back.
        written = await drv.write_point("m2", "limit", -300)
        assert (written.device, written.point, written.value) == ("m2", "limit", -300)
        n = len(collector.of("m1"))
        await collector.wait_for(lambda: len(collector.of("m1")) >= n + 3)
    finally:
        await finish(drv, task)
    assert drv.stats()["queue_full"] == 0 and drv.stats()["failed_transactions"] == 0
    for unit in (1, 2, 3):
        got = collector.latest(f"m{unit}")
        assert got["volts"].value == pytest.approx((2300 + unit) / 10)
        assert got["energy"].value == 1000 * unit
    # Two points, adjacent: one request per slave and cycle; the plan is logged per device at start.
    assert [len(p.requests) for p in drv.plans()] == [1, 2, 1]
    plans = [r.getMessage() for r in caplog.records if "read plan" in r.getMessage()]
    assert plans[0] == (
        "modbus[m1] unit 1 on modbus-bus[rs485-1]: "
        "read plan 1 request, 3 registers, 2 points (per interval 0.1s: 1)"
    )
    assert plans[1].endswith("read plan 2 requests, 4 registers, 3 points (per interval 0.1s: 1, 5s: 1)")


async def test_a_silent_slave_is_backed_off_logged_once_and_recovers_while_the_others_keep_their_rate(
    bus: Bus, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fieldgate.modbus")
    drv, task = await start(BUS.format(port=bus.modem.client_path), collector)
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        await collector.wait_for(lambda: all(len(collector.of(d)) >= 21 for d in ("m1", "m2")), within=10)
        baseline = {d: rate(collector, d, t0) for d in ("m1", "m2")}

        bus.faults.silent.add(3)
        await collector.wait_for(lambda: drv.state("m3").failing)
        t1 = loop.time()
        # A window long enough for several backoff rounds of the dead slave (each costs bus time).
        await collector.wait_for(lambda: drv.state("m3").failed_polls >= 4, within=10)
        await collector.wait_for(
            lambda: all(rate(collector, d, t1)[0] >= 21 for d in ("m1", "m2")), within=10
        )
        during = {d: rate(collector, d, t1) for d in ("m1", "m2")}
        dead_cycles = [rs for t, rs in collector.of("m3") if t >= t1]

        bus.faults.silent.discard(3)
        t2 = loop.time()
        await collector.wait_for(lambda: not drv.state("m3").failing, within=5)
        await collector.wait_for(
            lambda: any(rs[0].quality is Quality.GOOD for t, rs in collector.of("m3") if t >= t2), within=5
        )
    finally:
        await finish(drv, task)

    print("poll rates (cycles, per s): baseline", baseline, "while m3 is silent", during)
    for d in ("m1", "m2"):
        # A ratio against the baseline of this run, never an absolute rate (that is bench_modbus.py's):
        # without backoff, m3's timeout on every cycle would halve the others' rate.
        assert during[d][1] >= 0.75 * baseline[d][1], (d, baseline, during)
        # The survivors never saw a bad reading.
        assert all(r.quality is Quality.GOOD for _, rs in collector.of(d) for r in rs)
    # While dead, m3's points are bad with the reason, never a made-up value.
    assert dead_cycles and all(r.quality is Quality.BAD and r.value is None for rs in dead_cycles for r in rs)
    assert "no answer within 0.05s" in (dead_cycles[0][0].reason or "")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "modbus[m3] unit 3 on modbus-bus[rs485-1] is not answering: unit 3, fc4 (read input registers) "
        "address 0 count 3: no answer within 0.05s; polling backed off (up to 0.4s)"
    ]
    recoveries = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and "answers again" in r.getMessage()
    ]
    assert len(recoveries) == 1 and recoveries[0].startswith(
        "modbus[m3] unit 3 on modbus-bus[rs485-1] answers again"
    )
    # A tick may be skipped when the shared machine stalls the loop; the bound is the rate (10 %).
    for d in ("m1", "m2"):
        assert drv.state(d).skipped_ticks <= 0.1 * drv.state(d).cycles, drv.state(d)


async def test_corrupt_frames_are_protocol_errors_with_bad_readings_and_the_bus_goes_on(
    bus: Bus, collector: Collector
) -> None:
    bus.faults.corrupt.add(2)
    drv, task = await start(BUS.format(port=bus.modem.client_path), collector)
    try:
        await collector.wait_for(lambda: len(collector.of("m2")) >= 1 and len(collector.of("m1")) >= 5)
    finally:
        await finish(drv, task)
    volts, _energy = collector.of("m2")[0][1]
    assert volts.quality is Quality.BAD and volts.value is None
    assert volts.reason == (
        "unit 2, fc4 (read input registers) address 0 count 3: "
        "bad frame (bytes arrived but no valid answer: CRC or length)"
    )
    assert all(r.quality is Quality.GOOD for _, rs in collector.of("m1") for r in rs)


async def test_ascii_framing_on_a_serial_bus(
    simulator: ModuleType, null_modem: Any, collector: Collector
) -> None:
    server = await simulator.start_rtu(
        [simulator.device(7, holding=[0x4142, 0xFFFF])],
        null_modem.server_path,
        simulator.Faults(),
        framer="ascii",
    )
    text = f"""
[drivers.modbus.buses.b]
port = "{null_modem.client_path}"
framer = "ascii"
timeout = 0.5
[devices.a]
driver = "modbus"
bus = "b"
unit_id = 7
[devices.a.points.s]
address = 0
type = "string"
length = 2
[devices.a.points.n]
address = 1
type = "int16"
"""
    drv, task = await start(text, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("a")) >= 1)
    finally:
        await finish(drv, task)
        await server.shutdown()
    assert {k: r.value for k, r in collector.latest("a").items()} == {"s": "AB", "n": -1}


async def test_rtu_framed_over_tcp_like_a_serial_device_server(
    simulator: ModuleType, collector: Collector
) -> None:
    slaves = [simulator.device(u, holding=[u * 11]) for u in (4, 5)]
    server, port = await simulator.start_tcp(slaves, simulator.Faults(), framer="rtu")
    text = "".join(
        f'[devices.s{u}]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\nframer = "rtu"\n'
        f"unit_id = {u}\n"
        f"[devices.s{u}.points.v]\naddress = 0\n"
        for u in (4, 5)
    )
    drv, task = await start(text, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("s4")) >= 2 and len(collector.of("s5")) >= 2)
    finally:
        await finish(drv, task)
        await server.shutdown()
    assert drv.name == f"modbus-tcp[127.0.0.1:{port}]"
    assert collector.latest("s4")["v"].value == 44 and collector.latest("s5")["v"].value == 55


async def test_a_missing_serial_port_gives_bad_readings_and_one_error(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    text = """
[drivers.modbus.buses.usb]
port = "/dev/serial/by-id/usb-not-plugged-in"
[devices.a]
driver = "modbus"
bus = "usb"
interval = 0.05
[devices.a.points.p]
address = 0
"""
    drv, task = await start(text, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("a")) >= 3)
    finally:
        await finish(drv, task)
    (reading,) = collector.of("a")[0][1]
    assert reading.quality is Quality.BAD
    assert reading.reason == "cannot open serial port /dev/serial/by-id/usb-not-plugged-in"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "modbus-bus[usb]: cannot open serial port /dev/serial/by-id/usb-not-plugged-in (serving a); "
        "retrying with backoff up to 60s"
    ]


async def test_a_bus_whose_adapter_is_plugged_in_later_connects_and_logs_the_recovery(
    bus: Bus, collector: Collector, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate.modbus")
    by_id = tmp_path / "usb-adapter"  # like /dev/serial/by-id/..., absent until plugged in
    drv, task = await start(
        BUS.format(port=by_id).replace("backoff_max = 0.4", "backoff_max = 0.5"), collector
    )
    try:
        await collector.wait_for(lambda: len(collector.of("m1")) >= 2)
        assert collector.of("m1")[0][1][0].quality is Quality.BAD
        by_id.symlink_to(bus.modem.client_path)
        await collector.wait_for(
            lambda: any(rs[0].quality is Quality.GOOD for _, rs in collector.of("m1")), within=5
        )
    finally:
        await finish(drv, task)
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and "read plan" not in r.getMessage()
    ]
    assert messages[0].startswith(f"modbus-bus[rs485-1]: cannot open serial port {by_id} (serving m1)")
    assert messages[1].startswith("modbus-bus[rs485-1]: connection restored after")
    assert len(messages) == 2


async def test_write_failures_raise_our_errors_naming_device_unit_function_address_and_count(
    simulator: ModuleType, null_modem: Any, collector: Collector
) -> None:
    faults = simulator.Faults()
    slaves = [
        simulator.device(1, holding=[0] * 4, action=simulator.refuse(ExcCodes.DEVICE_BUSY, function=6)),
        simulator.device(2, holding=[0] * 4),
        simulator.device(3, holding=[0] * 4),
        simulator.device(4, holding=[0] * 4),
    ]
    server = await simulator.start_rtu(slaves, null_modem.server_path, faults)
    faults.silent.add(2)
    faults.corrupt.add(3)
    faults.short.add(4)
    text = (
        f'[drivers.modbus.buses.b]\nport = "{null_modem.client_path}"\ntimeout = 0.1\nretries = 0\n'
        + "".join(
            f'[devices.d{u}]\ndriver = "modbus"\nbus = "b"\nunit_id = {u}\ninterval = 60\n'
            f'[devices.d{u}.points.sp]\naddress = 2\ntype = "int16"\nwritable = true\n'
            for u in (1, 2, 3, 4)
        )
    )
    drv, task = await start(text, collector)
    try:
        await collector.wait_for(lambda: len(collector.cycles) >= 4)
        with pytest.raises(DeviceRefused) as refused:
            await drv.write_point("d1", "sp", 5)
        with pytest.raises(DeviceTimeout) as timeout:
            await drv.write_point("d2", "sp", 5)
        with pytest.raises(DeviceProtocolError) as corrupt:
            await drv.write_point("d3", "sp", 5)
        with pytest.raises(DeviceProtocolError) as short:
            await drv.write_point("d4", "sp", 5)
    finally:
        await finish(drv, task)
        await server.shutdown()
    assert str(refused.value) == (
        "d1: unit 1, fc6 (write single register) address 2 count 1: exception 6 (slave device busy)"
    )
    assert (
        str(timeout.value)
        == "d2: unit 2, fc6 (write single register) address 2 count 1: no answer within 0.1s"
    )
    bad_frame = "bad frame (bytes arrived but no valid answer: CRC or length)"
    assert str(corrupt.value) == f"d3: unit 3, fc6 (write single register) address 2 count 1: {bad_frame}"
    assert str(short.value) == f"d4: unit 4, fc6 (write single register) address 2 count 1: {bad_frame}"
    assert isinstance(timeout.value, DriverError) and timeout.value.device == "d2"


async def test_a_late_answer_from_another_slave_does_not_make_a_silent_slave_a_bad_frame(
    simulator: ModuleType, null_modem: Any, collector: Collector
) -> None:
    faults = simulator.Faults()
    server = await simulator.start_rtu([simulator.device(2, holding=[0] * 4)], null_modem.server_path, faults)
    faults.silent.add(2)
    text = (
        f'[drivers.modbus.buses.b]\nport = "{null_modem.client_path}"\ntimeout = 0.2\nretries = 0\n'
        '[devices.d2]\ndriver = "modbus"\nbus = "b"\nunit_id = 2\ninterval = 60\n'
        '[devices.d2.points.sp]\naddress = 2\ntype = "int16"\nwritable = true\n'
    )
    # What a slow unit 1 sends too late: a valid answer to an earlier read (fc3, one register).
    late = bytes([1, 3, 2, 0, 7])
    late += FramerRTU.compute_CRC(late).to_bytes(2, "big")
    drv, task = await start(text, collector)
    try:
        await collector.wait_for(lambda: len(collector.cycles) >= 1)
        faults.requests.clear()
        write = asyncio.create_task(drv.write_point("d2", "sp", 1))
        async with asyncio.timeout(2):
            await faults.requests.wait()  # the write is on the line: now the stray answer arrives
        null_modem.to_client(late)
        with pytest.raises(DeviceTimeout):
            await write
    finally:
        await finish(drv, task)
        await server.shutdown()
