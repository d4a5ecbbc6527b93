"""Connection hygiene against the real local broker.

Two gateways configured with the same client id (a copied config, a cloned SD card) take the MQTT
session from each other. Both processes stay up, each says once that it is in a reconnect loop, and
their connection attempts back off instead of knocking each other off every second. (mosquitto 2.0.11
closes the taken-over connection without a DISCONNECT; the 0x8E Session taken over that Event Grid
sends is covered in test_uplink_reauth_answers.py.) A token the broker refuses is dropped from the
oauth2 source's cache, so the next connect brings a new one from the issuer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth.oauth2 import OAuth2TokenSource
from gateway.config.uplink import OAuth2TokenConfig, ReconnectConfig, UplinkConfig
from gateway.schema import Secret
from gateway.uplink.session import Uplink
from tests.service.conftest import SIMULATED, service_env
from tests.support.broker import LocalBroker
from tests.support.identity import TokenEndpoint
from tests.support.process import GatewayProcess

TWIN = "gw-twin"
#: How long the two gateways are left to fight over the session.
WINDOW = 15.0


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


def twin_config(tmp_path: Path, broker: LocalBroker, gateway: str) -> Path:
    folder = tmp_path / gateway
    folder.mkdir()
    config = folder / "fieldgate.toml"
    config.write_text(
        f"""
[gateway]
id = "{gateway}"
site = "lab"
stats_interval = 0
state_dir = "{folder / "state"}"
shutdown_grace = 1

[uplink]
host = "{broker.host}"
port = {broker.port}
tls = false
client_id = "{TWIN}"

[uplink.reconnect]
initial = 0.5
max = 4
stable_after = 60

[uplink.token]
source = "signer"
key_file = "{broker.private_key_path}"
issuer = "{broker.issuer}"
audience = "{broker.audience}"
lifetime = 600

[uplink.token.claims]
publish_topics = ["sites/lab/#"]
"""
        + SIMULATED
    )
    return config


def connects_of(broker: LocalBroker, client_id: str) -> int:
    return sum(
        1 for line in broker.log_lines() if "New client connected" in line and f" as {client_id} " in line
    )


async def test_two_gateways_with_one_client_id_stay_up_log_the_takeover_loop_once_and_back_off(
    tmp_path: Path, broker: LocalBroker
) -> None:
    before = connects_of(broker, TWIN)
    twins = [
        await GatewayProcess(
            ["run", "--config", str(twin_config(tmp_path, broker, gw))], env=service_env()
        ).start()
        for gw in ("gw-a", "gw-b")
    ]
    try:
        loop_logged = lambda s: "reconnect loop:" in s  # noqa: E731
        for twin in twins:
            await twin.wait_for(loop_logged, stream="stderr", timeout=60)
        # From the first logged loop on, leave them to it for a while and count the CONNECTs they make.
        counted_from = connects_of(broker, TWIN)
        await asyncio.sleep(WINDOW)
        during = connects_of(broker, TWIN) - counted_from

        for twin in twins:
            assert twin.proc is not None and twin.proc.returncode is None, "\n".join(twin.stderr)
            loop_lines = [s for s in twin.stderr if loop_logged(s)]
            assert len(loop_lines) == 1, loop_lines
            assert "without a DISCONNECT reason" in loop_lines[0]
            assert f"client id {TWIN!r}" in loop_lines[0]
        # Reconnecting after each takeover with the backoff reset (0.25-0.5 s) would make over 30 CONNECTs
        # per gateway in the window; backing off to at most 4 s makes a handful. A slow machine only
        # lowers the count.
        assert 0 < during < 16, during
        assert connects_of(broker, TWIN) - before >= 4
        for twin in twins:
            twin.signal(signal.SIGTERM)
        for twin in twins:
            assert await twin.wait(timeout=30) == 0
    finally:
        for twin in twins:
            await twin.kill()


async def test_a_token_the_broker_refuses_is_not_offered_again(
    broker: LocalBroker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issuer first hands out tokens for another audience (a misconfigured app registration, fixed
    a moment later). The oauth2 source would keep its cached token for half its 10-minute lifetime;
    after the broker's CONNACK 0x87 the uplink drops it, and the next attempt fetches a good one."""
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("FG_TWIN_SECRET", "twin-secret")
    with TokenEndpoint(
        signing_key=broker.private_key_path,
        issuer=broker.issuer,
        audience="https://somewhere-else.example",
        clients={"gw-refused": "twin-secret"},
        lifetime=600,
        claims={"publish_topics": ["sites/lab/#"]},
    ) as endpoint:
        cfg = OAuth2TokenConfig(
            token_endpoint=endpoint.url,
            client_id="gw-refused",
            client_secret=Secret("env:FG_TWIN_SECRET"),
        )
        config = UplinkConfig(
            host=broker.host,
            port=broker.port,
            tls=False,
            token=cfg,
            client_id="gw-refused",
            reconnect=ReconnectConfig(initial=0.2, maximum=1.0),
        )
        uplink = Uplink(config, OAuth2TokenSource(cfg), gateway_id="gw-refused", site="lab")
        task = asyncio.create_task(uplink.run(), name="uplink")
        try:
            async with asyncio.timeout(30):
                while not any("CONNACK 0x87" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.05)
                endpoint.audience = broker.audience
                await uplink.wait_connected()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert len(endpoint.issued.tokens) >= 2
        assert uplink.stats.connects == 1
