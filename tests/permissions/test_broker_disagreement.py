"""When the gateway's view of its grants and the broker's differ, the operator is told which topic.

The broker grants `sites/${client.attributes.site}/#`; the gateway is (wrongly) told `sites/#`. A
publish the gateway thinks granted gets PUBACK 0x87: logged once as a disagreement, with the topic
and the rule the gateway believed in. Subscriptions are checked against the same model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from gateway.auth import make_token_source
from gateway.config.permissions import PermissionsConfig
from gateway.config.uplink import SignerTokenConfig, UplinkConfig
from gateway.model import Message, PublishOutcome
from gateway.permissions.gate import PermissionGate
from gateway.permissions.tracker import PermissionTracker, track_permissions
from gateway.uplink.session import Uplink
from tests.support.broker import LocalBroker
from tests.support.tokens import generate_rsa_key_pair

TEMPLATE = "sites/${client.attributes.site}/#"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("keys")
    generate_rsa_key_pair(keys, "issuer")
    with LocalBroker(keys_dir=keys, publish_templates=[TEMPLATE], publish_claim=None) as running:
        yield running


async def test_a_broker_refusal_of_a_topic_we_thought_granted_is_logged_as_a_disagreement(
    broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate")
    token = SignerTokenConfig(
        key_file=broker.private_key_path,
        issuer=broker.issuer,
        subject="gw-dis",
        audience=(broker.audience,),
        claims=(("site", "a"), ("subscribe_topics", ("cmd/gw-dis/#",))),
    )
    config = UplinkConfig(host=broker.host, port=broker.port, tls=False, token=token, client_id="gw-dis")
    uplink = Uplink(config, make_token_source(token), gateway_id="gw-dis", site="lab")
    tracker = track_permissions(uplink, PermissionsConfig(publish_templates=("sites/#",)))
    gate = PermissionGate(uplink, tracker)
    task = asyncio.create_task(gate.run(), name="gate")
    try:
        async with asyncio.timeout(10):
            await uplink.wait_connected()
            ok = await (await gate.send(Message("sites/a/x", b"1")))
            refused = [await (await gate.send(Message("sites/b/x", b"1"))) for _ in range(3)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert ok.outcome is PublishOutcome.DELIVERED
    assert [r.reason_code for r in refused] == [0x87, 0x87, 0x87]
    assert tracker.disagreements == {"sites/b/x": 3}
    told = [r.getMessage() for r in caplog.records if "permission disagreement" in r.getMessage()]
    assert told == [
        "permission disagreement: the broker refused publish to 'sites/b/x' (PUBACK 0x87 not authorized) "
        "although the token grants it by template sites/# (filter sites/#); [uplink.permissions] does not "
        "describe the broker's rules (topic spaces, templates, client groups) for this topic"
    ]
    # The same model answers for subscriptions (for the commands work).
    assert tracker.check_subscribe("cmd/gw-dis/+") is True
    assert tracker.check_subscribe("cmd/+/reboot") is False
    assert tracker.check_subscribe("cmd/+/reboot") is False
    assert tracker.subscribe_denied == {"cmd/+/reboot": 2}
    denied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("subscribe to")]
    assert denied == [
        "subscribe to 'cmd/+/reboot' not granted by the token: not granted by claim subscribe_topics"
    ]


def test_nothing_is_decided_before_the_first_token() -> None:
    fresh = PermissionTracker(PermissionsConfig())
    assert fresh.publish_verdict("a") is None
    assert fresh.check_subscribe("a") is None
    assert fresh.explain_publish_denial("a") == "no token yet"
