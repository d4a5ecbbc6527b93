"""Mint JWTs the way an Event Grid custom issuer would (and, for negative tests, the ways it must not)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

DEFAULT_ISSUER = "https://fieldgate.dev/issuer"
DEFAULT_AUDIENCE = "https://fieldgate-local.ts.eventgrid.azure.net/"

# A claim set to this sentinel in extra_claims is removed from the token.
OMIT: Any = object()


@functools.lru_cache(maxsize=8)
def _private_key(path: str) -> RSAPrivateKey:
    # Parsing a PEM costs ~100x a signature: load each key once per test session.
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, RSAPrivateKey):
        raise TypeError(f"{path} is not an RSA private key")
    return key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64url(sign(signing_input.encode()))}"


def mint_token(
    private_key_path: str | Path,
    *,
    sub: str,
    lifetime: float = 300,
    iss: str = DEFAULT_ISSUER,
    aud: str | list[str] = DEFAULT_AUDIENCE,
    publish_topics: list[str] | None = None,
    subscribe_topics: list[str] | None = None,
    extra_claims: dict[str, Any] | None = None,
    alg: str = "RS256",
    public_key_path: str | Path | None = None,
    kid: str | None = None,
) -> str:
    """A signed JWT with iss/sub/aud/nbf/iat/exp and optional topic-grant claims.

    `alg` other than RS256 builds the token by hand, as an attacker would: "HS256" is HMAC'd
    with the text of `public_key_path` (the classic algorithm-confusion attack), "none" is
    unsigned. `extra_claims` entries override the standard ones; an entry set to OMIT drops it.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": iss,
        "sub": sub,
        "aud": aud,
        "iat": now,
        "nbf": now,
        "exp": now + int(lifetime),
    }
    if publish_topics is not None:
        claims["publish_topics"] = publish_topics
    if subscribe_topics is not None:
        claims["subscribe_topics"] = subscribe_topics
    for name, value in (extra_claims or {}).items():
        if value is OMIT:
            claims.pop(name, None)
        else:
            claims[name] = value

    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    if alg == "RS256":
        return jwt.encode(claims, _private_key(str(private_key_path)), algorithm="RS256", headers=header)
    if alg == "HS256":
        if public_key_path is None:
            raise ValueError("HS256 confusion tokens need public_key_path (the HMAC secret)")
        secret = Path(public_key_path).read_bytes()
        return _compact(header, claims, lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    if alg == "none":
        return _compact(header, claims, lambda data: b"")
    raise ValueError(f"unsupported alg {alg!r}")


def generate_rsa_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh RSA 2048 pair as `<name>.key` (PKCS#8) and `<name>.pem` (SubjectPublicKeyInfo)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path = directory / f"{name}.key"
    public_path = directory / f"{name}.pem"
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path
