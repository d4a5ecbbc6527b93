"""The SQLite store's worker-thread side: the file, its schema, and every statement run on it.

Only :class:`DiskQueue` touches the database, always on the store's single worker thread, so the event loop
never waits on a commit; :mod:`gateway.store.sqlite` hands it jobs and applies their results.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.model import Message

log = logging.getLogger("fieldgate.store")

DB_NAME = "queue.db"
#: Bytes a row costs beyond its topic, payload and device name (rowid, numbers, record header, cell).
ROW_OVERHEAD = 40
#: Sequence numbers are reserved on disk this many at a time, so numbering never goes back after a
#: restart without a write per message; a restart skips at most this many numbers.
SEQ_BLOCK = 10_000
#: Rows read back from disk per job.
LOAD_CHUNK = 1000
#: Seconds between attempts to write again after a write failed (disk full).
RETRY_INTERVAL = 30.0
#: Seconds between checks of the age bound.
SWEEP_INTERVAL = 1.0
#: Rows kept in the dead_letters table; the oldest are deleted beyond it.
DEAD_LETTERS_KEPT = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    qos INTEGER NOT NULL,
    device TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    qos INTEGER NOT NULL,
    device TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""
_SIZE = "length(CAST(topic AS BLOB)) + length(payload) + length(CAST(device AS BLOB))"


# Few statements per job, each doing many rows: the sqlite3 module releases the GIL around every step
# (each inserted, deleted or fetched row), and when the event loop is busy each re-acquisition can wait
# a whole switch interval (5 ms). A multi-row INSERT, a DELETE ... IN (...) and a read-back folded into
# one aggregated row keep a job to a handful of GIL hand-overs, whatever its size.
_INSERT = "INSERT INTO messages (id, seq, ts, qos, device, topic, payload) VALUES "
#: Rows per INSERT and ids per DELETE: within SQLite's 999 bound parameters (older builds).
_INSERT_ROWS = 999 // 7
_DELETE_IDS = 999
_READ = (
    "SELECT group_concat(r, ';') FROM (SELECT id || ' ' || seq || ' ' || printf('%.6f', ts) || ' ' || qos"
    " || ' ' || hex(CAST(device AS BLOB)) || ' ' || hex(CAST(topic AS BLOB)) || ' ' || hex(payload) AS r"
    " FROM messages WHERE id >= ? AND id < ? ORDER BY id LIMIT ?)"
)


def _read_rows(db: sqlite3.Connection, span: tuple[int, int], limit: int) -> list[_Entry]:
    """Up to ``limit`` rows of the range, oldest first, fetched as one row (see above)."""
    text = db.execute(_READ, (*span, limit)).fetchone()[0]
    entries = []
    for record in text.split(";") if text else ():
        row_id, seq, ts, qos, device, topic, payload = record.split(" ")
        message = Message(
            topic=bytes.fromhex(topic).decode(),
            payload=bytes.fromhex(payload),
            qos=int(qos),
            seq=int(seq),
            timestamp=float(ts),
            device=bytes.fromhex(device).decode(),
        )
        entries.append(_Entry(int(row_id), message, row_size(message), durable=True))
    # group_concat does not promise its input order.
    entries.sort(key=lambda e: e.id)
    return entries


def row_size(message: Message) -> int:
    return len(message.topic.encode()) + len(message.payload) + len(message.device.encode()) + ROW_OVERHEAD


@dataclass(slots=True, eq=False)
class _Entry:
    """A queued message and where it is (memory, disk or both)."""

    id: int
    message: Message
    size: int
    #: Its row is on disk or queued for the next commit (so an ack must delete it).
    durable: bool = False
    #: Still held in memory; False once moved to the gap (its commit must not put it in the tail).
    cached: bool = True
    #: ``time.monotonic()`` from which its age counts (set on the loop; see SqliteStore._steady).
    born: float = 0.0


# -- the worker thread's side ---------------------------------------------------------------------------
@dataclass(slots=True)
class _Job:
    """One transaction for the worker thread: rows to insert and ids to delete."""

    inserts: list[_Entry]
    deletes: list[int]
    #: The gap's id ranges [start, end), oldest first (rows in them are on disk only).
    gap: list[tuple[int, int]]
    gap_drops: int = 0
    expire_before: float | None = None
    load: int = 0
    seq_reserve: int | None = None
    #: Run only the reading part (loads) when writes are known to fail.
    read_only: bool = False
    #: Messages moved aside: (message, reason, wall-clock time).
    dead: list[tuple[Message, str, float]] = field(default_factory=list)


@dataclass(slots=True)
class _JobResult:
    """What the worker thread did with a job: rows read back and what it dropped."""

    rows: list[_Entry] = field(default_factory=list)
    dropped: int = 0
    dropped_bytes: int = 0
    expired: int = 0
    expired_bytes: int = 0
    #: Leading gap ranges found empty (read, dropped or expired to their end).
    consumed: int = 0
    #: Where the first range not consumed now starts.
    next_start: int | None = None
    gap_oldest_ts: float | None = None
    file_bytes: int = 0
    #: Why the writes failed (the disk is full or unwritable); reads were still done.
    write_error: str | None = None


class _GapCursor:
    """Walks the gap's ranges in id order on the worker thread."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = [list(r) for r in ranges]
        self.index = 0

    def next_range(self) -> tuple[int, int] | None:
        if self.index >= len(self.ranges):
            return None
        start, end = self.ranges[self.index]
        return start, end

    def advance(self, start: int | None) -> None:
        """The current range now starts at ``start``, or (None) it is used up."""
        if start is None:
            self.index += 1
        else:
            self.ranges[self.index][0] = start

    def into(self, result: _JobResult) -> None:
        result.consumed = self.index
        result.next_start = self.ranges[self.index][0] if self.index < len(self.ranges) else None


