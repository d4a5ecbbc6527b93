"""On start, fieldgate warns when a private key or secret file it uses can be read by others."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.config import load_config
from gateway.schema import Secret
from gateway.service.keyfiles import exposure, secret_files
from tests.service.conftest import SIMULATED, start_gateway, write_config


# Shaped like the uplink's [uplink] config: the walk knows no uplink type.
@dataclass(frozen=True)
class SignerTokenConfig:
    key_file: Path
    issuer: str


@dataclass(frozen=True)
class FileTokenConfig:
    path: Path


@dataclass(frozen=True)
class UplinkConfig:
    host: str
    token: SignerTokenConfig | FileTokenConfig
    ca_file: Path | None
    client_secret: Secret | None = None


def test_secret_files_are_found_in_any_config_shape(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, SIMULATED))
    signer = UplinkConfig(
        host="broker",
        token=SignerTokenConfig(key_file=Path("/etc/fieldgate/device.key"), issuer="me"),
        ca_file=Path("/etc/ssl/ca.pem"),
        client_secret=Secret("file:/etc/fieldgate/client-secret"),
    )
    from_file = UplinkConfig(host="broker", token=FileTokenConfig(Path("/run/agent/token.jwt")), ca_file=None)

    found = secret_files(_with_uplink(config, signer))
    assert found == [Path("/etc/fieldgate/device.key"), Path("/etc/fieldgate/client-secret")]
    assert secret_files(_with_uplink(config, from_file)) == [Path("/run/agent/token.jwt")]


def _with_uplink(config: object, uplink: object) -> object:
    import dataclasses

    return dataclasses.replace(config, uplink=uplink)  # type: ignore[type-var]


def test_which_modes_expose_a_secret(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    key.write_text("secret")
    own = os.getegid()
    cases = {0o600: None, 0o640: None, 0o644: "every user", 0o604: "every user", 0o660: "change it"}
    for mode, why in cases.items():
        key.chmod(mode)
        result = exposure(key, groups={own})
        assert (result is None) if why is None else (why in (result or "")), (oct(mode), result)
    key.chmod(0o640)
    assert "which this service is not in" in (exposure(key, groups={own + 1}) or "")
    assert exposure(tmp_path / "missing.key") is None


async def test_the_gateway_warns_at_start_about_a_world_readable_secret(tmp_path: Path) -> None:
    secret = tmp_path / "device-password"
    secret.write_text("hunter2")
    secret.chmod(0o644)
    config = write_config(
        tmp_path,
        f"""
[devices.meter]
driver = "faulty"
secret = "file:{secret}"
""",
    )
    process = await start_gateway(config)
    try:
        line = await process.wait_for(lambda s: "secret file" in s, stream="stderr")
        await process.wait_for(lambda s: "started" in s, stream="stderr")
    finally:
        await process.kill()
    assert f"WARNING fieldgate.service: secret file {secret} is open to others: mode 0644" in line
    assert "hunter2" not in "\n".join(process.stderr)
