"""The serial driver's configuration: TOML tables read through ``Table`` into frozen dataclasses.

Every problem is recorded on the tables (never raised) so that a file's errors are reported at once.
Byte strings (terminators, start/end markers, headers, commands) may be written as a TOML string
(``"\\r\\n"``, ``"\\u0002"``; characters up to U+00FF, one byte each), a single integer (``0x02``) or an
array of integers (``[0xAA, 0x55]``), whichever reads best for the sensor's manual.
"""

from __future__ import annotations

import codecs
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.model import DEFAULT_REPORT_PERIOD, DeviceInfo, PointInfo
from gateway.schema import SerialLine, Table, read_serial_line

Checksum = Literal["none", "nmea", "crc16-modbus", "sum8"]
ByteOrder = Literal["little", "big"]
PointType = Literal["float", "int", "bool", "string"]

#: Largest binary frame (payload for delimited/length framing); serial instruments send far smaller ones.
MAX_BINARY_FRAME = 4096
MAX_HEADERLESS_FRAME = 256
CHECKSUM_SIZES: dict[str, int] = {"none": 0, "nmea": 0, "crc16-modbus": 2, "sum8": 1}
_BINARY_CHECKSUMS = ("none", "crc16-modbus", "sum8")
#: Fields the NMEA parser produces (each also with a sentence prefix, e.g. ``GGA.latitude``).
NMEA_FIELDS: dict[str, tuple[str, ...]] = {
    "GGA": (
        "time",
        "latitude",
        "longitude",
        "fix_quality",
        "satellites",
        "hdop",
        "altitude",
        "geoid_separation",
    ),
    "RMC": (
        "time",
        "status",
        "valid",
        "latitude",
        "longitude",
        "speed",
        "course",
        "date",
        "utc",
        "magnetic_variation",
    ),
    "VTG": ("course", "course_magnetic", "speed", "speed_kmh"),
    "GLL": ("latitude", "longitude", "time", "status", "valid"),
}
NMEA_ALL_FIELDS = frozenset(
    {"sentence"}
    | {f for fs in NMEA_FIELDS.values() for f in fs}
    | {f"{s}.{f}" for s, fs in NMEA_FIELDS.items() for f in fs}
)


# -- framing -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LineFraming:
    """Text lines ending in ``terminator``; a trailing ``\\r`` is dropped when the terminator is ``\\n``."""

    terminator: bytes = b"\n"
    #: Longest line kept (without terminator); longer ones are counted and dropped up to the next terminator.
    max_length: int = 256
    checksum: Literal["none", "nmea"] = "none"


@dataclass(frozen=True, slots=True)
class FixedFraming:
    """Frames of exactly ``length`` bytes (header and checksum included), optionally led by ``header``."""

    length: int
    header: bytes = b""
    checksum: Checksum = "none"
    checksum_order: ByteOrder = "little"


@dataclass(frozen=True, slots=True)
class DelimitedFraming:
    """Frames ``start + payload + checksum + end``; the checksum covers start and payload."""

    start: bytes
    end: bytes
    max_length: int = 256
    checksum: Checksum = "none"
    checksum_order: ByteOrder = "little"


@dataclass(frozen=True, slots=True)
class LengthFraming:
    """Frames ``header + length + payload + checksum``; the checksum covers header, length and payload.

    The payload holds ``length + length_adjust`` bytes (some devices count the checksum or header too).
    """

    header: bytes = b""
    length_size: Literal[1, 2] = 1
    length_order: ByteOrder = "big"
    length_adjust: int = 0
    max_length: int = 256
    checksum: Checksum = "none"
    checksum_order: ByteOrder = "little"


@dataclass(frozen=True, slots=True)
class RawFraming:
    """Every chunk read is one frame: only for the ``watch`` command's first look at an unknown sensor."""


FramingSpec = LineFraming | FixedFraming | DelimitedFraming | LengthFraming | RawFraming


