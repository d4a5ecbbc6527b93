"""Event Grid routes a message's JSON as ``data`` only when the message says it is JSON: telemetry and
command responses arrive at an independent subscriber with Payload Format Indicator 1 and Content Type
``application/json``; a plain-text status message does not claim to be JSON."""

from __future__ import annotations

import json

import pytest

from gateway.config.uplink import StatusMessageConfig
from gateway.model import Message
from gateway.uplink import PublishOutcome, Uplink
from tests.support.broker import LocalBroker
from tests.uplink.conftest import (
    GATEWAY,
    SITE,
    RecordingSource,
    TokenLedger,
    running,
    signer_config,
    subscriber,
    uplink_config,
)

pytestmark = pytest.mark.broker

READINGS = f"plants/{SITE}/gateways/{GATEWAY}/readings"


async def test_telemetry_and_responses_arrive_marked_as_json_and_plain_status_does_not(
    broker: LocalBroker, ledger: TokenLedger
) -> None:
    cfg = uplink_config(
        broker,
        signer_config(broker),
        birth=StatusMessageConfig(topic="plants/{site}/gateways/{gateway}/status", payload="online"),
    )
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    body = json.dumps({"value": 21.5, "unit": "°C"}).encode()
    async with subscriber(broker, ledger, f"plants/{SITE}/#") as observer, running(uplink):
        telemetry = await (await uplink.send(Message(topic=READINGS, payload=body, seq=1)))
        response = await uplink.respond(READINGS, b'{"ok":true}', b"corr-1")
        await observer.wait_for(lambda s: len(s.messages) >= 3)

    assert {telemetry.outcome, response.outcome} == {PublishOutcome.DELIVERED}
    by_payload = {bytes(m.payload): m for m in observer.messages}  # type: ignore[arg-type]
    for payload in (body, b'{"ok":true}'):
        props = by_payload[payload].properties
        assert props is not None
        assert getattr(props, "PayloadFormatIndicator", None) == 1
        assert getattr(props, "ContentType", None) == "application/json"
    assert getattr(by_payload[b'{"ok":true}'].properties, "CorrelationData", None) == b"corr-1"
    status = by_payload[b"online"].properties
    assert getattr(status, "ContentType", None) is None
    assert getattr(status, "PayloadFormatIndicator", None) is None
