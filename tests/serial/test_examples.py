"""The shipped example configs parse cleanly, and the demo config reads the demo simulator's sensors."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tomllib
from pathlib import Path

import pytest

from drivers.serial import SerialConfig, plugin
from gateway.model import Quality
from gateway.schema import Problems, Table
from tests.support.serial import Collector, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "drivers" / "serial").glob("example*.toml"))


def load(path: Path) -> tuple[SerialConfig, list[str]]:
    data = tomllib.loads(path.read_text())
    problems = Problems(path.name)
    section = data.get("drivers", {}).get("serial")
    devices = []
    for name, table in data["devices"].items():
        if table.get("driver") == "serial":
            t = Table(table, f"devices.{name}", problems)
            t.consume("driver")
            devices.append((name, t))
    config = plugin.parse(Table(section, "drivers.serial", problems) if section else None, devices)
    return config, problems.lines


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_have_no_problems(path: Path) -> None:
    config, problems = load(path)
    assert problems == []
    assert config.devices


def test_the_sensor_catalogue_shows_every_framing_and_parser() -> None:
    config, _ = load(ROOT / "drivers" / "serial" / "example-sensors.toml")
    framings = {type(s.framing).__name__ for s in config.specs}
    parsers = {
        type(p).__name__ for s in config.specs for p in [s.parser, *(c.parser for c in s.commands)] if p
    }
    assert framings == {"LineFraming", "FixedFraming", "DelimitedFraming", "LengthFraming"}
    assert parsers == {
        "NmeaParser",
        "CsvParser",
        "KeyValueParser",
        "JsonParser",
        "RegexParser",
        "StructParser",
    }


async def test_demo_config_reads_every_simulated_sensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fieldgate.serial")
    # The demo config's ports are relative to the repo root (deploy/.demo/...): run from a stand-in root.
    monkeypatch.chdir(tmp_path)
    sim = await asyncio.create_subprocess_exec(
        *(sys.executable, str(ROOT / "deploy/sim/serial_devices.py"), "--link", "deploy/.demo"),
        *("--gps-interval", "0.1", "--weather-interval", "0.1"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert sim.stdout is not None
        banner = (await asyncio.wait_for(sim.stdout.readline(), 10)).decode()
        assert banner.startswith("serial_devices: gps at deploy/.demo/gps")
        config, problems = load(ROOT / "drivers/serial/example-demo.toml")
        assert problems == []
        sink = Collector()
        drivers = plugin.build(config)
        tasks = [asyncio.create_task(d.run(sink), name=d.name) for d in drivers]
        try:
            await wait_for(
                lambda: {"latitude", "temperature", "weight", "humidity"} <= {r.point for r in sink.readings},
                within=10,
                what="readings from the GPS, the weather station and the scale",
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for d in drivers:
                await d.close()
    finally:
        sim.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sim.wait(), 5) == 0
    assert all(r.quality is Quality.GOOD for r in sink.readings if r.device != "scale")
    assert {r.device for r in sink.readings} == {"gps", "weather", "scale"}
    assert not list((tmp_path / "deploy/.demo").iterdir())


def test_the_toml_examples_in_the_readme_are_valid() -> None:
    text = (ROOT / "drivers/serial/README.md").read_text()
    examples = text.split("\n## Examples\n", 1)[1].split("\n## Commissioning", 1)[0]
    blocks = [b.split("```", 1)[0] for b in examples.split("```toml\n")[1:]]
    assert len(blocks) == 6
    for i, block in enumerate(blocks):
        data = tomllib.loads(block)
        problems = Problems(f"drivers/serial/README.md, serial example {i + 1}")
        devices = []
        for name, table in data["devices"].items():
            t = Table(table, f"devices.{name}", problems)
            t.consume("driver")
            devices.append((name, t))
        section = data.get("drivers", {}).get("serial")
        plugin.parse(Table(section, "drivers.serial", problems) if section is not None else None, devices)
        assert problems.lines == []
