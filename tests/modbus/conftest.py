"""Fixtures: real pymodbus servers (TCP on loopback, RTU over joined ptys) from the demo simulator."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

import pytest

from gateway.model import Reading

ROOT = Path(__file__).resolve().parents[2]


def _load_sim() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "modbus_devices", ROOT / "deploy" / "sim" / "modbus_devices.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["modbus_devices"] = module
    spec.loader.exec_module(module)
    return module


sim = _load_sim()


@pytest.fixture
def simulator() -> ModuleType:
    return sim


@pytest.fixture
async def null_modem() -> AsyncIterator[object]:
    modem = sim.NullModem()
    modem.start()
    yield modem
    modem.close()


class Collector:
    """The driver's sink: keeps every poll cycle with its arrival time and wakes waiters."""

    def __init__(self) -> None:
        self.cycles: list[tuple[float, list[Reading]]] = []
        self._changed = asyncio.Event()

    def __call__(self, readings: object) -> None:
        self.cycles.append((asyncio.get_running_loop().time(), list(readings)))  # type: ignore[call-overload]
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def of(self, device: str) -> list[tuple[float, list[Reading]]]:
        return [(t, rs) for t, rs in self.cycles if rs and rs[0].device == device]

    def latest(self, device: str) -> dict[str, Reading]:
        out: dict[str, Reading] = {}
        for _, rs in self.of(device):
            for r in rs:
                out[r.point] = r
        return out


@pytest.fixture
def collector() -> Collector:
    return Collector()
