#!/usr/bin/env python3
"""Simulated serial sensors for the demo: a GPS, a CSV weather station and a polled scale, each on a pty.

Each sensor owns the master end of a pseudo-terminal; the gateway opens the slave end through a stable
symlink in ``--link DIR`` (``DIR/gps``, ``DIR/weather``, ``DIR/scale``), just as it would open
``/dev/serial/by-id/...``. Runs until SIGTERM or SIGINT, then removes its links.

    python deploy/sim/serial_devices.py --link deploy/.demo

Standard library only, so it runs in any Python 3.11 next to the gateway.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import selectors
import signal
import sys
import time
import tty
from pathlib import Path
from types import FrameType


def nmea(body: str) -> bytes:
    checksum = 0
    for byte in body.encode("ascii"):
        checksum ^= byte
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def nmea_coordinate(value: float, positive: str, negative: str, width: int) -> str:
    hemisphere = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    return f"{degrees:0{width}d}{minutes:07.4f},{hemisphere}"


class Port:
    """One simulated sensor's pty; writes are dropped when nobody reads (as on a real, unread line)."""

    def __init__(self, name: str, link_dir: Path) -> None:
        self.name = name
        self.master, self.slave = os.openpty()
        # Raw mode at once: no echo and no CR/LF translation before the gateway configures the port.
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.link = link_dir / name
        tmp = self.link.with_name(f".{name}.new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path)
        tmp.replace(self.link)
        self.inbox = b""

    def send(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self.master, data)

    def receive(self) -> bytes:
        try:
            return os.read(self.master, 1024)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        if self.link.is_symlink() and os.readlink(self.link) == self.path:
            self.link.unlink()
        os.close(self.master)
        os.close(self.slave)


def gps_sentences(t: float, count: int) -> bytes:
    """A receiver driving slow circles around a point, with one corrupted sentence in ten."""
    lat = 48.1173 + 0.001 * math.sin(t / 60)
    lon = 11.5167 + 0.0015 * math.cos(t / 60)
    stamp = time.gmtime(t)
    hms = time.strftime("%H%M%S", stamp) + f".{int(t * 100) % 100:02d}"
    dmy = time.strftime("%d%m%y", stamp)
    lat_s, lon_s = nmea_coordinate(lat, "N", "S", 2), nmea_coordinate(lon, "E", "W", 3)
    altitude = 545.4 + 2 * math.sin(t / 30)
    gga = nmea(f"GPGGA,{hms},{lat_s},{lon_s},1,{8 + count % 3:02d},0.9,{altitude:.1f},M,46.9,M,,")
    speed, course = 12 + 3 * math.sin(t / 20), (t * 6) % 360
    rmc = nmea(f"GPRMC,{hms},A,{lat_s},{lon_s},{speed:05.1f},{course:05.1f},{dmy},,")
    gsv = nmea("GPGSV,1,1,03,01,40,083,46,02,17,308,41,12,07,344,39")
    if count % 10 == 9:
        gga = gga[:-4] + b"00\r\n" if not gga.endswith(b"*00\r\n") else gga[:-4] + b"11\r\n"
    return gga + rmc + gsv


def weather_line(t: float) -> bytes:
    temperature = 18 + 4 * math.sin(t / 300)
    humidity = 55 + 10 * math.cos(t / 400)
    pressure = 101325 + 150 * math.sin(t / 900)
    wind = abs(3 + 2 * math.sin(t / 45))
    return f"WS1,{temperature:.1f},{humidity:.0f},{pressure:.0f},{wind:.1f}\r\n".encode()


def scale_reply(command: bytes, t: float) -> bytes | None:
    if command == b"W\r\n":
        weight = 12.0 + 0.5 * math.sin(t / 10)
        status = "ST" if int(t) % 7 else "US"
        return f"{status},GS,{weight:9.3f} kg\r\n".encode()
    if command == b"T?\r\n":
        return f"T={21 + math.sin(t / 100):.1f};H=40\r\n".encode()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", type=Path, required=True, help="directory for gps/weather/scale symlinks")
    parser.add_argument("--gps-interval", type=float, default=1.0, help="seconds between GPS fixes")
    parser.add_argument("--weather-interval", type=float, default=2.0, help="seconds between weather lines")
    args = parser.parse_args(argv)
    args.link.mkdir(parents=True, exist_ok=True)

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The wake-up pipe ends the select below at once when a signal arrives.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    gps, weather, scale = (Port(n, args.link) for n in ("gps", "weather", "scale"))
    print(
        f"serial_devices: gps at {gps.link} (NMEA GGA/RMC/GSV every {args.gps_interval:g}s, 9600 baud),"
        f" weather at {weather.link} (CSV every {args.weather_interval:g}s),"
        f" scale at {scale.link} (answers W and T?); SIGTERM to stop",
        flush=True,
    )
    selector = selectors.DefaultSelector()
    selector.register(scale.master, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    next_gps = next_weather = time.monotonic()
    fixes = 0
    try:
        while not stopping:
            now = time.monotonic()
            if now >= next_gps:
                gps.send(gps_sentences(time.time(), fixes))
                fixes += 1
                next_gps += args.gps_interval
            if now >= next_weather:
                weather.send(weather_line(time.time()))
                next_weather += args.weather_interval
            timeout = max(0.0, min(next_gps, next_weather) - time.monotonic())
            ready = {key.fd for key, _ in selector.select(timeout)}
            if scale.master in ready:
                scale.inbox = (scale.inbox + scale.receive())[-64:]
                while b"\r\n" in scale.inbox:
                    command, _, scale.inbox = scale.inbox.partition(b"\r\n")
                    reply = scale_reply(command + b"\r\n", time.time())
                    if reply is not None:
                        scale.send(reply)
    finally:
        selector.close()
        for port in (gps, weather, scale):
            port.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
