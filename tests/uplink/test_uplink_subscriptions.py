"""The command subscriptions fit Event Grid's limits, seen from the real broker's own log: one wildcard
filter where the token grants it, else at most 10 filters per SUBSCRIBE, at most 5 SUBSCRIBEs a second,
and a refused filter asked again with backoff."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config.uplink import SignerTokenConfig
from gateway.model import InboundMessage
from gateway.mqtt_topics import filter_covers
from gateway.uplink import Uplink
from gateway.uplink.subscriptions import cover_filter
from tests.support.broker import LocalBroker
from tests.uplink.conftest import (
    GATEWAY,
    SITE,
    LogWatch,
    RecordingSource,
    TokenLedger,
    running,
    signer_config,
    uplink_config,
)

pytestmark = pytest.mark.broker

DEVICES = [f"meter-{i:02d}" for i in range(25)]
WILDCARD = f"plants/{SITE}/devices/+/commands/#"


def command_filter(device: str) -> str:
    return f"plants/{SITE}/devices/{device}/commands/#"


@pytest.fixture(scope="module")
def broker(issuer_key: Path) -> Iterator[LocalBroker]:
    # Verbose: mosquitto logs every SUBSCRIBE packet and each of its filters.
    with LocalBroker(keys_dir=issuer_key, verbose=True) as running_broker:
        yield running_broker


def granting(broker: LocalBroker, filters: list[str]) -> SignerTokenConfig:
    base = signer_config(broker)
    return SignerTokenConfig(
        key_file=base.key_file,
        issuer=base.issuer,
        subject=base.subject,
        audience=base.audience,
        lifetime=base.lifetime,
        not_before_skew=base.not_before_skew,
        claims=(*base.claims, ("subscribe_topics", tuple(filters))),
    )


def subscribes_since(broker: LocalBroker, mark: int) -> list[list[str]]:
    """Each SUBSCRIBE the broker received from the gateway since ``mark``, as its list of filters."""
    packets: list[list[str]] = []
    for line in broker.log_lines()[mark:]:
        if f"Received SUBSCRIBE from {GATEWAY}" in line:
            packets.append([])
        elif packets and (found := re.search(r"\t(\S+) \(QoS \d\)", line)):
            packets[-1].append(found.group(1))
    return packets


def test_filters_that_differ_in_whole_levels_are_covered_by_one_wildcard() -> None:
    assert cover_filter([command_filter(d) for d in DEVICES]) == WILDCARD
    assert cover_filter([command_filter("a")]) is None
    assert cover_filter(["a/b/#", "a/b/c/#"]) is None
    assert cover_filter(["a/+/x", "a/b/y"]) is None


async def test_a_granted_wildcard_replaces_every_device_filter_with_one(
    broker: LocalBroker, ledger: TokenLedger, watch: LogWatch
) -> None:
    cfg = uplink_config(broker, granting(broker, [WILDCARD]))
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    got: list[InboundMessage] = []
    uplink.subscribe(
        [command_filter(d) for d in DEVICES], got.append, permitted=lambda f: filter_covers(WILDCARD, f)
    )
    mark = len(broker.log_lines())
    async with running(uplink):
        await watch.wait_for(lambda: uplink.stats.subscribed == 1, "the wildcard subscribed", 15)
    assert subscribes_since(broker, mark) == [[WILDCARD]]


async def test_without_a_wildcard_grant_filters_go_ten_to_a_subscribe_and_five_subscribes_a_second(
    broker: LocalBroker, ledger: TokenLedger, watch: LogWatch
) -> None:
    filters = [command_filter(d) for d in DEVICES]
    cfg = uplink_config(broker, granting(broker, filters))
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    uplink.subscribe(filters, lambda m: None, permitted=lambda f: f in filters)
    mark = len(broker.log_lines())
    async with running(uplink):
        started = time.monotonic()
        await watch.wait_for(lambda: uplink.stats.subscribed == len(filters), "all 25 subscribed", 20)
        took = time.monotonic() - started
    assert subscribes_since(broker, mark) == [filters[:10], filters[10:20], filters[20:]]
    # Three SUBSCRIBEs at most 5 a second: never faster than two gaps of 0.2 s (a lower bound).
    assert took >= 0.4


async def test_a_refused_filter_is_asked_again_with_backoff_while_the_rest_stay_subscribed(
    broker: LocalBroker, ledger: TokenLedger, watch: LogWatch, caplog: pytest.LogCaptureFixture
) -> None:
    granted = command_filter("meter-00")
    refused = command_filter("meter-01")
    cfg = uplink_config(broker, granting(broker, [granted]))
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    # No permission check here (None): the broker's SUBACK is the only judge.
    uplink.subscribe([granted, refused], lambda m: None)
    mark = len(broker.log_lines())
    async with running(uplink):
        await watch.wait_for(lambda: uplink.stats.subscriptions_refused >= 3, "three refusals", 20)
        stats = uplink.stats
    packets = subscribes_since(broker, mark)
    assert packets[0] == [granted, refused]
    assert all(p == [refused] for p in packets[1:]) and len(packets) >= 3
    assert stats.subscribed == 1
    warnings = [r for r in caplog.records if "refused the subscription" in r.getMessage()]
    assert len(warnings) == 1, "logged once, then at debug level while it persists"
