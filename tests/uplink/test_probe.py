"""A user runs `fieldgate probe --config FILE` against a broker and gets a table of how it behaves: the
CONNACK limits, the answer to a refused re-authentication, what token expiry does, and the answer to an
over-rate burst. Here the broker is the local one in each of its modes (no quotas, PUBACK 0x97
throttling, DISCONNECT 0x97 throttling); the probe runs as the real `fieldgate` process."""

from __future__ import annotations

import re
from pathlib import Path

import jwt
import pytest

from gateway.uplink.probe import altered_signature
from tests.support.broker import DEFAULT_AUDIENCE, LocalBroker
from tests.support.process import GatewayProcess
from tests.support.tokens import generate_rsa_key_pair, mint_token

pytestmark = pytest.mark.broker

TOPIC = "sites/lab/gw-probe/fieldgate-probe/telemetry"


def write_config(
    tmp_path: Path, broker: LocalBroker, *, lifetime: int = 300, grants: str = "sites/lab/#"
) -> Path:
    config = tmp_path / "fieldgate.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-probe"
site = "lab"
state_dir = "{tmp_path / "state"}"

[uplink]
host = "{broker.host}"
port = {broker.port}
tls = false

[uplink.token]
source = "signer"
key_file = "{broker.private_key_path}"
issuer = "{broker.issuer}"
subject = "gw-probe"
audience = "{broker.audience}"
lifetime = {lifetime}

[uplink.token.claims]
publish_topics = ["{grants}"]

[devices.alpha]
driver = "simulated"
interval = 1

[[devices.alpha.points]]
name = "temperature"
signal = "sine"
"""
    )
    return config


async def probe(config: Path, *args: str, timeout: float = 120.0) -> tuple[int, dict[str, str], list[str]]:
    """Run the probe to its end: exit code, the table's rows (check -> result), and all output lines."""
    process = await GatewayProcess(["probe", "--config", str(config), *args]).start()
    try:
        code = await process.wait(timeout=timeout)
    finally:
        await process.kill()
    rows = {}
    for line in process.stdout:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0] != "check":
            rows[cells[0]] = cells[1]
    return code, rows, process.stdout + process.stderr


def without_quotas_the_burst_is_not_throttled(row: str) -> None:
    assert "0x97" not in row and "DISCONNECT" not in row, row
    assert re.search(r"PUBACK 0x10 No matching subscribers x\d+", row), row
    assert "no throttling seen" in row


