"""Commissioning tools: ``fieldgate modbus read`` (one-off read shown as every type and order) and
``fieldgate modbus scan`` (which unit ids answer on a bus or behind a TCP gateway)."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from drivers.modbus.codec import DataType, Order, decode_raw
from drivers.modbus.config import RegisterTable, SerialBus, TcpEndpoint, parse_address
from drivers.modbus.link import Channel, Op, quiet_pymodbus
from gateway.errors import DeviceProtocolError, DeviceRefused, DeviceUnavailable, DriverError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``modbus read`` and ``modbus scan`` to the ``fieldgate`` command line."""
    modbus = subparsers.add_parser("modbus", help="Modbus commissioning tools (read, scan)")
    sub = modbus.add_subparsers(dest="modbus_command", required=True)

    read = sub.add_parser(
        "read",
        help="read a range once and show it decoded as every type and byte/word order",
        description="Read registers or bits once from a Modbus device and print them decoded as every "
        "type and byte/word order (like mbpoll). ADDRESS is 0-based, or in register notation "
        '("40001" = holding register 0, "30001" = input register 0).',
    )
    _target_options(read)
    read.add_argument("address", help='0-based address, or register notation such as "40001"')
    read.add_argument("-c", "--count", type=int, default=10, help="registers or bits to read (default 10)")
    read.add_argument(
        "-t",
        "--table",
        choices=[t.value for t in RegisterTable],
        help="table to read (default holding; implied by register notation)",
    )
    read.add_argument("-u", "--unit", type=int, default=1, help="unit id (slave address), default 1")
    read.set_defaults(handler=run_read)

    scan = sub.add_parser(
        "scan",
        help="list the unit ids that answer",
        description="Probe unit ids one after the other by reading one register and list those that answer "
        "(an exception response counts: the device is there but refuses that address).",
    )
    _target_options(scan)
    scan.add_argument(
        "--units", default="1-247", help="unit ids to probe, e.g. 1-32 or 1,2,10-12 (default 1-247)"
    )
    scan.add_argument("--probe", default="40001", help='register to read, default "40001" (holding 0)')
    scan.set_defaults(handler=run_scan)


