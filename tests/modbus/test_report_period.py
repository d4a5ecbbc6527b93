"""An on-change point is reported again after its report period even when it did not move, so a change
lost upstream heals and a consumer can tell "unchanged" from "gateway gone"."""

from __future__ import annotations

import asyncio
import itertools
from types import ModuleType

import pytest

from drivers.modbus.driver import build_drivers
from gateway.model import DEFAULT_REPORT_PERIOD

from .conftest import Collector
from .helpers import parse

DEVICE = '[devices.m]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\ninterval = 0.02\nmax_gap = 0\n'


def periods(text: str) -> dict[str, float]:
    config, problems = parse(text.format(port=502))
    assert problems == []
    return {p.name: p.report_period for link in config.links for d in link.devices for p in d.points}


def test_the_period_comes_from_the_point_else_device_else_profile_else_driver_section() -> None:
    assert periods(DEVICE + "[devices.m.points.a]\naddress = 0\non_change = true\n") == {
        "a": DEFAULT_REPORT_PERIOD
    }
    text = (
        "[drivers.modbus]\nreport_period = 120\n"
        "[drivers.modbus.profiles.meter]\nreport_period = 60\n"
        "[drivers.modbus.profiles.meter.points.p]\naddress = 5\non_change = true\n"
        + DEVICE
        + 'profile = "meter"\nreport_period = 30\n'
        "[devices.m.points.a]\naddress = 0\non_change = true\nreport_period = 5\n"
        "[devices.m.points.b]\naddress = 1\non_change = true\n"
        + DEVICE.replace("devices.m", "devices.n").replace("0.02", "1")
        + 'unit_id = 2\nprofile = "meter"\n'
        + '[devices.o]\ndriver = "modbus"\nhost = "127.0.0.1"\nunit_id = 3\n'
        "[devices.o.points.c]\naddress = 0\non_change = true\n"
    )
    config, problems = parse(text.replace("{port}", "502"))
    assert problems == []
    got = {(d.name, p.name): p.report_period for link in config.links for d in link.devices for p in d.points}
    assert got == {
        ("m", "p"): 30.0,
        ("m", "a"): 5.0,
        ("m", "b"): 30.0,
        ("n", "p"): 60.0,
        ("o", "c"): 120.0,
    }


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            "[devices.m.points.a]\naddress = 0\nreport_period = 5\n",
            "devices.m.points.a.report_period = 5.0: applies only with on_change = true",
        ),
        (
            "[devices.m.points.a]\naddress = 0\non_change = true\nreport_period = 0\n",
            "devices.m.points.a.report_period",
        ),
    ],
)
def test_a_report_period_that_cannot_apply_is_an_error_naming_its_key(snippet: str, expected: str) -> None:
    _, problems = parse(DEVICE.format(port=502) + snippet)
    assert any(expected in line for line in problems), problems


async def test_an_unchanged_point_is_reported_again_each_period_and_a_moving_one_as_it_moves(
    simulator: ModuleType, collector: Collector
) -> None:
    server, port = await simulator.start_tcp([simulator.device(1, holding=[7, 9])], simulator.Faults())
    config, problems = parse(
        DEVICE.format(port=port) + "report_period = 0.3\n"
        "[devices.m.points.steady]\naddress = 0\non_change = true\n"
        "[devices.m.points.quiet]\naddress = 1\non_change = true\nreport_period = 3600\n"
        "[devices.m.points.polled]\naddress = 1\n"
    )
    assert problems == []
    (drv,) = build_drivers(config)
    task = asyncio.create_task(drv.run(collector), name="test.modbus")

    def reports(point: str) -> list[float]:
        return [r.timestamp for _, rs in collector.of("m") for r in rs if r.point == point]

    try:
        await collector.wait_for(lambda: len(reports("steady")) >= 4, within=30.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await drv.close()
        await server.shutdown()
    steady = reports("steady")
    # Never more often than the period (a lower bound: holds on a slow machine too) ...
    gaps = [b - a for a, b in itertools.pairwise(steady)]
    assert min(gaps) >= 0.25, gaps
    # ... while it was polled far more often, and the hour-long period kept the other one quiet.
    assert len(reports("polled")) > len(steady)
    assert len(reports("quiet")) == 1
