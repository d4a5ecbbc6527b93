"""The gateway finds its own drivers without scanning installed packages, and others' by entry point."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.model import DRIVER_ENTRY_POINT_GROUP
from gateway.registry import BUILTIN_DRIVERS, available_drivers, is_installed, load_driver

ROOT = Path(__file__).resolve().parents[1]


def test_the_built_in_drivers_are_the_ones_pyproject_declares_as_entry_points() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared[DRIVER_ENTRY_POINT_GROUP] == BUILTIN_DRIVERS


@pytest.mark.parametrize("name", sorted(BUILTIN_DRIVERS))
def test_a_built_in_driver_loads_the_same_plugin_as_its_entry_point(name: str) -> None:
    from importlib.metadata import entry_points

    (ep,) = entry_points(group=DRIVER_ENTRY_POINT_GROUP, name=name)
    assert load_driver(name) is ep.load()
    assert is_installed(name) and name in available_drivers()


def test_an_unknown_driver_is_not_installed() -> None:
    assert not is_installed("profibus")
    assert load_driver("profibus") is None
