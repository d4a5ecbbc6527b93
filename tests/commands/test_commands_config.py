"""``[commands]`` in the config file: defaults, a full section, and every mistake reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.config.commands import CommandsConfig
from gateway.errors import ConfigError

BASE = """
[gateway]
id = "gw-1"
site = "plant"

[devices.boiler]
driver = "simulated"
[[devices.boiler.points]]
name = "t"
signal = "constant"
values = [1]
"""


def load(tmp_path: Path, text: str) -> CommandsConfig | None:
    path = tmp_path / "gw.toml"
    path.write_text(BASE + text)
    return load_config(path).commands


def test_no_section_no_commands(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None


def test_defaults_and_a_full_section(tmp_path: Path) -> None:
    assert load(tmp_path, "[commands]\n") == CommandsConfig()
    cfg = load(
        tmp_path,
        """
[commands]
topic = "cmd/{gateway}/{device}/#"
devices = ["boiler"]
timeout = 2.5
queue = 3
dedup = 64
max_payload = 1024
""",
    )
    assert cfg == CommandsConfig("cmd/{gateway}/{device}/#", ("boiler",), 2.5, 3, 64, 1024)
    assert cfg.command_filter(gateway="gw-1", site="plant", device="boiler", driver="simulated") == (
        "cmd/gw-1/boiler/#"
    )


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            """
[commands]
topic = "cmd/all/#"
devices = ["boiler", "pump"]
timeout = 0
queue = 0
max_payload = 10
colour = "red"
""",
        )
    problems = "\n".join(caught.value.problems)
    assert 'commands.topic = "cmd/all/#": needs {device}: each device has its own command topic' in problems
    assert "commands.devices = \"pump\": no device 'pump' in [devices]" in problems
    assert "commands.timeout = 0: must be greater than 0" in problems
    assert "commands.queue = 0: must be at least 1" in problems
    assert "commands.max_payload = 10: must be at least 64" in problems
    assert "commands.colour" in problems


def test_responses_go_to_their_own_topics_which_must_not_overlap_the_commands(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[commands]\nresponse_topic = "replies/#"\n')
    assert cfg is not None and cfg.response_topic == "replies/#"
    assert CommandsConfig().response_filter(gateway="gw-1", site="plant", device="boiler", driver="x") == (
        "sites/plant/gw-1/boiler/responses/#"
    )
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[commands]\nresponse_topic = "sites/{site}/{gateway}/{device}/commands/answers"\n')
    (problem,) = caught.value.problems
    assert "commands.response_topic" in problem and "overlaps the command topic" in problem
