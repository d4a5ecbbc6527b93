"""A Modbus TCP device on loopback: every type and order reads back what the server holds; writes; faults."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import struct
from collections.abc import AsyncIterator
from types import ModuleType

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus.driver import ModbusLinkDriver, build_drivers
from gateway.errors import DeviceUnavailable
from gateway.model import Quality

from .conftest import Collector
from .helpers import parse

FORMATS = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
SAMPLES = {
    "int16": [-32768, -1, 12345],
    "uint16": [0, 65535],
    "int32": [-2_000_000_000, -7, 123456789],
    "uint32": [4_000_000_000],
    "int64": [-(2**63), -42, 2**62 + 5],
    "uint64": [2**64 - 1, 1],
    "float32": [-1.5, 3.25, math.inf, -math.inf, math.nan],
    "float64": [-1e300, 2.718281828459045, math.nan, math.inf],
}


def wire(fmt: str, value: float, order: str) -> list[int]:
    """Registers as a device in ``order`` lays them out (written independently of the driver's codec)."""
    raw = struct.pack(fmt, value)
    regs = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if order in ("BADC", "DCBA"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    if order in ("CDAB", "DCBA"):
        regs.reverse()
    return regs


def build_map() -> tuple[str, list[int], list[int], dict[str, object]]:
    """TOML points, holding and input register contents, and the values each point must read."""
    holding: list[int] = []
    expected: dict[str, object] = {}
    lines: list[str] = []
    for dtype, values in SAMPLES.items():
        for order in ("ABCD", "CDAB", "BADC", "DCBA"):
            for i, value in enumerate(values):
                name = f"{dtype}_{order}_{i}"
                lines += [
                    f"[devices.dut.points.{name}]",
                    f"address = {len(holding)}",
                    f'type = "{dtype}"',
                    f'order = "{order}"',
                ]
                holding += wire(FORMATS[dtype], value, order)
                expected[name] = value
    # A bit of a register, a scaled value, and strings padded with NULs or spaces.
    lines += ["[devices.dut.points.flag]", f"address = {len(holding)}", 'type = "bool"', "bit = 13"]
    holding.append(1 << 13)
    expected["flag"] = True
    lines += [
        "[devices.dut.points.volts]",
        f"address = {len(holding)}",
        'type = "int16"',
        "scale = 0.1",
        "offset = -1",
    ]
    holding.append(struct.unpack(">H", struct.pack(">h", -2305))[0])
    expected["volts"] = -2305 * 0.1 - 1
    inputs = list(struct.unpack(">5H", b"SN-4711\x00\x00\x00")) + list(struct.unpack(">4H", b"ab  cd  "))
    lines += [
        "[devices.dut.points.serial]",
        'table = "input"',
        "address = 0",
        'type = "string"',
        "length = 10",
    ]
    lines += [
        "[devices.dut.points.label]",
        'address = "300006"',
        'type = "string"',
        "length = 8",
        'order = "BADC"',
    ]
    expected["serial"] = "SN-4711"
    expected["label"] = "ba  dc"
    lines += ["[devices.dut.points.relay]", 'table = "coil"', "address = 3"]
    lines += ["[devices.dut.points.door]", 'address = "10002"']
    expected["relay"] = True
    expected["door"] = False
    return "\n".join(lines), holding, inputs, expected


@pytest.fixture
async def tcp_dut(simulator: ModuleType) -> AsyncIterator[tuple[int, dict[str, object], object]]:
    points, holding, inputs, expected = build_map()
    faults = simulator.Faults()
    dev = simulator.device(
        1, holding=holding, inputs=inputs, coils=[False, False, False, True], discrete=[True, False]
    )
    server, port = await simulator.start_tcp([dev], faults)
    yield port, expected, points
    await server.shutdown()


async def run_driver(drv: ModbusLinkDriver, collector: Collector) -> asyncio.Task[None]:
    return asyncio.create_task(drv.run(collector), name=f"test.{drv.name}")


async def stop(task: asyncio.Task[None], drv: ModbusLinkDriver) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await drv.close()


async def test_every_type_and_order_reads_back_what_the_server_was_seeded_with(
    tcp_dut: tuple[int, dict[str, object], str], collector: Collector
) -> None:
    port, expected, points = tcp_dut
    config, problems = parse(f'[devices.dut]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\n{points}')
    assert problems == []
    (drv,) = build_drivers(config)
    # The whole map (216 holding registers, strings, bits) is read in a handful of requests.
    assert len(drv.plans()[0].requests) == 5
    task = await run_driver(drv, collector)
    await collector.wait_for(lambda: len(collector.of("dut")) >= 1)
    await stop(task, drv)
    got = collector.latest("dut")
    assert set(got) == set(expected)
    for name, want in expected.items():
        r = got[name]
        assert r.quality is Quality.GOOD, (name, r.reason)
        if isinstance(want, float) and math.isnan(want):
            assert isinstance(r.value, float) and math.isnan(r.value), name
        elif isinstance(want, float):
            assert r.value == pytest.approx(want), name
        else:
            assert r.value == want and type(r.value) is type(want), name


WRITABLE = """
[devices.plc]
driver = "modbus"
host = "127.0.0.1"
port = {port}
interval = 10
[devices.plc.points.setpoint]
address = 0
type = "float32"
order = "CDAB"
writable = true
min = -50
max = 50
[devices.plc.points.offset]
address = 2
type = "int16"
scale = 0.5
writable = true
[devices.plc.points.enable]
address = 3
type = "bool"
bit = 4
writable = true
[devices.plc.points.tag]
address = 4
type = "string"
length = 6
writable = true
[devices.plc.points.motor]
table = "coil"
address = 1
writable = true
[devices.plc.points.total]
address = 8
type = "uint32"
"""


async def test_writes_use_the_same_encoding_and_return_the_value_read_back(
    simulator: ModuleType, collector: Collector
) -> None:
    server, port = await simulator.start_tcp(
        [simulator.device(1, holding=[0] * 10 + [0x00FF])], simulator.Faults()
    )
    config, problems = parse(WRITABLE.format(port=port))
    assert problems == []
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("plc")) >= 1)
        assert (await drv.write_point("plc", "setpoint", -12.5)).value == -12.5
        assert (await drv.write_point("plc", "offset", -3.5)).value == -3.5
        assert (await drv.write_point("plc", "enable", True)).value is True
        assert (await drv.write_point("plc", "tag", "AB-1")).value == "AB-1"
        assert (await drv.write_point("plc", "motor", True)).value is True
        with pytest.raises(ValueError, match="above the point's maximum"):
            await drv.write_point("plc", "setpoint", 99)
        with pytest.raises(ValueError, match="not writable"):
            await drv.write_point("plc", "total", 1)
        with pytest.raises(KeyError):
            await drv.write_point("plc", "nope", 1)
        # Check the server really holds what we wrote, with an independent read through a fresh driver.
        check = Collector()
        (reader,) = build_drivers(config)
        reader_task = await run_driver(reader, check)
        await check.wait_for(lambda: len(check.of("plc")) >= 1)
        await stop(reader_task, reader)
        latest = {k: r.value for k, r in check.latest("plc").items()}
        assert latest == {
            "setpoint": -12.5,
            "offset": -3.5,
            "enable": True,
            "tag": "AB-1",
            "motor": True,
            "total": 0,
        }
    finally:
        await stop(task, drv)
        await server.shutdown()


