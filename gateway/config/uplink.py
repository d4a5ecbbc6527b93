"""The ``[uplink]`` section: the MQTT v5 session and its token source, parsed into frozen dataclasses.

Self-contained on purpose (the rest of ``gateway/config`` is written in parallel): it needs only
:class:`gateway.schema.Table`. Every problem is recorded on the table; nothing here raises.

Token sources are a tagged union (:data:`TokenConfig`): ``signer`` and ``file`` today; an ``oauth2`` or
``azure`` variant is one more frozen dataclass with its own ``source`` tag, ``default_auth_method`` and a
branch in :func:`_parse_token`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from gateway.schema import Table

AUTH_METHODS = ("CUSTOM-JWT", "OAUTH2-JWT")
#: Event Grid's limits (see docs/uplink.md).
MAX_KEEPALIVE = 1160
MAX_PACKET_BYTES = 524288
MAX_SESSION_EXPIRY = 8 * 3600
MAX_WILL_DELAY = 300
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Registered claims the signer sets itself; config may not override them.
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat"})
#: Placeholders a birth/will topic or payload may contain.
PLACEHOLDERS = ("gateway", "site")

ClaimValue = str | int | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignerTokenConfig:
    """The gateway signs its own RS256 tokens with a private key file."""

    source: ClassVar[Literal["signer"]] = "signer"
    default_auth_method: ClassVar[str] = "CUSTOM-JWT"

    key_file: Path
    issuer: str
    subject: str
    audience: tuple[str, ...]
    kid: str | None = None
    lifetime: float = 3600.0
    #: ``nbf`` is set this many seconds before the signing time, for clocks running a little behind.
    not_before_skew: float = 60.0
    #: Extra claims, in file order (immutable pairs, so the config stays hashable and frozen).
    claims: tuple[tuple[str, ClaimValue], ...] = ()


@dataclass(frozen=True, slots=True)
class FileTokenConfig:
    """An outside agent writes a JWT into a file; the gateway re-reads it when it changes."""

    source: ClassVar[Literal["file"]] = "file"
    default_auth_method: ClassVar[str] = "CUSTOM-JWT"

    path: Path
    #: Warn (once per token) when the held token expires within this many seconds and nothing newer came.
    expiry_warning: float = 300.0


TokenConfig = SignerTokenConfig | FileTokenConfig


@dataclass(frozen=True, slots=True)
class RefreshConfig:
    """In-session re-authentication (AUTH 0x19) before the token expires."""

    enabled: bool = True
    #: Refresh when this fraction of the token's lifetime has passed ...
    fraction: float = 0.8
    #: ... or this many seconds before ``exp``, whichever comes first (ignored if it would leave less
    #: than half the lifetime, so short development tokens are not refreshed continuously).
    margin: float = 60.0
    #: Up to this many seconds earlier, at random (capped at 10% of the lifetime), so a fleet spreads out.
    jitter: float = 5.0
    #: How long to wait for the broker's AUTH 0x00.
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ReconnectConfig:
    """Exponential backoff with full jitter between connection attempts."""

    initial: float = 1.0
    maximum: float = 60.0


@dataclass(frozen=True, slots=True)
class StatusMessageConfig:
    """A birth (online) or will (offline) message. ``{gateway}`` and ``{site}`` are filled in at start."""

    topic: str
    payload: str
    qos: int = 1
    retain: bool = False
    #: Will only: Will Delay Interval in seconds (Event Grid allows up to 300).
    delay: int = 0


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    host: str
    token: TokenConfig
    client_id: str
    port: int = 8883
    tls: bool = True
    ca_file: Path | None = None
    username: str | None = None
    keepalive: int = 60
    session_expiry: int = 3600
    auth_method: str = "CUSTOM-JWT"
    qos: int = 1
    max_inflight: int = 20
    max_message_bytes: int = MAX_PACKET_BYTES
    connect_timeout: float = 10.0
    refresh: RefreshConfig = RefreshConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    birth: StatusMessageConfig | None = None
    will: StatusMessageConfig | None = None


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def fill_template(template: str, *, gateway: str, site: str) -> str:
    """Replace ``{gateway}`` and ``{site}``; other braces (e.g. JSON in a payload) are left alone."""
    return template.replace("{gateway}", gateway).replace("{site}", site)


def _path(table: Table, key: str, *, required: bool = False, must_exist: bool = True) -> Path | None:
    # Own reader: in the core Table of this commit the ``path`` attribute (the key path string)
    # shadows the ``Table.path()`` method.
    if required and not table.has(key):
        table.problem(key, "is required")
        return None
    raw = table.raw(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        table.problem(key, "expected a path", raw)
        return None
    path = Path(raw)
    if must_exist and not path.exists():
        table.problem(key, "no such file", raw)
    return path


def _parse_status(table: Table, *, will: bool) -> StatusMessageConfig:
    topic = table.string("topic")
    for name in _PLACEHOLDER.findall(topic):
        if name not in PLACEHOLDERS:
            table.problem("topic", f"unknown placeholder {{{name}}} (known: {{gateway}}, {{site}})", topic)
    if "+" in topic or "#" in topic:
        table.problem("topic", "a topic to publish to cannot contain the wildcards + or #", topic)
    payload = table.string("payload", "offline" if will else "online")
    qos = table.integer("qos", 1, minimum=0, maximum=2)
    if qos == 2:
        table.problem("qos", "QoS 2 is not supported (Event Grid accepts QoS 0 and 1)", qos)
    retain = table.boolean("retain", False)
    delay = table.integer("delay", 0, minimum=0, maximum=MAX_WILL_DELAY) if will else 0
    table.finish()
    return StatusMessageConfig(topic=topic, payload=payload, qos=min(qos, 1), retain=retain, delay=delay)


def _parse_claims(table: Table) -> tuple[tuple[str, ClaimValue], ...]:
    claims: list[tuple[str, ClaimValue]] = []
    for name in table:
        table.consume(name)
        value = table.data[name]
        if name in RESERVED_CLAIMS:
            table.problem(name, "is set by the signer itself (iss, sub, aud, exp, nbf, iat are reserved)")
            continue
        if isinstance(value, str):
            claims.append((name, value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if not INT32_MIN <= value <= INT32_MAX:
                table.problem(name, "integer claims must fit in 32 bits (Event Grid's attribute type)", value)
                continue
            claims.append((name, value))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            claims.append((name, tuple(str(v) for v in value)))
        else:
            table.problem(name, "a claim must be a string, a 32-bit integer or an array of strings", value)
    return tuple(claims)


def _parse_token(table: Table, *, default_subject: str) -> TokenConfig:
    source = table.string("source", choices=("signer", "file"))
    token: TokenConfig
    if source == "file":
        path = _path(table, "path", required=True, must_exist=False)
        warning = table.number("expiry_warning", 300.0, minimum=0.0)
        token = FileTokenConfig(path=path or Path(), expiry_warning=warning)
    else:
        key_file = _path(table, "key_file", required=True)
        kid = table.optional_string("kid")
        issuer = table.string("issuer")
        subject = table.string("subject", default_subject)
        audience = table.strings("audience")
        if not table.has("audience"):
            table.problem("audience", "is required")
        elif not audience or not all(audience):
            table.problem("audience", "must name at least one non-empty audience", list(audience))
        lifetime = table.number("lifetime", 3600.0, minimum=5.0, maximum=24 * 3600.0)
        skew = table.number("not_before_skew", 60.0, minimum=0.0, maximum=3600.0)
        claims_table = table.table("claims")
        claims = _parse_claims(claims_table) if claims_table is not None else ()
        token = SignerTokenConfig(
            key_file=key_file or Path(),
            issuer=issuer,
            subject=subject,
            audience=audience,
            kid=kid,
            lifetime=lifetime,
            not_before_skew=skew,
            claims=claims,
        )
    table.finish()
    return token


def parse_uplink(table: Table, *, gateway_id: str) -> UplinkConfig:
    """Read ``[uplink]`` (with ``[uplink.token]`` and its sub-tables). Problems are recorded on ``table``."""
    host = table.string("host")
    tls = table.boolean("tls", True)
    port = table.integer("port", 8883 if tls else 1883, minimum=1, maximum=65535)
    ca_file = _path(table, "ca_file")
    if ca_file is not None and not tls:
        table.problem("ca_file", "is only used with tls = true", str(ca_file))
    client_id = table.string("client_id", gateway_id)
    if not client_id:
        table.problem("client_id", "must not be empty (it is the MQTT session name)", client_id)
    username = table.optional_string("username")
    keepalive = table.integer("keepalive", 60, minimum=5, maximum=MAX_KEEPALIVE)
    session_expiry = table.integer("session_expiry", 3600, minimum=0, maximum=MAX_SESSION_EXPIRY)
    auth_method_given = table.has("auth_method")
    auth_method = table.string("auth_method", "CUSTOM-JWT", choices=AUTH_METHODS)
    qos = table.integer("qos", 1, minimum=0, maximum=2)
    if qos == 2:
        table.problem("qos", "QoS 2 is not supported (Event Grid accepts QoS 0 and 1)", qos)
        qos = 1
    max_inflight = table.integer("max_inflight", 20, minimum=1, maximum=65535)
    max_message_bytes = table.integer(
        "max_message_bytes", MAX_PACKET_BYTES, minimum=64, maximum=MAX_PACKET_BYTES
    )
    connect_timeout = table.number("connect_timeout", 10.0, positive=True)

    refresh_table = table.table_or_empty("refresh")
    refresh = RefreshConfig(
        enabled=refresh_table.boolean("enabled", True),
        fraction=refresh_table.number("fraction", 0.8, minimum=0.1, maximum=0.95),
        margin=refresh_table.number("margin", 60.0, minimum=0.0),
        jitter=refresh_table.number("jitter", 5.0, minimum=0.0),
        timeout=refresh_table.number("timeout", 10.0, positive=True),
    )
    refresh_table.finish()

    reconnect_table = table.table_or_empty("reconnect")
    initial = reconnect_table.number("initial", 1.0, positive=True)
    maximum = reconnect_table.number("max", 60.0, positive=True)
    if maximum < initial:
        shown = reconnect_table.data.get("max", maximum)
        reconnect_table.problem("max", f"must be at least reconnect.initial ({initial:g})", shown)
    reconnect_table.finish()

    birth_table = table.table("birth")
    birth = _parse_status(birth_table, will=False) if birth_table is not None else None
    will_table = table.table("will")
    will = _parse_status(will_table, will=True) if will_table is not None else None

    token_table = table.table("token", required=True)
    token: TokenConfig
    if token_table is not None:
        token = _parse_token(token_table, default_subject=username or client_id)
    else:
        token = FileTokenConfig(path=Path())
    if not auth_method_given:
        auth_method = token.default_auth_method
    table.finish()
    return UplinkConfig(
        host=host,
        token=token,
        client_id=client_id,
        port=port,
        tls=tls,
        ca_file=ca_file,
        username=username,
        keepalive=keepalive,
        session_expiry=session_expiry,
        auth_method=auth_method,
        qos=qos,
        max_inflight=max_inflight,
        max_message_bytes=max_message_bytes,
        connect_timeout=connect_timeout,
        refresh=refresh,
        reconnect=ReconnectConfig(initial=initial, maximum=max(maximum, initial)),
        birth=birth,
        will=will,
    )
