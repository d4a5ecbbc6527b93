"""The ``[commands]`` section: cloud-to-device command topics and the limits that keep commands safe.

::

    [commands]
    topic = "sites/{site}/{gateway}/{device}/commands/#"   # an MQTT topic filter per device
    # response_topic = "sites/{site}/{gateway}/{device}/responses/#"  # where responses may go (filter)
    # devices = ["plc", "scale"]   # default: every device whose driver takes commands
    # timeout = 5.0                # seconds one command may take on the device (bus wait included)
    # queue = 8                    # waiting commands per device; beyond it: refused "busy"
    # dedup = 1024                 # correlation data remembered to execute a redelivery once
    # max_payload = 4096           # bytes; a larger payload is refused "malformed" unread
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from gateway.config.limits import MAX_SUBSCRIPTIONS
from gateway.mqtt_topics import command_template_problem, render_filter
from gateway.schema import Table

DEFAULT_COMMAND_TOPIC = "sites/{site}/{gateway}/{device}/commands/#"
#: A request's MQTT Response Topic must match this filter (per device), or the request is refused: the
#: gateway never publishes a response onto its telemetry, birth, will or command topics.
DEFAULT_RESPONSE_TOPIC = "sites/{site}/{gateway}/{device}/responses/#"


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """The ``[commands]`` section: where cloud-to-device commands arrive and which devices take them."""

    topic: str = DEFAULT_COMMAND_TOPIC
    #: Devices that take commands; empty: every device whose driver can.
    devices: tuple[str, ...] = ()
    timeout: float = 5.0
    queue: int = 8
    dedup: int = 1024
    max_payload: int = 4096
    response_topic: str = DEFAULT_RESPONSE_TOPIC

    def command_filter(self, *, gateway: str, site: str, device: str, driver: str) -> str:
        return render_filter(self.topic, gateway=gateway, site=site, device=device, driver=driver)

    def response_filter(self, *, gateway: str, site: str, device: str, driver: str) -> str:
        return render_filter(self.response_topic, gateway=gateway, site=site, device=device, driver=driver)


def _overlap(a: str, b: str) -> bool:
    """Some topic matches both filters."""
    x, y = a.split("/"), b.split("/")
    for i in range(min(len(x), len(y))):
        if x[i] == "#" or y[i] == "#":
            return True
        if x[i] != "+" and y[i] != "+" and x[i] != y[i]:
            return False
    longer = x if len(x) > len(y) else y
    # "a/#" also matches its parent "a".
    return len(x) == len(y) or (len(longer) == min(len(x), len(y)) + 1 and longer[-1] == "#")


def parse_commands(table: Table | None, device_names: Collection[str]) -> CommandsConfig | None:
    """``[commands]``, or None when the section is absent (no commands are taken)."""
    if table is None:
        return None
    topic = table.string("topic", DEFAULT_COMMAND_TOPIC)
    why = command_template_problem(topic)
    if why is not None:
        table.problem("topic", why, topic)
        topic = DEFAULT_COMMAND_TOPIC
    response_topic = table.string("response_topic", DEFAULT_RESPONSE_TOPIC)
    why = command_template_problem(response_topic)
    if why is not None and why.startswith("needs {device}"):
        why = None  # one reply space for all devices (e.g. the requesters' "replies/#") is fine
    if why is None:
        sample = {"gateway": "g", "site": "s", "device": "d", "driver": "x"}
        commands, responses = render_filter(topic, **sample), render_filter(response_topic, **sample)
        if _overlap(commands, responses):
            why = "overlaps the command topic: the gateway would take its own responses as commands"
    if why is not None:
        table.problem("response_topic", why, response_topic)
        response_topic = DEFAULT_RESPONSE_TOPIC
    devices = table.strings("devices")
    for name in devices:
        if name not in device_names:
            table.problem("devices", f"no device {name!r} in [devices]", name)
    filters = len(devices) if devices else len(device_names)
    if filters > MAX_SUBSCRIPTIONS:
        which = "names" if devices else "is not set, so every device takes commands:"
        table.problem(
            "devices",
            f"{which} {filters} devices, one command filter each: more than Event Grid's "
            f"{MAX_SUBSCRIPTIONS} subscriptions per session (name at most {MAX_SUBSCRIPTIONS})",
        )
    result = CommandsConfig(
        topic=topic,
        response_topic=response_topic,
        devices=devices,
        timeout=table.number("timeout", 5.0, positive=True, maximum=300),
        queue=table.integer("queue", 8, minimum=1, maximum=1000),
        dedup=table.integer("dedup", 1024, minimum=1, maximum=1_000_000),
        # Event Grid's packet limit is 512 KiB; a command is a few dozen bytes.
        max_payload=table.integer("max_payload", 4096, minimum=64, maximum=524288),
    )
    table.finish()
    return result
