"""``fieldgate serial watch``: look at what a serial sensor sends, for commissioning it in the field.

Without a device it shows the raw frames (text lines, or hex chunks with ``--raw``); with ``--device NAME
--config FILE`` it runs that device's own framing, parser and (for polled devices) commands, and shows each
frame followed by the points parsed from it, so a new config can be checked against the real sensor.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import tomli

from drivers.serial import plugin
from drivers.serial.config import Device, LineFraming, Port, RawFraming
from drivers.serial.driver import SerialDriver
from drivers.serial.framing import Frame
from gateway.model import Quality, Reading
from gateway.schema import Problems, SerialLine, Table


def register(subparsers: Any) -> None:
    """Add ``serial`` and its subcommands to the gateway CLI's subparsers."""
    serial = subparsers.add_parser(
        "serial",
        help="tools for serial sensors (commissioning)",
        description="Tools for commissioning serial sensors.",
    )
    commands = serial.add_subparsers(dest="serial_command", metavar="COMMAND", required=True)
    watch = commands.add_parser(
        "watch",
        help="show frames as they arrive and, with --device, the points parsed from them",
        description=(
            "Open a serial port and print every frame as it arrives: text lines as text, binary frames as"
            " hex. With --device NAME --config FILE, use that device's framing, parser and commands from the"
            " gateway config and print the parsed points under each frame. Stop with Ctrl-C."
        ),
    )
    watch.add_argument("--port", help="serial port, e.g. /dev/serial/by-id/usb-... (default: the device's)")
    watch.add_argument("--baud", type=int, help="baud rate (default: the device's, or 9600)")
    watch.add_argument(
        "--device", metavar="NAME", help="a device of --config whose framing and parser to use"
    )
    watch.add_argument("--config", metavar="FILE", type=Path, help="the gateway config file holding --device")
    watch.add_argument(
        "--terminator",
        default="\\n",
        help="line terminator without --device, escapes allowed (default: \\n, which also ends \\r\\n)",
    )
    watch.add_argument("--raw", action="store_true", help="without --device: show each chunk read as hex")
    watch.add_argument("--count", type=int, metavar="N", help="stop after N frames")
    watch.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    watch.set_defaults(handler=watch_command)


def watch_command(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    if (args.device is None) != (args.config is None):
        print("fieldgate serial watch: --device and --config go together", file=err)
        return 2
    if args.device is None and args.port is None:
        print("fieldgate serial watch: give --port, or --device NAME --config FILE", file=err)
        return 2
    if args.device is not None:
        spec = load_device(args.config, args.device, err)
        if spec is None:
            return 2
        line = spec.port.line
        if args.port is not None:
            line = dataclasses.replace(line, port=args.port)
        if args.baud is not None:
            line = dataclasses.replace(line, baudrate=args.baud)
        spec = dataclasses.replace(spec, port=dataclasses.replace(spec.port, line=line))
    else:
        try:
            terminator = codecs.escape_decode(args.terminator.encode())[0]
        except ValueError:
            terminator = b""
        if not terminator:
            print(
                f"fieldgate serial watch: --terminator {args.terminator!r} is not a valid terminator",
                file=err,
            )
            return 2
        spec = Device(
            name="watch",
            port=Port(SerialLine(args.port, args.baud or 9600)),
            mode="stream",
            framing=RawFraming() if args.raw else LineFraming(terminator, max_length=4096),
            parser=None,
        )
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=err)
    try:
        return asyncio.run(watch(spec, out, count=args.count, seconds=args.seconds))
    except KeyboardInterrupt:
        return 0


def load_device(path: Path, name: str, err: TextIO) -> Device | None:
    """The one device ``name`` of a gateway config file, or None (problems printed to ``err``)."""
    try:
        with path.open("rb") as f:
            data = tomli.load(f)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=err)
        return None
    except tomli.TOMLDecodeError as exc:
        print(f"{path}: not valid TOML: {exc}", file=err)
        return None
    problems = Problems(str(path))
    devices = data.get("devices", {})
    device = devices.get(name) if isinstance(devices, dict) else None
    if not isinstance(device, dict):
        print(f"{path}: no [devices.{name}] table", file=err)
        return None
    if device.get("driver") != "serial":
        print(f"{path}: devices.{name} is not a serial device (driver = {device.get('driver')!r})", file=err)
        return None
    table = Table(device, f"devices.{name}", problems)
    table.consume("driver", "topic", "batch")
    drivers = data.get("drivers", {})
    section_data = drivers.get("serial") if isinstance(drivers, dict) else None
    section = Table(section_data, "drivers.serial", problems) if isinstance(section_data, dict) else None
    # The gateway's full loader would also check [gateway], [uplink], ...; for one device, the serial
    # plugin's own parse gives the same errors for its tables.
    config = plugin.parse(section, [(name, table)])
    if problems.lines:
        for line in problems.lines:
            print(line, file=err)
        return None
    return config.specs[0]


def show_bytes(data: bytes, text: bool) -> str:
    if not text:
        return data.hex(" ")
    return "".join(chr(b) if 32 <= b < 127 and b != 0x5C else f"\\x{b:02x}" for b in data)


def show_reading(reading: Reading) -> str:
    if reading.quality is Quality.BAD:
        return f"  {reading.point} = BAD ({reading.reason})"
    unit = f" {reading.unit}" if reading.unit else ""
    return f"  {reading.point} = {reading.value!r}{unit}"


async def watch(spec: Device, out: TextIO, *, count: int | None = None, seconds: float | None = None) -> int:
    """Run the device's driver, printing frames and readings to ``out`` until stopped."""
    framings = [c.framing for c in spec.commands] if spec.mode == "polled" else [spec.framing]
    text = all(isinstance(f, LineFraming) for f in framings)
    seen = 0
    enough = asyncio.Event()

    def on_frame(frame: Frame) -> None:
        nonlocal seen
        seen += 1
        stamp = time.strftime("%H:%M:%S", time.localtime())
        print(f"{stamp} {show_bytes(frame.raw, text)}", file=out, flush=True)
        if count is not None and seen >= count:
            enough.set()

    def on_readings(readings: Sequence[Reading]) -> None:
        for reading in readings:
            print(show_reading(reading), file=out, flush=True)

    driver = SerialDriver(spec, frame_observer=on_frame)
    task = asyncio.create_task(driver.run(on_readings), name=f"{driver.name}.watch")
    try:
        waiter = asyncio.create_task(enough.wait(), name="serial.watch.count")
        await asyncio.wait({task, waiter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()
        # The frame that reached --count has had its points printed: a read callback runs to its end
        # before the waiting task wakes.
        counters = " ".join(f"{k}={v}" for k, v in driver.counters.items())
        print(f"counters: {counters}", file=out, flush=True)
    if not task.cancelled() and task.exception() is not None:
        print(f"fieldgate serial watch: {task.exception()}", file=out, flush=True)
        return 1
    return 0
