"""The MQTT v5 uplink session: connect with a JWT, refresh it in session, publish through a PUBACK window.

One connection at a time (a fresh aiomqtt/paho client per connection, so no state leaks between them).
``Uplink.run`` owns the reconnect loop and, per connection, one named task ``uplink.refresh``.
``Uplink.send`` applies backpressure (waits until connected and a window slot is free) and returns a
future that resolves with the message's fate: DELIVERED (PUBACK < 0x80, or written for QoS 0), REFUSED
(PUBACK 0x87 or 0x99, or refused locally), RETRY (any other PUBACK >= 0x80: the caller resends it, a bounded
number of times), LOST (the connection dropped before the PUBACK: the caller resends).

Shaping (``[uplink.limits]``, :mod:`gateway.uplink.shaping`): ``send`` also waits for the message and byte
token buckets and the in-flight caps. A throttling answer (0x97 quota exceeded, 0x80, 0x83) in a PUBACK or a
DISCONNECT halves the allowed rate, which then recovers gradually.

Inbound (cloud to device): ``Uplink.subscribe(filters, handler)`` keeps filters subscribed at QoS 1 on
every connection, through a per-connection task ``uplink.subscribe``. Every filter is subscribed again
after every CONNACK, *session present* or not: a kept session does not mean kept subscriptions - the
local broker (mosquitto with our plugin) re-checks a client's subscriptions when its token expires and
drops them all, then answers the reconnect with session present = 1; Event Grid's documentation does not
say what a resumed session keeps across a permission change. SUBSCRIBE for a filter the session already
holds only replaces it, so doing it again costs a few packets per reconnect and never loses one.
SUBSCRIBE carries no user properties (Event Grid refuses them). Each received PUBLISH is handed to its
handler synchronously on the loop; paho sends the QoS 1 PUBACK (always success: Event Grid ends the
connection on a failure PUBACK) right after the handler returns, i.e. once the handler has accepted the
message into its own bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.auth.token import Token, TokenSource
from gateway.config.limits import MAX_SUBSCRIBES_PER_SECOND, MAX_SUBSCRIPTIONS
from gateway.config.uplink import RefreshConfig, StatusMessageConfig, UplinkConfig
from gateway.errors import ConnectRefused, TokenError, UplinkError

# The outcome types are the core's, so the pipeline's pump understands the uplink's answers.
from gateway.model import InboundHandler, InboundMessage, Message, PublishOutcome, PublishResult, UplinkStats
from gateway.mqtt_topics import fill_template, topic_matches, valid_filter
from gateway.uplink.mqtt_auth import (
    AuthClient,
    AuthOutcome,
    install,
    new_properties,
    paho_logger,
    reason_name,
)
from gateway.uplink.shaping import Shaper
from gateway.uplink.subscriptions import batches, cover_filter

log = logging.getLogger("fieldgate.uplink")

#: What a CONNACK reason code means for the operator (codes not listed are logged by their MQTT name).
CONNACK_HINTS: dict[int, str] = {
    0x86: "bad user name or password: the broker refused the username (authentication name)",
    0x87: "not authorized: the broker refused the token (check iss, sub, aud, nbf/exp, the signing key)",
    0x88: "server unavailable: retrying with backoff",
    0x89: "server busy: retrying with backoff",
    0x8A: "banned: this client is banned by the broker",
    0x8C: "bad authentication method: the broker does not accept this method "
    "(Event Grid: CUSTOM-JWT for a custom issuer, OAUTH2-JWT for Microsoft Entra ID)",
    0x9C: "use another server: the broker redirects this client",
    0x9D: "server moved: the broker redirects this client permanently",
    0x9F: "connection rate exceeded: retrying with backoff",
}
#: Content Type of JSON messages; with Payload Format Indicator 1 it makes Event Grid route the JSON as
#: ``data`` rather than base64 in ``data_base64``.
JSON_CONTENT_TYPE = "application/json"
#: Bytes the two properties add to a PUBLISH: PFI (id, byte) and Content Type (id, length, text).
JSON_PROPERTY_BYTES = 2 + 3 + len(JSON_CONTENT_TYPE)
#: Refusals that are final for the message: resending cannot help (0x87 per the permission gate's policy).
FINAL_CODES = frozenset({0x87, 0x99})
#: Answers that mean "too much, slow down" (PUBACK or DISCONNECT): the uplink halves its allowed rate.
THROTTLE_CODES = frozenset({0x80, 0x83, 0x97})
#: A PUBACK 0x87 this close to (or after) the token's expiry, by our clock, is taken for the token lapsing
#: at the broker, whose clock may run a little ahead: the message is resent, not refused.
TOKEN_LAPSE_SKEW = 5.0
#: CONNACK codes that refuse the token itself: it is dropped from the source's caches before the next try.
TOKEN_REFUSED = frozenset({0x86, 0x87, 0x8C})
#: DISCONNECT reason code: another connection with our client id took the session over.
SESSION_TAKEN_OVER = 0x8E
#: Keep this many distinct refused topics for "log once per topic"; beyond it, refusals log at debug.
_MAX_REMEMBERED_TOPICS = 1024


def publish_packet_size(topic: str, payload_len: int, qos: int, property_bytes: int = 0) -> int:
    """Bytes of the PUBLISH packet we send: what Maximum Packet Size limits.

    ``property_bytes`` are the properties' own bytes; property lengths stay below 128 (one length byte).
    """
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + 1 + property_bytes + payload_len
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + length_bytes + remaining


def connack_text(code: int, properties: Properties | None = None) -> str:
    name = reason_name(PacketTypes.CONNACK, code)
    text = f"0x{code:02X} {CONNACK_HINTS.get(code, name)}"
    reference = getattr(properties, "ServerReference", None) if properties is not None else None
    if reference:
        text += f" (server reference: {reference})"
    reason = getattr(properties, "ReasonString", None) if properties is not None else None
    if reason:
        text += f" (broker says: {reason})"
    return text


def seconds_left_at_receipt(token: Token, now: float) -> float:
    """How long a token just received stays valid, judged once, at receipt, by the wall clock.

    ``exp`` is the issuer's wall clock. Ours may be wrong by days (a Pi without RTC before NTP): when
    it makes the token look valid for longer than its lifetime, or already expired, the token is taken
    as just issued (its lifetime). From then on the uplink counts down on the monotonic clock.
    """
    left = token.remaining(now)
    return left if 0.0 < left <= token.lifetime else token.lifetime


def refresh_delay(token: Token, cfg: RefreshConfig, now: float, rng: random.Random) -> float:
    """Seconds until the next refresh: min(issued + fraction*lifetime, exp - margin) minus jitter.

    The margin is ignored when it would leave less than half the lifetime (short development tokens
    would otherwise be refreshed continuously).
    """
    lifetime = token.lifetime
    at = token.issued_at + cfg.fraction * lifetime
    by_margin = token.expires_at - cfg.margin
    if by_margin >= token.issued_at + lifetime / 2:
        at = min(at, by_margin)
    at -= rng.uniform(0.0, min(cfg.jitter, 0.1 * lifetime))
    return max(0.0, at - now)


class Backoff:
    """Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to the maximum."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rng = rng
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._maximum, self._initial * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)


