"""``[uplink.limits]``: the broker's per-session quotas the uplink shapes itself to (Event Grid's).

Defaults are Event Grid's current documented values (``quotas-limits`` page): 1,000 publishes/s and
1 MB/s inbound per session, 1,000 messages and 64 KB in flight. A namespace on the older quota sets
``messages_per_second = 100``. What the uplink does at each limit: ``gateway/uplink/README.md``,
"Event Grid quotas". Every problem is recorded on the table; nothing here raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.schema import Table


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Shaping of the uplink (token buckets, in-flight caps) and the retry bound of refused messages."""

    #: Publishes per second the uplink sends at most (a token bucket; Event Grid: 1,000/s per session).
    messages_per_second: float = 1000.0
    #: PUBLISH bytes (whole packets) per second (Event Grid: 1 MB/s per session).
    bytes_per_second: int = 1_000_000
    #: Unacknowledged PUBLISH bytes at most (Event Grid: 64 KB in flight); one bigger message may go
    #: alone.
    inflight_bytes: int = 65_536
    #: Unacknowledged QoS 1 publishes at most (Event Grid: 1,000); ``uplink.max_inflight`` and the
    #: broker's Receive Maximum bound the window too.
    inflight_messages: int = 1000
    #: Sends of one message that the broker refused for now (0x97, 0x80, 0x83, ...) or that were lost
    #: with the connection; after this many it goes to the store's dead letters.
    max_attempts: int = 10
    #: After a throttling answer the allowed rate halves; it then regains this fraction of the limit
    #: per second (additive increase: 0.05 is back from half to full in 10 s).
    recovery: float = 0.05


DEFAULT_LIMITS = LimitsConfig()


def parse_limits(table: Table) -> LimitsConfig:
    """Read ``[uplink.limits]`` (an empty table gives the defaults)."""
    d = DEFAULT_LIMITS
    limits = LimitsConfig(
        messages_per_second=table.number("messages_per_second", d.messages_per_second, minimum=0.1),
        bytes_per_second=table.integer("bytes_per_second", d.bytes_per_second, minimum=1024),
        inflight_bytes=table.integer("inflight_bytes", d.inflight_bytes, minimum=64),
        inflight_messages=table.integer("inflight_messages", d.inflight_messages, minimum=1, maximum=65535),
        max_attempts=table.integer("max_attempts", d.max_attempts, minimum=1, maximum=1000),
        recovery=table.number("recovery", d.recovery, minimum=0.001, maximum=1.0),
    )
    table.finish()
    return limits
