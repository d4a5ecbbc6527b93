"""``file``: a JWT written into a file by an outside agent, re-read whenever the file changes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from gateway.auth.token import Token, token_from_jwt
from gateway.config.uplink import FileTokenConfig
from gateway.errors import TokenError

log = logging.getLogger("fieldgate.auth")

_Signature = tuple[int, int, int]  # (mtime_ns, size, inode): changes when the agent rewrites the file


def _read_if_changed(path: Path, known: _Signature | None) -> tuple[_Signature, str | None]:
    """Stat the file and read it only if it changed. Blocking: runs in a worker thread."""
    try:
        st = path.stat()
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == known:
            return signature, None
        return signature, path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror or type(exc).__name__}") from exc
    except UnicodeDecodeError as exc:
        raise TokenError(f"token file {path} is not UTF-8 text") from exc


class FileTokenSource:
    """Returns the token the file holds; re-reads only when its mtime, size or inode changed."""

    def __init__(self, config: FileTokenConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._signature: _Signature | None = None
        self._token: Token | None = None
        self._warned_for: Token | None = None

    @property
    def auth_method(self) -> str:
        return self._config.default_auth_method

    @property
    def description(self) -> str:
        return f"file {self._config.path}"

    def invalidate(self) -> None:
        # The file is read again even if it looks unchanged (a token rewritten within the same mtime tick).
        self._signature = None

    async def get_token(self) -> Token:
        path = self._config.path
        # stat + read can block (network or slow flash file systems): worker thread.
        signature, text = await asyncio.to_thread(_read_if_changed, path, self._signature)
        if text is not None:
            token = token_from_jwt(text, where=f"token file {path}", now=self._clock())
            self._signature = signature
            if self._token is not None and not token.same_as(self._token):
                log.info("token file %s: picked up a new token (expires in %.0f s)", path, token.remaining())
            self._token = token
        held = self._token
        if held is None:  # unchanged signature but nothing held: cannot happen after a successful read
            raise TokenError(f"token file {path} has not been read")
        token = held
        left = token.expires_at - self._clock()
        if left <= 0:
            raise TokenError(f"token file {path} holds an expired token (expired {-left:.0f} s ago)")
        if left <= self._config.expiry_warning and self._warned_for is not token:
            self._warned_for = token
            log.warning(
                "token file %s: the token expires in %.0f s and the file holds nothing newer",
                path,
                left,
            )
        return token