@dataclass(eq=False)
class _Pending:
    """A publish handed to paho and waiting for its PUBACK (or its loss)."""

    future: asyncio.Future[PublishResult]
    topic: str
    qos: int
    size: int = 0


@dataclass(eq=False)
class _Connection:
    """One MQTT connection's state; discarded when it ends."""

    client: aiomqtt.Client
    auth: AuthClient
    ended: asyncio.Future[str]
    inflight: dict[int, _Pending] = field(default_factory=dict)
    window: int = 1
    max_packet: int | None = None
    topic_alias_max: int = 0
    connack_code: int | None = None
    connack_properties: Properties | None = None
    session_present: bool = False
    open: bool = False
    #: Why we ended it ourselves (refresh refused/timed out), if we did.
    end_reason: str | None = None
    #: Filters the broker refused (SUBACK >= 0x80) on this connection, with when (monotonic) to ask again.
    refused_filters: dict[str, float] = field(default_factory=dict)
    #: The reason code of the broker's DISCONNECT, when it sent one.
    disconnect_code: int | None = None
    #: The connection was closed under us without a DISCONNECT (mosquitto 2.0 ends a taken-over session so).
    lost: bool = False
    #: ``time.monotonic()`` when the CONNACK accepted it.
    opened_at: float | None = None

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        if not self.ended.done():
            self.ended.set_result(reason)


async def tls_context(cfg: UplinkConfig) -> ssl.SSLContext | None:
    """The uplink's TLS settings (TLS 1.2+, the system CA store or ``ca_file``); None without TLS."""
    if not cfg.tls:
        return None

    def build() -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    try:
        # Loading the system CA store or a CA file reads disk: worker thread.
        return await asyncio.to_thread(build)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"cannot load the CA file {cfg.ca_file}: {exc}") from exc


