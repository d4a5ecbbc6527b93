"""An operator watches a gateway publishing to the (local) broker: metrics and `fieldgate status` show the
uplink, its in-session refreshes and the token's time left."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.service.snapshot import STATUS_FILE, read_status_file
from tests.service.conftest import SIMULATED, service_env
from tests.service.test_status_metrics import fieldgate, sample, scrape
from tests.support.broker import LocalBroker
from tests.support.process import GatewayProcess


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


def broker_config(tmp_path: Path, broker: LocalBroker) -> Path:
    config = tmp_path / "fieldgate.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-svc"
site = "lab"
stats_interval = 0
state_dir = "{tmp_path / "state"}"
shutdown_grace = 1

[metrics]
enabled = true
port = 0

[uplink]
host = "{broker.host}"
port = {broker.port}
tls = false

[uplink.token]
source = "signer"
key_file = "{broker.private_key_path}"
issuer = "{broker.issuer}"
subject = "gw-svc"
audience = "{broker.audience}"
lifetime = 5

[uplink.token.claims]
publish_topics = ["sites/lab/#"]
"""
        + SIMULATED
    )
    return config


async def test_metrics_and_status_report_the_uplink_and_its_refreshes(
    tmp_path: Path, broker: LocalBroker
) -> None:
    config = broker_config(tmp_path, broker)
    process = await GatewayProcess(["run", "--config", str(config)], env=service_env()).start()
    try:
        line = await process.wait_for(lambda s: "metrics on http://" in s, stream="stderr")
        url = line.split("metrics on ", 1)[1].strip()
        status_file = tmp_path / "state" / STATUS_FILE

        # 5-second tokens are refreshed at 80 %: wait for a status file written after two refreshes.
        async with asyncio.timeout(30):
            while not (status_file.exists() and read_status_file(status_file).uplink.refreshes_ok >= 2):
                await asyncio.sleep(0.2)

        metrics = await scrape(url)
        assert sample(metrics, "fieldgate_uplink_connected") == 1
        assert sample(metrics, "fieldgate_uplink_connects_total") == 1
        assert sample(metrics, "fieldgate_token_refreshes_total", result="ok") >= 2
        assert sample(metrics, "fieldgate_token_refreshes_total", result="failed") == 0
        assert 0 < sample(metrics, "fieldgate_token_expires_in_seconds") <= 5
        assert sample(metrics, "fieldgate_uplink_puback_total", outcome="delivered") > 10
        assert sample(metrics, "fieldgate_publish_outcomes_total", outcome="delivered") > 10
        # The durable store (the default for `run`) works from its file in the state directory.
        assert sample(metrics, "fieldgate_store_degraded") == 0
        assert sample(metrics, "fieldgate_store_disk_bytes") > 0

        status = fieldgate("status", "--config", str(config))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.startswith("fieldgate gw-svc at site lab: running\n")
        assert re.search(r"uplink: connected since .*, 1 connects", status.stdout), status.stdout
        assert re.search(r"token expires in \d+s; refreshes [2-9]\d* ok, 0 failed", status.stdout), (
            status.stdout
        )

        process.signal(signal.SIGTERM)
        assert await process.wait() == 0
    finally:
        await process.kill()
