"""Modbus driver: TCP, RTU/ASCII on shared serial buses, RTU over TCP; typed register maps; read plans."""

from __future__ import annotations

from collections.abc import Sequence

from drivers.modbus.config import ModbusConfig, parse_config
from gateway.model import Driver, DriverConfig
from gateway.schema import Table


class ModbusPlugin:
    """The ``fieldgate.drivers`` entry point ``modbus``."""

    def parse(self, section: Table | None, devices: Sequence[tuple[str, Table]]) -> ModbusConfig:
        return parse_config(section, devices)

    def build(self, config: DriverConfig) -> Sequence[Driver]:
        assert isinstance(config, ModbusConfig)
        # Imported here, not with the plugin: checking a config needs none of it, and at start the
        # gateway builds its drivers once the uplink's first connect attempt is over. pymodbus itself
        # waits for a link's first connect (drivers.modbus.link.load_pymodbus).
        from drivers.modbus.driver import build_drivers

        return build_drivers(config)


plugin = ModbusPlugin()
