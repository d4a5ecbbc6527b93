"""The durable store: a SQLite queue in ``[gateway] state_dir`` between router and uplink.

Messages are written in small transactions (``batch_messages`` or ``batch_interval``, whichever comes
first) and deleted only after the broker's acknowledgement, so a message that was committed reaches the
broker at least once, across crashes and restarts. Memory holds a bounded window of the queue; the rest
waits on disk and is read back oldest first.

The queue is three runs of ids, oldest to newest::

    head (backlog in memory) | gap (on disk only) | tail (live, in memory)   + awaiting (not yet committed)

``take`` serves lost-and-released messages first, then interleaves the backlog (head, refilled from the
gap) with the live tail by ``replay_share``, so that fresh readings are not starved while a backlog drains.
When the uplink comes back, what waited during the outage becomes backlog.

Durability modes: ``always`` writes every message before it may be sent; ``outage`` keeps messages in
memory while the uplink delivers, and writes them when it goes down, when more than ``memory_messages``
wait, and on shutdown.

All SQLite work runs on one dedicated worker thread: a sqlite3 connection must not be used by two threads
at once and our jobs must run in order (inserts before the deletes that follow them), and commits
(fsync of the WAL at checkpoints) must never block the event loop. A single-thread executor gives both
and leaves the default executor to others. The event loop owns all bookkeeping; a job only carries the
rows and returns what it found.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from gateway.config.model import StoreSettings
from gateway.model import Message
from gateway.store import StoreStats
from gateway.store.sqlite_worker import (
    DB_NAME,
    DEAD_LETTERS_KEPT,
    LOAD_CHUNK,
    RETRY_INTERVAL,
    SEQ_BLOCK,
    SWEEP_INTERVAL,
    DiskQueue,
    _Entry,
    _Job,
    _JobResult,
    is_corruption,
    move_aside,
    row_size,
)

_T = TypeVar("_T")

log = logging.getLogger("fieldgate.store")


# -- drop episodes --------------------------------------------------------------------------------------
class _Episode:
    """A run of drops for one reason: logged when it starts and, with the totals, when it ends."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.active = False
        self.count = 0
        self.bytes = 0

    def hit(self, count: int, nbytes: int, what: str) -> None:
        if not self.active:
            self.active = True
            log.error("store %s: %s", self.reason, what)
        self.count += count
        self.bytes += nbytes

    def end(self) -> None:
        if self.active:
            log.warning(
                "store %s no more: %d messages (%.1f kB) were dropped",
                self.reason,
                self.count,
                self.bytes / 1e3,
            )
            self.active = False
            self.count = self.bytes = 0


