"""Pure pieces of the uplink: AUTH packet encoding, log redaction, refresh timing and backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from typing import Any

import aiomqtt
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth.token import Token
from gateway.config.uplink import RefreshConfig
from gateway.uplink.mqtt_auth import TokenRedactingFilter, encode_auth, install, paho_logger, redact
from gateway.uplink.session import Backoff, publish_packet_size, refresh_delay
from tests.support.mqtt5_raw import PROP_AUTH_DATA, PROP_AUTH_METHOD, _Reader

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJndy0xIn0.c2lnbmF0dXJlLXBhcnQ"


def test_auth_packet_carries_reason_method_and_data_and_nothing_else() -> None:
    packet = encode_auth(0x19, "CUSTOM-JWT", JWT.encode())
    assert packet[0] == 0xF0
    reader = _Reader(packet[1:])
    assert reader.varint() == reader.remaining()
    assert reader.byte() == 0x19
    props = reader.properties()
    assert props == {PROP_AUTH_METHOD: "CUSTOM-JWT", PROP_AUTH_DATA: JWT.encode()}
    assert reader.remaining() == 0


def test_a_long_token_gets_a_multi_byte_remaining_length() -> None:
    data = b"x" * 5000
    packet = encode_auth(0x19, "CUSTOM-JWT", data)
    reader = _Reader(packet[1:])
    assert reader.varint() == len(packet) - 3


def test_redact_hides_jwts_and_authentication_data() -> None:
    line = f"Sending CONNECT properties=[SessionExpiryInterval : 3600, AuthenticationData : b'{JWT}']"
    assert JWT not in redact(line) and "SessionExpiryInterval : 3600" in redact(line)
    assert redact(f"token {JWT} here") == "token <token hidden> here"
    assert redact("AuthenticationData : b'opaque-secret', next") == "AuthenticationData : <hidden>, next"


def test_the_paho_logger_filter_rewrites_records_that_carry_a_token() -> None:
    logger = paho_logger("fieldgate.test.paho")
    assert sum(isinstance(f, TokenRedactingFilter) for f in logger.filters) == 1
    assert paho_logger("fieldgate.test.paho") is logger
    assert sum(isinstance(f, TokenRedactingFilter) for f in logger.filters) == 1
    record = logging.LogRecord(
        "x", logging.DEBUG, __file__, 1, "props=%s", (f"[AuthenticationData : b'{JWT}']",), None
    )
    assert TokenRedactingFilter().filter(record)
    assert JWT not in record.getMessage()


def token(issued: float, lifetime: float) -> Token:
    return Token(value=JWT, expires_at=issued + lifetime, issued_at=issued)


def test_refresh_happens_at_80_percent_or_the_margin_before_expiry_whichever_is_first() -> None:
    no_jitter = RefreshConfig(fraction=0.8, margin=60, jitter=0)
    rng = random.Random(1)
    assert refresh_delay(token(1000, 3600), no_jitter, 1000, rng) == 0.8 * 3600
    # A margin larger than 20% of the lifetime wins.
    assert refresh_delay(token(1000, 3600), RefreshConfig(margin=900, jitter=0), 1000, rng) == 2700
    # Short development tokens: a margin that would leave less than half the lifetime is ignored.
    assert refresh_delay(token(1000, 5), no_jitter, 1000, rng) == 4.0
    # A token already past its refresh point is refreshed now.
    assert refresh_delay(token(1000, 5), no_jitter, 1010, rng) == 0.0


@given(lifetime=st.floats(5, 86400), jitter=st.floats(0, 600), seed=st.integers(0, 2**32))
def test_jitter_only_ever_moves_the_refresh_earlier_and_by_at_most_10_percent(
    lifetime: float, jitter: float, seed: int
) -> None:
    cfg = RefreshConfig(fraction=0.8, margin=0, jitter=jitter)
    delay = refresh_delay(token(0, lifetime), cfg, 0, random.Random(seed))
    assert 0.7 * lifetime - 1e-6 <= delay <= 0.8 * lifetime + 1e-6


def test_backoff_doubles_up_to_the_maximum_with_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(7))
    delays = [backoff.next() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0


def test_publish_packet_size_counts_header_topic_packet_id_and_properties() -> None:
    assert publish_packet_size("a/b", 10, 1) == 1 + 1 + 2 + 3 + 2 + 1 + 10
    assert publish_packet_size("a/b", 10, 0) == 1 + 1 + 2 + 3 + 1 + 10
    assert publish_packet_size("t", 524288, 1) == 1 + 3 + 2 + 1 + 2 + 1 + 524288


async def test_a_socket_closed_before_aiomqtt_registers_it_leaves_no_traceback() -> None:
    # aiomqtt registers paho's socket through call_soon_threadsafe(loop.add_writer, fd, ...); a peer that
    # accepts and resets at once (a relay in front of a stopped broker) closes the fd before that runs.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    def register_closed_socket(on: Any) -> None:
        sock = socket.socket()
        fd = sock.fileno()
        sock.close()
        on.call_soon_threadsafe(on.add_writer, fd, lambda: None)
        on.call_soon_threadsafe(on.add_reader, fd, lambda: None)

    try:
        register_closed_socket(loop)  # the plain loop: what asyncio does without the guard
        await asyncio.sleep(0.01)
        assert len(reported) == 2

        client = aiomqtt.Client("127.0.0.1", 1)
        install(client)
        register_closed_socket(client._loop)
        await asyncio.sleep(0.01)
        assert len(reported) == 2
    finally:
        loop.set_exception_handler(None)
