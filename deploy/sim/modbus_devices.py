"""Simulated Modbus field devices for the demo and the tests, on real pymodbus servers.

* a Modbus TCP energy meter on a port (``--tcp-port``);
* an RS-485 bus with several slaves: a pymodbus RTU server on one pseudo-terminal, relayed byte for
  byte to a second one whose slave end is what the gateway opens (``--link DIR`` makes
  ``DIR/rs485-1`` point at it), like a USB adapter on a daisy chain.

Values change over time (voltages wander, energy counts up). Faults can be switched on per unit id
(silent: the slave stops answering; corrupt: its answers get a broken CRC; short: its answers are
cut in half), which the tests use.

Run: ``python deploy/sim/modbus_devices.py --link deploy/.demo --tcp-port 5020`` (until SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import struct
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# -------------------------------------------------------------------------------------------------
# faults


@dataclass
class Faults:
    """Per unit id switches applied to a server's outgoing frames."""

    framer: str = "rtu"
    silent: set[int] = field(default_factory=set)
    corrupt: set[int] = field(default_factory=set)
    short: set[int] = field(default_factory=set)
    answered: dict[int, int] = field(default_factory=dict)
    connections: int = 0
    open_connections: int = 0
    #: Unit ids that exist; answers for any other are dropped (absent slaves are silent on a bus).
    present: set[int] | None = None
    #: Set whenever request bytes arrive (tests clear it and wait for the next request).
    requests: asyncio.Event = field(default_factory=asyncio.Event)

    def on_connect(self, up: bool) -> None:
        if up:
            self.connections += 1
            self.open_connections += 1
        else:
            self.open_connections -= 1

    def _unit(self, frame: bytes) -> int:
        if self.framer == "socket":
            return frame[6] if len(frame) > 6 else -1
        if self.framer == "ascii":
            return int(frame[1:3], 16) if len(frame) > 3 else -1
        return frame[0] if frame else -1

    def trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.requests.set()
            return data
        if not data:
            return data
        unit = self._unit(data)
        if unit in self.silent or (self.present is not None and unit not in self.present):
            return b""
        self.answered[unit] = self.answered.get(unit, 0) + 1
        if unit in self.corrupt:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        if unit in self.short:
            return data[: len(data) // 2]
        return data


# -------------------------------------------------------------------------------------------------
# devices


def device(
    unit: int,
    *,
    holding: Sequence[int] = (0,),
    inputs: Sequence[int] = (0,),
    coils: Sequence[bool] = (False,) * 16,
    discrete: Sequence[bool] = (False,) * 16,
    action: Callable[..., object] | None = None,
) -> SimDevice:
    """A slave with four separate tables starting at address 0, seeded with the given values."""

    def bits(values: Sequence[bool]) -> list[bool]:
        padded = list(values) + [False] * (-len(values) % 16)
        return padded or [False] * 16

    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=bits(coils), datatype=DataType.BITS)],
            [SimData(0, values=bits(discrete), datatype=DataType.BITS)],
            [SimData(0, values=list(holding), datatype=DataType.REGISTERS)],
            [SimData(0, values=list(inputs), datatype=DataType.REGISTERS)],
        ),
        action=action,  # type: ignore[arg-type]
    )


def refuse(
    code: ExcCodes, *, function: int | None = None, address: int | None = None
) -> Callable[..., object]:
    """A device action answering ``code`` to matching requests (e.g. busy, illegal function)."""

    async def act(
        fc: int, _start: int, addr: int, _count: int, _regs: list[int], _values: object
    ) -> ExcCodes | None:
        if (function is None or fc == function) and (address is None or addr == address):
            return code
        return None

    return act


@dataclass
class Slowness:
    """Counts requests being answered at the same moment by slow devices (to see concurrency)."""

    in_flight: int = 0
    most: int = 0


def slow(seconds: float, stats: Slowness) -> Callable[..., object]:
    """A device action that takes ``seconds`` to answer every request."""

    async def act(*_args: object) -> None:
        stats.in_flight += 1
        stats.most = max(stats.most, stats.in_flight)
        try:
            await asyncio.sleep(seconds)
        finally:
            stats.in_flight -= 1

    return act


# -------------------------------------------------------------------------------------------------
# servers


async def start_tcp(
    devices: Sequence[SimDevice],
    faults: Faults,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    framer: str = "socket",
) -> tuple[ModbusTcpServer, int]:
    """A Modbus TCP server (``framer="rtu"``: a serial device server); ``port=0`` picks a free port."""
    faults.framer = framer
    server = ModbusTcpServer(
        list(devices),
        address=(host, port),
        framer=FramerType(framer),
        trace_packet=faults.trace,
        trace_connect=faults.on_connect,
    )
    await server.serve_forever(background=True)
    sockets = server.transport.sockets  # type: ignore[attr-defined]
    return server, int(sockets[0].getsockname()[1])


