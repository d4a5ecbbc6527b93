"""Token sources behind one async ``get_token()``: ``signer``, ``file``, ``oauth2`` and ``azure``
(Entra ID). Reference: ``README.md`` here.

Errors from libcrypto, cryptography, urllib and the OS are mapped to :class:`gateway.errors.TokenError`
at this boundary; no message ever contains token text or key material.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import assert_never

from gateway.auth.filesource import FileTokenSource
from gateway.auth.signer import SignerTokenSource
from gateway.auth.token import Token, TokenSource, decode_unverified, describe_token, token_from_jwt
from gateway.config.uplink import (
    AzureTokenConfig,
    FileTokenConfig,
    OAuth2TokenConfig,
    SignerTokenConfig,
    TokenConfig,
    UplinkConfig,
)

__all__ = [
    "FileTokenSource",
    "SignerTokenSource",
    "Token",
    "TokenSource",
    "decode_unverified",
    "describe_token",
    "identity_model",
    "make_token_source",
    "token_from_jwt",
    "token_report",
]


def make_token_source(cfg: TokenConfig) -> TokenSource:
    """The source a ``[uplink.token]`` section describes."""
    if isinstance(cfg, SignerTokenConfig):
        return SignerTokenSource(cfg)
    if isinstance(cfg, FileTokenConfig):
        return FileTokenSource(cfg)
    if isinstance(cfg, OAuth2TokenConfig):
        from gateway.auth.oauth2 import OAuth2TokenSource

        return OAuth2TokenSource(cfg)
    if isinstance(cfg, AzureTokenConfig):
        # azure-identity itself is imported only when the source builds its credential.
        from gateway.auth.azure import AzureTokenSource

        return AzureTokenSource(cfg)
    assert_never(cfg)


def identity_model(cfg: TokenConfig) -> str:
    """Which identity model a token source stands for (see gateway/auth/README.md)."""
    if isinstance(cfg, SignerTokenConfig):
        return (
            "signer: self-signed with an issuer key held on this gateway "
            "(one gateway or a lab: every gateway holding this key can mint any gateway's token)"
        )
    if isinstance(cfg, OAuth2TokenConfig):
        return (
            f"oauth2: this gateway's own client {cfg.client_id!r} at an issuer ({cfg.client_auth}); "
            "one identity per gateway"
        )
    if isinstance(cfg, FileTokenConfig):
        return "file: tokens written by an agent on this host; the agent holds the identity"
    if isinstance(cfg, AzureTokenConfig):
        return f"azure: Microsoft Entra ID ({cfg.credential}); one identity per gateway"
    assert_never(cfg)


async def token_report(cfg: UplinkConfig, *, extra: Callable[[Token], Sequence[str]] | None = None) -> str:
    """Fetch a token as ``fieldgate run`` would and describe it (for ``fieldgate token --config FILE``).

    ``extra`` adds lines about the same token (the permission report). Raises :class:`TokenError`
    (message safe to print) when no token can be obtained.
    """
    source = make_token_source(cfg.token)
    token = await source.get_token()
    head = [
        f"identity:  {identity_model(cfg.token)}",
        f"source:    {source.description}",
        f"method:    {cfg.auth_method} (MQTT Authentication Method sent in CONNECT and AUTH)",
        f"broker:    {cfg.host}:{cfg.port} as client id {cfg.client_id!r}"
        + (f", username {cfg.username!r}" if cfg.username else ""),
    ]
    return "\n".join([*head, describe_token(token), *(extra(token) if extra is not None else ())])
