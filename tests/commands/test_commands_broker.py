"""Cloud-to-device commands end to end: a requesting client, the real local broker, the gateway, and real
pymodbus RTU slaves sharing one bus over joined pseudo-terminals.

The operator's client (its own token, granted to publish commands and to read its replies) publishes JSON
commands with a Response Topic and Correlation Data (MQTT v5) to ``sites/lab/gw-cmd/<device>/commands``.
The gateway's token grants it the subscription and the reply topics. The slaves count the write requests
they get, so "changes nothing on the device" is seen at the device, not taken from the gateway's word.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from drivers.modbus.driver import ModbusLinkDriver
from gateway.app import Gateway
from gateway.cli.main import main
from gateway.commands.service import CommandService
from gateway.config import Config, load_config
from gateway.errors import ExitCode
from gateway.service.snapshot import Snapshot, format_status, take_snapshot
from gateway.uplink.factory import make_uplink
from gateway.uplink.mqtt_auth import new_properties, paho_logger
from tests.modbus.conftest import sim
from tests.support.broker import LocalBroker
from tests.support.tokens import generate_rsa_key_pair, mint_token

GATEWAY = "gw-cmd"
SITE = "lab"
COMMANDS = f"sites/{SITE}/{GATEWAY}/+/commands"
REPLIES = "replies/operator"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("keys")
    generate_rsa_key_pair(keys, "issuer")
    # Grants come from the tokens' claim lists (publish_topics / subscribe_topics); verbose: the log
    # shows every SUBSCRIBE, so "not attempted" can be checked at the broker.
    with LocalBroker(keys_dir=keys, verbose=True) as running:
        yield running


@dataclass
class Slaves:
    modem: Any
    #: Write requests (fc 5/6/15/16) each unit received.
    writes: dict[int, int] = field(default_factory=dict)


@pytest.fixture
async def slaves() -> AsyncIterator[Slaves]:
    modem = sim.NullModem()
    modem.start()
    found = Slaves(modem)

    def counting(unit: int) -> Callable[..., object]:
        async def act(fc: int, _start: int, _addr: int, _count: int, _regs: object, values: object) -> None:
            # pymodbus also calls this when it reads back what it wrote for the echo: count the writes.
            if fc in (5, 6, 15, 16) and values is not None:
                found.writes[unit] = found.writes.get(unit, 0) + 1

        return act

    faults = sim.Faults()
    devices = [
        sim.device(1, inputs=[2301, 0, 1000], action=counting(1)),
        sim.device(2, inputs=[2302, 0, 2000], action=counting(2)),
        # plc: setpoint 21.5 (x0.1) in holding 0, a read-only limit in holding 1, a mode in holding 2
        sim.device(3, holding=[215, 70, 1], inputs=[5], action=counting(3)),
    ]
    server = await sim.start_rtu(devices, modem.server_path, faults)
    yield found
    await server.shutdown()
    modem.close()


def gateway_config(broker: LocalBroker, port: str, token_file: Path) -> str:
    return f"""
[gateway]
id = "{GATEWAY}"
site = "{SITE}"
stats_interval = 0
state_dir = "{token_file.parent / "state"}"

[uplink]
host = "{broker.host}"
port = {broker.port}
tls = false

[uplink.token]
source = "file"
path = "{token_file}"

[uplink.permissions]
# the local broker grants from these claims, and so does the gateway's own check

[commands]
topic = "sites/{{site}}/{{gateway}}/{{device}}/commands"
response_topic = "replies/#"
timeout = 2.0
queue = 4

[drivers.modbus.buses.rs485-1]
port = "{port}"
baudrate = 115200
timeout = 0.1
retries = 1
inter_frame_pause = 0.002

[drivers.modbus.profiles.meter]
interval = 0.1
[drivers.modbus.profiles.meter.points.volts]
table = "input"
address = 0
type = "uint16"
scale = 0.1
[drivers.modbus.profiles.meter.points.energy]
table = "input"
address = 1
type = "uint32"

[devices.m1]
driver = "modbus"
bus = "rs485-1"
unit_id = 1
profile = "meter"

