"""The optional Prometheus endpoint (``[metrics] enabled = true``; the ``metrics`` extra).

prometheus-client is imported only when the endpoint is enabled. The figures are not kept twice: each
scrape renders the service monitor's latest snapshot (the same one ``fieldgate status`` reads), handed
over as one immutable object, so the HTTP thread never touches the event loop's live counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from gateway.config.service import MetricsSettings
from gateway.errors import FieldgateError
from gateway.service.snapshot import Snapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("fieldgate.metrics")


class MetricsError(FieldgateError):
    """The metrics endpoint cannot start (library missing, port taken)."""


class SnapshotCollector:
    """A prometheus-client collector over the latest :class:`Snapshot`."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None

    def update(self, snapshot: Snapshot) -> None:
        # One reference assignment: atomic for the scraping thread.
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._snapshot
        if snap is None:
            return

        def counter(name: str, doc: str, value: float, **labels: str) -> Any:
            family = CounterMetricFamily(name, doc, labels=list(labels))
            family.add_metric(list(labels.values()), value)
            return family

        def gauge(name: str, doc: str, value: float) -> Any:
            return GaugeMetricFamily(name, doc, value=value)

        def counters(name: str, doc: str, label: str, values: Iterable[tuple[str, float]]) -> Any:
            """One counter family with a sample per label value."""
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, value in values:
                family.add_metric([key], value)
            return family

        info = GaugeMetricFamily("fieldgate_info", "The running gateway", labels=["gateway", "site"])
        info.add_metric([snap.gateway, snap.site], 1)
        yield info
        yield gauge(
            "fieldgate_start_time_seconds", "When the process started (epoch seconds)", snap.started_at
        )
        yield gauge(
            "fieldgate_watchdog_healthy",
            "1 while every pipeline part is alive (watchdog pings)",
            not snap.stuck,
        )

        devices = sorted(snap.devices.items())
        readings = CounterMetricFamily(
            "fieldgate_readings", "Readings received, per device", labels=["device"]
        )
        bad = CounterMetricFamily(
            "fieldgate_driver_errors",
            "Readings of BAD quality (the driver could not read the point), per device",
            labels=["device"],
        )
        failing = GaugeMetricFamily(
            "fieldgate_device_failing_points", "Points failing in the latest poll cycle", labels=["device"]
        )
        last = GaugeMetricFamily(
            "fieldgate_device_last_reading_timestamp_seconds",
            "Sampling time of the latest reading, per device",
            labels=["device"],
        )
        repaired = CounterMetricFamily(
            "fieldgate_readings_repaired",
            "Readings made safe at the driver boundary (invalid Unicode, non-finite values), per device",
            labels=["device"],
        )
        for name, device in devices:
            repaired.add_metric([name], device.repaired)
            readings.add_metric([name], device.readings)
            bad.add_metric([name], device.bad)
            failing.add_metric([name], device.failing)
            if device.last_reading is not None:
                last.add_metric([name], device.last_reading)
        yield from (readings, bad, failing, last, repaired)

        p = snap.pipeline
        yield counter("fieldgate_messages_routed", "Messages the router made", p.messages)
        yield counters(
            "fieldgate_publish_outcomes",
            "Final outcomes of handed-over messages: delivered (PUBACK success), refused, lost (resent)",
            "outcome",
            [("delivered", p.delivered), ("refused", p.refused), ("lost", p.resent)],
        )
        yield gauge("fieldgate_reading_queue_depth", "Poll cycles waiting for the router", p.reading_queue)
        yield counter(
            "fieldgate_reading_queue_dropped", "Poll cycles dropped (queue full)", p.reading_queue_dropped
        )
        yield gauge(
            "fieldgate_store_depth", "Messages waiting for the broker's acknowledgement", p.store_depth
        )
        yield gauge("fieldgate_store_capacity", "The store's bound ([store] max_messages)", p.store_max)
        yield gauge(
            "fieldgate_store_in_flight", "Messages handed to the uplink, outcome pending", p.store_in_flight
        )
        yield counter(
            "fieldgate_store_dropped", "Messages dropped by the store's overflow policy", p.store_dropped
        )
        yield gauge("fieldgate_store_disk_messages", "Messages in the store's file", p.store_disk_messages)
        yield counter(
            "fieldgate_store_dead_letters",
            "Messages moved aside after the broker kept refusing them (the store's dead letters)",
            p.store_dead_letters,
        )
        yield gauge(
            "fieldgate_store_disk_bytes", "Bytes of the store's file (with its WAL)", p.store_disk_bytes
        )
        yield gauge(
            "fieldgate_store_degraded", "1 while the store keeps messages in memory only", p.store_degraded
        )
        if p.store_oldest is not None:
            yield gauge(
                "fieldgate_store_oldest_timestamp_seconds",
                "Sampling time of the oldest waiting message",
                p.store_oldest,
            )

        if snap.commands:
            yield counters(
                "fieldgate_commands",
                "Cloud-to-device commands by what became of them (done, refused, failed, duplicates, ...)",
                "outcome",
                sorted(snap.commands.items()),
            )
        yield counters(
            "fieldgate_task_restarts",
            "Restarts of a supervised task after it crashed or ended (router, store, store.pump, ...)",
            "task",
            sorted(snap.task_restarts.items()),
        )
        yield counters(
            "fieldgate_set_aside",
            "Items set aside, not retried, because handling them failed (readings, messages, commands)",
            "kind",
            sorted(snap.set_aside.items()),
        )

        u = snap.uplink
        yield gauge("fieldgate_uplink_connected", "1 while the MQTT session is up", bool(u.connected))
        if u.connected and u.connected_since is not None:
            yield gauge(
                "fieldgate_uplink_connected_since_seconds", "When the session came up", u.connected_since
            )
        yield counter("fieldgate_uplink_connects", "Successful CONNECTs", u.connects)
        yield counter("fieldgate_uplink_publishes", "PUBLISH packets sent", u.published)
        yield counters(
            "fieldgate_uplink_puback",
            "Broker acknowledgements by outcome",
            "outcome",
            [("delivered", u.delivered), ("refused", u.refused), ("lost", u.lost)],
        )
        yield gauge("fieldgate_uplink_inflight", "PUBLISHes awaiting PUBACK", u.inflight)
        yield gauge("fieldgate_uplink_inflight_bytes", "PUBLISH bytes awaiting PUBACK", u.inflight_bytes)
        yield gauge(
            "fieldgate_uplink_inflight_bytes_peak",
            "Most PUBLISH bytes awaiting PUBACK",
            u.peak_inflight_bytes,
        )
        yield gauge(
            "fieldgate_uplink_allowed_rate", "Publishes per second the shaping allows now", u.allowed_rate
        )
        yield gauge("fieldgate_uplink_send_rate", "Publishes per second sent lately", u.send_rate)
        yield counter(
            "fieldgate_uplink_throttled",
            "Throttling answers from the broker (PUBACK or DISCONNECT 0x97, 0x80, 0x83)",
            u.throttled,
        )
        yield counter(
            "fieldgate_uplink_retried", "PUBACKs refusing a message for now (kept and resent)", u.retried
        )
        yield counters(
            "fieldgate_token_refreshes",
            "In-session token refreshes (AUTH)",
            "result",
            [("ok", u.refreshes_ok), ("failed", u.refreshes_failed)],
        )
        if u.token_expires_at is not None:
            yield gauge(
                "fieldgate_token_expires_timestamp_seconds", "When the token expires", u.token_expires_at
            )
            yield gauge(
                "fieldgate_token_expires_in_seconds",
                "Seconds until the token expires (negative: expired)",
                u.token_expires_at - time.time(),
            )
        yield counter(
            "fieldgate_permission_denials",
            "Publishes refused for lack of permission (locally or by the broker)",
            u.permission_denials,
        )


class MetricsServer:
    """The HTTP endpoint, served by prometheus-client in a daemon thread."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.collector = SnapshotCollector()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def start(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
            from prometheus_client.platform_collector import PlatformCollector
            from prometheus_client.process_collector import ProcessCollector
        except ImportError as exc:
            raise MetricsError(
                "[metrics] enabled = true needs prometheus-client: pip install 'fieldgate[metrics]'"
            ) from exc
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(self.collector)
        try:
            self._server, self._thread = start_http_server(
                self.settings.port, addr=self.settings.listen, registry=registry
            )
        except OSError as exc:
            raise MetricsError(
                f"[metrics]: cannot listen on {self.settings.listen}:{self.settings.port}: {exc.strerror}"
            ) from exc
        host = f"[{self.settings.listen}]" if ":" in self.settings.listen else self.settings.listen
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
