"""MQTT v5 AUTH (re-authentication) for paho-mqtt 2.2 driven by aiomqtt 2.5, and a log filter for tokens.

paho-mqtt 2.2 cannot send AUTH and treats an incoming AUTH (0xF0) as a protocol error. This module adds,
for ONE connection at a time (no global class is patched):

* :func:`install` turns the paho client that an ``aiomqtt.Client`` owns into an :class:`AuthClient`
  (a paho ``Client`` subclass, assigned to that one instance's ``__class__``) and returns it;
* :meth:`AuthClient.reauthenticate` queues AUTH reason 0x19 with Authentication Method and
  Authentication Data (no user properties: Event Grid refuses them) and returns a future resolved with
  the broker's verdict;
* incoming AUTH 0x00 resolves it as accepted; any other AUTH reason (0x18 continue included: the JWT
  methods are one-step) as refused;
* mosquitto 2.0.11 (Debian 12) answers a refused re-authentication with a CONNACK 0x87 on the live
  connection (fixed in 2.0.13, which sends DISCONNECT 0x87). Plain paho reads the second CONNACK as a
  protocol error; here both are reported as a refused re-authentication, and the connection is closed.

Private names this module relies on (``tests/uplink/test_mqtt_auth_contract.py`` fails naming any that
an upgrade removes; that is why aiomqtt and paho-mqtt are pinned to minor versions in pyproject.toml):

* ``paho.mqtt.client.Client._packet_handle(self) -> MQTTErrorCode``: overridden to see every incoming
  packet before paho dispatches it;
* ``paho.mqtt.client.Client._in_packet``: the dict holding the packet being handled; we read its
  ``"command"`` (first header byte) and ``"packet"`` (the bytes after the remaining length);
* ``paho.mqtt.client.Client._packet_queue(self, command, packet, mid, qos)``: queues our AUTH bytes on
  paho's outgoing packet queue (so they are written in order with everything else, through aiomqtt's
  socket writer callback);
* ``aiomqtt.Client._client``: the paho client aiomqtt drives;
* ``aiomqtt.Client._disconnected`` (used by ``session.py``): the future aiomqtt resolves when the
  connection ends; the session reads its exception so asyncio does not warn it was never retrieved.

Public paho names used: ``Client.is_connected``, ``enums.MQTTErrorCode``, ``Properties``, ``PacketTypes``,
``ReasonCode``.

paho logs CONNECT properties (Authentication Data = the raw JWT) at DEBUG; :class:`TokenRedactingFilter`
rewrites any record carrying a JWT or Authentication Data before a handler sees it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("fieldgate.uplink")

AUTH = 0xF0
CONNACK = 0x20
DISCONNECT = 0xE0
REAUTHENTICATE = 0x19
CONTINUE = 0x18
SUCCESS = 0x00

#: (owner, name, kind) of every private name used above; the contract test checks each.
PRIVATE_NAMES: tuple[tuple[str, str, str], ...] = (
    ("paho.mqtt.client.Client", "_packet_handle", "method"),
    ("paho.mqtt.client.Client", "_packet_queue", "method"),
    ("paho.mqtt.client.Client", "_in_packet", "instance attribute"),
    ("aiomqtt.Client", "_client", "instance attribute"),
    ("aiomqtt.Client", "_disconnected", "instance attribute"),
    ("aiomqtt.Client", "_loop", "instance attribute"),
)


def reason_name(packet_type: int, code: int) -> str:
    """The MQTT v5 name of a reason code (e.g. 0x87 -> 'Not authorized'), or 'reason 0xNN'."""
    try:
        return str(ReasonCode(packet_type, identifier=code).getName())
    except KeyError:
        return f"reason 0x{code:02X}"


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The broker's verdict on one re-authentication."""

    accepted: bool
    reason_code: int
    #: Human text, e.g. "AUTH 0x00 Success", "CONNACK 0x87 Not authorized (mosquitto 2.0.11)".
    detail: str


