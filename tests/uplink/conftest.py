"""Fixtures for the uplink against the real local broker (mosquitto 2.0.11 + our JWT plugin).

Every token any test hands out is remembered; after each test no log line captured from the gateway
(all loggers, paho's included, at DEBUG) or from the broker may contain one, nor any token's signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from gateway.auth import SignerTokenSource, Token, token_from_jwt
from gateway.config.uplink import (
    ReconnectConfig,
    RefreshConfig,
    SignerTokenConfig,
    TokenConfig,
    UplinkConfig,
)
from gateway.uplink import Uplink
from gateway.uplink.mqtt_auth import new_properties, paho_logger
from tests.support.broker import LocalBroker
from tests.support.tokens import generate_rsa_key_pair, mint_token

GATEWAY = "gw-1"
SITE = "plant-7"
#: The topics the gateway's tokens grant.
GRANTED = f"plants/{SITE}/#"


@pytest.fixture(scope="session")
def issuer_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("uplink-issuer")
    generate_rsa_key_pair(directory, "issuer")
    return directory


@pytest.fixture(scope="module")
def broker(issuer_key: Path) -> Iterator[LocalBroker]:
    with LocalBroker(keys_dir=issuer_key) as running:
        yield running


@dataclass
class TokenLedger:
    """Every token handed out during a test, to prove none leaks into a log."""

    tokens: list[str] = field(default_factory=list)

    def add(self, value: str) -> str:
        self.tokens.append(value)
        return value

    def leaks(self, lines: list[str]) -> list[str]:
        secrets = {t for t in self.tokens} | {t.split(".")[2] for t in self.tokens}
        return [line for line in lines if any(s in line for s in secrets)]


@pytest.fixture
def ledger(broker: LocalBroker, caplog: pytest.LogCaptureFixture) -> Iterator[TokenLedger]:
    caplog.set_level(logging.DEBUG)
    book = TokenLedger()
    yield book
    gateway_lines = [r.getMessage() for r in caplog.records]
    gateway_lines += [r.exc_text or "" for r in caplog.records]
    assert book.leaks(gateway_lines) == [], "a token reached a gateway log line"
    assert book.leaks(broker.log_lines()) == [], "a token reached a broker log line"


class RecordingSource:
    """A real signer whose tokens are recorded; a test may queue other tokens to hand out next."""

    def __init__(self, config: SignerTokenConfig, ledger: TokenLedger) -> None:
        self._signer = SignerTokenSource(config)
        self._ledger = ledger
        self.queued: list[str] = []
        self.handed_out = 0

    @property
    def auth_method(self) -> str:
        return self._signer.auth_method

    @property
    def description(self) -> str:
        return "test " + self._signer.description

    def invalidate(self) -> None:
        self._signer.invalidate()

    async def get_token(self) -> Token:
        self.handed_out += 1
        if self.queued:
            return token_from_jwt(self._ledger.add(self.queued.pop(0)), where="queued test token")
        token = await self._signer.get_token()
        self._ledger.add(token.value)
        return token


def signer_config(broker: LocalBroker, *, sub: str = GATEWAY, lifetime: float = 300.0) -> SignerTokenConfig:
    return SignerTokenConfig(
        key_file=broker.private_key_path,
        issuer=broker.issuer,
        subject=sub,
        audience=(broker.audience,),
        lifetime=lifetime,
        # mosquitto and the gateway share one clock here; a skew would only make nbf older.
        not_before_skew=5.0,
        claims=(("publish_topics", (GRANTED,)),),
    )


def uplink_config(broker: LocalBroker, token: TokenConfig, **overrides: Any) -> UplinkConfig:
    cfg = UplinkConfig(
        host=broker.host,
        port=broker.port,
        tls=False,
        token=token,
        client_id=GATEWAY,
        refresh=RefreshConfig(jitter=0.2, timeout=3.0),
        reconnect=ReconnectConfig(initial=0.1, maximum=1.0),
        connect_timeout=5.0,
    )
    return replace(cfg, **overrides)


@contextlib.asynccontextmanager
async def running(uplink: Uplink, *, connected: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run the uplink as the app would (a named task), and stop it at the end."""
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        if connected:
            waiter = asyncio.create_task(uplink.wait_connected())
            done, _ = await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
            assert waiter in done, "the uplink did not connect within 15 s"
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Subscriber:
    """An independent client (its own long token, granted subscribe) counting what arrives."""

    messages: list[aiomqtt.Message] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def payloads(self) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages if isinstance(m.payload, bytes | bytearray)]

    async def wait_for(self, predicate: Callable[[Subscriber], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate(self):
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def subscriber(
    broker: LocalBroker, ledger: TokenLedger, topic_filter: str
) -> AsyncIterator[Subscriber]:
    token = ledger.add(
        mint_token(
            broker.private_key_path,
            sub="observer",
            lifetime=600,
            iss=broker.issuer,
            aud=broker.audience,
            subscribe_topics=[topic_filter],
        )
    )
    props = new_properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = "CUSTOM-JWT"
    props.AuthenticationData = token.encode()
    sub = Subscriber()
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier="observer",
        protocol=aiomqtt.ProtocolVersion.V5,
        properties=props,
        # Its CONNECT carries its token too: same redacting logger as the gateway's.
        logger=paho_logger("tests.observer.paho"),
    ) as client:
        await client.subscribe(topic_filter, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                sub.messages.append(message)
                sub.arrived.set()

        task = asyncio.create_task(collect(), name="observer")
        try:
            yield sub
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class LogWatch(logging.Handler):
    """Wakes waiters on every log record: the uplink logs each state change, so a condition on its
    state is re-checked exactly when something happened (no polling)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        # paho logs from the thread that runs connect(): hand the wake-up to the loop.
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait_for(self, predicate: Callable[[], bool], what: str, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {within} s waiting for {what}") from None


@pytest.fixture
async def watch() -> AsyncIterator[LogWatch]:
    handler = LogWatch()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def broker_lines(broker: LocalBroker, needle: str, since: int = 0) -> list[str]:
    return [line for line in broker.log_lines()[since:] if needle in line]
