"""What each PUBACK refusal code means for the message: a scripted MQTT v5 peer answers every PUBLISH with
the reason code named by its topic, so the uplink sees every code Event Grid may send (the local broker
gives 0x97 and 0x87 only; the quota e2e test covers those against it).

Throttling codes (0x97, 0x80, 0x83) slow the uplink down and the message comes back as RETRY (kept and
resent); 0x87 and 0x99 are final (REFUSED); any other refusal is RETRY without a slowdown (resent within
the pump's bound, then put aside)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.auth import SignerTokenSource
from gateway.config.limits import LimitsConfig
from gateway.config.uplink import ReconnectConfig, SignerTokenConfig, UplinkConfig
from gateway.model import Message
from gateway.uplink import PublishOutcome, Uplink
from tests.support.mqtt5_raw import PROP_RECEIVE_MAXIMUM, encode_properties
from tests.support.tokens import generate_rsa_key_pair
from tests.uplink.conftest import running
from tests.uplink.test_uplink_reauth_answers import ScriptedBroker, packet


class CodeAnsweringBroker(ScriptedBroker):
    """Answers a QoS 1 PUBLISH to ``codes/<hex>`` with PUBACK <hex>; ``disconnect/<hex>`` with DISCONNECT."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head, body = await self._read(reader)
                kind = head >> 4
                if kind == 1:  # CONNECT
                    writer.write(packet(0x20, b"\x00\x00" + encode_properties([(PROP_RECEIVE_MAXIMUM, 20)])))
                elif kind == 3:
                    topic_len = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + topic_len].decode()
                    kind_of_answer, code = topic.split("/")
                    if kind_of_answer == "disconnect" and self.connections == 1:
                        writer.write(packet(0xE0, bytes([int(code, 16), 0])))
                        await writer.drain()
                        return
                    answer = 0 if kind_of_answer == "disconnect" else int(code, 16)
                    writer.write(packet(0x40, body[2 + topic_len : 4 + topic_len] + bytes([answer, 0])))
                elif kind == 12:
                    writer.write(packet(0xD0, b""))
                elif kind == 14:
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def code_broker() -> AsyncIterator[CodeAnsweringBroker]:
    peer = CodeAnsweringBroker("accept")
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    async with server:
        yield peer


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_rsa_key_pair(tmp_path_factory.mktemp("codes-keys"), "issuer")[0]


def uplink_to(key: Path, port: int) -> Uplink:
    token = SignerTokenConfig(
        key_file=key, issuer="https://fieldgate.dev/issuer", subject="gw-1", audience=("aud",), lifetime=600
    )
    cfg = UplinkConfig(
        host="127.0.0.1",
        port=port,
        tls=False,
        token=token,
        client_id="gw-1",
        reconnect=ReconnectConfig(initial=0.1, maximum=0.5),
        limits=LimitsConfig(messages_per_second=200),
    )
    return Uplink(cfg, SignerTokenSource(token), gateway_id="gw-1", site="s")


@pytest.mark.parametrize(
    ("code", "outcome", "slows_down"),
    [
        (0x97, PublishOutcome.RETRY, True),
        (0x80, PublishOutcome.RETRY, True),
        (0x83, PublishOutcome.RETRY, True),
        (0x90, PublishOutcome.RETRY, False),
        (0x87, PublishOutcome.REFUSED, False),
        (0x99, PublishOutcome.REFUSED, False),
        (0x10, PublishOutcome.DELIVERED, False),
    ],
)
async def test_each_puback_code_decides_the_message_fate(
    key: Path, code: int, outcome: PublishOutcome, slows_down: bool
) -> None:
    async with code_broker() as peer:
        uplink = uplink_to(key, peer.port)
        async with running(uplink):
            result = await (await uplink.send(Message(topic=f"codes/{code:02x}", payload=b"{}")))
            stats = uplink.stats
    assert (result.outcome, result.reason_code) == (outcome, code)
    assert (stats.throttled, stats.allowed_rate < 200) == ((1, True) if slows_down else (0, False))


async def test_a_throttling_disconnect_slows_down_and_the_message_in_flight_is_resent(key: Path) -> None:
    async with code_broker() as peer:
        uplink = uplink_to(key, peer.port)
        async with running(uplink):
            first = await (await uplink.send(Message(topic="disconnect/97", payload=b"{}")))
            again = await (await uplink.send(Message(topic="disconnect/97", payload=b"{}")))
            stats = uplink.stats
    assert first.outcome is PublishOutcome.LOST  # the pump releases it: resent, not deleted
    assert again.outcome is PublishOutcome.DELIVERED
    assert stats.throttled == 1 and stats.allowed_rate < 200 and peer.connections == 2