# -- parsers -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RegexParser:
    pattern: str
    encoding: str = "ascii"


@dataclass(frozen=True, slots=True)
class CsvParser:
    delimiter: str = ","
    #: Optional names of the columns in order, so points may say ``field = "temp"`` instead of ``field = 2``.
    columns: tuple[str, ...] = ()
    encoding: str = "ascii"


@dataclass(frozen=True, slots=True)
class JsonParser:
    encoding: str = "utf-8"


@dataclass(frozen=True, slots=True)
class KeyValueParser:
    #: Between pairs; None splits on any run of whitespace.
    separator: str | None = None
    assign: str = "="
    encoding: str = "ascii"


@dataclass(frozen=True, slots=True)
class NmeaParser:
    pass


@dataclass(frozen=True, slots=True)
class StructParser:
    #: A ``struct`` format including its byte-order prefix (``<`` or ``>``), applied to the frame payload.
    format: str
    #: Optional names of the unpacked values in order (otherwise points use their index).
    fields: tuple[str, ...] = ()


ParserSpec = RegexParser | CsvParser | JsonParser | KeyValueParser | NmeaParser | StructParser


# -- points, commands, ports, devices ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Point:
    name: str
    #: Which parsed field feeds it: a regex group, CSV column (index or name), JSON/key=value key, NMEA
    #: field or struct value (index or name); always kept as a string.
    field: str
    type: PointType = "float"
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    #: Reported only when its quality changes or its value moves by more than ``deadband`` from the
    #: last reported value, and unchanged at least every ``report_period`` seconds.
    on_change: bool = False
    deadband: float = 0.0
    report_period: float = DEFAULT_REPORT_PERIOD


@dataclass(frozen=True, slots=True)
class Command:
    """A request sent every ``interval`` seconds (polled mode); its reply is framed and parsed into points.

    With ``poll = false`` it is sent only when asked (a cloud command such as ``tare``); its points and
    parser are then optional and its reply is returned to the asker as text.
    """

    name: str
    send: bytes
    interval: float
    timeout: float
    framing: FramingSpec
    parser: ParserSpec | None
    points: tuple[Point, ...]
    poll: bool = True


@dataclass(frozen=True, slots=True)
class RS485:
    """Kernel RS-485 direction control (``TIOCSRS485``) for adapters that need the driver to switch RTS."""

    rts_level_for_tx: bool = True
    rts_level_for_rx: bool = False
    delay_before_tx: float = 0.0
    delay_before_rx: float = 0.0
    loopback: bool = False


@dataclass(frozen=True, slots=True)
class Port:
    line: SerialLine
    rtscts: bool = False
    xonxoff: bool = False
    rs485: RS485 | None = None

    @property
    def path(self) -> str:
        return self.line.port


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    port: Port
    mode: Literal["stream", "polled"]
    #: Streaming mode: how the byte stream is cut and parsed, and the points it feeds.
    framing: FramingSpec
    parser: ParserSpec | None
    points: tuple[Point, ...] = ()
    #: Polled mode: the commands, in file order.
    commands: tuple[Command, ...] = ()
    retry_initial: float = 1.0
    retry_max: float = 30.0
    #: Streaming mode: after this many seconds without a frame the points go BAD (None: never).
    silence_timeout: float | None = None

    @property
    def all_points(self) -> tuple[Point, ...]:
        return self.points + tuple(p for c in self.commands for p in c.points)


@dataclass(frozen=True, slots=True)
class SerialConfig:
    devices: tuple[DeviceInfo, ...]
    specs: tuple[Device, ...]


