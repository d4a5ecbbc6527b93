"""At start the drivers wait for the uplink's first connect attempt, at most ``UPLINK_HEAD_START``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.app import UPLINK_HEAD_START, Gateway
from gateway.config import parse_config
from gateway.model import Message, PublishResult, UplinkStats

CONFIG = """
[gateway]
id = "gw-7"
site = "north"
stats_interval = 0
shutdown_grace = 0.2

[store]
kind = "memory"

[devices.tank]
driver = "simulated"
interval = 0.02

[[devices.tank.points]]
name = "level"
signal = "constant"
values = [42.5]
"""


class ConnectingSink:
    """An uplink whose first connect attempt ends after ``after`` seconds (None: never), well or not."""

    def __init__(self, after: float | None, *, fails: bool = False) -> None:
        self.after = after
        self.fails = fails
        self.connected = False
        self.failed = 0

    @property
    def stats(self) -> UplinkStats:
        return UplinkStats(
            connected=self.connected,
            connected_since=None,
            connects=int(self.connected),
            connections=int(self.connected),
            refreshes_ok=0,
            refreshes_failed=0,
            published=0,
            delivered=0,
            refused=0,
            lost=0,
            token_expires_at=None,
            inflight=0,
            failed_connects=self.failed,
        )

    async def run(self) -> None:
        if self.after is not None:
            await asyncio.sleep(self.after)
            if self.fails:
                self.failed += 1
            else:
                self.connected = True
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def seconds_to_ready(sink: ConnectingSink) -> tuple[float, bool]:
    """Seconds from run() until the drivers are started, and whether the sink was connected by then."""
    gateway = Gateway(parse_config(CONFIG, Path("start.toml")), sink)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(gateway.run(install_signal_handlers=False))
    try:
        async with asyncio.timeout(5):
            await gateway.wait_ready()
        assert gateway.driver_names == ["simulated[tank]"]
        return loop.time() - started, sink.connected
    finally:
        gateway.stop()
        await task


async def test_the_drivers_start_once_the_uplink_is_connected() -> None:
    elapsed, connected = await seconds_to_ready(ConnectingSink(0.05))
    assert connected
    assert 0.05 <= elapsed < UPLINK_HEAD_START


async def test_a_failed_first_attempt_starts_the_drivers_at_once() -> None:
    elapsed, connected = await seconds_to_ready(ConnectingSink(0.03, fails=True))
    assert not connected
    assert 0.03 <= elapsed < UPLINK_HEAD_START


@pytest.mark.parametrize("after", [None, 2.0], ids=["never", "slow"])
async def test_an_uplink_that_takes_long_delays_the_drivers_by_the_bound_at_most(after: float | None) -> None:
    elapsed, connected = await seconds_to_ready(ConnectingSink(after))
    assert not connected
    assert UPLINK_HEAD_START <= elapsed < UPLINK_HEAD_START + 0.5
