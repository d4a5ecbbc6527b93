"""The serial driver: line, frame and request/response sensors on pyserial (entry point ``serial``).

``plugin.parse`` reads ``[drivers.serial]`` and the ``driver = "serial"`` device tables into a frozen
:class:`SerialConfig`; ``plugin.build`` makes one :class:`SerialDriver` (named ``serial[<device>]``) per
device, so an unplugged sensor never holds up another one.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.serial.config import Device, SerialConfig, parse_config
from drivers.serial.driver import SerialDriver
from gateway.model import DriverConfig
from gateway.schema import Table

__all__ = ["Device", "SerialConfig", "SerialDriver", "SerialPlugin", "plugin"]


class SerialPlugin:
    def parse(self, section: Table | None, devices: Sequence[tuple[str, Table]]) -> SerialConfig:
        return parse_config(section, devices)

    def build(self, config: DriverConfig) -> Sequence[SerialDriver]:
        if not isinstance(config, SerialConfig):
            raise TypeError(f"the serial plugin builds from a SerialConfig, not {type(config).__name__}")
        return [SerialDriver(spec) for spec in config.specs]


plugin = SerialPlugin()
