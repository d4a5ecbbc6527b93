"""A minimal socket-level MQTT v5 client for tests.

paho cannot send AUTH packets, and the broker plugin must be tested independently of the
uplink anyway, so this speaks the few packets the tests need directly: CONNECT with
authentication method/data, AUTH, PUBLISH (QoS 0/1/2 - 2 only to see it refused),
SUBSCRIBE, DISCONNECT, and parses what the broker answers. Blocking sockets with
deadlines; test use only.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Any

# Packet types (upper nibble of the fixed header).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP = 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

# Property identifiers used here and their wire types.
PROP_PAYLOAD_FORMAT = 0x01
PROP_SESSION_EXPIRY = 0x11
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_SERVER_KEEP_ALIVE = 0x13
PROP_AUTH_METHOD = 0x15
PROP_AUTH_DATA = 0x16
PROP_REASON_STRING = 0x1F
PROP_RECEIVE_MAXIMUM = 0x21
PROP_TOPIC_ALIAS_MAXIMUM = 0x22
PROP_MAXIMUM_QOS = 0x24
PROP_RETAIN_AVAILABLE = 0x25
PROP_USER_PROPERTY = 0x26
PROP_MAXIMUM_PACKET_SIZE = 0x27

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip


class ProtocolError(Exception):
    """The broker sent something this client cannot parse."""


class ConnectionClosed(Exception):
    """The broker closed the connection while a packet was awaited."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value % 128
        value //= 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def encode_bin(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_properties(props: list[tuple[int, Any]]) -> bytes:
    body = bytearray()
    for ident, value in props:
        kind = _PROPERTY_TYPES[ident]
        body += encode_varint(ident)
        if kind == _BYTE:
            body.append(value)
        elif kind == _U16:
            body += struct.pack("!H", value)
        elif kind == _U32:
            body += struct.pack("!I", value)
        elif kind == _VARINT:
            body += encode_varint(value)
        elif kind == _STR:
            body += encode_str(value)
        elif kind == _BIN:
            body += encode_bin(value)
        else:
            body += encode_str(value[0]) + encode_str(value[1])
    return encode_varint(len(body)) + bytes(body)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        (value,) = struct.unpack_from("!H", self.data, self.pos)
        self.pos += 2
        return int(value)

    def u32(self) -> int:
        (value,) = struct.unpack_from("!I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def binary(self) -> bytes:
        length = self.u16()
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def string(self) -> str:
        return self.binary().decode()

    def rest(self) -> bytes:
        value = self.data[self.pos :]
        self.pos = len(self.data)
        return value

    def properties(self) -> dict[int, Any]:
        length = self.varint()
        end = self.pos + length
        props: dict[int, Any] = {}
        while self.pos < end:
            ident = self.varint()
            kind = _PROPERTY_TYPES.get(ident)
            if kind is None:
                raise ProtocolError(f"unknown property 0x{ident:02x}")
            value: Any
            if kind == _BYTE:
                value = self.byte()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _STR:
                value = self.string()
            elif kind == _BIN:
                value = self.binary()
            else:
                value = (self.string(), self.string())
            if ident == PROP_USER_PROPERTY:
                props.setdefault(ident, []).append(value)
            else:
                props[ident] = value
        return props


@dataclass(frozen=True)
class Connack:
    session_present: bool
    reason_code: int
    properties: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Auth:
    reason_code: int
    properties: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Puback:
    packet_id: int
    reason_code: int


@dataclass(frozen=True)
class Suback:
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True)
class Disconnect:
    reason_code: int
    properties: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    properties: dict[int, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Other:
    packet_type: int
    body: bytes


Packet = Connack | Auth | Puback | Suback | Disconnect | Publish | Other


def _parse(packet_type: int, flags: int, body: bytes) -> Packet:
    r = _Reader(body)
    if packet_type == CONNACK:
        session_present = bool(r.byte() & 0x01)
        reason = r.byte()
        props = r.properties() if r.remaining() else {}
        return Connack(session_present, reason, props)
    if packet_type == AUTH:
        if not body:
            return Auth(0x00)
        reason = r.byte()
        return Auth(reason, r.properties() if r.remaining() else {})
    if packet_type in (PUBACK, PUBREC, PUBCOMP):
        packet_id = r.u16()
        reason = r.byte() if r.remaining() else 0x00
        if packet_type == PUBACK:
            return Puback(packet_id, reason)
        return Other(packet_type, body)
    if packet_type == SUBACK:
        packet_id = r.u16()
        r.properties()
        return Suback(packet_id, tuple(r.rest()))
    if packet_type == DISCONNECT:
        if not body:
            return Disconnect(0x00)
        reason = r.byte()
        return Disconnect(reason, r.properties() if r.remaining() else {})
    if packet_type == PUBLISH:
        qos = (flags >> 1) & 0x03
        topic = r.string()
        publish_id = r.u16() if qos else None
        props = r.properties()
        return Publish(topic, r.rest(), qos, publish_id, props)
    return Other(packet_type, body)


class MqttV5Client:
    """One MQTT v5 connection driven step by step by a test."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        tls_ca: str | None = None,
    ) -> None:
        self.timeout = timeout
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ca is not None:
            context = ssl.create_default_context(cafile=tls_ca)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self.sock: socket.socket = context.wrap_socket(raw, server_hostname=host)
        else:
            self.sock = raw
        self._buffer = bytearray()
        self._next_id = 1
        self.closed = False

    # -- low level -------------------------------------------------------------------------
    def send_packet(self, packet_type: int, flags: int, body: bytes) -> None:
        header = bytes([(packet_type << 4) | flags]) + encode_varint(len(body))
        self.sock.sendall(header + body)

    def _fill(self, count: int, deadline: float) -> None:
        while len(self._buffer) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no packet from the broker before the deadline")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLError) as exc:
                self.closed = True
                raise ConnectionClosed(str(exc)) from exc
            if not chunk:
                self.closed = True
                raise ConnectionClosed("the broker closed the connection")
            self._buffer += chunk

    def read_packet(self, timeout: float | None = None) -> Packet:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(2, deadline)
        length, shift, pos = 0, 0, 1
        while True:
            self._fill(pos + 1, deadline)
            byte = self._buffer[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                break
            shift += 7
        self._fill(pos + length, deadline)
        first = self._buffer[0]
        body = bytes(self._buffer[pos : pos + length])
        del self._buffer[: pos + length]
        return _parse(first >> 4, first & 0x0F, body)

    def _packet_id(self) -> int:
        packet_id = self._next_id
        self._next_id = self._next_id % 65535 + 1
        return packet_id

    # -- packets ---------------------------------------------------------------------------
    def connect(
        self,
        client_id: str,
        *,
        auth_method: str | None = None,
        auth_data: bytes | str | None = None,
        username: str | None = None,
        keepalive: int = 60,
        clean_start: bool = True,
        session_expiry: int | None = None,
        will_topic: str | None = None,
        will_payload: bytes = b"",
    ) -> Connack:
        props: list[tuple[int, Any]] = []
        if session_expiry is not None:
            props.append((PROP_SESSION_EXPIRY, session_expiry))
        if auth_method is not None:
            props.append((PROP_AUTH_METHOD, auth_method))
        if auth_data is not None:
            data = auth_data.encode() if isinstance(auth_data, str) else auth_data
            props.append((PROP_AUTH_DATA, data))
        flags = 0x02 if clean_start else 0x00
        if will_topic is not None:
            flags |= 0x04 | (1 << 3)  # will flag, will QoS 1
        if username is not None:
            flags |= 0x80
        body = encode_str("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive)
        body += encode_properties(props) + encode_str(client_id)
        if will_topic is not None:
            body += encode_properties([]) + encode_str(will_topic) + encode_bin(will_payload)
        if username is not None:
            body += encode_str(username)
        self.send_packet(CONNECT, 0, body)
        packet = self.read_packet()
        if not isinstance(packet, Connack):
            raise ProtocolError(f"expected CONNACK, got {packet!r}")
        return packet

    def send_auth(self, reason_code: int, auth_method: str, auth_data: bytes | str) -> None:
        data = auth_data.encode() if isinstance(auth_data, str) else auth_data
        props = encode_properties([(PROP_AUTH_METHOD, auth_method), (PROP_AUTH_DATA, data)])
        self.send_packet(AUTH, 0, bytes([reason_code]) + props)

    def reauthenticate(self, auth_method: str, token: str) -> Packet:
        """AUTH 0x19 with a fresh token; returns the broker's answer (AUTH, CONNACK or DISCONNECT)."""
        self.send_auth(0x19, auth_method, token)
        return self.read_packet()

    def publish(self, topic: str, payload: bytes = b"", *, qos: int = 0, retain: bool = False) -> int | None:
        """Sends a PUBLISH; for QoS 1 and 2 returns the packet id to await with wait_puback."""
        body = encode_str(topic)
        packet_id: int | None = None
        if qos:
            packet_id = self._packet_id()
            body += struct.pack("!H", packet_id)
        body += encode_properties([]) + payload
        self.send_packet(PUBLISH, (qos << 1) | int(retain), body)
        return packet_id

    def publish_qos1(self, topic: str, payload: bytes = b"") -> Puback:
        packet_id = self.publish(topic, payload, qos=1)
        packet = self.read_packet()
        if not isinstance(packet, Puback) or packet.packet_id != packet_id:
            raise ProtocolError(f"expected PUBACK {packet_id}, got {packet!r}")
        return packet

    def subscribe(self, topic_filter: str, qos: int = 1) -> Suback:
        packet_id = self._packet_id()
        body = struct.pack("!H", packet_id) + encode_properties([]) + encode_str(topic_filter)
        body += bytes([qos])
        self.send_packet(SUBSCRIBE, 0x02, body)
        packet = self.read_packet()
        if not isinstance(packet, Suback) or packet.packet_id != packet_id:
            raise ProtocolError(f"expected SUBACK {packet_id}, got {packet!r}")
        return packet

    def ping(self) -> None:
        self.send_packet(PINGREQ, 0, b"")
        packet = self.read_packet()
        if not (isinstance(packet, Other) and packet.packet_type == PINGRESP):
            raise ProtocolError(f"expected PINGRESP, got {packet!r}")

    def disconnect(self, reason_code: int = 0x00) -> None:
        self.send_packet(DISCONNECT, 0, bytes([reason_code]) + encode_properties([]))
        self.close()

    def wait_closed(self, timeout: float) -> list[Packet]:
        """Reads until the broker closes the connection; returns what it sent meanwhile.

        Raises TimeoutError if the connection is still open at the deadline.
        """
        deadline = time.monotonic() + timeout
        received: list[Packet] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the broker kept the connection open")
            try:
                received.append(self.read_packet(timeout=remaining))
            except ConnectionClosed:
                return received

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> MqttV5Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
