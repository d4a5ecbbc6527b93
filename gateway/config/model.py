"""Frozen configuration objects. Built once by the loader; compared by value on SIGHUP."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.commands import CommandsConfig
from gateway.config.service import MetricsSettings
from gateway.config.uplink import UplinkConfig
from gateway.model import DeviceInfo, DriverConfig, DriverPlugin
from gateway.topics import TopicTemplate


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    id: str
    site: str
    log_level: str = "info"
    log_format: str = "text"
    #: Seconds between stats lines; 0 turns them off.
    stats_interval: float = 60.0
    state_dir: Path = Path("/var/lib/fieldgate")
    #: How long shutdown may spend flushing readings and waiting for acknowledgements.
    shutdown_grace: float = 5.0


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    topic: TopicTemplate
    #: One message per device per poll cycle carrying all its points (Event Grid limits publish rates).
    batch: bool = True
    qos: int = 1
    #: Bound of the queue between drivers and router, in poll cycles; the oldest is dropped when full.
    reading_queue: int = 10_000


@dataclass(frozen=True, slots=True)
class StoreSettings:
    #: Messages held in memory between router and uplink (waiting for the broker's acknowledgement).
    max_messages: int = 100_000
    #: What happens when full: the oldest message is dropped (counted, logged) - or the newest.
    overflow: str = "drop-oldest"


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
