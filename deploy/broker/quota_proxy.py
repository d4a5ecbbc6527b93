#!/usr/bin/env python3
"""fieldgate_quota: an MQTT v5-aware proxy in front of mosquitto that enforces Event Grid's
per-session quotas and limits with the reason codes Event Grid uses.

Why a proxy: mosquitto 2.0.11's plugin API can only refuse a publish with PUBACK 0x87 (an ACL
denial) and a subscription with SUBACK 0x87; it cannot answer PUBACK 0x97 (Quota exceeded), send
DISCONNECT 0x97, see how many filters one SUBSCRIBE holds, or answer 0x90/0x8F for bad topics.
This process owns the public port, parses just enough of each packet (fixed header, PUBLISH
topic and packet id, SUBSCRIBE/UNSUBSCRIBE filters, CONNECT client id, and on the way back
PUBACK/SUBACK/CONNACK), answers refusals itself, and relays everything else byte for byte to
mosquitto on a loopback port. It starts mosquitto as its child (stdout/stderr shared, so one log)
and stops it when it stops.

Standard library only: it runs with Debian 12's python3 next to Debian's mosquitto.
Every decision is logged with the client id and reason code; tokens are never parsed or logged.
Counters go to a JSON stats file (see --stats-file) for tests and operators.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "fieldgate_quota: "

# MQTT packet types (upper nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE = 8, 9, 10
DISCONNECT = 14

# MQTT v5 reason codes the proxy sends.
RC_TOPIC_FILTER_INVALID = 0x8F
RC_TOPIC_NAME_INVALID = 0x90
RC_PACKET_TOO_LARGE = 0x95
RC_QUOTA_EXCEEDED = 0x97
RC_RETAIN_NOT_SUPPORTED = 0x9A

# Log lines of one kind per client and second before the rest are only counted: a gateway that
# ignores 0x97 would otherwise make the proxy spend its time writing the log.
LOG_LINES_PER_SECOND = 20


@dataclass(frozen=True)
class Limits:
    publish_rate: float  # inbound publishes per second per session
    byte_rate: float  # inbound PUBLISH bytes (whole packets) per second per session
    inflight_messages: int  # QoS 1 publishes forwarded and not yet acknowledged by mosquitto
    inflight_bytes: int
    topic_bytes: int
    topic_levels: int
    subscriptions: int  # per session
    subscribe_rate: float  # SUBSCRIBE packets per second per session
    filters_per_subscribe: int
    max_packet: int
    allow_retain: bool
    throttle: str  # "puback" or "disconnect"


def number(value: float) -> str:
    """1000000 rather than 1e+06 in log lines."""
    return f"{value:.0f}" if value == int(value) else f"{value:g}"


def log(message: str) -> None:
    # One write per line: mosquitto writes to the same file, lines must not interleave.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    sys.stderr.write(f"{stamp}: {PREFIX}{message}\n")


class Bucket:
    """Token bucket holding one second's worth of `rate`, refilled continuously.

    A session may burst up to the per-second limit at once, then sustains `rate`.
    """

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = rate
        self.tokens = rate
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Takes `amount` if the bucket holds it; one packet bigger than a whole second's worth
        passes when the bucket is full and leaves it in debt (else it could never pass)."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= amount or tokens >= self.capacity:
            self.tokens = tokens - amount
            return True
        self.tokens = tokens
        return False


@dataclass
class Session:
    """What Event Grid limits per session: keyed by client id, kept across reconnects."""

    client_id: str
    publish_bucket: Bucket
    byte_bucket: Bucket
    subscribe_bucket: Bucket
    subscriptions: set[bytes] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Publishes and bytes forwarded per wall-clock second, to report the peak rate.
    forwarded: int = 0
    forwarded_bytes: int = 0
    second: int = 0
    second_publishes: int = 0
    second_bytes: int = 0
    log_second: int = 0
    log_budget: int = LOG_LINES_PER_SECOND
    suppressed: int = 0

    def admit(self, size: int, now: float) -> str | None:
        """Takes one publish of `size` bytes from the rate buckets and counts it forwarded;
        or names the quota it is over (and takes nothing)."""
        if not self.publish_bucket.take(1, now):
            return "throttled_rate"
        if not self.byte_bucket.take(size, now):
            self.publish_bucket.tokens += 1  # not forwarded: give the message token back
            return "throttled_bytes"
        # Plain attributes, not the counters dict: this runs for every publish.
        self.forwarded += 1
        self.forwarded_bytes += size
        second = int(now)  # whole seconds of the monotonic clock: windows of one second
        if second != self.second:
            self.close_second()
            self.second = second
        self.second_publishes += 1
        self.second_bytes += size
        return None

    def close_second(self) -> None:
        c = self.counters
        c["peak_publishes_per_second"] = max(c["peak_publishes_per_second"], self.second_publishes)
        c["peak_bytes_per_second"] = max(c["peak_bytes_per_second"], self.second_bytes)
        self.second_publishes = self.second_bytes = 0

    def counted(self) -> dict[str, int]:
        """Every counter, the hot ones included. The second under way counts towards the peaks
        but keeps counting: closing it here would make the peaks those of the stats interval."""
        counters = dict(self.counters)
        counters["peak_publishes_per_second"] = max(
            counters.get("peak_publishes_per_second", 0), self.second_publishes
        )
        counters["peak_bytes_per_second"] = max(counters.get("peak_bytes_per_second", 0), self.second_bytes)
        counters["publishes_forwarded"] = self.forwarded
        counters["bytes_forwarded"] = self.forwarded_bytes
        counters["subscriptions"] = len(self.subscriptions)
        return counters

    def log_limited(self, message: str) -> None:
        second = int(time.monotonic())
        if second != self.log_second:
            if self.suppressed:
                log(f"client '{self.client_id}' {self.suppressed} more refusals not logged (see the stats)")
            self.log_second, self.log_budget, self.suppressed = second, LOG_LINES_PER_SECOND, 0
        if self.log_budget > 0:
            self.log_budget -= 1
            log(message)
        else:
            self.suppressed += 1

    def summary(self) -> str:
        c = self.counted()
        parts = [
            f"{c['publishes_forwarded']} publishes forwarded",
            f"peak {c['peak_publishes_per_second']} msgs/s, {c['peak_bytes_per_second']} B/s",
        ]
        refused = sorted((k, v) for k, v in c.items() if v and k.startswith(("refused_", "throttled_")))
        parts += [f"{k} {v}" for k, v in refused]
        return ", ".join(parts)


class Stats:
    """Per-session counters, written to a JSON file a moment after they change."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.sessions: dict[str, Session] = {}
        self.dirty = False

    def snapshot(self) -> dict[str, Any]:
        sessions: dict[str, dict[str, int]] = {}
        totals: dict[str, int] = defaultdict(int)
        for cid, session in self.sessions.items():
            counters = session.counted()
            sessions[cid] = counters
            for key, value in counters.items():
                if not key.startswith("peak_"):
                    totals[key] += value
        return {"sessions": sessions, "totals": dict(totals), "written_at": time.time()}

    def write(self) -> None:
        self.dirty = False
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # readers never see a half-written file

    async def writer(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.dirty:
                self.write()


def read_varint(buf: bytearray | bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it), or None if the buffer ends inside it."""
    value, shift = 0, 0
    for _ in range(4):
        if pos >= end:
            return None
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("malformed remaining length")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def puback(packet_id: int, reason: int) -> bytes:
    return bytes([PUBACK << 4, 3, packet_id >> 8, packet_id & 0xFF, reason])


def disconnect(reason: int) -> bytes:
    return bytes([DISCONNECT << 4, 2, reason, 0])


@dataclass
class PendingSubscribe:
    """A SUBSCRIBE forwarded (maybe trimmed): which filters mosquitto saw and the codes already
    decided by the proxy for the others, to merge into mosquitto's SUBACK."""

    filters: list[bytes]
    codes: list[int | None]  # None: mosquitto decides
    session: Session


class Relay:
    """One client connection and its upstream connection to mosquitto."""

    def __init__(self, proxy: Proxy, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.limits = proxy.limits
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.early: list[bytes | bytearray] = []  # client bytes that came before the upstream connection
        self.cbuf = bytearray()
        self.ubuf = bytearray()
        self.session: Session | None = None
        self.inflight: dict[int, int] = {}  # packet id -> PUBLISH size, forwarded, not yet PUBACKed
        self.inflight_bytes = 0
        # Proxy PUBACKs that must follow mosquitto's PUBACK of an earlier publish, so that the
        # client sees PUBACKs in the order of its publishes (MQTT 5 section 4.6).
        self.after: dict[int, list[bytes]] = {}
        self.last_forwarded_qos1: int | None = None
        self.subscribes: dict[int, PendingSubscribe] = {}
        self.closing = False
        self.final = b""
        self.now = 0.0
        self.back: list[bytes] = []
        peer = client.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    # -- client -> mosquitto -------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        # Usually a chunk holds whole packets: parse `data` itself and forward it uncopied.
        buf: bytes | bytearray = self.cbuf + data if self.cbuf else data
        end = len(buf)
        pos = 0
        run_start = 0  # start of the run of packets forwarded unchanged
        out: list[bytes | bytearray] = []
        # Packets the proxy answers the client with; one clock reading serves the whole chunk.
        back: list[bytes] = []
        self.back = back
        self.now = time.monotonic()
        self.proxy.stats.dirty = True  # once per chunk, not per packet
        limits = self.limits
        try:
            while end - pos >= 2:
                first = buf[pos]
                length = buf[pos + 1]
                if length < 0x80:
                    body = pos + 2
                else:
                    parsed = read_varint(buf, pos + 1, end)
                    if parsed is None:
                        break
                    length, body = parsed
                stop = body + length
                if stop - pos > limits.max_packet:
                    self.refuse_and_close(
                        disconnect(RC_PACKET_TOO_LARGE),
                        f"packet of {stop - pos} bytes refused: DISCONNECT 0x95",
                    )
                    break
                if stop > end:
                    break
                kind = first >> 4
                verdict: bytes | None = None  # replacement for this packet (b"" drops it)
                if kind == PUBLISH:
                    verdict = self.on_publish(buf, first, pos, body, stop)
                elif kind == SUBSCRIBE:
                    verdict = self.on_subscribe(buf, body, stop)
                elif kind == UNSUBSCRIBE:
                    self.on_unsubscribe(buf, body, stop)
                elif kind == CONNECT:
                    self.on_connect(buf, body, stop)
                if verdict is not None:
                    if self.closing:
                        break  # what came before the offending packet still goes to mosquitto
                    if run_start < pos:
                        out.append(bytes(buf[run_start:pos]))
                    if verdict:
                        out.append(verdict)
                    run_start = stop
                pos = stop
        except (ValueError, IndexError):
            # Malformed: pass the rest to mosquitto, which answers it as it does (DISCONNECT 0x81).
            pos = end
        if run_start == 0 and pos == end:
            out.append(buf)  # nothing refused: the chunk as it came
        elif run_start < pos:
            out.append(bytes(buf[run_start:pos]))
        self.cbuf = bytearray(buf[pos:]) if pos < end else bytearray()
        if out:
            self.send_upstream(out[0] if len(out) == 1 else b"".join(out))
        if self.closing:
            back.append(self.final)
            self.client.write(b"".join(back))
            self.client.close()
            if self.upstream is not None:
                self.upstream.close()  # after writing what it was sent
            self.cbuf = bytearray()
        elif back:
            self.client.write(b"".join(back))

    def send_upstream(self, data: bytes | bytearray) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def on_connect(self, buf: bytes | bytearray, body: int, stop: int) -> None:
        name_len = (buf[body] << 8) | buf[body + 1]
        p = body + 2 + name_len
        version = buf[p]
        p += 4  # version, flags, keep alive
        if version == 5:
            props, p = read_varint(buf, p, stop) or (0, p)
            p += props
        id_len = (buf[p] << 8) | buf[p + 1]
        client_id = bytes(buf[p + 2 : p + 2 + id_len]).decode(errors="replace")
        self.session = self.proxy.session(client_id)
        self.session.counters["connections"] += 1
        self.proxy.stats.dirty = True

    def on_publish(self, buf: bytes | bytearray, first: int, pos: int, body: int, stop: int) -> bytes | None:
        """None to forward the PUBLISH as it is, b"" to drop it (answered in `self.back`).

        The hot path of the proxy: the common case (accepted) touches as little as it can."""
        session = self.session
        if session is None:
            return None  # before CONNECT: mosquitto refuses it
        limits = self.limits
        topic_len = (buf[body] << 8) | buf[body + 1]
        qos = first & 0x06
        # Retain, then the topic (0: a topic alias stands for a topic checked when it was set).
        if (
            (first & 0x01 and not limits.allow_retain)
            or topic_len > limits.topic_bytes
            or (topic_len and buf.count(b"/", body + 2, body + 2 + topic_len) >= limits.topic_levels)
        ):
            return self.refuse_publish(buf, first, body, topic_len)
        size = stop - pos
        key = None
        if qos:
            packet_id = (buf[body + 2 + topic_len] << 8) | buf[body + 3 + topic_len]
            inflight = self.inflight
            if len(inflight) >= limits.inflight_messages:
                key = "throttled_inflight_messages"
            elif inflight and self.inflight_bytes + size > limits.inflight_bytes:
                # (With nothing in flight any publish passes: one up to 512 KiB must be possible.)
                key = "throttled_inflight_bytes"
        else:
            packet_id = 0
        if key is None:
            key = session.admit(size, self.now)
            if key is None:
                if qos:
                    old = inflight.get(packet_id)
                    if old is not None:  # a resend (DUP) of a packet id still in flight
                        self.inflight_bytes -= old
                    inflight[packet_id] = size
                    self.inflight_bytes += size
                    self.last_forwarded_qos1 = packet_id
                return None
        return self.throttle_publish(session, key, qos, packet_id)

    def refuse_publish(self, buf: bytes | bytearray, first: int, body: int, topic_len: int) -> bytes:
        """A retained publish (when refused) or one whose topic is over a limit."""
        session = self.session
        assert session is not None
        limits = self.limits
        counters = session.counters
        if first & 0x01 and not limits.allow_retain:
            counters["refused_retain"] += 1
            self.refuse_and_close(
                disconnect(RC_RETAIN_NOT_SUPPORTED),
                f"client '{session.client_id}' retained publish refused: DISCONNECT 0x9a "
                "(retain not supported)",
            )
            return b""
        if topic_len > limits.topic_bytes:
            counters["refused_topic_length"] += 1
            problem = f"topic of {topic_len} bytes, limit {limits.topic_bytes}"
        else:
            counters["refused_topic_levels"] += 1
            levels = buf.count(b"/", body + 2, body + 2 + topic_len) + 1
            problem = f"topic of {levels} levels, limit {limits.topic_levels}"
        if first & 0x06:
            packet_id = (buf[body + 2 + topic_len] << 8) | buf[body + 3 + topic_len]
            self.answer_puback(packet_id, RC_TOPIC_NAME_INVALID, self.back)
            answer = "PUBACK 0x90"
        else:
            answer = "dropped (QoS 0)"
        session.log_limited(f"client '{session.client_id}' publish refused: {answer} ({problem})")
        return b""

    def throttle_publish(self, session: Session, key: str, qos: int, packet_id: int) -> bytes:
        """A publish over a quota (`key` names which): answered as --throttle says."""
        limits = self.limits
        counters = session.counters
        counters[key] += 1
        reason = {
            "throttled_inflight_messages": f"in-flight {limits.inflight_messages} messages",
            "throttled_inflight_bytes": f"in-flight {limits.inflight_bytes} bytes",
            "throttled_rate": f"rate {number(limits.publish_rate)}/s",
            "throttled_bytes": f"bandwidth {number(limits.byte_rate)} B/s",
        }[key]
        if limits.throttle == "disconnect":
            counters["disconnect_0x97"] += 1
            self.refuse_and_close(
                disconnect(RC_QUOTA_EXCEEDED),
                f"client '{session.client_id}' publish throttled: DISCONNECT 0x97 ({reason})",
            )
            return b""
        if qos:
            counters["puback_0x97"] += 1
            self.answer_puback(packet_id, RC_QUOTA_EXCEEDED, self.back)
            answer = "PUBACK 0x97"
        else:
            counters["dropped_qos0"] += 1
            answer = "dropped (QoS 0)"
        session.log_limited(f"client '{session.client_id}' publish throttled: {answer} ({reason})")
        return b""

    def answer_puback(self, packet_id: int, reason: int, back: list[bytes]) -> None:
        answer = puback(packet_id, reason)
        last = self.last_forwarded_qos1
        if last is not None and last in self.inflight:
            self.after.setdefault(last, []).append(answer)
        else:
            back.append(answer)

    def on_subscribe(self, buf: bytes | bytearray, body: int, stop: int) -> bytes | None:
        """Like on_publish; a SUBSCRIBE with some filters refused is forwarded without them."""
        session = self.session
        now, back = self.now, self.back
        if session is None:
            return None
        limits = self.limits
        packet_id = (buf[body] << 8) | buf[body + 1]
        props_len, p = read_varint(buf, body + 2, stop) or (0, body + 2)
        props = bytes(buf[body + 2 : p + props_len])
        p += props_len
        entries: list[tuple[bytes, int]] = []
        while p < stop:
            n = (buf[p] << 8) | buf[p + 1]
            entries.append((bytes(buf[p + 2 : p + 2 + n]), buf[p + 2 + n]))
            p += 3 + n
        if not entries:
            return None  # a protocol error: mosquitto answers it
        counters = session.counters
        self.proxy.stats.dirty = True
        cid = session.client_id

        def refuse_all(reason: str, key: str) -> bytes:
            counters[key] += 1
            counters["suback_0x97"] += len(entries)
            session.log_limited(
                f"client '{cid}' SUBSCRIBE of {len(entries)} filters refused: SUBACK 0x97 ({reason})"
            )
            back.append(suback(packet_id, b"\x00", [RC_QUOTA_EXCEEDED] * len(entries)))
            return b""

        if not session.subscribe_bucket.take(1, now):
            return refuse_all(f"rate {number(limits.subscribe_rate)} SUBSCRIBE/s", "throttled_subscribe_rate")
        if len(entries) > limits.filters_per_subscribe:
            return refuse_all(
                f"{len(entries)} filters, limit {limits.filters_per_subscribe}",
                "refused_filters_per_subscribe",
            )

        pending = {
            f
            for pend in self.subscribes.values()
            for f, c in zip(pend.filters, pend.codes, strict=True)
            if c is None
        }
        room = limits.subscriptions - len(session.subscriptions | pending)
        codes: list[int | None] = []
        for topic_filter, _options in entries:
            levels = topic_filter.count(b"/") + 1
            if len(topic_filter) > limits.topic_bytes or levels > limits.topic_levels:
                counters["refused_filter_invalid"] += 1
                counters["suback_0x8f"] += 1
                session.log_limited(
                    f"client '{cid}' subscription refused: SUBACK 0x8f (filter of {len(topic_filter)} bytes, "
                    f"{levels} levels; limits {limits.topic_bytes} bytes, {limits.topic_levels} levels)"
                )
                codes.append(RC_TOPIC_FILTER_INVALID)
            elif topic_filter in session.subscriptions or topic_filter in pending:
                codes.append(None)  # replaces an existing subscription: no new one
            elif room > 0:
                room -= 1
                pending.add(topic_filter)
                codes.append(None)
            else:
                counters["refused_subscriptions"] += 1
                counters["suback_0x97"] += 1
                session.log_limited(
                    f"client '{cid}' subscription refused: SUBACK 0x97 "
                    f"({limits.subscriptions} subscriptions per session)"
                )
                codes.append(RC_QUOTA_EXCEEDED)
        filters = [f for f, _ in entries]
        if all(c is not None for c in codes):
            back.append(suback(packet_id, b"\x00", [c for c in codes if c is not None]))
            return b""
        self.subscribes[packet_id] = PendingSubscribe(filters, codes, session)
        if all(c is None for c in codes):
            return None
        # Some filters refused here: mosquitto gets the SUBSCRIBE without them.
        kept = b"".join(
            len(f).to_bytes(2, "big") + f + bytes([o])
            for (f, o), c in zip(entries, codes, strict=True)
            if c is None
        )
        # `props` still holds its length prefix: it is copied as it came.
        return packet((SUBSCRIBE << 4) | 0x02, packet_id.to_bytes(2, "big") + props + kept)

    def on_unsubscribe(self, buf: bytes | bytearray, body: int, stop: int) -> None:
        if self.session is None:
            return
        props_len, p = read_varint(buf, body + 2, stop) or (0, body + 2)
        p += props_len
        while p < stop:
            n = (buf[p] << 8) | buf[p + 1]
            self.session.subscriptions.discard(bytes(buf[p + 2 : p + 2 + n]))
            p += 2 + n
        self.proxy.stats.dirty = True

    def refuse_and_close(self, answer: bytes, message: str) -> None:
        if self.session is not None:
            self.session.log_limited(message)
        else:
            log(f"connection from {self.peer}: {message}")
        # from_client sends `answer` after the packets already answered, then closes both sides.
        self.closing = True
        self.final = answer

    # -- mosquitto -> client -------------------------------------------------------------------
    def from_upstream(self, data: bytes) -> None:
        buf: bytes | bytearray = self.ubuf + data if self.ubuf else data
        end = len(buf)
        pos = 0
        run_start = 0
        out: list[bytes | bytearray] = []
        inflight = self.inflight
        after = self.after
        while end - pos >= 2:
            first = buf[pos]
            length = buf[pos + 1]
            if length < 0x80:
                body = pos + 2
            else:
                parsed = read_varint(buf, pos + 1, end)
                if parsed is None:
                    break
                length, body = parsed
            stop = body + length
            if stop > end:
                break
            kind = first >> 4
            if kind == PUBACK:
                packet_id = (buf[body] << 8) | buf[body + 1]
                size = inflight.pop(packet_id, None)
                if size is not None:
                    self.inflight_bytes -= size
                if after and packet_id in after:
                    out.append(bytes(buf[run_start:stop]))
                    out.extend(after.pop(packet_id))
                    run_start = stop
            elif kind == SUBACK:
                packet_id = (buf[body] << 8) | buf[body + 1]
                replaced = self.on_suback(packet_id, bytes(buf[body:stop]))
                if replaced is not None:
                    out.append(bytes(buf[run_start:pos]))
                    out.append(replaced)
                    run_start = stop
            elif (
                kind == CONNACK and self.session is not None and not buf[body] & 0x01 and buf[body + 1] < 0x80
            ):
                # Accepted without a session present: mosquitto holds no subscriptions for this
                # client id any more. (A refused CONNECT leaves another connection's session alone.)
                self.session.subscriptions.clear()
            pos = stop
        if run_start == 0 and pos == end:
            out.append(buf)
        elif run_start < pos:
            out.append(bytes(buf[run_start:pos]))
        self.ubuf = bytearray(buf[pos:]) if pos < end else bytearray()
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))

    def on_suback(self, packet_id: int, body: bytes) -> bytes | None:
        pend = self.subscribes.pop(packet_id, None)
        if pend is None:
            return None
        props_len, p = read_varint(body, 2, len(body)) or (0, 2)
        props = body[2 : p + props_len]
        theirs = list(body[p + props_len :])
        merged: list[int] = []
        for topic_filter, decided in zip(pend.filters, pend.codes, strict=True):
            code = decided
            if code is None:
                code = theirs.pop(0) if theirs else 0x80
                if code < 0x80:
                    pend.session.subscriptions.add(topic_filter)
            merged.append(code)
        self.proxy.stats.dirty = True
        if all(c is None for c in pend.codes):
            return None  # mosquitto answered every filter: its SUBACK goes through as it is
        return packet(SUBACK << 4, packet_id.to_bytes(2, "big") + props + bytes(merged))

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        self.client.close()


