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
    out.write(f"payload: {payload_summary(config)}\n")
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


def payload_summary(config: Config) -> str:
    t = config.telemetry
    if t.format != "compact":
        return f"{t.format} JSON, QoS {t.qos}"
    parts = [f"compact JSON, QoS {t.qos}"]
    if t.point_lists:
        parts.append(f"point lists (each sent whole every {t.point_list_period:g} s)")
    if t.gateway_batch > 0 and t.gateway_topic is not None:
        topic = t.gateway_topic.render({"gateway": config.gateway.id, "site": config.gateway.site})
        parts.append(
            f"gateway batch every {t.gateway_batch:g} s on {topic} (<= {t.gateway_batch_bytes} bytes)"
        )
    return ", ".join(parts)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file, offline=args.offline)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    summarise(config, sys.stdout)
    warn_shared_signer_key(config, sys.stdout)
    if not args.offline and check_token_limits(config, sys.stdout) != ExitCode.OK:
        return ExitCode.FAILURE
    return check_permissions(config, sys.stdout, offline=args.offline)


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host in ("::1", "[::1]")


def warn_shared_signer_key(config: Config, out: TextIO) -> None:
    """One warning when a ``signer`` config talks to a broker beyond this host (a real namespace)."""
    from gateway.config.uplink import SignerTokenConfig

    uplink = config.uplink
    if uplink is None or not isinstance(uplink.token, SignerTokenConfig) or _loopback(uplink.host):
        return
    out.write(
        f'warning: [uplink.token] source = "signer" signs tokens with the issuer key '
        f"{uplink.token.key_file} for {uplink.host}: whoever copies that key from this gateway can mint "
        "tokens for any gateway and any site the namespace trusts the issuer for. Fine for one gateway "
        'or a lab; for a fleet give each gateway its own identity: source = "oauth2" (its own client '
        'at an issuer, `fieldgate identity new`), "file" (tokens written by an agent) or "azure" '
        "(Entra ID: Azure Arc managed identity or a per-gateway certificate). See gateway/auth/README.md.\n"
    )


def check_token_limits(config: Config, out: TextIO) -> int:
    """A token check-config can get (signer, file) against Event Grid's limits: 0, or 1 and the lines."""
    from gateway.auth import make_token_source
    from gateway.auth.limits import token_limit_lines
    from gateway.config.uplink import UplinkConfig
    from gateway.errors import TokenError
    from gateway.permissions.report import token_available_offline

    uplink = config.uplink
    if not isinstance(uplink, UplinkConfig) or not token_available_offline(uplink):
        return ExitCode.OK
    try:
        token = asyncio.run(make_token_source(uplink.token).get_token())
    except TokenError:
        return ExitCode.OK  # the permission check says why no token came
    lines, problems = token_limit_lines(token)
    if problems:
        out.write("\n".join(lines) + "\n")
        return ExitCode.FAILURE
    return ExitCode.OK


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
