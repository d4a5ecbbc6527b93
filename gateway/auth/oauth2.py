"""``oauth2``: the client-credentials grant against an OpenID Connect provider's token endpoint.

The client authenticates with a secret (HTTP Basic or in the form body) or with ``private_key_jwt``: an
RS256 client assertion signed as the ``signer`` signs (``iss`` = ``sub`` = client id, ``aud`` = the token
endpoint, a short ``exp``, a unique ``jti``). The access token must be a JWT (the broker verifies it); its
``exp``, else the answer's ``expires_in``, says when it runs out.

HTTP goes through the standard library's ``urllib.request`` in a worker thread: one small POST per
refresh does not justify an HTTP client dependency. Errors name the token endpoint and what the
provider said, never the secret, the assertion or the token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from gateway.auth.signer import SigningKey, load_signing_key, sign_rs256
from gateway.auth.token import Token, decode_unverified
from gateway.config.uplink import OAuth2TokenConfig
from gateway.errors import SecretError, TokenError

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The most of an error answer we read (a misconfigured endpoint may answer with a whole HTML page).
_MAX_ANSWER_BYTES = 64 * 1024


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Provider error text, one line, short, with anything we sent as a credential cut out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<hidden>")
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


class OAuth2TokenSource:
    """Asks the token endpoint for an access token; reuses it while more than half its lifetime is left."""

    def __init__(self, config: OAuth2TokenConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._key: SigningKey | None = None
        self._lock = asyncio.Lock()
        self._token: Token | None = None
        #: ``time.monotonic()`` until which the held token is handed out again (half its lifetime left).
        self._reuse_until = 0.0

    @property
    def auth_method(self) -> str:
        return self._config.default_auth_method

    @property
    def description(self) -> str:
        cfg = self._config
        return f"oauth2 {cfg.token_endpoint} (client {cfg.client_id}, {cfg.client_auth})"

    # -- the request ---------------------------------------------------------------------------------
    async def _signing_key(self) -> SigningKey:
        async with self._lock:
            if self._key is None:
                assert self._config.private_key_file is not None  # the config parser requires it
                # File read and PEM parsing (~30 ms): worker thread, once.
                self._key = await asyncio.to_thread(load_signing_key, self._config.private_key_file)
            return self._key

    def client_assertion(self, key: SigningKey, now: float) -> str:
        """The ``private_key_jwt`` client assertion (RFC 7523): short-lived, single use."""
        cfg = self._config
        issued = int(now)
        claims = {
            "iss": cfg.client_id,
            "sub": cfg.client_id,
            "aud": cfg.token_endpoint,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(cfg.assertion_lifetime),
            "jti": uuid.uuid4().hex,
        }
        headers: dict[str, Any] = {"typ": "JWT"}
        if cfg.key_id is not None:
            headers["kid"] = cfg.key_id
        try:
            return sign_rs256(claims, key, headers)
        except (ValueError, TypeError) as exc:
            raise TokenError(f"cannot sign a client assertion with {cfg.private_key_file}") from exc

    def _form(self) -> dict[str, str]:
        cfg = self._config
        form = {"grant_type": "client_credentials"}
        for name, value in (("scope", cfg.scope), ("audience", cfg.audience), ("resource", cfg.resource)):
            if value is not None:
                form[name] = value
        return form

    async def _request(self) -> tuple[urllib.request.Request, tuple[str, ...]]:
        """The POST to send, and the credential strings that must never be echoed back in an error."""
        cfg = self._config
        form = self._form()
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        hidden: tuple[str, ...]
        if cfg.client_auth == "private_key_jwt":
            assertion = self.client_assertion(await self._signing_key(), self._clock())
            form.update(
                client_id=cfg.client_id,
                client_assertion_type=CLIENT_ASSERTION_TYPE,
                client_assertion=assertion,
            )
            hidden = (assertion,)
        else:
            assert cfg.client_secret is not None  # the config parser requires it
            try:
                # A file: reference is re-read each time (rotation); blocking, so in a worker thread.
                secret = await asyncio.to_thread(cfg.client_secret.reveal)
            except SecretError as exc:
                raise TokenError(f"client secret {cfg.client_secret.reference}: {exc}") from exc
            if cfg.client_auth == "client_secret_post":
                form.update(client_id=cfg.client_id, client_secret=secret)
            else:
                # RFC 6749 2.3.1: both parts form-encoded before the Basic encoding.
                pair = f"{urllib.parse.quote(cfg.client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
            hidden = (secret, urllib.parse.quote(secret, safe=""))
        body = urllib.parse.urlencode(form).encode()
        return urllib.request.Request(cfg.token_endpoint, data=body, headers=headers, method="POST"), hidden

    def _post(self, request: urllib.request.Request, hidden: tuple[str, ...]) -> tuple[dict[str, Any], float]:
        """Send the request and parse the JSON answer. Blocking: runs in a worker thread."""
        cfg = self._config
        where = f"token endpoint {cfg.token_endpoint}"
        context = None
        if request.full_url.startswith("https:"):
            context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        sent_at = self._clock()
        # Never follow a redirect: it would send the client's credentials to wherever it points.
        opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))
        try:
            with opener.open(request, timeout=cfg.timeout) as answer:
                raw = answer.read(_MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:
            detail = ""
            try:
                error = json.loads(exc.read(_MAX_ANSWER_BYTES))
                if isinstance(error, dict):
                    detail = " ".join(
                        str(error[k]) for k in ("error", "error_description") if isinstance(error.get(k), str)
                    )
            except (ValueError, OSError):
                detail = ""
            hint = ""
            if 300 <= exc.code < 400:
                hint = " (a redirect, not followed: set token_endpoint to the final URL)"
            if exc.code in (400, 401) and "invalid_client" in detail:
                hint = " (the client id or its credentials were refused)"
            said = f": {_scrub(detail, hidden)}" if detail else ""
            raise TokenError(f"{where} answered HTTP {exc.code}{said}{hint}") from exc
        except urllib.error.URLError as exc:
            raise TokenError(f"{where} unreachable: {_scrub(str(exc.reason), hidden)}") from exc
        except (TimeoutError, OSError) as exc:
            raise TokenError(f"{where} unreachable: {type(exc).__name__}") from exc
        try:
            content = json.loads(raw)
        except ValueError as exc:
            raise TokenError(f"{where} answered with something that is not JSON") from exc
        if not isinstance(content, dict):
            raise TokenError(f"{where} answered with JSON that is not an object")
        return content, sent_at

    def invalidate(self) -> None:
        self._token = None

    async def get_token(self) -> Token:
        held = self._token
        if held is not None and time.monotonic() < self._reuse_until:
            # A reconnect soon after a fetch reuses the token rather than asking the provider again;
            # the refresh scheduler asks late in the lifetime, when this gets a fresh one. Judged on
            # the monotonic clock: a wall-clock step must not make a token look fresh for years.
            return held
        token = await self._fetch()
        left = token.remaining(self._clock())
        left = left if 0.0 < left <= token.lifetime else token.lifetime
        self._token, self._reuse_until = token, time.monotonic() + left - token.lifetime / 2
        return token

    async def _fetch(self) -> Token:
        cfg = self._config
        where = f"token endpoint {cfg.token_endpoint}"
        request, hidden = await self._request()
        # Blocking HTTP (DNS, connect, TLS, read): worker thread, bounded by cfg.timeout.
        content, sent_at = await asyncio.to_thread(self._post, request, hidden)
        access = content.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenError(f"{where} answered without an access_token")
        text = f"the access token from {where}"
        # The broker verifies the token itself: it has to be a JWT, not an opaque reference token.
        _, claims, _ = decode_unverified(access, where=text)
        exp = claims.get("exp")
        expires_in = content.get("expires_in")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires_at = float(exp)
        elif isinstance(expires_in, int | float | str) and str(expires_in).strip().isdigit():
            expires_at = sent_at + float(expires_in)
        else:
            raise TokenError(f"{text} has no exp claim and the answer no expires_in")
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else sent_at
        if expires_at <= self._clock():
            raise TokenError(f"{text} has already expired")
        return Token(value=access, expires_at=expires_at, issued_at=issued, claims=claims)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turns every redirect into an HTTPError carrying its 3xx status."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