[devices.m2]
driver = "modbus"
bus = "rs485-1"
unit_id = 2
profile = "meter"

[devices.plc]
driver = "modbus"
bus = "rs485-1"
unit_id = 3

[devices.plc.points.setpoint]
address = 0
type = "int16"
scale = 0.1
unit = "degC"
writable = true
min = 5
max = 30
interval = 1

[devices.plc.points.limit]
address = 1
type = "int16"
interval = 1

[devices.plc.points.mode]
address = 2
type = "uint16"
writable = true
allowed = [0, 1, 2]
interval = 1
"""


def write_token(broker: LocalBroker, path: Path, *, subscribe: list[str]) -> None:
    path.write_text(
        mint_token(
            broker.private_key_path,
            sub=GATEWAY,
            iss=broker.issuer,
            aud=broker.audience,
            lifetime=600,
            publish_topics=[f"sites/{SITE}/{GATEWAY}/#", "replies/#"],
            subscribe_topics=subscribe,
        )
    )


@dataclass
class Running:
    gateway: Gateway
    task: asyncio.Task[None]

    @property
    def commands(self) -> CommandService:
        assert self.gateway.commands is not None
        return self.gateway.commands

    @property
    def bus(self) -> ModbusLinkDriver:
        (driver,) = [d for d in self.gateway.running_drivers if isinstance(d, ModbusLinkDriver)]
        return driver


@contextlib.asynccontextmanager
async def running_gateway(config: Config) -> AsyncIterator[Running]:
    gateway = Gateway(config, make_uplink(config))
    task = asyncio.create_task(gateway.run(install_signal_handlers=False), name="gateway")
    try:
        await gateway.wait_ready()
        yield Running(gateway, task)
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 15)


async def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


class Operator:
    """The requesting side: publishes commands with Response Topic + Correlation Data, collects replies."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.replies: dict[bytes, list[dict[str, Any]]] = {}
        self._arrived = asyncio.Event()
        self._n = 0

    async def collect(self) -> None:
        async for message in self.client.messages:
            corr = getattr(message.properties, "CorrelationData", None)
            assert isinstance(message.payload, bytes)
            self.replies.setdefault(bytes(corr or b""), []).append(json.loads(message.payload))
            self._arrived.set()

    def new_correlation(self) -> bytes:
        self._n += 1
        return f"req-{self._n}".encode()

    async def send(
        self,
        device: str,
        payload: bytes | dict[str, Any],
        *,
        correlation: bytes | None = None,
        response_topic: str | None = REPLIES,
    ) -> bytes:
        correlation = correlation or self.new_correlation()
        props = new_properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        props.CorrelationData = correlation
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(f"sites/{SITE}/{GATEWAY}/{device}/commands", body, qos=1, properties=props)
        return correlation

    async def reply(self, correlation: bytes, within: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while correlation not in self.replies:
                self._arrived.clear()
                await self._arrived.wait()
        return self.replies[correlation][0]

    async def call(self, device: str, payload: bytes | dict[str, Any]) -> dict[str, Any]:
        return await self.reply(await self.send(device, payload))


@contextlib.asynccontextmanager
async def operator(broker: LocalBroker) -> AsyncIterator[Operator]:
    token = mint_token(
        broker.private_key_path,
        sub="operator",
        iss=broker.issuer,
        aud=broker.audience,
        lifetime=600,
        publish_topics=[COMMANDS],
        subscribe_topics=[f"{REPLIES}/#", REPLIES],
    )
    props = new_properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = "CUSTOM-JWT"
    props.AuthenticationData = token.encode()
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier="operator",
        protocol=aiomqtt.ProtocolVersion.V5,
        properties=props,
        logger=paho_logger("tests.operator.paho"),
        # Without it Nagle holds each small PUBLISH ~40 ms waiting for the broker's delayed ACK.
        socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
    ) as client:
        await client.subscribe(REPLIES, qos=1)
        op = Operator(client)
        task = asyncio.create_task(op.collect(), name="operator")
        try:
            yield op
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def cycles(run: Running, device: str) -> int:
    return run.bus.state(device).cycles


