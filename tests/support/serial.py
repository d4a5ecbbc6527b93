"""Simulated serial sensors on pseudo-terminal pairs, shared by the serial driver's tests.

The sensor owns the master end of a pty; the driver opens the slave path, just as it would open
``/dev/ttyUSB0``. The slave end is put in raw mode at once so that the line discipline neither echoes
nor translates bytes written before the driver has opened (and configured) it.
"""

from __future__ import annotations

import asyncio
import os
import time
import tomllib
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drivers.serial.config import Device, parse_device
from gateway.model import Reading
from gateway.schema import Problems, Table


class Pty:
    """A pty pair: the test writes to / reads from ``master``; ``path`` is what the driver opens."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                time.sleep(0.001)

    def read(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        """Like pulling the USB plug: the driver's reads fail with EIO."""
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self.slave)


@dataclass
class Collector:
    """The ReadingSink a test hands to the driver: keeps every emitted batch."""

    batches: list[list[Reading]] = field(default_factory=list)

    def __call__(self, readings: Sequence[Reading]) -> None:
        self.batches.append(list(readings))

    @property
    def readings(self) -> list[Reading]:
        return [r for batch in self.batches for r in batch]

    def values(self, point: str) -> list[object]:
        return [r.value for r in self.readings if r.point == point]


async def wait_for(condition: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """Wait until ``condition()`` holds, failing the test after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def device_from_toml(name: str, text: str) -> Device:
    """Parse one ``[devices.<name>]`` table the way the gateway's loader would hand it over."""
    data = tomllib.loads(text)
    problems = Problems("test.toml")
    table = Table(data["devices"][name], f"devices.{name}", problems)
    table.consume("driver")
    spec = parse_device(name, table, retry_initial=0.05, retry_max=0.2)
    problems.raise_if_any()
    return spec


class Responder:
    """A polled sensor on a pty: answers each command it knows, stays silent on the others."""

    def __init__(self, pty: Pty, answers: dict[bytes, bytes | None]) -> None:
        self.pty = pty
        self.answers = answers
        self.heard: list[bytes] = []
        self._buf = b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(pty.master, self._readable)

    def _readable(self) -> None:
        self._buf += self.pty.read()
        while self._buf:
            for command, reply in self.answers.items():
                if self._buf.startswith(command):
                    self.heard.append(command)
                    self._buf = self._buf[len(command) :]
                    if reply is not None:
                        self.pty.write(reply)
                    break
            else:
                if any(c.startswith(self._buf) for c in self.answers):
                    return  # the rest of a command is still on its way
                self._buf = self._buf[1:]

    def stop(self) -> None:
        self._loop.remove_reader(self.pty.master)
