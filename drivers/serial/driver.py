"""The serial device driver: opens the port, cuts the byte stream into frames and emits readings.

I/O design: the port is opened in a worker thread (pyserial's open does termios/ioctl/flock calls and a
USB adapter can stall them), then its file descriptor - which pyserial leaves non-blocking - is watched
with ``loop.add_reader``. Reading that way needs no thread per device and no queue between a reader
thread and the loop: each chunk is framed, parsed and emitted right in the callback (all pure, bounded
work), cancellation is immediate, and a hang-up (EIO or end of file) is seen in the same place as the data.
The kernel's tty buffer is the only buffer ahead of the framer, so nothing here can grow without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import termios
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import serial
from serial.rs485 import RS485Settings

from drivers.serial.config import Command, Device, LineFraming, ParserSpec, Point, Port
from drivers.serial.framing import Counters, Frame, Framer, build_framer
from drivers.serial.parsers import FramePlan, Rejected, build_plan
from gateway.errors import CommandRefused, DeviceTimeout, DeviceUnavailable, UnknownTarget
from gateway.model import CommandReply, Quality, Reading, ReadingSink, Value

log = logging.getLogger("fieldgate.serial")

FrameObserver = Callable[[Frame], None]
_READ_SIZE = 4096
#: Commands asked for from outside and waiting for the port; beyond it they are refused (unavailable).
MAX_REQUESTS = 8
#: A reply returned as text is cut to this many characters.
MAX_REPLY_TEXT = 1024


@dataclass(eq=False, slots=True)
class _Request:
    command: Command
    framer: Framer
    plan: FramePlan | None
    future: asyncio.Future[CommandReply]


def _reason(exc: BaseException) -> str:
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno:
        return os.strerror(errno)
    return str(exc) or type(exc).__name__


def open_port(device: str, spec: Port) -> serial.Serial:
    """Open and configure the port. Blocking: call it through ``asyncio.to_thread``."""
    port = serial.Serial()
    port.port = spec.line.port
    port.baudrate = spec.line.baudrate
    port.bytesize = spec.line.bytesize
    port.parity = spec.line.parity
    port.stopbits = spec.line.stopbits
    port.rtscts = spec.rtscts
    port.xonxoff = spec.xonxoff
    port.timeout = 0
    # Another process reading the same port (a forgotten gpsd or minicom) would steal bytes at random.
    port.exclusive = True
    if spec.rs485 is not None:
        rs = spec.rs485
        port.rs485_mode = RS485Settings(
            rts_level_for_tx=rs.rts_level_for_tx,
            rts_level_for_rx=rs.rts_level_for_rx,
            loopback=rs.loopback,
            delay_before_tx=rs.delay_before_tx,
            delay_before_rx=rs.delay_before_rx,
        )
    try:
        port.open()
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        raise DeviceUnavailable(device, f"cannot open {spec.path}: {_reason(exc)}") from exc
    return port


class _Link:
    """An open port's descriptor watched by the loop; ``lost`` resolves with the reason it went away."""

    def __init__(self, device: str, port: serial.Serial, on_data: Callable[[bytes], None]) -> None:
        self.device = device
        self.port = port
        self.fd = port.fileno()
        self.on_data = on_data
        self.loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[str] = self.loop.create_future()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"read failed on {self.port.port}: {_reason(exc)}")
            return
        if not data:
            self._fail(f"{self.port.port} hung up (unplugged?)")
            return
        self.on_data(data)

    def _fail(self, reason: str) -> None:
        self.loop.remove_reader(self.fd)
        if not self.lost.done():
            self.lost.set_result(reason)

    def check(self) -> None:
        if self.lost.done():
            raise DeviceUnavailable(self.device, self.lost.result())

    async def write(self, data: bytes, deadline: float) -> None:
        """Write all of ``data``, waiting for room (flow control) until ``deadline`` (loop time)."""
        view = memoryview(data)
        while view:
            self.check()
            try:
                view = view[os.write(self.fd, view) :]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._fail(f"write failed on {self.port.port}: {_reason(exc)}")
                self.check()
            if not view:
                return
            room: asyncio.Future[None] = self.loop.create_future()
            self.loop.add_writer(self.fd, _set_once, room)
            try:
                await asyncio.wait(_either(room, self.lost), timeout=max(0.0, deadline - self.loop.time()))
            finally:
                self.loop.remove_writer(self.fd)
            if not room.done() and not self.lost.done():
                raise DeviceTimeout(self.device, f"{self.port.port} did not take the command (flow control?)")

    def close(self) -> None:
        if not self.lost.done():
            self.loop.remove_reader(self.fd)
            self.lost.cancel()


