"""The running Modbus driver: one per link (a serial bus or a TCP server), polling its devices' plans.

Scheduling: every device has one poller per poll interval. A poller runs its requests at a fixed
rate; a cycle that overruns its interval skips the ticks it missed (counted in ``skipped_ticks``)
instead of queueing them. On a serial bus every transaction goes through the bus owner's queue, so a
silent slave occupies the bus for one timeout per attempt; its retries are queued behind the other
slaves' requests. After the retries, the slave is backed off (1 s doubling to ``backoff_max``),
logged once, probed at each backoff step and logged again when it answers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.modbus.codec import DataType, Order, decode_raw, encode_raw, scale_value, set_bit, unscale_value
from drivers.modbus.config import (
    Device,
    LinkSettings,
    ModbusConfig,
    Point,
    RegisterTable,
    SerialBus,
    write_refusal,
)
from drivers.modbus.link import Link, LinkStats, Op, SerialLink, TcpLink, quiet_pymodbus
from drivers.modbus.plan import DevicePlan, PollGroup, ReadRequest, compile_plan
from gateway.errors import (
    CommandRefused,
    DeviceProtocolError,
    DeviceRefused,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    UnknownTarget,
    ValueRefused,
)
from gateway.model import CommandReply, PointBatch, Quality, Reading, ReadingSink, Value, unchanged_within

log = logging.getLogger("fieldgate.modbus")

_FIRST_BACKOFF = 1.0


def decode_point(point: Point, values: Sequence[int] | Sequence[bool], offset: int) -> Value:
    """The engineering value of ``point`` from a request's answer, ``offset`` = its first index there."""
    if point.table.is_bits:
        return bool(values[offset])
    regs = [int(v) for v in values[offset : offset + point.count]]
    raw = decode_raw(regs, point.dtype, point.order, bit=point.bit)
    return scale_value(raw, point.scale, point.offset)


class BlockDecoder:
    """Decodes all points of one read request in one go (the per-cycle fast path).

    Whole blocks of big-endian numeric registers are unpacked by one precompiled ``struct`` and scaled
    in one loop; bits are picked by offset. Anything else (strings, bits inside registers, swapped byte
    or word orders, points out of address order) is decoded point by point with :func:`decode_point`.
    """

    __slots__ = ("_bits", "_block", "_points", "_scales", "names", "req", "units")

    def __init__(self, req: ReadRequest) -> None:
        self.req = req
        self.names = tuple(p.name for p in req.points)
        self.units = tuple(p.unit for p in req.points)
        self._block: struct.Struct | None = None
        self._points: struct.Struct | None = None
        self._bits: tuple[int, ...] | None = None
        scales = [None if p.scale == 1.0 and p.offset == 0.0 else (p.scale, p.offset) for p in req.points]
        self._scales: list[tuple[float, float] | None] | None = scales if any(scales) else None
        if req.table.is_bits:
            self._bits = tuple(p.address - req.address for p in req.points)
            return
        fmt = ">"
        at = req.address
        for p in req.points:
            code = _STRUCT_CODES.get(p.dtype)
            if code is None or p.address < at or (p.order is not Order.ABCD and p.count > 1):
                return
            if p.order.byte_swap:
                return
            fmt += "x" * (2 * (p.address - at)) + code
            at = p.address + p.count
        fmt += "x" * (2 * (req.address + req.count - at))
        self._block = struct.Struct(f">{req.count}H")
        self._points = struct.Struct(fmt)

    def decode(self, values: Sequence[int] | Sequence[bool]) -> tuple[list[Value | None], dict[int, str]]:
        """The points' engineering values, and the index -> reason of those that could not be decoded."""
        if self._bits is not None:
            return [bool(values[o]) for o in self._bits], {}
        if self._points is not None and self._block is not None and len(values) == self.req.count:
            try:
                raws: tuple[float, ...] = self._points.unpack(self._block.pack(*values))
            except struct.error:
                pass  # a register out of 0..65535: let the point-by-point path say which
            else:
                scales = self._scales
                if scales is None:
                    return list(raws), {}
                return [r if s is None else r * s[0] + s[1] for r, s in zip(raws, scales, strict=True)], {}
        out: list[Value | None] = []
        failed: dict[int, str] = {}
        for i, p in enumerate(self.req.points):
            try:
                out.append(decode_point(p, values, p.address - self.req.address))
            except (ValueError, UnicodeDecodeError, struct.error, IndexError) as exc:
                out.append(None)
                failed[i] = str(exc)
        return out, failed


