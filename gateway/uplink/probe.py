"""A conformance probe: how a broker (an Event Grid namespace, or the local broker) actually behaves.

``fieldgate probe --config FILE`` connects with the configured identity and reports, as a table:

* what CONNACK says: Maximum Packet Size, Receive Maximum, Topic Alias Maximum, Retain Available,
  Wildcard and Shared Subscription Available (absent properties are shown with MQTT's default);
* the answer to a refused re-authentication: AUTH 0x19 carrying the current token with its signature
  altered (so only the signature check can refuse it); the altered token is never printed or logged;
* what happens when the token expires on a live connection without a refresh (only when it expires within
  ``expiry_wait`` seconds: the probe does not wait an hour for a namespace token);
* the answer to an over-rate burst: QoS 1 publishes at ``rate`` per second for at most ``burst_seconds``
  on one topic the token grants, counting PUBACK reason codes and a DISCONNECT.

Each check runs on its own connection with a clean session (session expiry 0) and the client id
``<uplink.client_id>-probe`` (``-probe-expiry`` for the expiry check, which runs alongside the others),
so a gateway running with the configured client id keeps its session. Reference: README.md here,
"Probing a namespace".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.auth import Token, TokenSource, identity_model
from gateway.config.uplink import UplinkConfig
from gateway.errors import UplinkError
from gateway.uplink.mqtt_auth import AuthClient, install, new_properties, paho_logger, reason_name

log = logging.getLogger("fieldgate.probe")

#: The burst publishes at this multiple of the configured (or documented) rate.
BURST_FACTOR = 2.0
#: How long after ``exp`` the expiry check keeps watching a connection that stays open.
EXPIRY_GRACE = 10.0
#: The device name a derived probe topic is rendered with.
PROBE_DEVICE = "fieldgate-probe"

# Row names, in the order they are printed (tests and the README refer to them).
ROW_MAX_PACKET = "maximum packet size"
ROW_RECEIVE_MAX = "receive maximum"
ROW_TOPIC_ALIAS = "topic alias maximum"
ROW_RETAIN = "retain available"
ROW_WILDCARD = "wildcard subscription available"
ROW_SHARED = "shared subscription available"
ROW_REAUTH = "refused re-authentication"
ROW_EXPIRY = "token expiry without refresh"
ROW_BURST = "over-rate burst"


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """What to probe, from the command line and the config."""

    #: The topic the burst publishes to (the token must grant it).
    topic: str
    client_id: str
    #: Publishes per second the burst aims at.
    rate: float
    burst_seconds: float = 2.0
    #: Test the token's expiry only when it expires within this many seconds (0: not tested).
    expiry_wait: float = 0.0
    #: How long to wait for an answer to the AUTH, and for outstanding PUBACKs after the burst.
    answer_timeout: float = 10.0


@dataclass(slots=True)
class ProbeReport:
    """Header lines (where, as whom) and the table's rows (check, what the broker did)."""

    header: list[str] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)
    #: False when the probe could not connect at all (the rows say why).
    ran: bool = True

    def add(self, check: str, result: str) -> None:
        self.rows.append((check, result))

    def row(self, check: str) -> str:
        return next(result for name, result in self.rows if name == check)

    def table(self) -> str:
        width = max([len("check"), *(len(name) for name, _ in self.rows)])
        lines = [*self.header, "", f"| {'check':<{width}} | result |", f"|{'-' * (width + 2)}|--------|"]
        lines += [f"| {name:<{width}} | {result.replace('|', '/')} |" for name, result in self.rows]
        return "\n".join(lines)


async def tls_context(cfg: UplinkConfig) -> ssl.SSLContext | None:
    """The uplink's TLS settings (as ``fieldgate run`` uses them), built in a worker thread (disk reads)."""
    if not cfg.tls:
        return None

    def build() -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    try:
        return await asyncio.to_thread(build)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"cannot load the CA file {cfg.ca_file}: {exc}") from exc


