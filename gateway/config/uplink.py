"""The ``[uplink]`` section: the MQTT v5 session and its token source, parsed into frozen dataclasses.

It needs only :class:`gateway.schema.Table` (no MQTT library: validating a config must not load one).
Every problem is recorded on the table; nothing here raises.

Token sources are a tagged union (:data:`TokenConfig`): ``signer``, ``file``, ``oauth2`` and ``azure``, each
a frozen dataclass with its own ``source`` tag and ``default_auth_method``, read by :func:`_parse_token`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from gateway.config.limits import (
    DEFAULT_LIMITS,
    LimitsConfig,
    audience_problem,
    parse_limits,
    subject_problem,
    topic_problem,
)
from gateway.config.permissions import PermissionsConfig, parse_permissions
from gateway.schema import Secret, Table, default_of

AUTH_METHODS = ("CUSTOM-JWT", "OAUTH2-JWT")
#: Event Grid's limits (see gateway/uplink/README.md).
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


#: Credential kinds of the ``azure`` source (azure-identity's credential classes).
AZURE_CREDENTIALS = (
    "managed-identity",
    "client-secret",
    "client-certificate",
    "workload-identity",
    "default",
)
EVENT_GRID_SCOPE = "https://eventgrid.azure.net/.default"
OAUTH2_CLIENT_AUTH = ("client_secret_basic", "client_secret_post", "private_key_jwt")


@dataclass(frozen=True, slots=True)
class AzureTokenConfig:
    """Microsoft Entra ID tokens through azure-identity (Event Grid's ``OAUTH2-JWT`` method)."""

    source: ClassVar[Literal["azure"]] = "azure"
    default_auth_method: ClassVar[str] = "OAUTH2-JWT"

    credential: str = "managed-identity"
    scope: str = EVENT_GRID_SCOPE
    #: Managed identity: a user-assigned identity's client id (None: the system-assigned one).
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: Secret | None = None
    certificate_file: Path | None = None
    certificate_password: Secret | None = None
    #: Workload identity: the federated token file (None: azure-identity reads AZURE_FEDERATED_TOKEN_FILE).
    token_file: Path | None = None
    #: Entra ID authority host for sovereign clouds (None: azure-identity's default, the public cloud).
    authority: str | None = None
    #: False skips MSAL's instance discovery and authority validation (private clouds, Azure Stack, a
    #: local stand-in authority): the authority's own metadata is then trusted as it is.
    instance_discovery: bool = True
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class OAuth2TokenConfig:
    """An OpenID Connect provider's token endpoint, client-credentials grant; the access token is a JWT."""

    source: ClassVar[Literal["oauth2"]] = "oauth2"
    default_auth_method: ClassVar[str] = "CUSTOM-JWT"

    token_endpoint: str
    client_id: str
    client_auth: str = "client_secret_basic"
    client_secret: Secret | None = None
    private_key_file: Path | None = None
    #: ``kid`` header of the client assertion (private_key_jwt), when the provider wants it.
    key_id: str | None = None
    scope: str | None = None
    audience: str | None = None
    resource: str | None = None
    #: Lifetime of a private_key_jwt client assertion, seconds.
    assertion_lifetime: float = 60.0
    ca_file: Path | None = None
    timeout: float = 30.0


TokenConfig = SignerTokenConfig | FileTokenConfig | AzureTokenConfig | OAuth2TokenConfig


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
    #: The backoff starts again from ``initial`` only after a connection stayed up this long (seconds): a
    #: connection the broker ends at once (another client taking the session) keeps backing off.
    stable_after: float = 30.0


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
    """The ``[uplink]`` section: the broker, the token source, TLS, limits and session settings."""

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
    #: Retained birth/will messages only on opt-in: Event Grid's retain is a preview (older namespaces
    #: refuse a retained publish and close the connection).
    allow_retain: bool = False
    #: None: topics are not checked before sending (no ``[uplink.permissions]``).
    permissions: PermissionsConfig | None = None
    #: ``[uplink.limits]``: the broker's quotas the uplink shapes itself to.
    limits: LimitsConfig = DEFAULT_LIMITS


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _parse_status(
    table: Table, *, will: bool, gateway_id: str, site: str, allow_retain: bool
) -> StatusMessageConfig:
    topic = table.string("topic")
    for name in _PLACEHOLDER.findall(topic):
        if name not in PLACEHOLDERS:
            table.problem("topic", f"unknown placeholder {{{name}}} (known: {{gateway}}, {{site}})", topic)
    if "+" in topic or "#" in topic:
        table.problem("topic", "a topic to publish to cannot contain the wildcards + or #", topic)
    payload = table.string("payload", "offline" if will else "online")
    qos = table.integer("qos", default_of(UplinkConfig, "qos"), minimum=0, maximum=2)
    if qos == 2:
        table.problem("qos", "QoS 2 is not supported (Event Grid accepts QoS 0 and 1)", qos)
    retain = table.boolean("retain", False)
    if retain and not allow_retain:
        table.problem(
            "retain",
            "Event Grid may refuse a retained message and close the connection; "
            "set uplink.allow_retain = true to opt in",
            retain,
        )
    filled = topic.replace("{gateway}", gateway_id).replace("{site}", site)
    too_big = topic_problem(filled) if topic else None
    if too_big is not None:
        table.problem("topic", too_big, filled)
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


# The azure and oauth2 readers use Table.path: relative paths are taken from the config file's folder.
def _parse_azure(table: Table) -> AzureTokenConfig:
    credential = table.string("credential", "managed-identity", choices=AZURE_CREDENTIALS)
    scope = table.string("scope", EVENT_GRID_SCOPE)
    if not scope:
        table.problem("scope", "must not be empty", scope)
    client_id = table.optional_string("client_id")
    tenant_id = table.optional_string("tenant_id")
    authority = table.optional_string("authority")
    instance_discovery = table.boolean("instance_discovery", True)
    timeout = table.number("timeout", 30.0, positive=True)
    needs_app = credential in ("client-secret", "client-certificate")
    for key in ("client_id", "tenant_id"):
        if needs_app and not table.has(key):
            table.problem(key, f'is required with credential = "{credential}"')
    client_secret = certificate = password = token_file = None
    if credential == "client-secret":
        client_secret = table.secret("client_secret")
    if credential == "client-certificate":
        certificate = table.path("certificate_file", required=True)
        password = table.secret("certificate_password", required=False)
    if credential == "workload-identity":
        token_file = table.path("token_file", must_exist=False)
    if credential in ("default", "managed-identity") and tenant_id is not None:
        table.problem("tenant_id", f'is not used with credential = "{credential}"', tenant_id)
    return AzureTokenConfig(
        credential=credential,
        scope=scope,
        client_id=client_id,
        tenant_id=tenant_id,
        client_secret=client_secret,
        certificate_file=certificate,
        certificate_password=password,
        token_file=token_file,
        authority=authority,
        instance_discovery=instance_discovery,
        timeout=timeout,
    )


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1", "[::1]")


def _parse_oauth2(table: Table) -> OAuth2TokenConfig:
    from urllib.parse import urlsplit

    endpoint = table.string("token_endpoint")
    parts = urlsplit(endpoint)
    if endpoint and (parts.scheme not in ("https", "http") or not parts.hostname):
        table.problem("token_endpoint", "expected an https:// URL", endpoint)
    elif parts.scheme == "http" and not _loopback(parts.hostname or ""):
        table.problem("token_endpoint", "must use https (plain http only to a loopback address)", endpoint)
    client_id = table.string("client_id")
    client_auth = table.string("client_auth", "client_secret_basic", choices=OAUTH2_CLIENT_AUTH)
    secret = key_file = None
    if client_auth == "private_key_jwt":
        key_file = table.path("private_key_file", required=True)
    else:
        secret = table.secret("client_secret")
    key_id = table.optional_string("key_id")
    scope = table.optional_string("scope")
    audience = table.optional_string("audience")
    resource = table.optional_string("resource")
    lifetime = table.number("assertion_lifetime", 60.0, minimum=5.0, maximum=600.0)
    ca_file = table.path("ca_file")
    timeout = table.number("timeout", 30.0, positive=True)
    return OAuth2TokenConfig(
        token_endpoint=endpoint,
        client_id=client_id,
        client_auth=client_auth,
        client_secret=secret,
        private_key_file=key_file,
        key_id=key_id,
        scope=scope,
        audience=audience,
        resource=resource,
        assertion_lifetime=lifetime,
        ca_file=ca_file,
        timeout=timeout,
    )


def _parse_token(table: Table, *, default_subject: str) -> TokenConfig:
    source = table.string("source", choices=("signer", "file", "azure", "oauth2"))
    token: TokenConfig
    if source == "azure":
        token = _parse_azure(table)
    elif source == "oauth2":
        token = _parse_oauth2(table)
    elif source == "file":
        path = table.path("path", required=True, must_exist=False)
        warning = table.number("expiry_warning", 300.0, minimum=0.0)
        token = FileTokenConfig(path=path or Path(), expiry_warning=warning)
    else:
        key_file = table.path("key_file", required=True)
        kid = table.optional_string("kid")
        issuer = table.string("issuer")
        subject = table.string("subject", default_subject)
        bad_subject = subject_problem(subject) if subject else None
        if bad_subject is not None:
            table.problem("subject", bad_subject, subject)
        audience = table.strings("audience")
        if not table.has("audience"):
            table.problem("audience", "is required")
        elif not audience or not all(audience):
            table.problem("audience", "must name at least one non-empty audience", list(audience))
        elif (bad_audience := audience_problem(audience)) is not None:
            table.problem("audience", bad_audience, list(audience) if len(audience) > 1 else audience[0])
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


def parse_uplink(table: Table, *, gateway_id: str, site: str = "") -> UplinkConfig:
    """``site`` is accepted for the loader's call; birth/will placeholders are filled at start.

    Read ``[uplink]`` (with ``[uplink.token]`` and its sub-tables). Problems are recorded on ``table``."""
    host = table.string("host")
    tls = table.boolean("tls", default_of(UplinkConfig, "tls"))
    port = table.integer("port", default_of(UplinkConfig, "port") if tls else 1883, minimum=1, maximum=65535)
    # A token in clear text on the network is a stolen identity: only on this machine, or when asked for.
    allow_plaintext = table.boolean("allow_plaintext", False)
    if not tls and host and not _loopback(host) and not allow_plaintext:
        table.problem(
            "tls",
            f"false sends the token in clear text to {host}; use TLS, or set uplink.allow_plaintext = true"
            " (a test broker on a trusted network)",
            False,
        )
    ca_file = table.path("ca_file")
    if ca_file is not None and not tls:
        table.problem("ca_file", "is only used with tls = true", str(ca_file))
    client_id = table.string("client_id", gateway_id)
    if not client_id:
        table.problem("client_id", "must not be empty (it is the MQTT session name)", client_id)
    username = table.optional_string("username")
    keepalive = table.integer(
        "keepalive", default_of(UplinkConfig, "keepalive"), minimum=5, maximum=MAX_KEEPALIVE
    )
    session_expiry = table.integer(
        "session_expiry", default_of(UplinkConfig, "session_expiry"), minimum=0, maximum=MAX_SESSION_EXPIRY
    )
    auth_method_given = table.has("auth_method")
    auth_method = table.string("auth_method", default_of(UplinkConfig, "auth_method"), choices=AUTH_METHODS)
    qos = table.integer("qos", default_of(UplinkConfig, "qos"), minimum=0, maximum=2)
    if qos == 2:
        table.problem("qos", "QoS 2 is not supported (Event Grid accepts QoS 0 and 1)", qos)
        qos = 1
    max_inflight = table.integer(
        "max_inflight", default_of(UplinkConfig, "max_inflight"), minimum=1, maximum=65535
    )
    max_message_bytes = table.integer(
        "max_message_bytes",
        default_of(UplinkConfig, "max_message_bytes"),
        minimum=64,
        maximum=MAX_PACKET_BYTES,
    )
    connect_timeout = table.number(
        "connect_timeout", default_of(UplinkConfig, "connect_timeout"), positive=True
    )

    refresh_table = table.table_or_empty("refresh")
    d = RefreshConfig()
    refresh = RefreshConfig(
        enabled=refresh_table.boolean("enabled", d.enabled),
        fraction=refresh_table.number("fraction", d.fraction, minimum=0.1, maximum=0.95),
        margin=refresh_table.number("margin", d.margin, minimum=0.0),
        jitter=refresh_table.number("jitter", d.jitter, minimum=0.0),
        timeout=refresh_table.number("timeout", d.timeout, positive=True),
    )
    refresh_table.finish()

    reconnect_table = table.table_or_empty("reconnect")
    initial = reconnect_table.number("initial", ReconnectConfig().initial, positive=True)
    maximum = reconnect_table.number("max", ReconnectConfig().maximum, positive=True)
    if maximum < initial:
        shown = reconnect_table.data.get("max", maximum)
        reconnect_table.problem("max", f"must be at least reconnect.initial ({initial:g})", shown)
    stable_after = reconnect_table.number("stable_after", ReconnectConfig().stable_after, minimum=0.0)
    reconnect_table.finish()

    allow_retain = table.boolean("allow_retain", False)
    birth_table = table.table("birth")
    birth = (
        _parse_status(birth_table, will=False, gateway_id=gateway_id, site=site, allow_retain=allow_retain)
        if birth_table is not None
        else None
    )
    will_table = table.table("will")
    will = (
        _parse_status(will_table, will=True, gateway_id=gateway_id, site=site, allow_retain=allow_retain)
        if will_table is not None
        else None
    )
    permissions_table = table.table("permissions")
    permissions = parse_permissions(permissions_table) if permissions_table is not None else None
    limits = parse_limits(table.table_or_empty("limits"))

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
        reconnect=ReconnectConfig(initial=initial, maximum=max(maximum, initial), stable_after=stable_after),
        birth=birth,
        will=will,
        allow_retain=allow_retain,
        permissions=permissions,
        limits=limits,
    )