_STRUCT_CODES: dict[DataType, str] = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}


#: An on-change point of a poll group: its index in the group's cycle, name, deadband, report period.
Watched = tuple[int, str, float, float]


def watched_points(group: PollGroup) -> tuple[Watched, ...]:
    """The group's on-change points, indexed as ``ModbusLinkDriver._poll_group`` lays out its cycle."""
    points = [p for req in group.requests for p in req.points]
    return tuple((i, p.name, p.deadband, p.report_period) for i, p in enumerate(points) if p.on_change)


def report_filter(
    batch: PointBatch,
    watched: Sequence[Watched],
    last: dict[str, tuple[Value | None, Quality, float]],
    now: float,
) -> PointBatch | None:
    """The part of a cycle to report, or None when there is nothing: every point that is not watched,
    and each watched one whose quality changed or whose value moved beyond its deadband since it was
    last reported (``last``, updated here), or whose report period has passed since then.

    One loop over the watched points' columns, no object per point; the batch itself comes back when
    every point is reported.
    """
    values, bad = batch.values, batch.bad
    good = Quality.GOOD
    held: list[int] = []
    for i, name, deadband, period in watched:
        value = values[i]
        quality = bad[i][0] if i in bad else good
        prev = last.get(name)
        if (
            prev is not None
            and prev[1] is quality
            and now - prev[2] < period
            and unchanged_within(prev[0], value, deadband)
        ):
            held.append(i)
        else:
            last[name] = (value, quality, now)
    if not held:
        return batch
    if len(held) == len(batch):
        return None
    skip = set(held)
    return batch.take([i for i in range(len(batch)) if i not in skip])


@dataclass(slots=True)
class DeviceState:
    """What the driver knows of one device at run time (counters are read by stats and tests)."""

    device: Device
    plan: DevicePlan
    failing: bool = False
    failing_since: float = 0.0
    failed_polls: int = 0
    backoff: float = 0.0
    retry_at: float = 0.0
    skipped_ticks: int = 0
    cycles: int = 0
    refused: dict[tuple[int, int, int], str] = field(default_factory=dict)
    by_name: dict[str, Point] = field(default_factory=dict)
    #: Per on-change point: the value and quality last reported, and when (monotonic seconds).
    last_emitted: dict[str, tuple[Value | None, Quality, float]] = field(default_factory=dict)
    #: Per read request (by identity), its block decoder; built on first use.
    decoders: dict[int, BlockDecoder] = field(default_factory=dict)

    def decoder(self, req: ReadRequest) -> BlockDecoder:
        dec = self.decoders.get(id(req))
        if dec is None or dec.req is not req:
            dec = self.decoders[id(req)] = BlockDecoder(req)
        return dec