def new_properties(packet_type: int) -> Properties:
    """paho's ``Properties`` constructor, typed (paho leaves it unannotated)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_auth(reason: int, method: str, data: bytes) -> bytes:
    """An AUTH packet with the given reason, Authentication Method and Authentication Data."""
    props = new_properties(PacketTypes.AUTH)
    props.AuthenticationMethod = method
    props.AuthenticationData = data
    body = bytes([reason]) + bytes(props.pack())  # type: ignore[no-untyped-call]
    return bytes([AUTH]) + _varint(len(body)) + body


class AuthClient(paho.Client):
    """A paho client that speaks AUTH. Never constructed: :func:`install` converts aiomqtt's instance."""

    _fg_loop: asyncio.AbstractEventLoop
    _fg_pending: asyncio.Future[AuthOutcome] | None
    _fg_connacks: int
    _fg_refusal: AuthOutcome | None

    def _fg_init(self, loop: asyncio.AbstractEventLoop) -> None:
        self._fg_loop = loop
        self._fg_pending = None
        self._fg_connacks = 0
        self._fg_refusal = None

    # -- outgoing --------------------------------------------------------------------------------
    def reauthenticate(self, method: str, data: bytes) -> asyncio.Future[AuthOutcome]:
        """Queue AUTH 0x19 and return a future for the broker's answer. Call on the event loop thread."""
        if self._fg_pending is not None and not self._fg_pending.done():
            raise RuntimeError("a re-authentication is already in progress")
        future: asyncio.Future[AuthOutcome] = self._fg_loop.create_future()
        if not self.is_connected():
            future.set_result(AuthOutcome(False, 0x80, "not connected"))
            return future
        self._fg_pending = future
        log.debug("sending AUTH 0x19 (re-authenticate, method %s, %d bytes of data)", method, len(data))
        rc = self._packet_queue(AUTH, encode_auth(REAUTHENTICATE, method, data), 0, 0)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._fg_settle(AuthOutcome(False, 0x80, f"AUTH could not be queued ({paho.error_string(rc)})"))
        return future

    def connection_closed(self) -> None:
        """Settle a pending re-authentication when the connection ends without an answer."""
        pending, self._fg_pending = self._fg_pending, None
        if pending is not None and not pending.done():
            # Not recorded as a refusal: the connection ended for a reason of its own.
            pending.set_result(
                AuthOutcome(False, 0x80, "connection closed before the broker answered the AUTH")
            )

    @property
    def refusal(self) -> AuthOutcome | None:
        """Why the broker refused the last re-authentication on this connection, if it did."""
        return self._fg_refusal

    def _fg_settle(self, outcome: AuthOutcome) -> None:
        if not outcome.accepted and self._fg_refusal is None:
            self._fg_refusal = outcome
        pending, self._fg_pending = self._fg_pending, None
        if pending is not None and not pending.done():
            pending.set_result(outcome)

    # -- incoming --------------------------------------------------------------------------------
    def _packet_handle(self) -> MQTTErrorCode:
        in_packet = cast(dict[str, Any], self._in_packet)
        command = int(in_packet["command"]) & 0xF0
        body = bytes(in_packet["packet"])
        if command == AUTH:
            return self._fg_handle_auth(body)
        if command == CONNACK:
            self._fg_connacks += 1
            if self._fg_connacks > 1:
                return self._fg_handle_late_connack(body)
        elif command == DISCONNECT and self._fg_pending is not None:
            code = body[0] if body else SUCCESS
            name = reason_name(PacketTypes.DISCONNECT, code)
            self._fg_settle(AuthOutcome(False, code, f"DISCONNECT 0x{code:02X} {name}"))
        return super()._packet_handle()

    def _fg_handle_auth(self, body: bytes) -> MQTTErrorCode:
        code = body[0] if body else SUCCESS
        method: str | None = None
        if len(body) > 1:
            props = new_properties(PacketTypes.AUTH)
            props.unpack(body[1:])  # type: ignore[no-untyped-call]
            method = getattr(props, "AuthenticationMethod", None)
        name = reason_name(PacketTypes.AUTH, code)
        if self._fg_pending is None:
            # Late answer to a re-authentication we already gave up on (timeout): nothing waits for it.
            log.debug("ignoring AUTH 0x%02X %s: no re-authentication in progress", code, name)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if code == SUCCESS:
            self._fg_settle(AuthOutcome(True, code, f"AUTH 0x00 {name}"))
        elif code == CONTINUE:
            detail = f"AUTH 0x18 {name} (method {method or '?'}): JWT methods are one-step, not supported"
            self._fg_settle(AuthOutcome(False, code, detail))
        else:
            self._fg_settle(AuthOutcome(False, code, f"AUTH 0x{code:02X} {name}"))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _fg_handle_late_connack(self, body: bytes) -> MQTTErrorCode:
        code = body[1] if len(body) > 1 else 0x80
        detail = f"CONNACK 0x{code:02X} {reason_name(PacketTypes.CONNACK, code)} on the live connection"
        if self._fg_pending is not None:
            # mosquitto 2.0.11's answer to a refused re-authentication; the broker closes the socket next.
            self._fg_settle(AuthOutcome(False, code, detail + " (mosquitto < 2.0.13 refusing the AUTH)"))
        else:
            self._fg_settle(AuthOutcome(False, code, detail))
        # Make paho close the socket and report the disconnect (paho maps this to on_disconnect).
        return MQTTErrorCode.MQTT_ERR_AUTH


