"""A broker configured with Event Grid topic templates grants each client the topics its
token's claims fill in: the authentication name (`sub`) and client attributes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.conftest import IssuerKeys
from tests.support.broker import BrokerStartError, LocalBroker
from tests.support.mqtt5_raw import MqttV5Client
from tests.support.tokens import mint_token

pytestmark = pytest.mark.broker

METHOD = "CUSTOM-JWT"
NO_MATCHING_SUBSCRIBERS = 0x10
GRANTED_QOS_1 = 0x01
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def template_broker(issuer_keys: IssuerKeys) -> Iterator[LocalBroker]:
    with LocalBroker(
        keys_dir=issuer_keys.directory,
        publish_templates=["devices/${client.authenticationName}/#", "plants/${client.attributes.site}/#"],
        subscribe_templates=["cmd/${client.authenticationName}/#"],
        # Only templates grant here: claim lists are switched off.
        publish_claim=None,
        subscribe_claim=None,
    ) as running:
        yield running


def connect(broker: LocalBroker, client_id: str, **claims: object) -> MqttV5Client:
    sub = str(claims.pop("sub", "gw-1"))
    token = mint_token(broker.private_key_path, sub=sub, extra_claims=dict(claims))
    client = MqttV5Client(broker.host, broker.port)
    assert client.connect(client_id, auth_method=METHOD, auth_data=token).reason_code == 0
    return client


def test_a_gateway_publishes_under_its_name_and_its_sites_only(template_broker: LocalBroker) -> None:
    with connect(template_broker, "tpl-1", site=["a", "b"]) as client:
        assert client.publish_qos1("devices/gw-1/telemetry").reason_code == NO_MATCHING_SUBSCRIBERS
        assert client.publish_qos1("plants/b/line1").reason_code == NO_MATCHING_SUBSCRIBERS
        assert client.publish_qos1("plants/c/line1").reason_code == NOT_AUTHORIZED
        assert client.publish_qos1("devices/gw-2/telemetry").reason_code == NOT_AUTHORIZED


def test_a_token_without_the_attribute_gets_nothing_from_that_template(template_broker: LocalBroker) -> None:
    with connect(template_broker, "tpl-2") as client:
        assert client.publish_qos1("plants/a/line1").reason_code == NOT_AUTHORIZED
        assert client.publish_qos1("devices/gw-1/telemetry").reason_code == NO_MATCHING_SUBSCRIBERS


def test_claim_lists_grant_nothing_when_switched_off(template_broker: LocalBroker) -> None:
    with connect(template_broker, "tpl-3", publish_topics=["#"]) as client:
        assert client.publish_qos1("anything/at/all").reason_code == NOT_AUTHORIZED


def test_a_gateway_subscribes_to_its_own_commands_only(template_broker: LocalBroker) -> None:
    with connect(template_broker, "tpl-4", sub="gw-7") as client:
        assert client.subscribe("cmd/gw-7/+").reason_codes == (GRANTED_QOS_1,)
        assert client.subscribe("cmd/+/reboot").reason_codes == (NOT_AUTHORIZED,)


def test_a_template_with_an_unknown_variable_stops_the_broker_at_start(
    issuer_keys: IssuerKeys, tmp_path: Path
) -> None:
    broker = LocalBroker(
        keys_dir=issuer_keys.directory, publish_templates=["x/${client.name}/#"], start_timeout=10
    )
    with pytest.raises(BrokerStartError) as refused, broker:
        pass
    assert "plugin_opt_publish_template 'x/${client.name}/#': unknown variable" in str(refused.value)
