"""Fixtures for the service tests: a real sd_notify socket and the test-only ``faulty`` driver plugin."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support.process import GatewayProcess

#: On PYTHONPATH, this folder registers the test-only ``faulty`` driver (entry point in its dist-info).
PLUGINS = Path(__file__).resolve().parent / "plugins"


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket; collects what the service sends."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.datagrams: list[str] = []
        #: ``time.monotonic()`` at which each datagram arrived.
        self.arrived: list[float] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            self.arrived.append(time.monotonic())
            self.datagrams.append(data.decode())
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[str], bool], *, start: int = 0, timeout: float = 10.0
    ) -> int:
        """Index of the first datagram from ``start`` matching ``predicate``."""
        async with asyncio.timeout(timeout):
            index = start
            while True:
                while index < len(self.datagrams):
                    if predicate(self.datagrams[index]):
                        return index
                    index += 1
                self._changed.clear()
                await self._changed.wait()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close()


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    listener.start()
    yield listener
    listener.close()


def service_env(**extra: str) -> dict[str, str]:
    """The environment of a gateway under test: our plugins found, no systemd variables inherited."""
    env = {"PYTHONPATH": str(PLUGINS), "NOTIFY_SOCKET": "", "WATCHDOG_USEC": "", "JOURNAL_STREAM": ""}
    env.update(extra)
    return env


def write_config(tmp_path: Path, devices: str, *, metrics: bool = False, extra: str = "") -> Path:
    state = tmp_path / "state"
    config = tmp_path / "fieldgate.toml"
    text = f"""
[gateway]
id = "gw-svc"
site = "lab"
stats_interval = 0
state_dir = "{state}"
shutdown_grace = 1
{extra}
"""
    if metrics:
        text += "\n[metrics]\nenabled = true\nport = 0\n"
    config.write_text(text + devices)
    return config


SIMULATED = """
[devices.alpha]
driver = "simulated"
interval = 0.05

[[devices.alpha.points]]
name = "temperature"
signal = "sine"
unit = "°C"
"""


async def start_gateway(config: Path, **env: str) -> GatewayProcess:
    return await GatewayProcess(["run", "--config", str(config), "--dry-run"], env=service_env(**env)).start()
