"""A gateway whose token grants `sites/a/#` but not `sites/b/#`, against the real local broker.

The broker grants publish through Event Grid's template `sites/${client.attributes.site}/#`; the
gateway is told the same rule in `[uplink.permissions]`. Readings for `sites/b/...` never reach the
broker (its debug log, which shows every PUBLISH it receives, has no such line), are counted, and
logged once; check-config and `fieldgate token` flag the device. When a refreshed token adds site
`b`, the readings flow, and with `denied = "hold"` the ones held so far go out too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.auth import make_token_source
from gateway.cli.main import main
from gateway.config import Config, load_config
from gateway.config.uplink import UplinkConfig
from gateway.errors import ExitCode
from gateway.permissions.gate import PermissionGate
from gateway.permissions.tracker import PermissionTracker
from gateway.uplink.factory import guard_uplink
from gateway.uplink.session import Uplink
from tests.support.broker import LocalBroker
from tests.support.tokens import generate_rsa_key_pair, mint_token

TEMPLATE = "sites/${client.attributes.site}/#"
GATEWAY = "gw-perm"
TOPIC_A = f"sites/a/{GATEWAY}/a-meter/telemetry"
TOPIC_B = f"sites/b/{GATEWAY}/b-meter/telemetry"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("keys")
    generate_rsa_key_pair(keys, "issuer")
    # Grants only through the template (no claim lists), as an Event Grid topic space would.
    with LocalBroker(
        keys_dir=keys, publish_templates=[TEMPLATE], publish_claim=None, subscribe_claim=None, verbose=True
    ) as running:
        yield running


def config_text(broker: LocalBroker, token_file: Path, denied: str) -> str:
    devices = "".join(
        f"""
[devices.{site}-meter]
driver = "simulated"
interval = 0.05
topic = "sites/{site}/{{gateway}}/{{device}}/telemetry"
[[devices.{site}-meter.points]]
name = "value"
signal = "constant"
values = [1]
"""
        for site in ("a", "b")
    )
    return f"""
