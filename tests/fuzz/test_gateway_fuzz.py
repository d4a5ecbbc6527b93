"""Nothing a device or an operator sends stops the gateway: the running process, fuzzed on every edge at once.

``fieldgate run`` is started as a process against the local broker. Hypothesis then feeds, example after
example and all at the same time:

- arbitrary bytes (and nearly-valid frames) to three serial sensors on ptys: JSON, NMEA and key=value;
- crafted answers from a deliberately misbehaving Modbus TCP peer: exceptions, short frames, wrong byte
  counts, NaN/infinity floats, wrong transaction ids and function codes, garbage, silence, closed sockets;
- command payloads with arbitrary MQTT v5 properties, published by an operator's client through the
  broker to the gateway's command topics.

Meanwhile a well-formed sensor on its own pty counts 1, 2, 3 ... and an independent subscriber collects
what reaches the broker. The test asserts that the process stays up, that its memory stays bounded (RSS
from /proc) and that every good reading arrives. ``FIELDGATE_FUZZ_SECONDS`` (default 60) bounds the time
spent generating input; each example fed is appended to ``fuzz-examples.log`` in the test's folder, so a
crash can be replayed by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support import mqtt5_raw as raw
from tests.support.broker import LocalBroker
from tests.support.modbus_peer import Answer, BadModbusPeer
from tests.support.process import GatewayProcess
from tests.support.serial import Pty
from tests.support.subscriber import Subscriber, wait_until
from tests.support.tokens import generate_rsa_key_pair, mint_token

pytestmark = pytest.mark.broker

FUZZ_SECONDS = float(os.environ.get("FIELDGATE_FUZZ_SECONDS", "60"))
GATEWAY = "gw-fuzz"
SITE = "lab"
TELEMETRY = f"plants/{SITE}/{GATEWAY}"
COMMANDS = f"sites/{SITE}/{GATEWAY}"
#: The process may grow while caches, the SQLite page cache and the allocator warm up; a leak per example
#: would grow without bound over thousands of examples.
RSS_GROWTH_LIMIT_KB = 64 * 1024


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("fuzz-keys")
    generate_rsa_key_pair(keys, "issuer")
    with LocalBroker(keys_dir=keys, verbose=False) as running:
        yield running


NAN_INF = [struct.pack("!f", v) for v in (math.nan, math.inf, -math.inf)] + [
    b"\x7f\xc0\x00\x01",  # a NaN with payload
    b"\xff\xff\xff\xff",
    struct.pack("!d", math.nan),
    struct.pack("!d", 1e308),
]

answers = st.one_of(
    st.just(Answer("ok")),
    st.builds(Answer, st.just("registers"), st.sampled_from(NAN_INF) | st.binary(min_size=1, max_size=16)),
    st.builds(Answer, st.just("exception"), st.integers(0, 255)),
    st.builds(Answer, st.just("short"), st.integers(0, 12)),
    st.builds(Answer, st.just("byte_count"), st.integers(0, 255)),
    st.builds(Answer, st.just("length"), st.integers(0, 0xFFFF)),
    st.builds(Answer, st.just("tid"), st.integers(1, 0xFFFF)),
    st.builds(Answer, st.just("fc"), st.integers(0, 255)),
    st.builds(Answer, st.just("unit"), st.integers(0, 255)),
    st.builds(Answer, st.just("garbage"), st.binary(max_size=300)),
    st.just(Answer("silence")),
    st.just(Answer("close")),
)


# -- serial input --------------------------------------------------------------------------------------------
def nmea(body: str) -> bytes:
    checksum = 0
    for byte in body.encode("latin-1", "replace"):
        checksum ^= byte
    return f"${body}*{checksum:02X}\r\n".encode("latin-1", "replace")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def json_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["object", "surrogate", "bytes"]))
    if kind == "object":
        body = {
            "a": draw(json_values),
            "b": draw(json_values),
            "nested": {"c": draw(json_values)},
            **draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3)),
        }
        # json.dumps writes NaN/Infinity and >4300-digit ints as Python would: exactly what firmware does.
        return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass") + b"\n"
    if kind == "surrogate":
        return b'{"a": "\\ud800", "b": "' + draw(st.binary(max_size=20)).replace(b'"', b"") + b'"}\n'
    return draw(st.binary(max_size=200)) + b"\n"


@st.composite
def nmea_lines(draw: st.DrawFn) -> bytes:
    sentence = draw(st.sampled_from(["GPGGA", "GPRMC", "GNGLL", "GPVTG", "GPXXX", "P"]))
    fields = draw(
        st.lists(
            st.sampled_from(
                ["", "0", "1", "V", "A", "N", "S", "E", "W", "4807.038", "99999.9", "nan", "1e999"]
            )
            | st.text(
                st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="*$\r\n"), max_size=12
            ),
            max_size=16,
        )
    )
    line = nmea(",".join([sentence, *fields]))
    if draw(st.booleans()):
        return line
    return draw(st.binary(max_size=120)) + line[: draw(st.integers(0, len(line)))]


@st.composite
def keyvalue_lines(draw: st.DrawFn) -> bytes:
    pairs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["CO2", "O2", "ALARM", "X", ""]),
                st.sampled_from(["1", "0", "on", "nan", "inf", "-inf", "1e400", "9" * 400, "", "=="])
                | st.text(max_size=12),
            ),
            max_size=5,
        )
    )
    text = " ".join(f"{k}={v}" for k, v in pairs)
    return text.encode("utf-8", "surrogatepass") + b"\r\n"


commands_json = st.one_of(
    st.fixed_dictionaries({"read": st.just({}) | st.lists(st.sampled_from(["volts", "setpoint", "x"]))}),
    st.fixed_dictionaries(
        {"write": st.dictionaries(st.sampled_from(["setpoint", "volts", "x"]), json_values)}
    ),
    st.fixed_dictionaries({"send": json_values}),
    st.dictionaries(st.sampled_from(["read", "write", "send", "expires_at", "other"]), json_values),
    json_values,
).map(lambda body: json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass"))

mqtt_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
publish_properties = st.lists(
    st.one_of(
        st.tuples(st.just(raw.PROP_PAYLOAD_FORMAT), st.integers(0, 1)),
        st.tuples(st.just(0x02), st.integers(0, 2**32 - 1)),  # message expiry
        st.tuples(st.just(0x03), mqtt_text),  # content type
        st.tuples(
            st.just(0x08),
            st.sampled_from([f"{COMMANDS}/meter/responses/op", f"{TELEMETRY}/good", "replies/op", "#"])
            | mqtt_text,
        ),
        st.tuples(st.just(0x09), st.binary(max_size=64)),  # correlation data
        st.tuples(st.just(raw.PROP_USER_PROPERTY), st.tuples(mqtt_text, mqtt_text)),
    ),
    max_size=6,
).map(
    lambda props: (
        list({ident: (ident, v) for ident, v in props if ident != 0x26}.values())
        + [p for p in props if p[0] == 0x26]
    )
)


@dataclass(frozen=True)
class Command:
    device: str
    payload: bytes
    properties: list[tuple[int, Any]]


commands = st.builds(
    Command,
    st.sampled_from(["meter", "air", "gps", "nosuch"]),
    commands_json | st.binary(max_size=200),
    publish_properties,
)


@dataclass(frozen=True)
class Example:
    json_line: bytes
    nmea_line: bytes
    keyvalue_line: bytes
    modbus: list[Answer]
    command: Command | None


examples = st.builds(
    Example,
    json_lines(),
    nmea_lines(),
    keyvalue_lines(),
    st.lists(answers, max_size=6),
    st.none() | commands,
)


# -- the operator: a raw MQTT v5 client, so that any property can be sent ------------------------------------
class Operator:
    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self.client: raw.MqttV5Client | None = None
        self.reconnects = 0
        self.token = mint_token(
            broker.private_key_path,
            sub="operator",
            lifetime=3600,
            iss=broker.issuer,
            aud=broker.audience,
            publish_topics=[f"{COMMANDS}/#"],
            subscribe_topics=["replies/#"],
        )

    def publish(self, command: Command) -> None:
        if self.client is None:
            self.client = raw.MqttV5Client(self.broker.host, self.broker.port)
            self.client.connect("operator", auth_method=self.broker.method, auth_data=self.token)
            self.reconnects += 1
        body = raw.encode_str(f"{COMMANDS}/{command.device}/commands") + b"\x00\x01"
        body += raw.encode_properties(command.properties) + command.payload
        try:
            self.client.send_packet(raw.PUBLISH, 0x02, body)
        except OSError:
            self.close()  # the broker may close us for a property it refuses: a new connection next time

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


# -- the gateway process -----------------------------------------------------------------------------------
@dataclass
class Sensors:
    good: Pty
    json: Pty
    nmea: Pty
    keyvalue: Pty
    #: Bytes a pty would not take (the gateway reads slower than hypothesis writes): dropped, counted.
    dropped: int = 0

    def write(self, pty: Pty, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(pty.master, view) :]
            except BlockingIOError:
                self.dropped += len(view)
                return

    def close(self) -> None:
        for pty in (self.good, self.json, self.nmea, self.keyvalue):
            pty.close()


def gateway_config(path: Path, broker: LocalBroker, sensors: Sensors, modbus_port: int) -> Path:
    path.write_text(f"""
