"""Topic templates such as ``sites/{site}/{device}/telemetry``: validated once, rendered per message."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

#: Variables a telemetry topic may use. ``point`` only where one message carries one point.
TOPIC_VARIABLES = ("gateway", "site", "device", "driver", "point")


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