# -- readers -------------------------------------------------------------------------------------------
def read_bytes(table: Table, key: str, default: bytes | None = None) -> bytes:
    """A byte string written as a TOML string (chars <= U+00FF), one integer, or an array of integers."""
    raw = table.raw(key)
    if raw is None:
        if default is None:
            table.problem(key, "is required")
            return b""
        return default
    why = 'expected a string ("\\r\\n"), a byte (0x02) or an array of bytes ([0xAA, 0x55])'
    if isinstance(raw, str):
        try:
            return raw.encode("latin-1")
        except UnicodeEncodeError:
            table.problem(
                key, "characters above U+00FF cannot be sent as one byte; use an array of bytes", raw
            )
            return default or b""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if isinstance(raw, list) and all(isinstance(b, int) and not isinstance(b, bool) for b in raw):
        if all(0 <= b <= 255 for b in raw):
            return bytes(raw)
        table.problem(key, "every byte must be between 0 and 255", raw)
        return default or b""
    table.problem(key, why, raw)
    return default or b""


def _encoding(table: Table, default: str) -> str:
    name = table.string("encoding", default)
    try:
        codecs.lookup(name)
    except LookupError:
        table.problem("encoding", "unknown text encoding", name)
        return default
    return name


def _byte_order(table: Table, key: str, default: ByteOrder) -> ByteOrder:
    return "big" if table.string(key, default, choices=("little", "big")) == "big" else "little"


def _binary_checksum(table: Table) -> Checksum:
    value = table.string("checksum", "none", choices=_BINARY_CHECKSUMS)
    return value if value in ("crc16-modbus", "sum8") else "none"  # type: ignore[return-value]


def parse_framing(table: Table | None, default: FramingSpec | None) -> FramingSpec:
    """``framing = { kind = ..., ... }``; ``default`` (a device's framing) applies when a command has none."""
    if table is None:
        if default is not None:
            return default
        return LineFraming()
    kind = table.string("kind", "line", choices=("line", "fixed", "delimited", "length"))
    spec: FramingSpec
    if kind == "line":
        terminator = read_bytes(table, "terminator", b"\n")
        if not terminator:
            table.problem("terminator", "must not be empty")
            terminator = b"\n"
        checksum = table.string("checksum", "none", choices=("none", "nmea"))
        spec = LineFraming(
            terminator=terminator,
            max_length=table.integer("max_length", 256, minimum=1, maximum=65536),
            checksum="nmea" if checksum == "nmea" else "none",
        )
    elif kind == "fixed":
        length = table.integer("length", minimum=1, maximum=MAX_BINARY_FRAME)
        header = read_bytes(table, "header", b"")
        checksum = _binary_checksum(table)
        spec = FixedFraming(length, header, checksum, _byte_order(table, "checksum_order", "little"))
        if length and length < len(header) + CHECKSUM_SIZES[checksum]:
            table.problem("length", "is shorter than the header and checksum together", length)
        _check_headerless(table, "length", length, header, checksum)
    elif kind == "delimited":
        start = read_bytes(table, "start")
        end = read_bytes(table, "end")
        for key, value in (("start", start), ("end", end)):
            if table.has(key) and not value:
                table.problem(key, "must not be empty")
        spec = DelimitedFraming(
            start=start or b"\x02",
            end=end or b"\x03",
            max_length=table.integer("max_length", 256, minimum=1, maximum=MAX_BINARY_FRAME),
            checksum=_binary_checksum(table),
            checksum_order=_byte_order(table, "checksum_order", "little"),
        )
    else:
        size = table.integer("length_size", 1, minimum=1, maximum=2)
        spec = LengthFraming(
            header=read_bytes(table, "header", b""),
            length_size=2 if size == 2 else 1,
            length_order=_byte_order(table, "length_order", "big"),
            length_adjust=table.integer("length_adjust", 0, minimum=-65536, maximum=65536),
            max_length=table.integer("max_length", 256, minimum=1, maximum=MAX_BINARY_FRAME),
            checksum=_binary_checksum(table),
            checksum_order=_byte_order(table, "checksum_order", "little"),
        )
        _check_headerless(table, "max_length", spec.max_length, spec.header, spec.checksum)
    table.finish()
    return spec


