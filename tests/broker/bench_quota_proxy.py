"""Benchmark: what the quota proxy costs the uplink, mosquitto alone vs behind the proxy.

    python -m tests.broker.bench_quota_proxy [--seconds 5] [--rounds 3]

Runs the uplink benchmark's own measurement (tests/bench/bench_uplink.py: QoS 1, window 20,
120-byte payloads, a one-hour token) against the local broker without the proxy (`quotas=False`)
and with it (`quotas=True`, rates raised so that nothing is throttled), alternating, and prints
msgs/s and the CPU the proxy, mosquitto and this process (the uplink) used per second. On a shared
machine the figures swing with the other load: compare runs of the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.bench_uplink import measure
from tests.support.broker import LocalBroker
from tests.support.tokens import generate_rsa_key_pair

CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mosquitto alone", {"quotas": False}),
    ("through the proxy", {"quotas": True, "publish_rate": 10**9, "byte_rate": 10**12}),
)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when there is none)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    header = ("case", "msgs/s", "proxy CPU", "mosquitto CPU", "uplink CPU", "proxy µs/msg")
    print("{:<20}{:>9}{:>11}{:>15}{:>12}{:>14}".format(*header))
    with tempfile.TemporaryDirectory() as keys:
        generate_rsa_key_pair(Path(keys), "issuer")
        for _ in range(args.rounds):
            for label, options in CASES:
                with LocalBroker(keys_dir=Path(keys), **options) as broker:
                    before = (cpu_seconds(broker.proxy_pid), cpu_seconds(broker.pid), os.times())
                    figures = await measure(
                        broker, label="bench", lifetime=3600, seconds=args.seconds, window=20, payload=120
                    )
                    after = (cpu_seconds(broker.proxy_pid), cpu_seconds(broker.pid), os.times())
                proxy = (after[0] - before[0]) / figures.seconds
                mosquitto = (after[1] - before[1]) / figures.seconds
                own = after[2].user + after[2].system - before[2].user - before[2].system
                per_message = proxy / figures.rate * 1e6 if figures.rate else 0.0
                print(
                    f"{label:<20}{figures.rate:>9.0f}{proxy:>11.2f}{mosquitto:>15.2f}"
                    f"{own / figures.seconds:>12.2f}{per_message:>14.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
