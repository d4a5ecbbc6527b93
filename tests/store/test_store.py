"""The store keeps what the gateway accepted until the broker has it: on real SQLite files."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config.model import StoreSettings
from gateway.model import Message
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import DB_NAME, SEQ_BLOCK, SqliteStore

REPO = Path(__file__).resolve().parents[2]


def settings(**overrides: object) -> StoreSettings:
    base = StoreSettings(batch_interval=0.01)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def message(seq: int, *, ts: float | None = None, size: int = 0, qos: int = 1) -> Message:
    payload = json.dumps({"seq": seq, "pad": "x" * size}).encode()
    return Message(
        topic="sites/lab/gw/dev/telemetry",
        payload=payload,
        qos=qos,
        seq=seq,
        timestamp=time.time() if ts is None else ts,
        device="dev",
    )


class Running:
    """A store with its background task, as the gateway runs it."""

    def __init__(
        self,
        state_dir: Path,
        config: StoreSettings,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.store = SqliteStore(config, state_dir, clock=clock, monotonic=monotonic)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SqliteStore:
        await self.store.open()
        self.task = asyncio.create_task(self.store.run(), name="store")
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task
        await self.store.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def take_seqs(store: SqliteStore, count: int, *, ack: bool = True) -> list[int]:
    seqs = []
    for _ in range(count):
        async with asyncio.timeout(5):
            message_id, msg = await store.take()
        seqs.append(msg.seq)
        if ack:
            store.ack(message_id)
    return seqs


def rows_on_disk(state_dir: Path) -> list[int]:
    """The rows committed to the queue file, read by an independent connection (also while it runs)."""
    with contextlib.closing(sqlite3.connect(f"file:{state_dir / DB_NAME}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT seq FROM messages ORDER BY id")]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


async def test_unacknowledged_messages_survive_a_restart_and_come_back_oldest_first(state_dir: Path) -> None:
    async with Running(state_dir, settings()) as store:
        for seq in range(1, 301):
            store.append(message(seq))
        # Sent but not acknowledged when the gateway stops: still owed to the broker.
        assert await take_seqs(store, 10, ack=False) == list(range(1, 11))
        await store.sync()
        assert store.stats().disk_messages == 300

    assert rows_on_disk(state_dir) == list(range(1, 301))
    async with Running(state_dir, settings()) as store:
        assert len(store) == 300
        assert await take_seqs(store, 300) == list(range(1, 301))
        await store.sync()
        assert store.stats().disk_messages == 0
    assert rows_on_disk(state_dir) == []


async def test_acknowledged_messages_are_deleted_and_not_sent_again(state_dir: Path) -> None:
    async with Running(state_dir, settings()) as store:
        for seq in range(1, 51):
            store.append(message(seq))
        assert await take_seqs(store, 20) == list(range(1, 21))

    assert rows_on_disk(state_dir) == list(range(21, 51))
    async with Running(state_dir, settings()) as store:
        assert await take_seqs(store, 30) == list(range(21, 51))


async def test_in_always_mode_nothing_is_sent_before_it_is_committed(state_dir: Path) -> None:
    async with Running(state_dir, settings(batch_messages=1000, batch_interval=0.3)) as store:
        store.append(message(1))
        started = time.monotonic()
        _, msg = await store.take()
        waited = time.monotonic() - started
        assert msg.seq == 1
        assert rows_on_disk(state_dir) == [1]
        # It waited for the batch interval (nothing else filled the batch).
        assert waited >= 0.25


async def test_the_sequence_number_survives_restarts_and_never_goes_back(state_dir: Path) -> None:
    async with Running(state_dir, settings()) as store:
        assert store.next_seq == 1
        for seq in range(1, 11):
            store.append(message(seq))
        await take_seqs(store, 10)

    async with Running(state_dir, settings()) as store:
        second = store.next_seq
        assert second > 10
        assert second <= 1 + SEQ_BLOCK
        # A long run goes past the reserved block: the reservation moves ahead before it is reached.
        for seq in range(second, second + SEQ_BLOCK + 500):
            store.append(message(seq))
        await take_seqs(store, SEQ_BLOCK + 500)

    async with Running(state_dir, settings()) as store:
        assert store.next_seq > second + SEQ_BLOCK + 500


async def test_a_backlog_drains_interleaved_with_fresh_messages(state_dir: Path) -> None:
    async with Running(state_dir, settings()) as store:
        for seq in range(1, 2001):
            store.append(message(seq))
        await store.sync()
        assert store.stats().disk_messages == 2000

    async with Running(state_dir, settings(replay_share=0.25)) as store:
        store.link_up()
        for seq in range(5001, 5401):
            store.append(message(seq))
        await store.sync()
        sent = await take_seqs(store, 400)

    backlog = [s for s in sent if s < 5000]
    fresh = [s for s in sent if s > 5000]
    # Both advance, each oldest first, and the backlog gets its configured share (1 in 4).
    assert backlog == list(range(1, len(backlog) + 1))
    assert fresh == list(range(5001, 5001 + len(fresh)))
    assert 90 <= len(backlog) <= 110, len(backlog)


async def test_a_long_outage_keeps_memory_bounded_and_sends_everything_in_order(state_dir: Path) -> None:
    async with Running(state_dir, settings(memory_messages=100, replay_share=1.0)) as store:
        for seq in range(1, 5001):
            store.append(message(seq))
            if seq % 500 == 0:
                await asyncio.sleep(0)
        # About memory_messages, plus one read-back chunk of half as many.
        assert store._memory_count() <= 100 + 50
        store.link_up()
        assert await take_seqs(store, 5000) == list(range(1, 5001))


async def test_max_messages_drops_the_oldest_and_counts(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fieldgate.store")
    async with Running(state_dir, settings(max_messages=1000)) as store:
        for seq in range(1, 3001):
            store.append(message(seq))
            if seq % 200 == 0:
                await store.sync()
        assert len(store) == 1000
        assert store.dropped == 2000
        await store.sync()
        assert store.stats().disk_messages == 1000
        assert await take_seqs(store, 1000) == list(range(2001, 3001))
        await wait_until(lambda: len(store) == 0)

    assert rows_on_disk(state_dir) == []
    text = caplog.text
    assert "store full (1000 messages): dropping the oldest" in text
    assert "store full (1000 messages) no more: 2000 messages" in text


async def test_drop_newest_keeps_the_oldest(state_dir: Path) -> None:
    async with Running(state_dir, settings(max_messages=100, overflow="drop-newest")) as store:
        for seq in range(1, 201):
            store.append(message(seq))
        assert store.dropped == 100
        assert await take_seqs(store, 100) == list(range(1, 101))


async def test_max_disk_size_drops_the_oldest(state_dir: Path) -> None:
    # 1 MiB of 10 kB messages: about a hundred fit.
    async with Running(state_dir, settings(max_disk_bytes=2**20, max_messages=100_000)) as store:
        for seq in range(1, 401):
            store.append(message(seq, size=10_000))
            if seq % 50 == 0:
                await store.sync()
        await wait_until(lambda: not store._to_insert and not store._gap_drops)
        kept = len(store)
        assert 90 <= kept <= 105
        assert store.dropped == 400 - kept
        assert store._disk_bytes <= 2**20
        assert await take_seqs(store, kept) == list(range(401 - kept, 401))


async def test_messages_older_than_max_age_are_dropped(state_dir: Path) -> None:
    now = [1_000_000.0]
    # Both clocks stand still: the ages are the ones the stamps give.
    frozen = Running(state_dir, settings(max_age=60.0), clock=lambda: now[0], monotonic=lambda: 500.0)
    async with frozen as store:
        for seq in range(1, 301):
            store.append(message(seq, ts=now[0] - 300.5 + seq))  # ages 299.5 s ... 0.5 s
        await store.sync()
        assert store.stats().disk_messages == 300
        await wait_until(lambda: len(store) == 60, timeout=5)
        assert store.dropped == 240
        assert await take_seqs(store, 60) == list(range(241, 301))


async def test_a_wall_clock_step_of_a_year_expires_nothing(state_dir: Path) -> None:
    """A Pi without RTC boots with a stale clock; NTP then steps it forward by a year. Ages are judged by
    the monotonic clock, so the step expires nothing, and messages still age and expire as before."""
    wall, mono = [1_000_000.0], [500.0]
    year = 365 * 24 * 3600.0
    running = Running(state_dir, settings(max_age=60.0), clock=lambda: wall[0], monotonic=lambda: mono[0])
    async with running as store:
        for seq in range(1, 101):
            store.append(message(seq, ts=wall[0] - 30))  # 30 s old
        await store.sync()
        wall[0] += year
        mono[0] += 20  # 50 s old now
        for seq in range(101, 111):
            store.append(message(seq, ts=wall[0]))  # stamped after the step
        store._sweep()  # what the store's task does every second, run now so the step cannot hide
        assert len(store) == 110 and store.dropped == 0

        mono[0] += 15  # the first hundred are 65 s old, the last ten 15 s
        store._sweep()
        assert len(store) == 10 and store.dropped == 100
        assert await take_seqs(store, 10) == list(range(101, 111))


@pytest.fixture
def damaged_state_dir(state_dir: Path) -> Path:
    state_dir.mkdir()
    (state_dir / DB_NAME).write_bytes(b"this is not a SQLite database at all" * 100)
    return state_dir


def kept_aside(state_dir: Path) -> list[Path]:
    return list(state_dir.glob(f"{DB_NAME}.corrupt-*"))


async def test_a_corrupt_file_is_moved_aside_and_a_fresh_store_starts(
    damaged_state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = damaged_state_dir
    async with Running(state_dir, settings()) as store:
        assert store.durable
        store.append(message(1))
        assert await take_seqs(store, 1) == [1]

    kept = kept_aside(state_dir)
    assert len(kept) == 1
    assert kept[0].read_bytes().startswith(b"this is not a SQLite database")
    assert "is damaged" in caplog.text and "moved aside to" in caplog.text
    assert rows_on_disk(state_dir) == []


async def test_an_unusable_state_dir_degrades_to_memory_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")

    async with Running(blocker / "state", settings()) as store:
        assert not store.durable
        assert store.stats().degraded
        for seq in range(1, 11):
            store.append(message(seq))
        assert await take_seqs(store, 10) == list(range(1, 11))

    assert "STORE UNAVAILABLE" in caplog.text and "MEMORY ONLY" in caplog.text


async def test_outage_mode_writes_nothing_while_the_uplink_delivers(state_dir: Path) -> None:
    async with Running(state_dir, settings(durability="outage")) as store:
        store.link_up()
        for seq in range(1, 51):
            store.append(message(seq))
        assert await take_seqs(store, 50) == list(range(1, 51))
        assert store.stats().disk_messages == 0

        # The uplink goes down: what waits is written, and so is everything after.
        for seq in range(51, 61):
            store.append(message(seq))
        store.link_down()
        for seq in range(61, 71):
            store.append(message(seq))
        await store.sync()
        assert rows_on_disk(state_dir) == list(range(51, 71))

        store.link_up()
        for seq in range(71, 81):
            store.append(message(seq))
        assert sorted(await take_seqs(store, 30)) == list(range(51, 81))
        await store.sync()
        assert store.stats().disk_messages == 0


async def test_outage_mode_writes_what_waits_on_shutdown(state_dir: Path) -> None:
    async with Running(state_dir, settings(durability="outage")) as store:
        store.link_up()
        for seq in range(1, 31):
            store.append(message(seq))
        await take_seqs(store, 5, ack=False)  # in flight when stopping
        assert store.stats().disk_messages == 0

    assert rows_on_disk(state_dir) == list(range(1, 31))


async def test_qos0_messages_can_bypass_the_disk(state_dir: Path) -> None:
    async with Running(state_dir, settings(bypass_qos0=True)) as store:
        for seq in range(1, 11):
            store.append(message(seq, qos=0 if seq % 2 else 1))
        assert sorted(await take_seqs(store, 10, ack=False)) == list(range(1, 11))

    assert rows_on_disk(state_dir) == [2, 4, 6, 8, 10]


async def test_qos0_messages_past_the_memory_window_are_dropped_and_counted_never_lost_silently(
    state_dir: Path,
) -> None:
    """QoS 0 messages that bypass the disk cannot wait on it: past the memory window they are dropped,
    and the drop is counted like any other. Every QoS 1 message is still delivered."""
    async with Running(state_dir, settings(bypass_qos0=True, memory_messages=10)) as store:
        for seq in range(1, 41):
            store.append(message(seq, qos=0 if seq % 2 else 1))
        await store.sync()
        delivered = await take_seqs(store, len(store))

    assert set(range(2, 41, 2)) <= set(delivered)
    assert len(delivered) + store.stats().dropped == 40
    assert len(store) == 0


FULL_DISK_SCRIPT = """
import asyncio, dataclasses, json, resource, signal, sys, time, logging
from pathlib import Path
from gateway.config.model import StoreSettings
from gateway.model import Message
from gateway.store.sqlite import SqliteStore
import gateway.store.sqlite as ss

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
ss.RETRY_INTERVAL = 0.3

