"""The local broker enforces Event Grid's custom-JWT rules, so that what works against it works
in the cloud: tests speak raw MQTT v5 to a real mosquitto 2.0.11 running our plugin.

Observed mosquitto 2.0.11 behaviours the assertions pin down (see deploy/broker/README.md):
- a refused CONNECT gets CONNACK 0x87, a wrong authentication method 0x8C;
- a refused re-authentication gets CONNACK 0x87 on the live connection, then the socket
  closes (upstream bug, 2.0.13 sends DISCONNECT 0x87 instead);
- a token that expires without re-authentication ends in DISCONNECT 0x98 (administrative
  action) from the broker;
- QoS 2 gets DISCONNECT 0x9B (QoS not supported), a packet over 512 KiB DISCONNECT 0x95.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.broker.conftest import IssuerKeys, TokenMinter
from tests.support.broker import LocalBroker
from tests.support.mqtt5_raw import (
    PROP_AUTH_METHOD,
    PROP_MAXIMUM_PACKET_SIZE,
    PROP_MAXIMUM_QOS,
    PROP_SERVER_KEEP_ALIVE,
    PROP_TOPIC_ALIAS_MAXIMUM,
    Auth,
    Connack,
    Disconnect,
    MqttV5Client,
    Publish,
)
from tests.support.tokens import OMIT, generate_rsa_key_pair

pytestmark = pytest.mark.broker

METHOD = "CUSTOM-JWT"
SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10
GRANTED_QOS_1 = 0x01
UNSPECIFIED_ERROR = 0x80
NOT_AUTHORIZED = 0x87
BAD_AUTH_METHOD = 0x8C
PACKET_TOO_LARGE = 0x95
QOS_NOT_SUPPORTED = 0x9B
ADMINISTRATIVE_ACTION = 0x98

Opener = Callable[[], MqttV5Client]


def connect(open_client: Opener, client_id: str, token: str, **kwargs: Any) -> tuple[MqttV5Client, Connack]:
    client = open_client()
    connack = client.connect(client_id, auth_method=METHOD, auth_data=token, **kwargs)
    return client, connack


# -- connecting ---------------------------------------------------------------------------------


def test_a_gateway_with_a_good_token_connects_and_learns_event_grid_limits(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    _, connack = connect(open_client, client_id, tokens("gw-1"), username="gw-1")

    assert connack.reason_code == SUCCESS
    assert connack.properties[PROP_AUTH_METHOD] == METHOD
    assert connack.properties[PROP_MAXIMUM_QOS] == 1
    assert connack.properties[PROP_MAXIMUM_PACKET_SIZE] == 512 * 1024
    assert connack.properties[PROP_TOPIC_ALIAS_MAXIMUM] == 10
    broker.wait_for_log(f"client '{client_id}' connect accepted as 'gw-1'")


def test_an_audience_list_containing_the_namespace_is_accepted(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    token = tokens("gw-1", aud=["https://other.example/", broker.audience])

    _, connack = connect(open_client, client_id, token)

    assert connack.reason_code == SUCCESS


def _now() -> int:
    return int(time.time())


# case -> (claim overrides, computed when the test runs; the refusal reason the log must give)
BAD_CLAIMS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "foreign issuer": (lambda: {"iss": "https://someone-else.example/"}, "iss is not the configured issuer"),
    "other audience": (lambda: {"aud": "https://other.ts.eventgrid.azure.net/"}, "aud does not contain"),
    "audience list without ours": (lambda: {"aud": ["https://a.example/", "https://b.example/"]}, "aud does"),
    "expired": (lambda: {"exp": _now() - 60}, "token expired"),
    "not yet valid": (lambda: {"nbf": _now() + 600}, "nbf in the future"),
    "no sub": (lambda: {"sub": OMIT}, "sub missing"),
    "empty sub": (lambda: {"sub": ""}, "sub missing"),
    "no exp": (lambda: {"exp": OMIT}, "exp missing"),
    "no nbf": (lambda: {"nbf": OMIT}, "nbf missing"),
    "no aud": (lambda: {"aud": OMIT}, "aud missing"),
}


@pytest.mark.parametrize("case", list(BAD_CLAIMS), ids=list(BAD_CLAIMS))
def test_a_token_with_a_bad_claim_is_refused_and_the_reason_logged(
    case: str, open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    make_overrides, reason = BAD_CLAIMS[case]
    overrides = make_overrides()

    _, connack = connect(open_client, client_id, tokens("gw-1", extra_claims=overrides))

    assert connack.reason_code == NOT_AUTHORIZED
    line = broker.wait_for_log(f"client '{client_id}' connect refused: ")
    assert reason in line


def test_an_hs256_token_keyed_with_the_public_key_text_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    # The classic algorithm confusion (an HMAC keyed with the PEM text, which libjwt 1.10 would verify):
    # the plugin verifies RS256 only, whatever the header says.
    token = tokens("gw-1", alg="HS256", public_key_path=broker.public_key_path)

    _, connack = connect(open_client, client_id, token)

    assert connack.reason_code == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: alg is not RS256")


def test_an_unsigned_token_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    _, connack = connect(open_client, client_id, tokens("gw-1", alg="none"))

    assert connack.reason_code == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: alg is not RS256")


def test_a_token_signed_by_an_unknown_key_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker, tmp_path: Any
) -> None:
    stranger, _ = generate_rsa_key_pair(tmp_path, "stranger")

    _, connack = connect(open_client, client_id, tokens("gw-1", key=stranger))

    assert connack.reason_code == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: signature does not verify")


def test_a_token_from_the_rotated_issuer_key_is_accepted(
    open_client: Opener, tokens: TokenMinter, client_id: str, issuer_keys: IssuerKeys
) -> None:
    _, connack = connect(open_client, client_id, tokens("gw-1", key=issuer_keys.next_private))

    assert connack.reason_code == SUCCESS


def test_another_authentication_method_is_refused_as_bad_method(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client = open_client()

    connack = client.connect(client_id, auth_method="OAUTH2-JWT", auth_data=tokens("gw-1"))

    assert connack.reason_code == BAD_AUTH_METHOD
    broker.wait_for_log(f"client '{client_id}' connect refused: authentication method 'OAUTH2-JWT'")


def test_a_connect_without_authentication_method_is_refused(
    open_client: Opener, client_id: str, broker: LocalBroker
) -> None:
    client = open_client()

    connack = client.connect(client_id, username="gw-1")

    assert connack.reason_code == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: no authentication method")


def test_a_username_that_is_not_the_tokens_sub_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    _, connack = connect(open_client, client_id, tokens("gw-1"), username="gw-2")

    assert connack.reason_code == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: username 'gw-2' is not the token's sub")


def test_a_connect_without_client_id_is_refused(open_client: Opener, tokens: TokenMinter) -> None:
    # Event Grid needs the client id (the session name) and assigns none; mosquitto 2.0.11
    # refuses an empty one with 0x80 (unspecified error) rather than 0x85.
    _, connack = connect(open_client, "", tokens("gw-1"))

    assert connack.reason_code == UNSPECIFIED_ERROR


# -- re-authentication and expiry ---------------------------------------------------------------


def test_a_refresh_on_the_live_connection_is_answered_auth_success(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1", publish_topics=["plants/#"]))

    answer = client.reauthenticate(METHOD, tokens("gw-1", publish_topics=["plants/#"]))

    assert answer == Auth(SUCCESS, {PROP_AUTH_METHOD: METHOD})
    assert client.publish_qos1("plants/p1/temp", b"21.5").reason_code in (SUCCESS, NO_MATCHING_SUBSCRIBERS)
    broker.wait_for_log(f"client '{client_id}' re-authenticated as 'gw-1'")


def test_a_refresh_replaces_the_connections_grants(
    open_client: Opener, tokens: TokenMinter, client_id: str
) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1", publish_topics=["sites/a/#"]))
    assert client.publish_qos1("sites/b/t", b"1").reason_code == NOT_AUTHORIZED

    client.reauthenticate(METHOD, tokens("gw-1", publish_topics=["sites/b/#"]))

    assert client.publish_qos1("sites/b/t", b"1").reason_code == NO_MATCHING_SUBSCRIBERS
    assert client.publish_qos1("sites/a/t", b"1").reason_code == NOT_AUTHORIZED


def test_a_refresh_for_another_sub_is_refused_and_the_connection_closed(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1"))

    answer = client.reauthenticate(METHOD, tokens("gw-2"))

    # mosquitto 2.0.11 answers with a CONNACK on the live connection (2.0.13+: DISCONNECT 0x87).
    assert isinstance(answer, Connack | Disconnect)
    assert answer.reason_code == NOT_AUTHORIZED
    assert client.wait_closed(timeout=5) == []
    broker.wait_for_log(f"client '{client_id}' re-authentication refused: sub 'gw-2' differs")


def test_a_refresh_with_an_expired_token_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1"))

    answer = client.reauthenticate(METHOD, tokens("gw-1", extra_claims={"exp": int(time.time()) - 5}))

    assert isinstance(answer, Connack | Disconnect)
    assert answer.reason_code == NOT_AUTHORIZED
    assert client.wait_closed(timeout=5) == []
    broker.wait_for_log(f"client '{client_id}' re-authentication refused: token expired")


def test_a_connection_whose_token_expires_without_refresh_is_disconnected(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client, connack = connect(open_client, client_id, tokens("gw-1", lifetime=2))
    assert connack.reason_code == SUCCESS
    started = time.monotonic()

    received = client.wait_closed(timeout=6)

    assert received == [Disconnect(ADMINISTRATIVE_ACTION)]
    assert time.monotonic() - started >= 0.9  # not before the token's second boundary
    broker.wait_for_log(f"client '{client_id}' token for 'gw-1' expired")


def test_a_connection_refreshed_in_time_outlives_its_first_token(
    open_client: Opener, tokens: TokenMinter, client_id: str
) -> None:
    first = tokens("gw-1", lifetime=2)
    client, _ = connect(open_client, client_id, first)
    first_exp = time.time() + 2

    assert client.reauthenticate(METHOD, tokens("gw-1", lifetime=60)) == Auth(
        SUCCESS, {PROP_AUTH_METHOD: METHOD}
    )

    # Keep talking to the broker until well past the first token's expiry (+ a tick).
    while time.time() < first_exp + 1.5:
        client.ping()
        time.sleep(0.2)
    client.ping()


def test_only_the_expired_client_is_disconnected(
    open_client: Opener, tokens: TokenMinter, client_id: str
) -> None:
    short, _ = connect(open_client, client_id + "-short", tokens("gw-1", lifetime=2))
    long, _ = connect(open_client, client_id + "-long", tokens("gw-2", lifetime=60))

    assert short.wait_closed(timeout=6) == [Disconnect(ADMINISTRATIVE_ACTION)]

    long.ping()


def test_a_reconnect_that_takes_over_the_session_is_not_cut_off_at_the_old_tokens_expiry(
    open_client: Opener, tokens: TokenMinter, client_id: str
) -> None:
    # The expiry kick goes by client id: it must not hit the new connection with the same id.
    old, _ = connect(open_client, client_id, tokens("gw-1", lifetime=2))
    old_exp = time.time() + 2
    new, connack = connect(open_client, client_id, tokens("gw-1", lifetime=60))
    assert connack.reason_code == SUCCESS
    old.wait_closed(timeout=5)

    while time.time() < old_exp + 1.5:
        new.ping()
        time.sleep(0.2)
    new.ping()


# -- topic permissions --------------------------------------------------------------------------


def test_publishing_where_the_token_does_not_grant_is_refused_with_puback_0x87(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1", publish_topics=["plants/+/telemetry"]))

    granted = client.publish_qos1("plants/p1/telemetry", b"{}")
    refused = client.publish_qos1("plants/p1/config", b"{}")

    assert granted.reason_code in (SUCCESS, NO_MATCHING_SUBSCRIBERS)
    assert refused.reason_code == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' publish 'plants/p1/config' denied: not granted to 'gw-1'")


def test_a_refused_qos0_publish_is_dropped_and_the_connection_stays(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1", publish_topics=["plants/#"]))

    client.publish("other/topic", b"x", qos=0)

    broker.wait_for_log(f"client '{client_id}' publish 'other/topic' denied")
    client.ping()


def test_a_token_without_publish_grants_may_not_publish_anywhere(
    open_client: Opener, tokens: TokenMinter, client_id: str
) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1"))

    assert client.publish_qos1("anything", b"x").reason_code == NOT_AUTHORIZED


def test_subscriptions_are_limited_to_granted_filters_and_receive_granted_messages(
    open_client: Opener, tokens: TokenMinter, client_id: str
) -> None:
    subscriber, _ = connect(open_client, client_id + "-sub", tokens("app", subscribe_topics=["plants/#"]))
    publisher, _ = connect(open_client, client_id + "-pub", tokens("gw-1", publish_topics=["plants/#"]))

    assert subscriber.subscribe("plants/+/telemetry").reason_codes == (GRANTED_QOS_1,)
    assert subscriber.subscribe("#").reason_codes == (NOT_AUTHORIZED,)
    assert subscriber.subscribe("other/+").reason_codes == (NOT_AUTHORIZED,)
    assert publisher.publish_qos1("plants/p1/telemetry", b"21.5").reason_code == SUCCESS

    delivered = subscriber.read_packet()
    assert isinstance(delivered, Publish)
    assert (delivered.topic, delivered.payload) == ("plants/p1/telemetry", b"21.5")


def test_a_shared_subscription_is_refused(open_client: Opener, tokens: TokenMinter, client_id: str) -> None:
    # Event Grid has no shared subscriptions; mosquitto checks the whole "$share/..." filter,
    # which no grant covers.
    client, _ = connect(open_client, client_id, tokens("app", subscribe_topics=["#", "plants/#"]))

    assert client.subscribe("$share/group/plants/#").reason_codes == (NOT_AUTHORIZED,)


def test_a_will_is_published_only_on_a_granted_topic(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    watcher, _ = connect(open_client, client_id + "-w", tokens("app", subscribe_topics=["status/#"]))
    watcher.subscribe("status/#")
    token = tokens("gw-1", publish_topics=["status/gw-1"])
    good, _ = connect(open_client, client_id + "-g", token, will_topic="status/gw-1")
    bad, _ = connect(open_client, client_id + "-b", token, will_topic="status/gw-9")

    bad.close()
    broker.wait_for_log(f"client '{client_id}-b' will on 'status/gw-9' denied")
    good.close()

    will = watcher.read_packet()
    assert isinstance(will, Publish)
    assert will.topic == "status/gw-1"


# -- Event Grid limits --------------------------------------------------------------------------


def test_a_qos2_publish_is_refused(open_client: Opener, tokens: TokenMinter, client_id: str) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1", publish_topics=["#"]))

    client.publish("plants/p1/telemetry", b"x", qos=2)

    assert client.wait_closed(timeout=5) == [Disconnect(QOS_NOT_SUPPORTED)]


def test_a_packet_over_512_kib_is_refused(open_client: Opener, tokens: TokenMinter, client_id: str) -> None:
    client, _ = connect(open_client, client_id, tokens("gw-1", publish_topics=["#"]))
    assert client.publish_qos1("plants/ok", b"x" * (500 * 1024)).reason_code == NO_MATCHING_SUBSCRIBERS

    client.publish("plants/big", b"x" * (513 * 1024), qos=1)

    assert client.wait_closed(timeout=5) == [Disconnect(PACKET_TOO_LARGE)]


def test_a_keepalive_above_event_grids_maximum_is_lowered_by_the_broker(
    open_client: Opener, tokens: TokenMinter, client_id: str
) -> None:
    _, connack = connect(open_client, client_id, tokens("gw-1"), keepalive=3600)

    assert connack.reason_code == SUCCESS
    assert connack.properties[PROP_SERVER_KEEP_ALIVE] == 1160


# -- secrets ------------------------------------------------------------------------------------


def test_the_broker_log_never_contains_a_token(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    # Every path a token travels: accepted, refused, refreshed, refused refresh; at debug level.
    client, _ = connect(open_client, client_id + "-1", tokens("gw-1", publish_topics=["#"]))
    client.publish_qos1("plants/p1", b"x")
    client.reauthenticate(METHOD, tokens("gw-1"))
    client.reauthenticate(METHOD, tokens("gw-2"))
    connect(open_client, client_id + "-2", tokens("gw-1", iss="https://evil.example/"))
    connect(open_client, client_id + "-3", tokens("gw-1", alg="none"))
    broker.wait_for_log(f"client '{client_id}-3' connect refused")

    assert len(broker.log_lines()) > 20
    assert tokens.leaks() == []


# -- TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("quotas", [True, False], ids=["proxy terminates TLS", "mosquitto alone"])
def test_the_broker_speaks_tls_with_a_dev_ca(issuer_keys: IssuerKeys, tmp_path: Any, quotas: bool) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("issuer.key", "issuer.pem"):
        (keys / name).write_bytes((issuer_keys.directory / name).read_bytes())
    with LocalBroker(keys_dir=keys, tls=True, quotas=quotas) as tls_broker:
        assert tls_broker.ca_path is not None
        minter = TokenMinter(tls_broker)
        client = MqttV5Client(tls_broker.host, tls_broker.port, tls_ca=str(tls_broker.ca_path))
        with client:
            connack = client.connect("tls-client", auth_method=METHOD, auth_data=minter("gw-1"))
        assert connack.reason_code == SUCCESS
        assert minter.leaks() == []
