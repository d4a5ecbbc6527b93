"""An operator runs fieldgate as a process: stops it with SIGTERM, reconfigures it with SIGHUP."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.process import GatewayProcess


def device(name: str, value: float) -> str:
    return f"""
[devices.{name}]
driver = "simulated"
interval = 0.05

[[devices.{name}.points]]
name = "value"
signal = "constant"
values = [{value}]
"""


HEADER = """
[gateway]
id = "gw-life"
site = "lab"
stats_interval = 0
state_dir = "{state_dir}"
"""


def is_message_from(device_name: str):  # type: ignore[no-untyped-def]
    return lambda line: f"/{device_name}/telemetry " in line


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[GatewayProcess, Path, str]]:
    config = tmp_path / "fieldgate.toml"
    header = HEADER.format(state_dir=tmp_path / "state")
    config.write_text(header + device("alpha", 1))
    process = await GatewayProcess(["run", "--config", str(config), "--dry-run"]).start()
    await process.wait_for(is_message_from("alpha"))
    yield process, config, header
    await process.kill()


async def test_sigterm_stops_cleanly_within_seconds(running: tuple[GatewayProcess, Path, str]) -> None:
    process, _, _ = running
    started = time.monotonic()

    process.signal(signal.SIGTERM)
    code = await process.wait(timeout=5)

    assert code == 0
    assert time.monotonic() - started < 5
    assert any(line.endswith("fieldgate.app: stopped") for line in process.stderr)
    assert not any("Traceback" in line for line in process.stderr)


async def test_sighup_with_a_good_config_swaps_devices_in_the_same_process(
    running: tuple[GatewayProcess, Path, str],
) -> None:
    process, config, header = running
    config.write_text(header + device("beta", 2))

    process.signal(signal.SIGHUP)
    await process.wait_for(
        lambda line: "config reloaded: 1 drivers stopped, 1 started" in line, stream="stderr"
    )
    mark = len(process.stdout)
    await process.wait_for(is_message_from("beta"), start=mark)
    # After the swap, alpha is gone: the next lines are all beta's.
    await process.wait_for(lambda line: len(process.stdout) > mark + 5)
    tail = process.stdout[mark + 1 : mark + 5]
    assert all("/beta/telemetry " in line for line in tail), tail
    seqs = [json.loads(line.split(" ", 1)[1])["seq"] for line in process.stdout]
    assert seqs == sorted(seqs), "sequence numbers keep counting across the reload"
    assert process.proc is not None and process.proc.returncode is None


async def test_sighup_with_a_bad_config_keeps_the_old_one(running: tuple[GatewayProcess, Path, str]) -> None:
    process, config, header = running
    config.write_text(header + device("beta", 2).replace('driver = "simulated"', 'driver = "simulatd"'))

    process.signal(signal.SIGHUP)
    await process.wait_for(
        lambda line: "new config refused, keeping the running one" in line, stream="stderr"
    )
    await process.wait_for(lambda line: 'devices.beta.driver = "simulatd"' in line, stream="stderr")
    mark = len(process.stdout)
    await process.wait_for(is_message_from("alpha"), start=mark)
    assert not any("/beta/" in line for line in process.stdout)