async def main():
    store = SqliteStore(StoreSettings(batch_interval=0.01), Path(sys.argv[1]))
    await store.open()
    task = asyncio.create_task(store.run())
    # The file system refuses to let files grow (as a full disk does) from now on.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = 64 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    sent = []
    for seq in range(1, 2001):
        store.append(Message(topic="t", payload=json.dumps({"seq": seq, "pad": "x" * 200}).encode(),
                             seq=seq, timestamp=time.time()))
        if seq % 100 == 0:
            await asyncio.sleep(0.01)
    while len(sent) < 2000:
        mid, msg = await asyncio.wait_for(store.take(), 5)
        sent.append(msg.seq)
        store.ack(mid)
    print("degraded", store.stats().degraded, flush=True)
    # Room again: writing resumes by itself.
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    store.append(Message(topic="t", payload=b"{}", seq=3000, timestamp=time.time()))
    deadline = time.monotonic() + 5
    while store.stats().degraded and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print("recovered", not store.stats().degraded, flush=True)
    print("sent", sorted(sent) == list(range(1, 2001)), flush=True)
    task.cancel()
    await store.close()

asyncio.run(main())
"""


def test_a_full_disk_degrades_to_memory_without_crashing_and_recovers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path / "state")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:3] == ["degraded True", "recovered True", "sent True"]
    assert "STORE CANNOT WRITE" in result.stderr
    assert "writing works again" in result.stderr


async def test_messages_lost_in_flight_are_resent_oldest_first_by_both_stores(state_dir: Path) -> None:
    memory = MemoryStore(100)
    async with Running(state_dir, settings()) as sqlite:
        for store in (memory, sqlite):
            for seq in range(1, 6):
                store.append(message(seq))
            taken = [await store.take() for _ in range(3)]
            # The connection drops: the uplink reports the window lost, oldest first.
            for message_id, _ in taken:
                store.release(message_id)
            resent = [(await store.take())[1].seq for _ in range(5)]
            assert resent == [1, 2, 3, 4, 5], type(store).__name__


async def test_when_full_the_oldest_waiting_message_goes_not_one_in_flight(state_dir: Path) -> None:
    async with Running(state_dir, settings(max_messages=30)) as store:
        for seq in range(1, 31):
            store.append(message(seq))
        await store.sync()
        # The uplink is back: the pump has a window of the oldest out while new readings still come.
        window = [await store.take() for _ in range(10)]
        for seq in range(31, 34):
            store.append(message(seq))
        assert store.dropped == 3
        for message_id, _ in window:
            store.ack(message_id)
        rest = await take_seqs(store, 20)

    delivered = [m.seq for _, m in window] + rest
    # In flight cannot be dropped: the hole is right behind the window, and every message the store
    # accepted was delivered or counted as dropped, exactly once.
    assert delivered == [*range(1, 11), *range(14, 34)]
    assert len(delivered) + store.dropped == 33
    assert rows_on_disk(state_dir) == []


async def test_dead_letters_leave_the_queue_and_are_kept_aside_by_both_stores(state_dir: Path) -> None:
    memory = MemoryStore(100)
    async with Running(state_dir, settings()) as sqlite:
        for store in (memory, sqlite):
            for seq in range(1, 4):
                store.append(message(seq))
            message_id, _ = await store.take()
            store.dead_letter(message_id, "retry 10 times, last: 0x97 Quota exceeded")
            # It never comes back: the next messages flow.
            assert await take_seqs(store, 2) == [2, 3], type(store).__name__  # type: ignore[arg-type]
            assert len(store) == 0 and store.stats().dead_letters == 1
        await sqlite.sync()
    assert [(m.seq, why) for m, why, _ in memory.dead] == [(1, "retry 10 times, last: 0x97 Quota exceeded")]
    with contextlib.closing(sqlite3.connect(f"file:{state_dir / DB_NAME}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT seq, topic, reason FROM dead_letters").fetchall()
    assert rows == [(1, "sites/lab/gw/dev/telemetry", "retry 10 times, last: 0x97 Quota exceeded")]
    assert rows_on_disk(state_dir) == []
    # The count survives a restart (status shows what waits for inspection).
    async with Running(state_dir, settings()) as sqlite:
        assert sqlite.stats().dead_letters == 1
