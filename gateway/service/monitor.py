"""The service monitor task: tells systemd how the gateway is doing and writes the status file.

It runs beside :meth:`gateway.app.Gateway.run` for the whole life of ``fieldgate run``:

- ``READY=1`` once the config is loaded and the drivers are started;
- ``WATCHDOG=1`` every half ``WatchdogSec``, but only while :class:`Liveness` finds every part alive;
- ``STATUS=`` (uplink, readings/s, store depth, token time left) every few seconds;
- ``STOPPING=1`` as soon as a stop is requested;
- the status file and the metrics snapshot, in and out of systemd alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.service.logs import flush_suppressed
from gateway.service.notify import Notifier
from gateway.service.watchdog import Liveness, describe

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.service.snapshot import Snapshot

log = logging.getLogger("fieldgate.service")

#: How often the monitor wakes (at most; shorter when the watchdog asks for faster pings).
TICK = 1.0


def status_line(snap: Snapshot) -> str:
    """The one line ``systemctl status fieldgate`` shows."""
    u, p = snap.uplink, snap.pipeline
    parts = []
    if snap.stuck:
        parts.append("STUCK: " + "; ".join(snap.stuck))
    if u.kind == "dry-run":
        parts.append("dry run")
    elif u.connected:
        parts.append("uplink connected")
    else:
        parts.append("uplink down")
    parts.append(f"{p.readings_per_second:.1f} readings/s")
    parts.append(f"store {p.store_depth}/{p.store_max}")
    expires_in = snap.token_expires_in
    if expires_in is not None:
        parts.append(f"token {max(0, expires_in) / 60:.0f} min left" if expires_in > 0 else "token EXPIRED")
    bad = sorted(name for name, d in snap.devices.items() if d.failing)
    if bad:
        parts.append("failing: " + ", ".join(bad))
    return ", ".join(parts)


class ServiceMonitor:
    def __init__(
        self,
        gateway: Gateway,
        notifier: Notifier,
        *,
        state_dir: Path | None,
        status_interval: float | None = None,
        liveness: Liveness | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self._gateway = gateway
        self._notifier = notifier
        self._state_dir = state_dir
        self._status_interval = status_interval
        self._liveness = liveness if liveness is not None else Liveness(gateway)
        self._on_snapshot = on_snapshot
        self._state = "starting"
        self._stuck: tuple[str, ...] = ()
        self._rate = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._file_failed = False
        #: The status file write in its worker thread, if one is under way.
        self._writing: asyncio.Future[None] | None = None

    def snapshot(self) -> Snapshot:
        # The snapshot module (the status file's types and writer) is loaded by the first snapshot, once
        # the gateway is up: it is not on the way to the first CONNACK.
        from gateway.service.snapshot import take_snapshot

        snap = take_snapshot(
            self._gateway, state=self._state, readings_per_second=self._rate, stuck=self._stuck
        )
        if self._on_snapshot is not None:
            self._on_snapshot(snap)
        return snap

    async def run(self) -> None:
        await self._gateway.wait_ready()
        self._state = "running"
        self._rate_mark = (time.monotonic(), self._gateway.router.counters.readings)
        snap = self.snapshot()
        if self._notifier.ready(status_line(snap)):
            log.info("told systemd: ready")
        await self._write(snap)
        await self._warn_exposed_secret_files()
        from gateway.service.snapshot import STATUS_INTERVAL

        status_interval = self._status_interval if self._status_interval is not None else STATUS_INTERVAL
        interval = self._notifier.watchdog_interval
        tick = min(TICK, interval) if interval else TICK
        stopping = asyncio.create_task(self._gateway.wait_stopping(), name="service.stopping")
        last_ping = last_status = time.monotonic()
        if interval:
            self._notifier.watchdog()
        try:
            while True:
                if stopping.done():
                    await asyncio.sleep(tick)
                else:
                    # Wake at once when a stop is requested, to say STOPPING=1 without delay.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(tick):
                            await asyncio.shield(stopping)
                now = time.monotonic()
                just_stopping = stopping.done() and self._state != "stopping"
                if just_stopping:
                    self._state = "stopping"
                    self._notifier.stopping("stopping: flushing queued readings")
                self._check_liveness()
                # "suppressed K similar messages" lines for rate-limit windows that are over.
                flush_suppressed()
                if interval and not self._stuck and now - last_ping >= interval:
                    self._notifier.watchdog()
                    last_ping = now
                if now - last_status >= status_interval or just_stopping:
                    self._update_rate(now)
                    snap = self.snapshot()
                    self._notifier.status(status_line(snap))
                    await self._write(snap)
                    last_status = now
                elif self._on_snapshot is not None:
                    # Between status writes only a metrics endpoint reads snapshots.
                    self.snapshot()
        finally:
            stopping.cancel()

    def _check_liveness(self) -> None:
        stuck = tuple(self._liveness.stuck())
        if stuck and not self._stuck:
            log.error(
                "watchdog: pipeline stuck (%s): not pinging systemd, which will restart the service",
                describe(stuck),
            )
        elif not stuck and self._stuck:
            log.info("watchdog: pipeline alive again")
        self._stuck = stuck

    def _update_rate(self, now: float) -> None:
        readings = self._gateway.router.counters.readings
        since, before = self._rate_mark
        if now > since:
            self._rate = (readings - before) / (now - since)
        self._rate_mark = (now, readings)

    async def finish(self) -> None:
        """After the gateway stopped: the status file says so."""
        self._state = "stopped"
        self._stuck = ()
        # The monitor may have been cancelled in the middle of a write whose thread still runs: let it
        # land first, or it could replace "stopped" with the state before.
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        await self._write(self.snapshot())

    async def _warn_exposed_secret_files(self) -> None:
        # Once the gateway is up (a warning, not a reason to wait): walking a config of thousands of
        # points and stat() of the key files is not on the way to the first CONNACK.
        from gateway.service.keyfiles import warn_exposed_secret_files

        # stat() is blocking file I/O: off the event loop.
        await asyncio.to_thread(warn_exposed_secret_files, self._gateway.config)

    async def _write(self, snap: Snapshot) -> None:
        if self._state_dir is None or self._file_failed:
            return
        from gateway.service.snapshot import STATUS_FILE

        path = self._state_dir / STATUS_FILE
        try:
            # Directory creation, write and rename are blocking file I/O: off the event loop.
            self._writing = asyncio.ensure_future(asyncio.to_thread(_write_file, path, snap))
            # Shielded: a cancelled monitor leaves the write for finish() to wait on, not behind it.
            await asyncio.shield(self._writing)
        except OSError as exc:
            self._file_failed = True
            log.warning(
                "cannot write the status file %s (%s): `fieldgate status` will not see this run",
                path,
                exc.strerror or exc,
            )


def _write_file(path: Path, snap: Snapshot) -> None:
    from gateway.service.snapshot import write_status_file

    if not path.parent.is_dir():
        os.makedirs(path.parent, mode=0o750, exist_ok=True)
    write_status_file(path, snap)
