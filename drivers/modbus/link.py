"""Transactions on the wire: one pymodbus client per connection, library errors mapped to ours.

A :class:`Channel` is one connection (a serial port or a TCP socket) and runs one transaction at a
time. A :class:`SerialLink` is the single owner of a serial bus: every transaction of every slave
on it goes through its bounded queue and is executed in order, with the bus's inter-frame pause
between them. A :class:`TcpLink` is a pool of at most ``connections`` channels to one server,
shared by the devices behind it (several unit ids behind one gateway), used concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.modbus.config import SerialBus, TcpEndpoint
from gateway.errors import DeviceProtocolError, DeviceRefused, DeviceTimeout, DeviceUnavailable, DriverError

log = logging.getLogger("fieldgate.modbus")

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "slave device failure",
    5: "acknowledge (busy with a long command)",
    6: "slave device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

FUNCTION_NAMES = {
    1: "read coils",
    2: "read discrete inputs",
    3: "read holding registers",
    4: "read input registers",
    5: "write single coil",
    6: "write single register",
    15: "write multiple coils",
    16: "write multiple registers",
}

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.pdu import ModbusPDU


class _Pymodbus:
    """The pymodbus names the links use, imported by :func:`load_pymodbus`."""

    def __init__(self) -> None:
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
        from pymodbus.framer import FramerType

        self.serial_client = AsyncModbusSerialClient
        self.tcp_client = AsyncModbusTcpClient
        self.connection_error = ConnectionException
        self.error = ModbusException
        self.io_error = ModbusIOException
        self.framers = {"socket": FramerType.SOCKET, "rtu": FramerType.RTU, "ascii": FramerType.ASCII}


class _Import:
    """Where the import stands (one per process; the task belongs to the loop that started it)."""

    lib: _Pymodbus | None = None
    task: asyncio.Task[None] | None = None


_import = _Import()


def _import_pymodbus() -> None:
    if _import.lib is None:
        _import.lib = _Pymodbus()


async def load_pymodbus() -> None:
    """Import pymodbus (~55 ms of CPU on a small VM) once, in a worker thread, at the first connect.

    Not at import of the plugin nor on the event loop: at start the uplink is connecting at the same
    time, and a thread lets the loop take the GIL every switch interval and answer the broker, where an
    import on the loop would hold the CONNACK back for all of it. One shared task, so that ten devices
    starting together do not take ten of the loop's executor threads (which the uplink needs too).
    """
    if _import.lib is not None:
        return
    loop = asyncio.get_running_loop()
    task = _import.task
    if task is None or task.get_loop() is not loop or task.done():
        task = _import.task = loop.create_task(asyncio.to_thread(_import_pymodbus), name="modbus.import")
    # Shielded: a device cancelled while waiting must not cancel the import the others wait for.
    await asyncio.shield(task)


def raise_swallowed_cancellation() -> None:
    """Raise the cancellation of the current task if something below swallowed it.

    pymodbus awaits connects and answers with ``asyncio.wait_for``, which on Python 3.11 returns the
    result instead of raising when the cancellation and the result arrive in the same loop iteration
    (CPython gh-86296, fixed in 3.12). The task stays marked as cancelling but runs on: a bus owner or a
    poller would serve forever, and a stopping gateway would wait for it forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _lib() -> _Pymodbus:
    assert _import.lib is not None, "load_pymodbus() first"
    return _import.lib


@dataclass(frozen=True, slots=True)
class Op:
    """One Modbus request: a read (``values`` empty) or a write."""

    function: int
    address: int
    count: int
    values: tuple[int, ...] | tuple[bool, ...] = ()

    def describe(self, unit: int) -> str:
        name = FUNCTION_NAMES.get(self.function, "?")
        return f"unit {unit}, fc{self.function} ({name}) address {self.address} count {self.count}"


Result = list[int] | list[bool]


