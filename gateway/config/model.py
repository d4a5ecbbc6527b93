"""Frozen configuration objects. Built once by the loader; compared by value on SIGHUP."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.commands import CommandsConfig
from gateway.config.service import MetricsSettings
from gateway.config.uplink import UplinkConfig
from gateway.model import DeviceInfo, DriverConfig, DriverPlugin
from gateway.mqtt_topics import TopicTemplate

#: Where the service keeps its queue and status file (systemd's StateDirectory=fieldgate).
DEFAULT_STATE_DIR = Path("/var/lib/fieldgate")


#: Upper bound of ``[gateway] shutdown_grace``: the drain must end well before systemd's
#: ``TimeoutStopSec`` (30 s in systemd/fieldgate.service) kills the process mid-write; the rest of the
#: stop (drivers, the store's last commit) needs the remaining seconds.
SHUTDOWN_GRACE_MAX = 20.0


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The ``[gateway]`` section: identity, logging, state directory and shutdown."""

    id: str
    site: str
    log_level: str = "info"
    log_format: str = "text"
    #: Seconds between stats lines; 0 turns them off.
    stats_interval: float = 60.0
    state_dir: Path = DEFAULT_STATE_DIR
    #: How long shutdown may spend flushing readings and waiting for acknowledgements.
    shutdown_grace: float = 5.0


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """The ``[telemetry]`` section: topic template, batching, QoS and payload format."""

    topic: TopicTemplate
    #: One message per device per poll cycle carrying all its points (Event Grid limits publish rates).
    batch: bool = True
    qos: int = 1
    #: Bound of the queue between drivers and router, in poll cycles; the oldest is dropped when full.
    reading_queue: int = 10_000
    #: "default": the documented JSON; "compact": short keys, good quality implied, no units unless
    #: ``point_lists`` (``gateway/pipeline/compact-payload.schema.json``).
    format: str = "default"
    #: Seconds; > 0 (compact only): one message per interval carrying every device that polled in it.
    gateway_batch: float = 0.0
    #: Topic of the gateway-level batch (variables: {gateway}, {site}).
    gateway_topic: TopicTemplate | None = None
    #: Payload bound of one gateway-level batch: under Event Grid's 64 KB in-flight bandwidth, so one
    #: message never blocks the window on its own (the packet limit, 512 KiB, is larger).
    gateway_batch_bytes: int = 48 * 1024
    #: Compact only: device entries carry their values in the order of a point list (names and units)
    #: that is sent in full when it is new and every ``point_list_period`` seconds, not point names.
    point_lists: bool = False
    #: Seconds between two entries of a device that carry its whole point list.
    point_list_period: float = 600.0


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The queue between router and uplink (``[store]``); reference: gateway/store/README.md."""

    #: "sqlite": durable queue in ``[gateway] state_dir``; "memory": lost on restart (dry runs, tests).
    kind: str = "sqlite"
    #: "always": every message is written before it is sent; "outage": memory first, written when the
    #: uplink is down, when more than ``memory_messages`` wait, and on shutdown.
    durability: str = "always"
    #: Messages waiting for the broker's acknowledgement (memory and disk together).
    max_messages: int = 100_000
    #: Bytes of queued messages on disk (topic + payload + per-row overhead).
    max_disk_bytes: int = 256 * 1024 * 1024
    #: Seconds after which a waiting message is dropped; 0: no age limit.
    max_age: float = 7 * 24 * 3600.0
    #: What happens when full: the oldest message is dropped (counted, logged) - or the newest.
    overflow: str = "drop-oldest"
    #: A write transaction is committed when this many messages wait for it ...
    batch_messages: int = 100
    #: ... or when the first of them has waited this many seconds.
    batch_interval: float = 0.05
    #: Messages kept in memory; beyond it the newest wait on disk only and are read back in order.
    memory_messages: int = 10_000
    #: QoS 0 messages skip the disk (they are lost on restart, as QoS 0 allows).
    bypass_qos0: bool = False
    #: Share of sends given to the backlog (older messages) while fresh ones wait too.
    replay_share: float = 0.5
    #: The uplink counts as down when it has accepted nothing for this many seconds.
    down_after: float = 5.0


@dataclass(frozen=True, slots=True)
class DeviceRoute:
    """How one device's readings become messages."""

    device: DeviceInfo
    topic: TopicTemplate
    batch: bool


@dataclass(frozen=True)
class DriverSetup:
    """One driver plugin and its parsed configuration (all devices that name it)."""

    name: str
    plugin: DriverPlugin = field(compare=False)
    config: DriverConfig


@dataclass(frozen=True)
class Config:
    """A whole config file, parsed and checked: what ``fieldgate run`` compiles into its plan."""

    source: Path
    gateway: GatewaySettings
    telemetry: TelemetrySettings
    store: StoreSettings
    #: Parsed ``[uplink]``, or None when the file has none (then only ``run --dry-run`` works).
    uplink: UplinkConfig | None
    drivers: tuple[DriverSetup, ...]
    routes: tuple[DeviceRoute, ...]
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    #: Parsed ``[commands]``, or None: no command topics are subscribed.
    commands: CommandsConfig | None = None

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        return tuple(route.device for route in self.routes)
