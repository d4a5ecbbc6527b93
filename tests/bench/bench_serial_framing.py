"""How fast the serial driver's pure pipeline is, against baselines measured in the same run.

    python tests/bench/bench_serial_framing.py

Prints, for each sensor kind, frames per second through framer + parser + point conversion, the ratio to
a bare-Python baseline over the same bytes (``bytes.split`` for lines, slicing for binary frames), and the
headroom over what a 115200-baud line can deliver at all (11,520 bytes/s with 8N1).
"""

from __future__ import annotations

import random
import statistics
import struct
import time
from collections.abc import Callable

from drivers.serial.config import (
    CsvParser,
    FixedFraming,
    FramingSpec,
    LengthFraming,
    LineFraming,
    NmeaParser,
    ParserSpec,
    Point,
    StructParser,
)
from drivers.serial.framing import Counters, build_framer, checksum_bytes, nmea_sentence
from drivers.serial.parsers import build_plan

LINE_RATE = 115200 / 10  # bytes per second, 8N1
CHUNK = 4096


def best_of(runs: int, fn: Callable[[], int]) -> float:
    """Median seconds of ``runs`` runs (the machine is shared: medians, and ratios within one run)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pipeline(
    framing: FramingSpec, parser: ParserSpec, points: tuple[Point, ...], data: bytes
) -> Callable[[], int]:
    def run() -> int:
        counters = Counters()
        framer = build_framer(framing, counters)
        plan = build_plan("bench", parser, points, counters, missing_is_bad=False)
        n = 0
        for i in range(0, len(data), CHUNK):
            for frame in framer.feed(data[i : i + CHUNK]):
                plan.readings(frame.payload, 0.0)
                n += 1
        return n

    return run


def report(name: str, data: bytes, frames: int, ours: Callable[[], int], baseline: Callable[[], int]) -> None:
    assert ours() == frames
    t_ours, t_base = best_of(5, ours), best_of(5, baseline)
    rate = frames / t_ours
    frame_len = len(data) / frames
    print(
        f"{name:<34} {rate:>10,.0f} frames/s  {len(data) / t_ours / 1e6:6.2f} MB/s"
        f"  baseline x{t_ours / t_base:5.1f} slower"
        f"  headroom over 115200 baud x{rate / (LINE_RATE / frame_len):6.0f}"
    )


def main() -> None:
    n = 20000
    gga = nmea_sentence(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") + b"\r\n"
    gps = gga * n
    report(
        "NMEA GGA (checksum, 5 points)",
        gps,
        n,
        pipeline(
            LineFraming(b"\r\n", 82, "nmea"),
            NmeaParser(),
            tuple(Point(f, f) for f in ("latitude", "longitude", "altitude", "satellites", "hdop")),
            gps,
        ),
        lambda: len(gps.split(b"\r\n")) - 1,
    )
    csv = b"WS1,21.5,45,101325,3.2\r\n" * n
    report(
        "CSV weather line (4 points)",
        csv,
        n,
        pipeline(LineFraming(), CsvParser(), tuple(Point(str(i), str(i)) for i in range(1, 5)), csv),
        lambda: len(csv.split(b"\n")) - 1,
    )
    body = b"\xaa\x55\x05" + struct.pack(">hHB", 2150, 3500, 0)
    frame = body + checksum_bytes("crc16-modbus", body, "little")
    binary = frame * n
    report(
        "binary, CRC-16/Modbus (3 points)",
        binary,
        n,
        pipeline(
            LengthFraming(b"\xaa\x55", 1, "big", 0, 32, "crc16-modbus"),
            StructParser(">hHB"),
            tuple(Point(str(i), str(i)) for i in range(3)),
            binary,
        ),
        lambda: sum(1 for i in range(0, len(binary), len(frame)) if binary[i : i + 2] == b"\xaa\x55"),
    )

    # Worst case for resynchronisation: random bytes into the longest header-less checksummed framing
    # the config allows, where every byte position is a candidate frame.
    noise = random.Random(7).randbytes(50_000)
    worst = FixedFraming(256, b"", "crc16-modbus")

    def resync() -> int:
        framer = build_framer(worst, Counters())
        for i in range(0, len(noise), 64):
            framer.feed(noise[i : i + 64])
        return 0

    t_noise = best_of(3, resync)
    print(
        f"{'noise, header-less 256 B + CRC':<34} {len(noise) / t_noise:>10,.0f} bytes/s"
        f"  x{len(noise) / t_noise / LINE_RATE:.1f} a 115200-baud line"
    )


if __name__ == "__main__":
    main()
