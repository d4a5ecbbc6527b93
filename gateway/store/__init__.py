"""The durable queue between router and uplink: messages wait here until the broker acknowledges them.

A message handed to the uplink stays "in flight" until its outcome is known: delivered or refused
messages are removed (``ack``), lost ones go back to the head of the queue (``release``) and are sent
again, oldest first. Two implementations share the :class:`Store` protocol: :class:`~gateway.store.memory.
MemoryStore` (bounded, in memory) and :class:`~gateway.store.sqlite.SqliteStore` (a SQLite file, its
commits on a worker thread); :func:`make_store` picks one from the config. Reference: ``README.md`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.config.model import StoreSettings
from gateway.model import Message


@dataclass(frozen=True, slots=True)
class StoreStats:
    """The store's depth, traffic and drops at one moment."""

    depth: int
    in_flight: int
    appended: int
    acked: int
    released: int
    dropped: int
    oldest_timestamp: float | None
    #: Messages whose copy is on disk (written, or queued for the next commit); 0 for the memory store.
    disk_messages: int = 0
    #: Size of the store's files (database and write-ahead log).
    disk_bytes: int = 0
    #: True while a durable store keeps messages in memory only (the disk cannot be written).
    degraded: bool = False
    #: Messages moved aside after the broker kept refusing them (or they kept ending the connection):
    #: the SQLite store's ``dead_letters`` table, the memory store's bounded list.
    dead_letters: int = 0


class Store(Protocol):
    """What the router task, the pump and the supervisor use (MemoryStore and SqliteStore)."""

    max_messages: int
    dropped: int
    #: The pump counts the uplink as down when a send has waited this long (seconds).
    down_after: float

    @property
    def next_seq(self) -> int:
        """The first sequence number the router may use (persisted by durable stores)."""
        ...

    def __len__(self) -> int: ...

    async def open(self) -> None: ...

    async def run(self) -> None:
        """Background work (batched commits, reading back) until cancelled."""
        ...

    async def close(self) -> None:
        """Keep what is undelivered (durable stores write it) and release files."""
        ...

    def append(self, message: Message) -> None: ...

    async def take(self) -> tuple[int, Message]: ...

    def ack(self, message_id: int) -> None: ...

    def release(self, message_id: int) -> None: ...

    def dead_letter(self, message_id: int, reason: str) -> None:
        """Move an in-flight message aside for good (it was resent too often); it never blocks the queue."""
        ...

    def link_up(self) -> None:
        """The uplink delivers again (the pump saw a DELIVERED outcome)."""
        ...

    def link_down(self) -> None:
        """The uplink lost its connection or has accepted nothing for ``down_after`` seconds."""
        ...

    async def wait_empty(self) -> None: ...

    def stats(self) -> StoreStats: ...


def make_store(settings: StoreSettings, state_dir: Path) -> Store:
    """The store the config asks for: SQLite in ``state_dir`` (default) or memory."""
    if settings.kind == "memory":
        from gateway.store.memory import MemoryStore

        return MemoryStore(settings.max_messages, settings.overflow)
    from gateway.store.sqlite import SqliteStore

    return SqliteStore(settings, state_dir)
