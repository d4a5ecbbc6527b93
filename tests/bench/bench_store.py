"""Store benchmark: what the durable queue costs, measured against the memory store in the same run.

Run on demand (not part of the test run):

    .venv/bin/python tests/bench/bench_store.py [--devices 50] [--points 1] [--rate 5000] [--seconds 10]
                                                [--backlog 100000]

1. End to end (simulated devices -> router -> store -> pump -> in-process sink that acknowledges at once),
   at an offered rate and then with devices polling as fast as the loop allows: readings/s delivered to
   the sink and CPU per message with the memory store (no disk) and with the SQLite store in ``always``
   and ``outage`` modes, as ratios to the memory store, and bytes written per message (``/proc/self/io``
   write_bytes: everything this process made the kernel write).
2. Drain of a backlog of ``--backlog`` messages waiting on disk after a restart, through the real pump into
   the same sink, against the same backlog held by the memory store.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.config.model import StoreSettings
from gateway.model import Message, PublishOutcome, PublishResult
from gateway.pipeline.pump import PumpCounters, pump_forever
from gateway.store import Store
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore


class CountingSink:
    #: No session figures: status shows a sink without a connection.
    stats = None

    def __init__(self) -> None:
        self.messages = 0

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        self.messages += 1
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult(PublishOutcome.DELIVERED))
        return future


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def make_config(devices: int, points: int, state_dir: Path, store: str, interval: float) -> str:
    parts = [
        f'[gateway]\nid = "gw-bench"\nsite = "bench"\nstats_interval = 0\nstate_dir = "{state_dir}"\n',
        f"[store]\n{store}\n",
    ]
    for d in range(devices):
        parts.append(f'[devices.dev-{d}]\ndriver = "simulated"\ninterval = {interval}\n')
        for p in range(points):
            parts.append(
                f'[[devices.dev-{d}.points]]\nname = "p{p}"\nsignal = "sine"\nunit = "V"\nperiod = 10.0\n'
            )
    return "\n".join(parts)


@dataclasses.dataclass
class Run:
    name: str
    readings: int
    messages: int
    seconds: float
    cpu: float
    written: int

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds

    @property
    def bytes_per_message(self) -> float:
        return self.written / max(1, self.messages)


async def end_to_end(name: str, store: str, devices: int, points: int, seconds: float, *, rate: float) -> Run:
    """``rate``: messages/s offered by the devices; 0: as fast as the loop allows."""
    interval = devices / rate if rate > 0 else 0.001
    state_dir = Path(tempfile.mkdtemp(prefix="fieldgate-bench-"))
    try:
        config = parse_config(make_config(devices, points, state_dir, store, interval), Path("bench.toml"))
        sink = CountingSink()
        gateway = Gateway(config, sink)
        task = asyncio.create_task(gateway.run(install_signal_handlers=False))
        await gateway.wait_ready()
        await asyncio.sleep(1.0)  # warm-up (the outage mode learns the uplink is up)
        m0, c0, w0 = sink.messages, time.process_time(), write_bytes()
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        m1, c1, w1 = sink.messages, time.process_time(), write_bytes()
        t1 = time.perf_counter()
        gateway.stop()
        await task
        # Delivered readings: what reached the sink (a store that overflows drops the rest).
        return Run(name, (m1 - m0) * points, m1 - m0, t1 - t0, c1 - c0, w1 - w0)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def backlog_message(seq: int, ts: float) -> Message:
    payload = (
        f'{{"seq":{seq},"gateway":"gw-bench","device":"dev-1","ts":{ts},'
        f'"points":{{"p0":{{"value":1.234,"unit":"V","quality":"good"}}}}}}'
    ).encode()
    return Message("sites/bench/gw-bench/dev-1/telemetry", payload, 1, seq, ts, "dev-1")


async def drain(store: Store, count: int) -> float:
    """Seconds for the real pump to hand ``count`` waiting messages to the sink (acked at once)."""
    sink = CountingSink()
    counters = PumpCounters()
    runner = asyncio.create_task(store.run(), name="store")
    started = time.perf_counter()
    pump = asyncio.create_task(pump_forever(store, sink, counters), name="store.pump")
    while counters.delivered < count:
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - started
    for task in (pump, runner):
        task.cancel()
    await asyncio.gather(pump, runner, return_exceptions=True)
    return seconds


async def drain_runs(count: int) -> tuple[float, float, int]:
    memory = MemoryStore(count + 1)
    for seq in range(1, count + 1):
        memory.append(backlog_message(seq, time.time()))
    memory_seconds = await drain(memory, count)

    state_dir = Path(tempfile.mkdtemp(prefix="fieldgate-bench-"))
    try:
        settings = StoreSettings(max_messages=count + 1)
        filler = SqliteStore(settings, state_dir)
        await filler.open()
        for seq in range(1, count + 1):
            filler.append(backlog_message(seq, time.time()))
        await filler.close()
        size = await asyncio.to_thread(lambda: sum(p.stat().st_size for p in state_dir.glob("queue.db*")))
        # A restart: everything waits on disk and is read back oldest first.
        store = SqliteStore(settings, state_dir)
        await store.open()
        store.link_up()
        sqlite_seconds = await drain(store, count)
        await store.close()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return memory_seconds, sqlite_seconds, size


async def main_async(args: argparse.Namespace) -> None:
    modes = [
        ("memory (no disk)", 'kind = "memory"'),
        ("sqlite always", 'kind = "sqlite"\ndurability = "always"'),
        ("sqlite outage", 'kind = "sqlite"\ndurability = "outage"'),
    ]
    for rate in (args.rate, 0.0):
        runs = [
            await end_to_end(name, store, args.devices, args.points, args.seconds, rate=rate)
            for name, store in modes
        ]
        base = runs[0]
        load = f"offered {rate:g} messages/s" if rate else "saturated (devices poll as fast as they can)"
        print(f"end to end, {args.devices} devices x {args.points} points per message, {load}:")
        print(
            f"  {'store':18} {'delivered readings/s':>21} {'ratio':>6} {'CPU s/10k msg':>14} {'ratio':>6}"
            f" {'bytes written/msg':>18}"
        )
        for run in runs:
            cpu = run.cpu / max(1, run.messages) * 1e4
            base_cpu = base.cpu / max(1, base.messages) * 1e4
            print(
                f"  {run.name:18} {run.readings_per_s:21.0f} {run.readings_per_s / base.readings_per_s:6.2f}"
                f" {cpu:14.3f} {cpu / base_cpu:6.2f} {run.bytes_per_message:18.0f}"
            )
    memory_s, sqlite_s, size = await drain_runs(args.backlog)
    print(f"drain of a {args.backlog:,}-message backlog (on disk: {size / 1e6:.1f} MB) through the pump")
    print(f"  memory store      {args.backlog / memory_s:11.0f} messages/s")
    print(f"  sqlite store      {args.backlog / sqlite_s:11.0f} messages/s   ratio {memory_s / sqlite_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--points", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5000, help="messages/s offered in the first run")
    parser.add_argument("--backlog", type=int, default=100_000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
