"""Event Grid's per-session quotas and limits, enforced by the local broker's quota proxy
(deploy/broker/quota_proxy.py): every test speaks raw MQTT v5 and sees the real packet and reason
code, then reads the proxy's counters.

Limits are made small (20 publishes/s, ...) so that the tests are quick. Rates are token buckets
holding one second's worth: over `elapsed` seconds a session gets at most limit * (1 + elapsed)
through, which is what the rate assertions allow (plus one for rounding) - never a latency.
"""

from __future__ import annotations

import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.conftest import IssuerKeys
from tests.support.broker import LocalBroker
from tests.support.mqtt5_raw import (
    PROP_RETAIN_AVAILABLE,
    PUBLISH,
    SUBSCRIBE,
    Disconnect,
    MqttV5Client,
    Puback,
    Publish,
    Suback,
    encode_properties,
    encode_str,
    encode_varint,
)
from tests.support.tokens import mint_token

pytestmark = pytest.mark.broker

METHOD = "CUSTOM-JWT"
SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10
ACCEPTED = {SUCCESS, NO_MATCHING_SUBSCRIBERS}
GRANTED_QOS_1 = 0x01
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
QUOTA_EXCEEDED = 0x97
RETAIN_NOT_SUPPORTED = 0x9A

RATE = 20  # publishes per second in the rate tests


def start_broker(keys: IssuerKeys, **limits: Any) -> LocalBroker:
    return LocalBroker(keys_dir=keys.directory, quotas=True, **limits).start()


@pytest.fixture(scope="module")
def rate_broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    broker = start_broker(issuer_keys, publish_rate=RATE)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def disconnect_broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    broker = start_broker(issuer_keys, publish_rate=RATE, throttle="disconnect")
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def bytes_broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    """A small bandwidth quota and Event Grid's older 8 topic levels."""
    broker = start_broker(issuer_keys, byte_rate=20_000, topic_levels=8)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def inflight_broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    broker = start_broker(issuer_keys, inflight_messages=5, inflight_bytes=4096)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def default_broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    """Every limit at its documented default."""
    broker = start_broker(issuer_keys)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def roomy_broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    """Retain allowed, SUBSCRIBE rate high: the subscription count is the limit to reach."""
    broker = start_broker(issuer_keys, allow_retain=True, subscribe_rate=1000)
    yield broker
    broker.close()


Connect = Callable[..., MqttV5Client]


@pytest.fixture
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """connect(broker, suffix="") -> a connected raw client allowed to publish and subscribe
    anywhere; its client id is named after the test."""
    clients: list[MqttV5Client] = []

    def opener(broker: LocalBroker, suffix: str = "", **connect_kwargs: Any) -> MqttV5Client:
        token = mint_token(
            broker.private_key_path,
            sub="gw-q",
            iss=broker.issuer,
            aud=broker.audience,
            publish_topics=["#"],
            subscribe_topics=["#"],
        )
        client = MqttV5Client(broker.host, broker.port, timeout=20)
        clients.append(client)
        connack = client.connect(
            cid_of(request, suffix), auth_method=METHOD, auth_data=token, **connect_kwargs
        )
        assert connack.reason_code == SUCCESS, connack
        client.connack = connack  # type: ignore[attr-defined]
        return client

    yield opener
    for client in clients:
        client.close()


def cid_of(request: pytest.FixtureRequest, suffix: str = "") -> str:
    return f"{request.node.name[:40]}{suffix}"


def publish_packet(
    topic: str, payload: bytes, packet_id: int, *, qos: int = 1, retain: bool = False
) -> bytes:
    body = encode_str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    body += encode_properties([]) + payload
    return bytes([(PUBLISH << 4) | (qos << 1) | int(retain)]) + encode_varint(len(body)) + body


def burst(client: MqttV5Client, count: int, payload: bytes = b"x", topic: str = "q/burst") -> dict[int, int]:
    """Sends `count` QoS 1 publishes in one write and returns {packet id: PUBACK reason}."""
    client.sock.sendall(b"".join(publish_packet(topic, payload, i) for i in range(1, count + 1)))
    acks: dict[int, int] = {}
    while len(acks) < count:
        packet = client.read_packet()
        if isinstance(packet, Puback):
            acks[packet.packet_id] = packet.reason_code
    return acks


