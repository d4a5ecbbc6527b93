"""`check-config` warns, once, when a gateway signs its own tokens with an issuer key for a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.errors import ExitCode
from tests.cli.test_identity import write_config


def signer_config(directory: Path, host: str) -> Path:
    key = directory / "issuer.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    config = write_config(
        directory,
        f"""source = "signer"
key_file = "{key}"
issuer = "https://fieldgate.example/issuer"
audience = "https://plants.westeurope-1.ts.eventgrid.azure.net/"
""",
    )
    text = config.read_text().replace('host = "127.0.0.1"', f'host = "{host}"')
    if host not in ("127.0.0.1", "localhost"):
        text = text.replace("tls = false", "tls = true")  # plain MQTT is refused off this host
    config.write_text(text)
    return config


def test_a_signer_config_for_a_namespace_gets_one_warning_naming_the_risk_and_the_alternatives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = signer_config(tmp_path, "plants.westeurope-1.ts.eventgrid.azure.net")
    assert main(["check-config", str(config)]) == ExitCode.OK  # a warning, not a refusal
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    (warning,) = warnings
    assert f"issuer key {tmp_path / 'issuer.key'} for plants.westeurope-1.ts.eventgrid.azure.net" in warning
    assert "can mint tokens for any gateway and any site" in warning
    for alternative in ('source = "oauth2"', '"file"', '"azure"', "fieldgate identity new"):
        assert alternative in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_signer_config_for_a_local_broker_is_not_warned_about(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(signer_config(tmp_path, host))]) == ExitCode.OK
    assert "warning:" not in capsys.readouterr().out
