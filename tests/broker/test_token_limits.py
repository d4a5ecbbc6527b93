"""Event Grid's token rules the auth plugin enforces at CONNECT: the JOSE header's `typ`, every
documented spelling of the audience, the Authentication Data size and the `sub` length.

Event Grid does not document the code for these refusals: the local broker answers CONNACK 0x87
(Not authorized), like every other token refusal, and logs the reason.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.broker.conftest import TokenMinter
from tests.support.broker import LocalBroker
from tests.support.mqtt5_raw import MqttV5Client

pytestmark = pytest.mark.broker

METHOD = "CUSTOM-JWT"
SUCCESS = 0x00
NOT_AUTHORIZED = 0x87

Opener = Callable[[], MqttV5Client]


def host_of(broker: LocalBroker) -> str:
    return broker.audience.removeprefix("https://").rstrip("/")


def signed(broker: LocalBroker, tokens: TokenMinter, header: dict[str, Any], sub: str = "gw-1") -> str:
    """A valid RS256 token with exactly this JOSE header (PyJWT adds `typ` unless told not to)."""
    now = int(time.time())
    claims = {"iss": broker.issuer, "sub": sub, "aud": broker.audience, "nbf": now, "exp": now + 300}
    key = serialization.load_pem_private_key(broker.private_key_path.read_bytes(), password=None)
    token = jwt.encode(claims, key, algorithm="RS256", headers=header)  # type: ignore[arg-type]
    tokens.minted.append(token)  # the leak check covers it
    return token


def jose_header(token: str) -> dict[str, Any]:
    part = token.split(".", maxsplit=1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def connack_code(open_client: Opener, client_id: str, token: str | bytes) -> int:
    return open_client().connect(client_id, auth_method=METHOD, auth_data=token).reason_code


# -- typ --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "JWS", "jwt"])
def test_a_token_typed_jwt_or_jws_is_accepted(
    typ: str, open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    token = signed(broker, tokens, {"typ": typ})
    assert jose_header(token)["typ"] == typ

    assert connack_code(open_client, client_id, token) == SUCCESS


def test_a_token_without_typ_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    token = signed(broker, tokens, {"typ": None})
    assert "typ" not in jose_header(token)

    assert connack_code(open_client, client_id, token) == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: header has no typ")


def test_a_token_of_another_typ_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    token = signed(broker, tokens, {"typ": "at+jwt"})

    assert connack_code(open_client, client_id, token) == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: typ is neither JWT nor JWS")


# -- aud --------------------------------------------------------------------------------------------

AUDIENCES: dict[str, Callable[[str], str | list[str]]] = {
    "bare host": lambda host: host,
    "https URL": lambda host: f"https://{host}/",
    "host and slash": lambda host: f"{host}/",
    "array with the host": lambda host: ["https://other.example/", host],
    "array with the URL": lambda host: [f"https://{host}/"],
}


@pytest.mark.parametrize("form", list(AUDIENCES), ids=list(AUDIENCES))
def test_every_documented_spelling_of_the_audience_is_accepted(
    form: str, open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    aud = AUDIENCES[form](host_of(broker))

    assert connack_code(open_client, client_id, tokens("gw-1", aud=aud)) == SUCCESS


OTHER_AUDIENCES: dict[str, Callable[[str], str | list[str]]] = {
    "another host": lambda host: "other.westeurope-1.ts.eventgrid.azure.net",
    "another host URL": lambda host: "https://other.westeurope-1.ts.eventgrid.azure.net/",
    "a host that only starts like ours": lambda host: f"{host}.evil.example",
    "our host with a path": lambda host: f"https://{host}/path/",
    "plain http": lambda host: f"http://{host}/",
    "array without our host": lambda host: ["https://other.example/", "other.example"],
}


@pytest.mark.parametrize("form", list(OTHER_AUDIENCES), ids=list(OTHER_AUDIENCES))
def test_an_audience_naming_another_host_is_refused(
    form: str, open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    aud = OTHER_AUDIENCES[form](host_of(broker))

    assert connack_code(open_client, client_id, tokens("gw-1", aud=aud)) == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: aud does not contain the configured audience")


# -- sizes ------------------------------------------------------------------------------------------


def test_authentication_data_over_8_kb_is_refused_at_connect(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    # A real token padded with a claim to just under the limit passes...
    small = tokens("gw-1", extra_claims={"pad": "p" * 5500})
    assert 7000 < len(small) <= 8192
    assert connack_code(open_client, f"{client_id}-a", small) == SUCCESS
    # ...one byte over is refused before any parsing.
    assert connack_code(open_client, f"{client_id}-b", b"x" * 8193) == NOT_AUTHORIZED
    broker.wait_for_log(
        f"client '{client_id}-b' connect refused: authentication data is 8193 bytes, over the limit of 8192"
    )


def test_a_token_just_over_8_kb_is_refused_too(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    token = tokens("gw-1", extra_claims={"pad": "p" * 6000})
    assert len(token) > 8192

    assert connack_code(open_client, client_id, token) == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' connect refused: authentication data is {len(token)} bytes")


def test_a_sub_of_128_characters_is_accepted_and_129_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    assert connack_code(open_client, f"{client_id}-a", tokens("g" * 128)) == SUCCESS
    # Characters, not bytes: 128 two-byte characters are still 128.
    assert connack_code(open_client, f"{client_id}-b", tokens("é" * 128)) == SUCCESS
    assert connack_code(open_client, f"{client_id}-c", tokens("g" * 129)) == NOT_AUTHORIZED
    broker.wait_for_log(
        f"client '{client_id}-c' connect refused: sub is 129 characters, over the authentication name limit"
    )


def test_a_refresh_with_a_token_over_the_size_limit_is_refused(
    open_client: Opener, tokens: TokenMinter, client_id: str, broker: LocalBroker
) -> None:
    client = open_client()
    assert client.connect(client_id, auth_method=METHOD, auth_data=tokens("gw-1")).reason_code == SUCCESS

    answer = client.reauthenticate(METHOD, tokens("gw-1", extra_claims={"pad": "p" * 6000}))

    # mosquitto 2.0.11 answers a refused re-authentication with CONNACK 0x87 (see test_plugin.py).
    assert getattr(answer, "reason_code", None) == NOT_AUTHORIZED
    broker.wait_for_log(f"client '{client_id}' re-authentication refused: authentication data is")
