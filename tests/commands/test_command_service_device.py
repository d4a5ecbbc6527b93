"""The command service against a real, slow Modbus TCP slave: a command that takes longer than its timeout
fails with 'timeout', commands beyond the device's queue are refused 'busy', and a command whose Message
Expiry passes while it waits behind another is refused 'expired' instead of running late."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from drivers.modbus.driver import ModbusLinkDriver, build_drivers
from gateway.commands.service import CommandService
from gateway.config.commands import CommandsConfig
from gateway.model import DeviceInfo, InboundHandler, InboundMessage, PublishOutcome, PublishResult
from tests.modbus.conftest import sim
from tests.modbus.helpers import parse


class Replies:
    """The transport side: subscriptions kept, responses collected by correlation data."""

    def __init__(self) -> None:
        self.handlers: dict[str, InboundHandler] = {}
        self.by_correlation: dict[bytes, dict[str, Any]] = {}
        self.arrived = asyncio.Event()

    def subscribe(self, filters: Sequence[str], handler: InboundHandler) -> None:
        for f in filters:
            self.handlers[f] = handler

    async def respond(self, topic: str, payload: bytes, correlation_data: bytes | None) -> PublishResult:
        self.by_correlation[correlation_data or b""] = json.loads(payload)
        self.arrived.set()
        return PublishResult(PublishOutcome.DELIVERED)

    async def wait(self, correlation: bytes, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while correlation not in self.by_correlation:
                self.arrived.clear()
                await self.arrived.wait()
        return self.by_correlation[correlation]


@contextlib.asynccontextmanager
async def slow_plc(
    delay: float, timeout: float
) -> AsyncIterator[tuple[CommandService, Replies, ModbusLinkDriver, Any]]:
    stats = sim.Slowness()
    server, port = await sim.start_tcp(
        [sim.device(1, holding=[5], action=sim.slow(delay, stats))], sim.Faults()
    )
    config, problems = parse(
        f"""
[devices.plc]
driver = "modbus"
host = "127.0.0.1"
port = {port}
timeout = 2.0
[devices.plc.points.sp]
address = 0
type = "int16"
writable = true
interval = 60
"""
    )
    assert problems == []
    (driver,) = build_drivers(config)
    replies = Replies()
    service = CommandService(
        CommandsConfig(topic="cmd/{device}", timeout=timeout, queue=2, response_topic="replies"),
        gateway_id="g",
        site="s",
        devices=[DeviceInfo("plc", "modbus")],
        transport=replies,
    )
    service.attach(driver)
    tasks = [
        asyncio.create_task(driver.run(lambda readings: None), name="modbus"),
        asyncio.create_task(service.run(), name="commands"),
    ]
    try:
        yield service, replies, driver, stats
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await driver.close()
        await server.shutdown()


def command(body: dict[str, Any], correlation: bytes, *, expiry: int | None = None) -> InboundMessage:
    return InboundMessage(
        "cmd/plc",
        json.dumps(body).encode(),
        qos=1,
        response_topic="replies",
        correlation_data=correlation,
        message_expiry=expiry,
        received_at=time.monotonic(),
    )


async def test_a_device_slower_than_the_timeout_fails_the_command_with_timeout() -> None:
    async with slow_plc(delay=1.0, timeout=0.5) as (service, replies, _, _):
        service.on_message(command({"write": {"point": "sp", "value": 7}}, b"slow"))
        reply = await replies.wait(b"slow")
    assert reply["status"] == "failed" and reply["reason"] == "timeout", reply
    assert "no outcome within 0.5 s; the write may or may not have been applied" in reply["detail"]


async def test_a_full_queue_refuses_busy_and_a_command_expiring_while_it_waits_is_not_run_late() -> None:
    async with slow_plc(delay=0.7, timeout=2.0) as (service, replies, _, device):
        service.on_message(command({"read": {}}, b"first"))
        async with asyncio.timeout(5):
            while device.in_flight == 0:  # the slave is answering the first read (0.7 s)
                await asyncio.sleep(0.01)
        service.on_message(command({"read": {}}, b"second"))  # waits ~0.7 s, runs ~0.7 s
        # Expires in 1 s, but ~1.4 s of work is ahead of it: it must be refused, not run late.
        service.on_message(command({"write": {"point": "sp", "value": 8}}, b"expiring", expiry=1))
        service.on_message(command({"read": {}}, b"third"))  # two are waiting (queue = 2): busy
        busy = await replies.wait(b"third")
        assert (busy["status"], busy["reason"]) == ("refused", "busy"), busy
        assert "2 commands are already waiting for plc" in busy["detail"]
        assert (await replies.wait(b"first"))["status"] == "done"
        assert (await replies.wait(b"second"))["status"] == "done"
        expired = await replies.wait(b"expiring")
    assert (expired["status"], expired["reason"]) == ("refused", "expired"), expired
    assert "message expiry interval (1 s) passed before it could run" in expired["detail"]
    assert (service.counters.busy, service.counters.expired, service.counters.done) == (1, 1, 2)