async def poll_rate(run: Running, seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    start = {d: cycles(run, d) for d in ("m1", "m2")}
    t0 = loop.time()
    await asyncio.sleep(seconds)  # a measurement window, not a wait for a condition
    took = loop.time() - t0
    return {d: (cycles(run, d) - start[d]) / took for d in ("m1", "m2")}


async def test_an_operator_writes_a_setpoint_on_a_shared_bus_and_gets_done_with_the_value_read_back(
    broker: LocalBroker, slaves: Slaves, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate")
    token_file = tmp_path / "token.jwt"
    write_token(broker, token_file, subscribe=[COMMANDS])
    path = tmp_path / "fieldgate.toml"
    path.write_text(gateway_config(broker, slaves.modem.client_path, token_file))
    async with running_gateway(load_config(path)) as run, operator(broker) as op:
        await wait_until(lambda: run.gateway.sink.stats.subscribed == 3, 15, "command topics subscribed")  # type: ignore[attr-defined]
        await wait_until(lambda: cycles(run, "m1") >= 5, 10, "polling")
        before = await poll_rate(run, 2.0)

        # The setpoint is written in the bus queue between polls, and read back.
        reply = await op.call("plc", {"write": {"point": "setpoint", "value": 23.5}})
        assert reply["status"] == "done", reply
        assert (reply["device"], reply["command"], reply["point"]) == ("plc", "write", "setpoint")
        assert reply["value"] == pytest.approx(23.5) and reply["unit"] == "degC"
        assert slaves.writes.get(3) == 1

        # Commands keep coming while the meters are polled: they keep their rate.
        loop = asyncio.get_running_loop()
        during_start = {d: cycles(run, d) for d in ("m1", "m2")}
        t0 = loop.time()
        values = [6.0, 7.5, 29.0, 12.5, 18.0, 21.0, 24.5, 19.5]
        round_trips: list[float] = []
        for value in values:
            sent = loop.time()
            reply = await op.call("plc", {"write": {"point": "setpoint", "value": value}})
            round_trips.append(loop.time() - sent)
            assert reply["status"] == "done" and reply["value"] == pytest.approx(value), reply
            reply = await op.call("plc", {"read": {"points": ["setpoint", "limit"]}})
            assert [r["point"] for r in reply["readings"]] == ["setpoint", "limit"]
        round_trips.sort()
        print(
            f"write round trip (operator -> broker -> gateway -> bus -> read back -> response): "
            f"median {round_trips[len(round_trips) // 2] * 1000:.1f} ms, max {round_trips[-1] * 1000:.1f} ms"
        )
        await asyncio.sleep(max(0.0, 2.0 - (loop.time() - t0)))  # at least as long as the baseline
        took = loop.time() - t0
        during = {d: (cycles(run, d) - during_start[d]) / took for d in ("m1", "m2")}
        print(f"poll rates (cycles/s) before {before} during commands {during}")
        # Commands share the bus but never starve the polls: a ratio against the rate measured just
        # before in this run (a command that held the bus for its whole timeout would halve it). The
        # rate itself is bench_modbus.py's figure.
        for d in ("m1", "m2"):
            assert during[d] >= 0.75 * before[d], (before, during)
        assert slaves.writes.get(3) == 1 + len(values)
        assert run.bus.stats()["queue_full"] == 0
        # fieldgate status and the metrics show the command counters.
        snapshot = take_snapshot(run.gateway, state="running")
        assert snapshot.commands["done"] == 1 + 2 * len(values) and snapshot.commands["refused"] == 0
        shown = io.StringIO()
        format_status(Snapshot.from_json(snapshot.to_json()), time.time(), shown)
        assert f"commands: received {1 + 2 * len(values)}, done {1 + 2 * len(values)}" in shown.getvalue()

    logged = [r.getMessage() for r in caplog.records if r.name == "fieldgate.commands"]
    assert any(
        "command write setpoint = 23.5 for plc from 'sites/lab/gw-cmd/plc/commands'" in line
        and "done: setpoint = 23.5 degC" in line
        for line in logged
    ), logged


async def test_refused_commands_say_why_and_change_nothing_on_the_device(
    broker: LocalBroker, slaves: Slaves, tmp_path: Path
) -> None:
    token_file = tmp_path / "token.jwt"
    write_token(broker, token_file, subscribe=[COMMANDS])
    path = tmp_path / "fieldgate.toml"
    path.write_text(gateway_config(broker, slaves.modem.client_path, token_file))
    async with running_gateway(load_config(path)) as run, operator(broker) as op:
        await wait_until(lambda: run.gateway.sink.stats.subscribed == 3, 15, "command topics subscribed")  # type: ignore[attr-defined]
        cases: list[tuple[bytes | dict[str, Any], str, str]] = [
            ({"write": {"point": "setpoint", "value": 99}}, "out-of-range", "above the point's maximum 30"),
            ({"write": {"point": "mode", "value": 7}}, "out-of-range", "not one of the allowed values"),
            ({"write": {"point": "limit", "value": 80}}, "not-writable", "not writable"),
            ({"write": {"point": "nope", "value": 1}}, "unknown-point", "no point 'nope'"),
            ({"write": {"point": "setpoint", "value": "hot"}}, "invalid-value", "expected a number"),
            (b"{not json", "malformed", "not valid JSON"),
            (b"\xff\xfe" * 3000, "malformed", "exceeds the limit of 4096"),
            ({"write": {"point": "setpoint"}}, "malformed", "write needs"),
            ({"reboot": True}, "malformed", "unknown key"),
            ({"send": {"command": "tare"}}, "not-supported", "no named commands"),
            ({"read": {"points": ["volts"]}}, "unknown-point", "no point 'volts'"),
        ]
        for payload, reason, detail in cases:
            reply = await op.call("plc", payload)
            assert reply["status"] == "refused", (payload, reply)
            assert reply["reason"] == reason, (payload, reply)
            assert detail in reply["detail"], (payload, reply)
        assert slaves.writes.get(3, 0) == 0  # the device never saw a write
        # ...and the gateway is fine: a good command still works.
        reply = await op.call("plc", {"read": {}})
        assert reply["status"] == "done"
        assert {r["point"]: r["value"] for r in reply["readings"]} == {
            "setpoint": pytest.approx(21.5),
            "limit": 70,
            "mode": 1,
        }
        assert run.commands.counters.malformed == 4


async def test_a_redelivered_command_runs_once_and_an_expired_one_not_at_all(
    broker: LocalBroker, slaves: Slaves, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate.commands")
    token_file = tmp_path / "token.jwt"
    write_token(broker, token_file, subscribe=[COMMANDS])
    path = tmp_path / "fieldgate.toml"
    path.write_text(gateway_config(broker, slaves.modem.client_path, token_file))
    async with running_gateway(load_config(path)) as run, operator(broker) as op:
        await wait_until(lambda: run.gateway.sink.stats.subscribed == 3, 15, "command topics subscribed")  # type: ignore[attr-defined]
        command = {"write": {"point": "setpoint", "value": 25.0}}
        correlation = await op.send("plc", command)
        first = await op.reply(correlation)
        assert first["status"] == "done"
        # The same request again (what a QoS 1 redelivery looks like: same topic, same correlation data).
        await op.send("plc", command, correlation=correlation)
        await wait_until(lambda: len(op.replies[correlation]) == 2, 10, "the repeated response")
        assert op.replies[correlation][1] == first
        assert slaves.writes.get(3) == 1
        assert run.commands.counters.duplicates == 1

        expired = await op.call(
            "plc", {"write": {"point": "setpoint", "value": 26.0}, "expires_at": time.time() - 1}
        )
        assert expired["status"] == "refused" and expired["reason"] == "expired", expired
        assert slaves.writes.get(3) == 1
        assert run.commands.counters.expired == 1

        # Without a response topic the command is executed and its outcome logged.
        await op.send("plc", {"write": {"point": "setpoint", "value": 24.0}}, response_topic=None)
        await wait_until(lambda: slaves.writes.get(3) == 2, 10, "the unanswered write at the device")
        await wait_until(lambda: run.commands.counters.unanswered == 1, 5, "its outcome")
    assert any("is a redelivery, not executed again" in r.getMessage() for r in caplog.records), (
        "redelivery logged"
    )
    assert any("no response topic" in r.getMessage() and "done" in r.getMessage() for r in caplog.records)


async def test_a_token_without_the_command_grant_means_no_subscription_and_says_so(
    broker: LocalBroker,
    slaves: Slaves,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate")
    token_file = tmp_path / "token.jwt"
    write_token(broker, token_file, subscribe=["somewhere/else/#"])
    path = tmp_path / "fieldgate.toml"
    path.write_text(gateway_config(broker, slaves.modem.client_path, token_file))

    # check-config runs its own event loop: in a thread, as from a shell.
    assert await asyncio.to_thread(main, ["check-config", str(path)]) == ExitCode.NOT_GRANTED
    out = capsys.readouterr().out
    assert "commands for device plc: sites/lab/gw-cmd/plc/commands: NOT GRANTED" in out, out

    since = len(broker.log_lines())
    async with running_gateway(load_config(path)) as run:
        await wait_until(
            lambda: run.gateway.sink.stats.subscriptions_not_permitted == 3,  # type: ignore[attr-defined]
            15,
            "the three command filters judged",
        )
        await wait_until(lambda: cycles(run, "m1") >= 3, 10, "polling goes on")
    warnings = [r.getMessage() for r in caplog.records if "subscribe to" in r.getMessage()]
    assert any("'sites/lab/gw-cmd/plc/commands' not granted by the token" in w for w in warnings), warnings
    assert not [line for line in broker.log_lines()[since:] if f"SUBSCRIBE from {GATEWAY}" in line]


@pytest.mark.parametrize("session_expiry", [3600, 0])
async def test_command_subscriptions_survive_a_reconnect(
    session_expiry: int, broker: LocalBroker, slaves: Slaves, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker ends the connection when the token expires (refresh off here); the gateway reconnects
    with the token the agent wrote meanwhile and subscribes again, whether the broker kept the session
    (session present) or not (session_expiry = 0). Commands arrive after the reconnect."""
    caplog.set_level(logging.INFO, logger="fieldgate")
    token_file = tmp_path / "token.jwt"
    token_file.write_text(
        mint_token(
            broker.private_key_path,
            sub=GATEWAY,
            iss=broker.issuer,
            aud=broker.audience,
            lifetime=3,
            publish_topics=[f"sites/{SITE}/{GATEWAY}/#", "replies/#"],
            subscribe_topics=[COMMANDS],
        )
    )
    path = tmp_path / "fieldgate.toml"
    text = gateway_config(broker, slaves.modem.client_path, token_file).replace(
        "tls = false\n",
        f"tls = false\nsession_expiry = {session_expiry}\n[uplink.refresh]\nenabled = false\n"
        "[uplink.reconnect]\ninitial = 0.1\nmax = 0.5\n",
        1,
    )
    path.write_text(text)
    async with running_gateway(load_config(path)) as run, operator(broker) as op:
        sink = run.gateway.sink
        await wait_until(lambda: sink.stats.subscribed == 3, 15, "command topics subscribed")  # type: ignore[attr-defined]
        write_token(broker, token_file, subscribe=[COMMANDS])  # the agent's next token, 10 minutes
        await wait_until(lambda: sink.stats.connects == 2, 15, "the reconnect after the token expired")  # type: ignore[attr-defined]
        await wait_until(lambda: sink.stats.subscribed == 3, 15, "command topics subscribed again")  # type: ignore[attr-defined]
        reply = await op.call("plc", {"read": {"points": ["setpoint"]}})
        assert reply["status"] == "done", reply
    connected = [r.getMessage() for r in caplog.records if "uplink connected" in r.getMessage()]
    subscribed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("subscribed to")]
    assert ("session resumed" if session_expiry else "session new") in connected[1], connected
    # Subscribed again either way: this broker drops an expired client's subscriptions yet resumes its
    # session (see gateway/uplink/session.py).
    assert len(subscribed) == 6, subscribed
