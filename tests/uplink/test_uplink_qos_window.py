"""``uplink.qos = 0`` and ``uplink.max_inflight`` against the real local broker: what the operator sets is
what goes on the wire."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.model import Message
from gateway.uplink import PublishOutcome, Uplink
from tests.support.broker import LocalBroker
from tests.uplink.conftest import (
    GATEWAY,
    SITE,
    RecordingSource,
    TokenLedger,
    broker_lines,
    running,
    signer_config,
    subscriber,
    uplink_config,
)

pytestmark = pytest.mark.broker

TOPIC = f"plants/{SITE}/gateways/{GATEWAY}/readings"


def messages(count: int) -> list[Message]:
    return [Message(topic=TOPIC, payload=f"reading {i}".encode(), seq=i) for i in range(count)]


async def test_qos_0_sends_without_acknowledgements_and_the_subscriber_gets_qos_0(
    broker: LocalBroker, ledger: TokenLedger
) -> None:
    cfg = uplink_config(broker, signer_config(broker), qos=0)
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    async with subscriber(broker, ledger, f"plants/{SITE}/#") as observer, running(uplink):
        results = await asyncio.gather(*[await uplink.send(m) for m in messages(50)])
        # QoS 0 on loopback with nothing failing: all of them arrive (none is promised).
        await observer.wait_for(lambda s: len(s.messages) >= 50, within=20)
        stats = uplink.stats

    assert {(r.outcome, r.reason_code, r.reason) for r in results} == {
        (PublishOutcome.DELIVERED, None, "written (QoS 0)")
    }
    assert observer.payloads() == [f"reading {i}".encode() for i in range(50)]
    # The subscriber asked for QoS 1: what it gets is the publisher's QoS 0.
    assert {m.qos for m in observer.messages} == {0}
    assert (stats.delivered, stats.refused, stats.lost, stats.inflight) == (50, 0, 0, 0)


async def test_max_inflight_bounds_the_unacknowledged_messages_and_everything_is_delivered(
    broker: LocalBroker, ledger: TokenLedger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate.uplink")
    mark = len(broker.log_lines())
    cfg = uplink_config(broker, signer_config(broker), max_inflight=3)
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    peak = 0

    async with subscriber(broker, ledger, f"plants/{SITE}/#") as observer, running(uplink):
        futures = []
        for message in messages(200):
            # send() returns once the message is written: a full window makes it wait (backpressure).
            futures.append(await uplink.send(message))
            peak = max(peak, uplink.stats.inflight)
        results = await asyncio.gather(*futures)
        await observer.wait_for(lambda s: len(s.messages) >= 200, within=20)

    connected = [r.getMessage() for r in caplog.records if "uplink connected" in r.getMessage()]
    assert len(connected) == 1 and "window 3" in connected[0], connected
    # The window was used, and never exceeded.
    assert 1 <= peak <= 3
    assert {r.outcome for r in results} == {PublishOutcome.DELIVERED}
    assert observer.payloads() == [f"reading {i}".encode() for i in range(200)]
    assert len(broker_lines(broker, f"connect accepted as '{GATEWAY}'", mark)) == 1
