"""The permission check between the store and the uplink: never send what the token does not grant.

    store --pump--> PermissionGate --granted--> uplink
                          |-- denied, drop: refused here (counted per topic, logged once per topic)
                          '-- denied, hold: kept in flight in the store until a token grants the topic

Why here and not when the router makes the message: the permission set is only known once the uplink
has a token, and it can change with every refresh. Checked as the pump hands a message over, a message
meets the grants of the token it would actually be sent with, and a held message simply stays in the
store (taken, not acknowledged), inside the store's bound; with a durable store it survives a restart
and is checked again.

The gate reads permissions through :class:`TopicPermissions` (the uplink's permission tracker): the
pipeline does not import the uplink, the uplink does not know devices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway.model import (
    CommandTransport,
    InboundHandler,
    Message,
    MessageSink,
    PublishOutcome,
    PublishResult,
    UplinkStats,
)

log = logging.getLogger("fieldgate.permissions")

#: Keep this many distinct denied topics for "log once per topic"; beyond it, repeats log at debug.
_MAX_REMEMBERED = 1024


class TopicPermissions(Protocol):
    """What the gate needs to know of the token's grants (see gateway.permissions.tracker)."""

    @property
    def policy(self) -> str:
        """``drop`` or ``hold``."""
        ...

    def publish_verdict(self, topic: str) -> bool | None:
        """Granted, denied, or None while no token was seen yet."""
        ...

    def explain_publish_denial(self, topic: str) -> str: ...

    def publish_rule(self, topic: str) -> str | None: ...

    def add_listener(self, callback: Callable[[], None]) -> None: ...

    def check_subscribe(self, requested: str) -> bool | None:
        """Whether the token grants subscribing to a filter (None: no token yet); logs a refusal once."""
        ...


@runtime_checkable
class GatedSubscriber(Protocol):
    """An uplink that asks a permission check before each SUBSCRIBE (gateway.uplink.session.Uplink)."""

    def subscribe(
        self,
        filters: Sequence[str],
        handler: InboundHandler,
        *,
        permitted: Callable[[str], bool | None] | None = None,
    ) -> None: ...

    def recheck_subscriptions(self) -> None: ...

    async def respond(self, topic: str, payload: bytes, correlation_data: bytes | None) -> PublishResult: ...


@dataclass(frozen=True, slots=True)
class ExpectedTopic:
    """A topic the gateway will publish to (reported at start and when the grants change)."""

    #: Who publishes there: ``device <name>``, ``gateway batch``, ``birth message``, ``will message``.
    label: str
    topic: str


@dataclass(eq=False)
class _Held:
    message: Message
    future: asyncio.Future[PublishResult]


