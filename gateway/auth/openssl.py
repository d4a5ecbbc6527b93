"""RS256 signatures through the OpenSSL libcrypto that Python's ``ssl`` module has already loaded (ctypes).

cryptography's Rust extension costs ~11 MiB of RSS and ~15 ms of import for the one signature an hour the
signer makes, while the uplink's ``ssl`` has libcrypto in the process anyway: signing through it adds
only ctypes (~0.4 MiB). :func:`libcrypto` is None where that is not so (``ssl`` linked statically, or an
OpenSSL before 3.0); the signer then uses cryptography, as before.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

#: ``EVP_PKEY_RSA``: the key type RS256 needs (an RSA-PSS key has another id and is refused).
EVP_PKEY_RSA = 6

_P = ctypes.c_void_p


class LibCrypto:
    """The few libcrypto functions signing needs, with their C signatures."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        def fn(name: str, restype: Any, *argtypes: Any) -> Callable[..., Any]:
            func = getattr(lib, name)
            func.restype = restype
            func.argtypes = argtypes
            return cast(Callable[..., Any], func)

        size_p = ctypes.POINTER(ctypes.c_size_t)
        self.bio_new_mem_buf = fn("BIO_new_mem_buf", _P, ctypes.c_char_p, ctypes.c_int)
        self.bio_free = fn("BIO_free", ctypes.c_int, _P)
        self.pem_read_private_key = fn("PEM_read_bio_PrivateKey", _P, _P, _P, _P, ctypes.c_char_p)
        self.pkey_base_id = fn("EVP_PKEY_get_base_id", ctypes.c_int, _P)
        self.pkey_free = fn("EVP_PKEY_free", None, _P)
        self.md_ctx_new = fn("EVP_MD_CTX_new", _P)
        self.md_ctx_free = fn("EVP_MD_CTX_free", None, _P)
        self.sha256 = fn("EVP_sha256", _P)
        self.digest_sign_init = fn("EVP_DigestSignInit", ctypes.c_int, _P, _P, _P, _P, _P)
        buf, size = ctypes.c_char_p, ctypes.c_size_t
        self.digest_sign = fn("EVP_DigestSign", ctypes.c_int, _P, buf, size_p, buf, size)
        self.digest_verify_init = fn("EVP_DigestVerifyInit", ctypes.c_int, _P, _P, _P, _P, _P)
        self.digest_verify = fn("EVP_DigestVerify", ctypes.c_int, _P, buf, size, buf, size)
        # Failures leave entries on OpenSSL's per-thread error queue; ssl reads that queue to explain its
        # own errors, so every call here leaves it empty.
        self.clear_errors = fn("ERR_clear_error", None)


def _loaded_libcrypto() -> str | None:
    """The path of the libcrypto this process has mapped (for ``ssl``), from /proc/self/maps."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1]
        if "/libcrypto.so" in path:
            return path
    return None


@functools.cache
def libcrypto() -> LibCrypto | None:
    """The ssl module's libcrypto, bound; None when it is not a shared OpenSSL 3 this process has loaded."""
    if not sys.platform.startswith("linux") or ssl.OPENSSL_VERSION_INFO < (3, 0):
        return None
    path = _loaded_libcrypto()
    if path is None:
        return None
    try:
        return LibCrypto(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None


class NoPrivateKey(ValueError):
    """The PEM text holds no private key libcrypto can read."""


class NotRSAKey(ValueError):
    """The key is not an RSA key (``kind`` is OpenSSL's key type id)."""

    def __init__(self, kind: int) -> None:
        super().__init__(f"key type {kind}")
        self.kind = kind


class RSAKey:
    """An RSA private key held by libcrypto; RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signatures."""

    def __init__(self, lib: LibCrypto, pkey: int) -> None:
        self._lib = lib
        self._pkey = pkey

    def __del__(self) -> None:
        self._lib.pkey_free(self._pkey)

    def _digest(self, verify: bytes | None, data: bytes) -> bytes | bool:
        lib = self._lib
        ctx = lib.md_ctx_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        try:
            if verify is not None:
                if lib.digest_verify_init(ctx, None, lib.sha256(), None, self._pkey) != 1:
                    raise ValueError("EVP_DigestVerifyInit failed")
                return bool(lib.digest_verify(ctx, verify, len(verify), data, len(data)) == 1)
            # RSA's default padding for a digest signature is PKCS #1 v1.5: RS256.
            if lib.digest_sign_init(ctx, None, lib.sha256(), None, self._pkey) != 1:
                raise ValueError("EVP_DigestSignInit failed")
            size = ctypes.c_size_t(0)
            if lib.digest_sign(ctx, None, ctypes.byref(size), data, len(data)) != 1:
                raise ValueError("EVP_DigestSign failed")
            out = ctypes.create_string_buffer(size.value)
            if lib.digest_sign(ctx, out, ctypes.byref(size), data, len(data)) != 1:
                raise ValueError("EVP_DigestSign failed")
            return out.raw[: size.value]
        finally:
            lib.md_ctx_free(ctx)
            lib.clear_errors()

    def sign(self, data: bytes) -> bytes:
        signature = self._digest(None, data)
        assert isinstance(signature, bytes)
        return signature

    def verify(self, signature: bytes, data: bytes) -> bool:
        return bool(self._digest(signature, data))


def load_rsa_key(lib: LibCrypto, pem: bytes) -> RSAKey:
    """Parse a PEM private key (unencrypted: the caller refuses encrypted ones first). ``NoPrivateKey`` when
    there is none in it, ``NotRSAKey`` for another kind of key."""
    bio = lib.bio_new_mem_buf(pem, len(pem))
    if not bio:
        raise MemoryError("BIO_new_mem_buf")
    try:
        # An empty passphrase rather than none: with none, OpenSSL would ask for one on the terminal.
        pkey = lib.pem_read_private_key(bio, None, None, b"")
    finally:
        lib.bio_free(bio)
        lib.clear_errors()
    if not pkey:
        raise NoPrivateKey("no private key")
    kind = lib.pkey_base_id(pkey)
    if kind != EVP_PKEY_RSA:
        lib.pkey_free(pkey)
        raise NotRSAKey(kind)
    return RSAKey(lib, pkey)
