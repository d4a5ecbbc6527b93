"""Every token source fetches a real token over HTTPS from a local identity provider, and the test
checks what went over the wire (tenant, client id, scope, the client assertion's claims).

Entra ID: azure-identity's ClientSecretCredential and CertificateCredential (MSAL) talk to
tests/support/identity.py EntraAuthority, a stand-in for login.microsoftonline.com served over TLS by a
test CA (the `authority` setting points at it). OAuth2: the `oauth2` source talks to a TLS token endpoint
whose CA is given as `ca_file`. The Entra tokens then open a session at the local broker (OAUTH2-JWT).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from gateway.auth import make_token_source
from gateway.auth.enroll import new_key_pair
from gateway.auth.oauth2 import OAuth2TokenSource
from gateway.auth.token import TokenSource
from gateway.config.uplink import AzureTokenConfig, OAuth2TokenConfig, UplinkConfig
from gateway.errors import TokenError
from gateway.schema import Secret
from gateway.uplink.session import Uplink
from tests.support.broker import LocalBroker
from tests.support.identity import EntraAuthority, ServerCertificate, TokenEndpoint, make_test_ca
from tests.support.tokens import generate_rsa_key_pair

TENANT = "5b6e2f0a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
APP = "0f0e0d0c-0000-4000-8000-00000000a11c"
ENTRA_ISSUER = f"https://sts.windows.net/{TENANT}/"
APP_SECRET = "Qm~8Q~app-secret-value"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="module")
def entra_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("entra-keys")
    generate_rsa_key_pair(keys, "issuer")
    with LocalBroker(
        keys_dir=keys, issuer=ENTRA_ISSUER, audience="https://eventgrid.azure.net/", method="OAUTH2-JWT"
    ) as running:
        yield running


@pytest.fixture
def app_certificate(tmp_path: Path) -> tuple[Path, Path, str]:
    """An app registration's certificate as `fieldgate identity new` makes it: (bundle, cert, thumbprint)."""
    bundle = tmp_path / "app.pem"
    public = new_key_pair(bundle, certificate_subject="gw-entra", password="cert-pass-7")
    certificate = tmp_path / "app.crt"
    certificate.write_text(public.certificate_pem)
    return bundle, certificate, public.certificate_thumbprint


