"""End-to-end cost per reading: ``fieldgate run`` against a bare loop, measured in the same run.

Run on demand (not part of the test run; it takes about two minutes):

    .venv/bin/python tests/bench/bench_end_to_end.py [--seconds 10] [--skip-saturation] [--store sqlite]

What runs, all on this machine:

* one process hosting the Modbus TCP devices (pymodbus servers, 100 int16 holding registers each);
* the local mosquitto with our JWT plugin (``tests/support/broker.py``);
* ``fieldgate run`` as its own process: Modbus TCP -> router -> SQLite store -> QoS 1 uplink;
* the bare loop as its own process: the same pymodbus polls of the same servers, the same scaling and the
  same JSON payload as fieldgate's default (and nothing else: no store, no MQTT).

Printed, for each scenario (10 devices x 100 points at 2 Hz = 2,000 readings/s; 20 devices at 10 Hz =
20,000 readings/s; ``--payload`` picks the gateway's payload mode): CPU microseconds per reading of both
and their ratio, RSS of both; then readings/s at saturation (polls back to back); then start -> CONNACK:
fieldgate with the 10-meter config (points written out per device, and once in a profile) against the least
a Python MQTT v5 client does to connect with a JWT (import aiomqtt, connect), started in turn, medians of
``--starts``; then, computed from the router's real messages, bytes per reading and the readings/s one
Event Grid throughput unit (1,000 messages/s and 1 MB/s, whichever binds) carries for three traffic shapes
in each payload mode. CPU comes from /proc (10 ms ticks): windows of 10 s or more keep that error small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

POINTS = 100
STATS_INTERVAL = 5
SCALE = 0.1
UNITS = ("V", "A", "kW", "kWh", "Hz")
TICK = os.sysconf("SC_CLK_TCK")
#: The processes run with bytecode, as an installed gateway does (pip compiles it); a development shell
#: often sets PYTHONDONTWRITEBYTECODE, which would make every start compile every module from source.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "fieldgate-bench-pycache")


def compile_sources(tree: Path = ROOT) -> None:
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "gateway", "drivers", "tests/support"],
        cwd=tree,
        env=ENV,
        check=True,
    )


#: Event Grid, per namespace throughput unit (``event-grid-mqtt.md``).
TU_MESSAGES = 1_000
TU_BYTES = 1_000_000


# -- the devices -----------------------------------------------------------------------------------
def _sim() -> Any:
    spec = importlib.util.spec_from_file_location("modbus_devices", ROOT / "deploy/sim/modbus_devices.py")
    assert spec is not None and spec.loader is not None
    sim = importlib.util.module_from_spec(spec)
    sys.modules["modbus_devices"] = sim
    spec.loader.exec_module(sim)
    return sim


def serve(count: int, ready: Any) -> None:
    """``count`` Modbus TCP servers, each one device of 100 holding registers (its own process)."""
    sim = _sim()

    async def main() -> None:
        ports = []
        for d in range(count):
            # Values that exercise the sign: int16 below and above zero.
            regs = [(d * 37 + i * 611) & 0xFFFF for i in range(POINTS)]
            _server, port = await sim.start_tcp([sim.device(1, holding=regs)], sim.Faults())
            ports.append(port)
        ready.put(ports)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the bare loop ---------------------------------------------------------------------------------
async def bare_loop(ports: Sequence[int], interval: float, seconds: float) -> None:
    """Poll, scale, encode the default JSON; print readings and CPU over the measured window as JSON."""
    from pymodbus.client import AsyncModbusTcpClient

    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    names = [f"p{i:03}" for i in range(POINTS)]
    units = [UNITS[i % len(UNITS)] for i in range(POINTS)]
    count = 0
    seq = 0

    async def device(index: int, port: int) -> None:
        nonlocal count, seq
        client = AsyncModbusTcpClient("127.0.0.1", port=port)
        await client.connect()
        loop = asyncio.get_running_loop()
        tick = loop.time()
        try:
            while True:
                if interval > 0:
                    tick += interval
                    delay = tick - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                answer = await client.read_holding_registers(0, count=POINTS, device_id=1)
                ts = time.time()
                points = {}
                for name, unit, reg in zip(names, units, answer.registers, strict=True):
                    raw = reg - 0x10000 if reg & 0x8000 else reg
                    points[name] = {"value": raw * SCALE, "unit": unit, "quality": "good"}
                seq += 1
                body = {"seq": seq, "gateway": "gw-bench", "device": f"m{index:02}", "ts": ts}
                body["points"] = points
                encode(body).encode()
                count += POINTS
        finally:
            client.close()

    tasks = [asyncio.create_task(device(i, p)) for i, p in enumerate(ports)]
    await asyncio.sleep(3.0)  # connected and warm
    c0, n0, t0 = time.process_time(), count, time.perf_counter()
    await asyncio.sleep(seconds)
    c1, n1, t1 = time.process_time(), count, time.perf_counter()
    ended = sum(1 for task in tasks if task.done())  # a device loop that died (it should not)
    result = {"cpu": c1 - c0, "readings": n1 - n0, "wall": t1 - t0, "rss": _rss(os.getpid()), "ended": ended}
    print(json.dumps(result))
    sys.stdout.flush()
    # Done: cancelling twenty clients in the middle of requests can hang in pymodbus's close.
    os._exit(0)


def run_bare(ports: Sequence[int], interval: float, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--bare", json.dumps([list(ports), interval, seconds])],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=ENV,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- /proc -----------------------------------------------------------------------------------------
def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def started(command: Sequence[str], tree: Path) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """``command`` running in ``tree`` with bytecode, its stderr piped; terminated (or killed) after."""
    proc = subprocess.Popen(
        command, cwd=tree, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    try:
        yield proc, proc.stderr
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# -- fieldgate -------------------------------------------------------------------------------------
def gateway_config(
    ports: Sequence[int],
    interval: float,
    state_dir: Path,
    broker: Any,
    *,
    store: str,
    telemetry: str,
    profile: bool = False,
) -> str:
    """The scenario's config: every device's 100 points written out under the device, or (``profile``)
    once under ``[drivers.modbus.profiles.meter]`` for all of them, as an operator writes identical meters."""
    lines = [
        # The stats line is how the bench reads the counters: every STATS_INTERVAL seconds, not every
        # second (formatting it is work the gateway does far less often by default: every 60 s).
        f'[gateway]\nid = "gw-bench"\nsite = "bench"\nstats_interval = {STATS_INTERVAL}',
        f'state_dir = "{state_dir}"',
        f'[store]\nkind = "{store}"',
        f"[telemetry]\n{telemetry}",
        f'[uplink]\nhost = "127.0.0.1"\nport = {broker.port}\ntls = false\nconnect_timeout = 5',
        # Above Event Grid's per-session 1 MB/s: the default payload at 20,000 readings/s is ~1.3 MB/s,
        # which one Event Grid session would throttle (the compact payload is what fits); here the
        # subject is the gateway's CPU, not the quota's pacing.
        "[uplink.limits]\nbytes_per_second = 8_000_000\ninflight_bytes = 1_000_000",
        "[uplink.token]",
        f'source = "signer"\nkey_file = "{broker.private_key_path}"\nissuer = "{broker.issuer}"',
        f'audience = "{broker.audience}"\nlifetime = 3600',
        '[uplink.token.claims]\npublish_topics = ["sites/bench/#"]',
        "[drivers.modbus]\nmax_connections_per_host = 1",
    ]

    def points(owner: str) -> None:
        for i in range(POINTS):
            lines.append(
                f'[{owner}.points.p{i:03}]\naddress = {i}\ntype = "int16"\nscale = {SCALE}\n'
                f'unit = "{UNITS[i % len(UNITS)]}"'
            )

    if profile:
        points("drivers.modbus.profiles.meter")
    for d, port in enumerate(ports):
        lines.append(
            f'[devices.m{d:02}]\ndriver = "modbus"\nhost = "127.0.0.1"\nport = {port}\nunit_id = 1\n'
            f"interval = {interval}\ntimeout = 2"
        )
        if profile:
            lines.append('profile = "meter"')
        else:
            points(f"devices.m{d:02}")
    return "\n".join(lines) + "\n"


_STATS = re.compile(r"readings in (\d+).*?delivered (\d+)")


@dataclass
class GatewayRun:
    cpu_us: float
    readings_s: float
    rss: float
    delivered_ratio: float


def run_gateway(
    ports: Sequence[int],
    interval: float,
    seconds: float,
    broker: Any,
    *,
    store: str,
    telemetry: str,
    tree: Path = ROOT,
) -> GatewayRun:
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-") as tmp:
        config = Path(tmp) / "gateway.toml"
        config.write_text(
            gateway_config(ports, interval, Path(tmp), broker, store=store, telemetry=telemetry)
        )
        with started([sys.executable, "-m", "gateway.cli", "run", "-c", str(config)], tree) as (proc, stderr):
            connected = False
            samples: list[tuple[float, int, int, float]] = []
            warm_until = None
            for line in stderr:
                now = time.perf_counter()
                if not connected and "uplink connected to" in line:
                    connected = True
                    warm_until = now + 3.0
                match = _STATS.search(line)
                if match and warm_until is not None and now >= warm_until:
                    samples.append((now, int(match[1]), int(match[2]), _cpu(proc.pid)))
                    if now - samples[0][0] >= seconds:
                        break
                if proc.poll() is not None:
                    break
            if not connected or len(samples) < 2:
                raise RuntimeError(f"fieldgate did not run (exit {proc.poll()})")
            rss = _rss(proc.pid)
    (ta, ra, da, ca), (tb, rb, db, cb) = samples[0], samples[-1]
    readings = rb - ra
    return GatewayRun(
        cpu_us=1e6 * (cb - ca) / readings,
        readings_s=readings / (tb - ta),
        rss=rss,
        delivered_ratio=(db - da) / max(1, readings / POINTS),
    )


# -- start -> CONNACK --------------------------------------------------------------------------------
#: The least any Python MQTT v5 client on asyncio does to reach CONNACK with a JWT: import aiomqtt, connect
#: with the token (minted beforehand) as Authentication Data. No config, no store, no signing.
BARE_CONNECT = """
import asyncio, sys
import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