[gateway]
id = "{GATEWAY}"
site = "{SITE}"
state_dir = "{path.parent / "state"}"
stats_interval = 0
shutdown_grace = 2

[telemetry]
topic = "{TELEMETRY}/{{device}}"

[commands]
topic = "{COMMANDS}/{{device}}/commands"
timeout = 1.0

[uplink]
host = "{broker.host}"
port = {broker.port}
tls = false

[uplink.reconnect]
initial = 0.1
max = 1.0

[uplink.token]
source = "signer"
key_file = "{broker.private_key_path}"
issuer = "{broker.issuer}"
audience = "{broker.audience}"
lifetime = 600

[uplink.token.claims]
publish_topics = ["{TELEMETRY}/#", "{COMMANDS}/+/responses/#"]
subscribe_topics = ["{COMMANDS}/#"]

[drivers.serial]
retry_initial = 0.1
retry_max = 1.0

[devices.good]
driver = "serial"
port = "{sensors.good.path}"
framing = {{ kind = "line", terminator = "\\n", max_length = 40 }}
parser = {{ kind = "csv", columns = ["n"] }}
[devices.good.points.n]
type = "int"

[devices.air]
driver = "serial"
port = "{sensors.json.path}"
framing = {{ kind = "line", max_length = 512 }}
parser = {{ kind = "json" }}
[devices.air.points.a]
field = "a"
[devices.air.points.b]
field = "b"
type = "string"
[devices.air.points.c]
field = "nested.c"
type = "int"

