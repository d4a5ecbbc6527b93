"""Benchmark: a 100-point Modbus map over TCP, read with the compiled plan vs one request per point.

Run on demand: ``python tests/bench/bench_modbus.py [--seconds 3]``. The pymodbus TCP server runs in
its own process so the CPU figures are the gateway side only. Printed, in one run:

* requests per cycle: plan vs one request per point;
* cycle time of each (cycles polled back to back, i.e. at saturation);
* readings/s and client CPU microseconds per reading for each;
* the baseline measured in the same run: the bare pymodbus client reading 10 registers back to back,
  and the ratios against it;
* the plan again with every point ``on_change`` (registers that do not move, so after the first cycle
  nothing is reported): CPU per polled reading, i.e. what the on-change filter adds to a cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402

from drivers.modbus.config import ModbusConfig, parse_config  # noqa: E402
from drivers.modbus.driver import build_drivers  # noqa: E402
from drivers.modbus.plan import DevicePlan, PollGroup, one_request_per_point  # noqa: E402
from gateway.model import Reading  # noqa: E402
from gateway.schema import Problems, Table  # noqa: E402

POINTS = 100
TYPES = ["float32"] * 40 + ["uint16"] * 30 + ["int32"] * 20 + ["float64"] * 10
WIDTH = {"float32": 2, "uint16": 1, "int32": 2, "float64": 4}


def map_toml(port: int, on_change: bool = False) -> str:
    """A meter-like map: runs of adjacent values with small holes, as real register maps have."""
    lines = [f'[devices.bench]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\ninterval = 0.0001']
    address = 0
    extra = "\non_change = true\ndeadband = 0.5" if on_change else ""
    for i, dtype in enumerate(TYPES):
        lines.append(f'[devices.bench.points.p{i:03}]\naddress = {address}\ntype = "{dtype}"{extra}')
        address += WIDTH[dtype] + (2 if i % 10 == 9 else 0)
    return "\n".join(lines)


def serve(ready: Any) -> None:
    spec = importlib.util.spec_from_file_location("modbus_devices", ROOT / "deploy/sim/modbus_devices.py")
    assert spec is not None and spec.loader is not None
    sim = importlib.util.module_from_spec(spec)
    sys.modules["modbus_devices"] = sim
    spec.loader.exec_module(sim)

    async def main() -> None:
        server, port = await sim.start_tcp([sim.device(1, holding=list(range(400)))], sim.Faults())
        ready.put(port)
        await asyncio.Event().wait()
        await server.shutdown()

    asyncio.run(main())


def parse(text: str) -> ModbusConfig:
    problems = Problems("bench.toml")
    devices = []
    for name, dev in tomllib.loads(text)["devices"].items():
        t = Table(dev, f"devices.{name}", problems)
        t.consume("driver")
        devices.append((name, t))
    config = parse_config(None, devices)
    problems.raise_if_any()
    return config


async def saturate(config: ModbusConfig, naive: bool, seconds: float) -> dict[str, float]:
    (drv,) = build_drivers(config)
    st = drv.state("bench")
    if naive:
        st.plan = DevicePlan(st.device, (PollGroup(0.0001, one_request_per_point(st.device.points)),))
    requests = len(st.plan.requests)
    points = len(st.device.points)
    reported = 0

    def emit(readings: Sequence[Reading]) -> None:
        nonlocal reported
        reported += len(readings)

    task = asyncio.create_task(drv.run(emit), name="bench.driver")
    # Counted from the driver's cycles, not from what it emits: an on-change device that polled a
    # cycle in which nothing moved emits nothing, yet that cycle's readings cost CPU.
    while st.cycles < 3:  # connected and warm
        await asyncio.sleep(0.01)
    c0, e0, t0, cpu0 = st.cycles, reported, time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    c1, e1, t1, cpu1 = st.cycles, reported, time.perf_counter(), time.process_time()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    n_cycles, wall = c1 - c0, t1 - t0
    n_readings = n_cycles * points
    return {
        "reported": e1 - e0,
        "requests": requests,
        "cycle_ms": 1000 * wall / n_cycles,
        "readings_s": n_readings / wall,
        "cpu_us_reading": 1e6 * (cpu1 - cpu0) / n_readings,
        "cpu_us_request": 1e6 * (cpu1 - cpu0) / (n_cycles * requests),
    }


async def bare_pymodbus(port: int, seconds: float) -> dict[str, float]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    for _ in range(50):
        await client.read_holding_registers(0, count=10, device_id=1)
    n = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        await client.read_holding_registers(0, count=10, device_id=1)
        n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    client.close()
    return {"reads_s": n / wall, "cpu_us_read": 1e6 * cpu / n}


async def bench(port: int, seconds: float) -> None:
    config = parse(map_toml(port))
    base = await bare_pymodbus(port, seconds)
    plan = await saturate(config, naive=False, seconds=seconds)
    naive = await saturate(config, naive=True, seconds=seconds)
    changes = await saturate(parse(map_toml(port, on_change=True)), naive=False, seconds=seconds)
    print(f"100-point map over Modbus TCP (pymodbus server in its own process), {seconds:g}s per measurement")
    print(
        f"baseline: bare pymodbus client, 10 registers: {base['reads_s']:.0f} reads/s, "
        f"{base['cpu_us_read']:.0f} us CPU/read"
    )
    print(f"{'':24}{'plan':>10}{'per point':>11}{'plan gain':>11}")
    rows = [  # label, key, format, True when higher is better
        ("requests per cycle", "requests", "{:.0f}", False),
        ("cycle time, ms", "cycle_ms", "{:.2f}", False),
        ("readings/s", "readings_s", "{:.0f}", True),
        ("CPU us per reading", "cpu_us_reading", "{:.1f}", False),
    ]
    for label, key, fmt, higher_better in rows:
        a, b = plan[key], naive[key]
        gain = a / b if higher_better else b / a
        print(f"{label:24}{fmt.format(a):>10}{fmt.format(b):>11}{gain:>10.1f}x")
    per_point_vs_bare = naive["cpu_us_request"] / base["cpu_us_read"]
    print(
        f"CPU per request: plan {plan['cpu_us_request']:.0f} us "
        f"({POINTS / plan['requests']:.0f} points each), "
        f"per point {naive['cpu_us_request']:.0f} us = {per_point_vs_bare:.2f}x the bare client's "
        f"{base['cpu_us_read']:.0f} us\nper-point reads/s = {naive['readings_s'] / base['reads_s']:.2f}x "
        "the bare client's reads/s"
    )
    print(
        f"plan, every point on_change (nothing moves): {changes['cycle_ms']:.2f} ms/cycle, "
        f"{changes['cpu_us_reading']:.2f} us CPU per polled reading = "
        f"{changes['cpu_us_reading'] / plan['cpu_us_reading']:.2f}x the plan's "
        f"{plan['cpu_us_reading']:.2f} us; {changes['reported']:.0f} readings reported"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=serve, args=(ready,), daemon=True)
    server.start()
    try:
        port = ready.get(timeout=20)
        asyncio.run(bench(port, args.seconds))
    finally:
        server.terminate()
        server.join(5)
        ready.close()
        ready.join_thread()


if __name__ == "__main__":
    main()
