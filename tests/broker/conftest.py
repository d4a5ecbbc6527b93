"""Fixtures for the broker plugin's own tests: a real mosquitto with our plugin, issuer keys,
a token minter that remembers every token so that none may appear in the broker's log, and
raw MQTT v5 clients."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import LocalBroker
from tests.support.mqtt5_raw import MqttV5Client
from tests.support.tokens import generate_rsa_key_pair, mint_token


@dataclass(frozen=True)
class IssuerKeys:
    directory: Path
    private: Path
    public: Path
    next_private: Path
    next_public: Path


@pytest.fixture(scope="session")
def issuer_keys(tmp_path_factory: pytest.TempPathFactory) -> IssuerKeys:
    directory = tmp_path_factory.mktemp("issuer-keys")
    private, public = generate_rsa_key_pair(directory, "issuer")
    # The key the issuer rotates to: the broker trusts both (Event Grid allows two).
    rotated = tmp_path_factory.mktemp("issuer-next")
    next_private, next_public = generate_rsa_key_pair(rotated, "issuer")
    return IssuerKeys(directory, private, public, next_private, next_public)


@pytest.fixture(scope="module")
def broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    # Debug logging: the token-leak checks then cover every line mosquitto can write. Through the
    # quota proxy, as run.sh runs it: every plugin test also proves the proxy relays faithfully.
    with LocalBroker(
        keys_dir=issuer_keys.directory, second_public_key=issuer_keys.next_public, verbose=True, quotas=True
    ) as running:
        yield running


@dataclass
class TokenMinter:
    """Mints tokens for the running broker and remembers each one."""

    broker: LocalBroker
    minted: list[str] = field(default_factory=list)

    def __call__(self, sub: str, *, key: Path | None = None, **kwargs: Any) -> str:
        kwargs.setdefault("iss", self.broker.issuer)
        kwargs.setdefault("aud", self.broker.audience)
        token = mint_token(key or self.broker.private_key_path, sub=sub, **kwargs)
        self.minted.append(token)
        return token

    def leaks(self) -> list[str]:
        """Broker log lines holding any minted token or any token's signature."""
        needles = set(self.minted) | {token.rsplit(".", 1)[1] for token in self.minted}
        needles.discard("")
        return [line for line in self.broker.log_lines() if any(n in line for n in needles)]


@pytest.fixture
def tokens(broker: LocalBroker) -> Iterator[TokenMinter]:
    minter = TokenMinter(broker)
    yield minter
    # Whatever a test did, the broker must never have logged a token.
    assert minter.leaks() == []


_client_numbers = itertools.count(1)


@pytest.fixture
def client_id(request: pytest.FixtureRequest) -> str:
    """A client id unique in this run, named after the test for readable broker logs."""
    return f"{request.node.name[:40]}-{next(_client_numbers)}"


@pytest.fixture
def open_client(broker: LocalBroker) -> Iterator[Callable[[], MqttV5Client]]:
    clients: list[MqttV5Client] = []

    def opener() -> MqttV5Client:
        ca = str(broker.ca_path) if broker.ca_path else None
        client = MqttV5Client(broker.host, broker.port, tls_ca=ca)
        clients.append(client)
        return client

    yield opener
    for client in clients:
        client.close()