REFUSALS = """
[devices.dev]
driver = "modbus"
host = "127.0.0.1"
port = {port}
max_gap = 0
[devices.dev.points.ok]
address = 0
[devices.dev.points.busy]
address = 5
[devices.dev.points.missing]
address = 500
[devices.dev.points.coil]
table = "coil"
address = 0
"""


async def test_exception_responses_give_bad_readings_naming_the_refusal_and_the_rest_still_reads(
    simulator: ModuleType, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    busy = simulator.refuse(ExcCodes.DEVICE_BUSY, function=3, address=5)
    illegal_fn = simulator.refuse(ExcCodes.ILLEGAL_FUNCTION, function=1)

    async def action(*args: object) -> object:
        return await busy(*args) or await illegal_fn(*args)

    server, port = await simulator.start_tcp(
        [simulator.device(1, holding=[7] * 10, action=action)], simulator.Faults()
    )
    config, _ = parse(REFUSALS.format(port=port))
    (drv,) = build_drivers(config)
    caplog.set_level("INFO", logger="fieldgate.modbus")
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("dev")) >= 3)
    finally:
        await stop(task, drv)
        await server.shutdown()
    got = collector.latest("dev")
    assert (got["ok"].quality, got["ok"].value) == (Quality.GOOD, 7)
    assert got["busy"].quality is Quality.BAD and got["busy"].value is None
    assert (
        got["busy"].reason
        == "unit 1, fc3 (read holding registers) address 5 count 1: exception 6 (slave device busy)"
    )
    assert (
        got["missing"].reason is not None
        and "address 500 count 1: exception 2 (illegal data address)" in got["missing"].reason
    )
    assert (
        got["coil"].reason is not None
        and "fc1 (read coils) address 0 count 1: exception 1 (illegal function)" in got["coil"].reason
    )
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    # Logged once per refused request although every cycle is refused again.
    assert len(refusals) == 3
    assert all(m.startswith("modbus[dev]: request refused: unit 1, fc") for m in refusals)


