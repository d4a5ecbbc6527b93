"""Event Grid's documented MQTT limits that a config (and a token) can be checked against before use.

Values from the quotas-limits table in ``/work/shared/reference/event-grid-mqtt.md`` ("Quotas and
limits"); each check returns a reason (for a problem naming the key path) or None. Pure: no MQTT library.
"""

from __future__ import annotations

import re

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
