"""``fieldgate check-config FILE``: validate a config, summarise it, check its topics against the token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TextIO

from gateway.config import Config, load_config
from gateway.errors import ConfigError, ExitCode

log = logging.getLogger("fieldgate.cli")


def summarise(config: Config, out: TextIO) -> None:
    g = config.gateway
    out.write(f"config {config.source}: OK\n")
    out.write(f"gateway {g.id} at site {g.site}\n")
    from gateway.pipeline.router import Router

    router = Router(g.id, g.site, config.routes, config.telemetry.qos)
    points = sum(len(r.device.points) for r in config.routes)
    out.write(f"{len(config.routes)} devices, {points} points\n")
    for route in config.routes:
        device = route.device
        out.write(f"  {device.name} ({device.driver}, {len(device.points)} points)\n")
        if route.batch:
            out.write(f"    topic {router.topic(route)} (one message per poll cycle)\n")
        for point in device.points:
            unit = f" [{point.unit}]" if point.unit else ""
            topic = "" if route.batch else f" -> {router.topic(route, point.name)}"
            out.write(f"    - {point.name}{unit}{topic}\n")
    if config.commands is not None:
        from gateway.permissions.report import command_subscriptions

        subscriptions = command_subscriptions(config)
        c = config.commands
        out.write(
            f"commands: {len(subscriptions)} device{'s' if len(subscriptions) != 1 else ''} "
            f"(timeout {c.timeout:g} s, queue {c.queue}, payload <= {c.max_payload} bytes)\n"
        )
        for item in subscriptions:
            out.write(f"  {item.label.removeprefix('commands for device ')}: {item.topic}\n")
    if config.uplink is None:
        out.write("no [uplink]: only `fieldgate run --dry-run` can run this config\n")


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file, offline=args.offline)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    summarise(config, sys.stdout)
    return check_permissions(config, sys.stdout, offline=args.offline)


def check_permissions(config: Config, out: TextIO, *, offline: bool) -> int:
    """check-config's permission part: 0, or 5 (not granted) when the token does not grant a topic."""
    from gateway.auth import make_token_source
    from gateway.config.uplink import UplinkConfig
    from gateway.errors import TokenError
    from gateway.permissions.report import (
        command_subscriptions,
        device_topics,
        report_lines,
        token_available_offline,
    )

    uplink = config.uplink
    if not isinstance(uplink, UplinkConfig) or uplink.permissions is None:
        return 0
    if offline:
        out.write("permissions: not checked with --offline (the token source runs on the gateway)\n")
        return 0
    source = make_token_source(uplink.token)
    if not token_available_offline(uplink):
        out.write(
            f"permissions: not checked: the token comes from {source.description} at run time; "
            f"run `fieldgate token --config {config.source}` on the gateway to check the grants\n"
        )
        return 0
    try:
        token = asyncio.run(source.get_token())
    except TokenError as exc:
        out.write(f"permissions: not checked: no token from {source.description}: {exc}\n")
        return 0
    lines, denied = report_lines(uplink, token, device_topics(config), command_subscriptions(config))
    out.write("\n".join(lines) + "\n")
    return ExitCode.NOT_GRANTED if denied else ExitCode.OK
