"""``MemoryStore``: the store in memory, bounded (``max_messages``) with a stated overflow policy.

``drop-oldest`` (default) discards the oldest waiting message, ``drop-newest`` refuses the new one; both are
counted and logged once per overflow episode. What it holds is lost when the process stops (dry runs,
tests, ``[store] kind = "memory"``, and the SQLite store's fallback when its disk fails).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from gateway.model import Message
from gateway.store import StoreStats

log = logging.getLogger("fieldgate.store")

#: Dead letters kept in memory (the oldest go first); the count goes on.
DEAD_LETTERS_KEPT = 1000


class MemoryStore:
    down_after = 5.0

    def __init__(self, max_messages: int, overflow: str = "drop-oldest") -> None:
        if overflow not in ("drop-oldest", "drop-newest"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        self.max_messages = max_messages
        self.overflow = overflow
        self._waiting: deque[tuple[int, Message]] = deque()
        self._in_flight: dict[int, Message] = {}
        self._next_id = 1
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._overflowing = False
        self.appended = self.acked = self.released = self.dropped = 0
        #: (message, reason, time) of the messages moved aside, newest last.
        self.dead: deque[tuple[Message, str, float]] = deque(maxlen=DEAD_LETTERS_KEPT)
        self.dead_lettered = 0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._in_flight)

    @property
    def next_seq(self) -> int:
        # Nothing survives a restart here, so numbering starts again at 1.
        return 1

    async def open(self) -> None:
        return

    async def run(self) -> None:
        # Nothing to do in the background: memory needs no commits.
        await asyncio.Event().wait()

    async def close(self) -> None:
        return

    def link_up(self) -> None:
        return

    def link_down(self) -> None:
        return

    def append(self, message: Message) -> None:
        if len(self) >= self.max_messages:
            if not self._overflowing:
                log.error(
                    "store full (%d messages): applying %s until the uplink catches up",
                    self.max_messages,
                    self.overflow,
                )
                self._overflowing = True
            self.dropped += 1
            if self.overflow == "drop-newest" or not self._waiting:
                return
            self._waiting.popleft()
        elif self._overflowing and len(self) < self.max_messages * 0.9:
            log.info("store below its bound again; %d messages were dropped so far", self.dropped)
            self._overflowing = False
        self._waiting.append((self._next_id, message))
        self._next_id += 1
        self.appended += 1
        self._ready.set()
        self._idle.clear()

    async def take(self) -> tuple[int, Message]:
        """The oldest waiting message, now in flight; waits while there is none."""
        while not self._waiting:
            self._ready.clear()
            await self._ready.wait()
        entry = self._waiting.popleft()
        self._in_flight[entry[0]] = entry[1]
        return entry

    def ack(self, message_id: int) -> None:
        """The message's outcome is final (delivered or refused): forget it."""
        if self._in_flight.pop(message_id, None) is not None:
            self.acked += 1
        self._check_idle()

    def release(self, message_id: int) -> None:
        """The message was not delivered (connection lost): send it again before newer ones."""
        message = self._in_flight.pop(message_id, None)
        if message is not None:
            self.released += 1
            # Back in id order: a lost window is released oldest first and must be resent that way.
            index = 0
            while index < len(self._waiting) and self._waiting[index][0] < message_id:
                index += 1
            self._waiting.insert(index, (message_id, message))
            self._ready.set()

    def dead_letter(self, message_id: int, reason: str) -> None:
        """Keep the message aside (bounded list) instead of resending it again."""
        message = self._in_flight.pop(message_id, None)
        if message is not None:
            self.dead_lettered += 1
            self.dead.append((message, reason, time.time()))
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._waiting and not self._in_flight:
            self._idle.set()

    async def wait_empty(self) -> None:
        """Until nothing waits and nothing is in flight (used to flush on shutdown)."""
        await self._idle.wait()

    def stats(self) -> StoreStats:
        # The waiting queue is in arrival order and the in-flight set is small (the uplink's window).
        candidates = [m.timestamp for m in self._in_flight.values()]
        if self._waiting:
            candidates.append(self._waiting[0][1].timestamp)
        oldest = min(candidates, default=None)
        return StoreStats(
            depth=len(self),
            in_flight=len(self._in_flight),
            appended=self.appended,
            acked=self.acked,
            released=self.released,
            dropped=self.dropped,
            oldest_timestamp=oldest,
            dead_letters=self.dead_lettered,
        )
