"""The ``fieldgate`` command: run, check-config, plus subcommands installed packages add."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import TextIO

from gateway import __version__
from gateway.config import Config, load_config
from gateway.errors import ConfigError, FieldgateError
from gateway.logs import setup_logging
from gateway.model import COMMANDS_ENTRY_POINT_GROUP
from gateway.pipeline import DryRunSink, MessageSink

log = logging.getLogger("fieldgate.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldgate",
        description="Edge gateway: serial and Modbus sensors to one JWT-authenticated MQTT v5 uplink.",
    )
    parser.add_argument("--version", action="version", version=f"fieldgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the gateway", description="Run the gateway until SIGTERM or Ctrl-C."
    )
    run.add_argument("--config", "-c", required=True, help="the TOML config file")
    run.add_argument(
        "--log-format",
        choices=("text", "json", "journal"),
        help="override [gateway] log_format (journal: syslog priority prefixes; automatic under systemd)",
    )
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override log_level")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the messages that would be published (topic and payload) instead of connecting",
    )
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file and summarise it",
        description="Validate a config file: exit 0 with a summary of devices, points and topics, or "
        "non-zero listing every problem (file, key, value, why).",
    )
    check.add_argument("file", help="the TOML config file")
    check.add_argument(
        "--offline",
        action="store_true",
        help="skip checks that only hold on the target host (files, ports, environment variables exist)",
    )
    check.set_defaults(handler=cmd_check_config)

    from gateway.status import register as register_status

    register_status(sub)

    token = sub.add_parser(
        "token",
        help="fetch a token as run would, describe it and check the device topics it grants",
        description="Fetch a token from the configured source, show its header, claims and expiry (never "
        "the token itself) and, with [uplink.permissions], whether each device topic is granted. "
        "Exit 3 when a device, birth or will topic is not granted.",
    )
    token.add_argument("--config", "-c", required=True, help="the TOML config file")
    token.set_defaults(handler=cmd_token)

    for ep in sorted(entry_points(group=COMMANDS_ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            print(f"fieldgate: cannot load commands of {ep.name!r}: {exc}", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    result: int = handler(args)
    return result


# -- check-config -------------------------------------------------------------------------------------
def summarise(config: Config, out: TextIO) -> None:
    g = config.gateway
    out.write(f"config {config.source}: OK\n")
    out.write(f"gateway {g.id} at site {g.site}\n")
    from gateway.router import Router

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
        from gateway.permission_check import command_subscriptions

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
    """check-config's permission part: 0, or 3 when the token does not grant a device topic."""
    from gateway.auth import make_token_source
    from gateway.config.uplink import UplinkConfig
    from gateway.errors import TokenError
    from gateway.permission_check import (
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
    return 3 if denied else 0


# -- token --------------------------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import Token, token_report
    from gateway.config.uplink import UplinkConfig
    from gateway.permission_check import command_subscriptions, device_topics, report_lines

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    uplink = config.uplink
    if not isinstance(uplink, UplinkConfig):
        print(f"{config.source}: no [uplink]: there is no token to fetch", file=sys.stderr)
        return 1
    denied = 0

    def permissions(token: Token) -> list[str]:
        nonlocal denied
        lines, denied = report_lines(uplink, token, device_topics(config), command_subscriptions(config))
        return lines

    setup_logging("warning", "text")
    try:
        print(asyncio.run(token_report(uplink, extra=permissions)))
    except FieldgateError as exc:
        print(f"fieldgate token: {exc}", file=sys.stderr)
        return 1
    return 3 if denied else 0


# -- run ----------------------------------------------------------------------------------------------
def make_sink(config: Config, *, dry_run: bool) -> MessageSink:
    if dry_run:
        return DryRunSink()
    if config.uplink is None:
        raise ConfigError([f"{config.source}: [uplink]: is required to run (or use --dry-run)"])
    from gateway.uplink.factory import make_uplink

    return make_uplink(config)


#: sysexits' EX_CONFIG: ``run`` refused its config. The unit's ``RestartPreventExitStatus=78`` keeps
#: systemd from restarting it in a loop until the file is fixed.
EXIT_CONFIG = 78


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        setup_logging("info", args.log_format or "text")
        log.error("%s", exc)
        return EXIT_CONFIG
    setup_logging(args.log_level or config.gateway.log_level, args.log_format or config.gateway.log_format)
    try:
        return asyncio.run(_run(config, dry_run=args.dry_run, duration=args.duration))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except FieldgateError as exc:
        log.error("%s", exc)
        return 1


async def _run(config: Config, *, dry_run: bool, duration: float | None) -> int:
    from gateway.app import Gateway
    from gateway.service import run_service

    store = None
    if dry_run:
        from gateway.store import MemoryStore

        # A dry run must not touch (or replay) the state directory's queue.
        store = MemoryStore(config.store.max_messages, config.store.overflow)
    gateway = Gateway(config, make_sink(config, dry_run=dry_run), store)
    timer = None
    if duration is not None:
        timer = asyncio.get_running_loop().call_later(duration, gateway.stop)
    try:
        await run_service(gateway)
    finally:
        if timer is not None:
            timer.cancel()
    log.info("%s", gateway.stats_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
