"""`[uplink]` and `[uplink.token]`: defaults, Event Grid's limits, and every problem reported at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config.uplink import (
    FileTokenConfig,
    SignerTokenConfig,
    UplinkConfig,
    parse_uplink,
)
from gateway.mqtt_topics import fill_template
from gateway.schema import Problems, Table


def parse(text: str, tmp_path: Path) -> tuple[UplinkConfig, list[str]]:
    key = tmp_path / "issuer.key"
    key.write_text("not read at parse time")
    data = tomllib.loads(text.replace("KEY", str(key)))
    problems = Problems("gw.toml")
    table = Table(data["uplink"], "uplink", problems)
    return parse_uplink(table, gateway_id="gw-1"), problems.lines


MINIMAL = """
[uplink]
host = "ns.westeurope-1.ts.eventgrid.azure.net"
[uplink.token]
source = "signer"
key_file = "KEY"
issuer = "https://fieldgate.dev/issuer"
audience = "https://ns.ts.eventgrid.azure.net/"
"""


def test_a_minimal_uplink_gets_event_grid_friendly_defaults(tmp_path: Path) -> None:
    cfg, problems = parse(MINIMAL, tmp_path)
    assert problems == []
    assert (cfg.port, cfg.tls, cfg.ca_file, cfg.client_id, cfg.username) == (8883, True, None, "gw-1", None)
    assert (cfg.keepalive, cfg.session_expiry, cfg.auth_method, cfg.qos) == (60, 3600, "CUSTOM-JWT", 1)
    assert (cfg.max_inflight, cfg.max_message_bytes) == (20, 524288)
    assert cfg.refresh.enabled and cfg.refresh.fraction == 0.8
    assert cfg.birth is None and cfg.will is None
    assert isinstance(cfg.token, SignerTokenConfig)
    assert cfg.token.subject == "gw-1"  # the authentication name defaults to the session name
    assert cfg.token.audience == ("https://ns.ts.eventgrid.azure.net/",)


def test_a_full_uplink_section_is_read_into_frozen_types(tmp_path: Path) -> None:
    cfg, problems = parse(
        """
[uplink]
host = "127.0.0.1"
port = 1884
tls = false
client_id = "gw-1-session"
allow_retain = true  # the will below is retained
username = "gw-1"
keepalive = 1160
session_expiry = 7200
auth_method = "CUSTOM-JWT"
qos = 0
max_inflight = 50
max_message_bytes = 65536
[uplink.refresh]
fraction = 0.5
margin = 30
jitter = 1
timeout = 3
[uplink.reconnect]
initial = 0.5
max = 30
stable_after = 45
[uplink.birth]
topic = "sites/{site}/gateways/{gateway}/status"
payload = '{"state": "online", "gateway": "{gateway}"}'
[uplink.will]
topic = "sites/{site}/gateways/{gateway}/status"
payload = "offline"
retain = true
delay = 10
[uplink.token]
source = "signer"
key_file = "KEY"
kid = "k1"
issuer = "https://fieldgate.dev/issuer"
audience = ["https://ns.ts.eventgrid.azure.net/", "other"]
lifetime = 900
[uplink.token.claims]
site = "plant-7"
line = 3
publish_topics = ["sites/plant-7/#"]
""",
        tmp_path,
    )
    assert problems == []
    assert (cfg.port, cfg.tls, cfg.client_id, cfg.username, cfg.qos) == (
        1884,
        False,
        "gw-1-session",
        "gw-1",
        0,
    )
    assert cfg.refresh.timeout == 3 and cfg.reconnect.initial == 0.5 and cfg.reconnect.maximum == 30
    assert cfg.reconnect.stable_after == 45
    assert cfg.will is not None and cfg.will.retain and cfg.will.delay == 10
    assert isinstance(cfg.token, SignerTokenConfig)
    assert cfg.token.subject == "gw-1"  # username wins over client id
    assert cfg.token.claims == (("site", "plant-7"), ("line", 3), ("publish_topics", ("sites/plant-7/#",)))
    assert cfg.birth is not None
    topic = fill_template(cfg.birth.topic, gateway="gw-1", site="plant-7")
    payload = fill_template(cfg.birth.payload, gateway="gw-1", site="plant-7")
    assert topic == "sites/plant-7/gateways/gw-1/status"
    assert payload == '{"state": "online", "gateway": "gw-1"}'
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]


def test_a_file_token_source(tmp_path: Path) -> None:
    cfg, problems = parse(
        """
[uplink]
host = "h"
[uplink.token]
source = "file"
path = "/run/fieldgate/token.jwt"
expiry_warning = 120
""",
        tmp_path,
    )
    assert problems == []
    assert cfg.token == FileTokenConfig(path=Path("/run/fieldgate/token.jwt"), expiry_warning=120)


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    _, problems = parse(
        """