async def main(port, token):
    props = Properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = "CUSTOM-JWT"
    props.AuthenticationData = token.encode()
    async with aiomqtt.Client("127.0.0.1", port, identifier="bare", username="bare", properties=props,
                              protocol=aiomqtt.ProtocolVersion.V5):
        print("connected", file=sys.stderr, flush=True)
        await asyncio.sleep(60)

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def time_to_connack(command: Sequence[str], marker: str, tree: Path = ROOT) -> tuple[float, float]:
    """Start ``command``; wall seconds until it logs ``marker`` (its CONNACK) and its CPU seconds then."""
    t0 = time.perf_counter()
    with started(command, tree) as (proc, stderr):
        for line in stderr:
            if marker in line:
                return time.perf_counter() - t0, _cpu(proc.pid)
        raise RuntimeError(f"{command[:3]} exited ({proc.wait()}) before CONNACK")


def start_table(ports: Sequence[int], broker: Any, starts: int, baseline_tree: Path | None) -> None:
    """Start -> CONNACK of fieldgate (the 10-meter config, written out and with a profile) against the
    bare client, interleaved so that each sees the machine alike; medians of ``starts`` starts."""
    from tests.support.tokens import mint_token

    token = mint_token(
        broker.private_key_path, sub="bare", iss=broker.issuer, aud=broker.audience, lifetime=3600
    )
    runs: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-") as tmp:
        commands: dict[str, tuple[list[str], str, Path]] = {}
        for label, profile in (("fieldgate, 1,000 points written out", False), ("fieldgate, profile", True)):
            config = Path(tmp) / f"gateway-{profile}.toml"
            state = Path(tmp) / f"state-{profile}"
            config.write_text(
                gateway_config(ports, 0.5, state, broker, store="sqlite", telemetry="", profile=profile)
            )
            command = [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)]
            commands[label] = (command, "uplink connected to", ROOT)
            if baseline_tree is not None and not profile:
                commands["  baseline tree, written out"] = (command, "uplink connected to", baseline_tree)
        commands["bare aiomqtt client"] = (
            [sys.executable, "-c", BARE_CONNECT, str(broker.port), token],
            "connected",
            ROOT,
        )
        for _ in range(starts):
            for label, (command, marker, tree) in commands.items():
                runs.setdefault(label, []).append(time_to_connack(command, marker, tree))
    bare = statistics.median(w for w, _ in runs["bare aiomqtt client"])
    print(f"\nstart -> CONNACK, {starts} starts each, interleaved (wall median, min-max; CPU at CONNACK)")
    for label, samples in runs.items():
        walls = [w for w, _ in samples]
        wall = statistics.median(walls)
        print(
            f"  {label:40}{wall:>7.3f} s  ({min(walls):.3f}-{max(walls):.3f})"
            f"  CPU {statistics.median(c for _, c in samples):.2f} s  {wall / bare:>5.2f}x the bare client"
        )