def _check_headerless(table: Table, key: str, size: int, header: bytes, checksum: str) -> None:
    # Without a header, finding the way back after garbage means testing the checksum at every byte
    # position; over longer frames that costs more CPU than a fast line delivers bytes.
    if not header and checksum != "none" and size > MAX_HEADERLESS_FRAME:
        table.problem(
            key,
            f"checksummed frames without a header may be at most {MAX_HEADERLESS_FRAME} bytes; add a header",
            size,
        )


def parse_parser(
    table: Table | None, where: Table, key: str, default: ParserSpec | None
) -> ParserSpec | None:
    if table is None:
        if default is None:
            where.problem(key, "is required (a table with kind = regex, csv, json, keyvalue, nmea or struct)")
        return default
    kind = table.string("kind", choices=("regex", "csv", "json", "keyvalue", "nmea", "struct"))
    spec: ParserSpec | None = None
    if kind == "regex":
        pattern = table.string("pattern")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            table.problem("pattern", f"is not a valid regular expression ({exc.msg})", pattern)
        else:
            if not compiled.groupindex:
                table.problem("pattern", "has no named groups, e.g. (?P<weight>[-0-9.]+)", pattern)
        spec = RegexParser(pattern, _encoding(table, "ascii"))
    elif kind == "csv":
        delimiter = table.string("delimiter", ",")
        if len(delimiter) != 1:
            table.problem("delimiter", "must be one character", delimiter)
            delimiter = ","
        spec = CsvParser(delimiter, table.strings("columns"), _encoding(table, "ascii"))
    elif kind == "json":
        spec = JsonParser(_encoding(table, "utf-8"))
    elif kind == "keyvalue":
        separator = table.optional_string("separator")
        assign = table.string("assign", "=")
        if not assign:
            table.problem("assign", "must not be empty")
            assign = "="
        if separator == "":
            table.problem("separator", "must not be empty (leave it out to split on whitespace)")
            separator = None
        spec = KeyValueParser(separator, assign, _encoding(table, "ascii"))
    elif kind == "nmea":
        spec = NmeaParser()
    elif kind == "struct":
        layout = table.string("format")
        order = table.string("byteorder", "big", choices=("little", "big"))
        if layout[:1] in ("<", ">", "!", "=", "@"):
            table.problem(
                "format", "give the byte order with byteorder = little/big, not in the format", layout
            )
            layout = layout[1:]
        full = ("<" if order == "little" else ">") + layout
        try:
            count = len(struct.unpack(full, bytes(struct.calcsize(full))))
        except struct.error as exc:
            table.problem("format", f"is not a valid struct format ({exc})", layout)
            count = 0
        fields = table.strings("fields")
        if fields and len(fields) != count:
            table.problem(
                "fields", f"names {len(fields)} values but the format unpacks {count}", list(fields)
            )
        spec = StructParser(full, fields)
    table.finish()
    return spec


def _parser_fields(parser: ParserSpec | None) -> tuple[frozenset[str] | None, str]:
    """The field names a parser can produce (None when any name may appear) and a hint for errors."""
    if isinstance(parser, RegexParser):
        try:
            return frozenset(re.compile(parser.pattern).groupindex), "the pattern's named groups"
        except re.error:
            return None, ""
    if isinstance(parser, NmeaParser):
        return NMEA_ALL_FIELDS, "NMEA fields such as latitude, GGA.altitude, RMC.speed"
    if isinstance(parser, StructParser):
        try:
            count = len(struct.unpack(parser.format, bytes(struct.calcsize(parser.format))))
        except struct.error:
            return None, ""
        return frozenset(
            {str(i) for i in range(count)} | set(parser.fields)
        ), "a value index or a name in fields"
    return None, ""


