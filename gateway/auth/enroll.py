"""A gateway's own key pair, and what to register about it with the issuer (``fieldgate identity new``).

The private key is written once, mode 0600, never printed; what leaves the gateway is the public half:
PEM (SubjectPublicKeyInfo), a JWK with an RFC 7638 thumbprint as ``kid``, and, for an Entra ID app
registration, a self-signed certificate of it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.errors import TokenError

#: RS256 keys: 2048 bits is what Event Grid and Entra ID accept and what a Pi generates in a second.
KEY_BITS = 2048
#: Validity of the self-signed certificate for an Entra ID app registration.
CERTIFICATE_DAYS = 730


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """The public half of a new key pair, in the forms issuers ask for."""

    pem: str
    jwk: dict[str, str]
    #: A self-signed certificate (PEM) and its SHA-1 thumbprint (hex), for Entra ID; else empty.
    certificate_pem: str = ""
    certificate_thumbprint: str = ""

    @property
    def kid(self) -> str:
        return self.jwk["kid"]


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk_of(public: rsa.RSAPublicKey, kid: str | None = None) -> dict[str, str]:
    """The RSA public key as a JWK; ``kid`` defaults to its RFC 7638 SHA-256 thumbprint."""
    numbers = public.public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return {**members, "kid": kid or thumbprint, "alg": "RS256", "use": "sig"}


def _write_new(path: Path, data: bytes, *, force: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically; never over an existing file unless ``force``."""
    if path.exists() and not force:
        raise TokenError(f"{path} exists: refusing to replace a gateway's key (--force replaces it)")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # 0600 from the first byte (O_EXCL: a file planted at the temporary name is not reused).
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if force:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the path appeared meanwhile: no silent overwrite
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def new_key_pair(
    path: Path,
    *,
    force: bool = False,
    kid: str | None = None,
    certificate_subject: str | None = None,
    password: str | None = None,
) -> PublicIdentity:
    """Create an RSA key at ``path`` (0600) and return its public forms. Blocking (key generation, I/O).

    With ``certificate_subject`` the file holds the key and a self-signed certificate for it (the form
    azure-identity's CertificateCredential reads); ``password`` encrypts the key in the file.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    certificate_pem = thumbprint = ""
    if certificate_subject is not None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certificate_subject)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
            .sign(key, hashes.SHA256())
        )
        certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()  # the thumbprint Entra ID shows
        data += certificate_pem.encode()
    try:
        _write_new(path, data, force=force)
    except OSError as exc:
        raise TokenError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from exc
    public = key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicIdentity(
        pem=pem.decode(),
        jwk=jwk_of(public, kid),
        certificate_pem=certificate_pem,
        certificate_thumbprint=thumbprint,
    )