class Channel:
    """One connection and its pymodbus client; one transaction at a time (the caller serialises)."""

    def __init__(self, link: SerialBus | TcpEndpoint, label: str) -> None:
        self.link = link
        self.label = label
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._rx_seen = False
        self._rtu = link.framer == "rtu"
        self._unit = -1
        self._down_since: float | None = None
        self._connect_backoff = 0.0
        self._next_connect = 0.0
        self.connect_failures = 0

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # Bytes that arrive without ever forming a valid answer make a bad frame, not a silent slave.
        # On an RTU line only bytes starting with the addressed unit count: a slow slave's late answer
        # to an earlier request must not turn the next slave's silence into a "bad frame".
        if not sending and data and (not self._rtu or data[0] == self._unit):
            self._rx_seen = True
        return data

    def _make_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        client = self._new_client()
        _discard_undecodable_frames(client)
        return client

    def _new_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        link = self.link
        lib = _lib()
        # pymodbus' own retries and reconnects are off: we time, retry and back off ourselves so that
        # one slave's silence costs the others at most one timeout. Its timeout is only a safety net.
        if isinstance(link, SerialBus):
            return lib.serial_client(
                link.port,
                framer=lib.framers[link.framer],
                baudrate=link.baudrate,
                bytesize=link.bytesize,
                parity=link.parity,
                stopbits=link.stopbits,
                timeout=60.0,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
        return lib.tcp_client(
            link.host,
            port=link.port,
            framer=lib.framers[link.framer],
            timeout=max(5.0, 2 * link.timeout),
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
        )

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def _ensure_connected(self, device: str) -> None:
        if self._client is not None and self._client.connected:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._next_connect:
            raise DeviceUnavailable(
                device, f"{self.label} is down, next attempt in {self._next_connect - now:.1f}s"
            )
        ok = True
        if isinstance(self.link, SerialBus):
            # open() of a tty node can block (a USB adapter re-enumerating, a line waiting for carrier):
            # try it in a worker thread first, so that pymodbus' own open on the loop only follows a
            # quick one. A TCP connect is asynchronous.
            ok = await asyncio.to_thread(_port_opens, self.link.port)
        if ok:
            if self._client is None:
                await load_pymodbus()
                self._client = self._make_client()
            ok = bool(await self._client.connect()) and self._client.connected
        if ok:
            if self._down_since is not None:
                log.info("%s: connection restored after %.1fs", self.label, now - self._down_since)
            self._down_since = None
            self._connect_backoff = 0.0
            return
        self.connect_failures += 1
        if self._client is not None:
            self._client.close()
            self._client = None
        backoff_max = self.link.backoff_max
        self._connect_backoff = min(backoff_max, max(0.5, self._connect_backoff * 2))
        self._next_connect = now + self._connect_backoff
        what = (
            f"cannot open serial port {self.link.port}"
            if isinstance(self.link, SerialBus)
            else f"cannot connect to {self.link.host}:{self.link.port}"
        )
        if self._down_since is None:
            self._down_since = now
            log.error(
                "%s: %s (serving %s); retrying with backoff up to %gs", self.label, what, device, backoff_max
            )
        else:
            log.debug("%s: %s, still down; next attempt in %.1fs", self.label, what, self._connect_backoff)
        raise DeviceUnavailable(device, what)

    async def transact(self, device: str, unit: int, op: Op, reply_timeout: float) -> Result:
        """Run one request; map every failure to a ``DriverError`` naming device, unit, function, range."""
        try:
            return await self._transact(device, unit, op, reply_timeout)
        finally:
            raise_swallowed_cancellation()

    async def _transact(self, device: str, unit: int, op: Op, reply_timeout: float) -> Result:
        await self._ensure_connected(device)
        client = self._client
        assert client is not None
        lib = _lib()
        self._rx_seen = False
        self._unit = unit
        try:
            async with asyncio.timeout(reply_timeout):
                rsp = await self._call(client, op, unit)
        except TimeoutError as exc:
            if not client.connected:
                self._drop()
                raise DeviceUnavailable(device, f"{op.describe(unit)}: connection lost") from exc
            if self._rx_seen:
                raise DeviceProtocolError(
                    device,
                    f"{op.describe(unit)}: bad frame (bytes arrived but no valid answer: CRC or length)",
                ) from exc
            raise DeviceTimeout(device, f"{op.describe(unit)}: no answer within {reply_timeout:g}s") from exc
        except lib.connection_error as exc:
            self._drop()
            raise DeviceUnavailable(device, f"{op.describe(unit)}: not connected") from exc
        except lib.error as exc:
            raise DeviceProtocolError(device, f"{op.describe(unit)}: {exc}") from exc
        if rsp.isError():
            code = int(getattr(rsp, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceRefused(device, f"{op.describe(unit)}: exception {code} ({name})")
        if op.values:
            return []
        if op.function in (1, 2):
            bits: list[bool] = list(getattr(rsp, "bits", ()))
            if len(bits) < op.count:
                raise DeviceProtocolError(device, f"{op.describe(unit)}: short answer ({len(bits)} bits)")
            return bits[: op.count]
        registers: list[int] = list(getattr(rsp, "registers", ()))
        if len(registers) != op.count:
            raise DeviceProtocolError(device, f"{op.describe(unit)}: answer has {len(registers)} registers")
        return registers

    @staticmethod
    async def _call(client: AsyncModbusSerialClient | AsyncModbusTcpClient, op: Op, unit: int) -> ModbusPDU:
        f = op.function
        if f == 1:
            return await client.read_coils(op.address, count=op.count, device_id=unit)
        if f == 2:
            return await client.read_discrete_inputs(op.address, count=op.count, device_id=unit)
        if f == 3:
            return await client.read_holding_registers(op.address, count=op.count, device_id=unit)
        if f == 4:
            return await client.read_input_registers(op.address, count=op.count, device_id=unit)
        if f == 5:
            return await client.write_coil(op.address, bool(op.values[0]), device_id=unit)
        if f == 6:
            return await client.write_register(op.address, int(op.values[0]), device_id=unit)
        if f == 15:
            return await client.write_coils(op.address, [bool(v) for v in op.values], device_id=unit)
        if f == 16:
            return await client.write_registers(op.address, [int(v) for v in op.values], device_id=unit)
        raise ValueError(f"unsupported function code {f}")

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        self._drop()


def _discard_undecodable_frames(client: AsyncModbusSerialClient | AsyncModbusTcpClient) -> None:
    """An answer pymodbus cannot decode is dropped, not raised out of the transport's data callback.

    pymodbus raises ``ModbusIOException`` from ``data_received`` for a frame with an unknown function
    code; asyncio then logs a traceback at error level and closes the connection, once per bad frame.
    Dropped here, the request runs into its timeout and is reported as a bad frame (bytes arrived) by
    :meth:`Channel.transact`, logged once while the device keeps sending them.
    """
    manager = client.ctx
    handle = manager.callback_data
    io_error = _lib().io_error

    def callback_data(data: bytes, addr: tuple[str, int] | None = None) -> int:
        try:
            return int(handle(data, addr))
        except io_error:
            return len(data)

    manager.callback_data = callback_data  # type: ignore[method-assign]


@dataclass(slots=True)
class _Job:
    """One transaction queued for a link's single channel."""

    device: str
    unit: int
    op: Op
    timeout: float
    future: asyncio.Future[Result]


class LinkStats:
    """Counters of one link, kept by its driver across restarts of the link."""

    def __init__(self) -> None:
        self.transactions = 0
        self.failures = 0
        self.queue_full = 0


class SerialLink:
    """The owner of one serial bus: a bounded FIFO of transactions run one by one with a pause between.

    Queue bound: every poll group has at most one transaction waiting, plus ``write_slots`` for writes;
    a submit beyond that is refused at once (``DeviceUnavailable``, counted in ``stats.queue_full``).
    """

    write_slots = 8

    def __init__(self, bus: SerialBus, pollers: int, stats: LinkStats | None = None) -> None:
        self.bus = bus
        self.channel = Channel(bus, bus.key)
        self.stats = stats or LinkStats()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=pollers + self.write_slots)

    async def submit(self, device: str, unit: int, op: Op, reply_timeout: float) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(device, unit, op, reply_timeout, future))
        except asyncio.QueueFull:
            self.stats.queue_full += 1
            raise DeviceUnavailable(device, f"{self.bus.key} queue is full, request refused") from None
        return await future

    async def run(self) -> None:
        """Serve the queue until cancelled (the bus's single owner task)."""
        while True:
            job = await self._queue.get()
            if job.future.done():  # the submitter was cancelled meanwhile
                continue
            self.stats.transactions += 1
            try:
                result = await self.channel.transact(job.device, job.unit, job.op, job.timeout)
            except DriverError as exc:
                self.stats.failures += 1
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(result)
            # RTU needs silence between frames; the async client does not keep it, so the owner does.
            await asyncio.sleep(self.bus.inter_frame_pause)

    def close(self) -> None:
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(DeviceUnavailable(job.device, f"{self.bus.key} closed"))
        self.channel.close()


class TcpLink:
    """A pool of up to ``connections`` channels to one TCP server, used concurrently by its devices.

    Bound: as for a serial bus, every poll group may wait for a channel plus ``write_slots`` writes;
    a submit beyond that is refused at once (``DeviceUnavailable``, counted in ``stats.queue_full``).
    """

    write_slots = SerialLink.write_slots

    def __init__(self, endpoint: TcpEndpoint, pollers: int, stats: LinkStats | None = None) -> None:
        self.endpoint = endpoint
        self.stats = stats or LinkStats()
        self._channels = [
            Channel(endpoint, endpoint.key if endpoint.connections == 1 else f"{endpoint.key}#{i + 1}")
            for i in range(endpoint.connections)
        ]
        self._idle: asyncio.Queue[Channel] = asyncio.Queue(maxsize=len(self._channels))
        for ch in self._channels:
            self._idle.put_nowait(ch)
        self._limit = pollers + self.write_slots
        self._pending = 0

    async def submit(self, device: str, unit: int, op: Op, reply_timeout: float) -> Result:
        if self._pending >= self._limit:
            self.stats.queue_full += 1
            raise DeviceUnavailable(device, f"{self.endpoint.key} has too many requests waiting, refused")
        self._pending += 1
        try:
            channel = await self._idle.get()
        finally:
            self._pending -= 1
        self.stats.transactions += 1
        try:
            return await channel.transact(device, unit, op, reply_timeout)
        except DriverError:
            self.stats.failures += 1
            raise
        finally:
            self._idle.put_nowait(channel)

    async def run(self) -> None:
        """Nothing to own: channels connect on first use. Present so both links look alike."""

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


Link = SerialLink | TcpLink


def quiet_pymodbus() -> None:
    """pymodbus logs every timeout and reconnect on its own logger at warning/error level; the driver
    already logs each fault once with the device's name, so the library's lines are silenced."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _port_opens(port: str) -> bool:
    """Whether the serial port's node opens (blocking: run in a worker thread)."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True
