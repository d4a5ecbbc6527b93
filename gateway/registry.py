"""Finds driver plugins by name: this distribution's own drivers directly, others through the entry-point
group ``fieldgate.drivers``.

The built-in names are also declared as entry points in ``pyproject.toml`` (a test keeps the two equal), so
``available_drivers`` lists them with everyone else's. Resolving a built-in does not scan the installed
distributions: that scan (``importlib.metadata`` reads every package's metadata) costs tens of
milliseconds of every start, and a config naming only built-in drivers never needs it.
"""

from __future__ import annotations

import importlib
from typing import cast

from gateway.model import DRIVER_ENTRY_POINT_GROUP, DriverPlugin

#: name -> "module:attribute" of the drivers shipped in this distribution.
BUILTIN_DRIVERS = {
    "simulated": "drivers.simulated:plugin",
    "modbus": "drivers.modbus:plugin",
    "serial": "drivers.serial:plugin",
}


def available_drivers() -> list[str]:
    """Names of the installed driver plugins, sorted."""
    from importlib.metadata import entry_points

    return sorted(set(BUILTIN_DRIVERS) | {ep.name for ep in entry_points(group=DRIVER_ENTRY_POINT_GROUP)})


def is_installed(name: str) -> bool:
    """Whether a driver called ``name`` can be loaded (scans entry points only for a name not built in)."""
    return name in BUILTIN_DRIVERS or name in available_drivers()


def load_driver(name: str) -> DriverPlugin | None:
    """The plugin registered under ``name``, or None when no installed package provides it."""
    builtin = BUILTIN_DRIVERS.get(name)
    if builtin is not None:
        module, _, attribute = builtin.partition(":")
        return cast(DriverPlugin, getattr(importlib.import_module(module), attribute))
    from importlib.metadata import entry_points

    for ep in entry_points(group=DRIVER_ENTRY_POINT_GROUP, name=name):
        return cast(DriverPlugin, ep.load())
    return None