# -- Event Grid throughput units ---------------------------------------------------------------------
_PHASED = ("voltage", "current", "power", "reactive", "apparent")
_NUMBERED = ("energy_import", "energy_export", "thd_voltage", "thd_current")
METER_NAMES = [f"{q}_{p}" for q in _PHASED for p in ("l1", "l2", "l3", "n")]
METER_NAMES += [f"{q}_{i:02}" for q in _NUMBERED for i in range(20)]
SENSOR_POINTS = [("temperature", "°C"), ("humidity", "%"), ("pressure", "hPa"), ("co2", "ppm")]
SENSOR_POINTS += [("battery", "V"), ("rssi", "dBm")]

#: shape name -> devices, each (name, [(point, unit), ...]); every device reports once a second.
Shape = list[tuple[str, list[tuple[str, str | None]]]]


def shapes() -> dict[str, Shape]:
    meter: Shape = [("meter-1", [(n, UNITS[i % len(UNITS)]) for i, n in enumerate(METER_NAMES[:POINTS])])]
    sensors: Shape = [(f"sensor-{i:02}", list(SENSOR_POINTS)) for i in range(20)]
    return {
        "100-point meter, 1/s": meter,
        "20 serial sensors x 6 points, 1/s": sensors,
        "mix: meter + 20 sensors": meter + sensors,
    }