class _ReportFilter:
    """Holds back readings of on-change points that moved no more than their deadband since last
    reported (same quality), unless their report period has passed since then."""

    def __init__(self, points: Sequence[Point]) -> None:
        self._points = {p.name: p for p in points if p.on_change}
        self._last: dict[str, tuple[Value | None, Quality, float]] = {}

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        if not self._points:
            return readings
        out: list[Reading] = []
        now = time.monotonic()
        for r in readings:
            p = self._points.get(r.point)
            if p is not None:
                last = self._last.get(r.point)
                if (
                    last is not None
                    and last[1] is r.quality
                    and now - last[2] < p.report_period
                    and _unchanged(last[0], r.value, p.deadband)
                ):
                    continue
                self._last[r.point] = (r.value, r.quality, now)
            out.append(r)
        return out


def _unchanged(old: Value | None, new: Value | None, deadband: float) -> bool:
    if (
        isinstance(old, bool)
        or isinstance(new, bool)
        or not isinstance(old, int | float)
        or not isinstance(new, int | float)
    ):
        return old == new
    if math.isnan(old) and math.isnan(new):
        return True
    return abs(new - old) <= deadband


class SerialDriver:
    """One serial device: ``serial[<name>]``."""

    def __init__(self, spec: Device, *, frame_observer: FrameObserver | None = None) -> None:
        self.spec = spec
        self._name = f"serial[{spec.name}]"
        self._observer = frame_observer
        self._counters = Counters()
        self._port: serial.Serial | None = None
        self._silent: set[str] = set()
        #: When the open/retry or poll loop last came round (``gateway.model.Heartbeat``); None while
        #: streaming, where reads are driven by the event loop itself and quiet is legitimate.
        self._progress: float | None = None
        self._requests: deque[_Request] = deque()
        # Kept across reopenings: a point that comes back unchanged after an unplug is not news.
        self._report = _ReportFilter(spec.all_points)
        self._serving = False
        # Resolved to wake the poll loop when a request comes in; replaced at each wait.
        self._wakeup: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def settings(self) -> Device:
        return self.spec

    @property
    def last_progress(self) -> float | None:
        return self._progress

    @property
    def max_silence(self) -> float:
        spec = self.spec
        # Polled: every command may run into its timeout before the slowest one comes due again.
        cycle = max((c.interval for c in spec.commands), default=0.0) + sum(c.timeout for c in spec.commands)
        return 3 * cycle + spec.retry_max + 10.0

    @property
    def counters(self) -> dict[str, int]:
        """Frames received and dropped (garbage bytes, over-long, bad checksums, undecodable, ...)."""
        return self._counters.snapshot()

    async def run(self, emit: ReadingSink) -> None:
        spec = self.spec
        backoff = spec.retry_initial
        failures = 0
        down = False
        try:
            while True:
                self._progress = time.monotonic()
                try:
                    port = await self._open()
                except DeviceUnavailable as exc:
                    failures += 1
                    if not down:
                        log.error(
                            "%s: %s; retrying in %gs, backing off up to %gs",
                            self.name,
                            exc.detail,
                            backoff,
                            spec.retry_max,
                        )
                        down = True
                    else:
                        log.debug("%s: still unavailable (attempt %d): %s", self.name, failures, exc.detail)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, spec.retry_max)
                    continue
                if down:
                    attempts = (
                        f" after {failures} failed attempt{'' if failures == 1 else 's'}" if failures else ""
                    )
                    log.info("%s: recovered: %s open again%s", self.name, spec.port.path, attempts)
                else:
                    log.info(
                        "%s: opened %s at %d baud (%s mode)",
                        self.name,
                        spec.port.path,
                        spec.port.line.baudrate,
                        spec.mode,
                    )
                down, failures, backoff = False, 0, spec.retry_initial
                try:
                    await self._serve(port, emit)
                except DeviceUnavailable as exc:
                    log.error(
                        "%s: %s; reopening with backoff up to %gs", self.name, exc.detail, spec.retry_max
                    )
                    down = True
                except Exception:
                    # Not a fault we know, but one device must not take the gateway down with it: log it
                    # with its traceback and start over like after an unplug.
                    log.exception("%s: unexpected error; reopening with backoff", self.name)
                    down = True
                finally:
                    await self._release()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, spec.retry_max)
        finally:
            self._progress = None
            await self._release()

    async def close(self) -> None:
        await self._release()

    async def _open(self) -> serial.Serial:
        # Blocking open in a worker thread; if we are cancelled meanwhile, the port the thread still
        # opens is closed when it arrives instead of leaking its descriptor.
        task = asyncio.create_task(
            asyncio.to_thread(open_port, self.name, self.spec.port), name=f"{self.name}.open"
        )
        try:
            port = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_close_late)
            raise
        self._port = port
        return port

    async def _release(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            # A tty close may wait for unsent output to drain (flow control): keep it off the loop.
            await asyncio.to_thread(port.close)

    def _observe(self, frame: Frame) -> None:
        if self._observer is not None:
            self._observer(frame)

    async def _serve(self, port: serial.Serial, emit: ReadingSink) -> None:
        if self.spec.mode == "polled":
            await self._poll(port, emit)
        else:
            self._progress = None
            await self._stream(port, emit)

    async def _stream(self, port: serial.Serial, emit: ReadingSink) -> None:
        spec = self.spec
        framer = build_framer(spec.framing, self._counters)
        plan = (
            build_plan(self.spec.name, spec.parser, spec.points, self._counters, missing_is_bad=False)
            if spec.parser is not None
            else None
        )

        loop = asyncio.get_running_loop()
        last_frame = loop.time()
        silent = False

        def on_data(data: bytes) -> None:
            nonlocal last_frame, silent
            now = time.time()
            frames = framer.feed(data)
            if frames:
                last_frame = loop.time()
                if silent:
                    silent = False
                    log.info("%s: frames arrive again", self.name)
            for frame in frames:
                self._observe(frame)
                if plan is None:
                    continue
                readings = plan.readings(frame.payload, now)
                if isinstance(readings, list):
                    readings = self._report(readings)
                    if readings:
                        emit(readings)

        link = _Link(self.name, port, on_data)
        try:
            limit = spec.silence_timeout
            while not link.lost.done():
                if limit is None:
                    await asyncio.shield(link.lost)
                    break
                left = last_frame + limit - loop.time()
                if left > 0:
                    await asyncio.wait({link.lost}, timeout=left)
                    continue
                if not silent:
                    # Bytes may still arrive (noise on a cut line): only whole frames count as talking.
                    silent = True
                    log.warning(
                        "%s: no frame for %gs; its points are BAD until it talks again", self.name, limit
                    )
                    if plan is not None and plan.points:
                        emit(self._report(plan.all_bad(time.time(), f"no data for {limit:g}s")))
                await asyncio.wait({link.lost}, timeout=limit)
            link.check()
        finally:
            link.close()

    async def _poll(self, port: serial.Serial, emit: ReadingSink) -> None:
        loop = asyncio.get_running_loop()
        plans: list[tuple[Command, Framer, FramePlan]] = [
            (
                cmd,
                self._framer(cmd),
                build_plan(self.spec.name, cmd.parser, cmd.points, self._counters, missing_is_bad=True),
            )
            for cmd in self.spec.commands
            if cmd.poll and cmd.parser is not None
        ]
        due = [loop.time()] * len(plans)
        waiting: list[tuple[Framer, asyncio.Future[Frame]]] = []

        def on_data(data: bytes) -> None:
            if not waiting:
                self._counters.unsolicited_bytes += len(data)
                return
            framer, reply = waiting[0]
            for frame in framer.feed(data):
                if not reply.done():
                    reply.set_result(frame)

        link = _Link(self.name, port, on_data)
        self._serving = True
        try:
            while True:
                self._progress = time.monotonic()
                if self._requests:
                    # Commands asked for from outside go between polls, one exchange at a time.
                    request = self._requests.popleft()
                    if not request.future.done():  # the asker may have given up (timeout)
                        reply = await self._exchange(port, link, waiting, request.command, request.framer)
                        self._settle(request, reply, emit)
                    continue
                if not plans:
                    # Nothing to poll: waiting for a request is legitimate quiet, not a hung loop.
                    self._progress = None
                    self._wakeup = loop.create_future()
                    await asyncio.wait(_either(link.lost, self._wakeup), return_when=asyncio.FIRST_COMPLETED)
                    link.check()
                    continue
                index = min(range(len(plans)), key=due.__getitem__)
                cmd, framer, plan = plans[index]
                delay = due[index] - loop.time()
                if delay > 0:
                    self._wakeup = loop.create_future()
                    await asyncio.wait(
                        _either(link.lost, self._wakeup), timeout=delay, return_when=asyncio.FIRST_COMPLETED
                    )
                    link.check()
                    continue  # due now, or a request came in: decide again
                reply = await self._exchange(port, link, waiting, cmd, framer)
                answer = self._report(self._answer(cmd, plan, reply))
                if answer:
                    emit(answer)
                due[index] = max(due[index] + cmd.interval, loop.time())
        finally:
            self._serving = False
            link.close()
            while self._requests:
                request = self._requests.popleft()
                if not request.future.done():
                    request.future.set_exception(DeviceUnavailable(self.spec.name, "the port went away"))

    def _framer(self, cmd: Command) -> Framer:
        return build_framer(cmd.framing, self._counters)

    def _plan(self, cmd: Command, parser: ParserSpec | None) -> FramePlan | None:
        if parser is None:
            return None
        return build_plan(self.spec.name, parser, cmd.points, self._counters, missing_is_bad=True)

    async def _exchange(
        self,
        port: serial.Serial,
        link: _Link,
        waiting: list[tuple[Framer, asyncio.Future[Frame]]],
        cmd: Command,
        framer: Framer,
    ) -> asyncio.Future[Frame]:
        """Send one command and wait for its reply frame (the future is not done when none came)."""
        loop = asyncio.get_running_loop()
        link.check()
        # tcflush is one ioctl that does not wait: fine on the loop. It drops a late answer to
        # the previous command so it cannot pass for this one's.
        try:
            port.reset_input_buffer()
        except (OSError, termios.error, serial.SerialException) as exc:
            raise DeviceUnavailable(self.name, f"{port.port}: {_reason(exc)}") from exc
        framer.reset()
        reply: asyncio.Future[Frame] = loop.create_future()
        waiting.append((framer, reply))
        try:
            await link.write(cmd.send, loop.time() + cmd.timeout)
            await asyncio.wait(
                _either(reply, link.lost), timeout=cmd.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except DeviceTimeout:
            pass
        finally:
            waiting.clear()
        link.check()
        return reply

    # -- commands (gateway.model.Commandable) --------------------------------------------------------
    @property
    def command_devices(self) -> tuple[str, ...]:
        """A polled device takes commands (named ones, and reads through its commands)."""
        return (self.spec.name,) if self.spec.mode == "polled" else ()

    def _check_device(self, device: str) -> None:
        if device != self.spec.name:
            raise UnknownTarget("unknown-device", f"{self.name} serves {self.spec.name!r}, not {device!r}")
        if self.spec.mode != "polled":
            raise CommandRefused(
                "not-supported", f"{self.spec.name} streams on its own: it takes no commands"
            )

    async def send_command(self, device: str, command: str) -> CommandReply:
        """Send the named command between polls and return its reply (parsed points and text)."""
        self._check_device(device)
        cmd = next((c for c in self.spec.commands if c.name == command), None)
        if cmd is None:
            names = ", ".join(c.name for c in self.spec.commands)
            raise UnknownTarget("unknown-command", f"{device} has no command {command!r} (it has: {names})")
        return await self._request(cmd)

    async def write_point(self, device: str, point: str, value: Value) -> Reading:
        """Serial points are parsed from what the device sends: there is nothing to write to."""
        self._check_device(device)
        raise CommandRefused(
            "not-supported",
            f"serial device {device!r} has no writable points (send one of its named commands instead)",
        )

    async def read_points(self, device: str, points: Sequence[str]) -> list[Reading]:
        """Read points now by sending the commands whose replies carry them."""
        self._check_device(device)
        known = {p.name for c in self.spec.commands for p in c.points}
        wanted = set(points) if points else known
        unknown = sorted(wanted - known)
        if unknown:
            raise UnknownTarget("unknown-point", f"device {device!r} has no point {unknown[0]!r}")
        out: list[Reading] = []
        for cmd in self.spec.commands:
            if wanted.intersection(p.name for p in cmd.points):
                reply = await self._request(cmd)
                out += [r for r in reply.readings if r.point in wanted]
        return out

    async def _request(self, cmd: Command) -> CommandReply:
        if not self._serving:
            raise DeviceUnavailable(self.spec.name, f"{self.spec.port.path} is not open")
        if len(self._requests) >= MAX_REQUESTS:
            raise DeviceUnavailable(self.spec.name, f"{MAX_REQUESTS} commands already wait for the port")
        request = _Request(
            cmd, self._framer(cmd), self._plan(cmd, cmd.parser), asyncio.get_running_loop().create_future()
        )
        self._requests.append(request)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        return await request.future

    def _settle(self, request: _Request, reply: asyncio.Future[Frame], emit: ReadingSink) -> None:
        cmd = request.command
        if not reply.done():
            reply.cancel()
            self._counters.timeouts += 1
            request.future.set_exception(
                DeviceTimeout(self.spec.name, f"no reply to command {cmd.name!r} within {cmd.timeout:g}s")
            )
            return
        frame = reply.result()
        self._observe(frame)
        now = time.time()
        readings: list[Reading] = []
        if request.plan is not None:
            parsed = request.plan.readings(frame.payload, now)
            readings = (
                request.plan.all_bad(now, f"{parsed.value} reply") if isinstance(parsed, Rejected) else parsed
            )
        # The asker gets every point it asked for; the uplink only what is news.
        reported = self._report(readings)
        if reported:
            emit(reported)
        text = (
            frame.payload.decode("utf-8", "replace")
            if isinstance(cmd.framing, LineFraming)
            else frame.payload.hex(" ")
        )
        log.info("%s: command %r sent on request, reply %r", self.name, cmd.name, text[:80])
        request.future.set_result(CommandReply(tuple(readings), text[:MAX_REPLY_TEXT]))

    def _answer(self, cmd: Command, plan: FramePlan, reply: asyncio.Future[Frame]) -> list[Reading]:
        now = time.time()
        if not reply.done():
            reply.cancel()
            self._counters.timeouts += 1
            if cmd.name not in self._silent:
                self._silent.add(cmd.name)
                log.warning(
                    "%s: no reply to command %r within %gs; its points are BAD until it answers",
                    self.name,
                    cmd.name,
                    cmd.timeout,
                )
            return plan.all_bad(now, f"no reply within {cmd.timeout:g}s")
        if cmd.name in self._silent:
            self._silent.discard(cmd.name)
            log.info("%s: command %r answered again", self.name, cmd.name)
        frame = reply.result()
        self._observe(frame)
        readings = plan.readings(frame.payload, now)
        if isinstance(readings, Rejected):
            return plan.all_bad(now, f"{readings.value} reply")
        return readings


def _either(*futures: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    return set(futures)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _close_late(task: asyncio.Task[serial.Serial]) -> None:
    # A port opened a moment ago has no output queued, so this close does not wait for a drain.
    if not task.cancelled() and task.exception() is None:
        task.result().close()
