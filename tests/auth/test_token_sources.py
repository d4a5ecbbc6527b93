"""Token sources: the gateway's own signer and a file written by an outside agent.

A token's text must never show up in a repr, an error message, a log line or `fieldgate token`'s output.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import (
    FileTokenSource,
    SignerTokenSource,
    Token,
    TokenSource,
    describe_token,
    make_token_source,
    token_report,
)
from gateway.auth import signer as signer_module
from gateway.config.uplink import FileTokenConfig, SignerTokenConfig, UplinkConfig
from gateway.errors import TokenError
from tests.support.tokens import generate_rsa_key_pair, mint_token

ISSUER = "https://fieldgate.dev/issuer"
AUDIENCE = "https://fieldgate-local.ts.eventgrid.azure.net/"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_rsa_key_pair(tmp_path_factory.mktemp("keys"), "issuer")


@pytest.fixture(params=["libcrypto", "cryptography"])
def signing_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The signer signs through the ssl module's libcrypto, or through cryptography where it cannot."""
    if request.param == "libcrypto":
        assert signer_module.libcrypto() is not None, "this host's ssl has no shared OpenSSL 3"
    else:
        monkeypatch.setattr(signer_module, "libcrypto", lambda: None)
    return str(request.param)


def signer_config(key: Path, **overrides: object) -> SignerTokenConfig:
    values: dict[str, object] = {
        "key_file": key,
        "issuer": ISSUER,
        "subject": "gw-1",
        "audience": (AUDIENCE,),
        "lifetime": 600.0,
        "not_before_skew": 30.0,
    }
    values.update(overrides)
    return SignerTokenConfig(**values)  # type: ignore[arg-type]


def token_parts(token: str) -> list[str]:
    """The token and each of its parts: none may appear where a token must not."""
    return [token, *token.split(".")]


@pytest.mark.usefixtures("signing_backend")
async def test_signer_issues_rs256_tokens_with_the_configured_claims(keys: tuple[Path, Path]) -> None:
    private, public = keys
    cfg = signer_config(
        private,
        kid="key-2026",
        claims=(("site", "plant-7"), ("line", 3), ("publish_topics", ("plants/7/#", "gw/gw-1/#"))),
    )
    source = SignerTokenSource(cfg)
    before = int(time.time())
    token = await source.get_token()

    decoded = jwt.decode(
        token.value, public.read_bytes(), algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER
    )
    assert decoded["sub"] == "gw-1"
    assert decoded["site"] == "plant-7" and decoded["line"] == 3
    assert decoded["publish_topics"] == ["plants/7/#", "gw/gw-1/#"]
    assert before <= decoded["iat"] <= before + 2
    assert decoded["exp"] - decoded["iat"] == 600
    assert decoded["iat"] - decoded["nbf"] == 30
    header = jwt.get_unverified_header(token.value)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "key-2026"}
    assert token.expires_at == decoded["exp"] and token.issued_at == decoded["iat"]
    assert token.claims["sub"] == "gw-1"
    assert source.auth_method == "CUSTOM-JWT"
    assert isinstance(source, TokenSource)


async def test_signer_without_kid_sends_no_kid_and_honours_the_lifetime(keys: tuple[Path, Path]) -> None:
    token = await SignerTokenSource(signer_config(keys[0], lifetime=5.0)).get_token()
    assert "kid" not in jwt.get_unverified_header(token.value)
    assert token.lifetime == 5.0


async def test_signer_with_several_audiences_sends_an_array(keys: tuple[Path, Path]) -> None:
    token = await SignerTokenSource(signer_config(keys[0], audience=(AUDIENCE, "other"))).get_token()
    assert token.claims["aud"] == [AUDIENCE, "other"]


async def test_signer_parses_the_key_once(keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Path] = []
    real = signer_module.load_signing_key

    def counting(path: Path) -> object:
        loads.append(path)
        return real(path)

    monkeypatch.setattr(signer_module, "load_signing_key", counting)
    source = SignerTokenSource(signer_config(keys[0]))
    tokens = [await source.get_token() for _ in range(5)]
    assert loads == [keys[0]]
    assert len({t.value for t in tokens}) >= 1


@pytest.mark.usefixtures("signing_backend")
async def test_signer_errors_name_the_file_and_never_its_content(tmp_path: Path) -> None:
    missing = SignerTokenSource(signer_config(tmp_path / "nope.key"))
    with pytest.raises(TokenError, match=r"cannot read key file .*nope\.key"):
        await missing.get_token()

    # A file that holds a token instead of a key: the message must not quote it.
    stray = mint_token(generate_rsa_key_pair(tmp_path, "k")[0], sub="x")
    wrong = tmp_path / "token-not-key.pem"
    wrong.write_text(stray)
    with pytest.raises(TokenError) as caught:
        await SignerTokenSource(signer_config(wrong)).get_token()
    assert "is not a PEM private key" in str(caught.value)
    assert not any(part in str(caught.value) for part in token_parts(stray))

    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(TokenError, match="RS256 needs an RSA key"):
        await SignerTokenSource(signer_config(ec_key)).get_token()

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TokenError, match=r"locked\.key is encrypted"):
        await SignerTokenSource(signer_config(locked)).get_token()