#: payload mode -> the [telemetry] keys that select it; modes the loader refuses are left out.
PAYLOAD_MODES: dict[str, dict[str, object]] = {
    "default": {},
    "compact": {"format": "compact"},
    "compact + gateway batch 1 s": {"format": "compact", "gateway_batch": 1.0},
    "compact + point lists + batch 1 s": {"format": "compact", "gateway_batch": 1.0, "point_lists": True},
}


def shape_traffic(shape: Shape, telemetry: dict[str, object], seconds: int = 10) -> tuple[int, int, int]:
    """(readings, messages, bytes) the router produces for ``seconds`` of the shape (payload + topic)."""
    from gateway.config import parse_config
    from gateway.model import Reading
    from gateway.pipeline.queue import ReadingQueue, SetAside, route_pending
    from gateway.store.memory import MemoryStore

    toml = ['[gateway]\nid = "gw-bench"\nsite = "bench"\n[telemetry]']
    toml += [f"{k} = {json.dumps(v)}" for k, v in telemetry.items()]
    for device, points in shape:
        toml.append(f'[devices.{device}]\ndriver = "simulated"\ninterval = 1.0')
        for point, unit in points:
            toml.append(f'[[devices.{device}.points]]\nname = "{point}"\nsignal = "sine"\nunit = "{unit}"')
    config = parse_config("\n".join(toml), Path("shape.toml"))
    from gateway.pipeline.router import Router

    router = Router(
        config.gateway.id,
        config.gateway.site,
        config.routes,
        config.telemetry.qos,
        telemetry=config.telemetry,
    )
    queue = ReadingQueue(100_000)
    sent: list[Any] = []

    class Collect(MemoryStore):
        def append(self, message: Any) -> None:
            sent.append(message)

    store = Collect(config.store.max_messages)
    t = 1_764_400_000.0
    for second in range(seconds):
        for d, (device, points) in enumerate(shape):
            ts = t + second + d * 0.001
            cycle = [
                Reading(device, point, round(200.0 + 17.3 * i + second * 0.1, 1), unit, ts)
                for i, (point, unit) in enumerate(points)
            ]
            queue.put(cycle)
        # route_pending ends with the router's flush: one gateway batch per second, as its interval says
        route_pending(queue, router, store, SetAside())
    readings = sum(len(points) for _, points in shape) * seconds
    size = sum(len(m.payload) + len(m.topic.encode()) for m in sent)
    return readings, len(sent), size


