"""The `oauth2` and `azure` token sources against local identity providers and the real local broker.

oauth2: a token endpoint started by the test checks client secrets (HTTP Basic or form) and
`private_key_jwt` assertions like a real provider; the gateway connects with what it issues and
re-authenticates in session. azure: azure-identity's ManagedIdentityCredential finds an App Service-style
identity endpoint through IDENTITY_ENDPOINT / IDENTITY_HEADER (its documented environment variables),
gets Entra-like tokens for `https://eventgrid.azure.net/` and the gateway connects with `OAUTH2-JWT`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.auth import make_token_source
from gateway.auth.oauth2 import OAuth2TokenSource
from gateway.auth.token import TokenSource
from gateway.config.uplink import (
    AzureTokenConfig,
    OAuth2TokenConfig,
    ReconnectConfig,
    RefreshConfig,
    TokenConfig,
    UplinkConfig,
)
from gateway.errors import TokenError
from gateway.model import Message, PublishOutcome
from gateway.schema import Secret
from gateway.uplink.session import Uplink
from tests.support.broker import LocalBroker
from tests.support.identity import ManagedIdentityEndpoint, TokenEndpoint
from tests.support.tokens import generate_rsa_key_pair

SECRET = "s3cr3t-value-with:colon&amp"
ENTRA_ISSUER = "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    generate_rsa_key_pair(directory, "issuer")  # the provider's signing key, trusted by the broker
    generate_rsa_key_pair(directory, "client")  # the gateway's private_key_jwt key
    return directory


@pytest.fixture(scope="module")
def broker(keys: Path) -> Iterator[LocalBroker]:
    with LocalBroker(keys_dir=keys) as running:
        yield running


@pytest.fixture
def endpoint(broker: LocalBroker, keys: Path) -> Iterator[TokenEndpoint]:
    with TokenEndpoint(
        signing_key=broker.private_key_path,
        issuer=broker.issuer,
        audience=broker.audience,
        clients={"gw-oauth": SECRET, "gw-keyed": keys / "client.pem"},
        lifetime=4,
        claims={"publish_topics": ["plants/#"]},
    ) as running:
        yield running


def uplink_config(broker: LocalBroker, token: TokenConfig, client_id: str, method: str) -> UplinkConfig:
    return UplinkConfig(
        host=broker.host,
        port=broker.port,
        tls=False,
        token=token,
        client_id=client_id,
        auth_method=method,
        refresh=RefreshConfig(jitter=0.1),
    )


async def connect_and_refresh(config: UplinkConfig, source: TokenSource) -> Uplink:
    """Run an uplink until it has connected and re-authenticated in session once."""
    uplink = Uplink(config, source, gateway_id=config.client_id, site="lab")
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        async with asyncio.timeout(15):
            await uplink.wait_connected()
            while uplink.stats.refreshes_ok < 1:
                await asyncio.sleep(0.05)
        assert uplink.stats.connects == 1  # refreshed in session, not by reconnecting
        assert uplink.stats.refreshes_failed == 0
        return uplink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
async def test_a_client_secret_gets_tokens_the_broker_accepts_and_refreshes(
    client_auth: str,
    broker: LocalBroker,
    endpoint: TokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("FG_CLIENT_SECRET", SECRET)
    cfg = OAuth2TokenConfig(
        token_endpoint=endpoint.url,
        client_id="gw-oauth",
        client_auth=client_auth,
        client_secret=Secret("env:FG_CLIENT_SECRET"),
        scope="mqtt.publish",
        audience=broker.audience,
    )
    source = make_token_source(cfg)
    assert isinstance(source, OAuth2TokenSource) and source.auth_method == "CUSTOM-JWT"

    await connect_and_refresh(uplink_config(broker, cfg, "gw-oauth", "CUSTOM-JWT"), source)

    assert len(endpoint.issued.tokens) >= 2 and endpoint.issued.refused == []
    # A reconnect right after the refresh reuses the fresh token instead of asking the provider again.
    fetched = len(endpoint.issued.tokens)
    assert (await source.get_token()).value == endpoint.issued.tokens[-1]
    assert len(endpoint.issued.tokens) == fetched
    assert endpoint.issued.requests[0]["scope"] == "mqtt.publish"
    assert endpoint.issued.requests[0]["audience"] == broker.audience
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in logged and not any(token in logged for token in endpoint.issued.tokens)


async def test_private_key_jwt_assertions_are_fresh_each_time_and_a_replay_is_refused(
    broker: LocalBroker, endpoint: TokenEndpoint, keys: Path
) -> None:
    cfg = OAuth2TokenConfig(
        token_endpoint=endpoint.url,
        client_id="gw-keyed",
        client_auth="private_key_jwt",
        private_key_file=keys / "client.key",
        key_id="client-key-1",
    )
    source = OAuth2TokenSource(cfg)

    await connect_and_refresh(uplink_config(broker, cfg, "gw-keyed", "CUSTOM-JWT"), source)

    assertions = [r["client_assertion"] for r in endpoint.issued.requests]
    assert len(assertions) >= 2 and len(set(assertions)) == len(assertions)
    assert endpoint.issued.refused == []
    # The provider refuses an assertion it has seen (a captured request cannot be replayed).
    replay = urllib.parse.urlencode(endpoint.issued.requests[0]).encode()
    request = urllib.request.Request(endpoint.url, data=replay)
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
    assert refused.value.code == 401
    assert endpoint.issued.refused == ["client assertion replayed (jti seen before)"]


async def test_a_wrong_secret_names_the_token_endpoint_and_never_the_secret(
    endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("not-the-secret-42\n")
    source = OAuth2TokenSource(
        OAuth2TokenConfig(
            token_endpoint=endpoint.url,
            client_id="gw-oauth",
            client_secret=Secret(f"file:{secret_file}"),
        )
    )
    with pytest.raises(TokenError) as failure:
        await source.get_token()
    text = str(failure.value)
    assert text == (
        f"token endpoint {endpoint.url} answered HTTP 401: invalid_client bad client credentials "
        "(the client id or its credentials were refused)"
    )
    assert "not-the-secret-42" not in text


async def test_an_unreachable_endpoint_and_an_opaque_token_are_clear_errors(
    endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = "http://127.0.0.1:9/token"
    source = OAuth2TokenSource(
        OAuth2TokenConfig(
            token_endpoint=closed, client_id="gw-oauth", client_secret=Secret("env:PATH"), timeout=2
        )
    )
    with pytest.raises(TokenError, match=r"token endpoint http://127\.0\.0\.1:9/token unreachable"):
        await source.get_token()

    endpoint.opaque = True  # a reference token the broker could not verify
    monkeypatch.setenv("FG_CLIENT_SECRET", SECRET)
    source = OAuth2TokenSource(
        OAuth2TokenConfig(
            token_endpoint=endpoint.url, client_id="gw-oauth", client_secret=Secret("env:FG_CLIENT_SECRET")
        )
    )
    with pytest.raises(TokenError) as failure:
        await source.get_token()
    assert str(failure.value) == (
        f"the access token from token endpoint {endpoint.url}: "
        "not a JWT (expected three dot-separated parts, found 1)"
    )


async def test_an_outage_at_the_provider_is_retried_while_the_token_lasts_and_publishing_goes_on(
    broker: LocalBroker,
    endpoint: TokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate")
    monkeypatch.setenv("FG_CLIENT_SECRET", SECRET)
    endpoint.lifetime = 8
    cfg = OAuth2TokenConfig(
        token_endpoint=endpoint.url, client_id="gw-oauth", client_secret=Secret("env:FG_CLIENT_SECRET")
    )
    config = replace(
        uplink_config(broker, cfg, "gw-outage", "CUSTOM-JWT"),
        reconnect=ReconnectConfig(initial=0.2, maximum=0.4),
    )
    uplink = Uplink(config, OAuth2TokenSource(cfg), gateway_id="gw-outage", site="lab")
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        async with asyncio.timeout(20):
            await uplink.wait_connected()
            endpoint.failing = True
            while endpoint.issued.refused.count("outage") < 3:
                await asyncio.sleep(0.02)
            # Still connected on the current token: messages keep flowing.
            result = await (await uplink.send(Message("plants/p1/telemetry", b"{}")))
            assert result.outcome is PublishOutcome.DELIVERED
            endpoint.failing = False
            while uplink.stats.refreshes_ok < 1:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert uplink.stats.connects == 1
    messages = [r.getMessage() for r in caplog.records]
    failing = [m for m in messages if m.startswith("token refresh: token endpoint")]
    assert len(failing) == 1 and "answered HTTP 503: temporarily_unavailable try again later" in failing[0]
    assert "retrying while the token is valid" in failing[0]
    assert any(m.startswith("token refresh still failing: the token expires in") for m in messages)
    assert "token refresh: a fresh token was obtained again" in messages


# -- azure ------------------------------------------------------------------------------------------
@pytest.fixture
def entra_broker(keys: Path) -> Iterator[LocalBroker]:
    # Entra-issued tokens: Event Grid's OAUTH2-JWT method, aud https://eventgrid.azure.net/.
    with LocalBroker(
        keys_dir=keys, issuer=ENTRA_ISSUER, audience="https://eventgrid.azure.net/", method="OAUTH2-JWT"
    ) as running:
        yield running


async def test_azure_managed_identity_connects_with_oauth2_jwt_and_refreshes_in_session(
    entra_broker: LocalBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with ManagedIdentityEndpoint(
        signing_key=entra_broker.private_key_path,
        issuer=ENTRA_ISSUER,
        header_secret="identity-header-secret",
        lifetime=4,
        claims={"publish_topics": ["plants/#"]},
    ) as identity:
        # azure-identity's documented App Service variables route ManagedIdentityCredential here.
        monkeypatch.setenv("IDENTITY_ENDPOINT", identity.url)
        monkeypatch.setenv("IDENTITY_HEADER", "identity-header-secret")
        cfg = AzureTokenConfig(credential="managed-identity")
        source = make_token_source(cfg)
        assert source.auth_method == "OAUTH2-JWT"
        config = uplink_config(entra_broker, cfg, "gw-azure", "OAUTH2-JWT")

        started = time.monotonic()
        await connect_and_refresh(config, source)

        assert time.monotonic() - started < 15
        assert len(identity.issued.tokens) >= 2 and identity.issued.refused == []
        assert identity.issued.requests[0]["resource"] == "https://eventgrid.azure.net"
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "identity-header-secret" not in logged
        assert not any(token in logged for token in identity.issued.tokens)


async def test_azure_errors_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    with ManagedIdentityEndpoint(
        signing_key=Path("/nonexistent"), issuer=ENTRA_ISSUER, header_secret="right"
    ) as identity:
        monkeypatch.setenv("IDENTITY_ENDPOINT", identity.url)
        monkeypatch.setenv("IDENTITY_HEADER", "wrong")
        source = make_token_source(AzureTokenConfig(credential="managed-identity", timeout=20))
        with pytest.raises(TokenError) as failure:
            await source.get_token()
        # azure-identity's own words, on one line, behind the credential kind.
        assert str(failure.value).startswith(
            "azure managed-identity: CredentialUnavailableError: App Service managed identity"
        )


def self_signed_pem(directory: Path) -> Path:
    """A certificate and its key in one PEM, as CertificateCredential reads them."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldgate-app")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = directory / "app.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