def _target_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP server (or serial device server) address")
    where.add_argument("--serial", metavar="PORT", help="serial port, e.g. /dev/serial/by-id/usb-FTDI-...")
    p.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    p.add_argument(
        "--framer", choices=("socket", "rtu", "ascii"), help="framing (default: socket on TCP, rtu on serial)"
    )
    p.add_argument("-b", "--baudrate", type=int, default=9600, help="serial baud rate (default 9600)")
    p.add_argument("--parity", choices=("N", "E", "O"), default="N", help="serial parity (default N)")
    p.add_argument("--bytesize", type=int, choices=(7, 8), default=8, help="serial data bits (default 8)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="serial stop bits (default 1)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each answer (default 1.0)")


def _link(args: argparse.Namespace) -> SerialBus | TcpEndpoint:
    if args.serial:
        framer = args.framer or "rtu"
        if framer == "socket":
            raise ValueError("--framer socket is for TCP; a serial port uses rtu or ascii")
        return SerialBus(
            name="cli",
            port=args.serial,
            baudrate=args.baudrate,
            parity=args.parity,
            bytesize=args.bytesize,
            stopbits=args.stopbits,
            framer=framer,
            timeout=args.timeout,
            backoff_max=1.0,
        )
    return TcpEndpoint(host=args.host, port=args.port, framer=args.framer or "socket", timeout=args.timeout)


def _parse_target(text: str, table_opt: str | None) -> tuple[RegisterTable, int]:
    """With ``--table`` the address is always 0-based (decimal or 0x hex); without it a 5/6-digit
    address is register notation ("40001") and anything else a 0-based holding register."""
    raw: object = text
    if table_opt is not None or not re.fullmatch(r"\d{5,6}", text):
        try:
            raw = int(text[2:], 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise ValueError(f"address {text!r} is not a number") from None
    parsed = parse_address(raw)
    if isinstance(parsed, str):
        raise ValueError(f"address {text!r}: {parsed}")
    table, address = parsed
    if table is not None and table_opt is not None and table.value != table_opt:
        raise ValueError(f"address {text!r} is in the {table.value} table, not {table_opt}")
    return table or RegisterTable(table_opt or "holding"), address


def _units(text: str) -> list[int]:
    units: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        lo, hi = int(first), int(last) if dash else int(first)
        if not 0 <= lo <= hi <= 255:
            raise ValueError(f"unit ids {part!r} must be within 0..255")
        units.extend(range(lo, hi + 1))
    return units


# -- read --------------------------------------------------------------------------------------------


def run_read(args: argparse.Namespace) -> int:
    try:
        link = _link(args)
        table, address = _parse_target(args.address, args.table)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limit = 2000 if table.is_bits else 125
    if not 1 <= args.count <= limit or address + args.count > 65536:
        print(f"error: --count must be 1..{limit} and stay within address 65535", file=sys.stderr)
        return 2
    return asyncio.run(
        _read(
            link,
            table=table,
            address=address,
            count=args.count,
            unit=args.unit,
            wait=args.timeout,
            out=sys.stdout,
        )
    )


async def _read(
    link: SerialBus | TcpEndpoint,
    *,
    table: RegisterTable,
    address: int,
    count: int,
    unit: int,
    wait: float,
    out: TextIO,
) -> int:
    quiet_pymodbus()
    channel = Channel(link, link.key)
    where = link.port if isinstance(link, SerialBus) else f"{link.host}:{link.port}"
    try:
        values = await channel.transact("cli", unit, Op(table.read_function, address, count), wait)
    except DriverError as exc:
        print(f"error: {where}: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    print(
        f"{where} unit {unit}: {table.value} {address}..{address + count - 1} (fc{table.read_function})",
        file=out,
    )
    if table.is_bits:
        print(format_bits(address, [bool(v) for v in values]), file=out)
    else:
        print(format_registers(address, [int(v) for v in values]), file=out)
    return 0


def format_bits(address: int, bits: Sequence[bool]) -> str:
    lines = []
    for i in range(0, len(bits), 16):
        row = " ".join("1" if b else "0" for b in bits[i : i + 16])
        lines.append(f"{address + i:>6}: {row}")
    return "\n".join(lines)


def _num(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.7g}"
    return str(value)


def format_registers(address: int, regs: Sequence[int]) -> str:
    """The registers as 16-bit values, then every 32/64-bit type in every order, then as text."""
    lines = [f"{'addr':>6}  {'hex':>6}  {'uint16':>6}  {'int16':>6}  {'BADC':>6}  bits 15..0"]
    for i, r in enumerate(regs):
        signed = decode_raw([r], DataType.INT16, Order.ABCD)
        swapped = decode_raw([r], DataType.UINT16, Order.BADC)
        lines.append(f"{address + i:>6}  0x{r:04X}  {r:>6}  {signed:>6}  {swapped:>6}  {r:016b}")
    for width, types in (
        (2, (DataType.INT32, DataType.UINT32, DataType.FLOAT32)),
        (4, (DataType.INT64, DataType.UINT64, DataType.FLOAT64)),
    ):
        if len(regs) < width:
            continue
        lines.append("")
        lines.append(f"{16 * width}-bit values starting at each address:")
        lines.append(f"{'addr':>6}  order  " + "  ".join(f"{t.value:>22}" for t in types))
        for i in range(len(regs) - width + 1):
            for order in Order:
                cells = [_num(decode_raw(regs[i : i + width], t, order)) for t in types]
                lines.append(f"{address + i:>6}  {order.value}   " + "  ".join(f"{c:>22}" for c in cells))
    lines.append("")
    for order in (Order.ABCD, Order.BADC):
        raw = bytes(
            b for r in regs for b in ((r >> 8, r & 0xFF) if order is Order.ABCD else (r & 0xFF, r >> 8))
        )
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in raw)
        lines.append(f"string {order.value}: {text!r}")
    return "\n".join(lines)


# -- scan --------------------------------------------------------------------------------------------


def run_scan(args: argparse.Namespace) -> int:
    try:
        link = _link(args)
        units = _units(args.units)
        table, address = _parse_target(args.probe, None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(
        _scan(link, units=units, table=table, address=address, wait=args.timeout, out=sys.stdout)
    )


async def _scan(
    link: SerialBus | TcpEndpoint,
    *,
    units: Sequence[int],
    table: RegisterTable,
    address: int,
    wait: float,
    out: TextIO,
) -> int:
    quiet_pymodbus()
    channel = Channel(link, link.key)
    where = link.port if isinstance(link, SerialBus) else f"{link.host}:{link.port}"
    print(f"scanning {where}: unit ids {units[0]}..{units[-1]}, reading {table.value} {address}", file=out)
    found = 0
    try:
        for unit in units:
            try:
                await channel.transact("scan", unit, Op(table.read_function, address, 1), wait)
            except DeviceRefused as exc:
                found += 1
                print(f"unit {unit:>3}: answers ({exc.detail.split(': ', 1)[-1]})", file=out)
            except DeviceUnavailable as exc:
                print(f"error: {where}: {exc.detail}", file=sys.stderr)
                return 1
            except DeviceProtocolError as exc:
                # Something is there, but its answer was garbled (wiring, baud rate, parity?).
                found += 1
                print(f"unit {unit:>3}: answers with a bad frame ({exc.detail.split(': ', 1)[-1]})", file=out)
            except DriverError:
                continue
            else:
                found += 1
                print(f"unit {unit:>3}: answers", file=out)
    finally:
        channel.close()
    print(f"{found} unit(s) answered", file=out)
    return 0 if found else 1
