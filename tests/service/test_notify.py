"""systemd starts fieldgate with Type=notify and WatchdogSec=: it hears READY, STATUS, WATCHDOG and
STOPPING over a real notify socket, and the pings stop when a part of the pipeline hangs."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from gateway.app import Gateway
from gateway.config import load_config
from gateway.model import Message, PublishResult
from gateway.service.notify import Notifier
from gateway.service.runner import run_service
from tests.service.conftest import SIMULATED, NotifyListener, start_gateway, write_config

#: 0.4 s WatchdogSec: pings every 0.2 s.
WATCHDOG_USEC = "400000"


def is_watchdog(datagram: str) -> bool:
    return datagram.split("\n") == ["WATCHDOG=1"]


async def test_ready_status_watchdog_and_stopping_arrive_in_order(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    config = write_config(tmp_path, SIMULATED)
    process = await start_gateway(config, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=WATCHDOG_USEC)
    try:
        ready = await notify_socket.wait_for(lambda d: "READY=1" in d.split("\n"))
        first_ping = await notify_socket.wait_for(is_watchdog, start=ready)
        # STATUS= is refreshed every 5 s; a few pings later it is there.
        status = await notify_socket.wait_for(lambda d: d.startswith("STATUS="), start=ready + 1)
        await notify_socket.wait_for(is_watchdog, start=status)
        process.signal(signal.SIGTERM)
        stopping = await notify_socket.wait_for(lambda d: "STOPPING=1" in d.split("\n"), start=status)
        assert await process.wait() == 0
    finally:
        await process.kill()

    received = notify_socket.datagrams
    assert ready == 0, received[:3]
    assert f"MAINPID={process.proc.pid}" in received[ready].split("\n") if process.proc else False
    assert ready < first_ping < status < stopping
    assert (
        "dry run" in received[status] and "readings/s" in received[status] and "store 0/" in received[status]
    )
    assert sum(is_watchdog(d) for d in received[:stopping]) >= 3
    assert not any("READY=1" in d for d in received[ready + 1 :])


async def test_watchdog_pings_stop_when_a_driver_loop_hangs(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    config = write_config(
        tmp_path,
        SIMULATED
        + """
[devices.stuck-1]
driver = "faulty"
interval = 0.05
hang_after = 10          # then awaits forever: the event loop still turns
max_silence = 1.0
""",
    )
    process = await start_gateway(config, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=WATCHDOG_USEC)
    try:
        ready = await notify_socket.wait_for(lambda d: "READY=1" in d)
        await notify_socket.wait_for(is_watchdog, start=ready)
        line = await process.wait_for(lambda s: "watchdog: pipeline stuck" in s, stream="stderr")
        assert "faulty[stuck-1]: its loop made no progress" in line
        assert "ERROR" in line
        # From here, several watchdog periods (0.4 s) pass with no ping while the rest keeps running.
        mark = len(notify_socket.datagrams)
        printed = len(process.stdout)
        await process.wait_for(lambda s: "/alpha/telemetry " in s, start=printed + 40)
        status = await notify_socket.wait_for(lambda d: "STUCK" in d, start=mark, timeout=10)
        assert not any(is_watchdog(d) for d in notify_socket.datagrams[mark:]), notify_socket.datagrams[mark:]
        assert "faulty[stuck-1]" in notify_socket.datagrams[status]
        process.signal(signal.SIGTERM)
        assert await process.wait() == 0
    finally:
        await process.kill()


async def test_watchdog_pings_stop_when_a_driver_blocks_the_event_loop(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    config = write_config(
        tmp_path,
        """
[devices.blocker]
driver = "faulty"
interval = 0.05
hang_after = 20          # then a synchronous sleep blocks the whole event loop
hang = "block"
""",
    )
    process = await start_gateway(config, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=WATCHDOG_USEC)
    try:
        ready = await notify_socket.wait_for(lambda d: "READY=1" in d)
        await notify_socket.wait_for(is_watchdog, start=ready)
        # The block begins right after the 20th poll cycle, before it is routed: the 19th message is
        # the last one printed.
        await process.wait_for(lambda s: "/blocker/telemetry " in s and '"seq":19,' in s)
        last_message = time.monotonic()
        await asyncio.sleep(2.0)  # observing an absence needs time: five watchdog periods
        late = [t - last_message for t in notify_socket.arrived if t > last_message + 0.3]
        assert late == [], f"datagrams {late} s after the loop was blocked"
        assert not any('"seq":20,' in line for line in process.stdout)
    finally:
        await process.kill()


async def test_abstract_socket_names_are_supported(tmp_path: Path) -> None:
    listener = NotifyListener(f"@fieldgate-test-{tmp_path.name}")
    listener.start()
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "30000000"})
        assert notifier.enabled and notifier.watchdog_interval == 15.0
        assert notifier.ready("up")
        assert notifier.watchdog()
        await listener.wait_for(lambda d: d == "WATCHDOG=1")
        assert listener.datagrams[0].split("\n")[0] == "READY=1"
        assert "STATUS=up" in listener.datagrams[0].split("\n")
        notifier.close()
    finally:
        listener.close()


async def test_a_refused_config_exits_78_so_systemd_does_not_restart_it(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    config = write_config(tmp_path, SIMULATED.replace("interval = 0.05", 'interval = "fast"'))
    process = await start_gateway(config, NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC=WATCHDOG_USEC)

    assert await process.wait() == 78
    assert any("devices.alpha.interval" in line for line in process.stderr)
    assert notify_socket.datagrams == []  # never READY


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


class UnackedSink:
    """A sink whose broker never acknowledges: shutdown waits out its whole grace period."""

    #: No session figures: status shows a sink without a connection.
    stats = None

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        return asyncio.get_running_loop().create_future()


async def test_a_long_shutdown_keeps_pinging_at_the_same_pace(
    tmp_path: Path, notify_socket: NotifyListener
) -> None:
    config = load_config(write_config(tmp_path, SIMULATED))  # shutdown_grace = 1
    gateway = Gateway(config, UnackedSink())
    notifier = Notifier(notify_socket.address, watchdog_usec=400_000)
    service = asyncio.create_task(run_service(gateway, notifier))
    await notify_socket.wait_for(lambda d: "READY=1" in d)
    await notify_socket.wait_for(lambda d: d.startswith("STATUS="))  # messages are waiting by now

    started = time.monotonic()
    gateway.stop()
    stopping = await notify_socket.wait_for(lambda d: d.startswith("STOPPING=1"))
    await service
    took = time.monotonic() - started

    after = notify_socket.datagrams[stopping + 1 :]
    assert took >= 0.9  # the grace period was waited out
    assert sum(is_watchdog(d) for d in after) <= took / 0.2 + 2
    assert len(after) - sum(is_watchdog(d) for d in after) <= 2, after
