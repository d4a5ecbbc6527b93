"""An operator checks a gateway's token against Event Grid's limits before deploying: ``fieldgate token``
(every source) and ``check-config`` (the sources it can use offline) name the limit a token breaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.errors import ExitCode
from tests.support.tokens import generate_rsa_key_pair, mint_token

HOST = "ns.westeurope-1.ts.eventgrid.azure.net"
AUD = f"https://{HOST}/"


def file_config(tmp_path: Path, token: str) -> Path:
    (tmp_path / "token.jwt").write_text(token)
    path = tmp_path / "fieldgate.toml"
    path.write_text(
        '[gateway]\nid = "gw-1"\nsite = "plant-1"\n'
        f'[uplink]\nhost = "{HOST}"\n'
        '[uplink.token]\nsource = "file"\npath = "token.jwt"\n'
    )
    return path


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return generate_rsa_key_pair(tmp_path, "issuer")[0]


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (
            {"extra_claims": {"padding": "x" * 9000}},
            "limits:    the token is {size} bytes; Event Grid's Authentication Data holds at most 8192",
        ),
        ({"sub": "g" * 129}, "limits:    claim sub: the authentication name (sub) is 129 characters"),
        ({"aud": "api://fieldgate"}, "limits:    claim aud: 'api://fieldgate' is in none of Event Grid's"),
        ({"aud": [AUD, f"https://{HOST}"]}, f"limits:    claim aud: 'https://{HOST}' is in none"),
    ],
    ids=["over-8KB", "sub-over-128", "aud-scheme", "aud-without-slash"],
)
def test_a_token_over_a_limit_is_named_by_token_and_check_config(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str], claims: dict[str, object], expected: str
) -> None:
    minted = mint_token(key, **{"sub": "gw-1", "aud": AUD, **claims})  # type: ignore[arg-type]
    path = file_config(tmp_path, minted)
    expected = expected.format(size=len(minted))

    code = main(["token", "--config", str(path)])
    out = capsys.readouterr().out
    assert code == ExitCode.FAILURE
    assert expected in out
    assert minted not in out

    code = main(["check-config", str(path)])
    out = capsys.readouterr().out
    assert code == ExitCode.FAILURE
    assert expected in out


@pytest.mark.parametrize("aud", [AUD, HOST, f"{HOST}/", [HOST, AUD]], ids=["url", "host", "host/", "array"])
def test_a_token_in_every_documented_audience_form_fits(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str], aud: str | list[str]
) -> None:
    path = file_config(tmp_path, mint_token(key, sub="gw-1", aud=aud))

    assert main(["token", "--config", str(path)]) == ExitCode.OK
    assert "limits:    fits Event Grid's limits (size, sub, aud)" in capsys.readouterr().out
    assert main(["check-config", str(path)]) == ExitCode.OK
