"""`fieldgate identity new`: a gateway enrols with its own key pair, the operator registers the public
half with the issuer, and the gateway gets tokens of its own; `fieldgate token` names the identity model.

The round trip runs against the local issuer (node-oidc-provider, deploy/issuer), not a stand-in.
"""

from __future__ import annotations

import base64
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from gateway.cli.main import main
from gateway.errors import ExitCode
from tests.support.issuer import LocalIssuer

PEM_PUBLIC = re.compile(r"-----BEGIN PUBLIC KEY-----\n.*?-----END PUBLIC KEY-----\n", re.S)


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(token_ttl=300) as running:
        yield running


def write_config(directory: Path, token: str, *, gateway: str = "gw-north-1", site: str = "north") -> Path:
    path = directory / "gateway.toml"
    path.write_text(
        f"""
[gateway]
id = "{gateway}"
site = "{site}"
state_dir = "{directory / "state"}"

[devices.meter]
driver = "simulated"
[[devices.meter.points]]
name = "value"
signal = "ramp"

[uplink]
host = "127.0.0.1"
port = 1883
tls = false

[uplink.token]
{token}
"""
    )
    return path


def oauth2_token(issuer_url: str, key: Path, client: str = "gw-north-1") -> str:
    return f"""source = "oauth2"
token_endpoint = "{issuer_url}"
client_id = "{client}"
client_auth = "private_key_jwt"
private_key_file = "{key}"
"""


def test_identity_new_creates_a_private_key_and_prints_only_its_public_half(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "keys" / "client.key"
    config = write_config(tmp_path, oauth2_token("https://idp.example/token", key))

    assert main(["identity", "new", "--config", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out

    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = load_pem_private_key(key.read_bytes(), password=None)
    # Nothing of the private key reaches the output: not its PEM body, not its private exponent.
    body = "".join(key.read_text().splitlines()[1:-1])
    assert not any(line and line in out for line in key.read_text().splitlines()[1:-1]) and body not in out
    (pem,) = PEM_PUBLIC.findall(out)
    public = load_pem_public_key(pem.encode())
    assert isinstance(public, RSAPublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]
    jwk = json.loads(next(line for line in out.splitlines() if line.startswith('{"alg": "RS256"')))
    assert jwk["kty"] == "RSA" and jwk["use"] == "sig" and "d" not in jwk
    n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)), "big")
    assert n == public.public_numbers().n
    assert "client id:   gw-north-1" in out
    assert 'sub = "gw-north-1"' in out and 'site = "north"' in out
    assert f'set key_id = "{jwk["kid"]}"' in out

    # A second run does not replace the gateway's key (it is registered by now) unless told to.
    before = key.read_bytes()
    assert main(["identity", "new", "--config", str(config)]) == ExitCode.FAILURE
    assert "exists: refusing to replace a gateway's key (--force replaces it)" in capsys.readouterr().err
    assert key.read_bytes() == before
    assert main(["identity", "new", "--config", str(config), "--force"]) == ExitCode.OK
    capsys.readouterr()
    assert key.read_bytes() != before and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in key.parent.iterdir()) == ["client.key"]  # no temporary left behind


def test_enrolled_gateway_gets_its_own_token_from_the_issuer(
    issuer: LocalIssuer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "client.key"
    config = write_config(tmp_path, oauth2_token(issuer.token_url, key, "gw-north-7"), gateway="gw-north-7")
    assert main(["identity", "new", "--config", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out
    (pem,) = PEM_PUBLIC.findall(out)
    assert "deploy/issuer/client.sh add gw-north-7 --public-key PUBLIC.pem --claim site=north" in out

    # The operator registers what was printed, as the output says.
    public = tmp_path / "PUBLIC.pem"
    public.write_text(pem)
    issuer.add_client("gw-north-7", public, {"site": "north"})

    assert main(["token", "--config", str(config)]) == ExitCode.OK
    report = capsys.readouterr().out
    assert (
        "identity:  oauth2: this gateway's own client 'gw-north-7' at an issuer (private_key_jwt)" in report
    )
    assert '"sub": "gw-north-7"' in report and '"site": "north"' in report
    assert f'"iss": "{issuer.iss}"' in report
    # The issuer verified the assertion against the registered key: a different key is refused.
    assert main(["identity", "new", "--config", str(config), "--force"]) == ExitCode.OK
    capsys.readouterr()
    assert main(["token", "--config", str(config)]) == ExitCode.FAILURE
    captured = capsys.readouterr()
    assert "identity:  oauth2" in captured.out and "invalid_client" in captured.err


def test_an_entra_client_certificate_is_created_encrypted_with_its_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FG_CERT_PASSWORD", "pass-phrase-9")
    certificate = tmp_path / "app.pem"
    config = write_config(
        tmp_path,
        f"""source = "azure"
credential = "client-certificate"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "0f0e0d0c-0000-4000-8000-000000000001"
certificate_file = "{certificate}"
certificate_password = "env:FG_CERT_PASSWORD"
""",
    )
    assert main(["identity", "new", "--config", str(config)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert stat.S_IMODE(certificate.stat().st_mode) == 0o600
    text = certificate.read_text()
    assert "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text and "-----BEGIN CERTIFICATE-----" in text
    assert "pass-phrase-9" not in out and "PRIVATE KEY" not in out
    assert "upload the certificate to the app registration 0f0e0d0c-0000-4000-8000-000000000001" in out
    thumbprint = re.search(r"thumbprint \(SHA-1\): ([0-9A-F]{40})", out)
    assert thumbprint is not None

    from azure.identity import CertificateCredential

    from gateway.auth.azure import build_credential
    from gateway.config import load_config

    uplink = load_config(config).uplink
    assert uplink is not None
    assert isinstance(build_credential(uplink.token), CertificateCredential)  # reads it with the password


def test_a_signer_config_has_no_per_gateway_key_to_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issuer_key = tmp_path / "issuer.key"
    issuer_key.write_text("not read")
    config = write_config(
        tmp_path,
        f"""source = "signer"
key_file = "{issuer_key}"
issuer = "https://fieldgate.example/issuer"
audience = "https://ns.westeurope-1.ts.eventgrid.azure.net/"
""",
    )
    assert main(["identity", "new", "--config", str(config)]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert 'source = "signer" has no per-gateway key to create' in err
    assert 'source = "oauth2" with client_auth = "private_key_jwt"' in err
    assert issuer_key.read_text() == "not read"


def test_token_names_the_identity_model_even_when_no_token_comes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f'source = "file"\npath = "{tmp_path / "absent.jwt"}"')
    assert main(["token", "--config", str(config)]) == ExitCode.FAILURE
    captured = capsys.readouterr()
    assert "identity:  file: tokens written by an agent on this host" in captured.out
    assert "cannot read token file" in captured.err
