"""Finds driver plugins by name through the entry-point group ``fieldgate.drivers``."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import cast

from gateway.model import DRIVER_ENTRY_POINT_GROUP, DriverPlugin


def available_drivers() -> list[str]:
    """Names of the installed driver plugins, sorted."""
    return sorted({ep.name for ep in entry_points(group=DRIVER_ENTRY_POINT_GROUP)})


def load_driver(name: str) -> DriverPlugin | None:
    """The plugin registered under ``name``, or None when no installed package provides it."""
    for ep in entry_points(group=DRIVER_ENTRY_POINT_GROUP, name=name):
        return cast(DriverPlugin, ep.load())
    return None
