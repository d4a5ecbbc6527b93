"""A field engineer checks config files before deploying them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.schema import Secret

REPO = Path(__file__).resolve().parent.parent
GOLDEN = sorted(p.name for p in (REPO / "tests" / "configs").iterdir() if p.is_dir())
EXAMPLES = sorted(p.name for p in (REPO / "deploy" / "examples").glob("*.toml"))


@pytest.mark.parametrize("case", GOLDEN)
def test_broken_config_fails_with_every_problem_listed(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    expected = (REPO / "tests" / "configs" / case / "expected.txt").read_text()

    status = main(["check-config", f"tests/configs/{case}/config.toml"])

    captured = capsys.readouterr()
    assert status == 1
    assert captured.err == expected
    assert captured.out == ""


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_shipped_example_passes_check_config(
    example: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    # --offline: the examples name key files and serial ports of the target host, not of this machine.
    status = main(["check-config", "--offline", f"deploy/examples/{example}"])

    out = capsys.readouterr().out
    assert status == 0, out
    assert f"config deploy/examples/{example}: OK" in out


def test_summary_lists_devices_points_and_topics(capsys: pytest.CaptureFixture[str], repo_root: Path) -> None:
    status = main(["check-config", str(repo_root / "deploy/examples/simulated.toml")])

    out = capsys.readouterr().out
    assert status == 0
    assert "2 devices, 4 points" in out
    assert "topic sites/plant-1/gw-demo/boiler/telemetry (one message per poll cycle)" in out
    assert "- flow [m3/h] -> sites/plant-1/gw-demo/pump-1/flow" in out


def test_config_objects_are_frozen(repo_root: Path) -> None:
    config = load_config(repo_root / "deploy/examples/simulated.toml")

    with pytest.raises(AttributeError):
        config.gateway.id = "other"  # type: ignore[misc]


def test_secret_references_never_show_their_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FG_TEST_SECRET", "s3cr3t-value")
    secret = Secret("env:FG_TEST_SECRET")

    assert secret.reveal() == "s3cr3t-value"
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in str(secret)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")

    assert str(tmp_path / "nope.toml") in str(info.value)
    assert "cannot read the file" in str(info.value)
