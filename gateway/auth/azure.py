"""``azure``: Microsoft Entra ID tokens through azure-identity, for Event Grid's ``OAUTH2-JWT`` method.

azure-identity is imported only when this source is built (it costs ~12 MiB and ~65 ms at start). Its
synchronous credentials run in a worker thread: their HTTP calls (and, for managed identity, MSAL's
token cache) block, and the asynchronous ones need aiohttp, which fieldgate does not otherwise use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.auth.token import Token, decode_unverified
from gateway.config.uplink import AzureTokenConfig
from gateway.errors import SecretError, TokenError

#: Where the Azure Connected Machine agent (Azure Arc) writes its challenge files on Linux.
ARC_TOKENS_DIR = "/var/opt/azcmagent/tokens"
ARC_HINT = " (Azure Arc: the gateway's user must be in the himds group to read the agent's challenge file)"


def arc_agent() -> str | None:
    """The Azure Arc agent's identity endpoint when this host is Arc-enabled (its environment variables)."""
    endpoint = os.environ.get("IDENTITY_ENDPOINT")
    # IDENTITY_ENDPOINT with IDENTITY_HEADER is App Service; with IMDS_ENDPOINT it is the Arc agent.
    if endpoint and os.environ.get("IMDS_ENDPOINT") and not os.environ.get("IDENTITY_HEADER"):
        return endpoint
    return None


class _Credential(Protocol):
    def get_token(self, *scopes: str) -> Any: ...


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= 200 else line[:197] + "..."


def build_credential(cfg: AzureTokenConfig) -> _Credential:
    """The azure-identity credential ``cfg`` names. Blocking (imports, secret and certificate files)."""
    try:
        from azure import identity
    except ImportError as exc:
        raise TokenError(
            "the azure token source needs azure-identity: pip install 'fieldgate[azure]'"
        ) from exc
    # azure-identity warns on every failed attempt; the uplink logs a failing source once per streak
    # with the same text (from the TokenError below), so only its errors are let through.
    for name in ("azure.identity", "azure.core"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.ERROR)
    # Bounds each HTTP request (azure-core's default read timeout is 300 s), so a hung identity endpoint
    # does not keep worker threads busy long after get_token's own deadline has given up on them.
    extra: dict[str, Any] = {"connection_timeout": cfg.timeout, "read_timeout": cfg.timeout}
    if cfg.authority is not None:
        extra["authority"] = cfg.authority
    if not cfg.instance_discovery:
        extra["disable_instance_discovery"] = True
    try:
        if cfg.credential == "managed-identity":
            # Azure Arc-enabled servers: azure-identity finds the agent through IDENTITY_ENDPOINT and
            # IMDS_ENDPOINT (set by the agent) and answers its challenge with a key file it reads.
            timeouts = {k: extra[k] for k in ("connection_timeout", "read_timeout")}
            return identity.ManagedIdentityCredential(client_id=cfg.client_id, **timeouts)
        if cfg.credential == "client-secret":
            assert cfg.client_secret is not None and cfg.tenant_id and cfg.client_id  # required by the parser
            return identity.ClientSecretCredential(
                cfg.tenant_id, cfg.client_id, cfg.client_secret.reveal(), **extra
            )
        if cfg.credential == "client-certificate":
            assert cfg.certificate_file is not None and cfg.tenant_id and cfg.client_id
            password = cfg.certificate_password.reveal() if cfg.certificate_password else None
            return identity.CertificateCredential(
                cfg.tenant_id, cfg.client_id, str(cfg.certificate_file), password=password, **extra
            )
        if cfg.credential == "workload-identity":
            if cfg.tenant_id is not None:
                extra["tenant_id"] = cfg.tenant_id
            if cfg.client_id is not None:
                extra["client_id"] = cfg.client_id
            if cfg.token_file is not None:
                extra["token_file_path"] = str(cfg.token_file)
            return identity.WorkloadIdentityCredential(**extra)
        return identity.DefaultAzureCredential(managed_identity_client_id=cfg.client_id, **extra)
    except SecretError as exc:
        raise TokenError(f"azure {cfg.credential}: {exc}") from exc
    except (ValueError, TypeError, OSError) as exc:
        # azure-identity's own messages name missing settings (environment variables, tenant, file).
        raise TokenError(f"azure {cfg.credential}: {_first_line(str(exc))}") from exc


class AzureTokenSource:
    """Asks the credential for a token for ``scope``; azure-identity caches it while it is fresh."""

    def __init__(self, config: AzureTokenConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._credential: _Credential | None = None
        self._lock = asyncio.Lock()

    @property
    def auth_method(self) -> str:
        return self._config.default_auth_method

    @property
    def description(self) -> str:
        cfg = self._config
        who = f", client {cfg.client_id}" if cfg.client_id else ""
        agent = arc_agent() if cfg.credential == "managed-identity" else None
        via = f", Azure Arc agent {agent}" if agent else ""
        return f"azure {cfg.credential} (scope {cfg.scope}{who}{via})"

    def invalidate(self) -> None:
        # azure-identity keeps its token cache inside the credential (MSAL's, per instance) and offers no
        # way to evict one token: a new credential starts with an empty cache.
        self._credential = None

    async def _loaded(self) -> _Credential:
        async with self._lock:
            if self._credential is None:
                # Importing azure-identity and reading secret/certificate files block: worker thread.
                self._credential = await asyncio.to_thread(build_credential, self._config)
            return self._credential

    def _fetch(self, credential: _Credential) -> tuple[str, float]:
        """One token request. Blocking (HTTP, MSAL cache): runs in a worker thread."""
        from azure.core.exceptions import AzureError

        cfg = self._config
        try:
            access = credential.get_token(cfg.scope)
        except AzureError as exc:
            # CredentialUnavailableError and ClientAuthenticationError say what is missing or refused;
            # they carry the identity endpoint's error text, never the token or a secret.
            message = getattr(exc, "message", None) or str(exc)
            raise TokenError(f"azure {cfg.credential}: {type(exc).__name__}: {_first_line(message)}") from exc
        except OSError as exc:
            # MSAL reads Azure Arc's challenge file itself and lets OSError through; reading it needs
            # membership of the agent's group.
            where = exc.filename or "the identity agent's key file"
            raise TokenError(
                f"azure {cfg.credential}: cannot read {where}: {exc.strerror or type(exc).__name__}"
                f"{ARC_HINT if str(where).startswith(ARC_TOKENS_DIR) else ''}"
            ) from exc
        return str(access.token), float(access.expires_on)

    async def get_token(self) -> Token:
        cfg = self._config
        credential = await self._loaded()
        try:
            async with asyncio.timeout(cfg.timeout):
                value, expires_on = await asyncio.to_thread(self._fetch, credential)
        except TimeoutError as exc:
            raise TokenError(f"azure {cfg.credential}: no token within {cfg.timeout:g} s") from exc
        where = f"the token from azure {cfg.credential}"
        # Event Grid verifies the token itself: it must be a JWT (Entra access tokens are).
        _, claims, _ = decode_unverified(value, where=where)
        exp = claims.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else expires_on
        iat = claims.get("iat")
        issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else self._clock()
        return Token(value=value, expires_at=expires_at, issued_at=issued, claims=claims)
