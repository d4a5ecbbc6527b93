"""The small core types every room shares: readings, messages and the driver contract.

Drivers import this module (and `gateway.errors`, `gateway.schema`) and nothing else from the gateway,
so a protocol can be added by installing a package that names its plugin in the entry-point group
``fieldgate.drivers``.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, overload, runtime_checkable

if TYPE_CHECKING:
    from gateway.schema import Table

#: Entry-point group in which driver plugins are registered.
DRIVER_ENTRY_POINT_GROUP = "fieldgate.drivers"

#: Seconds after which a point reported only on change (``on_change``) is reported although unchanged, in
#: every driver: a change lost upstream (a final refusal, an overflow) heals, and a consumer tells
#: "unchanged" from "gateway gone".
DEFAULT_REPORT_PERIOD = 600.0

Value = bool | int | float | str


class Quality(enum.Enum):
    """How far a reading's value can be trusted."""

    GOOD = "good"
    #: The device answered, but the value is suspect (e.g. out of the sensor's range, stale cache).
    UNCERTAIN = "uncertain"
    #: The value could not be read; ``Reading.value`` is None rather than a made-up number.
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one point of one device, at one moment."""

    device: str
    point: str
    value: Value | None
    unit: str | None
    #: Seconds since the epoch (UTC) at which the value was sampled.
    timestamp: float
    quality: Quality = Quality.GOOD
    #: Why the quality is not good, for BAD/UNCERTAIN readings (short, no secrets).
    reason: str | None = None


#: Why a value that is not a finite number went out as ``null`` (JSON has no NaN or infinities).
NOT_FINITE = "not a finite number"


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate (truncated UTF-16, ``surrogateescape`` bytes) becomes
    U+FFFD, so that encoding it to UTF-8 can never fail further down the pipeline."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean_reading(reading: Reading) -> Reading:
    """A device's reading made safe to encode: strings valid, a value that is not a finite number is
    ``None`` with BAD quality (never published as good). The one rule for every path that carries device
    data (the reading queue, command responses); returns ``reading`` itself when nothing had to change."""
    value = reading.value
    quality, reason = reading.quality, reading.reason
    if isinstance(value, float) and not math.isfinite(value):
        reason = f"{NOT_FINITE} ({value})" if quality is Quality.GOOD or not reason else reason
        value, quality = None, Quality.BAD
    elif isinstance(value, str):
        value = valid_text(value)
    device, point = valid_text(reading.device), valid_text(reading.point)
    unit = valid_text(reading.unit) if reading.unit is not None else None
    reason = valid_text(reason) if reason is not None else None
    fields = (device, point, value, unit, reading.timestamp, quality, reason)
    original = (
        reading.device,
        reading.point,
        reading.value,
        reading.unit,
        reading.timestamp,
        reading.quality,
        reading.reason,
    )
    if all(a is b for a, b in zip(fields, original, strict=True)):
        return reading
    return Reading(device, point, value, unit, reading.timestamp, quality, reason)


def json_value(value: object) -> object:
    """A value for a JSON document: a float that is not finite becomes ``None`` (``null``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return valid_text(value)
    return value


class PointBatch(Sequence[Reading]):
    """One poll cycle of one device as columns: the per-cycle fast path, without an object per point.

    A driver that reads many points at once (a register block) hands this to its ``ReadingSink`` instead
    of a list of ``Reading``; the queue and the router read the columns directly. It is still a sequence
    of readings (built on access), so code that iterates readings keeps working. ``bad`` holds the points
    whose quality is not good: index -> (quality, reason); their value is None.
    """

    __slots__ = ("bad", "device", "names", "stamps", "units", "values")

    def __init__(
        self,
        device: str,
        names: Sequence[str],
        units: Sequence[str | None],
        values: Sequence[Value | None],
        stamps: Sequence[float],
        *,
        bad: dict[int, tuple[Quality, str | None]] | None = None,
    ) -> None:
        self.device = device
        self.names = names
        self.units = units
        self.values = values
        #: Sampling time of each point (one per request: points of a request share the object).
        self.stamps = stamps
        self.bad: dict[int, tuple[Quality, str | None]] = bad if bad is not None else {}

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> Reading: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Reading]: ...
    def __getitem__(self, index: int | slice) -> Reading | Sequence[Reading]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self.names)
        quality, reason = self.bad.get(index, (Quality.GOOD, None))
        return Reading(
            self.device,
            self.names[index],
            self.values[index],
            self.units[index],
            self.stamps[index],
            quality,
            reason,
        )

    @property
    def timestamp(self) -> float:
        """The newest sampling time in the cycle."""
        return max(self.stamps)

    def take(self, indices: Sequence[int]) -> PointBatch:
        """The points at ``indices`` (ascending) as a batch of their own: each keeps its unit, value and
        sampling time, and ``bad`` is re-indexed to the new positions."""
        names, units, values, stamps = self.names, self.units, self.values, self.stamps
        bad: dict[int, tuple[Quality, str | None]] = {}
        if self.bad:
            old = self.bad
            bad = {new: old[i] for new, i in enumerate(indices) if i in old}
        return PointBatch(
            self.device,
            [names[i] for i in indices],
            [units[i] for i in indices],
            [values[i] for i in indices],
            [stamps[i] for i in indices],
            bad=bad,
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message the router produced for the uplink."""

    topic: str
    payload: bytes
    qos: int = 1
    #: Per-gateway sequence number, increasing; consumers use it to order and de-duplicate.
    seq: int = 0
    #: Sampling time of the (newest) reading it carries, seconds since the epoch.
    timestamp: float = 0.0
    #: The device it came from, for per-device counters and logs ("" for gateway messages).
    device: str = ""
    #: The payload is UTF-8 JSON (the router's and the command responses' format): the uplink marks it
    #: so (Payload Format Indicator 1, Content Type application/json) for Event Grid's routing.
    json: bool = True


class PublishOutcome(enum.Enum):
    """What became of one message handed to the uplink (or to any other sink)."""

    #: The broker acknowledged it (QoS 1 PUBACK with a success code) or it was written (QoS 0).
    DELIVERED = "delivered"
    #: Refused for good: locally (too large, QoS 2) or by the broker's PUBACK 0x87 (not authorized) or
    #: 0x99 (payload format invalid).
    REFUSED = "refused"
    #: The connection dropped before the outcome was known: the caller sends it again.
    LOST = "lost"
    #: Refused for now (PUBACK 0x97 quota exceeded, 0x80, 0x83, or another code that is not final): the
    #: caller keeps it and sends it again, a bounded number of times.
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class PublishResult:
    """How the broker answered one publish (its PUBACK reason code, if any)."""

    outcome: PublishOutcome
    reason_code: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UplinkStats:
    """The uplink's connection state and counters, for the stats line, the status file and metrics."""

    connected: bool
    connected_since: float | None
    #: Successful CONNECTs (CONNACK 0x00).
    connects: int
    #: Transport connections opened (TCP, after the TLS handshake when TLS is on).
    connections: int
    refreshes_ok: int
    refreshes_failed: int
    published: int
    delivered: int
    refused: int
    lost: int
    token_expires_at: float | None
    inflight: int
    #: Messages the permission gate kept from the broker (their topic is not granted); set by the gate.
    permission_denials: int = 0
    #: PUBLISH packets received on subscriptions (commands), and those no subscription of ours matched.
    inbound: int = 0
    inbound_unmatched: int = 0
    #: Filters subscribed (SUBACK < 0x80) / not attempted (not permitted) / refused by SUBACK.
    subscribed: int = 0
    subscriptions_not_permitted: int = 0
    subscriptions_refused: int = 0
    #: Shaping: publishes/s allowed now, throttling answers (PUBACK or DISCONNECT 0x97/0x80/0x83), PUBACKs
    #: that asked for a resend, PUBLISH bytes awaiting PUBACK (and their peak), publishes/s sent lately.
    allowed_rate: float = 0.0
    throttled: int = 0
    retried: int = 0
    inflight_bytes: int = 0
    peak_inflight_bytes: int = 0
    send_rate: float = 0.0
    #: Connect attempts that failed (no token, unreachable, refused), since start.
    failed_connects: int = 0


class MessageSink(Protocol):
    """Where the pump hands messages: the uplink, or the dry-run printer."""

    async def run(self) -> None:
        """Serve until cancelled (connect, reconnect, refresh...)."""
        ...

    @property
    def stats(self) -> UplinkStats | None:
        """The session's figures for status and metrics; None for a sink that has none (the dry run)."""
        ...

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        """Wait for room (backpressure), hand the message over, return a future for its outcome."""
        ...


@dataclass(frozen=True, slots=True)
class PointInfo:
    """What the core needs to know of a configured point: its name and unit."""

    name: str
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the core needs to know of a configured device (for topics, summaries and permissions)."""

    name: str
    driver: str
    points: tuple[PointInfo, ...] = field(default_factory=tuple)


class ReadingSink(Protocol):
    """Where a driver hands its readings: one call per device per poll cycle (or per received frame).

    Never blocks: the pipeline applies its overflow policy. One call is one unit for the router's
    batching (``batch = true`` turns one call into one message carrying all its points). A
    :class:`PointBatch` is the cheap form for a cycle of many points.
    """

    def __call__(self, readings: Sequence[Reading]) -> None: ...


@runtime_checkable
class Driver(Protocol):
    """One running unit of a protocol: a device, or a bus shared by several devices.

    ``run`` opens what it needs, polls (or listens) until cancelled, and deals with its own faults:
    an unplugged port or a dead slave is logged once, retried with backoff, and logged on recovery.
    It must let ``asyncio.CancelledError`` through. ``close`` releases resources and is idempotent.
    """

    @property
    def name(self) -> str:
        """Unique among the running drivers, e.g. ``simulated[boiler]`` or ``modbus-bus[rs485-1]``."""
        ...

    @property
    def settings(self) -> object:
        """The frozen settings it was built from; on SIGHUP, equal settings keep it running."""
        ...

    async def run(self, emit: ReadingSink) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Heartbeat(Protocol):
    """Optional for a driver (or the uplink): lets the service watchdog tell a hung loop from a quiet one.

    A loop that implements it is judged stuck when it has made no progress for ``max_silence`` seconds;
    then the watchdog stops pinging systemd, which restarts the service. Progress means the loop came
    round: a poll cycle done, an I/O attempt ended (failed or not), a wait with a timeout expired. A
    driver waiting for a device that is unplugged still comes round (its retry timer fires); only a loop
    stuck in an await that never ends, or blocked, does not.
    """

    @property
    def last_progress(self) -> float | None:
        """``time.monotonic()`` when the loop last came round; None while ``run`` is not running."""
        ...

    @property
    def max_silence(self) -> float:
        """Seconds without progress that mean the loop is stuck (e.g. 3 intervals plus the I/O timeout)."""
        ...


class DriverConfig(Protocol):
    """A plugin's parsed, frozen configuration. It lists its devices for the core."""

    @property
    def devices(self) -> tuple[DeviceInfo, ...]: ...


class DriverPlugin(Protocol):
    """The object a driver package registers under the entry-point group ``fieldgate.drivers``."""

    def parse(self, section: Table | None, devices: Sequence[tuple[str, Table]]) -> DriverConfig:
        """Validate ``[drivers.<name>]`` (``section``, or None when absent) and each device table.

        Every problem is recorded on the tables (never raised), so that all errors of a file are
        reported at once. The plugin checks that point names are unique within a device.
        Keys the core owns (``driver``, ``topic``, ``batch``) are already consumed.
        """
        ...

    def build(self, config: DriverConfig) -> Sequence[Driver]:
        """Create the drivers for a parsed configuration (no I/O here: ``run`` does it)."""
        ...


# -- cloud to device -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One PUBLISH the uplink received on a subscription, with the MQTT v5 properties commands need."""

    topic: str
    payload: bytes
    qos: int = 0
    #: The broker redelivers (QoS 1 DUP flag): the same message may have arrived before.
    dup: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    #: Message Expiry Interval as the broker forwarded it (what is left of it), seconds; None: never.
    message_expiry: int | None = None
    #: ``time.monotonic()`` at arrival, so expiry is measured from when the gateway got it.
    received_at: float = 0.0


#: Called on the event loop for each inbound message; must not block and must not raise. For QoS 1 the
#: acknowledgement (always a success PUBACK) goes out when it returns: accept the message into a queue.
InboundHandler = Callable[[InboundMessage], None]


@runtime_checkable
class CommandTransport(Protocol):
    """What commands need of the uplink (or of the permission gate in front of it)."""

    def subscribe(self, filters: Sequence[str], handler: InboundHandler) -> None:
        """Keep ``filters`` subscribed (QoS 1) on every connection from now on; deliver to ``handler``."""
        ...

    async def respond(self, topic: str, payload: bytes, correlation_data: bytes | None) -> PublishResult:
        """Publish a response (QoS 1) with the request's Correlation Data; waits for the outcome."""
        ...


@dataclass(frozen=True, slots=True)
class CommandReply:
    """What a device gave back for a command: readings (the value read back, the points read) and, for a
    named serial command, the reply as text."""

    readings: tuple[Reading, ...] = ()
    reply: str | None = None


@runtime_checkable
class Commandable(Protocol):
    """Optional for a driver: it takes commands for its devices (through its own bus queue).

    Refusals (nothing was sent to the device) raise :class:`gateway.errors.CommandRefused`; device
    faults raise :class:`gateway.errors.DriverError`. The caller applies its own timeout.
    """

    @property
    def command_devices(self) -> tuple[str, ...]:
        """The devices this driver takes commands for."""
        ...

    async def write_point(self, device: str, point: str, value: Value) -> Reading:
        """Write a writable point (checked against its limits, encoded by the driver) and read it back."""
        ...

    async def read_points(self, device: str, points: Sequence[str]) -> list[Reading]:
        """Read these points now (all of the device's points when empty)."""
        ...

    async def send_command(self, device: str, command: str) -> CommandReply:
        """Send a named command of the device's config and return its parsed reply."""
        ...


#: Entry-point group for CLI subcommands that a package adds (e.g. ``fieldgate modbus read``). Each entry
#: point names a ``register(subparsers)`` callable taking argparse's subparsers action; every subcommand
#: it adds sets ``handler=<callable(argparse.Namespace) -> int>`` with ``set_defaults``.
CLI_ENTRY_POINT_GROUP = "fieldgate.cli"


def clean_batch(batch: PointBatch) -> list[tuple[int, Value | None]]:
    """:func:`clean_reading` for a poll cycle in columns, in place: a value that is not a finite number
    becomes ``None`` with BAD quality, a string becomes valid Unicode. Returns the repaired points as
    (index, value as the device sent it); one pass over the values, no object per point."""
    fixes = [
        i
        for i, v in enumerate(batch.values)
        if (type(v) is float and not math.isfinite(v)) or (type(v) is str and valid_text(v) is not v)
    ]
    if not fixes:
        return []
    values = list(batch.values)
    repaired: list[tuple[int, Value | None]] = []
    for i in fixes:
        old = values[i]
        repaired.append((i, old))
        if isinstance(old, str):
            values[i] = valid_text(old)
        else:
            values[i] = None
            batch.bad[i] = (Quality.BAD, f"{NOT_FINITE} ({old})")
    batch.values = values
    return repaired


def unchanged_within(old: Value | None, new: Value | None, deadband: float) -> bool:
    """Whether an on-change point's ``new`` value is no news after ``old``: equal, or numbers no further
    apart than ``deadband`` (booleans and text compare equal or not; NaN is no change from NaN, nor an
    infinity from the same infinity)."""
    if (
        isinstance(old, bool)
        or isinstance(new, bool)
        or not isinstance(old, int | float)
        or not isinstance(new, int | float)
    ):
        return old == new
    if old == new or (math.isnan(old) and math.isnan(new)):
        # Equal infinities too: inf - inf is NaN, within no deadband.
        return True
    return abs(new - old) <= deadband
