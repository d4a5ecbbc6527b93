"""The store's SQLite file is damaged under a running gateway (a failing SD card, a stray write): the real
``fieldgate run`` process notices at its next write, moves the file aside, says so once, goes on with the
messages in memory, ``fieldgate status`` shows MEMORY ONLY, and readings keep reaching the broker."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.service.snapshot import STATUS_FILE, read_status_file
from tests.service.conftest import SIMULATED, service_env
from tests.service.test_status_metrics import fieldgate
from tests.support.broker import LocalBroker
from tests.support.process import GatewayProcess
from tests.support.subscriber import Subscriber

DAMAGED = "STORE DAMAGED while running"


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


def config(tmp_path: Path, broker: LocalBroker) -> Path:
    path = tmp_path / "fieldgate.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-store"
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
publish_topics = ["sites/lab/#"]
"""
        + SIMULATED
    )
    return path


class SeqLog(Subscriber):
    """An independent subscriber collecting the ``seq`` of every telemetry message that arrives."""

    def __init__(self, broker: LocalBroker) -> None:
        super().__init__(
            broker, identifier="observer", filters=["sites/lab/#"], reconnect=False, lifetime=600
        )
        self.seqs: list[int] = []

    def on_message(self, message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        self.seqs.append(int(json.loads(message.payload)["seq"]))


async def until(condition: object, timeout: float = 30.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def damage(state: Path) -> None:
    """Overwrite the database, its write-ahead log and its index in place, as a failing card would."""
    for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
        path = state / name
        with path.open("r+b") as file:
            file.write(b"\xa5" * path.stat().st_size)


async def test_a_store_file_damaged_while_running_degrades_to_memory_once_and_delivery_goes_on(
    tmp_path: Path, broker: LocalBroker
) -> None:
    path = config(tmp_path, broker)
    async with SeqLog(broker).running() as observer:
        seqs = observer.seqs
        process = await GatewayProcess(["run", "--config", str(path)], env=service_env()).start()
        try:
            await until(lambda: len(seqs) >= 5)
            damage(tmp_path / "state")
            await process.wait_for(lambda s: DAMAGED in s, stream="stderr", timeout=30)
            after = max(seqs)
            await until(lambda: sum(1 for s in seqs if s > after) >= 10)

            assert process.proc is not None and process.proc.returncode is None
            assert sum(1 for line in process.stderr if DAMAGED in line) == 1
            assert list((tmp_path / "state").glob("queue.db.corrupt-*")), "the damaged file is kept aside"
            # The status file is rewritten every few seconds: wait for one written after the damage.
            status_file = tmp_path / "state" / STATUS_FILE
            await until(
                lambda: status_file.exists() and read_status_file(status_file).pipeline.store_degraded
            )
            status = fieldgate("status", "--config", str(path))
            assert status.returncode == 0, status.stdout + status.stderr
            assert "MEMORY ONLY" in status.stdout, status.stdout

            process.signal(signal.SIGTERM)
            assert await process.wait(timeout=30) == 0
        finally:
            await process.kill()
