"""The token type every source returns, the source protocol, and a safe description of a token.

A :class:`Token`'s text never appears in its repr or str, and :func:`describe_token` prints the decoded
header and claims but never the signature nor the raw token.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from gateway.errors import TokenError


@dataclass(frozen=True, eq=False)
class Token:
    """One bearer token. ``value`` is the compact JWT; it is hidden from repr and str."""

    value: str = field(repr=False)
    #: Seconds since the epoch at which the token stops being valid (its ``exp``).
    expires_at: float
    #: Seconds since the epoch at which it was issued (``iat``, else when it was obtained).
    issued_at: float
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.claims, MappingProxyType):
            object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    def __str__(self) -> str:
        return repr(self)

    @property
    def lifetime(self) -> float:
        return max(0.0, self.expires_at - self.issued_at)

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def same_as(self, other: Token | None) -> bool:
        """True when ``other`` carries the same token text (compared without exposing it)."""
        return other is not None and other.value == self.value


@runtime_checkable
class TokenSource(Protocol):
    """Where the uplink gets its tokens. Entra ID / OAuth2 client-credentials sources plug in here."""

    @property
    def auth_method(self) -> str:
        """The MQTT Authentication Method this kind of token is meant for (``CUSTOM-JWT``, ``OAUTH2-JWT``)."""
        ...

    @property
    def description(self) -> str:
        """Where tokens come from, for log lines and ``fieldgate token`` (no secrets)."""
        ...

    async def get_token(self) -> Token:
        """A token valid now (a cached one while it is fresh enough). Raises :class:`TokenError`."""
        ...

    def invalidate(self) -> None:
        """The broker refused the last token: forget every cached token, so the next
        :meth:`get_token` asks the issuer for a new one rather than handing the refused one back."""
        ...


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_unverified(text: str, *, where: str) -> tuple[dict[str, object], dict[str, object], int]:
    """Split a compact JWT into (header, claims, signature length) without verifying it.

    Error messages name ``where`` the token came from and what is wrong, never the token text.
    """
    parts = text.split(".")
    if len(parts) != 3:
        raise TokenError(f"{where}: not a JWT (expected three dot-separated parts, found {len(parts)})")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise TokenError(f"{where}: not a JWT (header or claims are not base64url JSON)") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError(f"{where}: not a JWT (header and claims must be JSON objects)")
    return header, claims, len(signature)


def token_from_jwt(text: str, *, where: str, now: float | None = None) -> Token:
    """Build a :class:`Token` from a compact JWT, reading ``exp`` (required) and ``iat`` unverified."""
    _, claims, _ = decode_unverified(text, where=where)
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise TokenError(f"{where}: the token has no numeric exp claim")
    iat = claims.get("iat")
    obtained = time.time() if now is None else now
    issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else obtained
    return Token(value=text, expires_at=float(exp), issued_at=issued, claims=claims)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"


def describe_token(token: Token, *, now: float | None = None) -> str:
    """Decoded header and claims, expiry and time left. Never the signature, never the raw token."""
    header, claims, signature_bytes = decode_unverified(token.value, where="token")
    now = time.time() if now is None else now
    left = token.expires_at - now
    lines = [
        "header:",
        *("  " + line for line in json.dumps(header, indent=2, sort_keys=True).splitlines()),
        "claims:",
        *("  " + line for line in json.dumps(claims, indent=2, sort_keys=True).splitlines()),
        f"signature: {signature_bytes} bytes (not shown)",
        f"issued:    {_when(token.issued_at)}",
        f"expires:   {_when(token.expires_at)}",
        f"time left: {_duration(left)}" + (" (EXPIRED)" if left <= 0 else ""),
        f"lifetime:  {_duration(token.lifetime)}",
    ]
    return "\n".join(lines)