def throughput_table() -> None:
    from gateway.errors import ConfigError

    print("\nEvent Grid throughput unit (1,000 msgs/s, 1 MB/s): readings/s one TU carries")
    print(f"{'shape':36}{'payload':30}{'B/reading':>10}{'msgs/s':>8}{'readings/TU':>13}{'vs default':>11}")
    for shape_name, shape in shapes().items():
        base = None
        for mode, keys in PAYLOAD_MODES.items():
            try:
                readings, messages, size = shape_traffic(shape, keys)
            except ConfigError:
                continue
            seconds = 10
            per_tu = readings / seconds * min(TU_MESSAGES / (messages / seconds), TU_BYTES / (size / seconds))
            base = base or per_tu
            print(
                f"{shape_name:36}{mode:36}{size / readings:>10.1f}{messages / seconds:>8.0f}"
                f"{per_tu:>13,.0f}{per_tu / base:>10.1f}x"
            )


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured window")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--payload", choices=tuple(PAYLOAD_MODES), default="default")
    parser.add_argument("--skip-saturation", action="store_true")
    parser.add_argument("--only-saturation", action="store_true")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/base main`): its gateway is measured too, "
        "in the same run, for before/after figures",
    )
    parser.add_argument("--only-throughput", action="store_true", help="only the Event Grid table")
    parser.add_argument("--starts", type=int, default=7, help="starts of each kind for start -> CONNACK")
    parser.add_argument("--only-start", action="store_true", help="only start -> CONNACK")
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        ports, interval, seconds = json.loads(args.bare)
        asyncio.run(bare_loop(ports, interval, seconds))
        return
    if args.only_throughput:
        throughput_table()
        return

    from tests.support.broker import LocalBroker
    from tests.support.tokens import generate_rsa_key_pair

    compile_sources()
    if args.baseline_tree is not None:
        compile_sources(args.baseline_tree)
    telemetry = "\n".join(f"{k} = {json.dumps(v)}" for k, v in PAYLOAD_MODES[args.payload].items())
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=serve, args=(20, ready), daemon=True)
    server.start()
    keys = Path(tempfile.mkdtemp(prefix="fieldgate-bench-keys-"))
    generate_rsa_key_pair(keys, "issuer")
    try:
        all_ports = ready.get(timeout=60)
        with LocalBroker(keys_dir=keys) as broker:
            print(
                f"fieldgate ({args.store} store, QoS 1 to the local JWT broker, payload {args.payload}) "
                f"vs a bare loop (pymodbus poll + scale + the same JSON), {args.seconds:g} s windows"
            )
            print(f"{'scenario':34}{'fg us/rd':>9}{'bare us/rd':>11}{'ratio':>7}{'fg rd/s':>9}"
                  f"{'fg RSS':>8}{'bare RSS':>9}")  # fmt: skip
            scenarios = [("10 dev x 100 pts @ 2 Hz", 10, 0.5), ("20 dev x 100 pts @ 10 Hz", 20, 0.1)]
            if args.only_saturation or args.only_start:
                scenarios = []
            if not args.skip_saturation and not args.only_start:
                scenarios.append(("20 dev, saturation", 20, 0.0001))
            for label, devices, interval in scenarios:
                ports = all_ports[:devices]
                fg = run_gateway(ports, interval, args.seconds, broker, store=args.store, telemetry=telemetry)
                bare = run_bare(ports, interval, args.seconds)
                bare_us = 1e6 * bare["cpu"] / bare["readings"]
                print(
                    f"{label:34}{fg.cpu_us:>9.2f}{bare_us:>11.2f}{fg.cpu_us / bare_us:>6.2f}x"
                    f"{fg.readings_s:>9.0f}{fg.rss:>7.1f}M{bare['rss']:>8.1f}M"
                )
                if args.baseline_tree is not None:
                    base = run_gateway(
                        ports, interval, args.seconds, broker, store=args.store, telemetry=telemetry,
                        tree=args.baseline_tree,
                    )  # fmt: skip
                    print(
                        f"{'  baseline tree':34}{base.cpu_us:>9.2f}{'':>11}{base.cpu_us / bare_us:>6.2f}x"
                        f"{base.readings_s:>9.0f}{base.rss:>7.1f}M"
                    )
                if interval < 0.001:
                    print(f"{'  saturation readings/s':34}fieldgate {fg.readings_s:,.0f}, bare "
                          f"{bare['readings'] / bare['wall']:,.0f} "
                          f"({fg.readings_s / (bare['readings'] / bare['wall']):.2f}x)")  # fmt: skip
            if not args.only_saturation:
                start_table(all_ports[:10], broker, args.starts, args.baseline_tree)
    finally:
        server.terminate()
        server.join(5)
    throughput_table()


if __name__ == "__main__":
    main()