class _SocketRegistrationLoop:
    """The event loop as aiomqtt sees it, with registrations of paho's socket that come too late dropped.

    aiomqtt registers paho's socket with ``call_soon_threadsafe(loop.add_writer, sock.fileno(), ...)``
    (``add_reader`` likewise): when the connection drops in between - a peer that accepts and resets at
    once, as a relay in front of a stopped broker does - the descriptor is closed by the time the call
    runs, and asyncio would log an ``OSError`` traceback for a socket nothing needs any more. Everything
    else goes to the loop itself.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._fg_loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fg_loop, name)

    def add_writer(self, fd: int, callback: Any, *args: Any) -> None:
        try:
            self._fg_loop.add_writer(fd, callback, *args)
        except (OSError, ValueError) as exc:  # closed (EBADF) or already -1
            log.debug("paho's socket %d was closed before its write registration: %s", fd, exc)

    def add_reader(self, fd: int, callback: Any, *args: Any) -> None:
        try:
            self._fg_loop.add_reader(fd, callback, *args)
        except (OSError, ValueError) as exc:
            log.debug("paho's socket %d was closed before its read registration: %s", fd, exc)


def install(client: aiomqtt.Client) -> AuthClient:
    """Give ``client``'s paho client AUTH support and return it. Call right after creating ``client``."""
    client._loop = cast(asyncio.AbstractEventLoop, _SocketRegistrationLoop(client._loop))
    inner = client._client
    if not isinstance(inner, paho.Client):
        raise TypeError(f"aiomqtt.Client._client is a {type(inner).__name__}, not a paho client")
    # Narrow on purpose: only this instance changes class; paho.Client itself is left untouched.
    inner.__class__ = AuthClient
    auth = cast(AuthClient, inner)
    auth._fg_init(asyncio.get_running_loop())
    return auth


# -- logging ----------------------------------------------------------------------------------------
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_AUTH_DATA = re.compile(r"(AuthenticationData\s*[:=]\s*)(b?'[^']*'|b?\"[^\"]*\"|[^,\]\s]+)")


def redact(text: str) -> str:
    """``text`` with every JWT and every rendered Authentication Data property replaced by a marker."""
    text = _AUTH_DATA.sub(r"\1<hidden>", text)
    return _JWT.sub("<token hidden>", text)


class TokenRedactingFilter(logging.Filter):
    """Rewrites a record whose rendered message carries a token. Attach to the logger paho writes to."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def paho_logger(name: str = "fieldgate.uplink.paho") -> logging.Logger:
    """The logger handed to aiomqtt/paho, with the token filter attached once."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, TokenRedactingFilter) for f in logger.filters):
        logger.addFilter(TokenRedactingFilter())
    return logger
