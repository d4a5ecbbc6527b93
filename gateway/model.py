"""The small core types every room shares: readings, messages and the driver contract.

Drivers import this module (and `gateway.errors`, `gateway.schema`) and nothing else from the gateway,
so a protocol can be added by installing a package that names its plugin in the entry-point group
``fieldgate.drivers``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.schema import Table

#: Entry-point group in which driver plugins are registered.
DRIVER_ENTRY_POINT_GROUP = "fieldgate.drivers"

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


class PublishOutcome(enum.Enum):
    """What became of one message handed to the uplink (or to any other sink)."""

    #: The broker acknowledged it (QoS 1 PUBACK with a success code) or it was written (QoS 0).
    DELIVERED = "delivered"
    #: Refused for good: locally (too large, QoS 2) or by the broker's PUBACK (e.g. 0x87 not authorized).
    REFUSED = "refused"
    #: The connection dropped before the outcome was known: the caller sends it again.
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class PublishResult:
    outcome: PublishOutcome
    reason_code: int | None = None
    reason: str = ""


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
    batching (``batch = true`` turns one call into one message carrying all its points).
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


#: Entry-point group for CLI subcommands that a package adds (e.g. ``fieldgate modbus read``). Each entry
#: point names a ``register(subparsers)`` callable taking argparse's subparsers action; every subcommand
#: it adds sets ``handler=<callable(argparse.Namespace) -> int>`` with ``set_defaults``.
COMMANDS_ENTRY_POINT_GROUP = "fieldgate.commands"
