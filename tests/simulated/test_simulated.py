"""The simulated driver, as a user meets it: a config read with every problem named, and a device that samples
its points on its interval. Copy this file with the driver when writing a new one."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Sequence

import pytest

from drivers.simulated import plugin
from drivers.simulated.config import SimulatedConfig
from gateway.model import Reading
from gateway.schema import Problems, Table


def parse(text: str) -> tuple[SimulatedConfig, list[str]]:
    """The simulated devices of a config file, parsed as the gateway's loader hands them over."""
    problems = Problems("gw.toml")
    devices = []
    for name, raw in tomllib.loads(text).get("devices", {}).items():
        table = Table(raw, f"devices.{name}", problems)
        table.consume("driver", "topic", "batch")
        devices.append((name, table))
    return plugin.parse(None, devices), problems.lines


BOILER = """
[devices.boiler]
driver = "simulated"
interval = 0.02

[devices.boiler.points.temperature]
signal = "sine"
unit = "°C"
min = 60.0
max = 80.0
period = 1.0

[devices.boiler.points.burner]
signal = "step"
values = [0, 1]
hold = 0.05

[devices.boiler.points.setpoint]
signal = "constant"
values = [72.5]
"""


def test_a_device_and_its_points_become_frozen_settings() -> None:
    config, problems = parse(BOILER)
    assert problems == []
    (device,) = config.devices
    assert device.name == "boiler" and device.driver == "simulated"
    assert [(p.name, p.unit) for p in device.points] == [
        ("temperature", "°C"),
        ("burner", None),
        ("setpoint", None),
    ]


def test_every_problem_is_named_with_its_key_path_and_value() -> None:
    _, problems = parse(
        """
[devices.boiler]
driver = "simulated"
interval = 0
intervall = 2

[devices.boiler.points.temperature]
signal = "square"
min = 10
max = 5

[devices.boiler.points.burner]
signal = "step"
"""
    )
    assert problems == [
        "gw.toml: devices.boiler.interval = 0: must be at least 0.001",
        'gw.toml: devices.boiler.points.temperature.signal = "square": expected one of "sine", "ramp", '
        '"random-walk", "step", "constant"',
        "gw.toml: devices.boiler.points.temperature.max = 5.0: must not be below min (10)",
        "gw.toml: devices.boiler.points.burner.values: signal 'step' needs values = [...]",
        "gw.toml: devices.boiler.intervall: unknown key",
    ]


async def test_the_device_samples_every_point_within_its_bounds_each_interval() -> None:
    config, _ = parse(BOILER)
    (driver,) = plugin.build(config)
    cycles: list[Sequence[Reading]] = []
    task = asyncio.create_task(driver.run(cycles.append))
    try:
        async with asyncio.timeout(30):
            while len(cycles) < 10:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for cycle in cycles:
        values = {r.point: r.value for r in cycle}
        assert set(values) == {"temperature", "burner", "setpoint"}
        assert 60.0 <= float(values["temperature"]) <= 80.0
        assert values["burner"] in (0, 1)
        assert values["setpoint"] == 72.5
    assert {r.value for cycle in cycles for r in cycle if r.point == "burner"} <= {0, 1}
    assert driver.name == "simulated[boiler]"
