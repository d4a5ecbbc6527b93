"""Token sources behind one async ``get_token()``: ``signer`` and ``file`` (Entra ID / OAuth2 later).

Errors from PyJWT, cryptography and the OS are mapped to :class:`gateway.errors.TokenError` at this
boundary; no message ever contains token text or key material.
"""

from __future__ import annotations

from typing import assert_never

from gateway.auth.filesource import FileTokenSource
from gateway.auth.signer import SignerTokenSource
from gateway.auth.token import Token, TokenSource, decode_unverified, describe_token, token_from_jwt
from gateway.config.uplink import FileTokenConfig, SignerTokenConfig, TokenConfig, UplinkConfig

__all__ = [
    "FileTokenSource",
    "SignerTokenSource",
    "Token",
    "TokenSource",
    "decode_unverified",
    "describe_token",
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
    assert_never(cfg)


async def token_report(cfg: UplinkConfig) -> str:
    """Fetch a token as ``fieldgate run`` would and describe it (for ``fieldgate token --config FILE``).

    Raises :class:`TokenError` (message safe to print) when no token can be obtained.
    """
    source = make_token_source(cfg.token)
    token = await source.get_token()
    head = [
        f"source:    {source.description}",
        f"method:    {cfg.auth_method} (MQTT Authentication Method sent in CONNECT and AUTH)",
        f"broker:    {cfg.host}:{cfg.port} as client id {cfg.client_id!r}"
        + (f", username {cfg.username!r}" if cfg.username else ""),
    ]
    return "\n".join([*head, describe_token(token)])
