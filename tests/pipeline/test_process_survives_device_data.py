"""A serial JSON sensor with buggy firmware feeds the real ``fieldgate run`` process: a lone surrogate
(truncated UTF-16 output), a 311-digit integer, NaN. Each used to end the process; now each is logged
once, counted, and the good readings sent alongside keep coming. ``fieldgate status`` and the metrics
show what was repaired, set aside and restarted."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from gateway.service.snapshot import STATUS_FILE, read_status_file
from tests.service.conftest import service_env, write_config
from tests.service.test_status_metrics import fieldgate, sample, scrape
from tests.support.process import GatewayProcess
from tests.support.serial import Pty

DEVICE = """
[devices.air]
driver = "serial"
port = "{port}"
baudrate = 115200
framing = {{ kind = "line", max_length = 2048 }}
parser = {{ kind = "json" }}

[devices.air.points.id]
field = "id"
type = "string"

[devices.air.points.pm]
field = "pm"
unit = "ug/m3"
"""


def messages(process: GatewayProcess) -> list[dict[str, object]]:
    out = []
    for line in process.stdout:
        _, _, payload = line.partition(" ")
        if payload.startswith("{"):
            out.append(json.loads(payload))
    return out


async def test_unfriendly_device_data_is_logged_once_counted_and_good_readings_keep_coming(
    tmp_path: Path,
) -> None:
    pty = Pty()
    config = write_config(tmp_path, DEVICE.format(port=pty.path), metrics=True)
    process = await GatewayProcess(["run", "--config", str(config), "--dry-run"], env=service_env()).start()
    try:
        line = await process.wait_for(lambda s: "metrics on http://" in s, stream="stderr", timeout=30)
        url = line.split("metrics on ", 1)[1].strip()
        # The driver drops what waited in the port before it opened it.
        await process.wait_for(lambda s: "serial[air]: opened" in s, stream="stderr", timeout=30)
        bad_lines = [
            b'{"id": "\\ud800", "pm": 1.5}\n',  # lone surrogate
            b'{"id": "big", "pm": ' + b"9" * 311 + b"}\n",  # overflows a float
            b'{"id": "nan", "pm": NaN}\n',  # Python's json takes it; JSON cannot carry it
        ]
        for _round in range(2):
            for raw in bad_lines:
                pty.write(raw)
            pty.write(b'{"id": "good", "pm": 7.25}\n')
        async with asyncio.timeout(30):
            while sum(1 for m in messages(process) if m["points"]["id"]["value"] == "good") < 2:  # type: ignore[index]
                await asyncio.sleep(0.1)
        assert process.proc is not None and process.proc.returncode is None

        points = [m["points"] for m in messages(process)]
        assert {"value": "\ufffd", "quality": "good"} in [p["id"] for p in points]  # type: ignore[index]
        big = next(p["pm"] for p in points if p["id"]["value"] == "big")  # type: ignore[index]
        assert (big["value"], big["quality"]) == (None, "bad") and "out of range" in big["reason"]
        nan = next(p["pm"] for p in points if p["id"]["value"] == "nan")  # type: ignore[index]
        assert (nan["value"], nan["quality"]) == (None, "bad")
        assert nan["reason"].startswith("not a finite number")
        good = [p["pm"] for p in points if p["id"]["value"] == "good"]  # type: ignore[index]
        assert good == [{"value": 7.25, "unit": "ug/m3", "quality": "good"}] * 2

        # Logged once per device, however often it happens.
        repaired_logs = [s for s in process.stderr if "counted as repaired" in s]
        assert len(repaired_logs) == 1 and "air" in repaired_logs[0]

        status_file = tmp_path / "state" / STATUS_FILE
        async with asyncio.timeout(30):
            while not (status_file.exists() and read_status_file(status_file).devices["air"].repaired >= 2):
                await asyncio.sleep(0.2)
        snap = read_status_file(status_file)
        assert snap.devices["air"].bad >= 4  # the overflowing and the NaN pm, twice
        assert snap.set_aside == {"readings": 0, "messages": 0, "commands": 0}
        assert snap.task_restarts == {}
        status = fieldgate("status", "--config", str(config))
        assert "air (serial): " in status.stdout and "2 repaired" in status.stdout
        assert "task restarts: none" in status.stdout
        assert "set aside (not retried): 0 readings, 0 messages, 0 commands" in status.stdout

        metrics = await scrape(url)
        assert sample(metrics, "fieldgate_readings_repaired_total", device="air") == 2
        assert sample(metrics, "fieldgate_set_aside_total", kind="readings") == 0

        process.signal(signal.SIGTERM)
        assert await process.wait(timeout=30) == 0
    finally:
        await process.kill()
        pty.close()
