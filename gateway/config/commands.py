"""The ``[commands]`` section: cloud-to-device command topics and the limits that keep commands safe.

::

    [commands]
    topic = "sites/{site}/{gateway}/{device}/commands/#"   # an MQTT topic filter per device
    # devices = ["plc", "scale"]   # default: every device whose driver takes commands
    # timeout = 5.0                # seconds one command may take on the device (bus wait included)
    # queue = 8                    # waiting commands per device; beyond it: refused "busy"
    # dedup = 1024                 # correlation data remembered to execute a redelivery once
    # max_payload = 4096           # bytes; a larger payload is refused "malformed" unread
"""

from __future__ import annotations

import string
from collections.abc import Collection
from dataclasses import dataclass

from gateway.schema import Table

#: Placeholders a command topic may use; ``{device}`` is required (each device gets its own filter).
COMMAND_VARIABLES = ("gateway", "site", "device", "driver")
DEFAULT_COMMAND_TOPIC = "sites/{site}/{gateway}/{device}/commands/#"


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    topic: str = DEFAULT_COMMAND_TOPIC
    #: Devices that take commands; empty: every device whose driver can.
    devices: tuple[str, ...] = ()
    timeout: float = 5.0
    queue: int = 8
    dedup: int = 1024
    max_payload: int = 4096

    def command_filter(self, *, gateway: str, site: str, device: str, driver: str) -> str:
        return render_filter(self.topic, gateway=gateway, site=site, device=device, driver=driver)


def render_filter(template: str, **values: str) -> str:
    """The topic filter of one device: placeholders filled, wildcards kept."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)


def template_problem(template: str) -> str | None:
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


def parse_commands(table: Table | None, device_names: Collection[str]) -> CommandsConfig | None:
    """``[commands]``, or None when the section is absent (no commands are taken)."""
    if table is None:
        return None
    topic = table.string("topic", DEFAULT_COMMAND_TOPIC)
    why = template_problem(topic)
    if why is not None:
        table.problem("topic", why, topic)
        topic = DEFAULT_COMMAND_TOPIC
    devices = table.strings("devices")
    for name in devices:
        if name not in device_names:
            table.problem("devices", f"no device {name!r} in [devices]", name)
    result = CommandsConfig(
        topic=topic,
        devices=devices,
        timeout=table.number("timeout", 5.0, positive=True, maximum=300),
        queue=table.integer("queue", 8, minimum=1, maximum=1000),
        dedup=table.integer("dedup", 1024, minimum=1, maximum=1_000_000),
        # Event Grid's packet limit is 512 KiB; a command is a few dozen bytes.
        max_payload=table.integer("max_payload", 4096, minimum=64, maximum=524288),
    )
    table.finish()
    return result
