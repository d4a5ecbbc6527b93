"""Start the local Event Grid-style broker (deploy/broker/run.sh) for a test.

    with LocalBroker(keys_dir=tmp / "keys") as broker:
        token = mint_token(broker.private_key_path, sub="gw-1", publish_topics=["plants/#"])
        ...connect to broker.host, broker.port...
        assert not any(token in line for line in broker.log_lines())

The broker runs in the foreground as a child process on a free loopback port with its own
runtime directory; its whole log (stdout and stderr) is captured to a file.

`LocalBroker(quotas=True)` puts the quota proxy (deploy/broker/quota_proxy.py) on the port, in front of
mosquitto, as run.sh does by default: each Event Grid quota and limit is then a keyword whose default is
the documented value, and the proxy's counters are read with `stats()` / `wait_for_stats()`, its log
lines with `count_log()`. Without it (the default here, unlike run.sh) mosquitto serves the port alone,
as before the proxy existed: today's gateway neither shapes its publish rate below Event Grid's 1000/s
nor retries a 0x97, so a suite that drains a backlog flat out (tests/test_store_e2e.py) loses the
throttled messages. Flip the default once the gateway honours the quotas.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from tests.support.local_server import LocalServer, ServerStartError, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKER_DIR = REPO_ROOT / "deploy" / "broker"
RUN_SH = BROKER_DIR / "run.sh"

DEFAULT_ISSUER = "https://fieldgate.dev/issuer"
DEFAULT_AUDIENCE = "https://fieldgate-local.ts.eventgrid.azure.net/"
DEFAULT_METHOD = "CUSTOM-JWT"


class BrokerStartError(ServerStartError):
    """The broker did not come up; the message carries the tail of its log."""


def build_plugin() -> None:
    """Builds the plugin (and the vector test program) if the sources changed."""
    subprocess.run(["make", "-s", "-C", str(BROKER_DIR)], check=True, capture_output=True, text=True)


class LocalBroker(LocalServer):
    """mosquitto with the fieldgate auth plugin, on 127.0.0.1 and a free port.

    `verbose=True` turns on mosquitto's debug log (every packet and every allowed publish):
    thorough for log scans, costly for throughput tests.

    The quota keywords map to run.sh's options of the same name (deploy/broker/README.md) and
    take effect with `quotas=True`; `max_auth_data`, `max_sub_length` (plugin) and `allow_retain`
    (mosquitto's retain_available) apply either way.
    """

    name = "broker"
    not_ready = "not listening"
    start_error = BrokerStartError
    poll_interval = 0.02

    def __init__(
        self,
        *,
        keys_dir: Path | None = None,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        method: str = DEFAULT_METHOD,
        second_public_key: Path | None = None,
        publish_templates: Sequence[str] = (),
        subscribe_templates: Sequence[str] = (),
        publish_claim: str | None = "publish_topics",
        subscribe_claim: str | None = "subscribe_topics",
        tls: bool = False,
        verbose: bool = False,
        start_timeout: float = 30.0,
        quotas: bool = False,
        publish_rate: int = 1000,
        byte_rate: int = 1_000_000,
        inflight_messages: int = 1000,
        inflight_bytes: int = 65536,
        throttle: Literal["puback", "disconnect"] = "puback",
        topic_bytes: int = 256,
        topic_levels: int = 15,
        subscriptions: int = 50,
        subscribe_rate: int = 5,
        filters_per_subscribe: int = 10,
        allow_retain: bool = False,
        max_auth_data: int = 8192,
        max_sub_length: int = 128,
    ) -> None:
        super().__init__(prefix="fieldgate-broker-", log_name="broker.log", start_timeout=start_timeout)
        self.keys_dir = Path(keys_dir) if keys_dir is not None else self.base_dir / "keys"
        self.issuer = issuer
        self.audience = audience
        self.method = method
        self.second_public_key = second_public_key
        self.publish_templates = tuple(publish_templates)
        self.subscribe_templates = tuple(subscribe_templates)
        self.publish_claim = publish_claim
        self.subscribe_claim = subscribe_claim
        self.tls = tls
        self.verbose = verbose
        self.quotas = quotas
        self.limits: dict[str, int | str] = {
            "publish-rate": publish_rate,
            "byte-rate": byte_rate,
            "inflight-messages": inflight_messages,
            "inflight-bytes": inflight_bytes,
            "throttle": throttle,
            "topic-bytes": topic_bytes,
            "topic-levels": topic_levels,
            "subscriptions": subscriptions,
            "subscribe-rate": subscribe_rate,
            "filters-per-subscribe": filters_per_subscribe,
            "max-auth-data": max_auth_data,
            "max-sub-length": max_sub_length,
        }
        self.allow_retain = allow_retain
        self._lines: list[str] = []
        self._log_offset = 0

    # -- paths ------------------------------------------------------------------------------
    @property
    def private_key_path(self) -> Path:
        return self.keys_dir / "issuer.key"

    @property
    def public_key_path(self) -> Path:
        return self.keys_dir / "issuer.pem"

    @property
    def ca_path(self) -> Path | None:
        return self.keys_dir / "ca.pem" if self.tls else None

    # -- lifecycle --------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [
            str(RUN_SH),
            "--port", str(self.port),
            "--issuer", self.issuer,
            "--audience", self.audience,
            "--method", self.method,
            "--keys", str(self.keys_dir),
            "--runtime-dir", str(self.runtime_dir),
            "--publish-claim", self.publish_claim or "",
            "--subscribe-claim", self.subscribe_claim or "",
        ]  # fmt: skip
        if self.second_public_key is not None:
            cmd += ["--second-key", str(self.second_public_key)]
        for template in self.publish_templates:
            cmd += ["--publish-template", template]
        for template in self.subscribe_templates:
            cmd += ["--subscribe-template", template]
        if self.tls:
            cmd.append("--tls")
        if self.verbose:
            cmd.append("--verbose")
        for option, value in self.limits.items():
            cmd += [f"--{option}", str(value)]
        if self.allow_retain:
            cmd.append("--allow-retain")
        if not self.quotas:
            cmd.append("--no-quotas")
        return cmd

    def _start_once(self) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        super()._start_once()

    def _ready(self) -> bool:
        # The listener line shows our port is ours (the proxy's or mosquitto's), not someone
        # else's on a reused port.
        ready = f"listen socket on port {self.port}."
        if self.quotas:
            ready = f"listening on 127.0.0.1:{self.port}"
        if not any(ready in line for line in self.log_lines()):
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        """The mosquitto process id, while it runs (behind the proxy: the proxy's child)."""
        if self._process is None:
            return None
        if not self.quotas:
            return self._process.pid  # run.sh execs mosquitto
        with contextlib.suppress(OSError, ValueError):
            return int((self.runtime_dir / "mosquitto.pid").read_text())
        return None

    @property
    def proxy_pid(self) -> int | None:
        """The quota proxy's process id (run.sh execs it), while it runs."""
        return self._process.pid if self._process is not None and self.quotas else None

    @property
    def stats_path(self) -> Path:
        return self.runtime_dir / "quota-stats.json"

    def stats(self) -> dict[str, Any]:
        """The proxy's counters: {"sessions": {client id: {counter: n}}, "totals": {...}}.

        The file is rewritten about 0.1 s after a change: use `wait_for_stats` to wait for a
        count the test expects. Counters: publishes_forwarded, bytes_forwarded,
        peak_publishes_per_second, peak_bytes_per_second, puback_0x97, disconnect_0x97,
        dropped_qos0, throttled_rate / _bytes / _inflight_messages / _inflight_bytes,
        refused_topic_length / _topic_levels / _retain, suback_0x97, suback_0x8f,
        throttled_subscribe_rate, refused_filters_per_subscribe, refused_subscriptions,
        refused_filter_invalid, subscriptions, connections.
        """
        try:
            return dict(json.loads(self.stats_path.read_text()))
        except (OSError, ValueError):
            return {"sessions": {}, "totals": {}}

    def session_stats(self, client_id: str) -> dict[str, int]:
        """One session's counters (missing counters are 0)."""
        return dict(self.stats()["sessions"].get(client_id, {}))

    def wait_for_stats(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The stats once `condition(stats)` holds, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if condition(stats):
                return stats
            if time.monotonic() >= deadline:
                raise TimeoutError(f"broker stats never met the condition within {timeout}s: {stats}")
            time.sleep(0.05)

    def count_log(self, needle: str, since: int = 0) -> int:
        """How many log lines (from line `since` on) contain `needle`."""
        return sum(needle in line for line in self.log_lines()[since:])

    def log_lines(self) -> list[str]:
        """Every complete line the broker (and run.sh) logged so far."""
        # Read only what is new: tests poll this while the broker may log every packet.
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                chunk = log.read()
        except FileNotFoundError:
            return list(self._lines)
        complete = chunk.rfind(b"\n") + 1
        if complete:
            self._lines += chunk[:complete].decode(errors="replace").splitlines()
            self._log_offset += complete
        return list(self._lines)

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """The first log line containing `needle`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if needle in line:
                    return line
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no broker log line containing {needle!r} within {timeout}s")
            time.sleep(0.02)


__all__ = ["BrokerStartError", "LocalBroker", "build_plugin", "free_port"]
