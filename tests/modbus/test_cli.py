"""The commissioning commands a field engineer runs against the demo simulator: read a range, scan a bus."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.modbus.cli import format_registers, register

ROOT = Path(__file__).resolve().parents[2]


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fieldgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """The demo simulator as the demo runs it: a TCP meter on a free port and a 3-slave RS-485 bus."""
    links = tmp_path_factory.mktemp("demo")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/sim/modbus_devices.py"), "--link", str(links), "--tcp-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    deadline = time.monotonic() + 10
    line = ""
    while time.monotonic() < deadline and not line:
        line = proc.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert match, f"simulator did not start: {line!r}"
    yield int(match.group(1)), links / "rs485-1"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_read_shows_a_meter_range_decoded_as_every_type_and_order(
    plant: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = plant
    assert cli("modbus", "read", "--host", "127.0.0.1", "--port", str(port), "30001", "-c", "8") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"127.0.0.1:{port} unit 1: input 0..7 (fc4)\n")
    row = next(line for line in out.splitlines() if re.match(r"\s+0  ABCD ", line))
    volts = float(row.split()[-1])  # the float32 column of the ABCD row at address 0
    assert 225.0 < volts < 235.0
    assert "64-bit values starting at each address:" in out


def test_scan_finds_the_three_slaves_on_the_rs485_bus(
    plant: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, bus = plant
    assert cli("modbus", "scan", "--serial", str(bus), "--units", "1-5", "--timeout", "0.1") == 0
    out = capsys.readouterr().out
    assert re.findall(r"unit\s+(\d+): answers", out) == ["1", "2", "3"]
    assert out.rstrip().endswith("3 unit(s) answered")


def test_read_over_the_rs485_bus_by_tty_path(
    plant: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, bus = plant
    assert (
        cli("modbus", "read", "--serial", str(bus), "--unit", "2", "--table", "holding", "0", "-c", "2") == 0
    )
    assert "unit 2: holding 0..1 (fc3)" in capsys.readouterr().out


def test_errors_are_one_clear_line_and_a_nonzero_exit(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("modbus", "read", "--serial", "/dev/serial/by-id/nothing-here", "0") == 1
    assert "error: /dev/serial/by-id/nothing-here: cannot open serial port" in capsys.readouterr().err
    assert cli("modbus", "read", "--host", "127.0.0.1", "20001") == 2
    assert "register notation starts with 0 (coil)" in capsys.readouterr().err


def test_register_table_layout() -> None:
    text = format_registers(100, [0x4148, 0x0000])
    lines = text.splitlines()
    assert lines[1] == "   100  0x4148   16712   16712   18497  0100000101001000"
    assert any(re.match(r"\s+100  ABCD .* 12.5$", line) for line in lines)
    assert "string ABCD: 'AH..'" in text and "string BADC: 'HA..'" in text


def test_read_coils_prints_sixteen_bits_a_row_and_a_refused_range_is_an_error(
    plant: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = plant
    assert cli("modbus", "read", "--host", "127.0.0.1", "--port", str(port), "00001", "-c", "16") == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"127.0.0.1:{port} unit 1: coil 0..15 (fc1)", "     0: " + " ".join("0" * 16)]
    # The meter has 16 coils: asking for 20 is refused, and said so in one line.
    assert cli("modbus", "read", "--host", "127.0.0.1", "--port", str(port), "00001", "-c", "20") == 1
    assert capsys.readouterr().err == (
        f"error: 127.0.0.1:{port}: unit 1, fc1 (read coils) address 0 count 20: "
        "exception 2 (illegal data address)\n"
    )
