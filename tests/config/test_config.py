"""A field engineer checks config files before deploying them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.schema import Secret

REPO = Path(__file__).resolve().parents[2]
GOLDEN = sorted(p.name for p in (REPO / "tests" / "configs").iterdir() if p.is_dir())
EXAMPLES = sorted(str(p.relative_to(REPO)) for p in (REPO / "drivers").glob("*/example*.toml"))


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
    status = main(["check-config", "--offline", example])

    out = capsys.readouterr().out
    assert status == 0, out
    assert f"config {example}: OK" in out


def test_summary_lists_devices_points_and_topics(capsys: pytest.CaptureFixture[str], repo_root: Path) -> None:
    status = main(["check-config", str(repo_root / "drivers/simulated/example.toml")])

    out = capsys.readouterr().out
    assert status == 0
    assert "2 devices, 4 points" in out
    assert "topic sites/plant-1/gw-demo/boiler/telemetry (one message per poll cycle)" in out
    assert "- flow [m3/h] -> sites/plant-1/gw-demo/pump-1/flow" in out
    assert "payload: default JSON, QoS 1" in out


def test_summary_names_the_compact_payload_its_point_lists_and_gateway_batch(
    capsys: pytest.CaptureFixture[str], repo_root: Path, tmp_path: Path
) -> None:
    config = tmp_path / "compact.toml"
    text = (repo_root / "drivers/simulated/example.toml").read_text()
    config.write_text(
        text.replace(
            "[telemetry]", "[telemetry]\nformat = 'compact'\ngateway_batch = 1\npoint_lists = true", 1
        )
        if "[telemetry]" in text
        else text + "\n[telemetry]\nformat = 'compact'\ngateway_batch = 1\npoint_lists = true\n"
    )

    status = main(["check-config", str(config)])

    out = capsys.readouterr().out
    assert status == 0, out
    assert (
        "payload: compact JSON, QoS 1, point lists (each sent whole every 600 s), "
        "gateway batch every 1 s on sites/plant-1/gw-demo/telemetry (<= 49152 bytes)"
    ) in out


def test_config_objects_are_frozen(repo_root: Path) -> None:
    config = load_config(repo_root / "drivers/simulated/example.toml")

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


def test_simulated_points_keyed_by_name_or_listed_with_names_give_the_same_config(tmp_path: Path) -> None:
    head = '[gateway]\nid = "gw-1"\nsite = "plant-1"\n[devices.boiler]\ndriver = "simulated"\n'
    keyed = tmp_path / "keyed.toml"
    keyed.write_text(
        head
        + '[devices.boiler.points.temperature]\nunit = "degC"\n[devices.boiler.points.pressure]\nmax = 4\n'
    )
    listed = tmp_path / "listed.toml"
    listed.write_text(
        head + 'points = [{ name = "temperature", unit = "degC" }, { name = "pressure", max = 4 }]\n'
    )

    keyed_setups = load_config(keyed).drivers
    listed_setups = load_config(listed).drivers

    assert [s.config for s in keyed_setups] == [s.config for s in listed_setups]
    assert [p.name for p in keyed_setups[0].config.devices[0].points] == ["temperature", "pressure"]