@pytest.mark.usefixtures("signing_backend")
async def test_signer_refuses_a_key_whose_signatures_do_not_verify(tmp_path: Path) -> None:
    # Parsed without cryptography's slow validation: a damaged key must still be refused before use.
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    damaged = rsa.RSAPrivateNumbers(
        p=good.p,
        q=good.q,
        d=good.d ^ 2,
        dmp1=good.dmp1 ^ 2,
        dmq1=good.dmq1 ^ 2,
        iqmp=good.iqmp,
        public_numbers=good.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    path = tmp_path / "damaged.key"
    path.write_bytes(
        damaged.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(TokenError, match=r"damaged\.key is not a PEM private key"):
        await SignerTokenSource(signer_config(path)).get_token()


def write_token(path: Path, token: str) -> None:
    """Write as an agent would: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)


@pytest.fixture
def token_file(tmp_path: Path, keys: tuple[Path, Path]) -> Iterator[tuple[Path, Path]]:
    yield tmp_path / "token.jwt", keys[0]


async def test_file_source_returns_the_token_and_picks_up_a_rewritten_file(
    token_file: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    path, key = token_file
    first = mint_token(key, sub="gw-1", lifetime=600)
    write_token(path, first)
    source = FileTokenSource(FileTokenConfig(path=path))

    token = await source.get_token()
    assert token.value == first
    assert token.expires_at == token.claims["exp"]
    assert (await source.get_token()) is token  # unchanged file: nothing re-parsed

    second = mint_token(key, sub="gw-1", lifetime=900)
    write_token(path, second)
    caplog.set_level(logging.DEBUG)
    newer = await source.get_token()
    assert newer.value == second
    assert newer.expires_at > token.expires_at
    assert not any(part in caplog.text for part in token_parts(first) + token_parts(second))


async def test_file_source_warns_once_when_the_token_is_about_to_expire(
    token_file: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    path, key = token_file
    write_token(path, mint_token(key, sub="gw-1", lifetime=60))
    source = FileTokenSource(FileTokenConfig(path=path, expiry_warning=120))
    caplog.set_level(logging.WARNING, logger="fieldgate.auth")
    for _ in range(3):
        await source.get_token()
    warnings = [r for r in caplog.records if "file holds nothing newer" in r.getMessage()]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()


async def test_file_source_refuses_expired_and_malformed_tokens_without_quoting_them(
    token_file: tuple[Path, Path],
) -> None:
    path, key = token_file
    expired = mint_token(key, sub="gw-1", lifetime=-30)
    write_token(path, expired)
    with pytest.raises(TokenError, match="expired token") as caught:
        await FileTokenSource(FileTokenConfig(path=path)).get_token()
    assert not any(part in str(caught.value) for part in token_parts(expired))

    garbage = "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2lnbmF0dXJl"
    write_token(path, garbage)
    with pytest.raises(TokenError, match="not a JWT") as caught:
        await FileTokenSource(FileTokenConfig(path=path)).get_token()
    assert not any(part in str(caught.value) for part in token_parts(garbage))

    path.unlink()
    with pytest.raises(TokenError, match="cannot read token file"):
        await FileTokenSource(FileTokenConfig(path=path)).get_token()


async def test_a_token_never_shows_its_text_in_repr_or_str(keys: tuple[Path, Path]) -> None:
    token = await SignerTokenSource(signer_config(keys[0])).get_token()
    for text in (repr(token), str(token), repr(signer_config(keys[0]))):
        assert not any(part in text for part in token_parts(token.value))
    with pytest.raises(TypeError):
        token.claims["sub"] = "someone else"  # type: ignore[index]


async def test_describe_token_shows_header_claims_and_expiry_but_no_signature(
    keys: tuple[Path, Path],
) -> None:
    token = await SignerTokenSource(signer_config(keys[0], kid="k1")).get_token()
    text = describe_token(token, now=token.issued_at + 100)
    assert (
        '"kid": "k1"' in text and '"sub": "gw-1"' in text and '"iss": "https://fieldgate.dev/issuer"' in text
    )
    assert "time left: 8m20s" in text
    assert "bytes (not shown)" in text
    _header, claims, signature = token.value.split(".")
    assert token.value not in text and signature not in text and claims not in text

    expired = Token(value=token.value, expires_at=token.issued_at + 10, issued_at=token.issued_at)
    assert "(EXPIRED)" in describe_token(expired, now=token.issued_at + 20)


async def test_token_report_fetches_a_token_as_run_would(keys: tuple[Path, Path]) -> None:
    cfg = UplinkConfig(host="broker.example", token=signer_config(keys[0]), client_id="gw-1")
    report = await token_report(cfg)
    assert "source:    signer" in report and "CUSTOM-JWT" in report and "broker.example:8883" in report
    token = await make_token_source(cfg.token).get_token()
    assert token.value.split(".")[2] not in report
