"""On start: warn about private keys and secret files that others may read.

The files are found in the parsed configuration (any section, the uplink's included, without knowing
its types): every ``file:`` :class:`~gateway.schema.Secret`, every path in a field whose name says it
holds a secret (``key_file``, ``token_file``, ``password_file`` ...), every path of a token source's
config, and whatever a config object lists through an optional ``secret_files()`` method.

What counts as readable by others: any permission for "other" (world); write permission for the group;
read permission for a group the service does not run in (the installer makes key files
``0640 root:fieldgate``: that group read is the intended one).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import stat
from enum import Enum
from pathlib import Path

from gateway.config import Config
from gateway.schema import Secret

log = logging.getLogger("fieldgate.service")

_SECRET_FIELD = re.compile(r"(^|_)(key|secret|token|password|passphrase|credential)s?(_|$)", re.IGNORECASE)


def secret_files(config: Config) -> list[Path]:
    """The secret files the configuration names, each once, in the order found."""
    found: dict[Path, None] = {}
    roots: list[object] = [config.uplink, *(setup.config for setup in config.drivers)]
    for root in roots:
        _walk(root, found, secret_owner=False, depth=0)
    return list(found)


def _walk(value: object, found: dict[Path, None], *, secret_owner: bool, depth: int) -> None:
    if depth > 8 or value is None or isinstance(value, str | int | float | bytes | Enum):
        return
    if isinstance(value, Secret):
        kind, _, where = value.reference.partition(":")
        if kind == "file" and where:
            found.setdefault(Path(where), None)
        return
    if isinstance(value, Path):
        if secret_owner:
            found.setdefault(value, None)
        return
    listed = getattr(value, "secret_files", None)
    if callable(listed):
        for item in listed():
            if isinstance(item, str | Path):
                found.setdefault(Path(item), None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for name, owner in _fields_to_walk(type(value)):
            _walk(getattr(value, name), found, secret_owner=owner, depth=depth + 1)
    elif isinstance(value, tuple | list):
        for item in value:
            _walk(item, found, secret_owner=secret_owner, depth=depth + 1)


@functools.cache
def _fields_to_walk(cls: type) -> tuple[tuple[str, bool], ...]:
    """The fields of dataclass ``cls``, each with whether it holds nothing but secrets."""
    # A token source's config (e.g. ``FileTokenConfig.path``) holds nothing but secrets and their knobs.
    token_source = "token" in cls.__name__.lower()
    fields = dataclasses.fields(cls)
    return tuple((f.name, token_source or bool(_SECRET_FIELD.search(f.name))) for f in fields)


def exposure(path: Path, *, groups: set[int] | None = None) -> str | None:
    """Why ``path`` is readable by others, or None when it is not (or cannot be checked)."""
    try:
        info = os.stat(path)
    except OSError:
        return None  # a missing file is the config check's or the token source's to report
    mode = stat.S_IMODE(info.st_mode)
    own_groups = groups if groups is not None else {os.getegid(), *os.getgroups()}
    if mode & stat.S_IRWXO:
        return f"mode {mode:04o} gives every user access (make it 0640 or 0600)"
    if mode & stat.S_IWGRP:
        return f"mode {mode:04o} lets its group (gid {info.st_gid}) change it (make it 0640)"
    if mode & stat.S_IRGRP and info.st_gid not in own_groups:
        return f"mode {mode:04o} lets group gid {info.st_gid}, which this service is not in, read it"
    return None


def warn_exposed_secret_files(config: Config) -> list[Path]:
    """Log a warning for each exposed secret file; returns them. Blocking stat calls: run it in a thread."""
    exposed = []
    for path in secret_files(config):
        why = exposure(path)
        if why is not None:
            exposed.append(path)
            log.warning("secret file %s is open to others: %s", path, why)
    return exposed