def suback(packet_id: int, props: bytes, codes: list[int]) -> bytes:
    return packet(SUBACK << 4, packet_id.to_bytes(2, "big") + props + bytes(codes))


class ClientSide(asyncio.Protocol):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.relay: Relay | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.relay = Relay(self.proxy, transport)
        self.proxy.relays.add(self.relay)
        asyncio.get_running_loop().create_task(self.proxy.open_upstream(self.relay))

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None and not relay.closing:
            relay.from_client(data)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        relay = self.relay
        if relay is None:
            return
        self.proxy.relays.discard(relay)
        relay.closing = True
        if relay.upstream is not None:
            relay.upstream.close()
        if relay.session is not None and any(
            k.startswith(("refused_", "throttled_")) and v for k, v in relay.session.counters.items()
        ):
            session = relay.session
            log(f"client '{session.client_id}' connection closed; session so far: {session.summary()}")

    # Back-pressure: a client that does not read stops mosquitto's side from being read.
    def pause_writing(self) -> None:
        if self.relay is not None and self.relay.upstream is not None:
            self.relay.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.relay is not None and self.relay.upstream is not None:
            self.relay.upstream.resume_reading()


class UpstreamSide(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        self.relay.from_upstream(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # mosquitto closed (or we did): the client's connection ends too, after what was written.
        self.relay.client.close()

    def pause_writing(self) -> None:
        self.relay.client.pause_reading()

    def resume_writing(self) -> None:
        self.relay.client.resume_reading()


class Proxy:
    def __init__(self, limits: Limits, upstream_port: int, stats: Stats) -> None:
        self.limits = limits
        self.upstream_port = upstream_port
        self.stats = stats
        self.relays: set[Relay] = set()

    def session(self, client_id: str) -> Session:
        session = self.stats.sessions.get(client_id)
        if session is None:
            now = time.monotonic()
            limits = self.limits
            session = Session(
                client_id,
                Bucket(limits.publish_rate, now),
                Bucket(limits.byte_rate, now),
                Bucket(limits.subscribe_rate, now),
            )
            self.stats.sessions[client_id] = session
        return session

    async def open_upstream(self, relay: Relay) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(
                lambda: UpstreamSide(relay), "127.0.0.1", self.upstream_port
            )
        except OSError as exc:
            log(f"connection from {relay.peer}: cannot reach mosquitto on port {self.upstream_port}: {exc}")
            relay.client.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert isinstance(transport, asyncio.Transport)
        if relay.closing:
            transport.close()
            return
        relay.upstream = transport
        if relay.early:
            transport.write(b"".join(relay.early))
            relay.early.clear()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True, help="public port on 127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True, help="mosquitto's loopback port")
    parser.add_argument("--mosquitto-conf", required=True, help="mosquitto configuration to start it with")
    parser.add_argument("--pid-file", help="where to write mosquitto's process id")
    parser.add_argument("--stats-file", help="JSON counters, rewritten shortly after they change")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--publish-rate", type=float, default=1000)
    parser.add_argument("--byte-rate", type=float, default=1_000_000)
    parser.add_argument("--inflight-messages", type=int, default=1000)
    parser.add_argument("--inflight-bytes", type=int, default=65536)
    parser.add_argument("--topic-bytes", type=int, default=256)
    parser.add_argument("--topic-levels", type=int, default=15)
    parser.add_argument("--subscriptions", type=int, default=50)
    parser.add_argument("--subscribe-rate", type=float, default=5)
    parser.add_argument("--filters-per-subscribe", type=int, default=10)
    parser.add_argument("--max-packet", type=int, default=524288)
    parser.add_argument("--allow-retain", action="store_true")
    parser.add_argument("--throttle", choices=("puback", "disconnect"), default="puback")
    return parser.parse_args(argv)


def die_with_parent() -> None:
    # mosquitto must not outlive the proxy, even when the proxy is killed with SIGKILL.
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def wait_listening(port: int, child: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {child.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"mosquitto not listening on {port} after {within:g} s")


def start_mosquitto(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    # Started before the event loop: no thread exists yet, so preexec_fn is safe here.
    child = subprocess.Popen(
        ["mosquitto", "-c", args.mosquitto_conf],
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,  # noqa: PLW1509
    )
    if args.pid_file:
        Path(args.pid_file).write_text(f"{child.pid}\n")
    return child


async def serve(args: argparse.Namespace, child: subprocess.Popen[bytes]) -> int:
    limits = Limits(
        publish_rate=args.publish_rate,
        byte_rate=args.byte_rate,
        inflight_messages=args.inflight_messages,
        inflight_bytes=args.inflight_bytes,
        topic_bytes=args.topic_bytes,
        topic_levels=args.topic_levels,
        subscriptions=args.subscriptions,
        subscribe_rate=args.subscribe_rate,
        filters_per_subscribe=args.filters_per_subscribe,
        max_packet=args.max_packet,
        allow_retain=args.allow_retain,
        throttle=args.throttle,
    )
    stats = Stats(Path(args.stats_file) if args.stats_file else None)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server: asyncio.AbstractServer | None = None
    code = 0
    try:
        await wait_listening(args.upstream_port, child, 30)
        context = None
        if args.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(args.tls_cert, args.tls_key)
        proxy = Proxy(limits, args.upstream_port, stats)
        server = await loop.create_server(lambda: ClientSide(proxy), "127.0.0.1", args.port, ssl=context)
        stats.write()
        log(
            f"listening on 127.0.0.1:{args.port}{' (TLS)' if context else ''}, "
            f"mosquitto on 127.0.0.1:{args.upstream_port}; per session: {number(limits.publish_rate)} "
            f"publishes/s, {number(limits.byte_rate)} B/s, in flight {limits.inflight_messages} messages / "
            f"{limits.inflight_bytes} B, topics <= {limits.topic_bytes} B and {limits.topic_levels} "
            f"levels, {limits.subscriptions} subscriptions, {number(limits.subscribe_rate)} SUBSCRIBE/s, "
            f"{limits.filters_per_subscribe} filters per SUBSCRIBE, retain "
            f"{'allowed' if limits.allow_retain else 'refused'}, throttle answer {limits.throttle}"
        )
        writer = loop.create_task(stats.writer(0.1))
        exited: asyncio.Future[Any] = loop.run_in_executor(None, child.wait)
        stopped: asyncio.Future[Any] = loop.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, exited], return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            log(f"mosquitto exited with {child.returncode}: stopping")
            code = child.returncode or 1
        else:
            log("stopping mosquitto and the proxy (signal)")
        writer.cancel()
    except (RuntimeError, OSError) as exc:
        log(f"cannot start: {exc}")
        code = 1
    finally:
        if server is not None:
            server.close()
        if child.poll() is None:
            child.terminate()
            try:
                await loop.run_in_executor(None, child.wait, 5)
            except subprocess.TimeoutExpired:
                child.kill()
        totals = stats.snapshot()["totals"]
        if totals:
            log("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()) if v))
        stats.write()
    return code


def main() -> int:
    # Line-buffered: each log line reaches the shared log file as one write.
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = parse_args(sys.argv[1:])
    return asyncio.run(serve(args, start_mosquitto(args)))


if __name__ == "__main__":
    sys.exit(main())
