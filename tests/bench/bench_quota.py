"""Benchmark: how close the shaped uplink drains a backlog to the configured quota, and the bytes in flight.

    python tests/bench/bench_quota.py [--rate 500] [--seconds 10] [--payload 100]

Starts the local broker with its quota proxy (deploy/broker/run.sh), fills a memory store with a backlog
of ``rate * seconds`` messages and drains it through the real pump and uplink. Three runs in one go:

1. limits known: the broker's limit is the configured one; goal: drain rate >= 0.95 of the quota and not
   a single 0x97 answer;
2. broker at half: the broker enforces half the configured rate (PUBACK 0x97 beyond it); goal: drain rate
   >= 0.8 of the broker's limit (AIMD finds it), nothing refused for good;
3. big messages: 8 kB payloads at Event Grid's defaults (1 MB/s, 64 KB in flight); the byte rate and
   the in-flight byte cap decide; prints the peak bytes in flight against the 64 KB cap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.auth import SignerTokenSource
from gateway.config.limits import DEFAULT_LIMITS, LimitsConfig
from gateway.config.uplink import ReconnectConfig, SignerTokenConfig, UplinkConfig
from gateway.model import Message
from gateway.pipeline.pump import PumpCounters, pump_forever
from gateway.store.memory import MemoryStore
from gateway.uplink import Uplink
from tests.support.broker import LocalBroker
from tests.support.tokens import generate_rsa_key_pair


@dataclass
class Figures:
    label: str
    messages: int
    bytes: int
    seconds: float
    quota: float
    broker_rate: float
    throttled: int
    broker_0x97: int
    refused: int
    dead: int
    peak_inflight_bytes: int
    connections: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


async def drain(
    broker: LocalBroker, *, label: str, limits: LimitsConfig, count: int, payload: int, window: int
) -> Figures:
    token = SignerTokenConfig(
        key_file=broker.private_key_path,
        issuer=broker.issuer,
        subject=f"bench-{label}",
        audience=(broker.audience,),
        lifetime=3600,
        not_before_skew=5,
        claims=(("publish_topics", ("bench/#",)),),
    )
    cfg = UplinkConfig(
        host=broker.host,
        port=broker.port,
        tls=False,
        token=token,
        client_id=f"bench-{label}",
        max_inflight=window,
        reconnect=ReconnectConfig(initial=0.1, maximum=1),
        limits=limits,
    )
    uplink = Uplink(cfg, SignerTokenSource(token), gateway_id="bench-gw", site="bench")
    store = MemoryStore(count + 1)
    body = b"x" * payload
    for seq in range(1, count + 1):
        store.append(Message(f"bench/{label}/dev", body, qos=1, seq=seq, timestamp=time.time()))
    counters = PumpCounters()
    session = asyncio.create_task(uplink.run(), name="uplink")
    await uplink.wait_connected()
    started = time.perf_counter()
    pump = asyncio.create_task(pump_forever(store, uplink, counters), name="store.pump")
    await store.wait_empty()
    seconds = time.perf_counter() - started
    stats = uplink.stats
    for task in (pump, session):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.3)  # the proxy writes its counters a moment after a change
    broker_counts = broker.session_stats(f"bench-{label}")
    return Figures(
        label=label,
        messages=count,
        bytes=count * (payload + len(f"bench/{label}/dev") + 6),
        seconds=seconds,
        quota=limits.messages_per_second,
        broker_rate=float(broker.limits["publish-rate"]),
        throttled=stats.throttled,
        broker_0x97=broker_counts.get("puback_0x97", 0) + broker_counts.get("disconnect_0x97", 0),
        refused=counters.refused,
        dead=store.dead_lettered,
        peak_inflight_bytes=stats.peak_inflight_bytes,
        connections=broker_counts.get("connections", 0),
    )


def show(f: Figures, goal: str) -> None:
    print(
        f"{f.label:>13}: {f.messages} messages in {f.seconds:5.1f} s = {f.rate:7.1f} msgs/s,"
        f" {f.bytes / f.seconds / 1e3:7.1f} kB/s; quota {f.quota:g}/s, broker {f.broker_rate:g}/s;"
        f" 0x97 answers {f.broker_0x97} (gateway throttled {f.throttled}), refused {f.refused},"
        f" dead letters {f.dead}, connections {f.connections}; peak in flight {f.peak_inflight_bytes} B"
        f" ({f.peak_inflight_bytes / DEFAULT_LIMITS.inflight_bytes:.2f} of the 64 KB cap) | {goal}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=500, help="configured publishes/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="backlog size in seconds of the rate")
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--window", type=int, default=20, help="uplink.max_inflight")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    count = int(args.rate * args.seconds)
    limits = replace(DEFAULT_LIMITS, messages_per_second=float(args.rate))
    with tempfile.TemporaryDirectory() as keys:
        generate_rsa_key_pair(Path(keys), "issuer")
        with LocalBroker(keys_dir=Path(keys), quotas=True, publish_rate=args.rate) as broker:
            known = await drain(
                broker, label="known", limits=limits, count=count, payload=args.payload, window=args.window
            )
        with LocalBroker(keys_dir=Path(keys), quotas=True, publish_rate=args.rate // 2) as broker:
            half = await drain(
                broker,
                label="broker-half",
                limits=limits,
                count=count,
                payload=args.payload,
                window=args.window,
            )
        with LocalBroker(keys_dir=Path(keys), quotas=True) as broker:
            # 8 kB messages: the byte rate (1 MB/s) allows ~120/s; the 64 KB in-flight cap holds 7-8.
            big = await drain(
                broker, label="big", limits=DEFAULT_LIMITS, count=1000, payload=8000, window=args.window
            )
    print()
    show(known, f"drain/quota {known.rate / known.quota:.3f} (goal >= 0.95, 0x97 = 0)")
    show(half, f"drain/broker limit {half.rate / half.broker_rate:.3f} (goal >= 0.8)")
    show(
        big, f"bytes/s over the 1 MB/s quota {big.bytes / big.seconds / DEFAULT_LIMITS.bytes_per_second:.3f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
