"""``fieldgate probe --config FILE``: how the configured broker actually behaves, as a table.

The MQTT work is in :mod:`gateway.uplink.probe`; this module reads the command line and the config,
picks the probe topic and prints the table. Exit 0 when the probe ran (whatever the broker answered),
1 when it could not (no config, no token, no connection).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from gateway.config import load_config
from gateway.errors import ConfigError, ExitCode, FieldgateError

log = logging.getLogger("fieldgate.cli")


def register(sub: Any) -> None:
    probe = sub.add_parser(
        "probe",
        help="report how the configured broker behaves (limits, refusals, throttling) as a table",
        description="Connect with the configured identity and report, as a table: the CONNACK limits, the "
        "answer to a refused re-authentication, what happens at token expiry without a refresh, and the "
        "answer to a short over-rate burst of QoS 1 publishes on one probe topic. Uses the client id "
        "<uplink.client_id>-probe, so a running gateway keeps its session.",
    )
    probe.add_argument("--config", "-c", required=True, help="the TOML config file")
    probe.add_argument(
        "--topic",
        help="topic of the burst (the token must grant it); default: the telemetry topic rendered for "
        "device 'fieldgate-probe', point 'probe'",
    )
    probe.add_argument(
        "--rate",
        type=float,
        metavar="PER_SECOND",
        help="publishes per second of the burst; default: twice [uplink.limits] messages_per_second, or "
        "twice Event Grid's 1000/s",
    )
    probe.add_argument(
        "--burst-seconds",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long the burst lasts at most (default 2)",
    )
    probe.add_argument(
        "--expiry-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="test token expiry when the token expires within this many seconds (default 0: not tested)",
    )
    probe.set_defaults(handler=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    from gateway.auth import make_token_source
    from gateway.config.uplink import UplinkConfig
    from gateway.service.logs import setup_logging
    from gateway.uplink.probe import (
        BURST_FACTOR,
        PROBE_DEVICE,
        ProbeReport,
        ProbeSettings,
        configured_rate,
        run_probe,
        tls_context,
    )

    for name in ("burst_seconds", "expiry_wait"):
        value = getattr(args, name)
        if value < 0 or (name == "burst_seconds" and not 0 < value <= 60):
            print(f"fieldgate probe: --{name.replace('_', '-')} {value:g} is out of range", file=sys.stderr)
            return ExitCode.USAGE
    if args.rate is not None and args.rate <= 0:
        print("fieldgate probe: --rate must be positive", file=sys.stderr)
        return ExitCode.USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return ExitCode.FAILURE
    uplink = config.uplink
    if not isinstance(uplink, UplinkConfig):
        print(f"{config.source}: no [uplink]: there is no broker to probe", file=sys.stderr)
        return ExitCode.FAILURE
    topic = args.topic or config.telemetry.topic.render(
        {
            "gateway": config.gateway.id,
            "site": config.gateway.site,
            "device": PROBE_DEVICE,
            "driver": "probe",
            "point": "probe",
        }
    )
    settings = ProbeSettings(
        topic=topic,
        client_id=f"{uplink.client_id}-probe",
        rate=args.rate if args.rate is not None else BURST_FACTOR * configured_rate(uplink),
        burst_seconds=args.burst_seconds,
        expiry_wait=args.expiry_wait,
    )
    setup_logging("warning", "text")

    async def probe() -> ProbeReport:
        return await run_probe(uplink, make_token_source(uplink.token), settings, await tls_context(uplink))

    try:
        report = asyncio.run(probe())
    except FieldgateError as exc:
        print(f"fieldgate probe: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    print(report.table())
    if not report.ran:
        print("fieldgate probe: could not connect (see the connect row)", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.OK
