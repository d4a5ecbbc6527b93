"""The running service's state at a glance: a snapshot, the status file, and ``fieldgate status``.

The service writes ``status.json`` into its state directory every few seconds, atomically (a temporary
file renamed over the old one), so a reader never sees half a file. ``fieldgate status`` reads it and
exits non-zero when it is stale: the service is not running (or hangs). The metrics endpoint serves the
same snapshot, so the two never disagree.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gateway.model import MessageSink, json_value
from gateway.pipeline.pump import DryRunSink

if TYPE_CHECKING:
    from gateway.app import Gateway

STATUS_FILE = "status.json"
#: Seconds between writes of the status file.
STATUS_INTERVAL = 5.0
#: A file older than this many intervals means the service is not running.
STALE_INTERVALS = 3
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    #: "mqtt" for the uplink, "dry-run" for ``run --dry-run``.
    kind: str
    connected: bool | None = None
    connected_since: float | None = None
    connects: int = 0
    refreshes_ok: int = 0
    refreshes_failed: int = 0
    token_expires_at: float | None = None
    published: int = 0
    delivered: int = 0
    refused: int = 0
    lost: int = 0
    inflight: int = 0
    #: PUBACKs "not authorized" and local refusals by the permission check (0 until it exists).
    permission_denials: int = 0
    #: Shaping ([uplink.limits]): publishes/s allowed now, throttling answers (0x97/0x80/0x83), PUBACKs
    #: that asked for a resend, PUBLISH bytes in flight (and their peak), publishes/s sent lately.
    allowed_rate: float = 0.0
    throttled: int = 0
    retried: int = 0
    inflight_bytes: int = 0
    peak_inflight_bytes: int = 0
    send_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    readings: int = 0
    readings_per_second: float = 0.0
    messages: int = 0
    delivered: int = 0
    refused: int = 0
    resent: int = 0
    reading_queue: int = 0
    reading_queue_max: int = 0
    reading_queue_dropped: int = 0
    store_depth: int = 0
    store_max: int = 0
    store_in_flight: int = 0
    store_dropped: int = 0
    store_oldest: float | None = None
    store_disk_messages: int = 0
    store_disk_bytes: int = 0
    #: The durable store could not use its file and keeps messages in memory only.
    store_degraded: bool = False
    #: Sends refused for now by the broker and resent; messages moved to the store's dead letters.
    retried: int = 0
    store_dead_letters: int = 0


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    driver: str
    readings: int = 0
    bad: int = 0
    failing: int = 0
    last_reading: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    #: Readings made safe at the driver boundary (invalid Unicode, non-finite values).
    repaired: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    gateway: str
    site: str
    config: str
    pid: int
    #: starting | running | stopping | stopped
    state: str
    started_at: float
    written_at: float
    uplink: UplinkStatus
    pipeline: PipelineStatus
    devices: dict[str, DeviceStatus] = field(default_factory=dict)
    #: Why the watchdog holds back its pings (empty when the pipeline is alive).
    stuck: tuple[str, ...] = ()
    #: Cloud-to-device command counters (``CommandCounters``), empty without ``[commands]``.
    commands: dict[str, int] = field(default_factory=dict)
    #: Restarts of supervised tasks by name (router, store, store.pump, commands, drivers).
    task_restarts: dict[str, int] = field(default_factory=dict)
    #: Items set aside (not retried) by kind: readings (router), messages (pump), commands.
    set_aside: dict[str, int] = field(default_factory=dict)
    interval: float = STATUS_INTERVAL
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        # Device text (errors) may hold anything; a NaN figure must not make the file unreadable JSON.
        return json.dumps(_json_safe(asdict(self)), ensure_ascii=False, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise ValueError("not a fieldgate status file of a known version")
        devices = data.get("devices") or {}
        return cls(
            **{k: v for k, v in data.items() if k not in ("uplink", "pipeline", "devices", "stuck")},
            uplink=UplinkStatus(**data["uplink"]),
            pipeline=PipelineStatus(**data["pipeline"]),
            devices={name: DeviceStatus(**d) for name, d in devices.items()},
            stuck=tuple(data.get("stuck") or ()),
        )

    @property
    def token_expires_in(self) -> float | None:
        expires = self.uplink.token_expires_at
        return None if expires is None else expires - self.written_at

    def is_stale(self, now: float) -> bool:
        return now - self.written_at > STALE_INTERVALS * self.interval

    def process_gone(self) -> bool:
        """True when the process that wrote the file no longer exists (it died without saying so)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # it exists, under another user (the service's): not ours to signal
        return False

    def not_running_because(self, now: float) -> str | None:
        """Why the service is not running (stopped, stale file, process gone), or None while it runs."""
        if self.state == "stopped":
            return "stopped"
        if self.is_stale(now):
            return "not running (status file is stale)"
        if self.process_gone():
            return f"not running (process {self.pid} is gone)"
        return None


