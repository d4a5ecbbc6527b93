"""Readings travel from a simulated device through the router to the sink; polling never waits for it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.model import Message, PublishOutcome, PublishResult

CONFIG = """
[gateway]
id = "gw-7"
site = "north"
stats_interval = 0
shutdown_grace = 0.2

[telemetry]
topic = "sites/{site}/{gateway}/{device}/telemetry"

[store]
kind = "memory"

[devices.tank]
driver = "simulated"
interval = 0.02

[[devices.tank.points]]
name = "level"
signal = "constant"
values = [42.5]
unit = "m"

[[devices.tank.points]]
name = "temp"
signal = "constant"
values = [-3]
unit = "°C"
"""


class CapturingSink:
    """Accepts every message at once, or - when ``stuck`` - never makes room (a dead uplink)."""

    #: No session figures: status shows a sink without a connection.
    stats = None

    def __init__(self, *, stuck: bool = False) -> None:
        self.messages: list[Message] = []
        self.stuck = stuck
        self.arrived = asyncio.Event()

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        if self.stuck:
            await asyncio.Event().wait()
        self.messages.append(message)
        self.arrived.set()
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult(PublishOutcome.DELIVERED))
        return future


async def wait_until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_reading_reaches_the_sink_with_the_configured_topic_and_payload() -> None:
    config = parse_config(CONFIG, Path("memory.toml"))
    sink = CapturingSink()
    gateway = Gateway(config, sink)
    task = asyncio.create_task(gateway.run(install_signal_handlers=False))

    await wait_until(lambda: len(sink.messages) >= 1)
    gateway.stop()
    await task

    first = sink.messages[0]
    assert first.topic == "sites/north/gw-7/tank/telemetry"
    payload = json.loads(first.payload)
    assert payload["seq"] == 1
    assert payload["gateway"] == "gw-7"
    assert payload["device"] == "tank"
    assert payload["points"] == {
        "level": {"value": 42.5, "unit": "m", "quality": "good"},
        "temp": {"value": -3.0, "unit": "°C", "quality": "good"},
    }
    assert first.qos == 1
    assert [json.loads(m.payload)["seq"] for m in sink.messages] == list(range(1, len(sink.messages) + 1))


async def test_a_stuck_uplink_does_not_delay_polling() -> None:
    config = parse_config(CONFIG, Path("memory.toml"))
    sink = CapturingSink(stuck=True)
    gateway = Gateway(config, sink)
    task = asyncio.create_task(gateway.run(install_signal_handlers=False))
    await gateway.wait_ready()
    driver = gateway._drivers["simulated[tank]"].driver

    # 50 poll cycles at 20 ms while the sink accepts nothing at all.
    await wait_until(lambda: driver.samples >= 50)  # type: ignore[attr-defined]
    gateway.stop()
    await task

    assert driver.skipped_ticks == 0  # type: ignore[attr-defined]
    assert sink.messages == []
    # Everything polled was routed into the store, waiting for the uplink.
    assert len(gateway.store) >= 49
    assert gateway.readings.dropped == 0


async def test_a_full_reading_queue_drops_the_oldest_and_counts() -> None:
    text = CONFIG.replace('kind = "memory"', 'kind = "memory"\nmax_messages = 10')
    config = parse_config(text, Path("memory.toml"))
    sink = CapturingSink(stuck=True)
    gateway = Gateway(config, sink)
    task = asyncio.create_task(gateway.run(install_signal_handlers=False))
    await gateway.wait_ready()

    await wait_until(lambda: gateway.store.dropped >= 5)
    gateway.stop()
    await task

    assert len(gateway.store) == 10
    assert "dropped 0, store 10/10" in gateway.stats_line()


async def test_unbatched_devices_publish_one_message_per_point() -> None:
    text = CONFIG.replace(
        "interval = 0.02", 'interval = 0.02\nbatch = false\ntopic = "sites/{site}/{device}/{point}"'
    )
    config = parse_config(text, Path("memory.toml"))
    sink = CapturingSink()
    gateway = Gateway(config, sink)
    task = asyncio.create_task(gateway.run(install_signal_handlers=False))
    await wait_until(lambda: len(sink.messages) >= 2)
    gateway.stop()
    await task

    assert {m.topic for m in sink.messages[:2]} == {"sites/north/tank/level", "sites/north/tank/temp"}
    level = next(json.loads(m.payload) for m in sink.messages if m.topic.endswith("level"))
    assert level["point"] == "level" and level["value"] == 42.5 and level["unit"] == "m"
