"""An independent MQTT v5 subscriber: what reaches the broker, seen by a client that knows nothing of the
gateway.

    class Counting(Subscriber):
        def __init__(self, broker: LocalBroker) -> None:
            super().__init__(broker, identifier="witness", filters=["plants/#"])
            self.seqs: Counter[int] = Counter()

        def on_message(self, message: aiomqtt.Message) -> None:
            self.seqs[json.loads(message.payload)["seq"]] += 1

    async with Counting(broker).running() as witness:
        await wait_until(lambda: len(witness.seqs) > 20, 30, "first deliveries")

It authenticates like the gateway (a token from ``tokens.mint_token`` in the CONNECT's Authentication
Method/Data, the method the broker was started with), subscribes at QoS 1, and by default connects again
whenever the connection is lost (the broker restarted, or was stopped and started on a new port).
``reconnect=False`` makes a lost connection end ``run()`` with the ``MqttError`` instead, for a test whose
proof needs one unbroken subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes

from gateway.uplink.mqtt_auth import new_properties, paho_logger
from tests.support.broker import LocalBroker
from tests.support.tokens import mint_token


async def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    """Polls ``condition`` until true; AssertionError naming ``what`` if it is not within ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


class Subscriber:
    """Subscribes to the topic ``filters``; every message goes to ``on_message`` (override it)."""

    def __init__(
        self,
        broker: LocalBroker,
        *,
        identifier: str,
        filters: Sequence[str],
        reconnect: bool = True,
        lifetime: int = 3600,
        key: Path | None = None,
        issuer: str | None = None,
    ) -> None:
        self.broker = broker
        self.identifier = identifier
        self.filters = list(filters)
        self.reconnect = reconnect
        #: The token: signed with the broker's issuer key unless another key the broker trusts is given.
        self.token = mint_token(
            key or broker.private_key_path,
            sub=identifier,
            lifetime=lifetime,
            iss=issuer or broker.issuer,
            aud=broker.audience,
            subscribe_topics=self.filters,
        )
        #: Set while subscribed; cleared when the connection is lost.
        self.connected = asyncio.Event()
        #: Connections that got as far as subscribing, and messages received over all of them.
        self.connections = 0
        self.messages = 0

    def on_message(self, message: aiomqtt.Message) -> None:
        """What the test records of one message (called in order of arrival)."""

    async def run(self) -> None:
        while True:
            props = new_properties(PacketTypes.CONNECT)
            props.AuthenticationMethod = self.broker.method
            props.AuthenticationData = self.token.encode()
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier=self.identifier,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    properties=props,
                    logger=paho_logger(f"tests.{self.identifier}.paho"),  # with the token filter
                    max_queued_incoming_messages=0,  # unbounded: a slow test loop never loses a message
                ) as client:
                    for topic_filter in self.filters:
                        await client.subscribe(topic_filter, qos=1)
                    self.connections += 1
                    self.connected.set()
                    async for message in client.messages:
                        self.messages += 1
                        self.on_message(message)
            except aiomqtt.MqttError:
                self.connected.clear()
                if not self.reconnect:
                    raise
                await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def running(self, timeout: float = 20.0) -> AsyncIterator[Self]:
        """Runs the subscriber as a background task, yielding it once it is subscribed; cancels it after.

        If ``run()`` ended with an error (``reconnect=False``), leaving the block raises that error.
        """
        task = asyncio.create_task(self.run(), name=self.identifier)
        try:
            await wait_until(
                lambda: self.connected.is_set() or task.done(), timeout, f"the {self.identifier} subscribed"
            )
            if not self.connected.is_set():
                await task  # it ended before subscribing: its error
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