async def test_the_table_shows_the_connack_limits_and_mosquittos_answer_to_a_refused_reauthentication(
    tmp_path: Path,
) -> None:
    with LocalBroker(keys_dir=tmp_path / "keys") as broker:
        config = write_config(tmp_path, broker)
        code, rows, lines = await probe(config, "--rate", "200", "--burst-seconds", "0.5")
        log = broker.log_lines()

    assert code == 0, lines
    # Without --topic, the burst goes to the telemetry topic of a device named fieldgate-probe.
    assert any(line.startswith(f"burst:     topic {TOPIC!r}") for line in lines), lines
    assert rows["connect"] == "CONNACK 0x00 Success"
    # The local broker's mosquitto config: Event Grid's limits.
    assert rows["maximum packet size"] == "524288 bytes"
    assert rows["receive maximum"] == "20"
    assert rows["topic alias maximum"] == "10"
    assert rows["retain available"] == "no"
    assert rows["wildcard subscription available"].startswith("yes")
    assert rows["shared subscription available"].startswith("yes")
    # mosquitto 2.0.11 refuses a re-authentication with a CONNACK on the live connection, then closes it.
    assert rows["refused re-authentication"].startswith("CONNACK 0x87 Not authorized"), rows
    assert rows["refused re-authentication"].endswith("then the connection closed")
    assert rows["token expiry without refresh"] == "not tested (--expiry-wait 0)"
    without_quotas_the_burst_is_not_throttled(rows["over-rate burst"])
    # The broker refused the altered token for its signature; the probe used its own client id.
    assert any("gw-probe-probe" in line and "signature" in line for line in log), log[-20:]
    # Neither the token nor its altered copy reaches the output.
    assert not any(re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", line) for line in lines)


async def test_with_puback_throttling_the_burst_row_shows_0x97(tmp_path: Path) -> None:
    with LocalBroker(keys_dir=tmp_path / "keys", quotas=True, publish_rate=20) as broker:
        config = write_config(tmp_path, broker)
        code, rows, lines = await probe(config, "--rate", "400", "--burst-seconds", "1")
        assert code == 0, lines
        burst = rows["over-rate burst"]
        refused = re.search(r"PUBACK 0x97 Quota exceeded x(\d+)", burst)
        assert refused is not None, burst
        # The count in the table is what the broker says it answered.
        broker.wait_for_stats(
            lambda s: s["sessions"].get("gw-probe-probe", {}).get("puback_0x97") == int(refused.group(1)),
            timeout=30.0,
        )
    assert "DISCONNECT" not in burst
    assert re.search(r"PUBACK 0x10 No matching subscribers x\d+", burst), burst
    assert rows["receive maximum"] == "20"


async def test_with_disconnect_throttling_the_burst_row_shows_a_disconnect_0x97(tmp_path: Path) -> None:
    with LocalBroker(
        keys_dir=tmp_path / "keys", quotas=True, publish_rate=20, throttle="disconnect"
    ) as broker:
        config = write_config(tmp_path, broker)
        code, rows, lines = await probe(config, "--rate", "400", "--burst-seconds", "1")

    assert code == 0, lines
    burst = rows["over-rate burst"]
    assert "then DISCONNECT 0x97 Quota exceeded" in burst, burst
    assert "PUBACK 0x97" not in burst
    # The other checks ran on connections of their own.
    assert rows["refused re-authentication"].startswith("CONNACK 0x87 Not authorized"), rows


async def test_a_short_lived_token_shows_what_the_broker_does_at_expiry(tmp_path: Path) -> None:
    with LocalBroker(keys_dir=tmp_path / "keys") as broker:
        config = write_config(tmp_path, broker, lifetime=8)
        code, rows, lines = await probe(
            config, "--expiry-wait", "60", "--rate", "100", "--burst-seconds", "0.5"
        )

    assert code == 0, lines
    # The plugin disconnects a connection whose token expired without a refresh.
    assert rows["token expiry without refresh"].startswith("DISCONNECT 0x98 Administrative action"), rows
    assert "s after exp" in rows["token expiry without refresh"]


async def test_a_long_lived_token_is_not_waited_for(tmp_path: Path) -> None:
    with LocalBroker(keys_dir=tmp_path / "keys") as broker:
        config = write_config(tmp_path, broker, lifetime=3600)
        code, rows, lines = await probe(
            config, "--expiry-wait", "30", "--rate", "100", "--burst-seconds", "0.2"
        )

    assert code == 0, lines
    assert rows["token expiry without refresh"].startswith("not tested: the token expires in"), rows
    assert "beyond --expiry-wait 30 s" in rows["token expiry without refresh"]


async def test_a_topic_the_token_does_not_grant_shows_as_0x87_in_the_burst_row(tmp_path: Path) -> None:
    with LocalBroker(keys_dir=tmp_path / "keys") as broker:
        config = write_config(tmp_path, broker, grants="other/#")
        code, rows, lines = await probe(config, "--rate", "50", "--burst-seconds", "0.2")

    assert code == 0, lines
    assert re.search(r"PUBACK 0x87 Not authorized x\d+", rows["over-rate burst"]), rows


async def test_a_broker_that_refuses_the_identity_is_exit_1_with_the_reason(tmp_path: Path) -> None:
    with LocalBroker(keys_dir=tmp_path / "keys", issuer="https://someone-else.example/") as broker:
        config = write_config(tmp_path, broker)
        config.write_text(config.read_text().replace(broker.issuer, "https://fieldgate.dev/issuer"))
        code, rows, lines = await probe(config, "--burst-seconds", "0.2")

    assert code == 1, lines
    assert rows["connect"] == "connection refused: CONNACK 0x87 Not authorized"
    assert "over-rate burst" not in rows


def test_the_altered_token_keeps_header_and_claims_and_fails_only_its_signature(tmp_path: Path) -> None:
    private, public = generate_rsa_key_pair(tmp_path, "issuer")
    for n in range(20):  # tokens whose signatures start with every kind of character
        token = mint_token(private, sub=f"gw-{n}")
        bad = altered_signature(token)
        assert bad != token and bad.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]
        key = public.read_text()
        assert jwt.decode(token, key, algorithms=["RS256"], audience=DEFAULT_AUDIENCE)["sub"] == f"gw-{n}"
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(bad, key, algorithms=["RS256"], audience=DEFAULT_AUDIENCE)