def subscribe_many(client: MqttV5Client, packet_id: int, filters: list[str]) -> None:
    body = struct.pack("!H", packet_id) + encode_properties([])
    body += b"".join(encode_str(f) + bytes([1]) for f in filters)
    client.send_packet(SUBSCRIBE, 0x02, body)


def read_suback(client: MqttV5Client) -> Suback:
    while True:
        packet = client.read_packet()
        if isinstance(packet, Suback):
            return packet


def session(broker: LocalBroker, cid: str, **expected: int) -> dict[str, int]:
    """The session's counters once each `expected` counter has its value (the stats file is
    rewritten ~0.1 s after a change); counters never touched read 0."""

    def holds(stats: dict[str, Any]) -> bool:
        counters = stats["sessions"].get(cid, {})
        return all(counters.get(name, 0) == value for name, value in expected.items())

    return defaultdict(int, broker.wait_for_stats(holds)["sessions"][cid])


# -- publish rate ----------------------------------------------------------------------------------


def test_a_burst_over_the_publish_rate_gets_puback_0x97_and_no_more_than_the_rate_passes(
    rate_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(rate_broker)
    start = time.monotonic()
    acks = burst(client, 3 * RATE)
    elapsed = time.monotonic() - start

    accepted = [pid for pid, code in acks.items() if code in ACCEPTED]
    throttled = [pid for pid, code in acks.items() if code == QUOTA_EXCEEDED]
    assert set(acks.values()) <= ACCEPTED | {QUOTA_EXCEEDED}
    assert throttled, "a burst of three seconds' worth must be throttled"
    # The bucket starts full (one second's worth) and refills at RATE/s while the burst lasts.
    assert len(accepted) <= RATE + RATE * elapsed + 1
    assert len(accepted) >= RATE  # a full second's worth always passes
    counters = session(
        rate_broker,
        cid_of(request),
        puback_0x97=len(throttled),
        throttled_rate=len(throttled),
        publishes_forwarded=len(accepted),
    )
    # The accepted ones fell into int(elapsed) + 2 whole seconds at most: the peak is a real count.
    assert len(accepted) / (int(elapsed) + 2) <= counters["peak_publishes_per_second"]
    assert counters["peak_publishes_per_second"] <= RATE + RATE * elapsed + 1
    line = rate_broker.wait_for_log(f"client '{cid_of(request)}' publish throttled: PUBACK 0x97 (rate 20/s)")
    assert "fieldgate_quota" in line


def test_the_session_sustains_its_rate_and_is_not_throttled_below_it(
    rate_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(rate_broker)
    # Half the rate, each publish awaited: never throttled however slow the machine is.
    for _ in range(RATE // 2):
        assert client.publish_qos1("q/slow", b"x").reason_code in ACCEPTED
    assert rate_broker.session_stats(cid_of(request)).get("puback_0x97", 0) == 0


def test_qos0_publishes_over_the_rate_are_dropped_and_counted(
    rate_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(rate_broker)
    client.sock.sendall(b"".join(publish_packet("q/zero", b"z", 0, qos=0) for _ in range(3 * RATE)))
    client.ping()  # answered after the burst was handled: the connection stays

    counters = rate_broker.wait_for_stats(
        lambda s: (
            sum(
                s["sessions"].get(cid_of(request), {}).get(k, 0)
                for k in ("dropped_qos0", "publishes_forwarded")
            )
            == 3 * RATE
        )
    )["sessions"][cid_of(request)]
    assert counters["dropped_qos0"] == counters["throttled_rate"] > 0
    assert counters.get("puback_0x97", 0) == 0
    rate_broker.wait_for_log(f"client '{cid_of(request)}' publish throttled: dropped (QoS 0) (rate 20/s)")


def test_in_disconnect_mode_a_burst_over_the_rate_gets_disconnect_0x97(
    disconnect_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(disconnect_broker)
    client.sock.sendall(b"".join(publish_packet("q/burst", b"x", i) for i in range(1, 3 * RATE + 1)))

    received = client.wait_closed(timeout=20)

    # mosquitto's PUBACKs for the publishes before the throttled one may still be on their way
    # when the proxy disconnects: the DISCONNECT is the last packet, and the only refusal.
    assert isinstance(received[-1], Disconnect) and received[-1].reason_code == QUOTA_EXCEEDED
    assert all(isinstance(p, Puback) and p.reason_code in ACCEPTED for p in received[:-1])
    counters = session(disconnect_broker, cid_of(request), disconnect_0x97=1, puback_0x97=0)
    assert RATE <= counters["publishes_forwarded"] < 3 * RATE
    disconnect_broker.wait_for_log(
        f"client '{cid_of(request)}' publish throttled: DISCONNECT 0x97 (rate 20/s)"
    )


def test_the_rate_is_per_session_and_survives_a_reconnect(
    rate_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    first = connect(rate_broker)
    assert any(code == QUOTA_EXCEEDED for code in burst(first, 3 * RATE).values())
    first.disconnect()
    # Same client id: the same session, whose bucket holds at most one second's worth however
    # long the reconnect took: two seconds' worth cannot all pass.
    second = connect(rate_broker)
    assert any(code == QUOTA_EXCEEDED for code in burst(second, 2 * RATE).values())
    # Another session has its own quota.
    other = connect(rate_broker, "-other")
    assert set(burst(other, RATE // 2).values()) <= ACCEPTED


# -- bandwidth and in-flight --------------------------------------------------------------------------


def test_a_burst_over_the_bandwidth_gets_puback_0x97(
    bytes_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(bytes_broker)
    start = time.monotonic()
    acks = burst(client, 15, b"b" * 3000)  # 45 kB: over two seconds' worth of 20 kB/s
    elapsed = time.monotonic() - start

    accepted = sum(code in ACCEPTED for code in acks.values())
    throttled = sum(code == QUOTA_EXCEEDED for code in acks.values())
    assert throttled and accepted + throttled == 15
    packet_size = len(publish_packet("q/burst", b"b" * 3000, 1))
    assert accepted * packet_size <= 20_000 * (1 + elapsed) + packet_size
    counters = session(bytes_broker, cid_of(request), throttled_bytes=throttled, throttled_rate=0)
    assert counters["bytes_forwarded"] == accepted * packet_size
    bytes_broker.wait_for_log(
        f"client '{cid_of(request)}' publish throttled: PUBACK 0x97 (bandwidth 20000 B/s)"
    )


def test_publishes_beyond_the_in_flight_bytes_get_puback_0x97(
    inflight_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(inflight_broker)
    # Four 1 kB publishes fill the 4096-byte window; the rest of the same write reaches the proxy
    # before mosquitto's PUBACKs for them come back.
    acks = burst(client, 12, b"i" * 1000)

    throttled = [pid for pid, code in acks.items() if code == QUOTA_EXCEEDED]
    assert throttled and min(throttled) > 4, acks
    session(
        inflight_broker,
        cid_of(request),
        throttled_inflight_bytes=len(throttled),
        throttled_inflight_messages=0,
    )
    inflight_broker.wait_for_log(
        f"client '{cid_of(request)}' publish throttled: PUBACK 0x97 (in-flight 4096 bytes)"
    )


def test_publishes_beyond_the_in_flight_messages_get_puback_0x97_in_publish_order(
    inflight_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(inflight_broker)
    client.sock.sendall(b"".join(publish_packet("q/n", b"n", i) for i in range(1, 16)))
    order: list[Puback] = []
    while len(order) < 15:
        packet = client.read_packet()
        if isinstance(packet, Puback):
            order.append(packet)

    assert [p.packet_id for p in order] == list(range(1, 16)), "PUBACKs come in the order of the publishes"
    codes = [p.reason_code for p in order]
    assert set(codes[:5]) <= ACCEPTED and QUOTA_EXCEEDED in codes[5:]
    throttled = codes.count(QUOTA_EXCEEDED)
    session(inflight_broker, cid_of(request), throttled_inflight_messages=throttled, puback_0x97=throttled)


# -- topics ------------------------------------------------------------------------------------------


def test_a_topic_of_257_bytes_is_refused_with_puback_0x90_and_256_pass(
    default_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(default_broker)
    assert client.publish_qos1("t" * 256).reason_code in ACCEPTED
    assert client.publish_qos1("t" * 257).reason_code == TOPIC_NAME_INVALID
    client.ping()  # the connection stays
    session(default_broker, cid_of(request), refused_topic_length=1, publishes_forwarded=1)
    default_broker.wait_for_log(
        f"client '{cid_of(request)}' publish refused: PUBACK 0x90 (topic of 257 bytes"
    )


def test_a_topic_over_15_levels_is_refused_with_puback_0x90(
    default_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(default_broker)
    assert client.publish_qos1("/".join(["l"] * 15)).reason_code in ACCEPTED
    assert client.publish_qos1("/".join(["l"] * 16)).reason_code == TOPIC_NAME_INVALID
    session(default_broker, cid_of(request), refused_topic_levels=1, publishes_forwarded=1)


def test_the_topic_level_limit_is_a_setting(
    bytes_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(bytes_broker)
    assert client.publish_qos1("/".join(["l"] * 8)).reason_code in ACCEPTED
    assert client.publish_qos1("/".join(["l"] * 9)).reason_code == TOPIC_NAME_INVALID


def test_filters_too_long_or_too_deep_get_suback_0x8f_and_the_others_are_subscribed(
    default_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(default_broker)
    subscribe_many(client, 7, ["ok/#", "f" * 257, "/".join(["l"] * 16), "ok2/+"])
    suback = read_suback(client)
    assert suback.packet_id == 7
    assert suback.reason_codes == (GRANTED_QOS_1, TOPIC_FILTER_INVALID, TOPIC_FILTER_INVALID, GRANTED_QOS_1)
    # The filters that passed are real subscriptions in mosquitto.
    sender = connect(default_broker, "-sender")
    assert sender.publish_qos1("ok2/x", b"hello").reason_code == SUCCESS
    delivered = client.read_packet()
    assert isinstance(delivered, Publish) and delivered.payload == b"hello"


# -- subscriptions -------------------------------------------------------------------------------------


def test_a_subscribe_with_11_filters_gets_suback_0x97_for_each_and_10_pass(
    default_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(default_broker)
    subscribe_many(client, 1, [f"ten/{i}" for i in range(10)])
    assert read_suback(client).reason_codes == (GRANTED_QOS_1,) * 10
    subscribe_many(client, 2, [f"eleven/{i}" for i in range(11)])
    assert read_suback(client).reason_codes == (QUOTA_EXCEEDED,) * 11
    session(
        default_broker, cid_of(request), refused_filters_per_subscribe=1, suback_0x97=11, subscriptions=10
    )
    default_broker.wait_for_log(f"client '{cid_of(request)}' SUBSCRIBE of 11 filters refused: SUBACK 0x97")


def test_a_sixth_subscribe_within_a_second_is_throttled_with_suback_0x97(
    default_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(default_broker)
    count = 15
    start = time.monotonic()
    for packet_id in range(1, count + 1):
        subscribe_many(client, packet_id, [f"rate/{packet_id}"])
    codes = [read_suback(client).reason_codes[0] for _ in range(count)]
    elapsed = time.monotonic() - start

    granted = codes.count(GRANTED_QOS_1)
    assert set(codes) == {GRANTED_QOS_1, QUOTA_EXCEEDED}
    assert 5 <= granted <= 5 + 5 * elapsed + 1
    session(default_broker, cid_of(request), throttled_subscribe_rate=count - granted, subscriptions=granted)
    default_broker.wait_for_log(
        f"client '{cid_of(request)}' SUBSCRIBE of 1 filters refused: SUBACK 0x97 (rate 5"
    )


def test_the_51st_subscription_is_refused_with_suback_0x97(
    roomy_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(roomy_broker)
    for packet_id in range(1, 6):
        subscribe_many(client, packet_id, [f"s/{packet_id}/{i}" for i in range(10)])
        assert read_suback(client).reason_codes == (GRANTED_QOS_1,) * 10
    # Subscribing again to a filter it holds is no new subscription.
    subscribe_many(client, 6, ["s/1/0"])
    assert read_suback(client).reason_codes == (GRANTED_QOS_1,)
    subscribe_many(client, 7, ["s/51", "s/52"])
    assert read_suback(client).reason_codes == (QUOTA_EXCEEDED, QUOTA_EXCEEDED)
    # Unsubscribing makes room.
    client.send_packet(10, 0x02, struct.pack("!H", 8) + encode_properties([]) + encode_str("s/1/0"))
    subscribe_many(client, 9, ["s/51", "s/52"])
    assert read_suback(client).reason_codes == (GRANTED_QOS_1, QUOTA_EXCEEDED)
    session(roomy_broker, cid_of(request), refused_subscriptions=3, subscriptions=50)
    roomy_broker.wait_for_log(
        f"client '{cid_of(request)}' subscription refused: SUBACK 0x97 (50 subscriptions"
    )


def test_a_new_session_starts_with_no_subscriptions(
    roomy_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(roomy_broker)
    for packet_id in range(1, 6):
        subscribe_many(client, packet_id, [f"n/{packet_id}/{i}" for i in range(10)])
        assert read_suback(client).reason_codes == (GRANTED_QOS_1,) * 10
    client.disconnect()
    # Clean start: mosquitto dropped the old subscriptions, so the proxy counts none.
    again = connect(roomy_broker)
    subscribe_many(again, 1, ["n/new"])
    assert read_suback(again).reason_codes == (GRANTED_QOS_1,)


# -- retain ---------------------------------------------------------------------------------------------


def test_a_retained_publish_is_refused_with_disconnect_0x9a_by_default(
    default_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(default_broker)
    assert client.connack.properties[PROP_RETAIN_AVAILABLE] == 0  # type: ignore[attr-defined]
    client.sock.sendall(publish_packet("r/x", b"kept", 1, retain=True))

    received = client.wait_closed(timeout=20)

    assert [p.reason_code for p in received if isinstance(p, Disconnect)] == [RETAIN_NOT_SUPPORTED]
    session(default_broker, cid_of(request), refused_retain=1, publishes_forwarded=0)


def test_without_the_proxy_mosquitto_itself_refuses_retain_with_0x9a(
    issuer_keys: IssuerKeys, connect: Connect
) -> None:
    with LocalBroker(keys_dir=issuer_keys.directory) as plain:  # quotas=False: mosquitto alone
        client = connect(plain)
        assert client.connack.properties[PROP_RETAIN_AVAILABLE] == 0  # type: ignore[attr-defined]
        client.sock.sendall(publish_packet("r/x", b"kept", 1, retain=True))

        received = client.wait_closed(timeout=20)

    assert [p.reason_code for p in received if isinstance(p, Disconnect)] == [RETAIN_NOT_SUPPORTED]


def test_a_retained_publish_is_accepted_when_the_broker_allows_retain(
    roomy_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest
) -> None:
    client = connect(roomy_broker)
    assert PROP_RETAIN_AVAILABLE not in client.connack.properties  # type: ignore[attr-defined]
    client.sock.sendall(publish_packet("r/kept", b"kept", 1, retain=True))
    ack = client.read_packet()
    assert isinstance(ack, Puback) and ack.reason_code in ACCEPTED

    late = connect(roomy_broker, "-late")
    assert late.subscribe("r/kept").reason_codes == (GRANTED_QOS_1,)
    retained = late.read_packet()
    assert isinstance(retained, Publish) and retained.payload == b"kept"


# -- what the broker tells -------------------------------------------------------------------------------


def test_the_counters_and_log_name_each_refusal_and_never_a_token(
    rate_broker: LocalBroker, connect: Connect, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    client = connect(rate_broker)
    burst(client, 3 * RATE)
    client.close()
    cid = cid_of(request)
    rate_broker.wait_for_log(f"client '{cid}' connection closed; session so far: ")
    stats = rate_broker.wait_for_stats(lambda s: s["sessions"].get(cid, {}).get("puback_0x97", 0) > 0)
    assert stats["totals"]["puback_0x97"] >= stats["sessions"][cid]["puback_0x97"]
    assert rate_broker.count_log(f"client '{cid}' publish throttled") >= 1
    assert not [line for line in rate_broker.log_lines() if "eyJ" in line], "a token reached the log"


def test_the_proxy_stops_mosquitto_when_it_stops(issuer_keys: IssuerKeys) -> None:
    broker = start_broker(issuer_keys)
    mosquitto = broker.pid
    assert mosquitto is not None and mosquitto != broker.proxy_pid
    broker.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{mosquitto}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{mosquitto}").exists()
    assert any("summary: " in line or "listening on" in line for line in broker.log_lines())
