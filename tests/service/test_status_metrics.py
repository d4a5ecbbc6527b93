"""An operator looks at the running gateway: `fieldgate status` and the Prometheus endpoint.

These runs use --dry-run; test_status_metrics_broker.py runs the same against the local broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.service.snapshot import (
    STATUS_FILE,
    PipelineStatus,
    Snapshot,
    UplinkStatus,
    read_status_file,
    write_status_file,
)
from tests.service.conftest import SIMULATED, start_gateway, write_config

FLAKY = """
[devices.flaky]
driver = "faulty"
interval = 0.05
points = ["flow"]
bad_points = ["pressure"]     # never answers
"""


def fieldgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)$"
    for line in metrics.splitlines():
        if m := re.match(pattern, line):
            return float(m.group(1))
    raise AssertionError(f"no sample {name}{{{wanted}}} in:\n{metrics}")


async def scrape(url: str) -> str:
    # urllib blocks: keep it off the test's event loop.
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(get)


async def test_status_and_metrics_report_devices_pipeline_and_errors_during_a_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, SIMULATED + FLAKY, metrics=True)
    process = await start_gateway(config)
    try:
        line = await process.wait_for(lambda s: "metrics on http://" in s, stream="stderr")
        url = line.split("metrics on ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:")
        await process.wait_for(lambda s: '"seq":60,' in s)

        metrics = await scrape(url)
        assert sample(metrics, "fieldgate_readings_total", device="alpha") > 10
        assert sample(metrics, "fieldgate_readings_total", device="flaky") > 10
        assert sample(metrics, "fieldgate_driver_errors_total", device="flaky") > 5
        assert sample(metrics, "fieldgate_driver_errors_total", device="alpha") == 0
        assert sample(metrics, "fieldgate_device_failing_points", device="flaky") == 1
        assert sample(metrics, "fieldgate_publish_outcomes_total", outcome="delivered") > 10
        assert sample(metrics, "fieldgate_store_capacity") == 100000
        assert sample(metrics, "fieldgate_permission_denials_total") == 0
        assert sample(metrics, "fieldgate_token_refreshes_total", result="failed") == 0
        assert sample(metrics, "fieldgate_watchdog_healthy") == 1
        assert sample(metrics, "fieldgate_info", gateway="gw-svc", site="lab") == 1
        assert "process_resident_memory_bytes" in metrics

        # The status file is rewritten every 5 s: wait for one written while readings flow.
        status_file = tmp_path / "state" / STATUS_FILE
        async with asyncio.timeout(15):
            while not (status_file.exists() and read_status_file(status_file).pipeline.readings):
                await asyncio.sleep(0.2)
        status = fieldgate("status", "--config", str(config))
        assert status.returncode == 0, status.stdout + status.stderr
        out = status.stdout
        assert out.startswith("fieldgate gw-svc at site lab: running\n")
        assert "uplink: dry run" in out
        assert re.search(r"  alpha \(simulated\): ok, last reading \d+s ago, \d+ readings, 0 bad", out), out
        assert re.search(
            r"  flaky \(faulty\): 1 points failing, .*\n    last error \d+s ago: pressure: timeout", out
        )

        process.signal(signal.SIGTERM)
        assert await process.wait() == 0
    finally:
        await process.kill()

    stopped = fieldgate("status", "--state-dir", str(tmp_path / "state"))
    assert stopped.returncode == 3
    assert stopped.stdout.startswith("fieldgate gw-svc at site lab: stopped")


async def test_a_taken_metrics_port_does_not_stop_the_readings(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, SIMULATED, extra="")
        config.write_text(config.read_text() + f"\n[metrics]\nenabled = true\nport = {port}\n")
        process = await start_gateway(config)
        try:
            line = await process.wait_for(
                lambda s: "running without the metrics endpoint" in s, stream="stderr"
            )
            await process.wait_for(lambda s: "/alpha/telemetry " in s)
        finally:
            await process.kill()
    assert f"[metrics]: cannot listen on 127.0.0.1:{port}: Address already in use" in line
    assert " ERROR " in line


def old_snapshot(age: float, pid: int | None = None) -> Snapshot:
    now = time.time()
    return Snapshot(
        gateway="gw-old",
        site="lab",
        config="/etc/fieldgate/fieldgate.toml",
        pid=os.getpid() if pid is None else pid,
        state="running",
        started_at=now - 3600,
        written_at=now - age,
        uplink=UplinkStatus(
            kind="mqtt", connected=True, connected_since=now - 1800, token_expires_at=now + 600
        ),
        pipeline=PipelineStatus(readings=10),
    )


def test_status_of_a_service_that_stopped_writing_is_stale(tmp_path: Path) -> None:
    write_status_file(tmp_path / STATUS_FILE, old_snapshot(age=120))

    result = fieldgate("status", "--state-dir", str(tmp_path))

    assert result.returncode == 3
    assert "gw-old at site lab: not running (status file is stale)" in result.stdout
    assert "status written 2m ago" in result.stdout


def test_status_of_a_service_whose_process_died_says_so_at_once(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    write_status_file(tmp_path / STATUS_FILE, old_snapshot(age=1, pid=int(dead.stdout)))

    result = fieldgate("status", "--state-dir", str(tmp_path))

    assert result.returncode == 3
    assert f"gw-old at site lab: not running (process {int(dead.stdout)} is gone)" in result.stdout


def test_status_shows_uplink_and_token_figures(tmp_path: Path) -> None:
    write_status_file(tmp_path / STATUS_FILE, old_snapshot(age=1))

    result = fieldgate("status", "--state-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "uplink: connected since " in result.stdout and "(30m), 0 connects" in result.stdout
    assert "token expires in 10m; refreshes 0 ok, 0 failed" in result.stdout


def test_status_without_a_status_file_says_so(tmp_path: Path) -> None:
    result = fieldgate("status", "--state-dir", str(tmp_path))

    assert result.returncode == 4
    assert "no service ran with this state directory" in result.stderr


def test_status_shows_the_shaping_and_the_dead_letters(tmp_path: Path) -> None:
    snap = old_snapshot(age=1)
    throttled = dataclasses.replace(
        snap,
        uplink=dataclasses.replace(
            snap.uplink,
            allowed_rate=50.0,
            send_rate=48.5,
            throttled=7,
            retried=5,
            inflight_bytes=2048,
            peak_inflight_bytes=65000,
        ),
        pipeline=PipelineStatus(readings=10, retried=5, store_dead_letters=2),
    )
    write_status_file(tmp_path / STATUS_FILE, throttled)

    result = fieldgate("status", "--state-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    shaping = "sending 48.5/s, allowed 50.0/s; throttled 7, resent 5; 2048 bytes in flight (peak 65000)"
    assert shaping in result.stdout
    assert "throttled and resent 5; DEAD LETTERS 2" in result.stdout
