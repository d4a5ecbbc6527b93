"""Shaping to the broker's quotas, on a fake clock: the buckets pace publishes and bytes, the in-flight caps
count bytes as well as messages, and throttling halves the rate, which then recovers gradually (AIMD)."""

from __future__ import annotations

import pytest

from gateway.config.limits import LimitsConfig
from gateway.uplink.shaping import DECREASE_INTERVAL, MIN_FACTOR, Shaper


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send_for(shaper: Shaper, clock: FakeClock, seconds: float, size: int = 100) -> int:
    """Send as fast as the shaper allows for ``seconds`` of fake time; how many went."""
    sent = 0
    end = clock.now + seconds
    while clock.now < end:
        wait = shaper.delay(size)
        if wait:
            clock.now += wait
            continue
        sent += 1
    return sent


def test_a_user_on_an_older_namespace_gets_100_publishes_a_second() -> None:
    clock = FakeClock()
    shaper = Shaper(LimitsConfig(messages_per_second=100), clock)
    sent = send_for(shaper, clock, 10.0)
    # The bucket holds a small burst only: no second carries much more than the limit.
    assert 1000 <= sent <= 1000 + 5
    assert shaper.stats().allowed_rate == 100


def test_big_messages_are_paced_by_the_byte_rate() -> None:
    clock = FakeClock()
    shaper = Shaper(LimitsConfig(messages_per_second=1000, bytes_per_second=100_000), clock)
    sent = send_for(shaper, clock, 10.0, size=10_000)
    assert 100 <= sent <= 101  # 10 messages of 10 kB a second, not 1000


def test_the_in_flight_cap_counts_bytes_not_only_messages() -> None:
    shaper = Shaper(LimitsConfig(inflight_bytes=65_536, inflight_messages=1000), FakeClock())
    for _ in range(6):
        assert shaper.has_room(10_000)
        shaper.sent(10_000)
    assert not shaper.has_room(10_000)  # 70 kB would be in flight
    assert shaper.has_room(5_000)
    shaper.settled(10_000)
    assert shaper.has_room(10_000)
    assert shaper.stats().peak_inflight_bytes == 60_000
    # QoS 0 is never acknowledged, so it never waits for the in-flight cap.
    assert shaper.has_room(100_000, qos=0)


def test_a_message_bigger_than_the_in_flight_cap_goes_alone() -> None:
    shaper = Shaper(LimitsConfig(inflight_bytes=1000), FakeClock())
    assert shaper.has_room(5000)
    shaper.sent(5000)
    assert not shaper.has_room(10)


def test_throttling_halves_the_rate_once_per_interval_then_it_recovers_gradually() -> None:
    clock = FakeClock()
    shaper = Shaper(LimitsConfig(messages_per_second=100, recovery=0.05), clock)
    # A window of refusals answered at once is one signal.
    assert shaper.throttled()
    for _ in range(19):
        assert not shaper.throttled()
    assert shaper.allowed_rate == pytest.approx(50)
    assert shaper.stats().throttled == 20
    clock.now += DECREASE_INTERVAL
    assert shaper.throttled()
    # The second of recovery (5 % of the limit) came first, then the halving.
    assert shaper.allowed_rate == pytest.approx((50 + 5) / 2)
    # Additive increase: 5 % of the limit per second.
    clock.now += 5.0
    shaper.stats()
    assert shaper.allowed_rate == pytest.approx(27.5 + 25)
    clock.now += 20.0
    shaper.stats()
    assert shaper.allowed_rate == 100


def test_throttling_also_narrows_the_in_flight_caps() -> None:
    shaper = Shaper(LimitsConfig(inflight_messages=4, inflight_bytes=65_536), FakeClock())
    shaper.throttled()
    shaper.sent(10)
    shaper.sent(10)
    assert not shaper.has_room(10)  # 2 of 4 after halving


def test_the_rate_never_falls_below_its_floor() -> None:
    clock = FakeClock()
    shaper = Shaper(LimitsConfig(messages_per_second=1000, recovery=0.001), clock)
    for _ in range(20):
        shaper.throttled()
        clock.now += DECREASE_INTERVAL
    assert shaper.allowed_rate >= 1000 * MIN_FACTOR * 0.99
    assert send_for(shaper, clock, 2.0) > 0


def test_the_send_rate_is_measured() -> None:
    clock = FakeClock()
    shaper = Shaper(LimitsConfig(messages_per_second=200), clock)
    for _ in range(3):
        end = clock.now + 1.0
        while clock.now < end:
            wait = shaper.delay(100)
            if wait:
                clock.now += wait
            else:
                shaper.sent(100, qos=0)
    assert shaper.stats().send_rate == pytest.approx(200, rel=0.05)
