"""Where the gateway may publish and subscribe, derived from its own token the way Event Grid derives it.

Pure logic (no I/O, no asyncio): the same model as the local broker's ``deploy/broker/permissions.c``,
and both are tested against ``tests/vectors/permissions.json``.

- Topic templates in Event Grid's syntax: ``${client.authenticationName}`` is the token's ``sub``;
  ``${client.attributes.<claim>}`` is a claim of type int32 (decimal text), string, or array of
  strings (one filter per value, every combination when several arrays). ``iss``, ``sub``, ``aud``,
  ``exp`` and ``nbf`` are never attributes. A missing attribute voids its template; a value that is
  empty or holds ``/``, ``+`` or ``#`` yields no filter (it would change the filter's shape).
- Claim lists: a claim naming MQTT topic filters directly (a string or an array of strings; invalid
  filters are ignored), for identity providers that put the grant into the token.
- Publish: the topic matches a granted filter (MQTT wildcards; ``#`` and ``+`` in the first level
  never match ``$``-topics). Subscribe: every topic the requested filter can match is matched by one
  granted filter (:func:`filter_covers`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.config.permissions import PermissionsConfig
from gateway.mqtt_topics import (
    _VARIABLE,
    ATTRIBUTE_PREFIX,
    AUTH_NAME,
    filter_covers,
    grant_template_problem,
    topic_matches,
    valid_filter,
    valid_topic,
)

Action = Literal["publish", "subscribe"]

#: Registered claims that Event Grid never turns into client attributes.
NON_ATTRIBUTE_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf"})
#: Upper bound on the filters one template may expand to (the broker plugin's FG_MAX_EXPANSION).
MAX_EXPANSION = 1024
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def attribute_values(claims: Mapping[str, object], name: str) -> tuple[str, ...] | None:
    """The values of client attribute ``name``, or None when the claim is not an attribute at all."""
    if name in NON_ATTRIBUTE_CLAIMS or name not in claims:
        return None
    value = claims[name]
    if isinstance(value, str):
        return (value,)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (str(value),) if INT32_MIN <= value <= INT32_MAX else None
    if isinstance(value, float):
        # JSON has one number type: 7.0 is the int32 7 to Event Grid, 1.5 is no attribute.
        if value.is_integer() and INT32_MIN <= value <= INT32_MAX:
            return (str(int(value)),)
        return None
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _usable(value: str) -> bool:
    return bool(value) and not any(c in value for c in "/+#\0")


def expand_template(template: str, claims: Mapping[str, object]) -> tuple[str, ...]:
    """The filters ``template`` grants for these claims (none when malformed or an attribute is missing)."""
    if grant_template_problem(template) is not None:
        return ()
    sub = claims.get("sub")
    pieces: list[tuple[str, ...]] = []
    position = 0
    for match in _VARIABLE.finditer(template):
        pieces.append((template[position : match.start()],))
        name = match.group(1)
        if name == AUTH_NAME:
            values: tuple[str, ...] | None = (sub,) if isinstance(sub, str) else None
        else:
            values = attribute_values(claims, name[len(ATTRIBUTE_PREFIX) :])
        usable = tuple(v for v in values or () if _usable(v))
        if not usable:
            return ()
        pieces.append(usable)
        position = match.end()
    pieces.append((template[position:],))
    filters = ("".join(parts) for parts in itertools.islice(itertools.product(*pieces), MAX_EXPANSION))
    return tuple(dict.fromkeys(f for f in filters if valid_filter(f)))


def claim_filters(claims: Mapping[str, object], claim: str | None) -> tuple[str, ...]:
    """The valid topic filters a claim list holds (a string or an array of strings)."""
    if claim is None:
        return ()
    value = claims.get(claim)
    items: Sequence[object] = (value,) if isinstance(value, str) else value if isinstance(value, list) else ()
    return tuple(dict.fromkeys(v for v in items if isinstance(v, str) and valid_filter(v)))


# -- the permission set -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Grant:
    """One granted topic filter and the rule it came from (a template, or a claim list)."""

    filter: str
    rule: str


@dataclass(frozen=True, slots=True)
class Hint:
    """What would grant a denied topic: a template and the variable values it would need."""

    template: str
    needs: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        if not self.needs:
            return f"template {self.template}"
        values = ", ".join(f'{name} = "{value}"' for name, value in self.needs)
        return f"template {self.template} with {values}"


@dataclass(frozen=True, slots=True)
class PermissionDiff:
    granted_publish: tuple[str, ...] = ()
    revoked_publish: tuple[str, ...] = ()
    granted_subscribe: tuple[str, ...] = ()
    revoked_subscribe: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.granted_publish or self.revoked_publish or self.granted_subscribe or self.revoked_subscribe
        )

    def __str__(self) -> str:
        parts = []
        for label, items in (
            ("publish granted", self.granted_publish),
            ("publish revoked", self.revoked_publish),
            ("subscribe granted", self.granted_subscribe),
            ("subscribe revoked", self.revoked_subscribe),
        ):
            if items:
                parts.append(f"{label}: " + ", ".join(items))
        return "; ".join(parts) if parts else "no change"


@dataclass(frozen=True, slots=True)
class PermissionSet:
    """The topic filters one token grants, each with the rule that granted it."""

    publish: tuple[Grant, ...] = ()
    subscribe: tuple[Grant, ...] = ()
    config: PermissionsConfig = field(default=PermissionsConfig(), compare=False)
    #: Attribute values the token carried (for hints; no registered claims, no token text).
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), compare=False)

    @classmethod
    def from_claims(cls, config: PermissionsConfig, claims: Mapping[str, object]) -> PermissionSet:
        def grants(templates: Iterable[str], claim: str | None) -> tuple[Grant, ...]:
            found: dict[str, Grant] = {}
            for f in claim_filters(claims, claim):
                found.setdefault(f, Grant(f, f"claim {claim}"))
            for template in templates:
                for f in expand_template(template, claims):
                    found.setdefault(f, Grant(f, f"template {template}"))
            return tuple(found.values())

        names = {m[len(ATTRIBUTE_PREFIX) :] for t in (*config.publish_templates, *config.subscribe_templates)
                 for m in _VARIABLE.findall(t) if m.startswith(ATTRIBUTE_PREFIX)}  # fmt: skip
        attributes = tuple(
            (ATTRIBUTE_PREFIX + name, values)
            for name in sorted(names)
            if (values := attribute_values(claims, name)) is not None
        )
        sub = claims.get("sub")
        if isinstance(sub, str):
            attributes = ((AUTH_NAME, (sub,)), *attributes)
        return cls(
            publish=grants(config.publish_templates, config.publish_claim),
            subscribe=grants(config.subscribe_templates, config.subscribe_claim),
            config=config,
            attributes=attributes,
        )

    # -- questions -----------------------------------------------------------------------------------
    def publish_grant(self, topic: str) -> Grant | None:
        """The grant that allows publishing to ``topic``, or None."""
        return next((g for g in self.publish if topic_matches(g.filter, topic)), None)

    def subscribe_grant(self, requested: str) -> Grant | None:
        """The grant that covers subscribing to the filter ``requested``, or None."""
        return next((g for g in self.subscribe if filter_covers(g.filter, requested)), None)

    def may_publish(self, topic: str) -> bool:
        return self.publish_grant(topic) is not None

    def may_subscribe(self, requested: str) -> bool:
        return self.subscribe_grant(requested) is not None

    def allows(self, action: Action, topic: str) -> bool:
        return self.may_publish(topic) if action == "publish" else self.may_subscribe(topic)

    def hint(self, action: Action, topic: str) -> Hint | None:
        """A configured template that would allow ``topic`` with other attribute values, if any."""
        templates = self.config.publish_templates if action == "publish" else self.config.subscribe_templates
        for template in templates:
            needs = template_would_allow(template, topic)
            if needs is not None:
                return Hint(template, needs)
        return None

    def explain_denial(self, action: Action, topic: str) -> str:
        """Why ``topic`` is not granted and what would grant it, in one line (no token text)."""
        hint = self.hint(action, topic)
        held = dict(self.attributes)
        if hint is not None:
            has = []
            for name, _ in hint.needs:
                values = held.get(name)
                shown = name.removeprefix(ATTRIBUTE_PREFIX)
                has.append(f"{shown} = " + (", ".join(f'"{v}"' for v in values) if values else "(absent)"))
            return f"{hint} would allow it; the token has " + "; ".join(has)
        claim = self.config.publish_claim if action == "publish" else self.config.subscribe_claim
        where = [f"claim {claim}"] if claim else []
        templates = self.config.publish_templates if action == "publish" else self.config.subscribe_templates
        if templates:
            where.append("no configured template matches this topic")
        return "not granted by " + (" or ".join(where) if where else "any rule (none configured)")

    def diff(self, newer: PermissionSet) -> PermissionDiff:
        """What ``newer`` grants that this set does not, and what it no longer grants."""

        def changes(
            old: tuple[Grant, ...], new: tuple[Grant, ...]
        ) -> tuple[tuple[str, ...], tuple[str, ...]]:
            before = {g.filter for g in old}
            after = {g.filter for g in new}
            return (
                tuple(g.filter for g in new if g.filter not in before),
                tuple(g.filter for g in old if g.filter not in after),
            )

        gp, rp = changes(self.publish, newer.publish)
        gs, rs = changes(self.subscribe, newer.subscribe)
        return PermissionDiff(gp, rp, gs, rs)

    def describe(self) -> str:
        """The granted filters with their rules, one per line (for ``fieldgate token``)."""
        lines = []
        for label, grants in (("publish", self.publish), ("subscribe", self.subscribe)):
            if not grants:
                lines.append(f"{label}: nothing granted")
                continue
            lines.append(f"{label}:")
            lines += [f"  {g.filter}  ({g.rule})" for g in grants]
        return "\n".join(lines)


def template_would_allow(template: str, topic: str) -> tuple[tuple[str, str], ...] | None:
    """The variable values under which ``template`` grants publishing ``topic``, or None if none can.

    Variables are matched as non-empty text without ``/``; a variable used twice must take one value.
    """
    if grant_template_problem(template) is not None or not valid_topic(topic):
        return None
    t_levels = topic.split("/")
    g_levels = template.split("/")  # a variable's value never holds '/', so levels stay levels
    if topic.startswith("$") and g_levels[0] in ("+", "#"):
        return None
    found: dict[str, str] = {}
    for i, level in enumerate(g_levels):
        if level == "#":
            break
        if i >= len(t_levels):
            return None
        if level == "+":
            continue
        names = _VARIABLE.findall(level)
        pattern = "".join(
            re.escape(text) if j % 2 == 0 else "([^/+#]+)" for j, text in enumerate(_VARIABLE.split(level))
        )
        m = re.fullmatch(pattern, t_levels[i])
        if m is None:
            return None
        for name, value in zip(names, m.groups(), strict=True):
            if found.setdefault(name, value) != value:
                return None
    else:
        if len(g_levels) != len(t_levels):
            return None
    return tuple(found.items())