def configured_rate(uplink: UplinkConfig) -> float:
    """The publish rate the uplink is configured to stay under: ``[uplink.limits] messages_per_second``
    (Event Grid's documented quota unless the config says otherwise)."""
    return uplink.limits.messages_per_second


def altered_signature(jwt: str) -> str:
    """``jwt`` with the first character of its signature changed: a well-formed token that fails only the
    signature check. (The first character, not the last: the last base64url character may carry unused
    bits, so changing it might not change the signature at all.)"""
    head, _, signature = jwt.rpartition(".")
    if not head or not signature:
        return jwt + "x"
    first = "B" if signature[0] != "B" else "C"
    return f"{head}.{first}{signature[1:]}"


class _Connection:
    """One probe connection: aiomqtt/paho with AUTH support; records CONNACK, PUBACKs and the end."""

    def __init__(self, cfg: UplinkConfig, client_id: str, token: Token, tls: ssl.SSLContext | None) -> None:
        props = new_properties(PacketTypes.CONNECT)
        props.AuthenticationMethod = cfg.auth_method
        props.AuthenticationData = token.value.encode("utf-8")
        props.SessionExpiryInterval = 0
        self.client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            logger=paho_logger(),
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=cfg.connect_timeout,
            keepalive=cfg.keepalive,
            clean_start=True,
            properties=props,
            tls_context=tls,
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            # The burst keeps its own window (Receive Maximum) so that paho never queues behind it.
            max_inflight_messages=0,
        )
        self.auth: AuthClient = install(self.client)
        loop = asyncio.get_running_loop()
        self.connack_code: int | None = None
        self.connack_properties: Properties | None = None
        self.acks: Counter[int] = Counter()
        self.inflight: set[int] = set()
        self.changed = asyncio.Event()
        self.ended: asyncio.Future[str] = loop.create_future()
        #: Reason code of a DISCONNECT the broker sent, and when the connection ended (epoch seconds).
        self.disconnect_code: int | None = None
        self.ended_at: float | None = None
        on_connect = cast(Callable[..., None], self.auth.on_connect)
        on_disconnect = cast(Callable[..., None], self.auth.on_disconnect)

        def connected(c: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, p: Any = None) -> None:
            self.connack_code = int(rc.value)
            self.connack_properties = p
            on_connect(c, userdata, flags, rc, p)

        def disconnected(c: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, p: Any = None) -> None:
            self.auth.connection_closed()
            self.ended_at = time.time()
            if getattr(flags, "is_disconnect_packet_from_server", False):
                self.disconnect_code = int(rc.value)
                why = f"DISCONNECT 0x{self.disconnect_code:02X} {rc.getName()}"
            else:
                why = "closed without DISCONNECT"
            if not self.ended.done():
                self.ended.set_result(why)
            self.changed.set()
            on_disconnect(c, userdata, flags, rc, p)

        def published(c: paho.Client, userdata: Any, mid: int, rc: ReasonCode, p: Any) -> None:
            if mid in self.inflight:
                self.inflight.discard(mid)
                self.acks[int(rc.value)] += 1
                self.changed.set()

        self.auth.on_connect = connected
        self.auth.on_disconnect = disconnected
        self.auth.on_publish = published

    async def open(self) -> None:
        """Connect; UplinkError saying why when the broker (or the network) refuses."""
        try:
            await self.client.__aenter__()
        except aiomqtt.MqttError as exc:
            code = self.connack_code
            if code is not None and code >= 0x80:
                raise UplinkError(
                    f"connection refused: CONNACK 0x{code:02X} {reason_name(PacketTypes.CONNACK, code)}"
                ) from exc
            cause = exc.__cause__ or exc.__context__
            raise UplinkError(f"cannot connect: {cause or exc}") from exc

    def prop(self, name: str) -> Any:
        return getattr(self.connack_properties, name, None)

    async def wait_ended(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, within)):
                await asyncio.shield(self.ended)
        return self.ended.done()

    async def close(self) -> None:
        disconnected = self.client._disconnected
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # read, so asyncio does not warn it was never retrieved
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)


