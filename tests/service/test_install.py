"""An operator installs fieldgate with deploy/install.sh; here into a directory tree (``--root``) that
stands for the Pi's root file system: files, owners and modes as on the device, nothing touched twice."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"

Manifest = dict[str, tuple[object, ...]]


def install(root: Path, *args: str) -> str:
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def manifest(root: Path) -> Manifest:
    """Every path under ``root``: type, mode, owner, group, mtime and content hash (or link target)."""
    entries: Manifest = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            detail: object = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            detail = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            detail = None
        entries[str(path.relative_to(root))] = (
            info.st_mode,
            info.st_uid,
            info.st_gid,
            info.st_mtime_ns,
            detail,
        )
    return entries


def ids(root: Path) -> tuple[int, int, list[str]]:
    """uid and gid of ``fieldgate`` in the tree's passwd/group, and the members of dialout."""
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    dialout = groups["dialout"][3].split(",") if groups["dialout"][3] else []
    return int(passwd["fieldgate"][2]), int(groups["fieldgate"][2]), dialout


def owner_mode(path: Path) -> tuple[int, int, str]:
    info = path.stat()
    return info.st_uid, info.st_gid, oct(stat.S_IMODE(info.st_mode))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("pi-root")
    install(root)
    yield root


def test_the_tree_holds_program_unit_config_and_state_with_their_owners(root: Path) -> None:
    uid, gid, dialout = ids(root)
    assert dialout == ["fieldgate"]
    assert uid < 1000 and uid != 0
    passwd_line = next(
        line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("fieldgate:")
    )
    assert passwd_line.endswith(":/var/lib/fieldgate:/usr/sbin/nologin")

    assert owner_mode(root / "etc/fieldgate") == (0, gid, "0o750")
    assert owner_mode(root / "etc/fieldgate/fieldgate.toml") == (0, gid, "0o640")
    assert owner_mode(root / "var/lib/fieldgate") == (uid, gid, "0o750")
    assert owner_mode(root / "etc/systemd/system/fieldgate.service") == (0, 0, "0o644")
    assert (root / "etc/systemd/system/fieldgate.service").read_bytes() == (
        REPO / "systemd/fieldgate.service"
    ).read_bytes()
    assert (root / "etc/fieldgate/fieldgate.toml").read_bytes() == (
        REPO / "drivers/simulated/example.toml"
    ).read_bytes()
    assert owner_mode(root / "opt/fieldgate/venv") == (0, 0, "0o755")

    assert os.readlink(root / "usr/local/bin/fieldgate") == "/opt/fieldgate/venv/bin/fieldgate"
    fieldgate = root / "opt/fieldgate/venv/bin/fieldgate"
    version = subprocess.run([str(fieldgate), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("fieldgate ")
    # The metrics extra comes with it, so enabling [metrics] needs no pip on the device.
    subprocess.run(
        [str(root / "opt/fieldgate/venv/bin/python"), "-c", "import prometheus_client"], check=True
    )


def test_a_second_run_changes_nothing(root: Path) -> None:
    before = manifest(root)
    output = install(root)
    assert "nothing to change" in output
    assert manifest(root) == before


def test_an_edited_config_is_kept_and_key_files_are_locked_down(root: Path) -> None:
    _, gid, _ = ids(root)
    config = root / "etc/fieldgate/fieldgate.toml"
    config.write_text(config.read_text() + "\n# my devices\n")
    key = root / "etc/fieldgate/device-key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)

    install(root)

    assert config.read_text().endswith("# my devices\n")
    assert owner_mode(key) == (0, gid, "0o640")


def test_upgrade_keeps_config_and_data_and_uninstall_keeps_them_until_purge(
    root: Path, tmp_path: Path
) -> None:
    config = root / "etc/fieldgate/fieldgate.toml"
    config_text = config.read_text()
    stored = root / "var/lib/fieldgate/store.sqlite"
    stored.write_bytes(b"messages waiting")
    # A release wheel, built from a copy so that the checkout stays clean.
    source = tmp_path / "source"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "gateway", "drivers"):
        subprocess.run(["cp", "-r", str(REPO / part), str(source)], check=True)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
    subprocess.run([*build, "-w", str(wheels), str(source)], check=True, capture_output=True)
    wheel = next(wheels.glob("fieldgate-*.whl"))

    upgraded = install(root, "--wheel", str(wheel))

    assert "building the virtual environment" in upgraded
    assert config.read_text() == config_text and stored.read_bytes() == b"messages waiting"
    assert not (root / "opt/fieldgate/venv.old").exists() and not (root / "opt/fieldgate/venv.new").exists()
    fieldgate = root / "opt/fieldgate/venv/bin/fieldgate"
    assert fieldgate.read_text().startswith(f"#!{root}/opt/fieldgate/venv/bin/python")
    subprocess.run([str(fieldgate), "check-config", str(config)], check=True, capture_output=True)

    install(root, "--uninstall")

    assert not (root / "opt/fieldgate").exists()
    assert not (root / "usr/local/bin/fieldgate").is_symlink()
    assert not (root / "etc/systemd/system/fieldgate.service").exists()
    assert config.read_text() == config_text and stored.read_bytes() == b"messages waiting"
    assert ids(root)[2] == ["fieldgate"]

    install(root, "--uninstall", "--purge")

    assert not (root / "etc/fieldgate").exists() and not (root / "var/lib/fieldgate").exists()
    assert "fieldgate" not in (root / "etc/passwd").read_text()
    assert "fieldgate" not in (root / "etc/group").read_text()