def parse_points(
    owner: Table,
    parser: ParserSpec | None,
    *,
    required: bool,
    report_period: float = DEFAULT_REPORT_PERIOD,
) -> tuple[Point, ...]:
    entries = owner.named_entries("points", what="point")
    if required and not owner.data.get("points"):  # missing or empty; a wrong type is reported already
        owner.problem(
            "points", f"at least one point is required ([{owner.here('points')}.<name>] with a field)"
        )
    known, hint = _parser_fields(parser)
    points: list[Point] = []
    for name, t in entries:
        raw_field = t.raw("field")
        field: str = name
        if raw_field is not None:
            if isinstance(raw_field, bool) or not isinstance(raw_field, str | int):
                t.problem("field", "expected a field name or a column/value index", raw_field)
            else:
                field = str(raw_field)
                if isinstance(raw_field, int) and raw_field < 0:
                    t.problem("field", "an index counts from 0", raw_field)
        if isinstance(parser, CsvParser) and not field.isdigit() and field not in parser.columns:
            t.problem("field", "is neither a column index nor a name in the parser's columns", field)
        elif known is not None and field not in known:
            t.problem("field", f"is not produced by this parser (expected {hint})", field)
        kind = t.string("type", "float", choices=("float", "int", "bool", "string"))
        unit = t.optional_string("unit")
        scale = t.number("scale", 1.0)
        offset = t.number("offset", 0.0)
        if kind == "int" and (not scale.is_integer() or not offset.is_integer()):
            t.problem("scale", 'an int point takes whole-number scale and offset; use type = "float"', scale)
        if kind in ("bool", "string") and (scale != 1.0 or offset != 0.0):
            t.problem("scale", f"a {kind} point takes no scale or offset", scale)
        if scale == 0.0:
            t.problem("scale", "must not be 0", scale)
        on_change = t.boolean("on_change", False)
        deadband = t.number("deadband", 0.0, minimum=0.0)
        if t.has("deadband") and not on_change:
            t.problem("deadband", "applies only with on_change = true", deadband)
        elif t.has("deadband") and kind in ("bool", "string"):
            t.problem("deadband", f"a {kind} point is reported on any change; it takes no deadband", deadband)
        period = t.optional_number("report_period", positive=True)
        if period is not None and not on_change:
            t.problem("report_period", "applies only with on_change = true", period)
        t.finish()
        points.append(
            Point(
                name,
                field,
                kind,  # type: ignore[arg-type]
                unit,
                scale,
                offset,
                on_change=on_change,
                deadband=deadband,
                report_period=period if period is not None else report_period,
            )
        )
    return tuple(points)


def _parse_port(device: Table) -> Port:
    line = read_serial_line(device)
    rs485: RS485 | None = None
    t = device.table("rs485")
    if t is not None:
        rs485 = RS485(
            rts_level_for_tx=t.boolean("rts_level_for_tx", True),
            rts_level_for_rx=t.boolean("rts_level_for_rx", False),
            delay_before_tx=t.number("delay_before_tx", 0.0, minimum=0, maximum=1),
            delay_before_rx=t.number("delay_before_rx", 0.0, minimum=0, maximum=1),
            loopback=t.boolean("loopback", False),
        )
        t.finish()
    return Port(
        line=line,
        rtscts=device.boolean("rtscts", False),
        xonxoff=device.boolean("xonxoff", False),
        rs485=rs485,
    )


