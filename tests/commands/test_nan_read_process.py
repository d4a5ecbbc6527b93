"""A meter sends NaN for "not available" (float32 registers 0x7FC0 0x0000); an operator then asks the
device for all its points with ``{"read": {}}``. This used to end the command service and with it the
process. Through the real ``fieldgate run`` process, the real local broker and a pymodbus TCP meter:
the response carries ``null`` with bad quality, and the gateway stays up and keeps answering."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.commands.test_commands_broker import operator
from tests.modbus.conftest import sim
from tests.service.conftest import service_env
from tests.support.broker import LocalBroker
from tests.support.process import GatewayProcess

GATEWAY = "gw-cmd"  # the operator's helper publishes to sites/lab/gw-cmd/<device>/commands


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


def config(tmp_path: Path, broker: LocalBroker, modbus_port: int) -> Path:
    path = tmp_path / "fieldgate.toml"
    path.write_text(
        f"""
[gateway]
id = "{GATEWAY}"
site = "lab"
stats_interval = 0
state_dir = "{tmp_path / "state"}"
shutdown_grace = 1

[uplink]
host = "{broker.host}"
port = {broker.port}
tls = false

[uplink.token]
source = "signer"
key_file = "{broker.private_key_path}"
issuer = "{broker.issuer}"
audience = "{broker.audience}"
lifetime = 600

[uplink.token.claims]
publish_topics = ["sites/lab/{GATEWAY}/#", "replies/#"]
subscribe_topics = ["sites/lab/{GATEWAY}/+/commands"]

[commands]
topic = "sites/{{site}}/{{gateway}}/{{device}}/commands"
response_topic = "replies/#"
timeout = 5.0

[devices.meter]
driver = "modbus"
host = "127.0.0.1"
port = {modbus_port}
unit_id = 1
interval = 0.5

[devices.meter.points.power]
table = "input"
address = 0
type = "float32"
unit = "kW"

[devices.meter.points.energy]
table = "input"
address = 2
type = "uint32"
"""
    )
    return path


async def test_a_read_command_on_a_meter_sending_nan_answers_null_with_bad_quality_and_the_process_stays_up(
    tmp_path: Path, broker: LocalBroker
) -> None:
    # power: NaN (the quiet NaN meters send for "not available"); energy: 1234.
    meter = sim.device(1, inputs=[0x7FC0, 0x0000, 0, 1234])
    server, port = await sim.start_tcp([meter], sim.Faults())
    process = GatewayProcess(["run", "--config", str(config(tmp_path, broker, port))], env=service_env())
    await process.start()
    try:
        await process.wait_for(lambda s: "subscribed" in s and "commands" in s, stream="stderr", timeout=60)
        async with operator(broker) as op:
            for _ in range(2):  # twice: the service that answered the first is still there for the second
                reply = await op.call("meter", {"read": {}})
                assert reply["status"] == "done", reply
                readings = {r["point"]: r for r in reply["readings"]}
                assert readings["power"]["value"] is None and readings["power"]["quality"] == "bad"
                assert readings["power"]["reason"].startswith("not a finite number")
                assert readings["energy"]["value"] == 1234 and "reason" not in readings["energy"]
        assert process.proc is not None and process.proc.returncode is None, "\n".join(process.stderr)
        assert not any("Traceback" in line for line in process.stderr), "\n".join(process.stderr)
        process.signal(signal.SIGTERM)
        assert await process.wait(timeout=30) == 0
    finally:
        await process.kill()
        await server.shutdown()
