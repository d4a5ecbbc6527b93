"""``fieldgate serial watch`` on a pty: a field engineer looks at a sensor's frames and parsed points."""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.serial.cli import register
from tests.support.serial import Pty

WEATHER = """
[gateway]
id = "gw-test"

[devices.weather]
driver = "serial"
port = "{path}"
baudrate = 19200
framing = {{ kind = "line" }}
parser = {{ kind = "csv", columns = ["station", "temperature", "humidity"] }}
points = [
  {{ name = "temperature", field = "temperature", unit = "degC" }},
  {{ name = "humidity", field = "humidity", unit = "%" }},
]
"""


def run_watch(argv: list[str], sensor: Callable[[], None]) -> int:
    """Run the command in a thread while ``sensor`` keeps sending, as a live sensor does, until it ends."""
    parser = argparse.ArgumentParser(prog="fieldgate")
    register(parser.add_subparsers())
    args = parser.parse_args(["serial", "watch", *argv])
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(args.handler(args)), name="watch")
    thread.start()
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        sensor()
        thread.join(0.05)
    assert not thread.is_alive(), "watch did not stop by itself"
    return result[0]


def test_watch_a_port_shows_the_lines_it_receives(capsys: pytest.CaptureFixture[str]) -> None:
    pty = Pty()
    try:
        code = run_watch(["--port", pty.path, "--count", "2"], lambda: pty.write(b"WS1,21.5,45\r\n"))
    finally:
        pty.close()
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split(" ", 1)[1] for line in out[:2]] == ["WS1,21.5,45", "WS1,21.5,45"]
    assert out[2].startswith("counters: frames=2 ")


def test_watch_raw_shows_hex(capsys: pytest.CaptureFixture[str]) -> None:
    pty = Pty()
    try:
        code = run_watch(["--port", pty.path, "--raw", "--count", "1"], lambda: pty.write(b"\xaa\x55\x01"))
    finally:
        pty.close()
    assert code == 0
    assert "aa 55 01" in capsys.readouterr().out.splitlines()[0]


def test_watch_a_configured_device_shows_frames_and_parsed_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pty = Pty()
    config = tmp_path / "gateway.toml"
    config.write_text(WEATHER.format(path="/dev/does-not-exist"))
    try:
        code = run_watch(
            ["--config", str(config), "--device", "weather", "--port", pty.path, "--count", "1"],
            lambda: pty.write(b"WS1,21.5,oops\n"),
        )
    finally:
        pty.close()
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].endswith(" WS1,21.5,oops")
    assert out[1:3] == ["  temperature = 21.5 degC", "  humidity = BAD (not a number: 'oops')"]


def test_watch_reports_config_mistakes_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(WEATHER.format(path="/dev/ttyS0").replace("baudrate = 19200", "baudrate = 0"))
    parser = argparse.ArgumentParser(prog="fieldgate")
    register(parser.add_subparsers())
    args = parser.parse_args(["serial", "watch", "--config", str(config), "--device", "weather"])
    assert args.handler(args) == 2
    assert capsys.readouterr().err == f"{config}: devices.weather.baudrate = 0: must be at least 50\n"

    args = parser.parse_args(["serial", "watch", "--config", str(config), "--device", "nope"])
    assert args.handler(args) == 2
    assert capsys.readouterr().err == f"{config}: no [devices.nope] table\n"


SCALE = r"""
[devices.scale]
driver = "serial"
port = "{path}"
mode = "polled"
framing = {{ kind = "line", terminator = "\r\n" }}
parser = {{ kind = "regex", pattern = '(?P<weight>[-0-9.]+) kg' }}

[devices.scale.commands.weight]
send = "W\r\n"
interval = 0.05
timeout = 2.0
points = [{{ name = "weight", field = "weight", unit = "kg" }}]
"""


def test_watch_a_polled_device_sends_its_commands_and_shows_the_replies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pty = Pty()
    config = tmp_path / "gateway.toml"
    config.write_text(SCALE.format(path=pty.path))
    heard = bytearray()

    def scale() -> None:
        heard.extend(pty.read())
        while b"W\r\n" in heard:
            del heard[: heard.index(b"W\r\n") + 3]
            pty.write(b"  12.345 kg\r\n")

    try:
        code = run_watch(["--config", str(config), "--device", "scale", "--count", "2"], scale)
    finally:
        pty.close()
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split(" ", 1)[1] for line in (out[0], out[2])] == ["  12.345 kg", "  12.345 kg"]
    assert out[1] == out[3] == "  weight = 12.345 kg"