class PermissionGate:
    """A :class:`MessageSink` in front of the uplink that applies the token's publish permissions."""

    def __init__(
        self,
        inner: MessageSink,
        permissions: TopicPermissions,
        expected: Iterable[ExpectedTopic] = (),
        *,
        max_held: int | None = None,
    ) -> None:
        """``max_held`` bounds the held messages (``hold``): beyond it the oldest held one is dropped, so
        held messages cannot fill the store and starve the topics that are granted. The app passes half
        the store's bound."""
        self._inner = inner
        self._permissions = permissions
        self._expected = tuple(expected)
        self._max_held = max_held
        self._held_overflowing = False
        #: Messages not sent because their topic was not granted, per topic (dropped or held).
        self.denied: Counter[str] = Counter()
        self.dropped = 0
        #: Command responses not sent because their response topic is not granted.
        self.responses_denied = 0
        #: Held messages later sent because a refreshed token granted their topic.
        self.released = 0
        self._held: deque[_Held] = deque()
        self._releasing: deque[_Held] = deque()
        self._told: set[str] = set()
        self._expected_state: dict[ExpectedTopic, bool] = {}
        #: Set at every change of the grants (the release task waits on it and clears it).
        self._changed = asyncio.Event()
        #: Set once the first grants are known (senders wait on it; never cleared).
        self._known = asyncio.Event()
        permissions.add_listener(self._on_change)

    @property
    def permissions(self) -> TopicPermissions:
        return self._permissions

    @property
    def held(self) -> int:
        """Messages held (not sent) because their topic was not granted, including those being released."""
        return len(self._held) + len(self._releasing)

    @property
    def stats(self) -> UplinkStats | None:
        """The inner sink's figures (the uplink session's) plus the messages this gate kept from it."""
        inner = self._inner.stats
        if inner is None:
            return None
        return dataclasses.replace(inner, permission_denials=sum(self.denied.values()))

    def stats_text(self) -> str:
        """For the stats line: what the permission check kept from the broker."""
        return (
            f"not granted {sum(self.denied.values())} ({len(self.denied)} topics), dropped {self.dropped}, "
            f"held {self.held}, released {self.released}"
        )

    # -- CommandTransport: subscriptions and responses meet the same grants ---------------------------
    def subscribe(self, filters: Sequence[str], handler: InboundHandler) -> None:
        """Subscribe through the uplink, which asks the token's grants before each attempt."""
        inner = self._inner
        if not isinstance(inner, GatedSubscriber):
            raise TypeError(f"{type(inner).__name__} cannot subscribe")
        inner.subscribe(filters, handler, permitted=self._permissions.check_subscribe)

    async def respond(self, topic: str, payload: bytes, correlation_data: bytes | None) -> PublishResult:
        """Publish a response if the token grants its topic; else log once and refuse it here."""
        inner = self._inner
        if not isinstance(inner, CommandTransport):
            raise TypeError(f"{type(inner).__name__} cannot publish responses")
        verdict = self._permissions.publish_verdict(topic)
        while verdict is None:
            await self._known.wait()
            verdict = self._permissions.publish_verdict(topic)
        if not verdict:
            # Counted apart from self.denied: requesters choose response topics, a Counter per topic
            # would grow with them.
            self.responses_denied += 1
            self._tell_denied(Message(topic, payload), "response dropped")
            why = "response topic not granted by the token's permissions (dropped before sending)"
            return PublishResult(PublishOutcome.REFUSED, None, why)
        return await inner.respond(topic, payload, correlation_data)

    # -- MessageSink ---------------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._inner.run(), name="uplink.session")
            tg.create_task(self._release_forever(), name="permissions.release")

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        verdict = self._permissions.publish_verdict(message.topic)
        while verdict is None:  # no token yet: the uplink could not send anyway (backpressure)
            await self._known.wait()
            verdict = self._permissions.publish_verdict(message.topic)
        if verdict:
            return await self._inner.send(message)
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        self.denied[message.topic] += 1
        hold = self._permissions.policy == "hold"
        self._tell_denied(
            message, "holding it until a refreshed token grants the topic" if hold else "dropped"
        )
        if hold:
            if self._max_held is not None and self._held and self.held >= self._max_held:
                self._drop_oldest_held()
            self._held.append(_Held(message, future))
        else:
            self.dropped += 1
            why = "not granted by the token's permissions (dropped before sending)"
            future.set_result(PublishResult(PublishOutcome.REFUSED, None, why))
        return future

    def _drop_oldest_held(self) -> None:
        oldest = self._held.popleft()
        self.dropped += 1
        if not self._held_overflowing:
            self._held_overflowing = True
            log.error(
                "%d messages held for topics the token does not grant: dropping the oldest held ones "
                "(counted) until a token grants their topics",
                self._max_held,
            )
        if not oldest.future.done():
            why = "not granted by the token's permissions; dropped from the held messages (limit reached)"
            oldest.future.set_result(PublishResult(PublishOutcome.REFUSED, None, why))

    # -- logging -------------------------------------------------------------------------------------
    def _tell_denied(self, message: Message, what: str) -> None:
        topic = message.topic
        who = f"device {message.device}: " if message.device else ""
        if topic in self._told:
            log.debug("%spublish to %r not granted (%d so far), %s", who, topic, self.denied[topic], what)
            return
        if len(self._told) < _MAX_REMEMBERED:
            self._told.add(topic)
        log.warning(
            "%spublish to %r not granted by the token: %s; %s (further ones: counted, debug level)",
            who,
            topic,
            self._permissions.explain_publish_denial(topic),
            what,
        )

    def report_expected(self) -> None:
        """Log, per configured device, topics whose grant changed (all denied ones the first time)."""
        for item in self._expected:
            granted = self._permissions.publish_verdict(item.topic)
            if granted is None:
                continue
            before = self._expected_state.get(item)
            self._expected_state[item] = granted
            if granted and before is False:
                log.info(
                    "%s: topic %r is granted now (%s)",
                    item.label,
                    item.topic,
                    self._permissions.publish_rule(item.topic),
                )
            elif not granted and before is not False:
                log.warning(
                    "%s: topic %r is not granted by the current token: %s; its messages are %s",
                    item.label,
                    item.topic,
                    self._permissions.explain_publish_denial(item.topic),
                    "held" if self._permissions.policy == "hold" else "dropped",
                )

    def _on_change(self) -> None:
        self.report_expected()
        if isinstance(self._inner, GatedSubscriber):
            # A refreshed token may grant command filters the previous one did not.
            self._inner.recheck_subscriptions()
        for topic in list(self._told):
            if self._permissions.publish_verdict(topic):
                # A state change: a later denial of this topic is news again.
                self._told.discard(topic)
                log.info(
                    "publish to %r is granted now; %d messages were not sent before",
                    topic,
                    self.denied[topic],
                )
        self._changed.set()
        self._known.set()

    # -- releasing held messages ---------------------------------------------------------------------
    async def _release_forever(self) -> None:
        while True:
            self._changed.clear()
            await self._release_granted()
            await self._changed.wait()

    async def _release_granted(self) -> None:
        """Send held messages whose topic is granted now, oldest first."""
        verdict = self._permissions.publish_verdict
        waiting = [e for e in self._held if not e.future.done()]  # done: the pump stopped waiting
        # Split before sending: messages held while the sends below wait for the uplink are appended to
        # the remaining ones, and the bound (max_held) keeps counting everything still held.
        self._releasing = deque(e for e in waiting if verdict(e.message.topic))
        self._held = deque(e for e in waiting if not verdict(e.message.topic))
        if self._held_overflowing and (self._max_held is None or len(self._held) < self._max_held // 2):
            self._held_overflowing = False
        released = 0
        try:
            while self._releasing:
                entry = self._releasing[0]
                inner = await self._inner.send(entry.message)
                self._releasing.popleft()
                released += 1
                self.released += 1
                inner.add_done_callback(functools.partial(_chain, outer=entry.future))
        finally:
            # Not sent (cancelled): still held, still first.
            self._held.extendleft(reversed(self._releasing))
            self._releasing.clear()
            if released:
                log.info("released %d held messages whose topics a refreshed token grants", released)


def _chain(inner: asyncio.Future[PublishResult], *, outer: asyncio.Future[PublishResult]) -> None:
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
    else:
        outer.set_result(inner.result())