@pytest.fixture
def entra(
    entra_broker: LocalBroker,
    ca: ServerCertificate,
    app_certificate: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[EntraAuthority]:
    with EntraAuthority(
        signing_key=entra_broker.private_key_path,
        issuer=ENTRA_ISSUER,
        tls=ca,
        tenant=TENANT,
        secrets={APP: APP_SECRET},
        certificates={APP: app_certificate[1]},
    ) as authority:
        # azure-core's HTTP client (requests) trusts the test CA through its documented variable.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.ca))
        for name in ("IDENTITY_ENDPOINT", "IMDS_ENDPOINT", "AZURE_AUTHORITY_HOST"):
            monkeypatch.delenv(name, raising=False)
        yield authority


async def connect_once(broker: LocalBroker, token: AzureTokenConfig, source: TokenSource) -> None:
    config = UplinkConfig(
        host=broker.host,
        port=broker.port,
        tls=False,
        token=token,
        client_id="gw-entra",
        auth_method="OAUTH2-JWT",
    )
    uplink = Uplink(config, source, gateway_id="gw-entra", site="lab")
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        async with asyncio.timeout(60):
            await uplink.wait_connected()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_entra_client_secret_gets_a_token_for_its_tenant_and_app_and_opens_a_session(
    entra: EntraAuthority, entra_broker: LocalBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FG_APP_SECRET", APP_SECRET)
    cfg = AzureTokenConfig(
        credential="client-secret",
        tenant_id=TENANT,
        client_id=APP,
        client_secret=Secret("env:FG_APP_SECRET"),
        authority=entra.host,
        instance_discovery=False,
    )
    source = make_token_source(cfg)
    token = await source.get_token()

    assert entra.issued.refused == []
    tenant, form = entra.token_requests[-1]
    assert tenant == TENANT and form["client_id"] == APP and form["grant_type"] == "client_credentials"
    assert "https://eventgrid.azure.net/.default" in form["scope"].split()
    assert token.claims["tid"] == TENANT and token.claims["appid"] == APP
    assert token.value == entra.issued.tokens[-1]
    await connect_once(entra_broker, cfg, source)


async def test_a_wrong_tenant_is_refused_with_entra_s_words(
    entra: EntraAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FG_APP_SECRET", APP_SECRET)
    cfg = AzureTokenConfig(
        credential="client-secret",
        tenant_id="11111111-2222-4333-8444-555555555555",
        client_id=APP,
        client_secret=Secret("env:FG_APP_SECRET"),
        authority=entra.host,
        instance_discovery=False,
        timeout=20,
    )
    with pytest.raises(TokenError) as failure:
        await make_token_source(cfg).get_token()
    assert str(failure.value).startswith("azure client-secret: ClientAuthenticationError")
    assert APP_SECRET not in str(failure.value)


async def test_an_entra_client_certificate_with_a_password_signs_an_assertion_naming_its_certificate(
    entra: EntraAuthority,
    entra_broker: LocalBroker,
    app_certificate: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle, _, thumbprint = app_certificate
    monkeypatch.setenv("FG_CERT_PASSWORD", "cert-pass-7")
    cfg = AzureTokenConfig(
        credential="client-certificate",
        tenant_id=TENANT,
        client_id=APP,
        certificate_file=bundle,
        certificate_password=Secret("env:FG_CERT_PASSWORD"),
        authority=entra.host,
        instance_discovery=False,
    )
    source = make_token_source(cfg)
    token = await source.get_token()

    assert entra.issued.refused == [] and token.claims["appid"] == APP
    tenant, form = entra.token_requests[-1]
    assert tenant == TENANT and form["client_id"] == APP and "client_secret" not in form
    ((header, claims),) = entra.assertions
    sha1 = base64.urlsafe_b64encode(bytes.fromhex(thumbprint)).rstrip(b"=").decode()
    assert header["alg"] in ("RS256", "PS256") and header["x5t"].rstrip("=") == sha1
    assert claims["iss"] == claims["sub"] == APP
    assert claims["aud"] == entra.token_url(TENANT)
    await connect_once(entra_broker, cfg, source)


# -- oauth2 over HTTPS --------------------------------------------------------------------------------
@pytest.fixture
def tls_endpoint(ca: ServerCertificate, tmp_path: Path) -> Iterator[TokenEndpoint]:
    generate_rsa_key_pair(tmp_path, "issuer")
    generate_rsa_key_pair(tmp_path, "client")
    with TokenEndpoint(
        signing_key=tmp_path / "issuer.key",
        issuer="https://idp.example/",
        audience="https://fieldgate-local.ts.eventgrid.azure.net/",
        clients={"gw-tls": tmp_path / "client.pem"},
        tls=ca,
    ) as endpoint:
        yield endpoint


async def test_oauth2_over_https_trusts_its_ca_file_and_sends_an_assertion_of_the_configured_lifetime(
    tls_endpoint: TokenEndpoint, ca: ServerCertificate, tmp_path: Path
) -> None:
    assert tls_endpoint.url.startswith("https://127.0.0.1:")
    cfg = OAuth2TokenConfig(
        token_endpoint=tls_endpoint.url,
        client_id="gw-tls",
        client_auth="private_key_jwt",
        private_key_file=tmp_path / "client.key",
        key_id="gw-tls-2026",
        assertion_lifetime=30,
        ca_file=ca.ca,
    )
    token = await OAuth2TokenSource(cfg).get_token()

    assert token.claims["sub"] == "gw-tls" and tls_endpoint.issued.refused == []
    ((header, claims),) = tls_endpoint.assertions
    assert header == {"alg": "RS256", "kid": "gw-tls-2026", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == "gw-tls" and claims["aud"] == tls_endpoint.url
    assert claims["exp"] - claims["iat"] == 30
    assert re.fullmatch(r"[0-9a-f]{32}", claims["jti"])
    jwt.decode(  # the assertion is signed with the gateway's key
        tls_endpoint.issued.requests[-1]["client_assertion"],
        (tmp_path / "client.pem").read_bytes(),
        algorithms=["RS256"],
        audience=tls_endpoint.url,
    )


async def test_oauth2_over_https_without_the_ca_file_refuses_the_unknown_certificate(
    tls_endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    cfg = OAuth2TokenConfig(
        token_endpoint=tls_endpoint.url,
        client_id="gw-tls",
        client_auth="private_key_jwt",
        private_key_file=tmp_path / "client.key",
        timeout=10,
    )
    with pytest.raises(TokenError) as failure:
        await OAuth2TokenSource(cfg).get_token()
    assert str(failure.value).startswith(
        f"token endpoint {tls_endpoint.url} unreachable: [SSL: CERTIFICATE_VERIFY_FAILED]"
    )
    assert tls_endpoint.issued.requests == []  # nothing was sent to a server it could not verify
