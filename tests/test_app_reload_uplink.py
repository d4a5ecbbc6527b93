"""SIGHUP while the uplink is connected: devices change in the running process, the MQTT connection stays
the same one, and a changed section that needs a restart says so."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.support.broker import LocalBroker
from tests.support.process import GatewayProcess
from tests.support.subscriber import Subscriber, wait_until
from tests.support.tokens import generate_rsa_key_pair

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


class DeviceLog(Subscriber):
    """An independent subscriber: the device of each message that reaches the broker, in order."""

    def __init__(self, broker: LocalBroker) -> None:
        super().__init__(broker, identifier="observer", filters=[GRANT], reconnect=False)
        self.seen: list[str] = []

    def on_message(self, message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        self.seen.append(json.loads(message.payload)["device"])


async def test_sighup_with_the_uplink_connected_keeps_its_one_connection_and_warns_of_restart_sections(
    broker: LocalBroker, tmp_path: Path
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(config_text(broker, tmp_path / "state", ["alpha"], keepalive=60))
    mark = len(broker.log_lines())
    process = await GatewayProcess(["run", "--config", str(config)]).start()
    try:
        async with DeviceLog(broker).running() as observer:
            seen = observer.seen
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
