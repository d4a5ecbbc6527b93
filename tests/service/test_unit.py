"""The systemd unit: systemd accepts it, its sandbox scores low, and the sandbox lets the gateway run."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "fieldgate.service"


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's fieldgate (verify checks it exists)."""
    fieldgate = Path(sys.executable).parent / "fieldgate"
    assert fieldgate.exists()
    text = UNIT.read_text().replace("/opt/fieldgate/venv/bin/fieldgate", str(fieldgate))
    copy = tmp_path / "fieldgate.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: deploy/setup-env.sh --dev installs the systemd package"
    result = subprocess.run(
        [analyze, "verify", str(unit_copy(tmp_path))], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_sandbox_scores_below_two(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    figure = re.search(r"Overall exposure level for fieldgate.service: ([\d.]+) (\w+)", result.stdout)
    assert figure, result.stdout + result.stderr
    assert float(figure.group(1)) <= 2.0, result.stdout
    # What stays open is what a serial-and-network gateway needs (the docs list each one and why).
    open_items = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("✗")}
    assert open_items <= {
        "RootDirectory=/RootImage=",
        "SupplementaryGroups=",
        "PrivateDevices=",
        "RestrictAddressFamilies=~AF_UNIX",
        "RestrictAddressFamilies=~AF_(INET|INET6)",
        "PrivateNetwork=",
        "PrivateUsers=",
        "DeviceAllow=",
        "IPAddressDeny=",
        "UMask=",
        "ProcSubset=",
    }, open_items


def test_the_unit_says_what_the_issue_asks() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify" and service["WatchdogSec"] == "30"
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "78"
    assert unit["Unit"]["StartLimitBurst"] == "5"
    assert service["User"] == "fieldgate" and service["SupplementaryGroups"] == "dialout"
    assert (
        service["ExecStart"] == "/opt/fieldgate/venv/bin/fieldgate run --config /etc/fieldgate/fieldgate.toml"
    )
    assert service["CapabilityBoundingSet"] == "" and service["AmbientCapabilities"] == ""
    assert service["DevicePolicy"] == "closed"


MDWE_RUN = """
import errno, mmap, runpy, sys, time
import pyseccomp as seccomp
# The seccomp rules systemd 252 installs for MemoryDenyWriteExecute=yes (works on any kernel, unlike
# prctl(PR_SET_MDWE), which needs Linux 6.3).
W_X = mmap.PROT_WRITE | mmap.PROT_EXEC
SHM_EXEC = 0o100000
rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
refuse = seccomp.ERRNO(errno.EPERM)
rules.add_rule(refuse, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, W_X, W_X))
rules.add_rule(refuse, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
rules.add_rule(refuse, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
rules.add_rule(refuse, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
rules.load()
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | W_X)
    raise SystemExit("W+X memory still allowed: the test would prove nothing")
except PermissionError:
    pass
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
for key, alg in ((rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
                 (ec.generate_private_key(ec.SECP256R1()), "ES256")):
    token = jwt.encode({"sub": "gw", "exp": time.time() + 60}, key, algorithm=alg)
    jwt.decode(token, key.public_key(), algorithms=[alg])
import ctypes
assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7  # libffi closures (cffi callbacks use them)
import aiomqtt, paho.mqtt.client, prometheus_client, pymodbus, serial, ssl
ssl.create_default_context()
print("crypto and imports ok", flush=True)
sys.argv = ["fieldgate", "run", "--config", sys.argv[1], "--dry-run", "--duration", "1"]
runpy.run_module("gateway.cli", run_name="__main__")
"""


def test_python_cryptography_and_the_gateway_run_with_memory_deny_write_execute(tmp_path: Path) -> None:
    from tests.service.conftest import SIMULATED, write_config

    config = write_config(tmp_path, SIMULATED, metrics=True)
    result = subprocess.run(
        [sys.executable, "-c", MDWE_RUN, str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "crypto and imports ok" in result.stdout
    assert "/alpha/telemetry " in result.stdout
    assert "fieldgate.app: stopped" in result.stderr


def syscalls(group: str, analyze: str, seen: dict[str, set[str]]) -> set[str]:
    """The system calls of a systemd syscall group, nested groups expanded."""
    if group in seen:
        return seen[group]
    listing = subprocess.run(
        [analyze, "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    names: set[str] = set()
    for line in listing[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        names |= syscalls(entry, analyze, seen) if entry.startswith("@") else {entry}
    seen[group] = names
    return names


SECCOMP_RUN = """
import errno, json, os, runpy, sys, time
import pyseccomp as seccomp
allowed = json.loads(sys.argv[2])
# What SystemCallFilter=@system-service ~@privileged @resources with SystemCallErrorNumber=EPERM does.
rules = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in allowed:
    try:
        rules.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError, OSError):
        pass  # not a system call of this architecture
rules.load()
try:
    os.setuid(os.getuid())  # @privileged: must be refused now
    raise SystemExit("setuid allowed: the filter is not in force")
except PermissionError:
    pass
import jwt, sqlite3, serial
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwt.decode(jwt.encode({"sub": "gw", "exp": time.time() + 60}, key, algorithm="RS256"),
           key.public_key(), algorithms=["RS256"])
db = sqlite3.connect(sys.argv[3])
db.execute("create table if not exists m (id integer primary key, body blob)")
db.execute("insert into m (body) values (?)", (b"x",))
db.commit()
controller, device = os.openpty()
port = serial.Serial(os.ttyname(device), 9600, timeout=0.1)
port.write(b"ping")
assert os.read(controller, 4) == b"ping"
port.close()
print("crypto, sqlite and serial ok", flush=True)
sys.argv = ["fieldgate", "run", "--config", sys.argv[1], "--dry-run", "--duration", "1.5"]
runpy.run_module("gateway.cli", run_name="__main__")
"""


def test_the_gateway_runs_under_the_units_system_call_filter(tmp_path: Path) -> None:
    import json

    from tests.service.conftest import SIMULATED, write_config

    analyze = shutil.which("systemd-analyze")
    assert analyze
    seen: dict[str, set[str]] = {}
    allowed = syscalls("@system-service", analyze, seen) - syscalls("@privileged", analyze, seen)
    allowed -= syscalls("@resources", analyze, seen)
    assert "setuid" not in allowed and "setrlimit" not in allowed and "epoll_wait" in allowed
    config = write_config(tmp_path, SIMULATED, metrics=True)
    result = subprocess.run(
        [sys.executable, "-c", SECCOMP_RUN, str(config), json.dumps(sorted(allowed)), str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "crypto, sqlite and serial ok" in result.stdout
    assert "/alpha/telemetry " in result.stdout
    assert "metrics on http://127.0.0.1:" in result.stderr and "fieldgate.app: stopped" in result.stderr


def test_the_longest_shutdown_grace_ends_well_before_systemd_kills_the_stopping_service() -> None:
    from gateway.config.model import SHUTDOWN_GRACE_MAX

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    timeout_stop = float(unit["Service"]["TimeoutStopSec"])
    # The drain, then stopping the drivers and the store's last commit: at least 5 s for the latter.
    assert timeout_stop >= SHUTDOWN_GRACE_MAX + 5


def test_a_shutdown_grace_beyond_the_units_stop_timeout_is_a_config_error(tmp_path: Path) -> None:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    config = tmp_path / "fieldgate.toml"
    config.write_text('[gateway]\nid = "gw"\nsite = "s"\nshutdown_grace = 60\n')
    try:
        load_config(config)
    except ConfigError as exc:
        assert any("gateway.shutdown_grace = 60" in p and "20" in p for p in exc.problems), exc.problems
    else:
        raise AssertionError("shutdown_grace = 60 was accepted")
