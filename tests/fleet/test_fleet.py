"""A fleet of gateways with identities from a real issuer, end to end.

The issuer is node-oidc-provider (deploy/issuer), the broker our local mosquitto with Event Grid-style
topic templates (`fleet/${client.attributes.site}/#`). Each gateway is its own `fieldgate run` process with
its own client at the issuer and its own key (`private_key_jwt`); nobody but the issuer holds the signing
key. The tokens live 15 s, so every gateway re-authenticates in session (AUTH 0x19) within the test.

An independent observer subscribes to `fleet/#` with a token from a second key the broker trusts (the
rotation slot): it must not depend on the issuer the tests switch clients off at.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import jwt
import pytest

from gateway.auth.oauth2 import OAuth2TokenSource
from gateway.config.uplink import OAuth2TokenConfig
from tests.support.broker import LocalBroker
from tests.support.issuer import LocalIssuer
from tests.support.mqtt5_raw import MqttV5Client
from tests.support.process import GatewayProcess
from tests.support.subscriber import Subscriber, wait_until
from tests.support.tokens import generate_rsa_key_pair

pytestmark = pytest.mark.broker

TOKEN_TTL = 15
FLEET = {"gw-a": "a", "gw-b": "b", "gw-c": "c"}
TEMPLATE = "fleet/${client.attributes.site}/#"
#: Generous: the machine is shared and slow at times; every wait ends as soon as its condition holds.
DEADLINE = 90.0


@dataclass
class Fleet:
    issuer: LocalIssuer
    broker: LocalBroker
    keys: Path

    def key(self, gateway: str) -> Path:
        return self.keys / f"{gateway}.key"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    keys = tmp_path_factory.mktemp("fleet-keys")
    broker_keys = tmp_path_factory.mktemp("fleet-broker-keys")
    generate_rsa_key_pair(keys, "observer")
    with LocalIssuer(token_ttl=TOKEN_TTL) as issuer:
        for gateway, site in FLEET.items():
            _, public = generate_rsa_key_pair(keys, gateway)
            issuer.add_client(gateway, public, {"site": site})
        # The broker trusts the issuer's key (as issuer.pem) and holds no private key at all.
        shutil.copy(issuer.signing_public_key_path, broker_keys / "issuer.pem")
        with LocalBroker(
            keys_dir=broker_keys,
            issuer=issuer.iss,
            second_public_key=keys / "observer.pem",
            publish_claim=None,
            subscribe_claim="subscribe_topics",
            publish_templates=[TEMPLATE],
            subscribe_templates=[TEMPLATE],
        ) as broker:
            yield Fleet(issuer, broker, keys)


def token_config(fleet: Fleet, gateway: str) -> OAuth2TokenConfig:
    return OAuth2TokenConfig(
        token_endpoint=fleet.issuer.token_url,
        client_id=gateway,
        client_auth="private_key_jwt",
        private_key_file=fleet.key(gateway),
    )


def gateway_process(fleet: Fleet, gateway: str, directory: Path) -> GatewayProcess:
    """`fieldgate run` for one gateway of the fleet: one simulated meter, oauth2 tokens from the issuer."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{gateway}.toml"
    config.write_text(
        f"""
[gateway]
id = "{gateway}"
site = "{FLEET[gateway]}"
state_dir = "{directory / "state"}"
stats_interval = 1
shutdown_grace = 2

[telemetry]
topic = "fleet/{{site}}/{{gateway}}/{{device}}"

[devices.meter]
driver = "simulated"
interval = 0.2

[[devices.meter.points]]
name = "value"
signal = "ramp"
min = 0
max = 100
period = 10

[uplink]
host = "{fleet.broker.host}"
port = {fleet.broker.port}
tls = false
connect_timeout = 5

[uplink.refresh]
jitter = 0.5
timeout = 5

[uplink.reconnect]
initial = 0.2
max = 1.0

[uplink.token]
source = "oauth2"
token_endpoint = "{fleet.issuer.token_url}"
client_id = "{gateway}"
client_auth = "private_key_jwt"
private_key_file = "{fleet.key(gateway)}"
"""
    )
    return GatewayProcess(["run", "--config", str(config)])


