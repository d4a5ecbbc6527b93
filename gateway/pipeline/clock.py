"""Is the wall clock set yet? Readings stamped before it is are marked ``"clock": "unsynced"``.

A Raspberry Pi has no real-time clock: it boots with the time it saved at shutdown (fake-hwclock) or
1970, and NTP steps it forward some time later. The kernel's own flag (adjtimex, STA_UNSYNC) is no help
here: it stays set under time daemons that step the clock without disciplining it, and in containers,
which would mark every reading. So the rule is a high-water mark: the clock is not set while it reads
earlier than the latest time this gateway has already seen (saved in the state directory every minute)
or than :data:`EARLIEST` (before this code existed). Reference: ``README.md`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("fieldgate.clock")

#: The file in the state directory holding the latest wall-clock time seen (seconds since the epoch).
CLOCK_FILE = "clock-high-water"
#: No right clock reads earlier than this (2025-06-01 UTC, before this code was written).
EARLIEST = 1_748_736_000.0
#: How often the high-water mark is saved while the clock is set.
SAVE_INTERVAL = 60.0


def _read_mark(path: Path) -> float | None:
    try:
        return float(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _write_mark(path: Path, value: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value:.0f}\n", encoding="ascii")
    tmp.replace(path)


class ClockCheck:
    """``synced()`` is False while the wall clock reads earlier than the high-water mark."""

    def __init__(
        self,
        state_dir: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        earliest: float = EARLIEST,
    ) -> None:
        self._path = state_dir / CLOCK_FILE if state_dir is not None else None
        self._clock = clock
        self._mark = earliest
        self._unsynced_logged = False

    @property
    def mark(self) -> float:
        return self._mark

    async def load(self) -> None:
        """Read the mark the last run left (a small file: in a worker thread all the same)."""
        if self._path is not None:
            saved = await asyncio.to_thread(_read_mark, self._path)
            if saved is not None:
                self._mark = max(self._mark, saved)

    def synced(self) -> bool:
        now = self._clock()
        if now >= self._mark:
            if self._unsynced_logged:
                self._unsynced_logged = False
                log.info("wall clock set (it reads %s): readings are no longer marked unsynced", _iso(now))
            return True
        if not self._unsynced_logged:
            self._unsynced_logged = True
            log.warning(
                "wall clock not set yet: it reads %s, earlier than %s already seen; readings carry "
                '"clock": "unsynced" until it is',
                _iso(now),
                _iso(self._mark),
            )
        return False

    async def keep(self) -> None:
        """Save the mark every minute while the clock is set. Runs until cancelled."""
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            now = self._clock()
            if self._path is None or now < self._mark:
                continue
            self._mark = now
            with contextlib.suppress(OSError):
                # A read-only or missing state directory costs only the mark for the next boot.
                await asyncio.to_thread(_write_mark, self._path, now)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(0.0, seconds)))
