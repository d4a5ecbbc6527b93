"""A Pi without a real-time clock boots with a stale wall clock; NTP then steps it forward by a year.
Token expiry (``exp``) is the issuer's wall clock: the uplink reads it once, at receipt, and counts down
on the monotonic clock, so the step neither delays the in-session refresh past the token's real lifetime
nor makes the uplink think the token ran out. Against the real local broker, which disconnects a client
whose token expired."""

from __future__ import annotations

import asyncio
import time

from gateway.auth import SignerTokenSource
from gateway.auth.token import Token
from gateway.uplink import Uplink
from gateway.uplink.session import seconds_left_at_receipt
from tests.support.broker import LocalBroker
from tests.uplink.conftest import GATEWAY, running, signer_config, uplink_config

YEAR = 365 * 24 * 3600.0


def test_a_token_is_judged_once_at_receipt_and_a_wrong_clock_gives_it_its_lifetime() -> None:
    token = Token(value="x.y.z", expires_at=10_000.0, issued_at=9_000.0)
    assert seconds_left_at_receipt(token, 9_400.0) == 600.0  # a right clock: what is left
    assert seconds_left_at_receipt(token, 9_000.0 - YEAR) == 1_000.0  # a year behind: its lifetime
    assert seconds_left_at_receipt(token, 10_000.0 + YEAR) == 1_000.0  # ahead: the broker will judge


async def test_a_wall_clock_step_of_a_year_neither_delays_the_refresh_nor_lapses_the_token(
    broker: LocalBroker,
) -> None:
    offset = [-YEAR]  # the gateway's clock before NTP: a year behind the issuer's and the broker's
    cfg = uplink_config(broker, signer_config(broker, lifetime=6.0))
    uplink = Uplink(
        cfg,
        SignerTokenSource(cfg.token),
        gateway_id=GATEWAY,
        site="lab",
        wall_clock=lambda: time.time() + offset[0],
    )
    async with running(uplink):
        offset[0] = 0.0  # NTP steps the clock forward by a year
        async with asyncio.timeout(40):
            while uplink.stats.refreshes_ok < 3:
                await asyncio.sleep(0.05)
        stats = uplink.stats
    # Refreshed in session each time, before the 6-second tokens ran out: never dropped by the broker.
    assert stats.connects == 1 and stats.refreshes_failed == 0
