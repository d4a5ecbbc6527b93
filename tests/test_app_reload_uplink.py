"""SIGHUP while the uplink is connected: devices change in the running process, the MQTT connection stays
the same one, and a changed section that needs a restart says so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from gateway.uplink.mqtt_auth import new_properties
from tests.support.broker import LocalBroker
from tests.support.process import GatewayProcess
from tests.support.tokens import generate_rsa_key_pair, mint_token

pytestmark = pytest.mark.broker

GATEWAY = "gw-hup"
GRANT = "plants/lab/#"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("hup-keys")
    generate_rsa_key_pair(keys, "issuer")
    with LocalBroker(keys_dir=keys, verbose=True) as running:
        yield running


def config_text(broker: LocalBroker, state_dir: Path, devices: list[str], keepalive: int) -> str:
    text = f"""
[gateway]
id = "{GATEWAY}"
site = "lab"
state_dir = "{state_dir}"
stats_interval = 0

[telemetry]
topic = "plants/{{site}}/{{gateway}}/{{device}}"

[uplink]
host = "{broker.host}"
port = {broker.port}
tls = false
keepalive = {keepalive}

[uplink.token]
source = "signer"
key_file = "{broker.private_key_path}"
issuer = "{broker.issuer}"
audience = "{broker.audience}"

[uplink.token.claims]
publish_topics = ["{GRANT}"]
"""
    for name in devices:
        text += f"""
[devices.{name}]
driver = "simulated"
interval = 0.1
[[devices.{name}.points]]
name = "value"
signal = "ramp"
min = 0
max = 1
period = 5
"""
    return text


@contextlib.asynccontextmanager
async def devices_seen(broker: LocalBroker) -> AsyncIterator[list[str]]:
    """An independent subscriber: the device of each message that reaches the broker, in order."""
    token = mint_token(
        broker.private_key_path,
        sub="observer",
        iss=broker.issuer,
        aud=broker.audience,
        subscribe_topics=[GRANT],
    )
    props = new_properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = broker.method
    props.AuthenticationData = token.encode()
    seen: list[str] = []
    async with aiomqtt.Client(
        broker.host, broker.port, identifier="observer", protocol=aiomqtt.ProtocolVersion.V5, properties=props
    ) as client:
        await client.subscribe(GRANT, qos=1)

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.append(json.loads(message.payload)["device"])

        task = asyncio.create_task(collect(), name="observer")
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def test_sighup_with_the_uplink_connected_keeps_its_one_connection_and_warns_of_restart_sections(
    broker: LocalBroker, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(config_text(broker, tmp_path / "state", ["alpha"], keepalive=60))
    mark = len(broker.log_lines())
    process = await GatewayProcess(["run", "--config", str(config)]).start()
    try:
        async with devices_seen(broker) as seen:
            await process.wait_for(lambda s: "uplink connected" in s, stream="stderr", timeout=30)
            await wait_until(lambda: seen.count("alpha") >= 5, 20, "alpha's messages at the broker")

            # A new device (applied on reload) and a new keepalive (needs a restart).
            config.write_text(config_text(broker, tmp_path / "state", ["alpha", "beta"], keepalive=30))
            process.signal(signal.SIGHUP)
            await process.wait_for(lambda s: "config reloaded" in s, stream="stderr", timeout=20)
            after = len(seen)
            await wait_until(lambda: "beta" in seen[after:], 20, "beta's messages at the broker")
            await wait_until(lambda: seen[after:].count("alpha") >= 5, 20, "alpha still delivering")
        process.signal(signal.SIGTERM)
        assert await process.wait(timeout=20) == 0
    finally:
        await process.kill()

    stderr = process.stderr
    assert [s for s in stderr if "takes effect at the next restart" in s] == [
        next(s for s in stderr if "[uplink] changed" in s)
    ]
    # One connection before and after the reload: the gateway's and the broker's view.
    assert len([s for s in stderr if "uplink connected" in s]) == 1
    assert len([s for s in broker.log_lines()[mark:] if f"connect accepted as '{GATEWAY}'" in s]) == 1
    assert not any("Traceback" in s for s in stderr)
