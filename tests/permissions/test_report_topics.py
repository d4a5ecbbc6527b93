"""The topics check-config and `fieldgate token` check against the token: every topic the gateway will use."""

from __future__ import annotations

from pathlib import Path

from gateway.config import load_config
from gateway.permissions.report import device_topics

CONFIG = """
[gateway]
id = "gw-1"
site = "plant-1"

[telemetry]
format = "compact"
{extra}

[devices.boiler]
driver = "simulated"

[devices.boiler.points.temperature]
signal = "sine"
"""


def topics(tmp_path: Path, extra: str) -> list[tuple[str, str]]:
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG.format(extra=extra))
    return [(t.label, t.topic) for t in device_topics(load_config(path, offline=True))]


def test_with_a_gateway_batch_its_topic_is_checked_too(tmp_path: Path) -> None:
    assert ("gateway batch", "sites/plant-1/gw-1/telemetry") in topics(tmp_path, "gateway_batch = 1")


def test_without_a_gateway_batch_only_device_topics_are_checked(tmp_path: Path) -> None:
    assert [label for label, _ in topics(tmp_path, "")] == ["device boiler"]