async def start_rtu(
    devices: Sequence[SimDevice], path: str, faults: Faults, *, framer: str = "rtu"
) -> ModbusSerialServer:
    """An RTU (or ASCII) server on the tty ``path``; unknown unit ids stay silent like absent slaves."""
    faults.framer = framer
    faults.present = {d.id for d in devices}
    # pymodbus 3.16's ignore_missing_devices does not work with SimDevice (a KeyError becomes a
    # "device failure" answer); a catch-all unit 0 answers instead and the trace drops those answers.
    everyone = [*devices, device(0)] if 0 not in faults.present else list(devices)
    server = ModbusSerialServer(
        everyone,
        framer=FramerType(framer),
        port=path,
        baudrate=115200,
        ignore_missing_devices=True,
        trace_packet=faults.trace,
    )
    await server.serve_forever(background=True)
    return server


class NullModem:
    """Two pseudo-terminals joined back to back: what is written to one tty comes out of the other.

    The server opens ``server_path``, the gateway opens ``client_path``; both behave as serial
    ports (pyserial configures them), with no baud-rate timing. The slave ends stay open here too,
    so one side closing and reopening its port does not break the pair.
    """

    def __init__(self) -> None:
        self._m1, self._s1 = os.openpty()
        self._m2, self._s2 = os.openpty()
        for fd in (self._s1, self._s2):
            tty.setraw(fd)
        self.server_path = os.ttyname(self._s1)
        self.client_path = os.ttyname(self._s2)
        for fd in (self._m1, self._m2):
            os.set_blocking(fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._m1, self._pump, self._m1, self._m2)
        self._loop.add_reader(self._m2, self._pump, self._m2, self._m1)

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, OSError):
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(dst, data)

    def to_client(self, data: bytes) -> None:
        """Put bytes on the line as if a slave had sent them (for stray or late frames in tests)."""
        os.write(self._m2, data)

    def close(self) -> None:
        if self._loop is not None:
            for fd in (self._m1, self._m2):
                self._loop.remove_reader(fd)
            self._loop = None
        for fd in (self._m1, self._m2, self._s1, self._s2):
            with contextlib.suppress(OSError):
                os.close(fd)


# -------------------------------------------------------------------------------------------------
# the demo plant


def _f32(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


def _meter_action(phase: float) -> Callable[..., object]:
    """An energy meter whose input registers follow the clock: V, A, kW as float32, kWh as uint32."""
    started = time.monotonic()

    async def act(fc: int, start: int, _addr: int, _count: int, regs: list[int], _values: object) -> None:
        if fc != 4:
            return
        t = time.monotonic() - started
        volts = 230.0 + 3.0 * math.sin(t / 7.0 + phase)
        amps = 5.0 + 2.0 * math.sin(t / 11.0 + phase)
        kw = volts * amps / 1000.0
        kwh = int(1000 + t * kw * 10)
        values = _f32(volts) + _f32(amps) + _f32(kw) + [kwh >> 16, kwh & 0xFFFF]
        regs[0 - start : 8 - start] = values

    return act


def demo_meter(unit: int, phase: float = 0.0) -> SimDevice:
    return device(unit, inputs=[0] * 16, holding=[0] * 16, action=_meter_action(phase))


def _make_link(link_dir: Path, target: str) -> Path:
    """``link_dir/rs485-1`` -> the bus's tty (a few quick filesystem calls before serving starts)."""
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "rs485-1"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(target)
    return link


async def serve(link_dir: Path | None, tcp_port: int, slaves: int) -> None:
    faults_tcp, faults_bus = Faults(), Faults()
    tcp_server, port = await start_tcp([demo_meter(1)], faults_tcp, host="127.0.0.1", port=tcp_port)
    modem = NullModem()
    modem.start()
    bus_server = await start_rtu(
        [demo_meter(u, phase=u) for u in range(1, slaves + 1)], modem.server_path, faults_bus
    )
    link = _make_link(link_dir, modem.client_path) if link_dir is not None else None
    where = link or modem.client_path
    print(
        f"modbus sim: TCP meter unit 1 on 127.0.0.1:{port}; RS-485 bus {where} -> {modem.client_path} "
        f"with meters unit 1..{slaves} (RTU)",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await bus_server.shutdown()
        await tcp_server.shutdown()
        modem.close()
        if link is not None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()


def main() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--link", type=Path, help="directory for the rs485-1 symlink to the bus's tty")
    parser.add_argument(
        "--tcp-port", type=int, default=5020, help="TCP port of the energy meter (default 5020)"
    )
    parser.add_argument("--slaves", type=int, default=3, help="meters on the RS-485 bus, unit ids 1..N")
    args = parser.parse_args()
    asyncio.run(serve(args.link, args.tcp_port, args.slaves))


if __name__ == "__main__":
    main()