# -- the event loop's side ------------------------------------------------------------------------------
class SqliteStore:
    """A bounded, durable queue with the interface of ``MemoryStore`` (see gateway/store/memory.py)."""

    def __init__(
        self,
        settings: StoreSettings,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.max_messages = settings.max_messages
        self.down_after = settings.down_after
        self.path = Path(state_dir) / DB_NAME
        self._clock = clock
        self._monotonic = monotonic
        # The wall clock as read at start, carried forward by the monotonic clock: a step of the system
        # clock (NTP after boot on a Pi without RTC) moves neither it nor the ages judged by it.
        self._wall_at_start = clock()
        self._mono_at_start = monotonic()
        self._disk: DiskQueue | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._job_future: asyncio.Future[_JobResult] | None = None
        self._job: tuple[_Job, int, int] | None = None
        self._jobs_started = self._jobs_finished = 0
        self._sync_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._always = settings.durability == "always"
        #: Rows read back per job: memory holds at most about memory_messages plus this.
        self._chunk = max(1, min(LOAD_CHUNK, settings.memory_messages // 2))
        #: Unknown at start: until the first delivery, messages are written (as when it is down).
        self._link_up = False
        #: Writes failed (disk full): messages stay in memory until a retry succeeds.
        self._write_failed: str | None = None
        self._open_failed = False
        self._retry_at = 0.0
        self._next_id = 1
        self._next_seq = 1
        self._seq_persisted = 1
        self._seq_wanted: int | None = None
        # queue
        self._released: list[tuple[int, _Entry]] = []
        self._head: deque[_Entry] = deque()
        #: Id ranges [start, end) whose rows wait on disk only, oldest first; one per eviction.
        self._gap: deque[list[int]] = deque()
        self._gap_count = 0
        self._gap_oldest_ts: float | None = None
        self._loading = False
        self._tail: deque[_Entry] = deque()
        self._awaiting: deque[_Entry] = deque()
        self._in_flight: dict[int, _Entry] = {}
        self._depth = 0
        self._credit = 0.0
        # pending disk work
        self._to_insert: list[_Entry] = []
        self._to_delete: list[int] = []
        self._gap_drops = 0
        self._gap_drop_estimate = 0
        self._expire_before: float | None = None
        self._pending_since: float | None = None
        self._disk_rows = 0
        self._disk_bytes = 0
        self._file_bytes = 0
        # signals
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._kick = asyncio.Event()
        # counters
        self.appended = self.acked = self.released = self.dropped = 0
        self.dropped_bytes = 0
        self.commits = 0
        #: Messages moved aside (``dead_letter``): counted from the table's rows at open.
        self.dead_lettered = 0
        self._to_dead: list[tuple[Message, str, float]] = []
        #: Without a usable disk, dead letters are kept in memory (bounded).
        self.dead: deque[tuple[Message, str, float]] = deque(maxlen=DEAD_LETTERS_KEPT)
        self._full = _Episode(f"full ({settings.max_messages} messages)")
        self._qos0_window = _Episode(
            f"memory window ({settings.memory_messages} messages) full of QoS 0 messages that bypass the disk"
        )
        self._disk_full = _Episode(f"over max_disk_mb ({settings.max_disk_bytes / 2**20:g} MiB)")
        self._aged = _Episode(f"dropping messages older than max_age ({settings.max_age:g} s)")

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def durable(self) -> bool:
        """The disk is in use (False when the state directory could not be opened or written)."""
        return self._disk is not None and self._write_failed is None

    async def open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fieldgate-store")
        disk = DiskQueue(self.path)
        try:
            opened = await self._in_worker(disk.open)
        except sqlite3.Error as exc:
            if not is_corruption(exc):
                self._degrade_at_open(str(exc))
                return
            try:
                kept = await self._in_worker(lambda: move_aside(self.path, self._clock()))
                log.error(
                    "store %s is damaged (%s): moved aside to %s (kept for inspection; the messages in it"
                    " are not sent); starting a fresh store",
                    self.path,
                    exc,
                    kept,
                )
                opened = await self._in_worker(disk.open)
            except (OSError, sqlite3.Error) as again:
                self._degrade_at_open(str(again))
                return
        except OSError as exc:
            self._degrade_at_open(exc.strerror or str(exc))
            return
        self._disk = disk
        self._next_id = opened.next_id
        self._next_seq = opened.next_seq
        self._seq_persisted = opened.next_seq
        self._seq_wanted = opened.next_seq + SEQ_BLOCK
        if opened.rows:
            self._gap.append([opened.first_id, opened.next_id])
        self._gap_count = opened.rows
        self._gap_oldest_ts = opened.oldest_ts
        self._depth = self._disk_rows = opened.rows
        self._disk_bytes = opened.bytes
        self._file_bytes = opened.file_bytes
        self.dead_lettered = opened.dead_letters
        if opened.rows:
            self._idle.clear()
            log.info(
                "store %s: %d messages (%.1f kB) waiting from before, oldest %s; numbering continues at %d",
                self.path,
                opened.rows,
                opened.bytes / 1e3,
                _when(opened.oldest_ts),
                opened.next_seq,
            )
        else:
            log.info("store %s opened (%s durability)", self.path, self.settings.durability)
        # Reserve the first block of sequence numbers before any message can be sent.
        await self._flush()

    async def sync(self) -> None:
        """Until everything appended so far is committed (or known to stay in memory)."""
        if self._disk is None:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The job that starts next carries everything appended until now.
        self._sync_waiters.append((self._jobs_started + 1, waiter))
        self._kick.set()
        await waiter

    def _degrade_at_open(self, why: str) -> None:
        self._open_failed = True
        log.error(
            "STORE UNAVAILABLE: cannot use %s (%s); running with messages in MEMORY ONLY - they are lost on"
            " restart. Fix the state directory and restart fieldgate.",
            self.path,
            why,
        )

    async def run(self) -> None:
        """Commits batches, reads the backlog back, applies the age bound; until cancelled."""
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while True:
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL
                self._sweep()
            if self._due(now):
                await self._flush()
                continue
            timeout = next_sweep - now
            if self._pending_since is not None:
                timeout = min(timeout, max(0.0, self._pending_since + self.settings.batch_interval - now))
            self._kick.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._kick.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Write what is undelivered (outage mode, bypassed nothing else), commit, close the file."""
        if self._executor is None:
            return
        if self._job_future is not None:
            try:
                self._finish_job(*await self._job_future_with_job())
            except Exception:
                log.exception("store: the last commit failed")
        if self._disk is not None:
            left = 0
            for entry in self._every_cached():
                left += 1
                self._make_durable(entry)
            try:
                await self._flush()
            except Exception:
                log.exception("store: writing the undelivered messages on shutdown failed")
            if self._write_failed is None:
                log.info(
                    "store closed: %d messages wait on disk for the next start (%d were in memory)",
                    self._disk_rows,
                    left,
                )
            else:
                log.error("store closed while it could not write: %d messages are lost", self._depth)
            disk = self._disk
            self._disk = None
            await self._in_worker(disk.close)
        elif self._depth:
            log.warning(
                "stopped with %d messages not delivered (the store could not use the disk)", self._depth
            )
        self._executor.shutdown(wait=True)
        self._executor = None

    # -- queue interface -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._depth

    def append(self, message: Message) -> None:
        size = row_size(message)
        if not self._room_for(size):
            return
        entry = _Entry(self._next_id, message, size, born=self._born(message.timestamp))
        self._next_id += 1
        self._depth += 1
        self.appended += 1
        self._idle.clear()
        bypass = self.settings.bypass_qos0 and message.qos == 0
        if self._disk is not None and self._write_failed is None and not bypass:
            if message.seq >= self._seq_persisted - SEQ_BLOCK // 2:
                self._seq_wanted = max(self._seq_wanted or 0, message.seq + SEQ_BLOCK)
                self._kick.set()
            if self._always or not self._link_up:
                self._make_durable(entry)
                self._awaiting.append(entry)
            elif self._awaiting or message.seq >= self._seq_persisted:
                # Keep order behind what waits for its commit; and never send a number not yet reserved.
                self._awaiting.append(entry)
                if self._pending_since is None:
                    self._pending_since = time.monotonic()
            else:
                self._to_tail(entry)
        elif self._awaiting:
            self._awaiting.append(entry)
        else:
            self._to_tail(entry)
        if self._memory_count() > self.settings.memory_messages:
            self._evict_tail()

    async def take(self) -> tuple[int, Message]:
        while True:
            entry = self._pop_next()
            if entry is not None:
                break
            self._ready.clear()
            await self._ready.wait()
        self._in_flight[entry.id] = entry
        return entry.id, entry.message

    def ack(self, message_id: int) -> None:
        entry = self._in_flight.pop(message_id, None)
        if entry is None:
            return
        self.acked += 1
        self._forget(entry)
        self._check_bounds_over()

    def release(self, message_id: int) -> None:
        entry = self._in_flight.pop(message_id, None)
        if entry is not None:
            self.released += 1
            heapq.heappush(self._released, (entry.id, entry))
            self._ready.set()

    def dead_letter(self, message_id: int, reason: str) -> None:
        """Move an in-flight message into the ``dead_letters`` table (with the next commit)."""
        entry = self._in_flight.pop(message_id, None)
        if entry is None:
            return
        self.dead_lettered += 1
        record = (entry.message, reason, self._clock())
        self._forget(entry)
        if self._disk is None:
            self.dead.append(record)
            return
        self._to_dead.append(record)
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._kick.set()

    def link_up(self) -> None:
        if self._link_up:
            return
        self._link_up = True
        # What waited during the outage is backlog now: it drains alongside fresh readings.
        if self._tail:
            if self._gap or self._loading or self._disk is None:
                if self._disk is not None:
                    self._evict_tail()
                else:
                    self._head.extend(self._tail)
                    self._tail.clear()
            else:
                self._head.extend(self._tail)
                self._tail.clear()
        if self._depth:
            log.info("store: uplink delivers again; %d messages wait, sending them oldest first", self._depth)

    def link_down(self) -> None:
        if not self._link_up:
            return
        self._link_up = False
        if self._always or self._disk is None:
            return
        spilled = 0
        for entry in self._every_cached():
            if not entry.durable:
                spilled += 1
                self._make_durable(entry)
        log.info("store: uplink down; writing messages to disk until it delivers again (%d now)", spilled)
        self._kick.set()

    async def wait_empty(self) -> None:
        await self._idle.wait()

    def stats(self) -> StoreStats:
        candidates = [e.message.timestamp for e in self._in_flight.values()]
        candidates += [e.message.timestamp for _, e in self._released]
        for lane in (self._head, self._tail, self._awaiting):
            if lane:
                candidates.append(lane[0].message.timestamp)
        if self._gap_count and self._gap_oldest_ts is not None:
            candidates.append(self._gap_oldest_ts)
        return StoreStats(
            depth=self._depth,
            in_flight=len(self._in_flight),
            appended=self.appended,
            acked=self.acked,
            released=self.released,
            dropped=self.dropped,
            oldest_timestamp=min(candidates, default=None),
            disk_messages=self._disk_rows,
            disk_bytes=self._file_bytes,
            degraded=self._open_failed or self._write_failed is not None,
            dead_letters=self.dead_lettered,
        )

    # -- internals: lanes ------------------------------------------------------------------------------
    def _to_tail(self, entry: _Entry) -> None:
        self._tail.append(entry)
        self._ready.set()

    def _memory_count(self) -> int:
        return len(self._head) + len(self._tail) + len(self._awaiting) + len(self._released)

    def _every_cached(self) -> Iterable[_Entry]:
        yield from self._in_flight.values()
        yield from (e for _, e in self._released)
        yield from self._head
        yield from self._tail
        yield from self._awaiting

    def _make_durable(self, entry: _Entry) -> None:
        if entry.durable or (self.settings.bypass_qos0 and entry.message.qos == 0):
            return
        entry.durable = True
        self._to_insert.append(entry)
        self._disk_rows += 1
        self._disk_bytes += entry.size
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        if len(self._to_insert) >= self.settings.batch_messages:
            self._kick.set()

    def _evict_tail(self) -> None:
        """Too many in memory: the newest go to disk only and come back, in order, through the gap."""
        if self._disk is None or self._write_failed is not None:
            return
        moved = []
        for entry in (*self._tail, *self._awaiting):
            if self.settings.bypass_qos0 and entry.message.qos == 0:
                # It opted out of the disk, so it cannot wait there: dropped, and counted.
                self._forget(entry)
                self._count_drop(1, entry.size)
                self._qos0_window.hit(
                    1, entry.size, "dropping those that no longer fit in memory until the uplink catches up"
                )
            else:
                moved.append(entry)
        if not moved:
            self._tail.clear()
            self._awaiting.clear()
            return
        for entry in moved:
            entry.cached = False
            self._make_durable(entry)
        if not self._gap and not self._loading:
            self._gap_oldest_ts = moved[0].message.timestamp
        # A range of its own: ids between the previous range and this one are in memory or in flight.
        self._gap.append([moved[0].id, self._next_id])
        self._gap_count += len(moved)
        self._tail.clear()
        self._awaiting.clear()
        self._kick.set()

    def _pop_next(self) -> _Entry | None:
        if self._released:
            return heapq.heappop(self._released)[1]
        if self._load_wanted():
            self._kick.set()
        share = self.settings.replay_share
        if self._tail and (self._head or self._gap):
            if self._credit + share >= 1.0:
                if not self._head:
                    return None  # the backlog's turn: its next rows are being read back
                self._credit += share - 1.0
                return self._head.popleft()
            self._credit += share
            return self._tail.popleft()
        if self._head:
            return self._head.popleft()
        if self._tail:
            return self._tail.popleft()
        return None

    def _forget(self, entry: _Entry) -> None:
        """One message leaves the queue (acknowledged or dropped)."""
        self._depth -= 1
        if entry.durable:
            self._to_delete.append(entry.id)
            self._disk_rows -= 1
            self._disk_bytes -= entry.size
            if self._pending_since is None:
                self._pending_since = time.monotonic()
        if not self._depth:
            self._idle.set()

    # -- internals: bounds -----------------------------------------------------------------------------
    def _room_for(self, size: int) -> bool:
        """Apply the bounds before a message of ``size`` bytes enters; False: drop the new one."""
        durable = self._disk is not None and self._write_failed is None
        over_count = self._depth >= self.max_messages
        over_bytes = durable and self._disk_bytes + size > self.settings.max_disk_bytes
        if not over_count and not over_bytes:
            return True
        episode = self._full if over_count else self._disk_full
        if self.settings.overflow == "drop-newest":
            self._count_drop(1, size)
            episode.hit(1, size, "dropping the newest messages until the uplink catches up")
            return False
        what = "dropping the oldest messages until the uplink catches up"
        while self._depth >= self.max_messages or (
            durable and self._disk_bytes + size > self.settings.max_disk_bytes and self._disk_rows
        ):
            freed = self._drop_oldest()
            if freed is None:
                # Everything left is in flight: the new message is the one that cannot be kept.
                self._count_drop(1, size)
                episode.hit(1, size, what)
                return False
            episode.hit(1, freed, what)
        return True

    def _drop_oldest(self) -> int | None:
        """Drop the oldest waiting message (not in flight, not about to be resent); its bytes, or None."""
        if self._head:
            entry = self._head.popleft()
        elif self._gap and self._gap_count > 0:
            # Its row is deleted with the next commit, which tells its real size.
            estimate = self._disk_bytes // max(1, self._disk_rows)
            self._gap_count -= 1
            self._gap_drops += 1
            self._gap_drop_estimate += estimate
            self._depth -= 1
            self._disk_rows -= 1
            self._disk_bytes -= estimate
            self._count_drop(1, estimate)
            if not self._depth:
                self._idle.set()
            self._kick.set()
            return estimate
        elif self._tail:
            entry = self._tail.popleft()
        elif self._awaiting:
            entry = self._awaiting.popleft()
        else:
            return None
        self._forget(entry)
        self._count_drop(1, entry.size)
        return entry.size

    def _count_drop(self, count: int, nbytes: int) -> None:
        self.dropped += count
        self.dropped_bytes += nbytes

    def _check_bounds_over(self) -> None:
        if self._qos0_window.active and self._memory_count() < self.settings.memory_messages * 0.9:
            self._qos0_window.end()
        if self._full.active and self._depth < self.max_messages * 0.9:
            self._full.end()
        if self._disk_full.active and self._disk_bytes < self.settings.max_disk_bytes * 0.9:
            self._disk_full.end()

    def _steady(self) -> float:
        """Wall time without the steps the system clock took since the store started."""
        return self._wall_at_start + (self._monotonic() - self._mono_at_start)

    def _born(self, timestamp: float) -> float:
        """The monotonic time a message of this wall-clock stamp was new: its age at arrival is judged
        from its stamp (never negative: a stamp after a clock step is new), then the monotonic clock's."""
        now = self._monotonic()
        return now - max(0.0, self._wall_at_start + (now - self._mono_at_start) - timestamp)

    def _sweep(self) -> None:
        """The age bound, oldest first; and the retry of a failed disk."""
        self._check_bounds_over()
        if self._write_failed is not None and time.monotonic() >= self._retry_at:
            self._kick.set()
        if not self.settings.max_age:
            return
        # Ages by the monotonic clock: a step of the wall clock expires nothing.
        born_before = self._monotonic() - self.settings.max_age
        cutoff = self._steady() - self.settings.max_age
        expired = expired_bytes = 0
        for lane in (self._head, self._tail, self._awaiting):
            while lane and lane[0].born < born_before:
                entry = lane.popleft()
                self._forget(entry)
                expired += 1
                expired_bytes += entry.size
        if expired:
            self._count_drop(expired, expired_bytes)
            self._aged.hit(expired, expired_bytes, "dropping messages older than the bound, oldest first")
        gap_old = self._gap_count and self._gap_oldest_ts is not None and self._gap_oldest_ts < cutoff
        if gap_old:
            self._expire_before = cutoff
            self._kick.set()
        elif not expired:
            self._aged.end()

    # -- internals: the worker -------------------------------------------------------------------------
    async def _in_worker(self, fn: Callable[[], _T]) -> _T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _due(self, now: float) -> bool:
        if self._disk is None:
            return False
        if self._sync_waiters:
            return True
        if self._write_failed is not None:
            return now >= self._retry_at or self._load_wanted()
        if len(self._to_insert) >= self.settings.batch_messages or self._load_wanted():
            return True
        if self._gap_drops or self._expire_before is not None:
            return True
        if self._seq_wanted is not None and self._seq_wanted > self._seq_persisted:
            return True
        return self._pending_since is not None and now >= self._pending_since + self.settings.batch_interval

    def _load_wanted(self) -> bool:
        return bool(self._gap) and not self._loading and len(self._head) < self._chunk // 2

    async def _flush(self) -> None:
        """Build one job from what is pending, run it on the worker, apply its result."""
        if self._disk is None or self._executor is None:
            return
        read_only = self._write_failed is not None and time.monotonic() < self._retry_at
        seq_reserve = self._seq_wanted
        if self._write_failed is not None and not read_only:
            # The retry must really write something to prove the disk takes writes again.
            seq_reserve = max(seq_reserve or 0, self._seq_persisted)
        job = _Job(
            inserts=[] if read_only else self._to_insert,
            deletes=[] if read_only else self._to_delete,
            gap=[(r[0], r[1]) for r in self._gap],
            gap_drops=0 if read_only else self._gap_drops,
            expire_before=None if read_only else self._expire_before,
            load=self._chunk if self._load_wanted() else 0,
            seq_reserve=None if read_only else seq_reserve,
            read_only=read_only,
            dead=[] if read_only else self._to_dead,
        )
        estimate = 0
        if not read_only:
            estimate = self._gap_drop_estimate
            self._to_insert, self._to_delete = [], []
            self._to_dead = []
            self._gap_drops = self._gap_drop_estimate = 0
            self._expire_before = None
            self._pending_since = None
        self._loading = bool(job.load)
        self._jobs_started += 1
        release_upto = self._next_id - 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._disk.run, job)
        self._job_future = future
        self._job = (job, release_upto, estimate)
        # Shielded: if the store task is cancelled mid-commit, close() still applies the result.
        try:
            result = await asyncio.shield(future)
        except sqlite3.Error as exc:
            # The worker maps a failed write (disk full, I/O) to write_error itself; what escapes it is a
            # damaged file (DatabaseError, DataError) met at run time: go on in memory, as at open.
            self._job_future = None
            await self._degrade_at_run(job, exc)
            return
        self._job_future = None
        self._finish_job(job, release_upto, estimate, result)

    async def _degrade_at_run(self, job: _Job, exc: sqlite3.Error) -> None:
        """The file turned unusable while running: keep what is in memory, count what only the file held
        as dropped, move the file aside (kept for inspection) and run in memory only until restart."""
        for entry in job.inserts:
            if not entry.cached:
                entry.cached = True
                self._gap_count = max(0, self._gap_count - 1)
                self._head.append(entry)
        lost = self._gap_count
        if lost:
            self._depth -= lost
            self._count_drop(lost, self._disk_bytes // max(1, self._disk_rows) * lost)
        self._gap.clear()
        self._gap_count = 0
        self._gap_oldest_ts = None
        self._to_insert, self._to_delete = [], []
        self._gap_drops = self._gap_drop_estimate = 0
        self._expire_before = None
        self._pending_since = None
        self._loading = False
        self._seq_wanted = None
        self._disk_rows = self._disk_bytes = self._file_bytes = 0
        for entry in self._every_cached():
            entry.durable = False
        while self._awaiting:
            self._to_tail(self._awaiting.popleft())
        if self._head:
            self._ready.set()
        if not self._depth:
            self._idle.set()
        for _, waiter in self._sync_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._sync_waiters = []
        self._open_failed = True
        disk, self._disk = self._disk, None
        kept: Path | str = "not moved"
        if disk is not None:
            try:
                await self._in_worker(disk.close)
                kept = await self._in_worker(lambda: move_aside(self.path, self._clock()))
            except (OSError, sqlite3.Error) as again:
                kept = f"not moved: {again}"
        log.error(
            "STORE DAMAGED while running: %s (%s); moved aside to %s; %d messages only it held are lost;"
            " running with messages in MEMORY ONLY until fieldgate restarts with a fresh store",
            self.path,
            exc,
            kept,
            lost,
        )

    async def _job_future_with_job(self) -> tuple[_Job, int, int, _JobResult]:
        assert self._job_future is not None
        assert self._job is not None
        job, release_upto, estimate = self._job
        result = await self._job_future
        self._job_future = None
        return job, release_upto, estimate, result

    def _finish_job(self, job: _Job, release_upto: int, estimate: int, result: _JobResult) -> None:
        self._file_bytes = result.file_bytes
        self._loading = False
        missing = 0
        if result.write_error is not None and not job.read_only:
            self._write_failed_with(job, estimate, result.write_error)
        elif not job.read_only:
            self.commits += 1
            if job.seq_reserve is not None:
                self._seq_persisted = max(self._seq_persisted, job.seq_reserve)
                if self._seq_wanted is not None and self._seq_wanted <= self._seq_persisted:
                    self._seq_wanted = None
            if self._write_failed is not None:
                log.warning("store %s: writing works again; messages go to disk as configured", self.path)
                self._write_failed = None
                for entry in self._every_cached():
                    if self._always or not self._link_up:
                        self._make_durable(entry)
            # Dropped gap rows: the real sizes replace the estimates; rows that were not found on disk
            # (a read-back took them first) are dropped from the head below instead.
            self._disk_bytes += estimate - result.dropped_bytes
            missing = job.gap_drops - result.dropped
            self._disk_rows += missing
            if result.expired:
                self._gap_count = max(0, self._gap_count - result.expired)
                self._depth -= result.expired
                self._disk_rows -= result.expired
                self._disk_bytes -= result.expired_bytes
                self._count_drop(result.expired, result.expired_bytes)
                self._aged.hit(result.expired, result.expired_bytes, "dropping messages older than the bound")
        # The gap after this job: the snapshot's leading ranges that were used up, and a new start.
        for _ in range(result.consumed):
            self._gap.popleft()
        if self._gap and result.consumed < len(job.gap) and result.next_start is not None:
            self._gap[0][0] = max(self._gap[0][0], result.next_start)
        self._gap_oldest_ts = result.gap_oldest_ts
        self._gap_count = max(0, self._gap_count - len(result.rows)) if self._gap else 0
        for row in result.rows:
            row.born = self._born(row.message.timestamp)
        self._head.extend(result.rows)
        if job.load:
            # Wake take(): rows arrived, or the gap turned out empty and the tail may go now.
            self._ready.set()
        for _ in range(min(missing, len(self._head))):
            entry = self._head.popleft()
            self._to_delete.append(entry.id)
            self._disk_rows -= 1
            self._disk_bytes -= entry.size
        if self._head:
            self._ready.set()
        # Committed (or, when writing failed, kept in memory): the awaiting messages may be sent.
        while self._awaiting:
            entry = self._awaiting[0]
            if entry.durable and entry.id > release_upto:
                break  # its row is in the next commit
            if self._write_failed is None and entry.message.seq >= self._seq_persisted:
                break
            self._to_tail(self._awaiting.popleft())
        if self._write_failed is not None:
            while self._awaiting:
                self._to_tail(self._awaiting.popleft())
        if not self._depth:
            self._idle.set()
        self._jobs_finished += 1
        waiting = []
        for needed, waiter in self._sync_waiters:
            if needed <= self._jobs_finished:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((needed, waiter))
        self._sync_waiters = waiting

    def _write_failed_with(self, job: _Job, estimate: int, why: str) -> None:
        first = self._write_failed is None
        self._write_failed = why
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        # Nothing of the job was written: give its work back.
        for entry in job.inserts:
            entry.durable = False
            self._disk_rows -= 1
            self._disk_bytes -= entry.size
            if not entry.cached:
                # It was meant to wait in the gap but exists in memory only now: keep it.
                entry.cached = True
                self._gap_count = max(0, self._gap_count - 1)
                self._head.append(entry)
        self._to_delete = job.deletes + self._to_delete
        self._to_dead = job.dead + self._to_dead
        self._gap_drops += job.gap_drops
        self._gap_drop_estimate += estimate
        if job.seq_reserve is not None and job.seq_reserve > self._seq_persisted:
            self._seq_wanted = max(self._seq_wanted or 0, job.seq_reserve)
        if job.expire_before is not None and self._expire_before is None:
            self._expire_before = job.expire_before
        if first:
            log.error(
                "STORE CANNOT WRITE %s (%s): keeping messages in MEMORY ONLY (lost on restart) and trying"
                " again every %g s",
                self.path,
                why,
                RETRY_INTERVAL,
            )
        else:
            log.debug("store %s still cannot write: %s", self.path, why)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
