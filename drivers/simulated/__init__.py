"""The ``simulated`` driver: devices whose points follow a sine, a ramp, a random walk or steps.

A real driver behind the same entry point as Modbus and serial, so the whole gateway can run, be
demonstrated and be benchmarked with no hardware.
"""

from __future__ import annotations

from collections.abc import Sequence

from drivers.simulated.config import SimulatedConfig, parse_device
from drivers.simulated.driver import SimulatedDriver
from gateway.model import Driver, DriverConfig
from gateway.schema import Table


class SimulatedPlugin:
    def parse(self, section: Table | None, devices: Sequence[tuple[str, Table]]) -> SimulatedConfig:
        if section is not None:
            section.finish()  # the simulated driver has no driver-wide settings
        return SimulatedConfig(tuple(parse_device(name, table) for name, table in devices))

    def build(self, config: DriverConfig) -> Sequence[Driver]:
        assert isinstance(config, SimulatedConfig)
        return [SimulatedDriver(device) for device in config.sim_devices]


plugin = SimulatedPlugin()
