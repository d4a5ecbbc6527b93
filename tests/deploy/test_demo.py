"""The demo as a new user runs it: ``./deploy/demo.sh --duration 20`` ends by itself and its summary shows the
gateway delivered through one connection that refreshed its token in session."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.broker import free_port

pytestmark = pytest.mark.broker


def test_a_twenty_second_demo_delivers_through_one_connection_and_prints_its_summary(repo_root: Path) -> None:
    command = [str(repo_root / "deploy" / "demo.sh"), "--duration", "20", "--token-lifetime", "8"]
    command += ["--port", str(free_port()), "--modbus-port", str(free_port())]
    result = subprocess.run(
        command,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,  # the first run may install packages and build the broker plugin
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    summary = out[out.index("demo summary") :]
    print(summary)
    broker = re.search(r"broker: (\d+) connection\(s\) accepted, (\d+) in-session refreshes", summary)
    assert broker is not None, summary
    connects, refreshes = int(broker[1]), int(broker[2])
    # 8-second tokens over 20 seconds: refreshed in session, never by reconnecting.
    assert connects == 1 and refreshes >= 1, summary
    gateway = re.search(r"gateway: stats: readings in (\d+).*?messages out (\d+), delivered (\d+)", summary)
    assert gateway is not None, summary
    readings, messages, delivered = (int(g) for g in gateway.groups())
    assert readings > 0 and messages > 0 and delivered > 0, summary
    assert "Traceback" not in out + result.stderr
