"""Running as a system service: sd_notify, the watchdog's liveness checks, the status file and metrics.

:func:`run_service` runs a :class:`gateway.app.Gateway` with all of it; without systemd the
notifications are no-ops and the rest (status file, metrics) works the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.service.logs import flush_suppressed
from gateway.service.monitor import ServiceMonitor
from gateway.service.notify import Notifier

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("fieldgate.service")


async def run_service(gateway: Gateway, notifier: Notifier | None = None) -> None:
    """Run the gateway until it stops, with sd_notify, watchdog, status file and (if enabled) metrics."""
    config = gateway.config
    notifier = notifier if notifier is not None else Notifier.from_environment()
    metrics = None
    if config.metrics.enabled:
        from gateway.service.metrics import MetricsError, MetricsServer

        metrics = MetricsServer(config.metrics)
        try:
            # Binding a socket and starting the server thread: quick, but blocking.
            await asyncio.to_thread(metrics.start)
        except MetricsError as exc:
            # The readings matter more than their figures: run on without the endpoint.
            log.error("%s; running without the metrics endpoint", exc)
            metrics = None
    monitor = ServiceMonitor(
        gateway,
        notifier,
        state_dir=config.gateway.state_dir,
        on_snapshot=metrics.collector.update if metrics is not None else None,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(monitor.run(), name="service.monitor")
            try:
                await gateway.run()
            finally:
                watcher.cancel()
        await monitor.finish()
    finally:
        flush_suppressed(everything=True)
        if metrics is not None:
            metrics.close()
        notifier.close()
