"""``fieldgate status``: the running service's state from the status file it writes."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import tomli

from gateway.config.model import DEFAULT_STATE_DIR
from gateway.errors import ExitCode


def _state_dir(args: argparse.Namespace) -> Path | None:
    if args.state_dir:
        return Path(args.state_dir)
    if args.config:
        # Only [gateway] state_dir is needed: no full validation, which would need every driver the
        # service uses to be importable here.
        source = Path(args.config)
        try:
            data = tomli.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomli.TOMLDecodeError) as exc:
            print(f"fieldgate status: cannot read {source}: {exc}", file=sys.stderr)
            return None
        gateway = data.get("gateway")
        state_dir = gateway.get("state_dir") if isinstance(gateway, dict) else None
        if isinstance(state_dir, str) and state_dir:
            return source.resolve().parent / state_dir
        return DEFAULT_STATE_DIR
    # systemd sets STATE_DIRECTORY for the service; an operator's shell usually has not.
    return Path(os.environ.get("STATE_DIRECTORY", str(DEFAULT_STATE_DIR)).split(":")[0])


def cmd_status(args: argparse.Namespace) -> int:
    # Imported here: `fieldgate run` builds this command's parser too and need not load the reader.
    from gateway.service.snapshot import STATUS_FILE, format_status, read_status_file

    state_dir = _state_dir(args)
    if state_dir is None:
        return ExitCode.FAILURE
    path = state_dir / STATUS_FILE
    try:
        snap = read_status_file(path)
    except FileNotFoundError:
        print(f"fieldgate status: no {path}: no service ran with this state directory", file=sys.stderr)
        return ExitCode.NO_STATUS_FILE
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"fieldgate status: cannot read {path}: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    now = time.time()
    if args.json:
        sys.stdout.write(snap.to_json() + "\n")
    else:
        format_status(snap, now, sys.stdout)
    if snap.not_running_because(now) is not None:
        return ExitCode.NOT_RUNNING
    return ExitCode.FAILURE if snap.stuck else ExitCode.OK


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    status = sub.add_parser(
        "status",
        help="show the running service's state",
        description="Show the running service's state from the status file it writes into its state "
        "directory: uplink, token, pipeline, and each device's last reading and error. Exit 0 when "
        "running, 1 when its watchdog sees a stuck part, 3 when not running (stale or stopped), "
        "4 when there is no status file.",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", help="the service's config file (its [gateway] state_dir)")
    where.add_argument("--state-dir", help=f"the state directory (default {DEFAULT_STATE_DIR})")
    status.add_argument("--json", action="store_true", help="print the status file's JSON")
    status.set_defaults(handler=cmd_status)