def _flag(value: Any, default: str) -> str:
    if value is None:
        return f"{default} (not sent: MQTT's default)"
    return "yes" if int(value) else "no"


def _connack_rows(conn: _Connection, report: ProbeReport) -> None:
    max_packet = conn.prop("MaximumPacketSize")
    receive_max = conn.prop("ReceiveMaximum")
    alias_max = conn.prop("TopicAliasMaximum")
    report.add(
        ROW_MAX_PACKET,
        f"{int(max_packet)} bytes" if max_packet is not None else "not sent (no limit beyond MQTT's)",
    )
    report.add(ROW_RECEIVE_MAX, str(int(receive_max)) if receive_max is not None else "65535 (not sent)")
    report.add(ROW_TOPIC_ALIAS, str(int(alias_max)) if alias_max is not None else "0 (not sent)")
    report.add(ROW_RETAIN, _flag(conn.prop("RetainAvailable"), "yes"))
    report.add(ROW_WILDCARD, _flag(conn.prop("WildcardSubscriptionAvailable"), "yes"))
    report.add(ROW_SHARED, _flag(conn.prop("SharedSubscriptionAvailable"), "yes"))


def _codes(acks: Counter[int]) -> str:
    return ", ".join(
        f"PUBACK 0x{code:02X} {reason_name(PacketTypes.PUBACK, code)} x{count}"
        for code, count in sorted(acks.items())
    )


async def _burst(conn: _Connection, settings: ProbeSettings) -> str:
    """Publish QoS 1 at ``settings.rate`` for ``burst_seconds`` (within Receive Maximum); describe the
    answers."""
    loop = asyncio.get_running_loop()
    receive_max = conn.prop("ReceiveMaximum")
    window = int(receive_max) if receive_max is not None else 65535
    payload = b'{"probe":"over-rate burst"}'
    sent = 0
    start = loop.time()
    while not conn.ended.done():
        elapsed = loop.time() - start
        if elapsed >= settings.burst_seconds:
            break
        due = int(settings.rate * elapsed) + 1
        while sent < due and len(conn.inflight) < window and not conn.ended.done():
            info = conn.auth.publish(settings.topic, payload, 1, False)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            conn.inflight.add(info.mid)
            sent += 1
        conn.changed.clear()
        # Woken by a PUBACK (room in the window) or after one tick of the pacing.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.005):
                await conn.changed.wait()
    took = max(loop.time() - start, 1e-3)
    deadline = loop.time() + settings.answer_timeout
    while conn.inflight and not conn.ended.done() and loop.time() < deadline:
        conn.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await conn.changed.wait()
    answered = sum(conn.acks.values())
    text = f"{sent} QoS 1 publishes in {took:.1f} s ({sent / took:.0f}/s, aiming at {settings.rate:g}/s)"
    text += ": " + (_codes(conn.acks) if answered else "no PUBACK")
    if conn.disconnect_code is not None:
        text += f"; then DISCONNECT 0x{conn.disconnect_code:02X} " + reason_name(
            PacketTypes.DISCONNECT, conn.disconnect_code
        )
    elif conn.ended.done():
        text += f"; then the connection {conn.ended.result()}"
    if conn.inflight:
        text += f"; {len(conn.inflight)} never answered"
    throttled = conn.acks.get(0x97, 0) or conn.disconnect_code == 0x97
    if not throttled and conn.disconnect_code is None:
        text += "; no throttling seen"
    return text


async def _reauth(conn: _Connection, cfg: UplinkConfig, token: Token, settings: ProbeSettings) -> str:
    bad = altered_signature(token.value)
    future = conn.auth.reauthenticate(cfg.auth_method, bad.encode("utf-8"))
    del bad
    try:
        async with asyncio.timeout(settings.answer_timeout):
            outcome = await asyncio.shield(future)
    except TimeoutError:
        still = "the connection stays open" if not conn.ended.done() else conn.ended.result()
        return f"no answer within {settings.answer_timeout:g} s; {still}"
    if outcome.accepted:
        return f"ACCEPTED ({outcome.detail}): the broker did not check the token's signature"
    closed = await conn.wait_ended(settings.answer_timeout)
    if not closed:
        after = f"the connection stayed open {settings.answer_timeout:g} s"
    elif conn.disconnect_code is not None and not outcome.detail.startswith("DISCONNECT"):
        after = f"then DISCONNECT 0x{conn.disconnect_code:02X}"
    else:
        after = "then the connection closed"
    return f"{outcome.detail}, {after}"


