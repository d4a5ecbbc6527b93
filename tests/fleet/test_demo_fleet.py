"""`./deploy/demo.sh --fleet`: three gateways enrol with `fieldgate identity new`, get their own clients at
the local issuer, connect, refresh in session, deliver, and the demo prints a summary per gateway."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.broker import free_port

pytestmark = pytest.mark.broker

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "demo.sh"
LINE = re.compile(
    r"^  (gw-[abc]) \(site ([abc])\): (\d+) connection\(s\), (\d+) in-session refreshes \(AUTH 0x19\), "
    r"(\d+) tokens from the issuer, (\d+) delivered$",
    re.M,
)


def test_the_fleet_demo_runs_three_enrolled_gateways_and_summarises_each() -> None:
    result = subprocess.run(
        [str(DEMO), "--fleet", "--duration", "20", "--token-lifetime", "8",
         "--port", str(free_port()), "--issuer-port", str(free_port())],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    for gateway in ("gw-a", "gw-b", "gw-c"):
        assert f"demo: enrolled {gateway}" in out
    rows = {m[0]: m[1:] for m in LINE.findall(out)}
    assert sorted(rows) == ["gw-a", "gw-b", "gw-c"], out
    for gateway, (site, connects, refreshes, tokens, delivered) in rows.items():
        assert site == gateway[-1]
        assert int(connects) >= 1 and int(delivered) > 0, out
        # 8-second tokens over 20 seconds: each gateway re-authenticated in session with a new token.
        assert int(refreshes) >= 1 and int(tokens) >= 2, out
