"""``signer``: the gateway signs its own RS256 tokens with a private key file (cryptography).

The JWS is assembled here rather than with PyJWT: PyJWT imports every algorithm cryptography has
(~10 MiB of RSS on the gateway's ~40) to use one of them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.auth.token import Token
from gateway.config.uplink import SignerTokenConfig
from gateway.errors import TokenError

log = logging.getLogger("fieldgate.auth")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_rs256(claims: dict[str, Any], key: RSAPrivateKey, headers: dict[str, Any]) -> str:
    """A compact JWS (RFC 7515) over ``claims``, RS256 (RSASSA-PKCS1-v1_5 with SHA-256)."""

    def part(obj: dict[str, Any]) -> str:
        return _b64url(json.dumps(obj, separators=(",", ":")).encode())

    signing_input = f"{part({'alg': 'RS256', **headers})}.{part(claims)}"
    signature = key.sign(signing_input.encode("ascii"), PKCS1v15(), SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def load_private_key(path: Path) -> RSAPrivateKey:
    """Read and parse a PEM RSA private key. Blocking (file I/O): call in a thread.

    cryptography's RSA key validation (primality tests of p and q, ~45 ms of CPU that holds the GIL on a
    small VM) is skipped: it would be most of the start's wait for CONNACK. What the signer needs of the
    key - that its signatures verify under its public key - is checked instead with one signature
    (~1.5 ms), so a damaged key is still refused here rather than by the broker.
    """
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"cannot read key file {path}: {exc.strerror or type(exc).__name__}") from exc
    try:
        key = load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:  # the key is encrypted and no password was given
        raise TokenError(f"key file {path} is encrypted; give an unencrypted PEM key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography's message can quote parts of the input; keep only what kind of failure it was.
        raise TokenError(f"key file {path} is not a PEM private key ({type(exc).__name__})") from exc
    if not isinstance(key, RSAPrivateKey):
        raise TokenError(f"key file {path} holds a {type(key).__name__}, RS256 needs an RSA key")
    probe = b"fieldgate key check"
    try:
        key.public_key().verify(key.sign(probe, PKCS1v15(), SHA256()), probe, PKCS1v15(), SHA256())
    except (InvalidSignature, ValueError) as exc:
        raise TokenError(f"key file {path} is not a PEM private key ({type(exc).__name__})") from exc
    return key


class SignerTokenSource:
    """Signs a fresh token on every :meth:`get_token` (the refresh scheduler decides when to ask).

    The key is parsed once, in a worker thread: re-parsing the PEM for every token costs ~100x the
    signature itself (~28 ms against ~0.25 ms on a small VM).
    """

    def __init__(self, config: SignerTokenConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._key: RSAPrivateKey | None = None
        self._lock = asyncio.Lock()

    @property
    def auth_method(self) -> str:
        return self._config.default_auth_method

    @property
    def description(self) -> str:
        cfg = self._config
        return f"signer (key {cfg.key_file}, issuer {cfg.issuer}, sub {cfg.subject})"

    async def _loaded_key(self) -> RSAPrivateKey:
        async with self._lock:
            if self._key is None:
                # Blocking file read and PEM parsing: keep them off the event loop.
                self._key = await asyncio.to_thread(load_private_key, self._config.key_file)
            return self._key

    def claims_at(self, now: float) -> dict[str, Any]:
        cfg = self._config
        issued = int(now)
        claims: dict[str, Any] = {name: list(v) if isinstance(v, tuple) else v for name, v in cfg.claims}
        claims.update(
            iss=cfg.issuer,
            sub=cfg.subject,
            aud=cfg.audience[0] if len(cfg.audience) == 1 else list(cfg.audience),
            iat=issued,
            nbf=issued - int(cfg.not_before_skew),
            exp=issued + int(cfg.lifetime),
        )
        return claims

    def invalidate(self) -> None:
        """Nothing cached: every token is signed afresh."""

    async def get_token(self) -> Token:
        key = await self._loaded_key()
        claims = self.claims_at(self._clock())
        headers: dict[str, Any] = {"typ": "JWT"}
        if self._config.kid is not None:
            headers["kid"] = self._config.kid
        try:
            # ~0.25 ms with a loaded key: cheap enough to run on the loop.
            value = sign_rs256(claims, key, headers)
        except (ValueError, TypeError) as exc:
            why = type(exc).__name__
            raise TokenError(f"cannot sign a token with {self._config.key_file} ({why})") from exc
        return Token(
            value=value,
            expires_at=float(claims["exp"]),
            issued_at=float(claims["iat"]),
            claims=claims,
        )
