"""Which configured device topics the current token grants: for ``fieldgate check-config`` and ``token``.

A wrong grant should be caught when the gateway is installed, not hours later when the broker refuses
it. Both commands list every device topic with the rule that grants it, or why it is not granted and
which template and attribute value would grant it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.auth.token import Token
from gateway.config import Config
from gateway.config.uplink import AzureTokenConfig, OAuth2TokenConfig, UplinkConfig
from gateway.model import Commandable
from gateway.mqtt_topics import fill_template
from gateway.permissions.gate import ExpectedTopic
from gateway.permissions.grants import Action, PermissionSet
from gateway.pipeline.router import Router

if TYPE_CHECKING:
    pass


def device_topics(config: Config) -> list[ExpectedTopic]:
    """Every topic a configured device publishes to (per device, or per point when not batched), and the
    uplink's birth and will topics."""
    g = config.gateway
    router = Router(g.id, g.site, config.routes, config.telemetry.qos, telemetry=config.telemetry)
    topics = []
    if router.gateway_batch_topic is not None:
        topics.append(ExpectedTopic("gateway batch", router.gateway_batch_topic))
    for route in config.routes:
        if route.batch:
            topics.append(ExpectedTopic(f"device {route.device.name}", router.topic(route)))
        else:
            topics += [
                ExpectedTopic(f"device {route.device.name}", router.topic(route, p.name))
                for p in route.device.points
            ]
    uplink = config.uplink
    if isinstance(uplink, UplinkConfig):
        # The uplink publishes these itself; a will on a topic the token does not grant is never sent.
        for label, status in (("birth message", uplink.birth), ("will message", uplink.will)):
            if status is not None:
                topic = fill_template(status.topic, gateway=g.id, site=g.site)
                topics.append(ExpectedTopic(label, topic))
    return topics


def command_subscriptions(config: Config) -> list[ExpectedTopic]:
    """The command topic filters the gateway will subscribe ([commands]): one per device whose driver
    takes commands. Builds the drivers to ask them (pure: drivers do no I/O before ``run``)."""
    cfg = config.commands
    if cfg is None:
        return []
    wanted = set(cfg.devices)
    infos = {d.name: d for d in config.devices}
    found: list[ExpectedTopic] = []
    for setup in config.drivers:
        for driver in setup.plugin.build(setup.config):
            if not isinstance(driver, Commandable):
                continue
            for name in driver.command_devices:
                info = infos.get(name)
                if info is None or (wanted and name not in wanted):
                    continue
                topic_filter = cfg.command_filter(
                    gateway=config.gateway.id, site=config.gateway.site, device=name, driver=info.driver
                )
                found.append(ExpectedTopic(f"commands for device {name}", topic_filter))
    return sorted(found, key=lambda e: e.label)


@dataclass(frozen=True, slots=True)
class TopicCheck:
    label: str
    topic: str
    granted: bool
    #: The granting rule, or why not and what would grant it.
    detail: str


def check_topics(
    perms: PermissionSet, topics: Sequence[ExpectedTopic], action: Action = "publish"
) -> list[TopicCheck]:
    """Whether the token grants each topic (publish) or topic filter (subscribe), and by which rule."""
    grant_of = perms.publish_grant if action == "publish" else perms.subscribe_grant
    checks = []
    for item in topics:
        grant = grant_of(item.topic)
        if grant is not None:
            checks.append(TopicCheck(item.label, item.topic, True, f"{grant.rule} (filter {grant.filter})"))
        else:
            checks.append(TopicCheck(item.label, item.topic, False, perms.explain_denial(action, item.topic)))
    return checks


def report_lines(
    uplink: UplinkConfig,
    token: Token,
    topics: Sequence[ExpectedTopic],
    subscriptions: Sequence[ExpectedTopic] = (),
) -> tuple[list[str], int]:
    """The permission report for ``token``; and how many device topics (published to, or subscribed for
    commands) it does not grant."""
    cfg = uplink.permissions
    if cfg is None:
        return ["permissions: not checked (no [uplink.permissions] in the config)"], 0
    perms = PermissionSet.from_claims(cfg, token.claims)
    lines = ["permissions granted by this token ([uplink.permissions]):"]
    lines += ["  " + line for line in perms.describe().splitlines()]
    checks = check_topics(perms, topics)
    lines.append("topics of this gateway:")
    for check in checks:
        verdict = "granted" if check.granted else "NOT GRANTED"
        lines.append(f"  {check.label}: {check.topic}: {verdict}: {check.detail}")
    denied = sum(1 for check in checks if not check.granted)
    if denied:
        fate = "held until a token grants them" if cfg.denied == "hold" else "dropped (counted)"
        count = f"{denied} topic{'s' if denied != 1 else ''}"
        lines.append(
            f'{count} NOT GRANTED: their messages will be {fate}, never sent (denied = "{cfg.denied}")'
        )
    elif checks:
        lines.append("every topic is granted")
    if subscriptions:
        subs = check_topics(perms, subscriptions, "subscribe")
        lines.append("command subscriptions of this gateway:")
        for check in subs:
            verdict = "granted" if check.granted else "NOT GRANTED"
            lines.append(f"  {check.label}: {check.topic}: {verdict}: {check.detail}")
        not_granted = sum(1 for check in subs if not check.granted)
        if not_granted:
            lines.append(
                f"{not_granted} command subscription{'s' if not_granted != 1 else ''} NOT GRANTED: "
                "not attempted, commands to those devices will not arrive"
            )
        denied += not_granted
    return lines, denied


def token_available_offline(uplink: UplinkConfig) -> bool:
    """Whether check-config may obtain the token: signer and file sources work without a network."""
    return not isinstance(uplink.token, AzureTokenConfig | OAuth2TokenConfig)
