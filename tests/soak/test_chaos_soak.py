"""Chaos soak: the gateway runs for minutes while faults drawn at random hit every part it depends on.

``fieldgate run`` as a process, the local broker behind a TCP gate the test controls, a token file that an
outside agent refreshes, a Modbus TCP slave, a serial sensor on a pty (reached through a symlink, like
``/dev/serial/by-id``) and the state directory on a small tmpfs. Faults, one at a time with a random hold:
broker restart, network cut, token endpoint down (the token file gone), refused refresh (a token the broker
rejects), slave dead, serial port unplugged, SIGKILL of the gateway (restarted at once), disk full.

An independent subscriber counts what arrives by ``seq``. At the end the test prints a table and asserts
that no committed message was lost: every message the store held at a SIGKILL arrived, and the process
never exited by itself. ``FIELDGATE_SOAK_MINUTES`` sets the duration (3 in ``./tests/run.sh``; 10 with
``tests/soak/run.sh``), ``FIELDGATE_SEED`` the faults' random sequence. See tests/soak/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from tests.support.broker import LocalBroker
from tests.support.gate import Gate
from tests.support.modbus_peer import BadModbusPeer
from tests.support.process import GatewayProcess
from tests.support.serial import Pty
from tests.support.store_rows import committed_rows
from tests.support.subscriber import Subscriber, wait_until
from tests.support.tokens import generate_rsa_key_pair, mint_token

pytestmark = pytest.mark.broker

MINUTES = float(os.environ.get("FIELDGATE_SOAK_MINUTES", "3"))
SEED = int(os.environ.get("FIELDGATE_SEED", str(random.randrange(1_000_000))))
GATEWAY = "gw-soak"
SITE = "lab"
GRANT = f"plants/{SITE}/#"
FAULTS = (
    "broker restart",
    "network cut",
    "token endpoint down",
    "refused refresh",
    "slave dead",
    "serial unplugged",
    "SIGKILL",
    "disk full",
)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    keys = tmp_path_factory.mktemp("soak-keys")
    generate_rsa_key_pair(keys, "issuer")
    generate_rsa_key_pair(keys, "stranger")  # signs the tokens the broker refuses
    with LocalBroker(keys_dir=keys, verbose=False) as running:
        yield running


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path`` (True), or a plain folder where mounting is not allowed (False)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            check=False,
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


# -- the independent subscriber ---------------------------------------------------------------------------
class Witness(Subscriber):
    """Counts what arrives by seq, and the serial counter's values; reconnects after a broker restart."""

    def __init__(self, broker: LocalBroker) -> None:
        super().__init__(broker, identifier="witness", filters=[GRANT], lifetime=7200)
        self.seqs: Counter[int] = Counter()
        self.counter_values: set[int] = set()
        self.last_at = 0.0

    def on_message(self, message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        body = json.loads(message.payload)
        self.seqs[body["seq"]] += 1
        self.last_at = time.monotonic()
        if body.get("device") == "counter":
            n = body.get("points", {}).get("n", {})
            if n.get("quality") == "good":
                self.counter_values.add(int(n["value"]))

    def quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_at > seconds


# -- the site around the gateway -----------------------------------------------------------------------------
@dataclass
class Site:
    broker: LocalBroker
    tmp: Path
    state_dir: Path
    gate: Gate
    peer: BadModbusPeer
    serial_link: Path
    pty: Pty | None = None
    token_file: Path = field(init=False)
    token_state: str = "good"  # good | missing | refused
    lines_written: int = 0

    def __post_init__(self) -> None:
        self.token_file = self.tmp / "token.jwt"

    def plug(self) -> None:
        self.pty = Pty()
        tmp_link = self.serial_link.with_suffix(".new")
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(self.pty.path)
        tmp_link.replace(self.serial_link)

    def unplug(self) -> None:
        if self.pty is not None:
            self.pty.close()
            self.pty = None

    def write_token(self) -> None:
        """What an outside agent does: a fresh short-lived token in the file, atomically."""
        if self.token_state == "missing":
            self.token_file.unlink(missing_ok=True)
            return
        key = self.broker.keys_dir / ("stranger.key" if self.token_state == "refused" else "issuer.key")
        token = mint_token(
            key,
            sub=GATEWAY,
            lifetime=60,
            iss=self.broker.issuer,
            aud=self.broker.audience,
            publish_topics=[GRANT],
        )
        part = self.token_file.with_suffix(".part")
        part.write_text(token)
        part.chmod(0o600)
        part.replace(self.token_file)

    def config(self) -> Path:
        path = self.tmp / "gw.toml"
        path.write_text(f"""
[gateway]
id = "{GATEWAY}"
site = "{SITE}"
state_dir = "{self.state_dir}"
stats_interval = 10
shutdown_grace = 5

[telemetry]
topic = "plants/{{site}}/{{gateway}}/{{device}}"

[uplink]
host = "127.0.0.1"
port = {self.gate.port}
tls = false
connect_timeout = 5

[uplink.reconnect]
initial = 0.2
max = 2.0

[uplink.token]
source = "file"
path = "{self.token_file}"

[drivers.serial]
retry_initial = 0.2
retry_max = 2.0

[devices.sim]
driver = "simulated"
interval = 0.05
[[devices.sim.points]]
name = "value"
signal = "ramp"
min = 0
max = 100
period = 10

[devices.counter]
driver = "serial"
port = "{self.serial_link}"
framing = {{ kind = "line", terminator = "\\n", max_length = 40 }}
parser = {{ kind = "csv", columns = ["n"] }}
[devices.counter.points.n]
type = "int"

[devices.meter]
driver = "modbus"
host = "127.0.0.1"
port = {self.peer.port}
timeout = 0.5
retries = 0
backoff_max = 2
interval = 0.5
[devices.meter.points.volts]
table = "input"
address = 0
type = "float32"
""")
        return path


@dataclass
class Figures:
    faults: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    peak_rss_kb: int = 0
    committed_at_kills: set[int] = field(default_factory=set)
    disk_full_possible: bool = True


def rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- the soak ------------------------------------------------------------------------------------------------
async def test_chaos_soak_loses_no_committed_message(broker: LocalBroker, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    figures = Figures()
    with small_disk(tmp_path / "disk") as mounted:
        figures.disk_full_possible = mounted
        state_dir = tmp_path / "disk" / "state"
        gate = await Gate(broker).start()
        peer = await BadModbusPeer().start()
        site = Site(broker, tmp_path, state_dir, gate, peer, tmp_path / "ttyCOUNTER")
        site.plug()
        site.write_token()
        config = site.config()
        witness = Witness(broker)
        processes: list[GatewayProcess] = []

        async def start_gateway() -> GatewayProcess:
            process = await GatewayProcess(["run", "--config", str(config)]).start()
            processes.append(process)
            return process

        async def background() -> None:
            # The outside world that keeps going whatever fails: the token agent, the sensor, RSS samples.
            tick = 0
            while True:
                tick += 1
                if tick % 50 == 0:
                    site.write_token()
                if site.pty is not None:
                    site.lines_written += 1
                    with contextlib.suppress(OSError):
                        os.write(site.pty.master, f"{site.lines_written}\n".encode())
                proc = processes[-1].proc if processes else None
                if proc is not None and proc.returncode is None:
                    figures.peak_rss_kb = max(figures.peak_rss_kb, rss_kb(proc.pid))
                await asyncio.sleep(0.2)

        world_task = asyncio.create_task(background(), name="world")
        filler = tmp_path / "disk" / "filler"
        try:
            async with witness.running():
                process = await start_gateway()
                await wait_until(lambda: len(witness.seqs) > 20, 60, "first deliveries")
                deadline = time.monotonic() + MINUTES * 60
                while time.monotonic() < deadline:
                    assert process.proc is not None and process.proc.returncode is None, "\n".join(
                        process.stderr[-40:]
                    )
                    kinds = [k for k in FAULTS if k != "disk full" or figures.disk_full_possible]
                    kind = rng.choice(kinds)
                    hold = rng.uniform(2.0, 12.0)
                    figures.faults[kind] += 1
                    print(f"[{time.strftime('%H:%M:%S')}] {kind} for {hold:.1f} s", flush=True)
                    if kind == "broker restart":
                        # The gate keeps the gateway out until the witness is back (mosquitto keeps no
                        # sessions across its restart here: what it accepted must reach the witness first).
                        gate.cut()
                        await wait_until(
                            lambda: witness.quiet_for(1.0), 20, "the witness has what was accepted"
                        )
                        broker.stop()
                        await asyncio.sleep(hold)
                        broker.start()  # on a new port: the gate and the witness follow
                        await wait_until(witness.connected.is_set, 30, "the witness back")
                        gate.open = True
                    elif kind == "network cut":
                        gate.cut()
                        await asyncio.sleep(hold)
                        gate.open = True
                    elif kind in ("token endpoint down", "refused refresh"):
                        site.token_state = "missing" if kind == "token endpoint down" else "refused"
                        site.write_token()
                        await asyncio.sleep(hold)
                        site.token_state = "good"
                        site.write_token()
                    elif kind == "slave dead":
                        await peer.close()
                        await asyncio.sleep(hold)
                        await peer.start()
                    elif kind == "serial unplugged":
                        site.unplug()
                        await asyncio.sleep(hold)
                        site.plug()
                    elif kind == "SIGKILL":
                        process.signal(signal.SIGKILL)
                        await process.wait(timeout=20)
                        figures.committed_at_kills |= committed_rows(state_dir)
                        await asyncio.sleep(min(hold, 3.0))
                        process = await start_gateway()
                        figures.restarts += 1
                    elif kind == "disk full":
                        # Fill what is left of the small disk, hold, then free it.
                        with contextlib.suppress(OSError), filler.open("wb") as out:
                            chunk = b"\0" * 65536
                            while True:
                                out.write(chunk)
                                out.flush()
                        await asyncio.sleep(hold)
                        filler.unlink(missing_ok=True)
                    await asyncio.sleep(rng.uniform(2.0, 6.0))  # the site works normally for a while

                # The end: everything restored; what was committed arrives; a clean stop.
                gate.open = True
                assert process.proc is not None and process.proc.returncode is None, "\n".join(
                    process.stderr[-40:]
                )
                await wait_until(
                    lambda: figures.committed_at_kills <= set(witness.seqs),
                    180,
                    "every message committed at a SIGKILL delivered",
                )
                process.signal(signal.SIGTERM)
                code = await process.wait(timeout=30)
                await asyncio.sleep(1.0)
        finally:
            world_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await world_task
            for each in processes:
                await each.kill()
            (tmp_path / "gateway.log").write_text("\n".join(line for p in processes for line in p.stderr))
            await gate.close()
            await peer.close()
            site.unplug()
            filler.unlink(missing_ok=True)
        left_in_store = committed_rows(state_dir)
        shutil.copy(tmp_path / "gateway.log", tmp_path / "gateway-final.log")

    received = witness.seqs
    delivered = len(received)
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    highest = max(received) if received else 0
    lost_committed = figures.committed_at_kills - set(received)
    holes = highest - delivered - len(left_in_store - set(received))
    rows = [
        ("duration", f"{MINUTES:g} min, seed {SEED}"),
        (
            "faults injected",
            f"{sum(figures.faults.values())}: "
            + ", ".join(f"{k} {n}" for k, n in sorted(figures.faults.items())),
        ),
        ("disk full", "tmpfs 8 MB" if figures.disk_full_possible else "not injected (mount refused)"),
        ("messages produced (delivered + left in the store)", str(len(set(received) | left_in_store))),
        ("highest seq (with the blocks skipped at kills)", str(highest)),
        ("messages delivered (distinct)", str(delivered)),
        ("duplicates", str(duplicates)),
        ("committed at a SIGKILL", str(len(figures.committed_at_kills))),
        ("lost (committed, not delivered)", str(len(lost_committed))),
        ("seq holes (skipped at a kill, or dropped)", str(holes)),
        ("left in the store at the end", str(len(left_in_store))),
        ("serial lines written / delivered", f"{site.lines_written} / {len(witness.counter_values)}"),
        ("gateway restarts (SIGKILL)", str(figures.restarts)),
        ("peak RSS", f"{figures.peak_rss_kb / 1024:.1f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"| {k:<{width}} | {v} |" for k, v in rows))
    assert lost_committed == set(), sorted(lost_committed)[:20]
    assert code == 0
    assert delivered > 0
