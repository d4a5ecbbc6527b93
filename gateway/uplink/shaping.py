"""Shaping the uplink to the broker's quotas: token buckets, in-flight caps, and AIMD on throttling.

Event Grid limits each session's inbound publishes (messages/s, bytes/s) and what is unacknowledged
(messages, bytes) and throttles beyond that (reason code 0x97). The uplink asks :meth:`Shaper.delay`
before each PUBLISH and :meth:`Shaper.has_room` for the in-flight caps, so it stays under the configured
limits by itself. When the broker throttles anyway (its limit is lower than configured, or shared), the
uplink calls :meth:`Shaper.throttled`: the allowed rate (and the in-flight caps) halve, at most once per
``DECREASE_INTERVAL``, and grow back by ``recovery`` of the limit per second (additive increase,
multiplicative decrease). Pure logic on an injected monotonic clock, so it is tested with a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config.limits import LimitsConfig

#: Bucket depth, in seconds of the allowed rate: small, so no second sees much more than the limit.
BURST_SECONDS = 0.05
#: The allowed rate halves at most once per this many seconds: one throttled window of publishes is
#: one signal, not one per refused message.
DECREASE_INTERVAL = 1.0
#: The allowed rate never goes below this fraction of the configured limit.
MIN_FACTOR = 1 / 64
#: The drain rate is measured over windows of this many seconds.
RATE_WINDOW = 1.0


class TokenBucket:
    """Tokens accrue at ``rate`` per second up to ``capacity``; a take may leave the bucket in debt."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self._stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` may be taken (0: now). More than the capacity waits for a full bucket
        and leaves it in debt, or it could never pass."""
        needed = min(amount, self.capacity)
        # A tolerance for the rounding of the refill: a wait shorter than this could never advance.
        if self.tokens >= needed - 1e-6:
            return 0.0
        return (needed - self.tokens) / self.rate

    def take(self, amount: float) -> None:
        self.tokens -= amount


@dataclass(frozen=True, slots=True)
class ShaperStats:
    """The publish shaper's allowed rate and throttling counters."""

    #: Publishes per second allowed now (the configured limit, or less after throttling).
    allowed_rate: float
    #: Throttling answers (PUBACK or DISCONNECT 0x97/0x80/0x83) seen.
    throttled: int
    #: Times the allowed rate was halved.
    slowdowns: int
    inflight_bytes: int
    peak_inflight_bytes: int
    #: Publishes per second over the last measuring window.
    send_rate: float


class Shaper:
    """Token buckets for messages and bytes, in-flight caps, and the AIMD factor applied to all four."""

    def __init__(self, limits: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        now = clock()
        self.factor = 1.0
        self._messages = TokenBucket(limits.messages_per_second, 1.0, now)
        self._bytes = TokenBucket(float(limits.bytes_per_second), 1.0, now)
        self._apply_factor()
        self._messages.tokens = self._messages.capacity
        self._bytes.tokens = self._bytes.capacity
        self._stamp = now
        self._last_decrease: float | None = None
        self.throttled_count = 0
        self.slowdowns = 0
        self.inflight_messages = 0
        self.inflight_bytes = 0
        self.peak_inflight_bytes = 0
        self._window_start = now
        self._window_sent = 0
        self._send_rate = 0.0

    # -- rate ------------------------------------------------------------------------------------
    @property
    def allowed_rate(self) -> float:
        return self._messages.rate

    def delay(self, size: int) -> float:
        """Seconds to wait before a PUBLISH of ``size`` bytes may go; 0: go now (its tokens are taken)."""
        self._refill()
        wait = max(self._messages.wait(1), self._bytes.wait(size))
        if wait > 0:
            return wait
        self._messages.take(1)
        self._bytes.take(size)
        return 0.0

    def throttled(self) -> bool:
        """The broker throttled us: halve the allowed rate (once per DECREASE_INTERVAL). True if halved."""
        self.throttled_count += 1
        now = self._refill()
        if self._last_decrease is not None and now - self._last_decrease < DECREASE_INTERVAL:
            return False
        self._last_decrease = now
        self.factor = max(MIN_FACTOR, self.factor / 2)
        self._apply_factor()
        # What the bucket saved up was earned at the old rate: start the slower pace from empty.
        self._messages.tokens = min(self._messages.tokens, 0.0)
        self._bytes.tokens = min(self._bytes.tokens, 0.0)
        self.slowdowns += 1
        return True

    # -- in flight -------------------------------------------------------------------------------
    def has_room(self, size: int, *, qos: int = 1) -> bool:
        """The in-flight caps allow one more PUBLISH of ``size`` bytes (always, when nothing is in flight)."""
        if qos == 0 or self.inflight_messages == 0:
            return True
        cap_messages = max(1, int(self.limits.inflight_messages * self.factor))
        cap_bytes = max(1, int(self.limits.inflight_bytes * self.factor))
        return self.inflight_messages < cap_messages and self.inflight_bytes + size <= cap_bytes

    def sent(self, size: int, *, qos: int = 1) -> None:
        self._count_sent()
        if qos == 0:
            return
        self.inflight_messages += 1
        self.inflight_bytes += size
        self.peak_inflight_bytes = max(self.peak_inflight_bytes, self.inflight_bytes)

    def settled(self, size: int) -> None:
        """A QoS 1 PUBLISH is no longer in flight (acknowledged, or lost with its connection)."""
        self.inflight_messages = max(0, self.inflight_messages - 1)
        self.inflight_bytes = max(0, self.inflight_bytes - size)

    # -- figures ---------------------------------------------------------------------------------
    def stats(self) -> ShaperStats:
        self._refill()
        return ShaperStats(
            allowed_rate=round(self._messages.rate, 3),
            throttled=self.throttled_count,
            slowdowns=self.slowdowns,
            inflight_bytes=self.inflight_bytes,
            peak_inflight_bytes=self.peak_inflight_bytes,
            send_rate=round(self._send_rate, 2),
        )

    # -- internals -------------------------------------------------------------------------------
    def _refill(self) -> float:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        if self.factor < 1.0 and elapsed:
            self.factor = min(1.0, self.factor + self.limits.recovery * elapsed)
            self._apply_factor()
        self._messages.refill(now)
        self._bytes.refill(now)
        if now - self._window_start >= RATE_WINDOW:
            # A window with no send at all (idle, or disconnected) reads as 0/s.
            self._send_rate = self._window_sent / (now - self._window_start)
            self._window_start, self._window_sent = now, 0
        return now

    def _count_sent(self) -> None:
        self._window_sent += 1

    def _apply_factor(self) -> None:
        rate = self.limits.messages_per_second * self.factor
        byte_rate = self.limits.bytes_per_second * self.factor
        self._messages.rate = rate
        self._messages.capacity = max(1.0, rate * BURST_SECONDS)
        self._bytes.rate = byte_rate
        self._bytes.capacity = max(1.0, byte_rate * BURST_SECONDS)
