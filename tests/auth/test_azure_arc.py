"""`source = "azure"` on an Azure Arc-enabled server: the machine's managed identity through the Arc agent.

The identity endpoint is ours (tests/support/identity.py ArcIdentityEndpoint), a stand-in for the Azure
Connected Machine agent implementing its documented challenge flow; azure-identity (and MSAL under it)
is the real client. It reads the challenge file only under /var/opt/azcmagent/tokens, which the test
creates (the test setup runs as root); the broker is the real local one with Event Grid's OAUTH2-JWT.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth import make_token_source
from gateway.config.uplink import AzureTokenConfig, RefreshConfig, UplinkConfig
from gateway.errors import TokenError
from gateway.model import Message, PublishOutcome
from gateway.uplink.session import Uplink
from tests.support.broker import LocalBroker
from tests.support.identity import ARC_TOKENS_DIR, ArcIdentityEndpoint
from tests.support.tokens import generate_rsa_key_pair

ENTRA_ISSUER = "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.access(ARC_TOKENS_DIR, os.W_OK),
    reason=f"creating the Arc agent's challenge files under {ARC_TOKENS_DIR} needs root",
)


@pytest.fixture(scope="module")
def entra_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("arc-keys")
    generate_rsa_key_pair(keys, "issuer")  # stands in for Entra ID's signing key
    with LocalBroker(
        keys_dir=keys, issuer=ENTRA_ISSUER, audience="https://eventgrid.azure.net/", method="OAUTH2-JWT"
    ) as running:
        yield running


@pytest.fixture
def arc(entra_broker: LocalBroker, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArcIdentityEndpoint]:
    with ArcIdentityEndpoint(
        signing_key=entra_broker.private_key_path,
        issuer=ENTRA_ISSUER,
        lifetime=4,
        claims={"publish_topics": ["plants/#"]},
    ) as endpoint:
        # What the Arc agent sets for every process on the machine (systemd DefaultEnvironment).
        monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
        monkeypatch.setenv("IMDS_ENDPOINT", endpoint.imds_url)
        for name in ("IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET"):
            monkeypatch.delenv(name, raising=False)
        yield endpoint


def claims_of(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    loaded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return loaded


async def test_an_arc_server_gets_its_identity_through_the_agent_challenge_and_publishes_on_oauth2_jwt(
    entra_broker: LocalBroker, arc: ArcIdentityEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = AzureTokenConfig(credential="managed-identity")
    source = make_token_source(cfg)
    assert source.auth_method == "OAUTH2-JWT"
    assert f"Azure Arc agent {arc.url}" in source.description
    config = UplinkConfig(
        host=entra_broker.host,
        port=entra_broker.port,
        tls=False,
        token=cfg,
        client_id="gw-arc",
        auth_method="OAUTH2-JWT",
        refresh=RefreshConfig(jitter=0.1),
    )
    uplink = Uplink(config, source, gateway_id="gw-arc", site="lab")
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        async with asyncio.timeout(60):
            await uplink.wait_connected()
            result = await (await uplink.send(Message("plants/p1/telemetry", b"{}")))
            assert result.outcome is PublishOutcome.DELIVERED
            while uplink.stats.refreshes_ok < 1:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert uplink.stats.connects == 1  # the refresh went in session (AUTH 0x19), through the agent again

    # On the wire, per token: a bare request answered by the challenge, then the same request with
    # the challenge file's content; always Metadata: true and Event Grid's resource.
    assert len(arc.issued.tokens) >= 2 and arc.issued.refused == []
    first, second = arc.wire[0], arc.wire[1]
    assert first[0] == {"api-version": "2020-06-01", "resource": "https://eventgrid.azure.net"}
    assert first[1] == {"Metadata": "true"}
    assert second[0] == first[0]
    assert second[1]["Metadata"] == "true" and second[1]["Authorization"].startswith("Basic ")
    assert [headers.get("Authorization") is None for _, headers in arc.wire][:4] == [True, False] * 2
    # Each challenge file was used once and removed; the tokens are the Arc machine's identity.
    assert arc.challenges == {} and not any(ARC_TOKENS_DIR.glob("*.key"))
    claims = claims_of(arc.issued.tokens[0])
    assert claims["aud"] == "https://eventgrid.azure.net/" and claims["oid"] == arc.object_id
    logged = "\n".join(r.getMessage() for r in caplog.records)
    secrets = [headers["Authorization"][6:] for _, headers in arc.wire if "Authorization" in headers]
    assert not any(secret in logged for secret in secrets)
    assert not any(token in logged for token in arc.issued.tokens)


async def test_a_challenge_file_the_gateway_cannot_read_is_a_clear_token_error(
    arc: ArcIdentityEndpoint,
) -> None:
    arc.unreadable = True  # the agent names a file this user cannot open
    source = make_token_source(AzureTokenConfig(credential="managed-identity", timeout=20))
    with pytest.raises(TokenError) as failure:
        await source.get_token()
    text = str(failure.value)
    (path,) = arc.challenges
    assert text.startswith(f"azure managed-identity: cannot read {path}: No such file or directory")
    assert text.endswith(
        "(Azure Arc: the gateway's user must be in the himds group to read the agent's challenge file)"
    )
    assert Path(path).parent == ARC_TOKENS_DIR
