"""Log output: human-readable lines by default, JSON lines on request, syslog priorities under systemd.

Lines about a device carry its name in the text and, for JSON, in a ``device`` field (pass
``extra={"device": name}``).

Under systemd (``JOURNAL_STREAM`` names our stderr, or ``--log-format journal``) every line starts with
its syslog priority, ``<3>`` for errors ... ``<7>`` for debug, which journald strips and records, so
``journalctl -p err -u fieldgate`` works; the journal keeps the time, so text lines leave it out.

Repeated warnings and errors are rate-limited: at most ``burst`` lines per message template (and
device) per ``window`` seconds; then one line says how many similar ones were suppressed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra`` fields (device, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, str | int | float | bool) or value is None else str(value)
                )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


#: syslog priorities of our levels (journald reads them from a ``<N>`` prefix).
SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return SYSLOG_PRIORITY[level]
    return SYSLOG_PRIORITY[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """Prefixes each line of another formatter's output with the record's syslog priority.

    A multi-line entry (a traceback, a list of config problems) becomes several journal lines; each
    carries the prefix, so ``journalctl -p err`` shows the whole of it.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines() or [""])


def journal_stream_is(stream: TextIO) -> bool:
    """True when ``$JOURNAL_STREAM`` (set by systemd) names this stream's file: it goes to journald."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(stream.fileno())
        return info.st_dev == int(device) and info.st_ino == int(inode)
    except (ValueError, OSError, AttributeError):
        return False


@dataclass
class _Window:
    """One message's rate-limit window: records passed and suppressed in it."""

    start: float
    passed: int = 0
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RepeatFilter(logging.Filter):
    """Lets at most ``burst`` records per key through per ``window`` seconds; counts the rest.

    The key is the logger, the level, the message template (``record.msg``, before its arguments are
    filled in) and the device (the ``device`` extra, or else a first string argument, which is how lines
    name their device), so one chatty device does not silence another. Records below ``level`` pass.
    """

    def __init__(
        self,
        handler: logging.Handler,
        *,
        burst: int = 10,
        window: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.burst = burst
        self.window = window
        self.level = level
        self.clock = clock
        self.suppressed_total = 0
        self._windows: dict[tuple[str, int, str, str], _Window] = {}

    @staticmethod
    def key(record: logging.LogRecord) -> tuple[str, int, str, str]:
        device = getattr(record, "device", None)
        args = record.args
        if device is None and isinstance(args, tuple) and args and isinstance(args[0], str):
            device = args[0]
        return (record.name, record.levelno, str(record.msg), str(device or ""))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or getattr(record, "_fieldgate_summary", False):
            return True
        now = self.clock()
        key = self.key(record)
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.window:
            self._summarise(window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(start=now)
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.suppressed += 1
        window.last = record
        self.suppressed_total += 1
        return False

    def flush(self, *, everything: bool = False) -> None:
        """Report windows that are over (all of them with ``everything``, at shutdown) and forget them."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if everything or now - window.start >= self.window:
                del self._windows[key]
                self._summarise(window)

    def _summarise(self, window: _Window) -> None:
        sample = window.last
        if not window.suppressed or sample is None:
            return
        summary = logging.LogRecord(
            sample.name,
            sample.levelno,
            sample.pathname,
            sample.lineno,
            "suppressed %d similar messages in %.0fs, the last: %s",
            (window.suppressed, self.clock() - window.start, sample.getMessage()),
            None,
        )
        summary.__dict__["_fieldgate_summary"] = True
        device = getattr(sample, "device", None)
        if device is not None:
            summary.__dict__["device"] = device
        self.handler.handle(summary)


#: The filter of the handler ``setup_logging`` installed (a list, so that setup can replace it).
_repeat_filters: list[RepeatFilter] = []


def flush_suppressed(*, everything: bool = False) -> None:
    """Emit the "suppressed K similar messages" lines whose window is over (the service calls it)."""
    for repeat_filter in _repeat_filters:
        repeat_filter.flush(everything=everything)


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    stream: TextIO | None = None,
    *,
    journal: bool | None = None,
    burst: int = 10,
    window: float = 60.0,
) -> None:
    """Configure the root logger once for the process (replaces earlier handlers).

    ``fmt`` is text, json or journal (text with priority prefixes). ``journal=None`` detects systemd's
    journal on the stream (``JOURNAL_STREAM``) and then adds the priority prefixes to text or JSON.
    """
    out = stream if stream is not None else sys.stderr
    if journal is None:
        journal = fmt == "journal" or journal_stream_is(out)
    inner: logging.Formatter
    if fmt == "json":
        inner = JsonFormatter()
    elif journal:
        # journald stamps each line itself.
        inner = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        inner = TextFormatter()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter(inner) if journal else inner)
    repeat_filter = RepeatFilter(handler, burst=burst, window=window)
    handler.addFilter(repeat_filter)
    _repeat_filters[:] = [repeat_filter]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party libraries are chatty at DEBUG and paho's DEBUG output contains CONNECT properties
    # (the token): keep them at WARNING whatever our own level is.
    for noisy in ("paho", "pymodbus", "asyncio", "aiomqtt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