async def test_a_server_that_is_down_gives_bad_readings_and_is_logged_once(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = parse(
        '[devices.gone]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = 1\ninterval = 0.05\n'
        "[devices.gone.points.p]\naddress = 0"
    )
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    await collector.wait_for(lambda: len(collector.of("gone")) >= 3)
    await stop(task, drv)
    (reading,) = collector.of("gone")[0][1]
    assert reading.quality is Quality.BAD and reading.reason == "cannot connect to 127.0.0.1:1"
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "fieldgate.modbus"]
    assert (
        len(errors) == 1
        and "modbus-tcp[127.0.0.1:1]: cannot connect to 127.0.0.1:1 (serving gone)" in errors[0].getMessage()
    )


SLOW_PAIR = """
[drivers.modbus]
max_connections_per_host = {connections}
[devices.a]
driver = "modbus"
host = "127.0.0.1"
port = {port}
unit_id = 1
interval = 0.1
[devices.a.points.p]
address = 0
[devices.b]
driver = "modbus"
host = "127.0.0.1"
port = {port}
unit_id = 2
interval = 0.1
[devices.b.points.p]
address = 0
"""


@pytest.mark.parametrize("connections", [1, 2])
async def test_devices_behind_one_server_share_at_most_the_configured_connections(
    simulator: ModuleType, collector: Collector, connections: int
) -> None:
    stats = simulator.Slowness()
    faults = simulator.Faults()
    slaves = [simulator.device(u, holding=[u], action=simulator.slow(0.03, stats)) for u in (1, 2)]
    server, port = await simulator.start_tcp(slaves, faults)
    config, problems = parse(SLOW_PAIR.format(port=port, connections=connections))
    assert problems == []
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("a")) >= 5 and len(collector.of("b")) >= 5)
    finally:
        await stop(task, drv)
        await server.shutdown()
    assert faults.connections == connections
    # With one connection the two devices take turns; with two they are read at the same time.
    assert stats.most == connections


