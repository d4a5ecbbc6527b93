"""The one MQTT topic grammar of the gateway: topics and filters validated, matched and covered, and the
templates that make them.

- Topic filters: :func:`valid_filter`, :func:`valid_topic`, :func:`topic_matches`, :func:`filter_covers`.
- Telemetry topic templates (``sites/{site}/{device}/telemetry``): :func:`compile_template`, validated
  once, rendered per message. Command topic filters (``.../{device}/commands/#``):
  :func:`command_template_problem`, :func:`render_filter`. Birth and will topics: :func:`fill_template`.
- Event Grid's grant templates (``${client.authenticationName}``, ``${client.attributes.<claim>}``):
  :func:`grant_template_problem`; their expansion from a token is in :mod:`gateway.permissions.grants`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

#: Variables a telemetry topic may use. ``point`` only where one message carries one point.
TOPIC_VARIABLES = ("gateway", "site", "device", "driver", "point")
#: Placeholders a command topic may use; ``{device}`` is required (each device gets its own filter).
COMMAND_VARIABLES = ("gateway", "site", "device", "driver")


class TemplateError(ValueError):
    """The template is malformed or names an unknown variable."""


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A compiled template: literal text and variable names, alternating."""

    text: str
    parts: tuple[tuple[str, str | None], ...]

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(literal + (values[name] if name is not None else "") for literal, name in self.parts)


def compile_template(text: str, allowed: tuple[str, ...] = TOPIC_VARIABLES) -> TopicTemplate:
    """Compile ``text``; raises TemplateError naming the first unknown variable or syntax problem."""
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"malformed template: {exc}") from exc
    for literal, field, spec, conversion in parsed:
        if field is None:
            parts.append((literal, None))
            continue
        if spec or conversion:
            raise TemplateError(f"{{{field}}}: format specs are not supported")
        if field not in allowed:
            raise TemplateError(
                f"unknown variable {{{field}}}; known: " + ", ".join("{" + v + "}" for v in allowed)
            )
        parts.append((literal, field))
    if not text or text.startswith("/") or "#" in text or "+" in text:
        raise TemplateError("a topic must be non-empty, not start with '/', and contain no wildcards")
    return TopicTemplate(text, tuple(parts))


AUTH_NAME = "client.authenticationName"


ATTRIBUTE_PREFIX = "client.attributes."


#: MQTT's limit on a topic's length in bytes.
MAX_TOPIC_BYTES = 65535


_VARIABLE = re.compile(r"\$\{([^}]*)\}")


# -- MQTT topic filters -----------------------------------------------------------------------------
def valid_filter(text: str) -> bool:
    """A well-formed MQTT topic filter: ``+`` and ``#`` fill whole levels, ``#`` only last."""
    if not text or "\0" in text or len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return False
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def valid_topic(text: str) -> bool:
    """A topic one may publish to: a valid filter without wildcards."""
    return valid_filter(text) and "+" not in text and "#" not in text


def topic_matches(grant: str, topic: str) -> bool:
    """True when the topic filter ``grant`` matches the (wildcard-free) ``topic``."""
    if not valid_topic(topic) or not valid_filter(grant):
        return False
    # MQTT keeps $-topics (broker internals) out of wildcards in the first level.
    if topic.startswith("$") and grant[0] in "+#":
        return False
    g = grant.split("/")
    t = topic.split("/")
    for i, level in enumerate(g):
        if level == "#":
            return True  # also matches the parent level: "a/#" matches "a"
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(g) == len(t)


def filter_covers(grant: str, requested: str) -> bool:
    """True when every topic ``requested`` can match is also matched by ``grant``."""
    if not valid_filter(requested) or not valid_filter(grant):
        return False
    if "+" not in requested and "#" not in requested:
        return topic_matches(grant, requested)
    if requested.startswith("$") and grant[0] in "+#":
        return False
    g = grant.split("/")
    f = requested.split("/")
    for i, level in enumerate(f):
        if i >= len(g):
            return False
        if g[i] == "#":
            return True
        if level == "#":
            return False  # only '#' covers '#'
        if level == "+":
            if g[i] != "+":
                return False
        elif g[i] != "+" and g[i] != level:
            return False
    # "a/#" also covers its parent "a".
    return len(g) == len(f) or (len(g) == len(f) + 1 and g[-1] == "#")


# -- templates --------------------------------------------------------------------------------------
def grant_template_problem(template: str) -> str | None:
    """Why an Event Grid topic template (``${client.authenticationName}``...) is malformed, or None."""
    if "${" in _VARIABLE.sub("", template):
        return "unterminated ${ in template"
    for name in _VARIABLE.findall(template):
        if name != AUTH_NAME and not (
            name.startswith(ATTRIBUTE_PREFIX) and len(name) > len(ATTRIBUTE_PREFIX)
        ):
            return f"unknown variable ${{{name}}} (use ${{{AUTH_NAME}}} or ${{{ATTRIBUTE_PREFIX}<claim>}})"
    if not valid_filter(_VARIABLE.sub("x", template)):
        return "not a valid MQTT topic filter"
    return None


def render_filter(template: str, **values: str) -> str:
    """The topic filter of one device: placeholders filled, wildcards kept."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)


def command_template_problem(template: str) -> str | None:
    """Why ``template`` cannot be a command topic, or None."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"malformed template: {exc}"
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion or name not in COMMAND_VARIABLES:
            return (
                "unknown variable {"
                + name
                + "}; known: "
                + ", ".join("{" + v + "}" for v in COMMAND_VARIABLES)
            )
        names.add(name)
    if "device" not in names:
        return "needs {device}: each device has its own command topic"
    # Placeholder values never contain '/', '+' or '#' (names are validated), so a sample tells the shape.
    sample = render_filter(template, gateway="g", site="s", device="d", driver="x")
    levels = sample.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            return "'+' and '#' must fill a whole level, '#' only as the last one"
    if sample.startswith("/") or sample.startswith("$") or "" in levels[:-1] or not sample:
        return "a command topic must not start with '/' or '$' nor contain empty levels"
    return None


def fill_template(template: str, *, gateway: str, site: str) -> str:
    """Replace ``{gateway}`` and ``{site}``; other braces (e.g. JSON in a payload) are left alone."""
    return template.replace("{gateway}", gateway).replace("{site}", site)
