"""Event Grid's documented MQTT limits: the fixed ones a config (and a token) is checked against before use,
and ``[uplink.limits]``, the per-session quotas the uplink shapes itself to.

Values from the quotas-limits table in ``/work/shared/reference/event-grid-mqtt.md`` ("Quotas and
limits"). The checks return a reason (for a problem naming the key path) or None. ``[uplink.limits]``
defaults are Event Grid's current documented values: 1,000 publishes/s and 1 MB/s inbound per session,
1,000 messages and 64 KB in flight; a namespace on the older quota sets ``messages_per_second = 100``.
What the uplink does at each limit: ``gateway/uplink/README.md``. Pure: no MQTT library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.schema import Table

#: Topic size: 256 bytes (UTF-8), the table's "topic size".
MAX_TOPIC_BYTES = 256
#: Topic levels: the table lists 8 (15 on newer pages). We hold topics to 8, the stricter documented value,
#: so a config that passes works on older and newer namespaces alike.
MAX_TOPIC_LEVELS = 8
#: Authentication Data (the JWT in CONNECT and AUTH): 8 KB.
MAX_AUTH_DATA_BYTES = 8 * 1024
#: Authentication name (the token's ``sub``): 128 characters.
MAX_AUTH_NAME_CHARS = 128
#: Subscriptions per session; filters per SUBSCRIBE; SUBSCRIBE packets per second.
MAX_SUBSCRIPTIONS = 50
MAX_FILTERS_PER_SUBSCRIBE = 10
MAX_SUBSCRIBES_PER_SECOND = 5

# A DNS host name: labels of letters, digits and hyphens, dot-separated.
_HOST = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
AUDIENCE_FORMS = "https://<host>/, <host> or <host>/ (e.g. https://ns.region-1.ts.eventgrid.azure.net/)"


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` exceeds Event Grid's topic size or level limit, or None."""
    size = len(topic.encode("utf-8"))
    if size > MAX_TOPIC_BYTES:
        return f"the topic is {size} bytes; Event Grid allows at most {MAX_TOPIC_BYTES}"
    levels = topic.count("/") + 1
    if levels > MAX_TOPIC_LEVELS:
        return f"the topic has {levels} levels; Event Grid allows at most {MAX_TOPIC_LEVELS}"
    return None


def audience_host(aud: str) -> str | None:
    """The host of an ``aud`` value in one of Event Grid's documented forms, else None."""
    host = aud.removeprefix("https://") if aud.startswith("https://") else aud
    if aud.startswith("https://"):
        if not host.endswith("/"):
            return None
        host = host[:-1]
    else:
        host = host.removesuffix("/")
    return host if _HOST.fullmatch(host) else None


def audience_problem(audience: str | list[object] | tuple[object, ...] | object) -> str | None:
    """Why an ``aud`` claim (string or array of strings) has a value in none of the documented forms."""
    values = [audience] if isinstance(audience, str) else audience
    if not isinstance(values, list | tuple) or not values:
        return f"expected a string or an array of strings in the form {AUDIENCE_FORMS}"
    for value in values:
        if not isinstance(value, str) or audience_host(value) is None:
            return f"{value!r} is in none of Event Grid's audience forms: {AUDIENCE_FORMS}"
    return None


def subject_problem(sub: object) -> str | None:
    """Why a ``sub`` (the authentication name) would be refused, or None."""
    if not isinstance(sub, str) or not sub:
        return "the authentication name (sub) must be a non-empty string"
    if len(sub) > MAX_AUTH_NAME_CHARS:
        return (
            f"the authentication name (sub) is {len(sub)} characters; Event Grid allows {MAX_AUTH_NAME_CHARS}"
        )
    return None


def token_size_problem(size: int) -> str | None:
    if size > MAX_AUTH_DATA_BYTES:
        return (
            f"the token is {size} bytes; Event Grid's Authentication Data holds at most {MAX_AUTH_DATA_BYTES}"
        )
    return None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Shaping of the uplink (token buckets, in-flight caps) and the retry bound of refused messages."""

    #: Publishes per second the uplink sends at most (a token bucket; Event Grid: 1,000/s per session).
    messages_per_second: float = 1000.0
    #: PUBLISH bytes (whole packets) per second (Event Grid: 1 MB/s per session).
    bytes_per_second: int = 1_000_000
    #: Unacknowledged PUBLISH bytes at most (Event Grid: 64 KB in flight); one bigger message may go
    #: alone.
    inflight_bytes: int = 65_536
    #: Unacknowledged QoS 1 publishes at most (Event Grid: 1,000); ``uplink.max_inflight`` and the
    #: broker's Receive Maximum bound the window too.
    inflight_messages: int = 1000
    #: Sends of one message that the broker refused for now (0x97, 0x80, 0x83, ...) or that were lost
    #: with the connection; after this many it goes to the store's dead letters.
    max_attempts: int = 10
    #: After a throttling answer the allowed rate halves; it then regains this fraction of the limit
    #: per second (additive increase: 0.05 is back from half to full in 10 s).
    recovery: float = 0.05


DEFAULT_LIMITS = LimitsConfig()


def parse_limits(table: Table) -> LimitsConfig:
    """Read ``[uplink.limits]`` (an empty table gives the defaults)."""
    d = DEFAULT_LIMITS
    limits = LimitsConfig(
        messages_per_second=table.number("messages_per_second", d.messages_per_second, minimum=0.1),
        bytes_per_second=table.integer("bytes_per_second", d.bytes_per_second, minimum=1024),
        inflight_bytes=table.integer("inflight_bytes", d.inflight_bytes, minimum=64),
        inflight_messages=table.integer("inflight_messages", d.inflight_messages, minimum=1, maximum=65535),
        max_attempts=table.integer("max_attempts", d.max_attempts, minimum=1, maximum=1000),
        recovery=table.number("recovery", d.recovery, minimum=0.001, maximum=1.0),
    )
    table.finish()
    return limits
