"""Framers: table-driven cases for each framing, and hypothesis properties over arbitrary bytes.

Whatever arrives on the wire, a framer must not raise, must keep at most ``max_buffer`` bytes between
reads, and must still find the good frames hidden in the garbage.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.config import DelimitedFraming, FixedFraming, FramingSpec, LengthFraming, LineFraming
from drivers.serial.framing import (
    Counters,
    build_framer,
    checksum_bytes,
    crc16_modbus,
    nmea_sentence,
    nmea_xor,
    sum8,
)


def feed_all(spec: FramingSpec, chunks: list[bytes]) -> tuple[list[bytes], Counters]:
    counters = Counters()
    framer = build_framer(spec, counters)
    payloads = []
    for chunk in chunks:
        payloads += [f.payload for f in framer.feed(chunk)]
        assert framer.buffered <= framer.max_buffer
    return payloads, counters


# -- checksums -----------------------------------------------------------------------------------------
def test_checksums_match_published_check_values() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37
    # A Modbus RTU read request as printed in device manuals: 01 03 00 00 00 0A C5 CD.
    assert checksum_bytes("crc16-modbus", bytes.fromhex("01030000000A"), "little") == bytes.fromhex("C5CD")
    assert checksum_bytes("crc16-modbus", bytes.fromhex("01030000000A"), "big") == bytes.fromhex("CDC5")
    assert sum8(b"\xff\x02") == 0x01
    assert nmea_xor(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == 0x47


# -- lines ---------------------------------------------------------------------------------------------
def test_lines_are_cut_at_the_terminator_across_reads() -> None:
    spec = LineFraming(terminator=b"\r\n", max_length=20)
    assert feed_all(spec, [b"one\r", b"\ntwo\r\nthr", b"ee\r\n\r\n"])[0] == [b"one", b"two", b"three"]


def test_a_newline_terminator_also_ends_crlf_lines() -> None:
    assert feed_all(LineFraming(), [b"a,1\r\nb,2\n"])[0] == [b"a,1", b"b,2"]


def test_an_overlong_line_is_counted_once_and_the_next_line_is_kept() -> None:
    payloads, counters = feed_all(LineFraming(max_length=8), [b"x" * 5, b"y" * 50, b"z" * 50, b"\nok\n"])
    assert payloads == [b"ok"]
    assert counters.overlong == 1


def test_nmea_lines_need_a_good_checksum_and_lose_leading_noise() -> None:
    good = nmea_sentence(b"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
    bad = good[:-1] + (b"0" if good[-1:] != b"0" else b"1")
    stream = [b"\x00\x17" + good + b"\r\n", bad + b"\r\n", b"no sentence here\r\n", b"$GPXYZ,1\r\n"]
    payloads, counters = feed_all(LineFraming(b"\r\n", 100, "nmea"), stream)
    assert payloads == [good]
    assert (counters.bad_checksums, counters.garbage_bytes) == (2, 2 + len(b"no sentence here"))


# -- fixed-length frames --------------------------------------------------------------------------------
def test_fixed_frames_with_header_and_sum8_resynchronise_after_noise() -> None:
    spec = FixedFraming(length=6, header=b"\xa5", checksum="sum8")

    def frame(data: bytes) -> bytes:
        return b"\xa5" + data + checksum_bytes("sum8", b"\xa5" + data, "little")

    corrupt = bytearray(frame(b"\x09\x09\x09\x09"))
    corrupt[2] ^= 0xFF
    payloads, counters = feed_all(
        spec, [b"\x01\x02", frame(b"ABCD")[:3], frame(b"ABCD")[3:] + bytes(corrupt) + frame(b"EFGH")]
    )
    assert payloads == [b"ABCD", b"EFGH"]
    assert counters.bad_checksums == 1
    assert counters.frames == 2


def test_fixed_frames_without_header_are_plain_chunks() -> None:
    assert feed_all(FixedFraming(length=3), [b"abcde", b"fg"])[0] == [b"abc", b"def"]


# -- start/end frames -----------------------------------------------------------------------------------
def test_delimited_frames_with_crc_survive_an_end_byte_inside_the_crc() -> None:
    spec = DelimitedFraming(start=b"\x02", end=b"\x03", max_length=16, checksum="crc16-modbus")

    def frame(data: bytes) -> bytes:
        return b"\x02" + data + checksum_bytes("crc16-modbus", b"\x02" + data, "little") + b"\x03"

    # Find a payload whose CRC contains the end byte, so the first end marker seen is a false one.
    tricky = next(
        d for d in (bytes((i, j)) for i in range(32, 127) for j in range(32, 127)) if 3 in frame(d)[3:5]
    )
    payloads, counters = feed_all(spec, [b"\x03junk" + frame(tricky) + frame(b"T=21.5")])
    assert payloads == [tricky, b"T=21.5"]
    assert counters.garbage_bytes == 5


def test_delimited_frame_with_bad_checksum_gives_way_to_the_next_start() -> None:
    spec = DelimitedFraming(start=b"\x02", end=b"\x03", max_length=16, checksum="sum8")
    good = b"\x02OK" + checksum_bytes("sum8", b"\x02OK", "little") + b"\x03"
    payloads, counters = feed_all(spec, [b"\x02BAD\x00\x03" + good])
    assert payloads == [b"OK"]
    assert counters.bad_checksums == 1


def test_delimited_frame_without_end_is_overlong() -> None:
    spec = DelimitedFraming(start=b"<", end=b">", max_length=4)
    payloads, counters = feed_all(spec, [b"<123456789<ab>"])
    assert payloads == [b"ab"]
    assert counters.overlong == 1


# -- length-prefixed frames ------------------------------------------------------------------------------
def test_length_prefixed_frames_with_two_byte_little_endian_length_and_adjustment() -> None:
    # This device counts its 2-byte CRC in the length field.
    spec = LengthFraming(b"\x7e", 2, "little", -2, 64, "crc16-modbus", "little")

    def frame(data: bytes) -> bytes:
        body = b"\x7e" + struct.pack("<H", len(data) + 2) + data
        return body + checksum_bytes("crc16-modbus", body, "little")

    payloads, counters = feed_all(spec, [b"\x00" + frame(b"hello"), b"\x7e\xff\xff", frame(b"")])
    assert payloads == [b"hello", b""]
    assert counters.overlong == 1


# -- properties -----------------------------------------------------------------------------------------
SPECS: list[FramingSpec] = [
    LineFraming(b"\n", 32),
    LineFraming(b"\r\n", 40, "nmea"),
    FixedFraming(8),
    FixedFraming(8, b"\xaa\x55", "crc16-modbus"),
    FixedFraming(5, b"\xa5", "sum8", "big"),
    DelimitedFraming(b"\x02", b"\x03", 24),
    DelimitedFraming(b"\x02", b"\x03", 24, "crc16-modbus"),
    DelimitedFraming(b"<<", b">>", 24, "sum8"),
    LengthFraming(b"\xaa\x55", 1, "big", 0, 24, "crc16-modbus"),
    LengthFraming(b"", 2, "little", 0, 24, "sum8"),
    LengthFraming(b"\x7e", 2, "big", -1, 24),
]


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_raise_and_keep_the_buffer_bounded(chunks: list[bytes]) -> None:
    for spec in SPECS:
        feed_all(spec, chunks)


def encode(spec: FramingSpec, payload: bytes) -> bytes:
    """A valid frame for ``spec`` around ``payload`` (the simulated sensor's side)."""
    if isinstance(spec, LineFraming):
        return (nmea_sentence(payload) if spec.checksum == "nmea" else payload) + spec.terminator
    if isinstance(spec, FixedFraming):
        body = spec.header + payload
        return body + checksum_bytes(spec.checksum, body, spec.checksum_order)
    if isinstance(spec, DelimitedFraming):
        body = spec.start + payload
        return body + checksum_bytes(spec.checksum, body, spec.checksum_order) + spec.end
    assert isinstance(spec, LengthFraming)
    body = (
        spec.header
        + (len(payload) - spec.length_adjust).to_bytes(spec.length_size, spec.length_order)
        + payload
    )
    return body + checksum_bytes(spec.checksum, body, spec.checksum_order)


def markers(spec: FramingSpec) -> bytes:
    """Bytes that garbage must not contain for the frames after it to be recognisable at all."""
    if isinstance(spec, FixedFraming | LengthFraming):
        return spec.header[:1]
    if isinstance(spec, DelimitedFraming):
        return spec.start[:1] + spec.end[:1]
    return b""


#: Framings that can find their way back into a stream (a binary framing needs a header or start marker).
RESYNCING = [s for s in SPECS if not isinstance(s, FixedFraming | LengthFraming) or s.header]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("spec", RESYNCING, ids=repr)
def test_good_frames_hidden_in_garbage_are_all_found(spec: FramingSpec, data: st.DataObject) -> None:
    avoid = markers(spec)
    if isinstance(spec, LineFraming):
        garbage = st.binary(max_size=80)
        plain = st.binary(min_size=1, max_size=spec.max_length - 6).filter(
            lambda b: b"\n" not in b and b"\r" not in b and b"$" not in b and b"!" not in b and b"*" not in b
        )
    else:
        garbage = st.binary(max_size=40).filter(lambda b: not any(c in avoid for c in b))
        size = (
            spec.length - len(spec.header) - len(checksum_bytes(spec.checksum, b"", "little"))
            if isinstance(spec, FixedFraming)
            else None
        )
        plain = (
            st.binary(min_size=size, max_size=size)
            if size is not None
            else st.binary(max_size=20).filter(lambda b: not any(c in avoid for c in b))
        )
    payloads = data.draw(st.lists(plain, min_size=1, max_size=4))
    stream = b""
    for payload in payloads:
        noise = data.draw(garbage)
        stream += (
            noise
            + (spec.terminator if isinstance(spec, LineFraming) and noise else b"")
            + encode(spec, payload)
        )
    stream += data.draw(garbage)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    found, _ = feed_all(spec, chunks)
    expected = [
        nmea_sentence(p) if isinstance(spec, LineFraming) and spec.checksum == "nmea" else p for p in payloads
    ]
    if isinstance(spec, LineFraming):
        # Garbage may hold terminators and so make lines of its own; the good lines are all there, in order.
        it = iter(found)
        assert all(any(f == e for f in it) for e in expected), (found, expected)
    else:
        assert found == expected
