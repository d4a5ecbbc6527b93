"""``fieldgate token --config FILE``: fetch a token as ``run`` would, describe it, check its grants."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gateway.config import load_config
from gateway.errors import ConfigError, ExitCode, FieldgateError
from gateway.service.logs import setup_logging

log = logging.getLogger("fieldgate.cli")


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth import Token, identity_model, token_report
    from gateway.auth.limits import token_limit_lines
    from gateway.config.uplink import UplinkConfig
    from gateway.permissions.report import command_subscriptions, device_topics, report_lines

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
    over_limits = 0

    def permissions(token: Token) -> list[str]:
        nonlocal denied, over_limits
        limit_lines, over_limits = token_limit_lines(token)
        lines, denied = report_lines(uplink, token, device_topics(config), command_subscriptions(config))
        return limit_lines + lines

    setup_logging("warning", "text")
    try:
        print(asyncio.run(token_report(uplink, extra=permissions)))
    except FieldgateError as exc:
        print(f"identity:  {identity_model(uplink.token)}")
        print(f"fieldgate token: {exc}", file=sys.stderr)
        return 1
    if over_limits:
        return ExitCode.FAILURE
    return ExitCode.NOT_GRANTED if denied else ExitCode.OK