async def test_a_poll_that_overruns_its_interval_skips_ticks_instead_of_queueing_them(
    simulator: ModuleType, collector: Collector
) -> None:
    stats = simulator.Slowness()
    server, port = await simulator.start_tcp(
        [simulator.device(1, action=simulator.slow(0.12, stats))], simulator.Faults()
    )
    config, _ = parse(
        f'[devices.slow]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\ninterval = 0.05\n'
        "[devices.slow.points.p]\naddress = 0\n"
    )
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("slow")) >= 5)
    finally:
        await stop(task, drv)
        await server.shutdown()
    times = [t for t, _ in collector.of("slow")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # No burst of catch-up polls: every cycle waits for its next own tick after the slow one.
    assert min(gaps) >= 0.12
    assert drv.state("slow").skipped_ticks >= 2 * (len(times) - 1)


async def test_on_change_points_are_reported_only_when_they_move_beyond_their_deadband(
    simulator: ModuleType, collector: Collector
) -> None:
    async def count_up(
        fc: int, _start: int, _addr: int, _count: int, regs: list[int], _values: object
    ) -> None:
        if fc == 3:
            regs[0] += 2

    server, port = await simulator.start_tcp(
        [simulator.device(1, holding=[0, 9], action=count_up)], simulator.Faults()
    )
    config, problems = parse(
        f'[devices.m]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\ninterval = 0.02\nmax_gap = 0\n'
        "[devices.m.points.counter]\naddress = 0\non_change = true\ndeadband = 5\n"
        "[devices.m.points.steady]\naddress = 1\non_change = true\n"
        "[devices.m.points.always]\naddress = 1\n"
    )
    assert problems == []
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("m")) >= 12)
    finally:
        await stop(task, drv)
        await server.shutdown()
    counter = [r.value for _, rs in collector.of("m") for r in rs if r.point == "counter"]
    steady = [r.value for _, rs in collector.of("m") for r in rs if r.point == "steady"]
    always = [r.value for _, rs in collector.of("m") for r in rs if r.point == "always"]
    assert counter[:3] == [2, 8, 14]  # each reported value moved more than 5 from the last reported one
    assert steady == [9]
    assert len(always) == len(collector.of("m"))


async def test_a_device_that_reboots_is_read_again_when_it_is_back(
    simulator: ModuleType, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate.modbus")
    server, port = await simulator.start_tcp([simulator.device(1, holding=[42])], simulator.Faults())
    config, _ = parse(
        f'[devices.m]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\ninterval = 0.05\ntimeout = 0.2\n'
        "[devices.m.points.p]\naddress = 0\n"
    )
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("m")) >= 2)
        await server.shutdown()
        await collector.wait_for(lambda: collector.of("m")[-1][1][0].quality is Quality.BAD)
        server, _ = await simulator.start_tcp(
            [simulator.device(1, holding=[43])], simulator.Faults(), port=port
        )
        await collector.wait_for(lambda: collector.of("m")[-1][1][0].value == 43, within=10)
    finally:
        await stop(task, drv)
        await server.shutdown()
    bad = [rs[0] for _, rs in collector.of("m") if rs[0].quality is Quality.BAD]
    assert bad and all(r.value is None for r in bad)
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and "read plan" not in r.getMessage()
    ]
    assert len(messages) == 2, messages
    assert messages[0].startswith(
        f"modbus-tcp[127.0.0.1:{port}]: cannot connect to 127.0.0.1:{port} (serving m)"
    )
    assert messages[1].startswith(f"modbus-tcp[127.0.0.1:{port}]: connection restored after")


async def test_a_flood_of_writes_is_bounded_and_the_excess_refused_at_once(
    simulator: ModuleType, collector: Collector
) -> None:
    server, port = await simulator.start_tcp(
        [simulator.device(1, holding=[0] * 4, action=simulator.slow(0.02, simulator.Slowness()))],
        simulator.Faults(),
    )
    config, _ = parse(
        f'[devices.m]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\ninterval = 60\n'
        "[devices.m.points.p]\naddress = 0\nwritable = true\n"
    )
    (drv,) = build_drivers(config)
    task = await run_driver(drv, collector)
    try:
        await collector.wait_for(lambda: len(collector.of("m")) >= 1)
        results = await asyncio.gather(
            *(drv.write_point("m", "p", i) for i in range(20)), return_exceptions=True
        )
    finally:
        await stop(task, drv)
        await server.shutdown()
    refused = [r for r in results if isinstance(r, DeviceUnavailable)]
    done = [r for r in results if not isinstance(r, BaseException)]
    # One connection busy + 1 poll group + 8 write slots may wait; the rest is refused, none lost silently.
    assert len(done) + len(refused) == 20 and len(refused) >= 10
    assert str(refused[0]) == f"m: modbus-tcp[127.0.0.1:{port}] has too many requests waiting, refused"
    assert drv.stats()["queue_full"] == len(refused)
