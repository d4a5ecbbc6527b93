"""The gateway finds the Modbus driver and its commands through entry points, and builds drivers per link."""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

import drivers.modbus
from drivers.modbus.driver import ModbusLinkDriver
from gateway.model import CLI_ENTRY_POINT_GROUP, Driver
from gateway.registry import available_drivers, load_driver

from .helpers import parse


def test_the_plugin_and_the_commands_are_registered() -> None:
    assert "modbus" in available_drivers()
    assert load_driver("modbus") is drivers.modbus.plugin
    (ep,) = entry_points(group=CLI_ENTRY_POINT_GROUP, name="modbus")
    parser = argparse.ArgumentParser()
    ep.load()(parser.add_subparsers())
    assert parser.parse_args(["modbus", "scan", "--host", "h"]).handler.__name__ == "run_scan"


def test_build_makes_one_driver_per_bus_and_per_tcp_server_with_comparable_settings() -> None:
    text = """
[drivers.modbus.buses.b1]
port = "/dev/ttyUSB0"
[devices.a]
driver = "modbus"
bus = "b1"
unit_id = 1
[devices.a.points.p]
address = 0
[devices.b]
driver = "modbus"
bus = "b1"
unit_id = 2
[devices.b.points.p]
address = 0
[devices.c]
driver = "modbus"
host = "10.0.0.9"
[devices.c.points.p]
address = 0
"""
    config, problems = parse(text)
    assert problems == []
    built = drivers.modbus.plugin.build(config)
    assert [d.name for d in built] == ["modbus-bus[b1]", "modbus-tcp[10.0.0.9:502]"]
    assert all(isinstance(d, Driver) and isinstance(d, ModbusLinkDriver) for d in built)
    assert [list(d.device_names) for d in built if isinstance(d, ModbusLinkDriver)] == [["a", "b"], ["c"]]
    # On SIGHUP an unchanged config gives equal settings (the driver keeps running); a change does not.
    again, _ = parse(text)
    changed, _ = parse(text.replace("unit_id = 2", "unit_id = 3"))
    assert [d.settings for d in drivers.modbus.plugin.build(again)] == [d.settings for d in built]
    assert drivers.modbus.plugin.build(changed)[0].settings != built[0].settings
    assert drivers.modbus.plugin.build(changed)[1].settings == built[1].settings
