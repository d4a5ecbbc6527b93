"""Under systemd the journal reads fieldgate's stderr: each line carries its syslog priority so that
`journalctl -p err -u fieldgate` works, and an error repeated every second does not flood it."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from gateway.service.logs import JournalFormatter, RepeatFilter, TextFormatter, setup_logging
from tests.service.conftest import SIMULATED, service_env, write_config

HANGING = """
[devices.stuck-1]
driver = "faulty"
interval = 0.05
hang_after = 5
max_silence = 0.5
"""


def run_with_stderr_file(tmp_path: Path, config: Path, *args: str, journal: bool) -> list[str]:
    """Run the gateway for a moment with stderr in a file; JOURNAL_STREAM names that file if ``journal``."""
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        info = os.fstat(err.fileno())
        env = {**os.environ, **service_env()}
        if journal:
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--dry-run", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            timeout=30,
            check=True,
        )
    return log.read_text().splitlines()


def test_under_systemd_every_line_carries_its_priority(tmp_path: Path) -> None:
    config = write_config(tmp_path, SIMULATED + HANGING)

    lines = run_with_stderr_file(tmp_path, config, "--duration", "2.5", journal=True)

    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert "<6>INFO fieldgate.app: fieldgate gw-svc started: 2 devices, 2 drivers" in lines
    stuck = [line for line in lines if "watchdog: pipeline stuck" in line]
    assert stuck and stuck[0].startswith("<3>ERROR fieldgate.service: ")


def test_json_lines_under_systemd_are_json_after_the_priority(tmp_path: Path) -> None:
    config = write_config(tmp_path, SIMULATED)

    lines = run_with_stderr_file(tmp_path, config, "--duration", "0.5", "--log-format", "json", journal=True)

    assert all(line.startswith("<6>") for line in lines), lines
    entries = [json.loads(line[3:]) for line in lines]
    assert {"level": "info", "logger": "fieldgate.app", "msg": "stopped"}.items() <= entries[-2].items()


def test_in_a_terminal_lines_keep_their_time_and_no_prefix(tmp_path: Path) -> None:
    config = write_config(tmp_path, SIMULATED)

    lines = run_with_stderr_file(tmp_path, config, "--duration", "0.5", journal=False)

    assert lines and all(line[:2] == "20" and " INFO    fieldgate." in line for line in lines), lines


def test_a_multi_line_entry_carries_the_priority_on_every_line() -> None:
    out = io.StringIO()
    setup_logging("info", "journal", out)
    logging.getLogger("fieldgate.cli").error("2 problems in the configuration:\n  a\n  b")
    assert out.getvalue().splitlines() == [
        "<3>ERROR fieldgate.cli: 2 problems in the configuration:",
        "<3>  a",
        "<3>  b",
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_errors_are_limited_per_device_and_the_rest_counted() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter(TextFormatter()))
    clock = Clock()
    limiter = RepeatFilter(handler, burst=3, window=60, clock=clock)
    handler.addFilter(limiter)
    log = logging.getLogger("fieldgate.test.repeat")
    log.propagate = False
    log.addHandler(handler)
    try:
        for second in range(20):
            clock.now = 1000.0 + second
            log.error("%s: no answer (timeout after %ds)", "meter-1", 1)
            if second % 5 == 0:
                log.error("%s: no answer (timeout after %ds)", "meter-2", 1)
            log.info("%s: polled", "meter-1")  # below WARNING: never limited
        clock.now = 1061.0
        limiter.flush()
    finally:
        log.removeHandler(handler)

    lines = out.getvalue().splitlines()
    meter1 = [line for line in lines if "meter-1: no answer" in line and "suppressed" not in line]
    meter2 = [line for line in lines if "meter-2: no answer" in line and "suppressed" not in line]
    assert len(meter1) == 3
    assert len(meter2) == 3  # its own budget, untouched by meter-1's flood (4 sent, burst 3)
    assert sum("meter-1: polled" in line for line in lines) == 20
    summaries = [line for line in lines if "suppressed" in line]
    assert len(summaries) == 2
    assert summaries[0].startswith("<3>")
    assert (
        "suppressed 17 similar messages in 61s, the last: meter-1: no answer (timeout after 1s)"
        in summaries[0]
    )
    assert "suppressed 1 similar messages" in summaries[1] and "meter-2" in summaries[1]
    assert limiter.suppressed_total == 18
