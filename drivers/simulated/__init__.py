"""The ``simulated`` driver: devices whose points follow a sine, a ramp, a random walk or steps.

A real driver behind the same entry point as Modbus and serial, so the whole gateway can run, be
demonstrated and be benchmarked with no hardware.
"""

from drivers.simulated.driver import SimulatedDriver
from drivers.simulated.plugin import SimulatedPlugin, plugin

__all__ = ["SimulatedDriver", "SimulatedPlugin", "plugin"]
