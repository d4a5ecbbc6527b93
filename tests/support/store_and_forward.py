"""The gateway under load from simulated devices, and a subscriber that logs every arrival.

The set-up the store's and the uplink quota's end-to-end tests share:

    config = write_config(tmp_path / "gw.toml", tmp_path / "state", devices=2, interval=0.01)
    gate = await Gate(broker).start()
    async with ArrivalLog(broker).running() as sub:
        process = await gateway(config, broker, port=gate.port).start()
        await wait_until(lambda: len(sub.arrivals) > 200, 20, "delivery")

``write_config`` writes a gateway ``gw-store`` at site ``lab`` whose simulated devices publish to
``plants/lab/gw-store/<device>``; ``gateway`` adds the [uplink] to the local broker (or to a gate in front
of it) with tokens signed by the broker's issuer key. Every message carries the store's ``seq`` and the
reading's ``ts``; ``ArrivalLog`` records both with the time it arrived.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from tests.support.broker import LocalBroker
from tests.support.process import GatewayProcess
from tests.support.subscriber import Subscriber

SITE = "lab"
GRANT = f"plants/{SITE}/#"


@dataclass
class Arrival:
    seq: int
    ts: float
    at: float


class ArrivalLog(Subscriber):
    """Logs every message's seq, sampling time and arrival time; reconnects when the broker comes back."""

    def __init__(self, broker: LocalBroker) -> None:
        super().__init__(broker, identifier="observer", filters=[GRANT])
        self.arrivals: list[Arrival] = []

    @property
    def seqs(self) -> Counter[int]:
        return Counter(a.seq for a in self.arrivals)

    def on_message(self, message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        body = json.loads(message.payload)
        self.arrivals.append(Arrival(body["seq"], body["ts"], time.time()))


def quiet(sub: ArrivalLog, seconds: float) -> Callable[[], bool]:
    """True once nothing has arrived for ``seconds``."""
    return lambda: not sub.arrivals or time.time() - sub.arrivals[-1].at > seconds


def write_config(path: Path, state_dir: Path, *, devices: int, interval: float, store: str = "") -> Path:
    text = f"""
[gateway]
id = "gw-store"
site = "{SITE}"
state_dir = "{state_dir}"
stats_interval = 5
shutdown_grace = 2

[telemetry]
topic = "plants/{{site}}/{{gateway}}/{{device}}"

[store]
{store}
"""
    for n in range(devices):
        text += f"""
[devices.dev-{n}]
driver = "simulated"
interval = {interval}

[[devices.dev-{n}.points]]
name = "value"
signal = "ramp"
min = 0
max = 100
period = 10
"""
    path.write_text(text)
    return path


def gateway(config: Path, broker: LocalBroker, port: int | None = None) -> GatewayProcess:
    """``fieldgate run`` on the config plus an [uplink] to the broker (or to a gate in front of it)."""
    run_config = config.with_name(f"{config.stem}-{port or broker.port}.toml")
    run_config.write_text(
        config.read_text()
        + f"""
[uplink]
host = "127.0.0.1"
port = {port or broker.port}
tls = false
connect_timeout = 5

[uplink.refresh]
jitter = 0.2
timeout = 3

[uplink.reconnect]
initial = 0.1
max = 1.0

[uplink.token]
source = "signer"
key_file = "{broker.private_key_path}"
issuer = "{broker.issuer}"
audience = "{broker.audience}"
lifetime = 600
not_before_skew = 5

[uplink.token.claims]
publish_topics = ["{GRANT}"]
"""
    )
    return GatewayProcess(["run", "--config", str(run_config)])
