"""Benchmark: publish rate and longest publish gap with and without in-session token refreshes.

    python tests/bench/bench_uplink.py [--seconds 15] [--window 20] [--payload 120]

Starts the local broker (deploy/broker/run.sh) on a free port, then publishes QoS 1 messages as fast
as the window allows for the given time twice in the same run: once with a one-hour token (no
refresh happens) and once with 2-second tokens refreshed in session (AUTH 0x19 every ~1.6 s). Prints
messages/s, the longest gap between consecutive PUBACKs, and the ratios of the refresh run to the
baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools

from gateway.auth import SignerTokenSource
from gateway.config.uplink import ReconnectConfig, RefreshConfig, SignerTokenConfig, UplinkConfig
from gateway.model import Message
from gateway.uplink import PublishOutcome, PublishResult, Uplink
from tests.support.broker import LocalBroker
from tests.support.tokens import generate_rsa_key_pair


@dataclass
class Figures:
    label: str
    delivered: int
    seconds: float
    longest_gap: float
    refreshes: int
    connections: int

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds


async def measure(
    broker: LocalBroker, *, label: str, lifetime: float, seconds: float, window: int, payload: int
) -> Figures:
    token = SignerTokenConfig(
        key_file=broker.private_key_path,
        issuer=broker.issuer,
        subject="bench-gw",
        audience=(broker.audience,),
        lifetime=lifetime,
        not_before_skew=5,
        claims=(("publish_topics", ("bench/#",)),),
    )
    cfg = UplinkConfig(
        host=broker.host,
        port=broker.port,
        tls=False,
        token=token,
        client_id=f"bench-gw-{label}",
        max_inflight=window,
        refresh=RefreshConfig(jitter=0.1, timeout=3),
        reconnect=ReconnectConfig(initial=0.1, maximum=1),
    )
    uplink = Uplink(cfg, SignerTokenSource(token), gateway_id="bench-gw", site="bench")
    task = asyncio.create_task(uplink.run(), name="uplink")
    await uplink.wait_connected()
    acked: list[float] = []
    body = b"x" * payload

    def done(future: asyncio.Future[PublishResult]) -> None:
        if future.result().outcome is PublishOutcome.DELIVERED:
            acked.append(time.perf_counter())

    start = time.perf_counter()
    seq = 0
    last: asyncio.Future[PublishResult] | None = None
    while time.perf_counter() - start < seconds:
        last = await uplink.send(Message(topic="bench/gw/readings", payload=body, seq=seq))
        last.add_done_callback(done)
        seq += 1
    if last is not None:
        await last
    elapsed = time.perf_counter() - start
    stats = uplink.stats
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gaps = [b - a for a, b in itertools.pairwise(acked)]
    return Figures(label, len(acked), elapsed, max(gaps, default=0.0), stats.refreshes_ok, stats.connections)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--payload", type=int, default=120)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as keys:
        generate_rsa_key_pair(Path(keys), "issuer")
        with LocalBroker(keys_dir=Path(keys), verbose=False) as broker:
            sizes = {"seconds": args.seconds, "window": args.window, "payload": args.payload}
            base = await measure(broker, label="baseline", lifetime=3600, **sizes)
            refresh = await measure(broker, label="refresh", lifetime=2, **sizes)
    print(f"QoS 1, window {args.window}, {args.payload}-byte payloads, {args.seconds:g} s each, local broker")
    print(f"{'run':<28}{'msgs/s':>10}{'longest gap':>14}{'refreshes':>11}{'connections':>13}")
    for f, name in ((base, "1 h token (no refresh)"), (refresh, "2 s tokens, AUTH refresh")):
        print(
            f"{name:<28}{f.rate:>10.0f}{f.longest_gap * 1000:>11.1f} ms{f.refreshes:>11}{f.connections:>13}"
        )
    rate, gap = refresh.rate / base.rate, refresh.longest_gap / base.longest_gap
    print(f"ratio refresh/baseline: rate {rate:.2f}, longest gap {gap:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
