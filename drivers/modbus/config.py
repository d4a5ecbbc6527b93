"""The Modbus configuration: TOML tables to frozen, typed settings, with every problem reported at once.

Layout (see drivers/modbus/README.md for the annotated reference)::

    [drivers.modbus]                       # optional, driver-wide defaults
    max_connections_per_host = 1
    [drivers.modbus.buses.<bus>]           # a serial line shared by the devices that name it
    [drivers.modbus.profiles.<model>]      # a register map defined once, used by many devices
    [devices.<name>]  driver = "modbus"    # bus = "<bus>" or host = "...", unit_id, profile, points

Addresses are 0-based protocol addresses (what goes into the request). A string address in the
5-digit (``"40001"``) or 6-digit (``"400001"``) register notation is also accepted: its first digit
names the table (0 coil, 1 discrete input, 3 input register, 4 holding register) and the rest is
the 1-based register number, so ``"40001"`` is holding register 0 and ``"300010"`` input register 9.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from drivers.modbus.codec import DataType, Order, integer_range, register_count
from gateway.model import DEFAULT_REPORT_PERIOD, DeviceInfo, PointInfo, Value
from gateway.schema import SerialLine, Table, read_serial_line

DRIVER = "modbus"

#: Protocol limits of one read request (Modbus application protocol v1.1b3, 6.1-6.4).
MAX_REGISTERS = 125
MAX_BITS = 2000


class RegisterTable(enum.Enum):
    COIL = "coil"
    DISCRETE = "discrete"
    INPUT = "input"
    HOLDING = "holding"

    @property
    def is_bits(self) -> bool:
        return self in (RegisterTable.COIL, RegisterTable.DISCRETE)

    @property
    def read_function(self) -> int:
        return _READ_FUNCTION[self]


_READ_FUNCTION = {
    RegisterTable.COIL: 1,
    RegisterTable.DISCRETE: 2,
    RegisterTable.HOLDING: 3,
    RegisterTable.INPUT: 4,
}
#: By their TOML spelling: a dictionary lookup, several times cheaper than the enum's own (once per point).
_DATA_TYPES = {d.value: d for d in DataType}
_NOTATION_TABLE = {
    "0": RegisterTable.COIL,
    "1": RegisterTable.DISCRETE,
    "3": RegisterTable.INPUT,
    "4": RegisterTable.HOLDING,
}


@dataclass(frozen=True, slots=True)
class AddressRange:
    """Addresses ``start..end`` (inclusive) of one table."""

    table: RegisterTable
    start: int
    end: int

    def overlaps(self, table: RegisterTable, start: int, end: int) -> bool:
        return table is self.table and start <= self.end and end >= self.start


def point_span(table: RegisterTable, dtype: DataType, length: int) -> int:
    """Registers (or bits) a value of ``dtype`` occupies in ``table`` (``length``: a string's bytes)."""
    return 1 if table.is_bits else register_count(dtype, length)


@dataclass(frozen=True, slots=True)
class Point:
    """One configured value of a device's register map."""

    name: str
    table: RegisterTable
    address: int
    dtype: DataType
    order: Order = Order.ABCD
    #: String length in bytes (characters); 0 for other types.
    length: int = 0
    #: Bit number (0 = least significant) for a bool inside a register.
    bit: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    #: Poll interval in seconds.
    interval: float = 1.0
    on_change: bool = False
    deadband: float = 0.0
    #: An on-change point is reported again after this many seconds even when unchanged.
    report_period: float = DEFAULT_REPORT_PERIOD
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[Value, ...] = ()

    @property
    def count(self) -> int:
        """Registers (or bits) the point occupies."""
        return point_span(self.table, self.dtype, self.length)

    @property
    def end(self) -> int:
        return self.address + self.count - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """How the read planner may merge a device's points into requests."""

    max_registers: int = MAX_REGISTERS
    max_bits: int = MAX_BITS
    #: Largest run of unused registers (or bits) one request may read across to join two points.
    max_gap: int = 10
    forbidden: tuple[AddressRange, ...] = ()


@dataclass(frozen=True, slots=True)
class SerialBus:
    """A serial line (RS-485/RS-232) declared once and shared by the devices that name it."""

    name: str
    port: str
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    framer: str = "rtu"
    #: Seconds to wait for an answer.
    timeout: float = 0.5
    #: Silence kept between the end of one transaction and the next request, seconds.
    inter_frame_pause: float = 0.004
    retries: int = 1
    backoff_max: float = 60.0

    @property
    def key(self) -> str:
        return f"modbus-bus[{self.name}]"


@dataclass(frozen=True, slots=True)
class TcpEndpoint:
    """A Modbus TCP server (or a serial device server speaking RTU/ASCII framing over TCP)."""

    host: str
    port: int = 502
    framer: str = "socket"
    #: Connections opened to this host:port at most (many devices accept only one).
    connections: int = 1
    timeout: float = 1.0
    retries: int = 1
    backoff_max: float = 60.0

    @property
    def key(self) -> str:
        return f"modbus-tcp[{self.host}:{self.port}]"


@dataclass(frozen=True, slots=True)
class Device:
    """One Modbus device: its unit id, its points and its request limits."""

    name: str
    unit_id: int
    points: tuple[Point, ...]
    limits: Limits
    timeout: float
    retries: int
    backoff_max: float


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """What one running driver serves: a link (bus or TCP endpoint) and its devices."""

    link: SerialBus | TcpEndpoint
    devices: tuple[Device, ...]

    @property
    def name(self) -> str:
        return self.link.key


@dataclass(frozen=True, slots=True)
class ModbusConfig:
    """The Modbus driver's parsed config: its devices and the links (buses, TCP servers) they share."""

    devices: tuple[DeviceInfo, ...]
    links: tuple[LinkSettings, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------------
# address notation


def parse_address(raw: object) -> tuple[RegisterTable | None, int] | str:
    """``(table or None, 0-based address)`` from an integer or a 5/6-digit string; or a reason."""
    if isinstance(raw, bool):
        return "expected an integer address or a 5/6-digit register string"
    if isinstance(raw, int):
        if not 0 <= raw <= 65535:
            return "a 0-based address must be 0..65535"
        return None, raw
    if not isinstance(raw, str):
        return "expected an integer address or a 5/6-digit register string"
    if not re.fullmatch(r"\d{5,6}", raw):
        return 'a string address uses the register notation: 5 or 6 digits, e.g. "40001" = holding 0'
    table = _NOTATION_TABLE.get(raw[0])
    if table is None:
        return "register notation starts with 0 (coil), 1 (discrete), 3 (input) or 4 (holding)"
    number = int(raw[1:])
    top = 9999 if len(raw) == 5 else 65536
    if not 1 <= number <= top:
        return f"register number after the table digit must be 1..{top} (1-based)"
    return table, number - 1


def _parse_range(text: str) -> AddressRange | str:
    """``"holding:100-199"``, ``"input:7"`` or ``"40101-40200"`` to a range, or a reason."""
    table_name, sep, rest = text.partition(":")
    if sep:
        try:
            table: RegisterTable | None = RegisterTable(table_name)
        except ValueError:
            return "table must be coil, discrete, input or holding"
        start_s, dash, end_s = rest.partition("-")
        if not start_s.isdigit() or (dash and not end_s.isdigit()):
            return 'expected "<table>:<start>-<end>" with 0-based addresses'
        start, end = int(start_s), int(end_s) if dash else int(start_s)
    else:
        first, dash, second = text.partition("-")
        a = parse_address(first)
        b = parse_address(second) if dash else a
        if isinstance(a, str) or isinstance(b, str) or a[0] is None or a[0] is not b[0]:
            return 'expected "<table>:<start>-<end>" or register notation like "40101-40200"'
        table, start, end = a[0], a[1], b[1]
    assert table is not None
    if not 0 <= start <= end <= 65535:
        return "start must not exceed end, both within 0..65535"
    return AddressRange(table, start, end)


# --------------------------------------------------------------------------------------------------
# maps (shared by profiles and devices)


class _PointDraft(NamedTuple):
    """A parsed point before its device's interval and report period are applied.

    A tuple, not a frozen dataclass: there is one per point written in the file (thousands in a large
    config, all built before the uplink connects), and a frozen dataclass of this size costs several times
    more to build; the device's ``Point`` is built from it once."""

    name: str
    table: RegisterTable
    address: int
    dtype: DataType
    order: Order
    length: int
    bit: int | None
    scale: float
    offset: float
    unit: str | None
    on_change: bool
    deadband: float
    writable: bool
    minimum: float | None
    maximum: float | None
    allowed: tuple[Value, ...]
    #: Registers (or bits) the point occupies (``point_span``, worked out once).
    span: int
    path: str
    interval: float | None
    group: str | None
    report_period: float | None

    def point(self, interval: float, report_period: float) -> Point:
        return Point(
            name=self.name,
            table=self.table,
            address=self.address,
            dtype=self.dtype,
            order=self.order,
            length=self.length,
            bit=self.bit,
            scale=self.scale,
            offset=self.offset,
            unit=self.unit,
            interval=interval,
            on_change=self.on_change,
            deadband=self.deadband,
            report_period=report_period,
            writable=self.writable,
            minimum=self.minimum,
            maximum=self.maximum,
            allowed=self.allowed,
        )


@dataclass(frozen=True, slots=True)
class _MapDraft:
    """What a profile or a device table says about a register map; None = not said here."""

    path: str
    order: Order | None
    interval: float | None
    report_period: float | None
    groups: Mapping[str, float]
    max_registers: int | None
    max_bits: int | None
    max_gap: int | None
    forbidden: tuple[AddressRange, ...]
    points: tuple[_PointDraft, ...]
    #: Point entries present, valid or not (so a map whose points all failed is not also called empty).
    declared: int


def _read_map(t: Table) -> _MapDraft:
    order_s = t.optional_string("order")
    order = _order(t, "order", order_s) if order_s is not None else None
    interval = t.optional_number("interval", positive=True)
    report_period = t.optional_number("report_period", positive=True)
    groups: dict[str, float] = {}
    groups_t = t.table("groups")
    if groups_t is not None:
        for gname in groups_t:
            value = groups_t.number(gname, 1.0, positive=True)
            groups[gname] = value
        groups_t.finish()
    max_registers = t.optional_integer("max_registers", minimum=1, maximum=MAX_REGISTERS)
    max_bits = t.optional_integer("max_bits", minimum=1, maximum=MAX_BITS)
    max_gap = t.optional_integer("max_gap", minimum=0, maximum=MAX_REGISTERS)
    forbidden: list[AddressRange] = []
    for i, text in enumerate(t.strings("forbidden")):
        parsed = _parse_range(text)
        if isinstance(parsed, str):
            t.problems.add(f"{t.here('forbidden')}[{i}]", parsed, text)
        else:
            forbidden.append(parsed)
    drafts: list[_PointDraft] = []
    point_tables = t.named_entries("points", what="point")
    for pname, pt in point_tables:
        draft = _read_point(pname, pt, order or Order.ABCD)
        if draft is not None:
            drafts.append(draft)
    return _MapDraft(
        t.where,
        order,
        interval,
        report_period,
        groups,
        max_registers,
        max_bits,
        max_gap,
        tuple(forbidden),
        tuple(drafts),
        # Entries present, valid or not (missing/empty is 0; a wrong type was reported already).
        len(point_tables) or (1 if t.data.get("points") else 0),
    )


def _order(t: Table, key: str, text: str) -> Order:
    try:
        return Order(text.upper())
    except ValueError:
        t.problem(key, "byte/word order must be ABCD, CDAB, BADC or DCBA", text)
        return Order.ABCD


def _read_point(name: str, t: Table, default_order: Order) -> _PointDraft | None:
    ok = True
    table_s = t.optional_string("table")
    table: RegisterTable | None = None
    if table_s is not None:
        try:
            table = RegisterTable(table_s)
        except ValueError:
            t.problem("table", "expected coil, discrete, input or holding", table_s)
            ok = False
    raw_address = t.raw("address")
    address = 0
    if raw_address is None:
        t.problem("address", "is required")
        ok = False
    else:
        parsed = parse_address(raw_address)
        if isinstance(parsed, str):
            t.problem("address", parsed, raw_address)
            ok = False
        else:
            notation_table, address = parsed
            if notation_table is not None:
                if table is not None and table is not notation_table:
                    t.problem(
                        "address",
                        f"register notation names the {notation_table.value} table but table = "
                        f'"{table.value}"',
                        raw_address,
                    )
                    ok = False
                table = notation_table
    table = table or RegisterTable.HOLDING
    bits = table.is_bits

    type_s = t.optional_string("type")
    default_type = DataType.BOOL if bits else DataType.UINT16
    dtype = default_type
    if type_s is not None:
        known_type = _DATA_TYPES.get(type_s)
        if known_type is not None:
            dtype = known_type
        else:
            t.problem("type", "expected one of " + ", ".join(d.value for d in DataType), type_s)
            ok = False
    if bits and dtype is not DataType.BOOL:
        t.problem("type", f"a {table.value} holds one bit: its type is bool", type_s)
        ok = False
    order_s = t.optional_string("order")
    order = _order(t, "order", order_s) if order_s is not None else default_order
    bit = t.optional_integer("bit", minimum=0, maximum=15)
    if dtype is DataType.BOOL and not bits and bit is None:
        t.problem("bit", "a bool in a register needs bit = 0..15 (0 = least significant)")
        ok = False
    if bit is not None and (bits or dtype is not DataType.BOOL):
        t.problem("bit", 'only a type = "bool" point in a holding or input register takes a bit', bit)
        ok = False
    length = 0
    if dtype is DataType.STRING:
        length = t.integer("length", minimum=1, maximum=2 * MAX_REGISTERS)
    elif t.has("length"):
        t.problem("length", 'only type = "string" takes a length', t.raw("length"))
        ok = False
    scale = t.number("scale", 1.0)
    offset = t.number("offset", 0.0)
    if scale == 0.0:
        t.problem("scale", "must not be 0", scale)
        ok = False
    if (t.has("scale") or t.has("offset")) and not dtype.is_numeric:
        t.problem("scale", f"scale and offset apply to numbers, not {dtype.value}")
        ok = False
    unit = t.optional_string("unit")
    interval = t.optional_number("interval", positive=True)
    group = t.optional_string("group")
    if interval is not None and group is not None:
        t.problem("group", "give either interval or group, not both", group)
        ok = False
    on_change = t.boolean("on_change", False)
    deadband = t.number("deadband", 0.0, minimum=0.0)
    if t.has("deadband") and not on_change:
        t.problem("deadband", "applies only with on_change = true", deadband)
        ok = False
    report_period = t.optional_number("report_period", positive=True)
    if report_period is not None and not on_change:
        t.problem("report_period", "applies only with on_change = true", report_period)
        ok = False
    writable = t.boolean("writable", False)
    if writable and table in (RegisterTable.DISCRETE, RegisterTable.INPUT):
        t.problem("writable", f"{table.value}s are read-only in Modbus", True)
        ok = False
    minimum = t.optional_number("min")
    maximum = t.optional_number("max")
    if minimum is not None and maximum is not None and minimum > maximum:
        t.problem("min", f"is greater than max ({maximum:g})", minimum)
        ok = False
    allowed: list[Value] = []
    raw_allowed = t.raw("allowed")
    if raw_allowed is not None:
        if not isinstance(raw_allowed, list) or not raw_allowed:
            t.problem("allowed", "expected a non-empty array of values", raw_allowed)
            ok = False
        else:
            for v in raw_allowed:
                if isinstance(v, bool | int | float | str):
                    allowed.append(v)
                else:
                    t.problem("allowed", "values must be numbers, strings or booleans", raw_allowed)
                    ok = False
                    break
    if (minimum is not None or maximum is not None or allowed) and not writable:
        t.problem("writable", "min, max and allowed restrict writes: set writable = true")
        ok = False
    t.finish()
    if not ok:
        return None
    count = point_span(table, dtype, length)
    if address + count - 1 > 65535:
        t.problem("address", f"the value's {count} registers run past address 65535", raw_address)
        return None
    return _PointDraft(
        name=name,
        table=table,
        address=address,
        dtype=dtype,
        order=order,
        length=length,
        bit=bit,
        scale=scale,
        offset=offset,
        unit=unit,
        on_change=on_change,
        deadband=deadband,
        writable=writable,
        minimum=minimum,
        maximum=maximum,
        allowed=tuple(allowed),
        span=count,
        path=t.where,
        interval=interval,
        group=group,
        report_period=report_period,
    )


def _resolve_map(
    device: Table, profile: _MapDraft | None, own: _MapDraft, report_period: float = DEFAULT_REPORT_PERIOD
) -> tuple[tuple[Point, ...], Limits] | None:
    """Merge a profile with the device's own map (the device wins; points and forbidden ranges add up)."""

    def pick(attr: str, default: object) -> object:
        mine = getattr(own, attr)
        if mine is not None:
            return mine
        if profile is not None and getattr(profile, attr) is not None:
            return getattr(profile, attr)
        return default

    interval = float(pick("interval", 1.0))  # type: ignore[arg-type]
    # Point, then device, then profile, then the driver section.
    map_period = float(pick("report_period", report_period))  # type: ignore[arg-type]
    groups = {**(profile.groups if profile else {}), **own.groups}
    limits = Limits(
        max_registers=int(pick("max_registers", MAX_REGISTERS)),  # type: ignore[call-overload]
        max_bits=int(pick("max_bits", MAX_BITS)),  # type: ignore[call-overload]
        max_gap=int(pick("max_gap", 10)),  # type: ignore[call-overload]
        forbidden=(profile.forbidden if profile else ()) + own.forbidden,
    )
    ok = True
    points: list[Point] = []
    seen: dict[str, str] = {}
    for draft in (profile.points if profile else ()) + own.points:
        if draft.name in seen:
            device.problems.add(draft.path, f"point name already used at {seen[draft.name]}")
            ok = False
            continue
        seen[draft.name] = draft.path
        if draft.group is not None:
            if draft.group not in groups:
                known = ", ".join(sorted(groups)) or "none defined"
                device.problems.add(f"{draft.path}.group", f"no such group (groups: {known})", draft.group)
                ok = False
                continue
            p_interval = groups[draft.group]
        else:
            p_interval = draft.interval if draft.interval is not None else interval
        limit = limits.max_bits if draft.table.is_bits else limits.max_registers
        if draft.span > limit:
            device.problems.add(
                f"{draft.path}.length",
                f"the value needs {draft.span} registers but one request may read only {limit}",
                draft.length,
            )
            ok = False
        end = draft.address + draft.span - 1
        for rng in limits.forbidden:
            if rng.overlaps(draft.table, draft.address, end):
                device.problems.add(
                    f"{draft.path}.address",
                    f"reads forbidden {rng.table.value} addresses {rng.start}..{rng.end}",
                    draft.address,
                )
                ok = False
        period = draft.report_period if draft.report_period is not None else map_period
        points.append(draft.point(p_interval, period))
    declared = own.declared + (profile.declared if profile else 0)
    if not points and ok and declared == 0:
        device.problem("points", "the device has no points (give points or a profile that has them)")
        ok = False
    return (tuple(points), limits) if ok else None


# --------------------------------------------------------------------------------------------------
# links


def _default_pause(line: SerialLine) -> float:
    """3.5 character times (the RTU inter-frame silence), at least 1.75 ms as the spec fixes above 19200."""
    return max(3.5 * line.bits_per_character / line.baudrate, 0.00175)


def _read_bus(name: str, t: Table) -> SerialBus:
    # Modbus serial lines are 8 data bits (RTU) or 7 (ASCII), with even, odd or no parity.
    line = read_serial_line(t, bytesizes=(7, 8), parities=("none", "even", "odd"))
    framer = t.string("framer", "rtu", choices=("rtu", "ascii"))
    timeout = t.number("timeout", 0.5, positive=True, maximum=30.0)
    pause = t.optional_number("inter_frame_pause", minimum=0.0, maximum=1.0)
    retries = t.integer("retries", 1, minimum=0, maximum=10)
    backoff_max = t.number("backoff_max", 60.0, positive=True)
    if line.stopbits == 1.5:
        t.problem("stopbits", "a Modbus serial line has 1 or 2 stop bits", line.stopbits)
    t.finish()
    return SerialBus(
        name=name,
        port=line.port,
        baudrate=line.baudrate,
        parity=line.parity,
        bytesize=line.bytesize,
        stopbits=int(line.stopbits),
        framer=framer,
        timeout=timeout,
        inter_frame_pause=pause if pause is not None else _default_pause(line),
        retries=retries,
        backoff_max=backoff_max,
    )


# --------------------------------------------------------------------------------------------------
# the plugin's parse


def parse_config(section: Table | None, devices: Sequence[tuple[str, Table]]) -> ModbusConfig:
    """``[drivers.modbus]`` and the modbus ``[devices.*]`` tables to a frozen config (problems recorded)."""
    section_t = section
    buses: dict[str, SerialBus] = {}
    profiles: dict[str, _MapDraft] = {}
    default_connections = 1
    report_period = DEFAULT_REPORT_PERIOD
    if section_t is not None:
        default_connections = section_t.integer("max_connections_per_host", 1, minimum=1, maximum=64)
        report_period = section_t.number("report_period", DEFAULT_REPORT_PERIOD, positive=True)
        for bname, bt in section_t.named_entries("buses", what="bus"):
            buses[bname] = _read_bus(bname, bt)
        for mname, mt in section_t.named_entries("profiles", what="profile"):
            draft = _read_map(mt)
            mt.finish()
            profiles[mname] = draft
        section_t.finish()

    infos: list[DeviceInfo] = []
    by_link: dict[str, tuple[SerialBus | TcpEndpoint, list[Device]]] = {}
    unit_ids: dict[tuple[str, int], str] = {}
    tcp_connections: dict[tuple[str, int, str], list[int]] = {}
    tcp_params: dict[tuple[str, int, str], tuple[float, int, float]] = {}
    for dname, t in devices:
        bus_name = t.optional_string("bus")
        host = t.optional_string("host")
        unit_id = t.integer("unit_id", 1, minimum=0, maximum=255)
        link: SerialBus | TcpEndpoint | None = None
        timeout: float
        if (bus_name is None) == (host is None):
            t.problem("bus", 'name a serial bus (bus = "...") or a TCP server (host = "..."), exactly one')
            timeout, retries, backoff = 1.0, 1, 60.0
            for key in ("port", "framer", "max_connections", "timeout", "retries", "backoff_max"):
                t.consume(key)
        elif bus_name is not None:
            bus = buses.get(bus_name)
            if bus is None:
                known = ", ".join(sorted(buses)) or "none declared under [drivers.modbus.buses]"
                t.problem("bus", f"no such bus (buses: {known})", bus_name)
            elif not 1 <= unit_id <= 247:
                t.problem("unit_id", "a slave on a serial bus has a unit id 1..247", unit_id)
            link = bus
            timeout = t.number("timeout", bus.timeout if bus else 0.5, positive=True, maximum=30.0)
            retries = t.integer("retries", bus.retries if bus else 1, minimum=0, maximum=10)
            backoff = t.number("backoff_max", bus.backoff_max if bus else 60.0, positive=True)
        else:
            assert host is not None
            port = t.integer("port", 502, minimum=1, maximum=65535)
            framer = t.string("framer", "socket", choices=("socket", "rtu", "ascii"))
            connections = t.integer("max_connections", default_connections, minimum=1, maximum=64)
            timeout = t.number("timeout", 1.0, positive=True, maximum=30.0)
            retries = t.integer("retries", 1, minimum=0, maximum=10)
            backoff = t.number("backoff_max", 60.0, positive=True)
            tcp_key = (host, port, framer)
            tcp_connections.setdefault(tcp_key, []).append(connections)
            prev = tcp_params.get(tcp_key, (timeout, retries, backoff))
            tcp_params[tcp_key] = (max(prev[0], timeout), max(prev[1], retries), max(prev[2], backoff))
            link = TcpEndpoint(host=host, port=port, framer=framer)
        if link is not None and bus_name is not None:
            where = (link.key, unit_id)
            if where in unit_ids:
                t.problem("unit_id", f"already used on this bus by device {unit_ids[where]}", unit_id)
            unit_ids[where] = dname

        profile_name = t.optional_string("profile")
        profile: _MapDraft | None = None
        if profile_name is not None:
            profile = profiles.get(profile_name)
            if profile is None:
                known = ", ".join(sorted(profiles)) or "none under [drivers.modbus.profiles]"
                t.problem("profile", f"no such profile (profiles: {known})", profile_name)
        own = _read_map(t)
        t.finish()
        resolved = _resolve_map(t, profile, own, report_period)
        if resolved is None or link is None:
            infos.append(DeviceInfo(dname, DRIVER, ()))
            continue
        points, limits = resolved
        infos.append(DeviceInfo(dname, DRIVER, tuple(PointInfo(p.name, p.unit) for p in points)))
        device = Device(dname, unit_id, points, limits, timeout, retries, backoff)
        by_link.setdefault(_link_id(link), (link, []))[1].append(device)

    links: list[LinkSettings] = []
    for first_link, devs in by_link.values():
        link = first_link
        if isinstance(link, TcpEndpoint):
            tcp_key = (link.host, link.port, link.framer)
            timeout, retries, backoff = tcp_params[tcp_key]
            link = TcpEndpoint(
                host=link.host,
                port=link.port,
                framer=link.framer,
                # Devices behind one server share its connection budget: the strictest one wins.
                connections=min(tcp_connections[tcp_key]),
                timeout=timeout,
                retries=retries,
                backoff_max=backoff,
            )
        links.append(LinkSettings(link, tuple(devs)))
    return ModbusConfig(tuple(infos), tuple(links))


def _link_id(link: SerialBus | TcpEndpoint) -> str:
    if isinstance(link, SerialBus):
        return link.key
    return f"{link.key}/{link.framer}"


#: The largest finite float32 (struct refuses to pack anything beyond it).
_FLOAT32_MAX = 3.4028234663852886e38


def check_write(point: Point, value: Value) -> str | None:
    """Why ``value`` may not be written to ``point``, or None when it may."""
    refusal = write_refusal(point, value)
    return None if refusal is None else refusal[1]


def write_refusal(point: Point, value: Value) -> tuple[str, str] | None:
    """Why ``value`` may not be written to ``point`` as (code, text), or None when it may.

    Codes: ``not-writable``, ``invalid-value`` (wrong type, too long), ``out-of-range`` (min/max, allowed
    values, does not fit the registers).
    """
    if not point.writable:
        return "not-writable", "the point is not writable (writable = true in its config)"
    if point.dtype is DataType.BOOL:
        if not isinstance(value, bool):
            return "invalid-value", f"expected true or false, got {value!r}"
    elif point.dtype is DataType.STRING:
        if not isinstance(value, str):
            return "invalid-value", f"expected a string, got {value!r}"
        if len(value) > point.length:
            return "out-of-range", f"longer than the point's {point.length} characters"
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "invalid-value", f"expected a number, got {value!r}"
        if point.minimum is not None and value < point.minimum:
            return "out-of-range", f"{value!r} is below the point's minimum {point.minimum:g}"
        if point.maximum is not None and value > point.maximum:
            return "out-of-range", f"{value!r} is above the point's maximum {point.maximum:g}"
        if point.dtype.is_integer:
            try:
                raw = (float(value) - point.offset) / point.scale
            except OverflowError:
                raw = math.inf
            low, high = integer_range(point.dtype)
            if not math.isfinite(raw) or not low <= round(raw) <= high:
                return "out-of-range", f"{value!r} does not fit the point's {point.dtype.value} register(s)"
        else:
            try:
                raw = (float(value) - point.offset) / point.scale
            except OverflowError:
                raw = math.inf
            limit = _FLOAT32_MAX if point.dtype is DataType.FLOAT32 else math.inf
            if not math.isfinite(raw) or abs(raw) > limit:
                return "out-of-range", f"{value!r} does not fit the point's {point.dtype.value} register(s)"
    if point.allowed and value not in point.allowed:
        return "out-of-range", f"{value!r} is not one of the allowed values {list(point.allowed)!r}"
    return None
