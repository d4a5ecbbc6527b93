"""Pipeline benchmark: simulated devices -> router -> JSON encoder -> in-process sink.

Run on demand (not part of the test run):

    .venv/bin/python tests/bench/bench_pipeline.py [--devices 50] [--points 20] [--rate 20000] [--seconds 10]

Prints readings/s and CPU seconds per 10,000 readings for the whole pipeline, the same figures for a bare
loop that only builds the same JSON payloads, and the ratio of the two (measured in the same run).
``--rate 0`` polls as fast as the loop allows (saturation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.model import Message, PublishOutcome, PublishResult


class CountingSink:
    #: No session figures: status shows a sink without a connection.
    stats = None

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        self.messages += 1
        self.bytes += len(message.payload)
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult(PublishOutcome.DELIVERED))
        return future


def make_config(devices: int, points: int, interval: float) -> str:
    # The memory store: this benchmark measures drivers, router and encoder (bench_store.py the store).
    parts = ['[gateway]\nid = "gw-bench"\nsite = "bench"\nstats_interval = 0\n[store]\nkind = "memory"\n']
    for d in range(devices):
        parts.append(f'[devices.dev-{d}]\ndriver = "simulated"\ninterval = {interval}\n')
        for p in range(points):
            parts.append(
                f'[[devices.dev-{d}.points]]\nname = "p{p}"\nsignal = "sine"\nunit = "V"\nperiod = 10.0\n'
            )
    return "\n".join(parts)


async def run_pipeline(
    devices: int, points: int, rate: float, seconds: float
) -> tuple[int, float, float, int]:
    interval = devices * points / rate if rate > 0 else 0.001
    config = parse_config(make_config(devices, points, interval), Path("bench.toml"))
    sink = CountingSink()
    gateway = Gateway(config, sink)
    task = asyncio.create_task(gateway.run(install_signal_handlers=False))
    await gateway.wait_ready()
    await asyncio.sleep(0.5)  # warm-up
    r0, c0, t0 = gateway.router.counters.readings, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    r1, c1, t1 = gateway.router.counters.readings, time.process_time(), time.perf_counter()
    gateway.stop()
    await task
    skipped = sum(getattr(entry.driver, "skipped_ticks", 0) for entry in gateway._drivers.values())
    return r1 - r0, c1 - c0, t1 - t0, skipped


def run_bare(readings: int, points: int) -> tuple[float, float]:
    """Build the same payloads in a plain loop: the floor the pipeline is compared with."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    cycles = max(1, readings // points)
    c0, t0 = time.process_time(), time.perf_counter()
    for seq in range(cycles):
        ts = time.time()
        body = {f"p{p}": {"value": 1.234, "unit": "V", "quality": "good"} for p in range(points)}
        encode({"seq": seq, "gateway": "gw-bench", "device": "dev-0", "ts": ts, "points": body}).encode()
    return time.process_time() - c0, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--rate", type=float, default=20_000, help="total readings/s; 0 = saturate")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    readings, cpu, wall, skipped = asyncio.run(
        run_pipeline(args.devices, args.points, args.rate, args.seconds)
    )
    bare_cpu, bare_wall = run_bare(readings, args.points)
    per10k = cpu / readings * 10_000
    bare_per10k = bare_cpu / readings * 10_000
    print(f"pipeline: {args.devices} devices x {args.points} points, target {args.rate:g} readings/s")
    print(f"  readings/s        {readings / wall:12.0f}   (skipped ticks: {skipped})")
    print(f"  CPU s / 10k       {per10k:12.4f}")
    print(f"bare JSON loop (same payloads, same count: {readings})")
    print(f"  readings/s        {readings / bare_wall:12.0f}")
    print(f"  CPU s / 10k       {bare_per10k:12.4f}")
    print(f"ratio pipeline/bare CPU per reading: {per10k / bare_per10k:.2f}")


if __name__ == "__main__":
    main()