async def _expiry(conn: _Connection, token: Token) -> str:
    closed = await conn.wait_ended(token.expires_at + EXPIRY_GRACE - time.time())
    if not closed:
        return (
            f"the connection stayed open {EXPIRY_GRACE:g} s after exp (exp not enforced on live connections)"
        )
    at = conn.ended_at if conn.ended_at is not None else time.time()
    when = at - token.expires_at
    timing = f"{when:.1f} s after exp" if when >= 0 else f"{-when:.1f} s BEFORE exp"
    if conn.disconnect_code is not None:
        name = reason_name(PacketTypes.DISCONNECT, conn.disconnect_code)
        return f"DISCONNECT 0x{conn.disconnect_code:02X} {name}, {timing}"
    return f"connection {conn.ended.result()}, {timing}"


async def run_probe(
    cfg: UplinkConfig, source: TokenSource, settings: ProbeSettings, tls: ssl.SSLContext | None
) -> ProbeReport:
    """Run every check and return the report. Raises TokenError when no token can be had."""
    token = await source.get_token()
    report = ProbeReport()
    report.header = [
        f"broker:    {cfg.host}:{cfg.port} ({'TLS' if cfg.tls else 'plain TCP'}) as client id "
        f"{settings.client_id!r}, method {cfg.auth_method}",
        f"identity:  {identity_model(cfg.token)}",
        f"token:     sub {token.claims.get('sub')!r}, expires in {token.remaining():.0f} s",
        f"burst:     topic {settings.topic!r}, {settings.rate:g}/s for at most {settings.burst_seconds:g} s",
        f"probed at: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
    ]
    expiry: _Connection | None = None
    expiry_task: asyncio.Task[str] | None = None
    if settings.expiry_wait > 0 and token.remaining() <= settings.expiry_wait:
        # Opened first and left idle while the other checks run: only the token's expiry can end it.
        expiry = _Connection(cfg, settings.client_id + "-expiry", token, tls)
        try:
            await expiry.open()
        except UplinkError as exc:
            await expiry.close()
            expiry = None
            expiry_text = f"could not connect: {exc}"
        else:
            expiry_task = asyncio.create_task(_expiry(expiry, token), name="probe.expiry")
    elif settings.expiry_wait > 0:
        expiry_text = (
            f"not tested: the token expires in {token.remaining():.0f} s, "
            f"beyond --expiry-wait {settings.expiry_wait:g} s"
        )
    else:
        expiry_text = "not tested (--expiry-wait 0)"
    try:
        conn = _Connection(cfg, settings.client_id, token, tls)
        try:
            await conn.open()
        except UplinkError as exc:
            report.ran = False
            report.add("connect", str(exc))
            return report
        try:
            report.add("connect", "CONNACK 0x00 Success")
            _connack_rows(conn, report)
            burst = await _burst(conn, settings)
        finally:
            await conn.close()
        conn = _Connection(cfg, settings.client_id, token, tls)
        try:
            await conn.open()
            reauth = await _reauth(conn, cfg, token, settings)
        except UplinkError as exc:
            reauth = f"not tested: {exc}"
        finally:
            await conn.close()
        report.add(ROW_REAUTH, reauth)
        if expiry_task is not None:
            expiry_text = await expiry_task
        report.add(ROW_EXPIRY, expiry_text)
        report.add(ROW_BURST, burst)
        return report
    finally:
        if expiry_task is not None and not expiry_task.done():
            expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry_task
        if expiry is not None:
            await expiry.close()
