"""The supervisor: one TaskGroup owning the drivers, the router, the store pump, the sink and the stats.

Task names say what they serve (``simulated[boiler]``, ``router``, ``store.pump``, ``uplink``, ``stats``).
SIGTERM/SIGINT stop cleanly: drivers are cancelled and closed, queued readings are routed, and the pump
gets ``shutdown_grace`` seconds to hand over what is waiting. SIGHUP re-reads the config file and swaps
the devices that changed, keeping the uplink connection; a bad file is refused and the old config kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.config import Config, load_config
from gateway.config.limits import DEFAULT_LIMITS
from gateway.errors import ConfigError
from gateway.model import CommandTransport, Driver, MessageSink
from gateway.mqtt_topics import fill_template
from gateway.pipeline.clock import ClockCheck
from gateway.pipeline.pump import PumpCounters, pump_forever
from gateway.pipeline.queue import ReadingQueue, SetAside, route_forever, route_pending
from gateway.pipeline.router import Router
from gateway.store import Store, make_store
from gateway.store.memory import MemoryStore

if TYPE_CHECKING:
    from gateway.commands.service import CommandService

log = logging.getLogger("fieldgate.app")

#: Restart delays for a driver whose run() ended or crashed (a bug, not a device fault).
DRIVER_RESTART_MIN = 1.0
DRIVER_RESTART_MAX = 60.0
#: The same for the pipeline's own tasks (router, store pump, store, commands): a crash there is a bug
#: met by some data; the item is set aside where it can be told apart, and the task restarts.
TASK_RESTART_MIN = 0.5
TASK_RESTART_MAX = 30.0
#: A task that ran this long since its last restart is healthy again: backoff and log episode reset.
TASK_STABLE_AFTER = 60.0
#: At start the drivers wait this long at most for the uplink's first connect attempt to end. Until its
#: CONNECT is out that attempt is CPU work (imports, the token), which the drivers' own library imports
#: and first polls would delay by tens of milliseconds; past this bound it waits on the network, which
#: the drivers' start does not slow down. Readings are not lost either way: they go to the store.
UPLINK_HEAD_START = 0.2


@dataclass
class _Running:
    """A supervised driver and the task that runs it."""

    driver: Driver
    task: asyncio.Task[None]


@dataclass
class TaskRestarts:
    """Restarts of supervised tasks by task name (``fieldgate status``, metrics)."""

    counts: dict[str, int] = field(default_factory=dict)

    def hit(self, name: str) -> int:
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts[name]


class Gateway:
    def __init__(self, config: Config, sink: MessageSink, store: Store | None = None) -> None:
        self.config = config
        self.sink = sink
        self.readings = ReadingQueue(config.telemetry.reading_queue)
        self.router = Router(
            config.gateway.id,
            config.gateway.site,
            config.routes,
            config.telemetry.qos,
            telemetry=config.telemetry,
        )
        self.clock = ClockCheck(config.gateway.state_dir)
        self.router.clock_synced = self.clock.synced
        self.store = store if store is not None else make_store(config.store, config.gateway.state_dir)
        self.pump_counters = PumpCounters()
        self.set_aside = SetAside()
        self.restarts = TaskRestarts()
        self.started_at = time.time()
        self.reloads = 0
        self._drivers: dict[str, _Running] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._ready = asyncio.Event()
        #: Cloud-to-device commands ([commands]), when the sink can subscribe (not with --dry-run).
        self.commands: CommandService | None = None
        if config.commands is not None:
            if isinstance(sink, CommandTransport):
                # Imported only for a config with [commands]: the others do not pay for it at start.
                from gateway.commands.service import CommandService

                self.commands = CommandService(
                    config.commands,
                    gateway_id=config.gateway.id,
                    site=config.gateway.site,
                    devices=config.devices,
                    transport=sink,
                    own_topic=self._own_topic,
                )
            else:
                log.warning("[commands] ignored: %s cannot subscribe (no uplink)", type(sink).__name__)

    def _own_topic(self, topic: str) -> bool:
        """The gateway's own publishing topics (telemetry, birth, will): never a command's response topic."""
        uplink = self.config.uplink
        if uplink is not None:
            for status in (uplink.birth, uplink.will):
                if status is not None and topic == fill_template(
                    status.topic, gateway=self.config.gateway.id, site=self.config.gateway.site
                ):
                    return True
        return self.router.produces(topic)

    # -- control -----------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def wait_ready(self) -> None:
        """Until the drivers have been started (for tests and the service's READY notification)."""
        await self._ready.wait()

    async def wait_stopping(self) -> None:
        """Until a stop was requested (the service then tells systemd it is stopping)."""
        await self._stop.wait()

    @property
    def driver_names(self) -> list[str]:
        return sorted(self._drivers)

    @property
    def running_drivers(self) -> list[Driver]:
        """The drivers now supervised (for the service watchdog's liveness checks)."""
        return [entry.driver for entry in self._drivers.values()]

    # -- main --------------------------------------------------------------------------------------
    async def run(self, *, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        await self.store.open()
        await self.clock.load()
        # Numbering continues where the last run stopped (the store persists it).
        self.router.next_seq = max(self.router.next_seq, self.store.next_seq)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                store_task = self._keep(tg, "store", self.store.run)
                sink_task = tg.create_task(self.sink.run(), name="uplink")
                router_task = self._keep(
                    tg,
                    "router",
                    lambda: route_forever(self.readings, self.router, self.store, self.set_aside),
                )
                uplink_cfg = self.config.uplink
                limits = uplink_cfg.limits if uplink_cfg is not None else DEFAULT_LIMITS
                pump_task = self._keep(
                    tg,
                    "store.pump",
                    lambda: pump_forever(
                        self.store, self.sink, self.pump_counters, max_attempts=limits.max_attempts
                    ),
                )
                helpers = [
                    tg.create_task(self._reload_loop(), name="config.reload"),
                    tg.create_task(self.clock.keep(), name="clock"),
                ]
                if self.commands is not None:
                    helpers.append(self._keep(tg, "commands", self.commands.run))
                if self.config.gateway.stats_interval > 0:
                    helpers.append(tg.create_task(self._stats_loop(), name="stats"))
                await self._uplink_head_start()
                self._start_drivers(self.config)
                self._ready.set()
                log.info(
                    "fieldgate %s started: %d devices, %d drivers",
                    self.config.gateway.id,
                    len(self.config.routes),
                    len(self._drivers),
                )
                await self._stop.wait()
                log.info("stopping")
                await self._stop_drivers(list(self._drivers))
                router_task.cancel()
                flushed = route_pending(self.readings, self.router, self.store, self.set_aside)
                if flushed:
                    log.debug("routed %d queued poll cycles on shutdown", flushed)
                await self._drain()
                for task in (pump_task, sink_task, store_task, *helpers):
                    task.cancel()
        finally:
            self._tg = None
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            # Durable stores write what is undelivered; the memory store says what it loses.
            await self.store.close()
        left = len(self.store)
        if left and isinstance(self.store, MemoryStore):
            log.warning("stopped with %d messages not delivered (the memory store does not keep them)", left)
        log.info("stopped")

    async def _drain(self) -> None:
        grace = self.config.gateway.shutdown_grace
        try:
            async with asyncio.timeout(grace):
                await self.store.wait_empty()
        except TimeoutError:
            log.warning("shutdown grace of %gs over with %d messages waiting", grace, len(self.store))

    async def _uplink_head_start(self) -> None:
        """Until the uplink's first connect attempt is over (connected or failed), at most UPLINK_HEAD_START;
        no wait with a sink that does not connect (the dry run)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UPLINK_HEAD_START
        while loop.time() < deadline and not self._stop.is_set():
            stats = self.sink.stats
            if stats is None or stats.connected or stats.failed_connects:
                return
            await asyncio.sleep(0.005)

    # -- supervision -------------------------------------------------------------------------------
    def _keep(
        self, tg: asyncio.TaskGroup, name: str, start: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        return tg.create_task(self._keep_running(name, start), name=name)

    async def _keep_running(self, name: str, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a long-lived task; when it ends or crashes (a bug), count it and restart it with backoff.

        The first crash of an episode is logged with its traceback at error level, further ones at debug
        level; a task that then stays up for TASK_STABLE_AFTER seconds is logged as running again."""
        loop = asyncio.get_running_loop()
        delay = TASK_RESTART_MIN
        failing = False

        def recovered() -> None:
            nonlocal failing, delay
            failing, delay = False, TASK_RESTART_MIN
            log.info("task %s runs again (%d restarts so far)", name, self.restarts.counts.get(name, 0))

        while True:
            stable = loop.call_later(TASK_STABLE_AFTER, recovered) if failing else None
            error: Exception | None = None
            try:
                await start()
                why = "ended by itself"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why, error = f"crashed ({type(exc).__name__})", exc
            finally:
                if stable is not None:
                    stable.cancel()
            count = self.restarts.hit(name)
            if not failing:
                log.error(
                    "task %s %s; restarting in %gs (restart %d)", name, why, delay, count, exc_info=error
                )
                failing = True
            else:
                log.debug(
                    "task %s %s again; restarting in %gs (restart %d)",
                    name,
                    why,
                    delay,
                    count,
                    exc_info=error,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, TASK_RESTART_MAX)

    # -- drivers -----------------------------------------------------------------------------------
    def _start_drivers(self, config: Config) -> None:
        assert self._tg is not None
        for setup in config.drivers:
            for driver in setup.plugin.build(setup.config):
                if driver.name in self._drivers:
                    continue
                task = self._tg.create_task(self._supervise(driver), name=driver.name)
                self._drivers[driver.name] = _Running(driver, task)
                if self.commands is not None:
                    self.commands.attach(driver)

    async def _stop_drivers(self, names: list[str]) -> None:
        running = [self._drivers.pop(name) for name in names if name in self._drivers]
        for entry in running:
            if self.commands is not None:
                self.commands.detach(entry.driver)
            entry.task.cancel()
        if running:
            await asyncio.wait([entry.task for entry in running])

    async def _supervise(self, driver: Driver) -> None:
        """Run a driver; a driver that returns or crashes (a bug) is restarted with backoff."""
        delay = DRIVER_RESTART_MIN
        loop = asyncio.get_running_loop()
        failing = False
        try:
            while True:
                started = loop.time()
                error: Exception | None = None
                try:
                    await driver.run(self.readings.put)
                    why = "stopped by itself"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    why, error = "crashed", exc
                if failing and loop.time() - started >= TASK_STABLE_AFTER:
                    # It ran a good while before this end: a new episode, logged and backed off anew.
                    failing, delay = False, DRIVER_RESTART_MIN
                count = self.restarts.hit(driver.name)
                if not failing:
                    failing = True
                    log.error(
                        "%s %s; restarting in %gs (restart %d)",
                        driver.name,
                        why,
                        delay,
                        count,
                        exc_info=error,
                    )
                else:
                    log.debug(
                        "%s %s again; restarting in %gs (restart %d)",
                        driver.name,
                        why,
                        delay,
                        count,
                        exc_info=error,
                    )
                with contextlib.suppress(Exception):
                    await driver.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, DRIVER_RESTART_MAX)
        finally:
            try:
                await driver.close()
            except Exception:
                log.exception("%s: error while closing", driver.name)

    # -- reload ------------------------------------------------------------------------------------
    async def _reload_loop(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read the config file; apply device changes. Returns False when the new file was refused."""
        path = self.config.source
        log.info("reloading %s", path)
        try:
            # File reading and plugin imports are blocking: keep them off the event loop.
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            log.error("new config refused, keeping the running one:\n%s", "\n".join(exc.problems))
            return False
        old = self.config
        for what in ("gateway", "uplink", "store", "metrics", "commands"):
            if getattr(new, what) != getattr(old, what):
                log.warning("[%s] changed: it takes effect at the next restart, not on reload", what)
        new = Config(
            source=new.source,
            gateway=old.gateway,
            telemetry=new.telemetry,
            store=old.store,
            uplink=old.uplink,
            drivers=new.drivers,
            routes=new.routes,
            metrics=old.metrics,
            commands=old.commands,
        )
        wanted = {d.name: d for setup in new.drivers for d in setup.plugin.build(setup.config)}
        changed = [
            name
            for name, running in self._drivers.items()
            if name not in wanted or wanted[name].settings != running.driver.settings
        ]
        await self._stop_drivers(changed)
        self.router.set_routes(new.routes)
        self.router.qos = new.telemetry.qos
        self.router.set_telemetry(new.telemetry)
        self.config = new
        assert self._tg is not None
        started = []
        for name, driver in wanted.items():
            if name not in self._drivers:
                task = self._tg.create_task(self._supervise(driver), name=name)
                self._drivers[name] = _Running(driver, task)
                started.append(name)
                if self.commands is not None:
                    self.commands.attach(driver)
        self.reloads += 1
        log.info(
            "config reloaded: %d drivers stopped, %d started, %d unchanged",
            len(changed),
            len(started),
            len(self._drivers) - len(started),
        )
        return True

    # -- stats -------------------------------------------------------------------------------------
    async def _stats_loop(self) -> None:
        interval = self.config.gateway.stats_interval
        last_readings = 0
        while True:
            await asyncio.sleep(interval)
            readings = self.router.counters.readings
            log.info("%s", self.stats_line(readings_per_second=(readings - last_readings) / interval))
            last_readings = readings

    def stats_line(self, *, readings_per_second: float | None = None) -> str:
        store = self.store.stats()
        rate = f" ({readings_per_second:.1f}/s)" if readings_per_second is not None else ""
        parts = [
            f"stats: readings in {self.router.counters.readings}{rate}",
            f"messages out {self.router.counters.messages}",
            f"delivered {self.pump_counters.delivered}",
            f"refused {self.pump_counters.refused}",
            f"resent {self.pump_counters.lost}",
            f"throttled and resent {self.pump_counters.retried}",
            f"dead letters {store.dead_letters}",
            f"queues: readings {len(self.readings)}/{self.readings.max_cycles}",
            f"dropped {self.readings.dropped}",
            f"store {store.depth}/{self.store.max_messages}",
            f"in flight {store.in_flight}",
            f"dropped {store.dropped}",
            f"oldest {_age(store.oldest_timestamp)}",
            f"on disk {store.disk_messages} ({store.disk_bytes / 1e6:.1f} MB)"
            + (" MEMORY ONLY" if store.degraded else ""),
        ]
        # The status file's module: loaded by the first stats line, once running (not on the way to CONNACK).
        from gateway.service.snapshot import uplink_status

        uplink = uplink_status(self.sink)
        if uplink.kind == "mqtt":
            state = "connected" if uplink.connected else "disconnected"
            expires = (
                f", token expires in {uplink.token_expires_at - time.time():.0f}s"
                if uplink.token_expires_at is not None
                else ""
            )
            parts.append(
                f"uplink {state}, connects {uplink.connects}, refreshes {uplink.refreshes_ok} ok"
                f" / {uplink.refreshes_failed} failed{expires}, not granted {uplink.permission_denials}"
            )
            parts.append(
                f"shaping: sending {uplink.send_rate:.1f}/s of {uplink.allowed_rate:.1f}/s allowed,"
                f" throttled {uplink.throttled}, {uplink.inflight_bytes} bytes in flight"
                f" (peak {uplink.peak_inflight_bytes})"
            )
        if self.commands is not None:
            parts.append(self.commands.stats_text())
        errors = {name: c.bad for name, c in sorted(self.readings.devices.items()) if c.bad}
        parts.append("errors: " + (", ".join(f"{k}={v}" for k, v in errors.items()) if errors else "none"))
        return ", ".join(parts)


def _age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return f"{max(0.0, time.time() - timestamp):.0f}s"
