"""TLS: verification is on by default; the broker's CA file makes it pass, its absence fails clearly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.model import Message
from gateway.uplink import PublishOutcome, Uplink
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


@pytest.fixture(scope="module")
def broker(issuer_key: Path) -> Iterator[LocalBroker]:
    """Overrides the plain broker: this module's broker listens with TLS (a development CA)."""
    with LocalBroker(keys_dir=issuer_key, tls=True) as running_broker:
        yield running_broker


async def test_tls_with_the_brokers_ca_file_verifies_and_publishes(
    broker: LocalBroker, ledger: TokenLedger
) -> None:
    assert broker.ca_path is not None
    cfg = uplink_config(broker, signer_config(broker), tls=True, ca_file=broker.ca_path)
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    async with running(uplink):
        result = await (await uplink.send(Message(topic=f"plants/{SITE}/x", payload=b"over tls")))
    assert result.outcome is PublishOutcome.DELIVERED
    assert uplink.stats.connects == 1


async def test_tls_without_the_ca_fails_verification_with_a_clear_error(
    broker: LocalBroker, ledger: TokenLedger, caplog: pytest.LogCaptureFixture, watch: LogWatch
) -> None:
    cfg = uplink_config(broker, signer_config(broker), tls=True)  # system CA store only
    uplink = Uplink(cfg, RecordingSource(cfg.token, ledger), gateway_id=GATEWAY, site=SITE)  # type: ignore[arg-type]
    async with running(uplink, connected=False):
        errored = lambda: any(r.levelno == logging.ERROR for r in caplog.records)  # noqa: E731
        await watch.wait_for(errored, "an error", 10)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "TLS certificate verification failed" in errors[0]
    assert "uplink.ca_file" in errors[0]
    assert uplink.stats.connects == 0 and uplink.stats.connections == 0
