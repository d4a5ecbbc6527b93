"""Framers: pure, incremental cutters of a serial byte stream into frames.

``feed(data)`` returns the complete frames found so far and keeps at most ``max_buffer`` bytes of an
unfinished frame, whatever the input: garbage is skipped (and counted) until something that looks like
the start of a frame, over-long frames are dropped, and a frame whose checksum fails is dropped with the
search resuming one byte after its start, so a good frame right behind garbage is still found. Nothing
here raises on any input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

from drivers.serial.config import (
    CHECKSUM_SIZES,
    DelimitedFraming,
    FixedFraming,
    FramingSpec,
    LengthFraming,
    LineFraming,
    RawFraming,
)


@dataclass(slots=True)
class Counters:
    """Per-device counts of what was received, dropped and why (the driver exposes a snapshot)."""

    frames: int = 0
    #: Bytes skipped while looking for the start of a frame.
    garbage_bytes: int = 0
    #: Lines or frames longer than the configured maximum (each counted once, then dropped).
    overlong: int = 0
    bad_checksums: int = 0
    #: Frames whose bytes are not valid text in the parser's encoding.
    undecodable: int = 0
    #: Frames the parser could not make sense of (no regex match, bad JSON, wrong size for the layout).
    unparsable: int = 0
    #: Polled commands that got no reply within their timeout.
    timeouts: int = 0
    #: Bytes that arrived while no command was waiting for a reply (polled mode).
    unsolicited_bytes: int = 0

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Frame:
    #: The frame as received (markers, length and checksum included), for display.
    raw: bytes
    #: What the parser sees: a line without terminator, or the bytes between header/length and checksum.
    payload: bytes


# -- checksums -----------------------------------------------------------------------------------------
def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def crc16_modbus(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/MODBUS (poly 0x8005 reflected, init 0xFFFF); sent low byte first on Modbus RTU.

    ``crc`` continues a computation over preceding bytes.
    """
    for byte in data:
        crc = (crc >> 8) ^ _CRC16_TABLE[(crc ^ byte) & 0xFF]
    return crc


def sum8(data: bytes) -> int:
    """The low 8 bits of the sum of the bytes."""
    return sum(data) & 0xFF


