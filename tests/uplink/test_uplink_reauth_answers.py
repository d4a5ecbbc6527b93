"""Re-authentication and takeover answers that Debian 12's mosquitto 2.0.11 never gives.

mosquitto >= 2.0.13 answers a refused AUTH with DISCONNECT 0x87 (2.0.11 sends CONNACK 0x87, covered
against the real broker in test_uplink_broker.py); a broker may also never answer, or ask to continue
(AUTH 0x18), which JWT methods never need. mosquitto 2.0.11 closes a session another client took over
without the DISCONNECT 0x8E (Session taken over) that MQTT v5 and Event Grid send. No packaged broker
here behaves like that, so a scripted MQTT v5 peer on a real TCP socket plays the broker's side of
exactly these exchanges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from gateway.auth import SignerTokenSource, Token
from gateway.config.uplink import ReconnectConfig, RefreshConfig, SignerTokenConfig, UplinkConfig
from gateway.errors import TokenError
from gateway.model import Message
from gateway.uplink import PublishOutcome, Uplink
from tests.support.mqtt5_raw import (
    PROP_AUTH_METHOD,
    PROP_RECEIVE_MAXIMUM,
    encode_properties,
    encode_varint,
)
from tests.support.tokens import generate_rsa_key_pair
from tests.uplink.conftest import LogWatch, running


def packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + encode_varint(len(body)) + body


@dataclass
class ScriptedBroker:
    """Accepts CONNECT and QoS 1 PUBLISH; answers each AUTH as ``answer`` says."""

    answer: str
    connections: int = 0
    auths: int = 0
    tokens: list[bytes] = field(default_factory=list)
    port: int = 0

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return head, await reader.readexactly(length)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head, body = await self._read(reader)
                kind = head >> 4
                if kind == 1:  # CONNECT
                    writer.write(packet(0x20, b"\x00\x00" + encode_properties([(PROP_RECEIVE_MAXIMUM, 20)])))
                    if self.answer == "takeover":  # another client with our client id connected
                        writer.write(packet(0xE0, b"\x8e\x00"))
                        await writer.drain()
                        return
                elif kind == 3:  # PUBLISH, QoS 1: PUBACK success
                    topic_len = int.from_bytes(body[:2], "big")
                    writer.write(packet(0x40, body[2 + topic_len : 4 + topic_len] + b"\x00"))
                elif kind == 15:  # AUTH
                    self.auths += 1
                    self.tokens.append(body)
                    if self.answer == "disconnect":
                        writer.write(packet(0xE0, b"\x87\x00"))
                        await writer.drain()
                        return
                    if self.answer == "accept":
                        writer.write(packet(0xF0, b"\x00"))
                    if self.answer == "continue":
                        props = encode_properties([(PROP_AUTH_METHOD, "CUSTOM-JWT")])
                        writer.write(packet(0xF0, b"\x18" + props))
                    # "silent": no answer at all
                elif kind == 12:  # PINGREQ
                    writer.write(packet(0xD0, b""))
                elif kind == 14:  # DISCONNECT
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def scripted(answer: str) -> AsyncIterator[ScriptedBroker]:
    peer = ScriptedBroker(answer)
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    peer.port = server.sockets[0].getsockname()[1]
    async with server:
        yield peer


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_rsa_key_pair(tmp_path_factory.mktemp("scripted-keys"), "issuer")[0]


def config(key: Path, port: int) -> UplinkConfig:
    token = SignerTokenConfig(
        key_file=key, issuer="https://fieldgate.dev/issuer", subject="gw-1", audience=("aud",), lifetime=2.0
    )
    return UplinkConfig(
        host="127.0.0.1",
        port=port,
        tls=False,
        token=token,
        client_id="gw-1",
        refresh=RefreshConfig(jitter=0.0, timeout=1.0),
        reconnect=ReconnectConfig(initial=0.1, maximum=0.5),
    )


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        ("disconnect", "token refresh refused: DISCONNECT 0x87 Not authorized"),
        ("silent", "token refresh refused: no answer to AUTH 0x19 within 1 s"),
        ("continue", "token refresh refused: AUTH 0x18 Continue authentication"),
    ],
)
async def test_a_refresh_that_is_not_answered_with_auth_success_ends_in_a_reconnect(
    key: Path, caplog: pytest.LogCaptureFixture, watch: LogWatch, answer: str, logged: str
) -> None:
    caplog.set_level(logging.DEBUG)
    async with scripted(answer) as peer:
        cfg = config(key, peer.port)
        source = SignerTokenSource(cfg.token)  # type: ignore[arg-type]
        uplink = Uplink(cfg, source, gateway_id="gw-1", site="s")
        async with running(uplink):
            connected_again = lambda: uplink.stats.connects >= 2 and uplink.stats.connected  # noqa: E731
            await watch.wait_for(connected_again, "the reconnect", 10)
            result = await (await uplink.send(Message(topic="t/x", payload=b"after")))
            stats = uplink.stats
    assert result.outcome is PublishOutcome.DELIVERED
    assert stats.refreshes_failed >= 1 and stats.refreshes_ok == 0 and peer.connections >= 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(logged in w for w in warnings), warnings
    disconnects = [w for w in warnings if "uplink disconnected" in w]
    assert disconnects and "token refresh refused" in disconnects[0]


class FlakySource:
    """A signer whose next fetches fail (as an unreachable token service would)."""

    def __init__(self, signer: SignerTokenSource) -> None:
        self._signer = signer
        self.failures_left = 0
        self.auth_method = signer.auth_method
        self.description = "flaky test signer"

    def invalidate(self) -> None:
        self._signer.invalidate()

    async def get_token(self) -> Token:
        if self.failures_left:
            self.failures_left -= 1
            raise TokenError("token service unreachable (test)")
        return await self._signer.get_token()


async def test_a_failed_token_fetch_is_retried_while_the_current_token_is_valid(
    key: Path, caplog: pytest.LogCaptureFixture, watch: LogWatch
) -> None:
    caplog.set_level(logging.DEBUG)
    async with scripted("accept") as peer:
        cfg = config(key, peer.port)
        source = FlakySource(SignerTokenSource(cfg.token))  # type: ignore[arg-type]
        uplink = Uplink(cfg, source, gateway_id="gw-1", site="s")
        async with running(uplink):
            source.failures_left = 2
            await watch.wait_for(lambda: uplink.stats.refreshes_ok >= 1, "a refresh after the failures", 10)
            stats = uplink.stats
    assert stats.connects == 1 and peer.connections == 1 and stats.refreshes_failed == 0
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "token refresh" in r.getMessage()]
    warned = [m for level, m in lines if level == logging.WARNING]
    assert len(warned) == 1 and "token service unreachable" in warned[0] and "retrying" in warned[0]
    assert (logging.INFO, "token refresh: a fresh token was obtained again") in lines


async def test_a_session_takeover_loop_is_logged_once_with_its_reason_code_and_backed_off(
    key: Path, caplog: pytest.LogCaptureFixture, watch: LogWatch
) -> None:
    """Each CONNECT is accepted, then the session is taken over (DISCONNECT 0x8E) at once; later the
    other client goes away and a connection stays up."""
    caplog.set_level(logging.DEBUG)
    async with scripted("takeover") as peer:
        reconnect = ReconnectConfig(initial=0.05, maximum=0.4, stable_after=1.0)
        cfg = replace(config(key, peer.port), reconnect=reconnect)
        uplink = Uplink(cfg, SignerTokenSource(cfg.token), gateway_id="gw-1", site="s")
        async with running(uplink):
            await watch.wait_for(lambda: peer.connections >= 6, "six connections", 30)
            peer.answer = "accept"
            over = lambda: any("reconnect loop is over" in r.getMessage() for r in caplog.records)  # noqa: E731
            await watch.wait_for(over, "the end of the loop logged", 30)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "fieldgate.uplink"]
    loops = [m for level, m in records if level == logging.ERROR and "loop" in m]
    assert len(loops) == 1, loops
    assert loops[0].startswith("uplink: session-takeover loop:")
    assert "DISCONNECT 0x8E Session taken over" in loops[0] and "client id 'gw-1'" in loops[0]
    # The first takeover is a warning like any disconnect; from the loop on, only debug lines.
    warned = [m for level, m in records if level == logging.WARNING]
    assert len(warned) == 1 and "DISCONNECT 0x8E Session taken over" in warned[0]