@contextlib.asynccontextmanager
async def running(*processes: GatewayProcess) -> AsyncIterator[None]:
    try:
        for process in processes:
            await process.start()
        yield
    finally:
        for process in processes:
            await process.kill()


# -- the observer -----------------------------------------------------------------------------------------
class Observer(Subscriber):
    """Subscribes to fleet/# and remembers (topic, sending gateway, seq) of everything that arrives."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(
            fleet.broker,
            identifier="observer",
            filters=["fleet/#"],
            key=fleet.keys / "observer.key",
            issuer=fleet.issuer.iss,
        )
        self.arrivals: list[tuple[str, str, int]] = []

    def seqs(self, gateway: str) -> set[int]:
        return {seq for _, sender, seq in self.arrivals if sender == gateway}

    def topics(self, gateway: str) -> set[str]:
        return {topic for topic, sender, _ in self.arrivals if sender == gateway}

    def on_message(self, message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        # fleet/<site>/<gateway>/...: the probe's messages carry no seq (-1).
        topic = str(message.topic)
        seq = json.loads(message.payload).get("seq", -1)
        self.arrivals.append((topic, topic.split("/")[2], seq))


def broker_lines(fleet: Fleet, pattern: str) -> list[str]:
    return [line for line in fleet.broker.log_lines() if re.search(pattern, line)]


def issuer_lines(fleet: Fleet, needle: str) -> list[str]:
    return [line for line in fleet.issuer.log_lines() if needle in line]


def assert_no_secrets(fleet: Fleet, tokens: list[str], *texts: list[str]) -> None:
    """No token (nor its signature) and no private key in any log line; says which log, never the secret."""
    keys = [fleet.key(g).read_text().splitlines()[1] for g in FLEET]
    keys.append((fleet.issuer.keys_dir / "signing.key").read_text().splitlines()[1])
    secrets = [t for token in tokens for t in (token, token.rsplit(".", 1)[1])] + keys
    logs = {"broker": fleet.broker.log_lines(), "issuer": fleet.issuer.log_lines()}
    logs.update({f"gateway {n}": lines for n, lines in enumerate(texts)})
    for name, lines in logs.items():
        text = "\n".join(lines)
        leaked = sum(secret in text for secret in secrets)
        assert leaked == 0, f"{leaked} secrets (tokens or keys) appear in the {name} log"


# -- the stories ------------------------------------------------------------------------------------------
async def test_the_issuer_issues_event_grid_tokens_with_each_clients_own_claims(fleet: Fleet) -> None:
    discovery = fleet.issuer.discovery()
    assert discovery["issuer"] == fleet.issuer.iss
    assert discovery["token_endpoint"] == fleet.issuer.token_url
    assert "client_credentials" in discovery["grant_types_supported"]
    assert discovery["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]

    public_key = fleet.issuer.signing_public_key_path.read_bytes()
    for gateway, site in FLEET.items():
        token = await OAuth2TokenSource(token_config(fleet, gateway)).get_token()
        assert jwt.get_unverified_header(token.value)["typ"] == "JWT"  # not RFC 9068's "at+jwt"
        claims = jwt.decode(
            token.value,
            public_key,
            algorithms=["RS256"],
            audience=fleet.broker.audience,
            issuer=fleet.broker.issuer,
            options={"require": ["iss", "sub", "aud", "exp", "nbf", "iat"]},
        )
        assert claims["sub"] == gateway and claims["site"] == site
        assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == TOKEN_TTL


async def test_three_gateways_connect_refresh_in_session_and_stay_in_their_own_topics(
    fleet: Fleet, tmp_path: Path
) -> None:
    processes = {gateway: gateway_process(fleet, gateway, tmp_path / gateway) for gateway in FLEET}
    mark = len(fleet.broker.log_lines())
    async with Observer(fleet).running(timeout=30) as observer, running(*processes.values()):
        for gateway in FLEET:
            await processes[gateway].wait_for(
                lambda s: "uplink connected to" in s, stream="stderr", timeout=DEADLINE
            )
        # Each refreshes in session: the broker's re-authentication line, sub unchanged, no reconnect.
        await wait_until(
            lambda: all(
                broker_lines(fleet, rf"client '{g}' re-authenticated as '{g}'")
                and len(observer.seqs(g)) >= 10
                for g in FLEET
            ),
            DEADLINE,
            "every gateway re-authenticated in session and delivered",
        )
        # Gateway B's own token (from the issuer) is refused A's topic and granted its own.
        token_b = await OAuth2TokenSource(token_config(fleet, "gw-b")).get_token()
        with MqttV5Client(fleet.broker.host, fleet.broker.port, timeout=20) as probe:
            connack = probe.connect("gw-b-probe", auth_method="CUSTOM-JWT", auth_data=token_b.value)
            assert connack.reason_code == 0x00
            assert probe.publish_qos1("fleet/a/gw-a/meter", b'{"forged": true}').reason_code == 0x87
            assert probe.publish_qos1("fleet/b/probe/check", b"{}").reason_code < 0x80
            probe.disconnect()
        stderr = {gateway: list(process.stderr) for gateway, process in processes.items()}

    for gateway, site in FLEET.items():
        assert observer.topics(gateway) == {f"fleet/{site}/{gateway}/meter"}
        assert len(broker_lines(fleet, rf"client '{gateway}' connect accepted as '{gateway}'")) == 1
        assert not any("Traceback" in line for line in stderr[gateway])
    assert not any("forged" in topic for topic, _, _ in observer.arrivals)
    assert broker_lines(fleet, r"publish 'fleet/a/gw-a/meter' denied")
    issued = fleet.issuer.log_lines()[mark:]
    assert not any("refused" in line for line in issued)
    assert_no_secrets(fleet, [token_b.value], *stderr.values())


async def test_a_disabled_client_fails_its_refresh_cleanly_keeps_its_messages_and_delivers_them_when_enabled(
    fleet: Fleet, tmp_path: Path
) -> None:
    gateway = "gw-c"
    process = gateway_process(fleet, gateway, tmp_path / gateway)
    async with Observer(fleet).running(timeout=30) as observer, running(process):
        await process.wait_for(lambda s: "uplink connected to" in s, stream="stderr", timeout=DEADLINE)
        await wait_until(lambda: len(observer.seqs(gateway)) >= 5, DEADLINE, "first deliveries")

        fleet.issuer.disable_client(gateway)
        # The refresh is refused by the issuer; the token runs out; the broker disconnects the gateway;
        # its reconnects cannot get a token either.
        await process.wait_for(lambda s: "cannot get a token from" in s, stream="stderr", timeout=DEADLINE)
        seen_when_cut = max(observer.seqs(gateway))
        # Readings go on into the store while the gateway is cut off (its stats line counts them).
        await process.wait_for(
            lambda s: (m := re.search(r"store (\d+)/", s)) is not None and int(m.group(1)) >= 10,
            stream="stderr",
            timeout=DEADLINE,
        )
        await wait_until(
            lambda: len(issuer_lines(fleet, f"disabled client '{gateway}' refused")) >= 4,
            DEADLINE,
            "several token requests refused while disabled",
        )

        fleet.issuer.enable_client(gateway)
        await process.wait_for(lambda s: "uplink delivers again" in s, stream="stderr", timeout=DEADLINE)
        produced = seen_when_cut + 20
        await wait_until(
            lambda: set(range(1, produced + 1)) <= observer.seqs(gateway),
            DEADLINE,
            "every message kept while cut off arrived after the client was enabled again",
        )
        stderr = list(process.stderr)

    assert broker_lines(fleet, rf"client '{gateway}' token for '{gateway}' expired")
    # Logged once each, although the gateway asked the issuer again and again.
    refresh_failures = [line for line in stderr if "retrying while the token is valid" in line]
    connect_failures = [line for line in stderr if "cannot get a token from" in line]
    assert len(refresh_failures) == 1 and "invalid_client" in refresh_failures[0]
    assert len(connect_failures) == 1 and "invalid_client" in connect_failures[0]
    assert len([line for line in stderr if "uplink connected to" in line]) == 2
    assert not any("Traceback" in line for line in stderr)
    assert_no_secrets(fleet, [], stderr)