def nmea_xor(data: bytes) -> int:
    """XOR of the bytes between ``$``/``!`` and ``*`` of an NMEA 0183 sentence."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def checksum_bytes(kind: str, data: bytes, order: str) -> bytes:
    """The checksum of ``data`` as it is sent after it (empty for ``none``)."""
    if kind == "crc16-modbus":
        return crc16_modbus(data).to_bytes(2, "big" if order == "big" else "little")
    if kind == "sum8":
        return bytes((sum8(data),))
    return b""


def nmea_sentence(body: bytes) -> bytes:
    """``$`` + body + ``*hh``: a sentence with its checksum, for simulators and tests."""
    return b"$" + body + b"*" + f"{nmea_xor(body):02X}".encode()


# -- framers -------------------------------------------------------------------------------------------
class Framer(ABC):
    """Base: a byte buffer bounded by ``max_buffer`` between calls to :meth:`feed`."""

    max_buffer: int = 0

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect or before a polled command)."""
        self._buf.clear()

    @abstractmethod
    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes read; return the frames they complete, oldest first."""

    def _drop(self, count: int) -> None:
        del self._buf[:count]

    def _skip_to(self, marker: bytes) -> bool:
        """Drop bytes before ``marker`` (counted as garbage); False if it is not in the buffer yet."""
        index = self._buf.find(marker)
        if index < 0:
            # Keep a tail that could be the first bytes of a marker split across reads.
            drop = len(self._buf) - (len(marker) - 1)
            if drop > 0:
                self.counters.garbage_bytes += drop
                self._drop(drop)
            return False
        if index > 0:
            self.counters.garbage_bytes += index
            self._drop(index)
        return True

    def _emit(self, out: list[Frame], raw: bytes, payload: bytes) -> None:
        self.counters.frames += 1
        out.append(Frame(raw, payload))


class RawFramer(Framer):
    """Each chunk read is one frame (for looking at an unknown sensor with ``watch``)."""

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        if data:
            self._emit(out, bytes(data), bytes(data))
        return out


class LineFramer(Framer):
    def __init__(self, spec: LineFraming, counters: Counters | None = None) -> None:
        super().__init__(counters)
        self.spec = spec
        self.max_buffer = max(spec.max_length, len(spec.terminator) - 1)
        self._discarding = False

    def reset(self) -> None:
        super().reset()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        term = self.spec.terminator
        # The bytes kept from earlier reads hold no terminator (short of one cut by the read): search
        # only from there, so a slow sensor's long line is not rescanned on every read.
        scan = max(0, len(self._buf) - (len(term) - 1))
        self._buf += data
        while True:
            index = self._buf.find(term, scan)
            scan = 0
            if index < 0:
                if len(self._buf) > self.spec.max_length:
                    if not self._discarding:
                        self.counters.overlong += 1
                        self._discarding = True
                    keep = len(term) - 1
                    del self._buf[: len(self._buf) - keep]
                return out
            line = bytes(self._buf[:index])
            del self._buf[: index + len(term)]
            if self._discarding:
                # The rest of an over-long line, already counted.
                self._discarding = False
                continue
            if len(line) > self.spec.max_length:
                self.counters.overlong += 1
                continue
            if term == b"\n" and line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                continue
            if self.spec.checksum == "nmea":
                sentence = self._nmea(line)
                if sentence is not None:
                    self._emit(out, line, sentence)
            else:
                self._emit(out, line, line)

    def _nmea(self, line: bytes) -> bytes | None:
        """The sentence from its last ``$``/``!`` on, if its ``*hh`` checksum is right."""
        start = max(line.rfind(b"$"), line.rfind(b"!"))
        if start < 0:
            self.counters.garbage_bytes += len(line)
            return None
        self.counters.garbage_bytes += start
        sentence = line[start:]
        star = sentence.rfind(b"*")
        digits = sentence[star + 1 :]
        if star < 0 or len(digits) != 2 or not all(c in b"0123456789ABCDEFabcdef" for c in digits):
            self.counters.bad_checksums += 1
            return None
        if nmea_xor(sentence[1:star]) != int(digits, 16):
            self.counters.bad_checksums += 1
            return None
        return sentence


class FixedFramer(Framer):
    def __init__(self, spec: FixedFraming, counters: Counters | None = None) -> None:
        super().__init__(counters)
        self.spec = spec
        self._cs = CHECKSUM_SIZES[spec.checksum]
        self.max_buffer = max(spec.length - 1, len(spec.header) - 1, 0)

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        self._buf += data
        spec = self.spec
        while True:
            if spec.header and not self._skip_to(spec.header):
                return out
            if len(self._buf) < spec.length:
                return out
            frame = bytes(self._buf[: spec.length])
            body, check = frame[: spec.length - self._cs], frame[spec.length - self._cs :]
            if checksum_bytes(spec.checksum, body, spec.checksum_order) == check:
                del self._buf[: spec.length]
                self._emit(out, frame, body[len(spec.header) :])
            else:
                # Resynchronise one byte on: a real frame may start inside the one that failed.
                self.counters.bad_checksums += 1
                del self._buf[:1]


class _RunningChecksum:
    """A checksum over a growing prefix of a buffer, extended byte by byte instead of recomputed."""

    def __init__(self, kind: str, order: str) -> None:
        self.kind = kind
        self.order = order
        self.reset()

    def reset(self) -> None:
        self.covered = 0
        self.state = 0xFFFF if self.kind == "crc16-modbus" else 0

    def upto(self, buf: bytearray, n: int) -> bytes:
        """The checksum of ``buf[:n]`` as sent (``n`` only grows between resets)."""
        if n < self.covered:
            self.reset()
        chunk = bytes(buf[self.covered : n])
        if self.kind == "crc16-modbus":
            self.state = crc16_modbus(chunk, self.state)
            self.covered = n
            return self.state.to_bytes(2, "big" if self.order == "big" else "little")
        if self.kind == "sum8":
            self.state = (self.state + sum(chunk)) & 0xFF
            self.covered = n
            return bytes((self.state,))
        return b""


class DelimitedFramer(Framer):
    """``start + payload + checksum + end``.

    An end marker may also occur inside the payload or checksum of a binary frame, so with a checksum
    each end marker after a start is tried in turn. A failed one directly followed by a start marker
    means the frame was bad: the search moves on to that start. The scan position and the checksum of
    the bytes before it are kept between reads, so each byte is looked at once per start marker.
    """

    def __init__(self, spec: DelimitedFraming, counters: Counters | None = None) -> None:
        super().__init__(counters)
        self.spec = spec
        self._cs = CHECKSUM_SIZES[spec.checksum]
        self._max_total = len(spec.start) + spec.max_length + self._cs + len(spec.end)
        self.max_buffer = self._max_total - 1
        self._running = _RunningChecksum(spec.checksum, spec.checksum_order)
        self._forget()

    def _forget(self) -> None:
        """The buffer's head moved: the scan state belongs to a start marker no longer there."""
        self._scan = len(self.spec.start) + self._cs
        self._failed_at = -1
        self._any_failed = False
        self._running.reset()

    def _drop(self, count: int) -> None:
        super()._drop(count)
        self._forget()

    def reset(self) -> None:
        super().reset()
        self._forget()

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        self._buf += data
        spec, cs = self.spec, self._cs
        start_len, end_len = len(spec.start), len(spec.end)
        while True:
            if not self._skip_to(spec.start):
                return out
            verdict, at = self._search()
            if verdict == "found":
                raw = bytes(self._buf[: at + end_len])
                self._drop(at + end_len)
                self._emit(out, raw, raw[start_len : at - cs])
            elif verdict == "bad":
                self.counters.bad_checksums += 1
                self._drop(at)
            elif len(self._buf) >= self._max_total:
                if self._any_failed:
                    self.counters.bad_checksums += 1
                else:
                    self.counters.overlong += 1
                self._drop(start_len)
            else:
                return out

    def _search(self) -> tuple[str, int]:
        """("found", end), ("bad", where the next start is) or ("wait", 0) for the frame at the head."""
        spec, cs = self.spec, self._cs
        start_len, end_len = len(spec.start), len(spec.end)
        while True:
            if self._failed_at >= 0:
                after = self._failed_at + end_len
                following = bytes(self._buf[after : after + start_len])
                if following == spec.start:
                    return "bad", after
                if len(following) < start_len and spec.start.startswith(following):
                    return "wait", 0
                self._failed_at = -1
            end = self._buf.find(spec.end, self._scan)
            if end < 0 or end + end_len > self._max_total:
                # Next time, look again only where an end marker may have been cut by the read.
                self._scan = max(self._scan, len(self._buf) - end_len + 1)
                return "wait", 0
            self._scan = end + 1
            if self._running.upto(self._buf, end - cs) == self._buf[end - cs : end]:
                return "found", end
            self._failed_at = end
            self._any_failed = True


