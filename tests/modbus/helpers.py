"""Shared helpers for the Modbus tests: parse TOML snippets the way the gateway's loader hands them over."""

from __future__ import annotations

import tomllib

from drivers.modbus.config import ModbusConfig, parse_config
from gateway.schema import Problems, Table


def parse(text: str, file: str = "gateway.toml") -> tuple[ModbusConfig, list[str]]:
    """Parse the ``[drivers.modbus]`` and modbus ``[devices.*]`` parts of a config file."""
    data = tomllib.loads(text)
    problems = Problems(file)
    section_data = data.get("drivers", {}).get("modbus")
    section = Table(section_data, "drivers.modbus", problems) if section_data is not None else None
    devices = []
    for name, dev in data.get("devices", {}).items():
        t = Table(dev, f"devices.{name}", problems)
        t.consume("driver", "topic", "batch")
        devices.append((name, t))
    config = parse_config(section, devices)
    return config, problems.lines