[gateway]
id = "{GATEWAY}"
site = "lab"
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
publish = ["{TEMPLATE}"]
publish_claim = ""
subscribe_claim = ""
denied = "{denied}"
{devices}"""


def write_token(broker: LocalBroker, path: Path, sites: str | list[str], lifetime: float = 6) -> str:
    token = mint_token(
        broker.private_key_path,
        sub=GATEWAY,
        iss=broker.issuer,
        aud=broker.audience,
        lifetime=lifetime,
        extra_claims={"site": sites},
    )
    path.write_text(token)
    return token


@dataclass
class Running:
    gateway: Gateway
    gate: PermissionGate
    tracker: PermissionTracker
    task: asyncio.Task[None]


async def start(config: Config) -> Running:
    uplink_cfg = config.uplink
    assert isinstance(uplink_cfg, UplinkConfig)
    uplink = Uplink(
        uplink_cfg,
        make_token_source(uplink_cfg.token),
        gateway_id=config.gateway.id,
        site=config.gateway.site,
    )
    gate = guard_uplink(config, uplink)  # as the app's uplink factory does
    assert isinstance(gate, PermissionGate)
    tracker = gate.permissions
    assert isinstance(tracker, PermissionTracker)
    gateway = Gateway(config, gate)
    task = asyncio.create_task(gateway.run(install_signal_handlers=False), name="gateway")
    return Running(gateway, gate, tracker, task)


async def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def broker_received(broker: LocalBroker, topic: str) -> int:
    return sum(1 for line in broker.log_lines() if "Received PUBLISH" in line and f"'{topic}'" in line)


@pytest.fixture
async def stopper() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        running.gateway.stop()
        await asyncio.wait_for(running.task, 15)


@pytest.mark.parametrize("denied", ["drop", "hold"])
async def test_readings_for_an_ungranted_site_are_never_sent_until_a_refresh_grants_it(
    denied: str,
    broker: LocalBroker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    stopper: list[Running],
) -> None:
    caplog.set_level(logging.DEBUG, logger="fieldgate")
    token_file = tmp_path / "token.jwt"
    write_token(broker, token_file, "a")
    path = tmp_path / "fieldgate.toml"
    path.write_text(config_text(broker, token_file, denied))
    before_b = broker_received(broker, TOPIC_B)  # the broker is shared by this module's tests
    running = await start(load_config(path))
    stopper.append(running)
    gate = running.gate

    await wait_until(lambda: broker_received(broker, TOPIC_A) >= 5, 10, "site a readings at the broker")
    await wait_until(lambda: gate.denied[TOPIC_B] >= 5, 10, "site b readings denied")

    assert broker_received(broker, TOPIC_B) == before_b  # not even an attempt
    not_granted = [r for r in caplog.records if "publish to" in r.message and "not granted" in r.message]
    warnings = [r.message for r in not_granted if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert TOPIC_B in warnings[0]
    assert (
        'template sites/${client.attributes.site}/# with client.attributes.site = "b" would allow it'
        in (warnings[0])
    )
    assert 'the token has site = "a"' in warnings[0]
    flagged = [r.message for r in caplog.records if r.message.startswith("device b-meter: topic")]
    assert flagged and "is not granted by the current token" in flagged[0]
    if denied == "hold":
        assert gate.held >= 5 and gate.dropped == 0
    else:
        assert gate.held == 0 and gate.dropped >= 5
    denied_so_far = gate.denied[TOPIC_B]

    # The identity provider adds site b; the gateway re-authenticates in session with the new token.
    write_token(broker, token_file, ["a", "b"], lifetime=60)
    await wait_until(
        lambda: broker_received(broker, TOPIC_B) >= before_b + 3, 15, "site b readings at the broker"
    )

    changes = [r.message for r in caplog.records if "topic permissions changed" in r.message]
    assert changes == ["topic permissions changed with the new token: publish granted: sites/b/#"]
    assert any(f"device b-meter: topic '{TOPIC_B}' is granted now" in r.message for r in caplog.records)
    if denied == "hold":
        await wait_until(lambda: gate.held == 0, 10, "held messages released")
        assert gate.released >= denied_so_far
        await wait_until(
            lambda: broker_received(broker, TOPIC_B) >= before_b + denied_so_far,
            10,
            "every held message at the broker",
        )
    else:
        assert gate.released == 0
    assert running.tracker.disagreements == {}
    tokens = token_file.read_text()
    assert not any(tokens in r.getMessage() for r in caplog.records)


def test_check_config_and_token_flag_the_device_whose_topic_is_not_granted(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token.jwt"
    token = write_token(broker, token_file, "a", lifetime=300)
    path = tmp_path / "fieldgate.toml"
    path.write_text(config_text(broker, token_file, "drop"))

    code = main(["check-config", str(path)])
    out = capsys.readouterr().out

    assert code == ExitCode.NOT_GRANTED
    assert f"a-meter: {TOPIC_A}: granted: template {TEMPLATE} (filter sites/a/#)" in out
    assert (
        f'b-meter: {TOPIC_B}: NOT GRANTED: template {TEMPLATE} with client.attributes.site = "b" '
        'would allow it; the token has site = "a"'
    ) in out
    assert (
        '1 topic NOT GRANTED: their messages will be dropped (counted), never sent (denied = "drop")' in out
    )

    code = main(["token", "--config", str(path)])
    out = capsys.readouterr().out
    assert code == ExitCode.NOT_GRANTED
    assert f"b-meter: {TOPIC_B}: NOT GRANTED" in out
    assert "publish:\n    sites/a/#  (template sites/${client.attributes.site}/#)" in out
    assert token not in out and token.rsplit(".", 1)[1] not in out

    write_token(broker, token_file, ["a", "b"], lifetime=300)
    assert main(["check-config", str(path)]) == 0
    assert "every topic is granted" in capsys.readouterr().out