[devices.gps]
driver = "serial"
port = "{sensors.nmea.path}"
framing = {{ kind = "line", terminator = "\\r\\n", max_length = 82, checksum = "nmea" }}
parser = {{ kind = "nmea" }}
[devices.gps.points.latitude]
field = "GGA.latitude"
[devices.gps.points.satellites]
field = "GGA.satellites"
type = "int"
[devices.gps.points.speed]
field = "RMC.speed"
[devices.gps.points.utc]
field = "RMC.utc"
type = "string"

[devices.gas]
driver = "serial"
port = "{sensors.keyvalue.path}"
framing = {{ kind = "line", terminator = "\\r\\n" }}
parser = {{ kind = "keyvalue", assign = "=" }}
[devices.gas.points.co2]
field = "CO2"
type = "int"
[devices.gas.points.o2]
field = "O2"
[devices.gas.points.alarm]
field = "ALARM"
type = "bool"

[devices.meter]
driver = "modbus"
host = "127.0.0.1"
port = {modbus_port}
timeout = 0.3
retries = 0
backoff_max = 0.5
interval = 0.05
[devices.meter.points.volts]
table = "input"
address = 0
type = "float32"
[devices.meter.points.energy]
table = "input"
address = 2
type = "float64"
[devices.meter.points.count]
table = "input"
address = 6
type = "uint32"
[devices.meter.points.name]
table = "holding"
address = 10
type = "string"
length = 8
[devices.meter.points.setpoint]
table = "holding"
address = 20
type = "int16"
writable = true
min = -100
max = 100
[devices.meter.points.alarm]
table = "coil"
address = 0
""")
    return path


class Witness(Subscriber):
    """An independent subscriber: the good sensor's counter values as they reach the broker.

    It does not reconnect: a message on the good sensor's topic while it was away would be an intruder
    nobody saw, so a lost subscription fails the test (its MqttError) rather than pass quietly.
    """

    def __init__(self, broker: LocalBroker) -> None:
        super().__init__(broker, identifier="witness", filters=[f"{TELEMETRY}/#"], reconnect=False)
        self.values: set[int] = set()
        self.intruders: list[bytes] = []

    def on_message(self, message: aiomqtt.Message) -> None:
        if message.topic.value != f"{TELEMETRY}/good":
            return
        assert isinstance(message.payload, bytes)
        try:
            body = json.loads(message.payload)
            reading = body["points"]["n"] if "points" in body else body
            value = int(reading["value"]) if reading["quality"] == "good" else None
        except (ValueError, KeyError, TypeError):
            value = None
        if value is None or body.get("gateway") != GATEWAY or body.get("device") != "good":
            # Something that is not the good sensor's reading, on its topic.
            self.intruders.append(message.payload)
        else:
            self.values.add(value)


@contextlib.asynccontextmanager
async def background(coro: Any, name: str) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# -- the story ---------------------------------------------------------------------------------------------
async def test_fuzzed_on_every_edge_the_gateway_stays_up_and_every_good_reading_arrives(
    broker: LocalBroker, tmp_path: Path
) -> None:
    sensors = Sensors(Pty(), Pty(), Pty(), Pty())
    peer = await BadModbusPeer().start()
    config = gateway_config(tmp_path / "gw.toml", broker, sensors, peer.port)
    witness = Witness(broker)
    operator = Operator(broker)
    log = (tmp_path / "fuzz-examples.log").open("w")
    sent: list[int] = []
    process = GatewayProcess(["run", "--config", str(config)])

    async def count() -> None:
        # The good sensor: one line every 50 ms, whatever else happens.
        while True:
            sent.append(len(sent) + 1)
            sensors.write(sensors.good, f"{sent[-1]}\n".encode())
            await asyncio.sleep(0.05)

    try:
        async with witness.running():
            await process.start()
            assert process.proc is not None
            pid = process.proc.pid
            await process.wait_for(lambda s: "uplink connected" in s, stream="stderr", timeout=30)
            # What a sensor writes before the gateway has opened its port is not the gateway's to have
            # (the drivers start once the uplink's first connect attempt is over).
            await process.wait_for(lambda s: "serial[good]: opened" in s, stream="stderr", timeout=30)
            async with background(count(), "good-sensor"):
                await wait_until(lambda: len(witness.values) >= 20, 30, "the first good readings")
                baseline_rss = peak_rss = rss_kb(pid)
                stop_at = time.monotonic() + FUZZ_SECONDS
                fed = 0

                @settings(
                    max_examples=25,
                    phases=[Phase.generate],  # a crash kills the process: nothing left to shrink against
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(examples)
                def feed(example: Example) -> None:
                    nonlocal fed, peak_rss
                    fed += 1
                    log.write(f"{example!r}\n")
                    log.flush()
                    sensors.write(sensors.json, example.json_line)
                    sensors.write(sensors.nmea, example.nmea_line)
                    sensors.write(sensors.keyvalue, example.keyvalue_line)
                    peer.feed(example.modbus)
                    if example.command is not None:
                        operator.publish(example.command)
                    time.sleep(0.01)  # the gateway's share of the machine
                    assert process.proc is not None
                    assert process.proc.returncode is None, "the gateway exited:\n" + "\n".join(
                        process.stderr[-30:]
                    )
                    peak_rss = max(peak_rss, rss_kb(pid))

                # Hypothesis runs in a thread: the loop keeps serving the peer, the sensor and the witness.
                # Runs of 25 examples, each run drawn afresh, until the time is up.
                while time.monotonic() < stop_at:
                    await asyncio.to_thread(feed)
                operator.close()
                # Every good reading sent until now arrives, fuzz or no fuzz.
                last = sent[-1]
                try:
                    await wait_until(
                        lambda: set(range(1, last + 1)) <= witness.values,
                        60,
                        f"good readings 1..{last} at the witness",
                    )
                except AssertionError as exc:
                    missing = sorted(set(range(1, last + 1)) - witness.values)
                    raise AssertionError(
                        f"{exc}: {len(missing)} missing ({missing[:10]}...{missing[-3:]}); the witness "
                        f"{'is' if witness.connected.is_set() else 'is not'} subscribed"
                    ) from None
            assert process.proc.returncode is None, "\n".join(process.stderr[-30:])
            final_rss = rss_kb(pid)
            peak_rss = max(peak_rss, final_rss)
            process.signal(signal.SIGTERM)
            code = await process.wait(timeout=20)
    finally:
        log.close()
        await process.kill()
        (tmp_path / "gateway.log").write_text("\n".join(process.stderr) + "\n")
        await peer.close()
        sensors.close()

    print(
        f"\n{fed} examples in {FUZZ_SECONDS:g} s: {peer.requests} Modbus requests answered,"
        f" {operator.reconnects} operator connections, {sensors.dropped} serial bytes not taken;"
        f" {len(witness.values)} good readings and {witness.messages} messages at the witness;"
        f" RSS {baseline_rss} kB at start, {peak_rss} kB peak, {final_rss} kB at the end"
    )
    assert code == 0, "\n".join(process.stderr[-30:])
    assert fed > 0
    assert peak_rss - baseline_rss < RSS_GROWTH_LIMIT_KB
    assert not any("Traceback" in line for line in process.stderr), "\n".join(
        line for line in process.stderr if "Traceback" in line or "Error" in line
    )[-3000:]
    # A command's Response Topic never turns the gateway against its own telemetry.
    assert witness.intruders == []
