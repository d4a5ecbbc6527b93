"""A driver with a bug crashes every few poll cycles in the real ``fieldgate run`` process. The supervisor
restarts it with backoff each time; ``fieldgate status`` shows the restart count, and the process keeps
publishing - the healthy device all along, and the crashing one after each restart."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

from gateway.service.snapshot import STATUS_FILE, read_status_file
from tests.service.conftest import SIMULATED, service_env, write_config
from tests.service.test_status_metrics import fieldgate
from tests.support.process import GatewayProcess

FLAKY = """
[devices.flaky]
driver = "faulty"
interval = 0.05
crash_after = 3
"""


def published(process: GatewayProcess, device: str) -> int:
    count = 0
    for line in process.stdout:
        _, _, payload = line.partition(" ")
        if payload.startswith("{") and json.loads(payload).get("device") == device:
            count += 1
    return count


async def test_a_crashing_driver_is_restarted_counted_in_status_and_the_gateway_keeps_publishing(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, SIMULATED + FLAKY)
    process = await GatewayProcess(["run", "--config", str(config), "--dry-run"], env=service_env()).start()
    try:
        status_file = tmp_path / "state" / STATUS_FILE

        def restarts() -> int:
            if not status_file.exists():
                return 0
            return read_status_file(status_file).task_restarts.get("faulty[flaky]", 0)

        async with asyncio.timeout(60):
            while restarts() < 2:
                await asyncio.sleep(0.1)
        # The first crash is logged with its traceback; the ones that follow at debug level only.
        crashes = [line for line in process.stderr if "faulty[flaky] crashed" in line]
        assert len(crashes) == 1 and "ERROR" in crashes[0] and "restarting in 1s" in crashes[0], crashes
        assert sum(1 for line in process.stderr if "RuntimeError: faulty driver bug" in line) == 1
        # Still publishing after the restarts: both devices' messages keep coming.
        before = {d: published(process, d) for d in ("alpha", "flaky")}
        async with asyncio.timeout(60):
            while not all(published(process, d) > before[d] for d in before):
                await asyncio.sleep(0.1)
        assert process.proc is not None and process.proc.returncode is None

        status = fieldgate("status", "--config", str(config))
        assert status.returncode == 0, status.stdout + status.stderr
        match = re.search(r"task restarts: .*faulty\[flaky\] (\d+)", status.stdout)
        assert match and int(match.group(1)) >= 2, status.stdout

        process.signal(signal.SIGTERM)
        assert await process.wait(timeout=30) == 0
    finally:
        await process.kill()