@dataclass(slots=True)
class _Opened:
    """The queue file's rows, bytes and id range when it was opened."""

    rows: int
    bytes: int
    first_id: int
    next_id: int
    next_seq: int
    oldest_ts: float | None
    file_bytes: int
    dead_letters: int = 0


class DiskQueue:
    """The SQLite file. Used only from the store's worker thread (one job at a time, in order)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None

    def open(self) -> _Opened:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One gateway per state directory: two processes sharing a queue would both send it. A lock
        # file (not SQLite's exclusive locking mode) so that the queue can still be inspected read-only.
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise sqlite3.OperationalError("another fieldgate process uses this state directory") from None
        self._lock = lock
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per job.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=1.0)
        self._db = db
        try:
            # auto_vacuum must be chosen before the first table exists: it lets the file shrink again
            # (incremental_vacuum) after a long outage's backlog has drained.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL journal mode (got {mode})")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
            rows, size, first, last = db.execute(
                f"SELECT count(*), coalesce(sum({_SIZE}), 0), min(id), max(id) FROM messages"
            ).fetchone()
            sequence = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
            reserved = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            max_seq = db.execute("SELECT max(seq) FROM messages").fetchone()[0]
            oldest = db.execute("SELECT ts FROM messages ORDER BY id LIMIT 1").fetchone()
            dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        except BaseException:
            self.close()
            raise
        top = max(last or 0, sequence[0] if sequence else 0)
        next_seq = max(reserved[0] if reserved else 1, (max_seq or 0) + 1)
        return _Opened(
            rows=rows,
            bytes=size + rows * ROW_OVERHEAD,
            first_id=first if first is not None else top + 1,
            next_id=top + 1,
            next_seq=next_seq,
            oldest_ts=oldest[0] if oldest else None,
            file_bytes=self.file_bytes(),
            dead_letters=dead,
        )

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def run(self, job: _Job) -> _JobResult:
        db = self._db
        assert db is not None
        result = _JobResult()
        cursor = _GapCursor(job.gap)
        if not job.read_only:
            try:
                self._write(db, job, result, cursor)
            except sqlite3.OperationalError as exc:
                # Disk full, I/O error, read-only file system: nothing of this job was written.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                result = _JobResult(write_error=str(exc))
                cursor = _GapCursor(job.gap)
        wanted = job.load
        while wanted > 0 and (span := cursor.next_range()) is not None:
            rows = _read_rows(db, span, wanted)
            result.rows.extend(rows)
            cursor.advance(rows[-1].id + 1 if len(rows) == wanted else None)
            wanted -= len(rows)
        cursor.into(result)
        while (span := cursor.next_range()) is not None:
            oldest = db.execute(
                "SELECT ts FROM messages WHERE id >= ? AND id < ? ORDER BY id LIMIT 1", span
            ).fetchone()
            if oldest is not None:
                result.gap_oldest_ts = oldest[0]
                break
            cursor.index += 1
        result.file_bytes = self.file_bytes()
        return result

    def _write(self, db: sqlite3.Connection, job: _Job, result: _JobResult, cursor: _GapCursor) -> None:
        # synchronous = NORMAL in WAL mode may lose the last commits on power loss; a sequence-number
        # reservation must not be lost (a reused seq would make consumers drop real readings as
        # duplicates), so a job carrying one is committed with an fsync of the WAL before it counts.
        reserving = job.seq_reserve is not None
        if reserving:
            db.execute("PRAGMA synchronous = FULL")
        try:
            self._write_job(db, job, result, cursor)
        finally:
            if reserving:
                db.execute("PRAGMA synchronous = NORMAL")

    def _write_job(self, db: sqlite3.Connection, job: _Job, result: _JobResult, cursor: _GapCursor) -> None:
        db.execute("BEGIN")
        for start in range(0, len(job.inserts), _INSERT_ROWS):
            chunk = job.inserts[start : start + _INSERT_ROWS]
            params: list[object] = []
            for e in chunk:
                m = e.message
                params += (e.id, m.seq, m.timestamp, m.qos, m.device, m.topic, m.payload)
            db.execute(_INSERT + ",".join(["(?,?,?,?,?,?,?)"] * len(chunk)), params)
        for start in range(0, len(job.deletes), _DELETE_IDS):
            ids = job.deletes[start : start + _DELETE_IDS]
            db.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids)
        wanted = job.gap_drops
        while wanted > 0 and (span := cursor.next_range()) is not None:
            count, size, last = db.execute(
                f"SELECT count(*), coalesce(sum({_SIZE}), 0), max(id) FROM"
                " (SELECT * FROM messages WHERE id >= ? AND id < ? ORDER BY id LIMIT ?)",
                (*span, wanted),
            ).fetchone()
            if count:
                db.execute("DELETE FROM messages WHERE id >= ? AND id <= ?", (span[0], last))
                result.dropped += count
                result.dropped_bytes += size + count * ROW_OVERHEAD
            cursor.advance(last + 1 if count == wanted else None)
            wanted -= count
        if job.expire_before is not None:
            # Messages enter roughly in time order: expire the gap's prefix older than the bound.
            while (span := cursor.next_range()) is not None:
                keep = db.execute(
                    "SELECT id FROM messages WHERE id >= ? AND id < ? AND ts >= ? ORDER BY id LIMIT 1",
                    (*span, job.expire_before),
                ).fetchone()
                end = keep[0] if keep else span[1]
                count, size = db.execute(
                    f"SELECT count(*), coalesce(sum({_SIZE}), 0) FROM messages WHERE id >= ? AND id < ?",
                    (span[0], end),
                ).fetchone()
                if count:
                    db.execute("DELETE FROM messages WHERE id >= ? AND id < ?", (span[0], end))
                    result.expired += count
                    result.expired_bytes += size + count * ROW_OVERHEAD
                if keep:
                    cursor.advance(end)
                    break
                cursor.advance(None)
        if job.dead:
            db.executemany(
                "INSERT INTO dead_letters (seq, ts, qos, device, topic, payload, reason, at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [(m.seq, m.timestamp, m.qos, m.device, m.topic, m.payload, r, at) for m, r, at in job.dead],
            )
            db.execute(
                "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?",
                (DEAD_LETTERS_KEPT,),
            )
        if job.seq_reserve is not None:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?)", (job.seq_reserve,))
        db.execute("COMMIT")
        if job.deletes or job.gap_drops or job.expire_before is not None:
            # Give free pages back to the file system a little at a time (cheap; no-op when none).
            db.execute("PRAGMA incremental_vacuum(256)").fetchall()

    def close(self) -> None:
        try:
            if self._db is not None:
                self._db.close()
        finally:
            self._db = None
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None


def is_corruption(exc: sqlite3.Error) -> bool:
    """A damaged or foreign file (as opposed to a full disk, a lock or a permission problem)."""
    if isinstance(exc, sqlite3.OperationalError):
        return False
    return isinstance(exc, sqlite3.DatabaseError)


def move_aside(path: Path, now: float) -> Path:
    """Rename a damaged database (and its WAL) so it is kept for inspection; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target
