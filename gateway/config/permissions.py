"""The ``[uplink.permissions]`` section: how the broker grants topics from the token (see
:mod:`gateway.permissions` for the model that uses it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.mqtt_topics import grant_template_problem
from gateway.schema import Table


@dataclass(frozen=True, slots=True)
class PermissionsConfig:
    """``[uplink.permissions]``: how the broker grants topics from the token, so the gateway can check first.

    Templates use Event Grid's syntax (``${client.authenticationName}``, ``${client.attributes.<claim>}``);
    the claims list MQTT topic filters directly ("" in the file: not used). The model is in
    :mod:`gateway.permissions.grants`.
    """

    publish_templates: tuple[str, ...] = ()
    subscribe_templates: tuple[str, ...] = ()
    publish_claim: str | None = "publish_topics"
    subscribe_claim: str | None = "subscribe_topics"
    #: A message whose topic is not granted: ``drop`` (counted) or ``hold`` (kept until a token grants it).
    denied: Literal["drop", "hold"] = "drop"


def parse_permissions(table: Table) -> PermissionsConfig:
    templates: dict[str, tuple[str, ...]] = {}
    for key in ("publish", "subscribe"):
        templates[key] = table.strings(key)
        for i, template in enumerate(templates[key]):
            problem = grant_template_problem(template)
            if problem is not None:
                table.problems.add(f"{table.here(key)}[{i}]", problem, template)
    claims: dict[str, str | None] = {}
    for key in ("publish_claim", "subscribe_claim"):
        name = table.string(key, f"{key.split('_')[0]}_topics")
        claims[key] = name or None
    denied = table.string("denied", "drop", choices=("drop", "hold"))
    table.finish()
    return PermissionsConfig(
        publish_templates=templates["publish"],
        subscribe_templates=templates["subscribe"],
        publish_claim=claims["publish_claim"],
        subscribe_claim=claims["subscribe_claim"],
        denied="hold" if denied == "hold" else "drop",
    )
