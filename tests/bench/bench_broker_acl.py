"""What the fieldgate auth plugin costs the broker per QoS 1 publish.

Run on demand from the repository root:  python -m tests.bench.bench_broker_acl

Measures, in one run, mosquitto's own CPU time (utime + stime from /proc) per QoS 1 publish
for: a plain mosquitto without plugin (baseline), our broker with a token granting one
filter, and one granting 50 filters where only the last matches (the linear scan's worst
case). The publisher is the raw test client with a window of 20 in flight (mosquitto's
Receive Maximum), so msgs/s is client-bound; broker CPU per message is the figure to compare.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.broker import LocalBroker, free_port
from tests.support.mqtt5_raw import MqttV5Client, Puback
from tests.support.tokens import mint_token

MESSAGES = 30_000
WINDOW = 20
ROUNDS = 3


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def publish_burst(client: MqttV5Client, topic: str) -> float:
    """Publishes MESSAGES QoS 1 messages with WINDOW in flight; returns the elapsed seconds."""
    payload = b"x" * 64
    started = time.perf_counter()
    in_flight = 0
    sent = 0
    acked = 0
    while acked < MESSAGES:
        while in_flight < WINDOW and sent < MESSAGES:
            client.publish(topic, payload, qos=1)
            sent += 1
            in_flight += 1
        packet = client.read_packet()
        if not isinstance(packet, Puback) or packet.reason_code not in (0x00, 0x10):
            raise RuntimeError(f"unexpected answer {packet!r}")
        in_flight -= 1
        acked += 1
    return time.perf_counter() - started


def measure(pid: int, connect: Callable[[], MqttV5Client], topic: str) -> tuple[float, float]:
    """Best of ROUNDS: (msgs/s, broker CPU microseconds per message)."""
    best_rate, best_cpu = 0.0, float("inf")
    with connect() as client:
        for _ in range(ROUNDS):
            cpu_before = cpu_seconds(pid)
            elapsed = publish_burst(client, topic)
            cpu = cpu_seconds(pid) - cpu_before
            best_rate = max(best_rate, MESSAGES / elapsed)
            best_cpu = min(best_cpu, cpu / MESSAGES * 1e6)
    return best_rate, best_cpu


def plain_mosquitto(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = directory / "plain.conf"
    conf.write_text(
        f"user {os.environ.get('USER', 'root')}\nper_listener_settings false\nallow_anonymous true\n"
        f"persistence false\nlog_type error\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\n"
    )
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            MqttV5Client("127.0.0.1", port, timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("plain mosquitto did not start")


def main() -> None:
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        process, port = plain_mosquitto(Path(tmp))
        try:

            def anonymous() -> MqttV5Client:
                client = MqttV5Client("127.0.0.1", port)
                client.connect("bench-plain")
                return client

            results["plain mosquitto, no plugin"] = measure(process.pid, anonymous, "plants/p1/telemetry")
        finally:
            process.terminate()
            process.wait(timeout=5)

    with LocalBroker() as broker:
        assert broker.pid is not None
        many = [f"other/{i}/#" for i in range(49)] + ["plants/+/telemetry"]
        for label, grants in (("plugin, 1 grant", ["plants/+/telemetry"]), ("plugin, 50 grants", many)):
            token = mint_token(broker.private_key_path, sub="bench", lifetime=600, publish_topics=grants)

            def authenticated(token: str = token) -> MqttV5Client:
                client = MqttV5Client(broker.host, broker.port)
                client.connect("bench-jwt", auth_method="CUSTOM-JWT", auth_data=token)
                return client

            results[label] = measure(broker.pid, authenticated, "plants/p1/telemetry")

    base_cpu = results["plain mosquitto, no plugin"][1]
    print(f"{MESSAGES} QoS 1 publishes x {ROUNDS} rounds, {WINDOW} in flight, best round")
    print(f"{'case':32} {'msgs/s':>10} {'broker CPU us/msg':>18} {'CPU vs plain':>13}")
    for label, (rate, cpu) in results.items():
        print(f"{label:32} {rate:10.0f} {cpu:18.2f} {cpu / base_cpu:12.2f}x")


if __name__ == "__main__":
    main()