def parse_device(
    name: str,
    device: Table,
    *,
    retry_initial: float = 1.0,
    retry_max: float = 30.0,
    report_period: float = DEFAULT_REPORT_PERIOD,
) -> Device:
    """One ``[devices.<name>]`` table with ``driver = "serial"`` (core keys already consumed)."""
    device.consume("driver", "topic", "batch")
    port = _parse_port(device)
    mode = device.string("mode", "stream", choices=("stream", "polled"))
    framing = parse_framing(device.table("framing"), None)
    parser_table = device.table("parser")
    parser = parse_parser(parser_table, device, "parser", None) if parser_table is not None else None
    retry_initial = device.number("retry_initial", retry_initial, positive=True, maximum=3600)
    retry_max = device.number("retry_max", retry_max, positive=True, maximum=3600)
    # Point, then device, then ``[drivers.serial]``.
    report_period = device.number("report_period", report_period, positive=True)
    if retry_max < retry_initial:
        device.problem("retry_max", f"must be at least retry_initial ({retry_initial:g})", retry_max)
    points: tuple[Point, ...] = ()
    commands: list[Command] = []
    silence_timeout = device.optional_number("silence_timeout", positive=True, maximum=86400)
    if silence_timeout is not None and mode == "polled":
        device.problem("silence_timeout", "is for streaming devices; a polled command has its own timeout")
    if mode == "stream":
        if parser is None:
            device.problem(
                "parser", "is required (a table with kind = regex, csv, json, keyvalue, nmea or struct)"
            )
        points = parse_points(device, parser, required=True, report_period=report_period)
        if device.has("commands"):
            device.problem("commands", 'only polled devices send commands; set mode = "polled"')
    else:
        if device.has("points"):
            device.problem("points", "a polled device lists its points under each command")
            device.consume("points")
        for cname, ct in device.named_entries("commands", what="command"):
            send = read_bytes(ct, "send")
            poll = ct.boolean("poll", True)
            if not poll and ct.has("interval"):
                ct.problem("interval", "a command with poll = false is sent only on request")
            interval = ct.number("interval", 1.0, positive=True, maximum=86400)
            timeout = ct.number("timeout", 1.0, positive=True, maximum=60)
            cframing = parse_framing(ct.table("framing"), framing)
            ctable = ct.table("parser")
            cparser = parse_parser(ctable, ct, "parser", parser) if ctable is not None else parser
            has_points = bool(ct.data.get("points"))
            if cparser is None and (poll or has_points):
                ct.problem("parser", "is required here or on the device")
            cpoints = parse_points(ct, cparser, required=poll, report_period=report_period)
            ct.finish()
            if poll and cparser is None:
                cparser = NmeaParser()  # reported above; keeps the spec well-typed
            commands.append(Command(cname, send, interval, timeout, cframing, cparser, cpoints, poll=poll))
        if not device.data.get("commands"):  # missing or empty; a wrong type is reported already
            device.problem(
                "commands", f"a polled device needs at least one command ([{device.here('commands')}.<name>])"
            )
        names = [p.name for c in commands for p in c.points]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            device.problem("commands", f"point {dup!r} is read by more than one command")
    device.finish()
    return Device(
        name=name,
        port=port,
        mode="polled" if mode == "polled" else "stream",
        framing=framing,
        parser=parser,
        points=points,
        commands=tuple(commands),
        retry_initial=retry_initial,
        retry_max=max(retry_max, retry_initial),
        silence_timeout=silence_timeout,
    )


def parse_config(section: Table | None, devices: Sequence[tuple[str, Table]]) -> SerialConfig:
    retry_initial, retry_max = 1.0, 30.0
    report_period = DEFAULT_REPORT_PERIOD
    if section is not None:
        retry_initial = section.number("retry_initial", 1.0, positive=True, maximum=3600)
        retry_max = section.number("retry_max", 30.0, positive=True, maximum=3600)
        report_period = section.number("report_period", DEFAULT_REPORT_PERIOD, positive=True)
        section.finish()
    specs = tuple(
        parse_device(n, t, retry_initial=retry_initial, retry_max=retry_max, report_period=report_period)
        for n, t in devices
    )
    # Each device holds its port exclusively, so two devices on one port would lock each other out.
    owners: dict[str, str] = {}
    for spec, (_, table) in zip(specs, devices, strict=True):
        if spec.port.path in owners:
            table.problem("port", f"is already used by device {owners[spec.port.path]!r}", spec.port.path)
        elif spec.port.path:
            owners[spec.port.path] = spec.name
    infos = tuple(
        DeviceInfo(s.name, "serial", tuple(PointInfo(p.name, p.unit) for p in s.all_points)) for s in specs
    )
    return SerialConfig(devices=infos, specs=specs)