def test_each_azure_credential_kind_builds_its_azure_identity_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure import identity

    from gateway.auth.azure import build_credential

    monkeypatch.setenv("FG_APP_SECRET", "app-secret")
    federated = tmp_path / "federated-token"
    federated.write_text("eyJ.federated.token")
    ids = {
        "client_id": "0f0e0d0c-0000-4000-8000-000000000001",
        "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    }
    kinds = {
        "managed-identity": (
            AzureTokenConfig(credential="managed-identity"),
            identity.ManagedIdentityCredential,
        ),
        "client-secret": (
            AzureTokenConfig(credential="client-secret", client_secret=Secret("env:FG_APP_SECRET"), **ids),
            identity.ClientSecretCredential,
        ),
        "client-certificate": (
            AzureTokenConfig(
                credential="client-certificate", certificate_file=self_signed_pem(tmp_path), **ids
            ),
            identity.CertificateCredential,
        ),
        "workload-identity": (
            AzureTokenConfig(credential="workload-identity", token_file=federated, **ids),
            identity.WorkloadIdentityCredential,
        ),
        "default": (AzureTokenConfig(credential="default"), identity.DefaultAzureCredential),
    }
    for kind, (cfg, expected) in kinds.items():
        assert isinstance(build_credential(cfg), expected), kind


def test_a_missing_azure_secret_is_named_by_its_reference_only() -> None:
    from gateway.auth.azure import build_credential

    cfg = AzureTokenConfig(
        credential="client-secret",
        client_id="c",
        tenant_id="t",
        client_secret=Secret("env:FG_NOT_SET_ANYWHERE"),
    )
    with pytest.raises(TokenError) as failure:
        build_credential(cfg)
    assert str(failure.value) == "azure client-secret: environment variable FG_NOT_SET_ANYWHERE is not set"


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_token_endpoint_that_redirects_is_refused_and_the_secret_never_follows(
    endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(status)
            self.send_header("Location", endpoint.url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("FG_CLIENT_SECRET", SECRET)
        url = f"http://127.0.0.1:{server.server_port}/token"
        source = OAuth2TokenSource(
            OAuth2TokenConfig(
                token_endpoint=url, client_id="gw-oauth", client_secret=Secret("env:FG_CLIENT_SECRET")
            )
        )
        with pytest.raises(TokenError) as failure:
            await source.get_token()
        assert f"answered HTTP {status}" in str(failure.value) and "not followed" in str(failure.value)
        assert SECRET not in str(failure.value)
    finally:
        server.shutdown()
        server.server_close()
