"""The ``fieldgate`` command line: run, check-config, token, identity, status, plus subcommands drivers add.

Only ``gateway/cli/`` and the drivers' ``cli.py`` parse command-line arguments; exit codes are
:class:`gateway.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence

from gateway import __version__

log = logging.getLogger("fieldgate.cli")


#: The core's own commands: running one of them loads no plugin's CLI (and so none of its libraries).
CORE_COMMANDS = ("run", "check-config", "status", "token")


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    # The subcommands' modules are imported here, not with this one: see main().
    from gateway.cli.check_config import cmd_check_config
    from gateway.cli.identity import register as register_identity
    from gateway.cli.probe import register as register_probe
    from gateway.cli.run import cmd_run
    from gateway.cli.status import register as register_status
    from gateway.cli.token import cmd_token

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

    register_status(sub)

    token = sub.add_parser(
        "token",
        help="fetch a token as run would, describe it and check the device topics it grants",
        description="Fetch a token from the configured source, show its header, claims and expiry (never "
        "the token itself) and, with [uplink.permissions], whether each device topic is granted. "
        "Exit 5 when a device, birth or will topic is not granted.",
    )
    token.add_argument("--config", "-c", required=True, help="the TOML config file")
    token.set_defaults(handler=cmd_token)

    register_identity(sub)
    register_probe(sub)

    if plugins:
        _register_plugin_commands(sub)
    return parser


def _register_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from importlib.metadata import entry_points

    from gateway.model import CLI_ENTRY_POINT_GROUP

    for ep in sorted(entry_points(group=CLI_ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            print(f"fieldgate: cannot load commands of {ep.name!r}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    first = next((w for w in words if not w.startswith("-")), None)
    if first == "run":
        # Starting creates tens of thousands of objects (modules, classes, the config's points) that live
        # as long as the process: the cyclic garbage collector, walking them again and again, freed a few
        # hundred and cost 12-15 ms of every start here. It is off until the gateway runs (the run turns
        # it back on then; the finally below when the command ends before that).
        gc.disable()
    try:
        parser = build_parser(plugins=first not in CORE_COMMANDS)
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        result: int = handler(args)
        return result
    finally:
        gc.enable()
