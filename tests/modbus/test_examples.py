"""The shipped example configs parse cleanly, and the demo config runs against the demo simulator."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.modbus.driver import build_drivers
from gateway.model import Quality

from .conftest import Collector
from .helpers import parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "drivers/modbus").glob("example*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses_without_problems(path: Path) -> None:
    config, problems = parse(path.read_text(), file=path.name)
    assert problems == []
    assert config.devices and config.links


def test_the_rs485_example_plans_around_the_forbidden_range() -> None:
    config, _ = parse((ROOT / "drivers/modbus/example-rs485-bus.toml").read_text())
    drv = next(d for d in build_drivers(config) if d.name == "modbus-bus[rs485-1]")
    plan = next(p for p in drv.plans() if p.device.name == "meter-hall")
    assert [(g.interval, [r.describe() for r in g.requests]) for g in plan.groups] == [
        (2.0, ["fc4 input 0+6"]),
        (30.0, ["fc4 input 30+4"]),
    ]


async def test_the_demo_config_reads_the_demo_simulator(tmp_path: Path, collector: Collector) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "deploy/sim/modbus_devices.py"),
        "--link",
        str(tmp_path),
        "--tcp-port",
        "0",
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        port = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert port, line
        text = (ROOT / "drivers/modbus/example-demo.toml").read_text()
        text = text.replace("port = 5020", f"port = {port.group(1)}").replace("deploy/.demo", str(tmp_path))
        config, problems = parse(text)
        assert problems == []
        drivers = build_drivers(config)
        tasks = [asyncio.create_task(d.run(collector), name=f"test.{d.name}") for d in drivers]
        devices = ("tcp-meter", "bus-meter-1", "bus-meter-2", "bus-meter-3")
        try:
            await collector.wait_for(lambda: all(len(collector.of(d)) >= 2 for d in devices))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for d in devices:
            got = collector.latest(d)
            assert all(r.quality is Quality.GOOD for r in got.values())
            assert 220 < float(got["voltage"].value or 0) < 240
    finally:
        proc.terminate()
        await proc.wait()