class Uplink:
    """The gateway's one MQTT v5 session. ``run`` until cancelled; ``send`` from the pipeline."""

    def __init__(
        self,
        config: UplinkConfig,
        token_source: TokenSource,
        *,
        gateway_id: str,
        site: str,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._wall_clock = wall_clock
        #: ``time.monotonic()`` at which the token in use expires (see seconds_left_at_receipt).
        self._token_deadline = 0.0
        self._source = token_source
        self._gateway_id = gateway_id
        self._site = site
        self._rng = rng or random.Random()
        self._conn: _Connection | None = None
        self._token: Token | None = None
        self._wakeup = asyncio.Event()
        self._connected = asyncio.Event()
        self._connected_since: float | None = None
        self._refused_topics: set[str] = set()
        # Built once: paho only reads a PUBLISH's properties while packing it.
        self._json_props = _json_properties()
        self._shaper = Shaper(config.limits)
        #: Throttling answers since the allowed rate was last back at the configured limit.
        self._throttling = False
        #: Connections ended by a throttling DISCONNECT with no delivery since: the backoff keeps growing.
        self._throttle_streak = 0
        self._retried = 0
        #: Called with each token the session starts using (connect, accepted refresh): permissions hook.
        self.token_listeners: list[Callable[[Token], None]] = []
        #: Called with (topic, reason code) for each publish the broker refused (PUBACK >= 0x80).
        self.refusal_listeners: list[Callable[[str, int], None]] = []
        # Inbound: wanted filters (in order) with their handler and permission check; the filters the
        # broker confirmed in the current session; a wake-up for the per-connection subscribe task.
        self._subscriptions: dict[str, tuple[InboundHandler, Callable[[str], bool | None] | None]] = {}
        self._confirmed: set[str] = set()
        self._not_permitted: set[str] = set()
        self._subs_changed = asyncio.Event()
        self._inbound = 0
        self._inbound_unmatched = 0
        self._subscriptions_refused = 0
        #: Per refused filter: the backoff before the next attempt (cleared when it is granted).
        self._refusal_backoff: dict[str, float] = {}
        self._over_limit_logged = False
        self._failing: str | None = None
        self._failures = 0
        self._failed_connects = 0
        #: Connections in a row the broker ended before they became stable, and how (a loop's kind).
        self._short_lived = 0
        self._short_kind: str | None = None
        # counters
        self._connects = 0
        self._connections = 0
        self._refreshes_ok = 0
        self._refreshes_failed = 0
        self._published = 0
        self._delivered = 0
        self._refused = 0
        self._lost = 0

    # -- public ----------------------------------------------------------------------------------
    @property
    def stats(self) -> UplinkStats:
        conn = self._conn
        shaping = self._shaper.stats()
        return UplinkStats(
            connected=conn is not None and conn.open,
            connected_since=self._connected_since,
            connects=self._connects,
            connections=self._connections,
            refreshes_ok=self._refreshes_ok,
            refreshes_failed=self._refreshes_failed,
            published=self._published,
            delivered=self._delivered,
            refused=self._refused,
            lost=self._lost,
            token_expires_at=self._token.expires_at if self._token is not None else None,
            inflight=len(conn.inflight) if conn is not None else 0,
            inbound=self._inbound,
            inbound_unmatched=self._inbound_unmatched,
            subscribed=len(self._confirmed),
            subscriptions_not_permitted=len(self._not_permitted),
            subscriptions_refused=self._subscriptions_refused,
            allowed_rate=shaping.allowed_rate,
            throttled=shaping.throttled,
            retried=self._retried,
            inflight_bytes=shaping.inflight_bytes,
            peak_inflight_bytes=shaping.peak_inflight_bytes,
            send_rate=shaping.send_rate,
            failed_connects=self._failed_connects,
        )

    async def wait_connected(self) -> None:
        await self._connected.wait()

    # -- inbound ---------------------------------------------------------------------------------
    def subscribe(
        self,
        filters: Sequence[str],
        handler: InboundHandler,
        *,
        permitted: Callable[[str], bool | None] | None = None,
    ) -> None:
        """Keep ``filters`` subscribed (QoS 1) from now on, on every connection; deliver to ``handler``.

        ``permitted(filter)`` is asked before each attempt (at every connection and after
        :meth:`recheck_subscriptions`): False means the token does not grant it, so it is not attempted
        (the permission check logs why); None (no token known) and True mean go ahead.
        """
        for topic_filter in filters:
            if not valid_filter(topic_filter):
                raise ValueError(f"not a valid MQTT topic filter: {topic_filter!r}")
            self._subscriptions[topic_filter] = (handler, permitted)
        self._subs_changed.set()

    def recheck_subscriptions(self) -> None:
        """The permissions changed (a refreshed token): try the filters that were not permitted again."""
        self._subs_changed.set()

    async def respond(self, topic: str, payload: bytes, correlation_data: bytes | None) -> PublishResult:
        """Publish one response at QoS 1 with ``correlation_data``; the PUBACK outcome (LOST: not sent)."""
        future = await self.send(Message(topic, payload, qos=1), correlation_data=correlation_data)
        return await future

    def _on_message(self, message: paho.MQTTMessage) -> None:
        """paho's on_message, on the loop: hand the message over; never raise (paho would drop the line)."""
        self._inbound += 1
        try:
            topic = message.topic
            props = getattr(message, "properties", None)
            inbound = InboundMessage(
                topic=topic,
                payload=bytes(message.payload),
                qos=int(message.qos),
                dup=bool(message.dup),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=_bytes_or_none(getattr(props, "CorrelationData", None)),
                message_expiry=getattr(props, "MessageExpiryInterval", None),
                received_at=time.monotonic(),
            )
            handler = next((h for f, (h, _) in self._subscriptions.items() if topic_matches(f, topic)), None)
            if handler is None:
                # A subscription the broker kept from an earlier run of a different config.
                self._inbound_unmatched += 1
                log.debug(
                    "inbound message on %r matches no subscription of ours; acknowledged, ignored", topic
                )
                return
            handler(inbound)
        except Exception:
            log.exception("inbound message could not be handed over; acknowledged and dropped")

    def _wanted_filters(self) -> list[str]:
        """The filters to hold now: one granted wildcard replaces the filters it covers (Event Grid allows
        50 subscriptions per session), the rest one by one; filters the grants refuse are left out."""
        groups: dict[tuple[int, int], list[str]] = {}
        for topic_filter, (handler, permitted) in self._subscriptions.items():
            groups.setdefault((id(handler), id(permitted)), []).append(topic_filter)
        wanted: dict[str, None] = {}
        for members in groups.values():
            permitted = self._subscriptions[members[0]][1]
            cover = cover_filter(members)
            if cover is not None and permitted is not None and permitted(cover) is True:
                wanted[cover] = None
                self._not_permitted.difference_update(members)
                continue
            for topic_filter in members:
                if permitted is not None and permitted(topic_filter) is False:
                    self._not_permitted.add(topic_filter)
                    continue
                self._not_permitted.discard(topic_filter)
                wanted[topic_filter] = None
        out = list(wanted)
        if len(out) > MAX_SUBSCRIPTIONS:
            if not self._over_limit_logged:
                self._over_limit_logged = True
                log.error(
                    "%d command filters but Event Grid allows %d subscriptions per session: subscribing "
                    "the first %d (grant one wildcard filter covering every device to take them all)",
                    len(out),
                    MAX_SUBSCRIPTIONS,
                    MAX_SUBSCRIPTIONS,
                )
            out = out[:MAX_SUBSCRIPTIONS]
        return out

    async def _keep_subscribed(self, conn: _Connection) -> None:
        """Per connection: subscribe every wanted filter, then new ones as they are added or permitted.

        At most 10 filters per SUBSCRIBE and 5 SUBSCRIBEs per second (Event Grid's limits); a refused filter
        is asked again after a backoff (doubling from reconnect.initial up to reconnect.max)."""
        # Even with session present: see the module docstring (a kept session may have lost them).
        # (The confirmed set was emptied when this connection's CONNACK was counted.)
        spacing = 1.0 / MAX_SUBSCRIBES_PER_SECOND
        last_sent = -spacing
        while True:
            self._subs_changed.clear()
            now = time.monotonic()
            wanted = self._wanted_filters()
            due = [f for f in wanted if f not in self._confirmed and conn.refused_filters.get(f, 0.0) <= now]
            for batch in batches(due):
                pause = last_sent + spacing - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)  # pacing: at most 5 SUBSCRIBE packets per second
                last_sent = time.monotonic()
                await self._subscribe_batch(conn, batch)
            retries = [t for f, t in conn.refused_filters.items() if f in wanted and f not in self._confirmed]
            timeout = max(0.0, min(retries) - time.monotonic()) if retries else None
            # A timeout: a refused filter's backoff has passed, ask again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subs_changed.wait(), timeout)

    async def _subscribe_batch(self, conn: _Connection, batch: list[str]) -> None:
        topics = [(f, SubscribeOptions(qos=1)) for f in batch]
        try:
            codes = await conn.client.subscribe(topics, timeout=self._config.connect_timeout)
        except aiomqtt.MqttError as exc:
            if conn.ended.done() or not conn.auth.is_connected():
                # The connection is going away (the reconnect loop logs why); the next one tries again.
                log.debug("subscribe to %s not completed: %s", batch, exc)
                await conn.ended
                return
            for topic_filter in batch:
                self._refuse_filter(conn, topic_filter, None, str(exc))
            return
        for i, topic_filter in enumerate(batch):
            entry = codes[i] if i < len(codes) else 0x80
            code = entry if isinstance(entry, int) else int(entry.value)
            if code < 0x80:
                self._confirmed.add(topic_filter)
                conn.refused_filters.pop(topic_filter, None)
                if self._refusal_backoff.pop(topic_filter, None) is not None:
                    log.info("subscribed to %r after earlier refusals (QoS %d granted)", topic_filter, code)
                else:
                    log.info("subscribed to %r (QoS %d granted)", topic_filter, code)
            else:
                hint = " (the token does not grant it)" if code == 0x87 else ""
                self._refuse_filter(
                    conn,
                    topic_filter,
                    code,
                    f"SUBACK 0x{code:02X} {reason_name(PacketTypes.SUBACK, code)}{hint}",
                )

    def _refuse_filter(self, conn: _Connection, topic_filter: str, code: int | None, why: str) -> None:
        reconnect = self._config.reconnect
        previous = self._refusal_backoff.get(topic_filter)
        delay = reconnect.initial if previous is None else min(previous * 2, reconnect.maximum)
        self._refusal_backoff[topic_filter] = delay
        conn.refused_filters[topic_filter] = time.monotonic() + delay
        if code is not None:
            self._subscriptions_refused += 1
        if previous is None:
            log.warning(
                "the broker refused the subscription to %r: %s; asking again with backoff", topic_filter, why
            )
        else:
            log.debug("subscription to %r still refused: %s; next try in %gs", topic_filter, why, delay)

    # -- sending ---------------------------------------------------------------------------------
    async def send(
        self, message: Message, *, correlation_data: bytes | None = None
    ) -> asyncio.Future[PublishResult]:
        """Hand a message to the session; see the module docstring for the outcomes.

        ``correlation_data`` goes out as the MQTT v5 Correlation Data property (command responses).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PublishResult] = loop.create_future()
        if message.qos not in (0, 1):
            return self._refuse_locally(future, message.topic, f"QoS {message.qos} is not supported (0 or 1)")
        # uplink.qos = 0 downgrades every message; with 1, each message keeps the QoS the router gave it.
        qos = min(message.qos, self._config.qos)
        size = publish_packet_size(
            message.topic, len(message.payload), qos, JSON_PROPERTY_BYTES if message.json else 0
        )
        if correlation_data is not None:
            size += 3 + len(correlation_data) + 1  # property id, length, data; property length byte
        if size > self._config.max_message_bytes:
            why = f"message of {size} bytes exceeds max_message_bytes ({self._config.max_message_bytes})"
            return self._refuse_locally(future, message.topic, why)
        while True:
            conn = await self._slot(size, qos)
            delay = self._shaper.delay(size)
            if not delay:
                break
            await asyncio.sleep(delay)
        self._note_recovery()
        if conn.max_packet is not None and size > conn.max_packet:
            why = f"message of {size} bytes exceeds the broker's Maximum Packet Size ({conn.max_packet})"
            return self._refuse_locally(future, message.topic, why)
        props: Properties | None = self._json_props if message.json else None
        if correlation_data is not None:
            props = _json_properties() if message.json else new_properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation_data
        self._publish_on(
            conn,
            topic=message.topic,
            payload=message.payload,
            qos=qos,
            retain=False,
            future=future,
            properties=props,
            size=size,
        )
        return future

    # -- sending ---------------------------------------------------------------------------------
    async def _slot(self, size: int, qos: int) -> _Connection:
        """Wait until a connection is open, has a free window slot and room under the in-flight caps."""
        while True:
            conn = self._conn
            if (
                conn is not None
                and conn.open
                and len(conn.inflight) < conn.window
                and self._shaper.has_room(size, qos=qos)
            ):
                return conn
            self._wakeup.clear()
            await self._wakeup.wait()

    def _publish_on(
        self,
        conn: _Connection,
        *,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        future: asyncio.Future[PublishResult],
        properties: Properties | None = None,
        size: int = 0,
    ) -> None:
        try:
            info = conn.auth.publish(topic, payload, qos, retain, properties)
        except ValueError as exc:  # paho refuses wildcards and over-long topics
            self._refuse_locally(future, topic, f"invalid topic ({exc})")
            return
        self._published += 1
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # The connection went away between the window check and the write.
            self._lost += 1
            future.set_result(PublishResult(PublishOutcome.LOST, None, paho.error_string(info.rc)))
            conn.auth.drop_out_messages()
            return
        conn.inflight[info.mid] = _Pending(future, topic, qos, size)
        self._shaper.sent(size, qos=qos)

    def _refuse_locally(
        self, future: asyncio.Future[PublishResult], topic: str, why: str
    ) -> asyncio.Future[PublishResult]:
        self._refused += 1
        self._log_refusal(topic, f"refused locally: {why}")
        future.set_result(PublishResult(PublishOutcome.REFUSED, None, why))
        return future

    def _log_refusal(self, topic: str, text: str) -> None:
        if topic in self._refused_topics:
            log.debug("publish to %r %s", topic, text)
            return
        if len(self._refused_topics) < _MAX_REMEMBERED_TOPICS:
            self._refused_topics.add(topic)
        log.warning("publish to %r %s (further refusals for this topic: debug level)", topic, text)

    def _on_publish(self, conn: _Connection, mid: int, reason_code: ReasonCode) -> None:
        pending = conn.inflight.pop(mid, None)
        self._wakeup.set()
        if pending is None:
            return
        if pending.qos == 0:
            self._delivered += 1
            result = PublishResult(PublishOutcome.DELIVERED, None, "written (QoS 0)")
        else:
            self._shaper.settled(pending.size)
            code = int(reason_code.value)
            name = reason_name(PacketTypes.PUBACK, code)
            if code < 0x80:  # 0x00 success, 0x10 no matching subscribers: both accepted
                self._delivered += 1
                self._throttle_streak = 0
                result = PublishResult(PublishOutcome.DELIVERED, code, name)
            elif code == 0x87 and self._token_left() <= TOKEN_LAPSE_SKEW:
                # Refused because the token lapsed (the broker judges it by its own clock), not because
                # the topic is not granted: resent once a new token or connection is in place, and kept
                # from the permission tracker, which would take the topic for one the token denies.
                self._lost += 1
                result = PublishResult(PublishOutcome.LOST, code, f"{name}: the token expired")
            elif code not in FINAL_CODES:
                # Kept and resent by the caller: the broker may take it later (quota, transient fault).
                self._retried += 1
                if code in THROTTLE_CODES:
                    self._throttle(f"PUBACK 0x{code:02X} {name} for {pending.topic!r}")
                else:
                    self._log_refusal(
                        pending.topic, f"refused by the broker for now: PUBACK 0x{code:02X} {name}"
                    )
                for refused in self.refusal_listeners:
                    refused(pending.topic, code)
                result = PublishResult(PublishOutcome.RETRY, code, name)
            else:
                self._refused += 1
                hint = " (the token does not grant this topic)" if code == 0x87 else ""
                self._log_refusal(pending.topic, f"refused by the broker: PUBACK 0x{code:02X} {name}{hint}")
                for refused in self.refusal_listeners:
                    refused(pending.topic, code)
                result = PublishResult(PublishOutcome.REFUSED, code, name)
        if not pending.future.done():
            pending.future.set_result(result)

    def _lose_inflight(self, conn: _Connection, why: str) -> None:
        for pending in conn.inflight.values():
            if pending.qos:
                self._shaper.settled(pending.size)
            if not pending.future.done():
                self._lost += 1
                pending.future.set_result(PublishResult(PublishOutcome.LOST, None, why))
        conn.inflight.clear()
        self._wakeup.set()

    # -- shaping ---------------------------------------------------------------------------------
    def _throttle(self, what: str) -> None:
        """The broker said "too much": slow down; warn when throttling starts, debug while it lasts."""
        halved = self._shaper.throttled()
        rate = self._shaper.allowed_rate
        if not self._throttling:
            self._throttling = True
            log.warning(
                "uplink throttled by the broker (%s): slowing down to %.1f publishes/s; the refused messages"
                " are kept and resent",
                what,
                rate,
            )
        elif halved:
            log.debug("uplink throttled again (%s): now %.1f publishes/s", what, rate)

    def _note_recovery(self) -> None:
        if self._throttling and self._shaper.factor >= 1.0:
            self._throttling = False
            log.info(
                "uplink back at the configured rate (%.1f publishes/s; %d throttling answers so far)",
                self._shaper.allowed_rate,
                self._shaper.throttled_count,
            )

    # -- state logging ---------------------------------------------------------------------------
    def _stable(self, backoff: Backoff) -> None:
        """The connection stayed up ``reconnect.stable_after``: the next failure starts a new episode."""
        if not self._throttle_streak:
            # Throttling DISCONNECTs with no delivery between them keep the delay growing: no storm.
            backoff.reset()
        if self._short_lived >= 2:
            log.info(
                "uplink: the reconnect loop is over (connected for %.0f s)",
                self._config.reconnect.stable_after,
            )
        self._short_kind, self._short_lived = None, 0

    def _after_connection(self, conn: _Connection, up: float, why: str, backoff: Backoff) -> float:
        """Log how a connection ended and return the delay before the next attempt.

        The backoff starts over only after a connection that stayed up ``reconnect.stable_after``: a
        broker that accepts and then ends each connection at once (two gateways with one client id, a
        token refused after CONNACK) is retried ever more slowly, not every second.
        """
        cfg = self._config
        stable = up >= cfg.reconnect.stable_after
        if stable and not self._throttle_streak:
            backoff.reset()
        delay = backoff.next()
        kind: str | None = None
        if not stable:
            if conn.disconnect_code == SESSION_TAKEN_OVER:
                kind = "takeover"
            elif conn.lost:
                kind = "closed"
        if kind is not None and kind == self._short_kind:
            self._short_lived += 1
        else:
            if self._short_lived >= 2:
                log.info("uplink: the reconnect loop ended (the last connection lasted %.0f s)", up)
            self._short_kind, self._short_lived = kind, 1 if kind is not None else 0
        if self._short_lived == 2 and kind == "takeover":
            log.error(
                "uplink: session-takeover loop: the broker ended our session %d times in a row with "
                "DISCONNECT 0x%02X Session taken over, each within %.0f s: another client connects with "
                "client id %r (two gateways with one identity?); backing off up to %.0f s between attempts",
                self._short_lived,
                SESSION_TAKEN_OVER,
                cfg.reconnect.stable_after,
                cfg.client_id,
                cfg.reconnect.maximum,
            )
        elif self._short_lived == 2:
            log.error(
                "uplink: reconnect loop: the broker closed %d connections in a row within %.0f s of "
                "accepting them, without a DISCONNECT reason (mosquitto closes a session another client "
                "took over this way: is client id %r in use elsewhere?); backing off up to %.0f s "
                "between attempts",
                self._short_lived,
                cfg.reconnect.stable_after,
                cfg.client_id,
                cfg.reconnect.maximum,
            )
        elif self._short_lived > 2:
            log.debug("uplink: %s (%d in a row); next attempt in %.1f s", why, self._short_lived, delay)
        else:
            log.warning(
                "uplink disconnected from %s:%d after %.1f s: %s; reconnecting in %.1f s",
                cfg.host,
                cfg.port,
                up,
                why,
                delay,
            )
        return delay

    def _fail(self, what: str) -> None:
        """A connect attempt failed: error once per streak of the same failure, debug while it lasts."""
        self._failures += 1
        self._failed_connects += 1
        if self._failing != what:
            self._failing = what
            log.error("uplink to %s:%d: %s", self._config.host, self._config.port, what)
        else:
            log.debug("uplink to %s:%d still failing (%d attempts): %s", *self._where(), self._failures, what)

    def _where(self) -> tuple[str, int]:
        return self._config.host, self._config.port

    # -- tokens ----------------------------------------------------------------------------------
    def _use_token(self, token: Token) -> None:
        if not token.same_as(self._token):
            self._token_deadline = time.monotonic() + seconds_left_at_receipt(token, self._wall_clock())
        self._token = token
        for listener in self.token_listeners:
            listener(token)

    def _method(self) -> str:
        return self._config.auth_method

    def _token_left(self) -> float:
        """Seconds the token in use stays valid, on the monotonic clock (wall-clock steps do not count)."""
        return self._token_deadline - time.monotonic()

    async def _refresh_loop(self, conn: _Connection) -> None:
        cfg = self._config.refresh
        backoff = Backoff(self._config.reconnect.initial, self._config.reconnect.maximum, self._rng)
        fetch_failing = running_out = False
        while True:
            current = self._token
            if current is None:
                return
            # The token's times are the issuer's wall clock: scheduled on the monotonic clock, with the
            # monotonic instant that corresponds to "now" in the token's frame.
            in_token_frame = current.expires_at - self._token_left()
            await asyncio.sleep(refresh_delay(current, cfg, in_token_frame, self._rng))
            try:
                fresh = await self._source.get_token()
            except TokenError as exc:
                left = self._token_left()
                if left <= 0:
                    log.error("token refresh: %s; the token expired, the broker will disconnect", exc)
                    return
                if not fetch_failing:
                    fetch_failing = True
                    running_out = False
                    log.warning("token refresh: %s; retrying while the token is valid (%.0f s)", exc, left)
                elif not running_out and left <= max(cfg.margin, 0.1 * current.lifetime):
                    running_out = True
                    log.error("token refresh still failing: the token expires in %.0f s (%s)", left, exc)
                await asyncio.sleep(min(backoff.next(), max(0.1, left)))
                continue
            if fetch_failing:
                fetch_failing = False
                log.info("token refresh: a fresh token was obtained again")
            backoff.reset()
            if fresh.same_as(current):
                # The file source has nothing newer yet; look again later (it warns before expiry).
                await asyncio.sleep(min(30.0, max(1.0, self._token_left() / 10)))
                continue
            outcome = await self._reauthenticate(conn, fresh)
            if outcome.accepted:
                self._use_token(fresh)
                self._refreshes_ok += 1
                log.debug("token refreshed in session (%s), %.0f s left", outcome.detail, self._token_left())
                continue
            if conn.ended.done() and conn.auth.refusal is None:
                return  # the connection ended for another reason, which the reconnect loop logs
            self._refreshes_failed += 1
            self._source.invalidate()
            log.warning("token refresh refused: %s; reconnecting with a fresh token", outcome.detail)
            conn.end(f"token refresh refused: {outcome.detail}")
            # A normal DISCONNECT: we reconnect at once, so the will (gateway offline) must not fire.
            # No-op when the broker already closed the socket (mosquitto 2.0.11's CONNACK 0x87).
            conn.auth.disconnect()
            return

    async def _reauthenticate(self, conn: _Connection, fresh: Token) -> AuthOutcome:
        future = conn.auth.reauthenticate(self._method(), fresh.value.encode("utf-8"))
        try:
            async with asyncio.timeout(self._config.refresh.timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            timeout = self._config.refresh.timeout
            return AuthOutcome(False, 0x80, f"no answer to AUTH 0x19 within {timeout:g} s")

    # -- connection ------------------------------------------------------------------------------
    def _connect_properties(self, token: Token) -> Properties:
        props = new_properties(PacketTypes.CONNECT)
        props.AuthenticationMethod = self._method()
        props.AuthenticationData = token.value.encode("utf-8")
        props.SessionExpiryInterval = self._config.session_expiry
        return props

    def _status_message(self, cfg: StatusMessageConfig) -> tuple[str, bytes]:
        topic = fill_template(cfg.topic, gateway=self._gateway_id, site=self._site)
        payload = fill_template(cfg.payload, gateway=self._gateway_id, site=self._site)
        return topic, payload.encode("utf-8")

    def _will(self) -> aiomqtt.Will | None:
        cfg = self._config.will
        if cfg is None:
            return None
        topic, payload = self._status_message(cfg)
        props: Properties | None = None
        if cfg.delay:
            props = new_properties(PacketTypes.WILLMESSAGE)
            props.WillDelayInterval = cfg.delay
        return aiomqtt.Will(topic, payload, cfg.qos, cfg.retain, props)

    def _new_connection(self, token: Token, tls: ssl.SSLContext | None) -> _Connection:
        cfg = self._config
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            logger=paho_logger(),
            identifier=cfg.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=self._will(),
            timeout=cfg.connect_timeout,
            keepalive=cfg.keepalive,
            clean_start=False,
            properties=self._connect_properties(token),
            tls_context=tls,
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            # Unlimited in paho: our own window (min of Receive Maximum and max_inflight) bounds it, and
            # paho refuses to change its limit once connected, i.e. after Receive Maximum is known.
            max_inflight_messages=0,
        )
        auth = install(client)
        conn = _Connection(client=client, auth=auth, ended=asyncio.get_running_loop().create_future())

        # aiomqtt's own handlers, chained after ours (they resolve __aenter__ and its disconnect future).
        on_connect = cast(Callable[..., None], auth.on_connect)
        on_disconnect = cast(Callable[..., None], auth.on_disconnect)
        on_socket_open = cast(Callable[..., None], auth.on_socket_open)

        def connected(c: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any = None) -> None:
            conn.connack_code = int(rc.value)
            conn.connack_properties = props
            conn.session_present = bool(getattr(flags, "session_present", False))
            on_connect(c, userdata, flags, rc, props)  # aiomqtt's: resolves __aenter__

        def disconnected(
            c: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any = None
        ) -> None:
            auth.connection_closed()
            refusal = auth.refusal
            if conn.end_reason is not None:
                why = conn.end_reason
            elif refusal is not None:
                why = f"token refresh refused: {refusal.detail}"
            elif getattr(flags, "is_disconnect_packet_from_server", False):
                conn.disconnect_code = int(rc.value)
                why = f"the broker sent DISCONNECT 0x{int(rc.value):02X} {rc.getName()}"
                if int(rc.value) in THROTTLE_CODES:
                    # What was in flight is lost and resent; the next connection goes slower.
                    self._throttle_streak += 1
                    self._throttle(why)
            else:
                conn.lost = True
                why = f"connection lost ({rc.getName()})"
            conn.end(why)
            on_disconnect(c, userdata, flags, rc, props)

        def published(c: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
            self._on_publish(conn, mid, rc)

        def received(c: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            self._on_message(message)

        def socket_opened(c: paho.Client, userdata: Any, sock: Any) -> None:
            # Called on the thread that runs paho's connect(); a plain int increment is safe under the GIL
            # and only the event loop reads it.
            self._connections += 1
            on_socket_open(c, userdata, sock)

        auth.on_connect = connected
        auth.on_disconnect = disconnected
        auth.on_publish = published
        # Replaces aiomqtt's own on_message, whose unbounded queue nobody would read.
        auth.on_message = received
        auth.on_socket_open = socket_opened
        return conn

    async def _tls_context(self) -> ssl.SSLContext | None:
        return await tls_context(self._config)

    def _explain_connect_error(self, conn: _Connection, exc: aiomqtt.MqttError) -> str:
        if conn.connack_code is not None and conn.connack_code >= 0x80:
            return "connection refused: CONNACK " + connack_text(conn.connack_code, conn.connack_properties)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate verification failed: {cause.verify_message} "
                "(give the broker's CA in uplink.ca_file, and check that host matches the certificate)"
            )
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {cause.reason or cause}"
        if isinstance(cause, OSError):
            return f"cannot connect: {cause.strerror or cause}"
        return f"cannot connect: {exc}"

    async def _run_connection(
        self, token: Token, tls: ssl.SSLContext | None, backoff: Backoff
    ) -> _Connection:
        """One connection from CONNECT to its end (``ended`` holds why); UplinkError if it never began."""
        conn = self._new_connection(token, tls)
        try:
            await conn.client.__aenter__()
        except aiomqtt.MqttError as exc:
            text = self._explain_connect_error(conn, exc)
            if conn.connack_code is not None and conn.connack_code >= 0x80:
                raise ConnectRefused(conn.connack_code, text) from exc
            raise UplinkError(text) from exc
        try:
            await self._serve(conn, backoff)
            return conn
        finally:
            # Graceful DISCONNECT when we leave on our own (cancellation); no-op after a broker disconnect.
            # The exception aiomqtt stored for an unexpected disconnect is read so asyncio does not warn.
            disconnected = conn.client._disconnected
            if disconnected.done() and not disconnected.cancelled():
                disconnected.exception()
            await conn.client.__aexit__(None, None, None)

    async def _serve(self, conn: _Connection, backoff: Backoff) -> str:
        """Serve an accepted connection until it ends; the backoff is reset by ``run`` once it was stable."""
        cfg = self._config
        props = conn.connack_properties
        receive_max = int(getattr(props, "ReceiveMaximum", 65535))
        conn.window = max(1, min(receive_max, cfg.max_inflight))
        max_packet = getattr(props, "MaximumPacketSize", None)
        conn.max_packet = int(max_packet) if max_packet is not None else None
        conn.topic_alias_max = int(getattr(props, "TopicAliasMaximum", 0))
        self._connects += 1
        # Nothing counts as subscribed on a new connection until its SUBACKs say so.
        self._confirmed.clear()
        self._connected_since = time.time()
        conn.opened_at = time.monotonic()
        recovered = f" after {self._failures} failed attempts" if self._failures else ""
        self._failing, self._failures = None, 0
        log.info(
            "uplink connected to %s:%d as %r%s (session %s, window %d, broker max packet %s)",
            cfg.host,
            cfg.port,
            cfg.client_id,
            recovered,
            "resumed" if conn.session_present else "new",
            conn.window,
            conn.max_packet if conn.max_packet is not None else "unlimited",
        )
        if cfg.birth is not None:
            # Queued before the connection opens to senders, so it goes out first.
            topic, payload = self._status_message(cfg.birth)
            birth: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
            size = publish_packet_size(topic, len(payload), cfg.birth.qos)
            self._publish_on(
                conn,
                topic=topic,
                payload=payload,
                qos=cfg.birth.qos,
                retain=cfg.birth.retain,
                future=birth,
                size=size,
            )
        conn.open = True
        self._conn = conn
        self._connected.set()
        self._wakeup.set()
        helpers = [asyncio.create_task(self._keep_subscribed(conn), name="uplink.subscribe")]
        if cfg.refresh.enabled:
            helpers.append(asyncio.create_task(self._refresh_loop(conn), name="uplink.refresh"))
        stable = asyncio.get_running_loop().call_later(cfg.reconnect.stable_after, self._stable, backoff)
        try:
            return await asyncio.shield(conn.ended)
        finally:
            stable.cancel()
            conn.open = False
            self._connected.clear()
            self._connected_since = None
            for helper in helpers:
                helper.cancel()
                try:
                    await helper
                except asyncio.CancelledError:
                    # The helper's own cancellation; re-raise if *we* are being cancelled.
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
            self._lose_inflight(conn, conn.ended.result() if conn.ended.done() else "uplink stopped")

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; refresh tokens in session. Runs until cancelled."""
        cfg = self._config
        tls = await self._tls_context()
        backoff = Backoff(cfg.reconnect.initial, cfg.reconnect.maximum, self._rng)
        try:
            while True:
                try:
                    token = await self._source.get_token()
                except TokenError as exc:
                    self._fail(f"cannot get a token from {self._source.description}: {exc}")
                    await asyncio.sleep(backoff.next())
                    continue
                self._use_token(token)
                started = time.monotonic()
                try:
                    conn = await self._run_connection(token, tls, backoff)
                except UplinkError as exc:
                    if isinstance(exc, ConnectRefused) and exc.reason_code in TOKEN_REFUSED:
                        # Otherwise a caching source (oauth2, azure) would hand the refused token back.
                        self._source.invalidate()
                    self._fail(str(exc))
                    await asyncio.sleep(backoff.next())
                    continue
                why = conn.ended.result() if conn.ended.done() else "ended"
                up = time.monotonic() - (conn.opened_at if conn.opened_at is not None else started)
                delay = self._after_connection(conn, up, why, backoff)
                await asyncio.sleep(delay)
        finally:
            self._conn = None
            self._connected.clear()


def _json_properties() -> Properties:
    props = new_properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.ContentType = JSON_CONTENT_TYPE
    return props


def _bytes_or_none(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")
