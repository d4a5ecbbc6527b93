"""A config pays only for what it uses: `fieldgate run` imports a protocol's or a service's libraries only
when the config needs them (each is a few MiB of RSS and tens of milliseconds of start on a Pi)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.tokens import generate_rsa_key_pair

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("pymodbus", "serial", "aiomqtt", "paho", "azure", "prometheus_client")

GATEWAY = """
[gateway]
id = "gw-1"
site = "plant"
stats_interval = 0
state_dir = "{state}"

[store]
kind = "memory"
"""
SIMULATED = """
[devices.boiler]
driver = "simulated"
interval = 0.1

[[devices.boiler.points]]
name = "temperature"
signal = "sine"
"""
MODBUS_TCP = """
[devices.meter]
driver = "modbus"
host = "127.0.0.1"
port = 1
interval = 1

[devices.meter.points.power]
address = 0
type = "int16"
"""


def in_a_fresh_interpreter(code: str) -> tuple[Any, list[str], str]:
    """Run ``code`` (Python, ending with ``result`` set) in a fresh interpreter from the repo: ``result``,
    the names of every module it imported, and its stderr."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([result, sorted(sys.modules)]))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    result, modules = json.loads(done.stdout.strip().splitlines()[-1])
    return result, modules, done.stderr


def libraries_after_a_dry_run(tmp_path: Path, devices: str) -> set[str]:
    """Run `fieldgate run --dry-run` in a fresh interpreter; the watched libraries it imported."""
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY.format(state=tmp_path) + devices)
    code, modules, stderr = in_a_fresh_interpreter(
        "from gateway.cli.main import main\n"
        f"result = main(['run', '-c', {str(config)!r}, '--dry-run', '--duration', '0.3'])"
    )
    assert code == 0, stderr
    return {m.split(".")[0] for m in modules} & set(WATCHED)


def test_a_config_without_modbus_or_serial_devices_imports_neither_library(tmp_path: Path) -> None:
    assert libraries_after_a_dry_run(tmp_path, SIMULATED) == set()


@pytest.mark.parametrize("devices", [MODBUS_TCP])
def test_modbus_devices_bring_pymodbus_and_nothing_of_the_uplink_or_services(
    tmp_path: Path, devices: str
) -> None:
    libraries = libraries_after_a_dry_run(tmp_path, devices)

    assert "pymodbus" in libraries
    # pymodbus imports pyserial itself (for its serial client); no uplink, azure or metrics without config.
    assert libraries - {"pymodbus", "serial"} == set()


UPLINK_SIGNER = """
[uplink]
host = "127.0.0.1"
port = {port}
tls = false
connect_timeout = 1

[uplink.token]
source = "signer"
key_file = "{key}"
issuer = "https://fieldgate.dev/issuer"
audience = "https://fieldgate-local.ts.eventgrid.azure.net/"
"""

#: What a run with Modbus devices, a signed token and neither [uplink.permissions], [commands] nor [metrics]
#: must not import: cryptography (~11 MiB; the signer goes through the ssl module's libcrypto), PyJWT, the
#: permission gate, the command service, the Prometheus client, azure-identity; nor importlib.metadata
#: (reading every installed package's metadata: tens of milliseconds of start for built-in drivers).
NOT_FOR_A_PLAIN_RUN = (
    "importlib.metadata",
    "cryptography",
    "jwt",
    "prometheus_client",
    "azure",
    "gateway.permissions",
    "gateway.commands",
    "gateway.service.metrics",
)


def test_a_run_with_modbus_devices_and_a_signed_token_imports_only_what_the_config_uses(
    tmp_path: Path,
) -> None:
    key, _ = generate_rsa_key_pair(tmp_path, "issuer")
    with socket.socket() as sock:  # a port nobody listens on: the token is signed, the connect refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY.format(state=tmp_path) + MODBUS_TCP + UPLINK_SIGNER.format(port=port, key=key))
    code, modules, stderr = in_a_fresh_interpreter(
        f"from gateway.cli.main import main\nresult = main(['run', '-c', {str(config)!r}, '--duration', '1'])"
    )
    assert code == 0, stderr
    # The uplink got as far as its connect: the key was read and the token signed.
    assert "connection refused" in stderr.lower(), stderr
    assert "gateway.auth.signer" in modules and "pymodbus" in modules
    loaded = {m for m in modules for name in NOT_FOR_A_PLAIN_RUN if m == name or m.startswith(name + ".")}
    assert loaded == set()


def test_a_gateway_with_its_own_oauth2_client_key_signs_its_assertion_without_cryptography(
    tmp_path: Path,
) -> None:
    # private_key_jwt is the per-gateway identity of a fleet: its client assertion is signed like the
    # signer's tokens, through the ssl module's libcrypto.
    import jwt

    key, public = generate_rsa_key_pair(tmp_path, "gateway")
    token, modules, _ = in_a_fresh_interpreter(
        "from pathlib import Path\n"
        "import gateway.auth.oauth2\n"
        "from gateway.auth.signer import load_signing_key, sign_rs256\n"
        f"result = sign_rs256({{'sub': 'gw-1'}}, load_signing_key(Path({str(key)!r})), {{'typ': 'JWT'}})"
    )

    assert jwt.decode(token, Path(public).read_text(), algorithms=["RS256"]) == {"sub": "gw-1"}
    assert {m.split(".")[0] for m in modules} & {"cryptography", "jwt"} == set()


def test_the_garbage_collector_is_off_while_the_gateway_starts_and_on_once_it_runs(tmp_path: Path) -> None:
    # Start-up objects live as long as the process: collecting among them is start time spent for nothing.
    config = tmp_path / "gateway.toml"
    config.write_text(GATEWAY.format(state=tmp_path) + SIMULATED)
    events, _, stderr = in_a_fresh_interpreter(
        "import gc, logging\n"
        "events = []\n"
        "class Started(logging.Handler):\n"
        "    def emit(self, record):\n"
        "        if 'started:' in record.getMessage():\n"
        "            events.append('started')\n"
        "logging.getLogger('fieldgate').addHandler(Started())\n"
        "from gateway.cli.main import main\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and events.append('collected'))\n"
        f"code = main(['run', '-c', {str(config)!r}, '--dry-run', '--duration', '1'])\n"
        "result = [code, gc.isenabled(), events]"
    )
    code, enabled, log = events
    assert code == 0, stderr
    assert "started" in log, stderr
    before, after = log[: log.index("started")], log[log.index("started") + 1 :]
    assert before == []  # not one collection while starting
    assert "collected" in after  # the running gateway's garbage is collected
    assert enabled