def _json_safe(node: object) -> object:
    if isinstance(node, dict):
        return {str(k): _json_safe(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_json_safe(v) for v in node]
    return json_value(node)


def uplink_status(sink: MessageSink) -> UplinkStatus:
    """The sink's figures: the uplink's typed stats, or what a dry run printed."""
    stats = sink.stats
    if stats is None:
        return UplinkStatus(kind="dry-run", published=sink.sent if isinstance(sink, DryRunSink) else 0)
    return UplinkStatus(
        kind="mqtt",
        connected=stats.connected,
        connected_since=stats.connected_since,
        connects=stats.connects,
        refreshes_ok=stats.refreshes_ok,
        refreshes_failed=stats.refreshes_failed,
        token_expires_at=stats.token_expires_at,
        published=stats.published,
        delivered=stats.delivered,
        refused=stats.refused,
        lost=stats.lost,
        inflight=stats.inflight,
        permission_denials=stats.permission_denials,
        allowed_rate=stats.allowed_rate,
        throttled=stats.throttled,
        retried=stats.retried,
        inflight_bytes=stats.inflight_bytes,
        peak_inflight_bytes=stats.peak_inflight_bytes,
        send_rate=stats.send_rate,
    )


def take_snapshot(
    gateway: Gateway,
    *,
    state: str,
    readings_per_second: float = 0.0,
    stuck: tuple[str, ...] = (),
    now: float | None = None,
) -> Snapshot:
    store = gateway.store.stats()
    drivers = {route.device.name: route.device.driver for route in gateway.config.routes}
    counters = gateway.readings.devices
    devices = {}
    for name in sorted(set(drivers) | set(counters)):
        c = counters.get(name)
        devices[name] = DeviceStatus(
            driver=drivers.get(name, "?"),
            readings=c.readings if c else 0,
            bad=c.bad if c else 0,
            failing=c.failing if c else 0,
            last_reading=c.last_reading if c else None,
            last_error=c.last_error if c else None,
            last_error_at=c.last_error_at if c else None,
            repaired=c.repaired if c else 0,
        )
    pump = gateway.pump_counters
    return Snapshot(
        gateway=gateway.config.gateway.id,
        site=gateway.config.gateway.site,
        config=str(gateway.config.source),
        pid=os.getpid(),
        state=state,
        started_at=gateway.started_at,
        written_at=time.time() if now is None else now,
        uplink=uplink_status(gateway.sink),
        pipeline=PipelineStatus(
            readings=gateway.router.counters.readings,
            readings_per_second=round(readings_per_second, 2),
            messages=gateway.router.counters.messages,
            delivered=pump.delivered,
            refused=pump.refused,
            resent=pump.lost,
            reading_queue=len(gateway.readings),
            reading_queue_max=gateway.readings.max_cycles,
            reading_queue_dropped=gateway.readings.dropped,
            store_depth=store.depth,
            store_max=gateway.store.max_messages,
            store_in_flight=store.in_flight,
            store_dropped=store.dropped,
            store_oldest=store.oldest_timestamp,
            store_disk_messages=store.disk_messages,
            store_disk_bytes=store.disk_bytes,
            store_degraded=store.degraded,
            retried=pump.retried,
            store_dead_letters=store.dead_letters,
        ),
        devices=devices,
        stuck=stuck,
        commands=asdict(gateway.commands.counters) if gateway.commands is not None else {},
        task_restarts=dict(sorted(gateway.restarts.counts.items())),
        set_aside={
            "readings": gateway.set_aside.readings,
            "messages": gateway.pump_counters.set_aside,
            "commands": gateway.commands.counters.set_aside if gateway.commands is not None else 0,
        },
    )


def write_status_file(path: Path, snapshot: Snapshot) -> None:
    """Atomically replace ``path``: write a temporary file beside it, then rename it over.

    Blocking file I/O: the service calls it through ``asyncio.to_thread``.
    """
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(snapshot.to_json())
        # World-readable on purpose: it holds no secrets, and operators read it without sudo.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_status_file(path: Path) -> Snapshot:
    return Snapshot.from_json(path.read_text(encoding="utf-8"))


# -- presentation -------------------------------------------------------------------------------------
def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def format_status(snap: Snapshot, now: float, out: TextIO) -> None:
    state = snap.not_running_because(now) or snap.state
    out.write(f"fieldgate {snap.gateway} at site {snap.site}: {state}\n")
    out.write(f"  pid {snap.pid}, up since {_when(snap.started_at)}, config {snap.config}\n")
    out.write(f"  status written {_ago(now - snap.written_at)} ago\n")
    if snap.stuck:
        out.write("  WATCHDOG: pipeline stuck: " + "; ".join(snap.stuck) + "\n")
    u = snap.uplink
    if u.kind == "dry-run":
        out.write(f"uplink: dry run (printing messages), {u.published} printed\n")
    else:
        if u.connected and u.connected_since is not None:
            link = f"connected since {_when(u.connected_since)} ({_ago(snap.written_at - u.connected_since)})"
        else:
            link = "NOT connected"
        out.write(f"uplink: {link}, {u.connects} connects\n")
        expires_in = snap.token_expires_in
        if expires_in is None:
            token = "no token yet"
        elif expires_in <= 0:
            token = f"token EXPIRED {_ago(-expires_in)} ago"
        else:
            token = f"token expires in {_ago(expires_in)}"
        out.write(f"  {token}; refreshes {u.refreshes_ok} ok, {u.refreshes_failed} failed\n")
        out.write(
            f"  published {u.published}: delivered {u.delivered}, refused {u.refused}, lost {u.lost}; "
            f"in flight {u.inflight}; permission denials {u.permission_denials}\n"
        )
        out.write(
            f"  sending {u.send_rate:.1f}/s, allowed {u.allowed_rate:.1f}/s; throttled {u.throttled}, "
            f"resent {u.retried}; {u.inflight_bytes} bytes in flight (peak {u.peak_inflight_bytes})\n"
        )
    p = snap.pipeline
    out.write(
        f"pipeline: {p.readings} readings ({p.readings_per_second:.1f}/s), {p.messages} messages, "
        f"{p.delivered} delivered, {p.refused} refused, {p.resent} resent\n"
    )
    if p.retried or p.store_dead_letters:
        out.write(
            f"  throttled and resent {p.retried}; DEAD LETTERS {p.store_dead_letters} (refused too often,"
            " kept aside in the store)\n"
        )
    out.write(
        f"  reading queue {p.reading_queue}/{p.reading_queue_max} (dropped {p.reading_queue_dropped}), "
        f"store {p.store_depth}/{p.store_max} (in flight {p.store_in_flight}, dropped {p.store_dropped})\n"
    )
    oldest = f", oldest {time.time() - p.store_oldest:.0f}s" if p.store_oldest is not None else ""
    degraded = " - MEMORY ONLY: the store file is unusable" if p.store_degraded else ""
    out.write(
        f"  on disk {p.store_disk_messages} messages ({p.store_disk_bytes / 1e6:.1f} MB){oldest}{degraded}\n"
    )
    if snap.commands:
        c = snap.commands
        out.write(
            "commands: "
            + ", ".join(f"{k} {c[k]}" for k in ("received", "done", "refused", "failed"))
            + "; "
            + ", ".join(f"{k} {c[k]}" for k in ("duplicates", "expired", "busy", "malformed") if k in c)
            + "\n"
        )
    restarts = ", ".join(f"{name} {count}" for name, count in snap.task_restarts.items())
    out.write(f"task restarts: {restarts or 'none'}\n")
    aside = snap.set_aside
    out.write(
        "set aside (not retried): "
        + ", ".join(f"{aside.get(kind, 0)} {kind}" for kind in ("readings", "messages", "commands"))
        + "\n"
    )
    out.write(f"devices ({len(snap.devices)}):\n")
    for name, d in snap.devices.items():
        last = (
            f"last reading {_ago(snap.written_at - d.last_reading)} ago" if d.last_reading else "no reading"
        )
        health = f"{d.failing} points failing" if d.failing else "ok"
        repaired = f", {d.repaired} repaired" if d.repaired else ""
        out.write(f"  {name} ({d.driver}): {health}, {last}, {d.readings} readings, {d.bad} bad{repaired}\n")
        if d.last_error is not None and d.last_error_at is not None:
            out.write(f"    last error {_ago(snap.written_at - d.last_error_at)} ago: {d.last_error}\n")