[uplink]
host = "h"
keepalive = 3600
qos = 2
max_message_bytes = 1048576
session_expiry = 86400
auth_method = "SAS"
colour = "blue"
[uplink.reconnect]
initial = 10
max = 1
[uplink.birth]
topic = "gw/{gateway}/{plant}/#"
[uplink.token]
source = "signer"
key_file = "/nowhere/issuer.key"
issuer = "i"
lifetime = 2
[uplink.token.claims]
exp = 1
ratio = 0.5
big = 9999999999
""",
        tmp_path,
    )
    text = "\n".join(problems)
    expected = [
        "gw.toml: uplink.keepalive = 3600: must be at most 1160",
        "gw.toml: uplink.qos = 2: QoS 2 is not supported",
        "gw.toml: uplink.max_message_bytes = 1048576: must be at most 524288",
        "gw.toml: uplink.session_expiry = 86400: must be at most 28800",
        'gw.toml: uplink.auth_method = "SAS": expected one of "CUSTOM-JWT", "OAUTH2-JWT"',
        "gw.toml: uplink.colour: unknown key",
        "gw.toml: uplink.reconnect.max = 1: must be at least reconnect.initial",
        'gw.toml: uplink.birth.topic = "gw/{gateway}/{plant}/#": unknown placeholder {plant}',
        'uplink.birth.topic = "gw/{gateway}/{plant}/#": a topic to publish to cannot contain the wildcards',
        'gw.toml: uplink.token.key_file = "/nowhere/issuer.key": no such file',
        "gw.toml: uplink.token.audience: is required",
        "gw.toml: uplink.token.lifetime = 2: must be at least 5",
        "gw.toml: uplink.token.claims.exp: is set by the signer itself",
        "gw.toml: uplink.token.claims.ratio = 0.5: a claim must be a string, a 32-bit integer or an array",
        "gw.toml: uplink.token.claims.big = 9999999999: integer claims must fit in 32 bits",
    ]
    for line in expected:
        assert line in text, f"missing problem: {line}\nall problems:\n{text}"


def test_the_token_section_is_required_and_its_source_known(tmp_path: Path) -> None:
    _, problems = parse('[uplink]\nhost = "h"\n', tmp_path)
    assert problems == ["gw.toml: uplink.token: is required"]
    _, problems = parse('[uplink]\nhost = "h"\n[uplink.token]\nsource = "vault"\npath = "/x"\n', tmp_path)
    assert (
        'gw.toml: uplink.token.source = "vault": expected one of "signer", "file", "azure", "oauth2"'
        in problems
    )


def test_plain_mqtt_to_another_machine_is_refused_unless_explicitly_allowed(tmp_path: Path) -> None:
    plain = MINIMAL.replace('net"\n', 'net"\ntls = false\n', 1)
    _, problems = parse(plain, tmp_path)
    assert len(problems) == 1
    assert "uplink.tls = false" in problems[0] and "uplink.allow_plaintext = true" in problems[0]

    _, problems = parse(plain.replace("tls = false", "tls = false\nallow_plaintext = true"), tmp_path)
    assert problems == []
    local = plain.replace("ns.westeurope-1.ts.eventgrid.azure.net", "127.0.0.1")
    assert parse(local, tmp_path)[1] == []


def test_limits_default_to_event_grid_and_an_older_namespace_sets_100(tmp_path: Path) -> None:
    cfg, problems = parse(MINIMAL, tmp_path)
    assert problems == []
    limits = cfg.limits
    assert (limits.messages_per_second, limits.bytes_per_second) == (1000, 1_000_000)
    assert (limits.inflight_messages, limits.inflight_bytes) == (1000, 65_536)
    cfg, problems = parse(
        MINIMAL + "[uplink.limits]\nmessages_per_second = 100\nmax_attempts = 5\n", tmp_path
    )
    assert problems == []
    assert (cfg.limits.messages_per_second, cfg.limits.max_attempts) == (100, 5)
    assert cfg.limits.bytes_per_second == 1_000_000


def test_bad_limits_are_named_with_their_key_path(tmp_path: Path) -> None:
    _, problems = parse(
        MINIMAL
        + """
[uplink.limits]
messages_per_second = 0
inflight_bytes = "64k"
max_attempts = 0
burst = 3
""",
        tmp_path,
    )
    text = "\n".join(problems)
    assert "uplink.limits.messages_per_second" in text and "at least 0.1" in text
    assert "uplink.limits.inflight_bytes" in text and "expected an integer" in text
    assert "uplink.limits.max_attempts" in text
    assert "uplink.limits.burst" in text
    assert len(problems) == 4