class LengthFramer(Framer):
    def __init__(self, spec: LengthFraming, counters: Counters | None = None) -> None:
        super().__init__(counters)
        self.spec = spec
        self._cs = CHECKSUM_SIZES[spec.checksum]
        self._prefix = len(spec.header) + spec.length_size
        self.max_buffer = self._prefix + spec.max_length + self._cs - 1

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        self._buf += data
        spec, cs, prefix = self.spec, self._cs, self._prefix
        while True:
            if spec.header and not self._skip_to(spec.header):
                return out
            if len(self._buf) < prefix:
                return out
            field = bytes(self._buf[len(spec.header) : prefix])
            size = int.from_bytes(field, spec.length_order) + spec.length_adjust
            if size < 0 or size > spec.max_length:
                if size > spec.max_length:
                    self.counters.overlong += 1
                else:
                    self.counters.garbage_bytes += 1
                del self._buf[:1]
                continue
            total = prefix + size + cs
            if len(self._buf) < total:
                return out
            frame = bytes(self._buf[:total])
            body = frame[: total - cs]
            if checksum_bytes(spec.checksum, body, spec.checksum_order) == frame[total - cs :]:
                del self._buf[:total]
                self._emit(out, frame, body[prefix:])
            else:
                self.counters.bad_checksums += 1
                del self._buf[:1]


def build_framer(spec: FramingSpec, counters: Counters | None = None) -> Framer:
    if isinstance(spec, LineFraming):
        return LineFramer(spec, counters)
    if isinstance(spec, FixedFraming):
        return FixedFramer(spec, counters)
    if isinstance(spec, DelimitedFraming):
        return DelimitedFramer(spec, counters)
    if isinstance(spec, LengthFraming):
        return LengthFramer(spec, counters)
    if isinstance(spec, RawFraming):
        return RawFramer(counters)
    raise TypeError(f"unknown framing {spec!r}")