class ModbusLinkDriver:
    """A ``gateway.model.Driver`` for one bus or TCP server and the devices behind it."""

    def __init__(self, settings: LinkSettings) -> None:
        self._settings = settings
        self._states = {
            d.name: DeviceState(d, compile_plan(d), by_name={p.name: p for p in d.points})
            for d in settings.devices
        }
        self._link: Link | None = None
        self._link_stats = LinkStats()
        #: Per poll loop, when it last came round (``gateway.model.Heartbeat``).
        self._progress: dict[tuple[str, float], float] = {}

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def settings(self) -> LinkSettings:
        return self._settings

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(self._states)

    @property
    def command_devices(self) -> tuple[str, ...]:
        """``gateway.model.Commandable``: every device on this link takes commands."""
        return tuple(self._states)

    def state(self, device: str) -> DeviceState:
        return self._states[device]

    # -- gateway.model.Heartbeat -------------------------------------------------------------------
    @property
    def last_progress(self) -> float | None:
        """The laggard poll loop's last round: one hung loop is enough to call the link stuck."""
        return min(self._progress.values(), default=None)

    @property
    def max_silence(self) -> float:
        # A poll may wait for every other transaction on the link (one bus, one owner), each of which
        # may use its whole timeout on every try; three intervals on top for skipped ticks.
        transactions = sum(len(st.plan.requests) for st in self._states.values())
        worst = max(
            ((st.device.timeout * (st.device.retries + 1)) for st in self._states.values()), default=1.0
        )
        interval = max((g.interval for st in self._states.values() for g in st.plan.groups), default=1.0)
        return 3 * interval + transactions * worst + 10.0

    def plans(self) -> tuple[DevicePlan, ...]:
        return tuple(s.plan for s in self._states.values())

    def stats(self) -> dict[str, int]:
        """Counters for the gateway's stats line: cycles, skipped ticks, failing devices, link traffic."""
        states = self._states.values()
        link = self._link_stats
        return {
            "cycles": sum(s.cycles for s in states),
            "skipped_ticks": sum(s.skipped_ticks for s in states),
            "failing_devices": sum(1 for s in states if s.failing),
            "transactions": link.transactions,
            "failed_transactions": link.failures,
            "queue_full": link.queue_full,
        }

    # -- running -----------------------------------------------------------------------------------
    async def run(self, emit: ReadingSink) -> None:
        link_cfg = self._settings.link
        pollers = sum(len(s.plan.groups) for s in self._states.values())
        link: Link = (
            SerialLink(link_cfg, pollers, self._link_stats)
            if isinstance(link_cfg, SerialBus)
            else TcpLink(link_cfg, pollers, self._link_stats)
        )
        self._link = link
        for st in self._states.values():
            log.info(
                "modbus[%s] unit %d on %s: read plan %s",
                st.device.name,
                st.device.unit_id,
                self.name,
                st.plan.summary(),
            )
            for req in st.plan.requests:
                log.debug(
                    "modbus[%s]: %s -> %s",
                    st.device.name,
                    req.describe(),
                    ", ".join(p.name for p in req.points),
                )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(link.run(), name=f"{self.name}.owner")
                for st in self._states.values():
                    for group in st.plan.groups:
                        tg.create_task(
                            self._poll_loop(link, st, group, emit),
                            name=f"modbus[{st.device.name}].poll[{group.interval:g}s]",
                        )
        finally:
            link.close()
            self._link = None
            self._progress.clear()

    async def close(self) -> None:
        """Release the connections (idempotent; ``run`` also releases them when cancelled)."""
        if self._link is not None:
            self._link.close()

    async def _poll_loop(self, link: Link, st: DeviceState, group: PollGroup, emit: ReadingSink) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        beat = (st.device.name, group.interval)
        watched = watched_points(group)
        while True:
            self._progress[beat] = time.monotonic()
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() >= st.retry_at:
                batch: PointBatch | None = await self._poll_group(link, st, group)
                if watched and batch is not None:
                    batch = report_filter(batch, watched, st.last_emitted, time.monotonic())
                if batch:
                    emit(batch)
            next_tick += group.interval
            late = loop.time() - next_tick
            if late > 0:
                missed = math.floor(late / group.interval) + 1
                st.skipped_ticks += missed
                next_tick += missed * group.interval
                log.debug(
                    "modbus[%s]: poll every %gs overran by %.3fs, %d tick(s) skipped",
                    st.device.name,
                    group.interval,
                    late,
                    missed,
                )

    async def _read_with_retries(
        self, link: Link, device: Device, req: ReadRequest
    ) -> list[int] | list[bool]:
        op = Op(req.function, req.address, req.count)
        attempt = 0
        while True:
            try:
                return await link.submit(device.name, device.unit_id, op, device.timeout)
            except (DeviceTimeout, DeviceProtocolError):
                attempt += 1
                if attempt > device.retries:
                    raise

    async def _poll_group(self, link: Link, st: DeviceState, group: PollGroup) -> PointBatch:
        """One cycle as columns: one timestamp per request, values decoded per register block."""
        device = st.device
        names: list[str] = []
        units: list[str | None] = []
        values: list[Value | None] = []
        stamps: list[float] = []
        bad: dict[int, tuple[Quality, str | None]] = {}
        dead: DriverError | None = None
        for req in group.requests:
            dec = st.decoder(req)
            start = len(names)
            names += dec.names
            units += dec.units
            failure: DriverError | None = dead
            if failure is None:
                try:
                    regs = await self._read_with_retries(link, device, req)
                except DeviceRefused as exc:
                    self._note_refused(st, req, exc)
                    self._note_alive(st)
                    failure = exc
                except DriverError as exc:
                    dead = failure = exc
            ts = time.time()
            stamps += [ts] * len(dec.names)
            if failure is not None:
                values += [None] * len(dec.names)
                for i in range(start, len(names)):
                    bad[i] = (Quality.BAD, _short(failure))
                continue
            self._note_alive(st)
            self._note_refused(st, req, None)
            decoded, failed = dec.decode(regs)
            values += decoded
            for i, why in failed.items():
                bad[start + i] = (Quality.BAD, why)
        st.cycles += 1
        if dead is not None:
            self._note_failing(st, dead)
        return PointBatch(device.name, names, units, values, stamps, bad=bad)

    # -- fault bookkeeping (log state changes only) -------------------------------------------------
    def _note_failing(self, st: DeviceState, exc: DriverError) -> None:
        now = asyncio.get_running_loop().time()
        st.failed_polls += 1
        if isinstance(exc, DeviceUnavailable):
            # The link logs its own connection state once; no per-device backoff on top of it.
            return
        st.backoff = min(st.device.backoff_max, _FIRST_BACKOFF if not st.failing else st.backoff * 2)
        st.retry_at = now + st.backoff
        if not st.failing:
            st.failing = True
            st.failing_since = now
            log.error(
                "modbus[%s] unit %d on %s is not answering: %s; polling backed off (up to %gs)",
                st.device.name,
                st.device.unit_id,
                self.name,
                exc.detail,
                st.device.backoff_max,
            )
        else:
            log.debug(
                "modbus[%s]: still not answering (%s); next try in %gs",
                st.device.name,
                exc.detail,
                st.backoff,
            )

    def _note_alive(self, st: DeviceState) -> None:
        if st.failing:
            now = asyncio.get_running_loop().time()
            log.info(
                "modbus[%s] unit %d on %s answers again after %.1fs (%d failed polls)",
                st.device.name,
                st.device.unit_id,
                self.name,
                now - st.failing_since,
                st.failed_polls,
            )
        st.failing = False
        st.failed_polls = 0
        st.backoff = 0.0
        st.retry_at = 0.0

    def _note_refused(self, st: DeviceState, req: ReadRequest, exc: DeviceRefused | None) -> None:
        key = (req.function, req.address, req.count)
        if exc is None:
            if key in st.refused:
                del st.refused[key]
                log.info("modbus[%s]: %s is accepted again", st.device.name, req.describe())
            return
        if key not in st.refused:
            log.error("modbus[%s]: request refused: %s", st.device.name, exc.detail)
        st.refused[key] = exc.detail

    # -- commands ----------------------------------------------------------------------------------
    def _state(self, device: str) -> DeviceState:
        st = self._states.get(device)
        if st is None:
            raise UnknownTarget("unknown-device", f"no modbus device {device!r} on {self.name}")
        return st

    def _running_link(self, device: str) -> Link:
        link = self._link
        if link is None:
            raise DeviceUnavailable(device, f"{self.name} is not running")
        return link

    async def read_points(self, device: str, points: Sequence[str]) -> list[Reading]:
        """Read ``points`` (all when empty) now, through the link's queue, with the plan's requests.

        Raises ``UnknownTarget`` for an unknown device or point; a request that fails gives BAD readings
        for its points (as a poll would), and a device that does not answer at all raises its error.
        """
        st = self._state(device)
        wanted = set(points) if points else set(st.by_name)
        unknown = sorted(wanted - set(st.by_name))
        if unknown:
            raise UnknownTarget("unknown-point", f"device {device!r} has no point {unknown[0]!r}")
        link = self._running_link(device)
        dev = st.device
        by_point: dict[str, Reading] = {}
        failures: list[DriverError] = []
        for req in st.plan.requests:
            if not wanted.intersection(p.name for p in req.points):
                continue
            try:
                values = await self._read_with_retries(link, dev, req)
            except DriverError as exc:
                failures.append(exc)
                for r in _bad(dev, [p for p in req.points if p.name in wanted], _short(exc)):
                    by_point[r.point] = r
                continue
            ts = time.time()
            for p in req.points:
                if p.name not in wanted:
                    continue
                try:
                    value = decode_point(p, values, p.address - req.address)
                except (ValueError, UnicodeDecodeError) as exc:
                    by_point[p.name] = Reading(dev.name, p.name, None, p.unit, ts, Quality.BAD, str(exc))
                else:
                    by_point[p.name] = Reading(dev.name, p.name, value, p.unit, ts)
        if failures and len(failures) == sum(
            1 for req in st.plan.requests if wanted.intersection(p.name for p in req.points)
        ):
            raise failures[0]
        return [by_point[p.name] for p in dev.points if p.name in by_point]

    async def send_command(self, device: str, command: str) -> CommandReply:
        """Modbus devices have no named commands (write a point instead)."""
        self._state(device)
        raise CommandRefused(
            "not-supported", f"modbus device {device!r} has no named commands (write a writable point)"
        )

    # -- writes ------------------------------------------------------------------------------------
    async def write_point(self, device: str, point: str, value: Value) -> Reading:
        """Write ``value`` to a writable point through the link's queue, then read it back.

        Raises ``UnknownTarget`` (a KeyError: unknown device/point), ``ValueRefused`` (a ValueError: not
        writable, out of range, wrong type) or a ``DriverError`` from the device (refused, timeout,
        unavailable).
        """
        st = self._state(device)
        p = st.by_name.get(point)
        if p is None:
            raise UnknownTarget("unknown-point", f"device {device!r} has no point {point!r}")
        why = write_refusal(p, value)
        if why is not None:
            raise ValueRefused(why[0], f"{device}.{point}: {why[1]}")
        link = self._running_link(device)
        dev = st.device
        if p.table is RegisterTable.COIL:
            op = Op(5, p.address, 1, (bool(value),))
        elif p.dtype is DataType.BOOL:
            assert p.bit is not None
            (current,) = await link.submit(dev.name, dev.unit_id, Op(3, p.address, 1), dev.timeout)
            op = Op(6, p.address, 1, (set_bit(int(current), p.bit, bool(value)),))
        else:
            regs = encode_raw(
                unscale_value(value, p.dtype, p.scale, p.offset), p.dtype, p.order, length=p.length
            )
            op = (
                Op(6, p.address, 1, (regs[0],))
                if len(regs) == 1
                else Op(16, p.address, len(regs), tuple(regs))
            )
        await link.submit(dev.name, dev.unit_id, op, dev.timeout)
        back = await link.submit(
            dev.name, dev.unit_id, Op(p.table.read_function, p.address, p.count), dev.timeout
        )
        ts = time.time()
        log.info("modbus[%s]: wrote %s = %r", dev.name, p.name, value)
        return Reading(dev.name, p.name, decode_point(p, back, 0), p.unit, ts)


def _bad(device: Device, points: Sequence[Point], reason: str) -> list[Reading]:
    ts = time.time()
    return [Reading(device.name, p.name, None, p.unit, ts, Quality.BAD, reason) for p in points]


def _short(exc: DriverError) -> str:
    return exc.detail


def build_drivers(config: ModbusConfig) -> list[ModbusLinkDriver]:
    """One driver per link; the read plans are compiled here (pure, no I/O)."""
    quiet_pymodbus()
    return [ModbusLinkDriver(settings) for settings in config.links]
