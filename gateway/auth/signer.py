"""``signer``: the gateway signs its own RS256 tokens with a private key file.

The JWS is assembled here rather than with PyJWT: PyJWT imports every algorithm cryptography has
(~10 MiB of RSS on the gateway's ~40) to use one of them. The signature itself goes through the libcrypto
the ``ssl`` module has loaded (:mod:`gateway.auth.openssl`), and through cryptography only where that is
not available: cryptography's own extension is another ~11 MiB.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.auth.openssl import NoPrivateKey, NotRSAKey, libcrypto, load_rsa_key
from gateway.auth.token import Token
from gateway.config.uplink import SignerTokenConfig
from gateway.errors import TokenError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

log = logging.getLogger("fieldgate.auth")

#: OpenSSL's ids of the key types a key file may hold instead of RSA (for the error message).
_KEY_KINDS = {116: "DSA", 408: "EC", 912: "RSA-PSS", 1034: "X25519", 1087: "Ed25519", 1088: "Ed448"}


class SigningKey(Protocol):
    """An RSA private key that makes RS256 (RSASSA-PKCS1-v1_5, SHA-256) signatures."""

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, signature: bytes, data: bytes) -> bool: ...


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_rs256(claims: dict[str, Any], key: SigningKey, headers: dict[str, Any]) -> str:
    """A compact JWS (RFC 7515) over ``claims``, RS256 (RSASSA-PKCS1-v1_5 with SHA-256)."""

    def part(obj: dict[str, Any]) -> str:
        return _b64url(json.dumps(obj, separators=(",", ":")).encode())

    signing_input = f"{part({'alg': 'RS256', **headers})}.{part(claims)}"
    return f"{signing_input}.{_b64url(key.sign(signing_input.encode('ascii')))}"


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TokenError(f"cannot read key file {path}: {exc.strerror or type(exc).__name__}") from exc


def _check_signs(path: Path, key: SigningKey) -> None:
    """What the signer needs of a key - that its signatures verify under its public key - checked with one
    signature (~1.5 ms): a damaged key is refused here rather than by the broker. It stands in for
    cryptography's RSA key validation (primality tests of p and q), ~45 ms of GIL-holding CPU that would
    be most of the start's wait for CONNACK."""
    probe = b"fieldgate key check"
    try:
        good = key.verify(key.sign(probe), probe)
    except ValueError as exc:
        raise TokenError(f"key file {path} is not a PEM private key ({type(exc).__name__})") from exc
    if not good:
        raise TokenError(f"key file {path} is not a PEM private key (InvalidSignature)")


class _CryptographyKey:
    """A :class:`SigningKey` through cryptography (where libcrypto cannot be used directly)."""

    def __init__(self, key: RSAPrivateKey) -> None:
        from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
        from cryptography.hazmat.primitives.hashes import SHA256

        self._key = key
        self._padding = PKCS1v15
        self._hash = SHA256

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, self._padding(), self._hash())

    def verify(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._key.public_key().verify(signature, data, self._padding(), self._hash())
        except InvalidSignature:
            return False
        return True


def load_private_key(path: Path) -> RSAPrivateKey:
    """Read and parse a PEM RSA private key with cryptography. Blocking (file I/O): call in a thread."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem = _read_key_file(path)
    try:
        # Validated by _check_signs instead (see there).
        key = load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:  # the key is encrypted and no password was given
        raise TokenError(f"key file {path} is encrypted; give an unencrypted PEM key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        # cryptography's message can quote parts of the input; keep only what kind of failure it was.
        raise TokenError(f"key file {path} is not a PEM private key ({type(exc).__name__})") from exc
    if not isinstance(key, RSAPrivateKey):
        raise TokenError(f"key file {path} holds a {type(key).__name__}, RS256 needs an RSA key")
    _check_signs(path, _CryptographyKey(key))
    return key


def load_signing_key(path: Path) -> SigningKey:
    """The signer's key: through the ssl module's libcrypto, else cryptography. Blocking: call in a thread."""
    lib = libcrypto()
    if lib is None:
        return _CryptographyKey(load_private_key(path))
    pem = _read_key_file(path)
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem or b"Proc-Type: 4,ENCRYPTED" in pem:
        raise TokenError(f"key file {path} is encrypted; give an unencrypted PEM key")
    try:
        key = load_rsa_key(lib, pem)
    except NoPrivateKey as exc:
        raise TokenError(f"key file {path} is not a PEM private key (ValueError)") from exc
    except NotRSAKey as exc:
        kind = _KEY_KINDS.get(exc.kind, f"type {exc.kind}")
        raise TokenError(f"key file {path} holds a {kind} key, RS256 needs an RSA key") from exc
    _check_signs(path, key)
    return key


class SignerTokenSource:
    """Signs a fresh token on every :meth:`get_token` (the refresh scheduler decides when to ask).

    The key is read, parsed and checked once, in a worker thread (file I/O).
    """

    def __init__(self, config: SignerTokenConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._key: SigningKey | None = None
        self._lock = asyncio.Lock()

    @property
    def auth_method(self) -> str:
        return self._config.default_auth_method

    @property
    def description(self) -> str:
        cfg = self._config
        return f"signer (key {cfg.key_file}, issuer {cfg.issuer}, sub {cfg.subject})"

    async def _loaded_key(self) -> SigningKey:
        async with self._lock:
            if self._key is None:
                # Blocking file read and PEM parsing: keep them off the event loop.
                self._key = await asyncio.to_thread(load_signing_key, self._config.key_file)
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
