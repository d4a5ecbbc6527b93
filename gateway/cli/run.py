"""``fieldgate run --config FILE``: the gateway until SIGTERM (or ``--duration``), or a dry run."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
from typing import TYPE_CHECKING

from gateway.config import Config, load_config
from gateway.errors import ConfigError, ExitCode, FieldgateError
from gateway.model import MessageSink
from gateway.pipeline.pump import DryRunSink
from gateway.service.logs import setup_logging

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("fieldgate.cli")


def make_sink(config: Config, *, dry_run: bool) -> MessageSink:
    if dry_run:
        return DryRunSink()
    if config.uplink is None:
        raise ConfigError([f"{config.source}: [uplink]: is required to run (or use --dry-run)"])
    from gateway.uplink.factory import make_uplink

    return make_uplink(config)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        setup_logging("info", args.log_format or "text")
        log.error("%s", exc)
        return ExitCode.CONFIG
    setup_logging(args.log_level or config.gateway.log_level, args.log_format or config.gateway.log_format)
    try:
        return asyncio.run(_run(config, dry_run=args.dry_run, duration=args.duration))
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.CONFIG
    except FieldgateError as exc:
        log.error("%s", exc)
        return ExitCode.FAILURE


async def _collect_garbage_once_running(gateway: Gateway) -> None:
    await gateway.wait_ready()
    gc.enable()


async def _run(config: Config, *, dry_run: bool, duration: float | None) -> int:
    from gateway.app import Gateway
    from gateway.service.runner import run_service

    store = None
    if dry_run:
        from gateway.store.memory import MemoryStore

        # A dry run must not touch (or replay) the state directory's queue.
        store = MemoryStore(config.store.max_messages, config.store.overflow)
    gateway = Gateway(config, make_sink(config, dry_run=dry_run), store)
    timer = None
    if duration is not None:
        timer = asyncio.get_running_loop().call_later(duration, gateway.stop)
    # main() keeps the garbage collector off while the gateway starts: on again once it runs.
    collector = asyncio.create_task(_collect_garbage_once_running(gateway), name="cli.gc")
    try:
        await run_service(gateway)
    finally:
        collector.cancel()
        if timer is not None:
            timer.cancel()
    log.info("%s", gateway.stats_line())
    return 0
