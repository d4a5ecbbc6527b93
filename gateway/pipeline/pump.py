"""The store pump: takes messages from the store and hands them to the sink (the uplink, or a dry run).

    drivers --emit--> ReadingQueue --router task--> store --pump task--> sink

The pump keeps a window of messages in flight and settles each by its outcome: delivered or refused for
good (ack), lost with the connection or refused for now (release: resent first), or resent
``max_attempts`` times already (moved to the store's dead letters, so it cannot block the queue).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from typing import TextIO

from gateway.config.limits import DEFAULT_LIMITS
from gateway.model import Message, MessageSink, PublishOutcome, PublishResult, UplinkStats
from gateway.store import Store

log = logging.getLogger("fieldgate.pipeline")

#: Keep this many distinct topics for "log a dead letter once per topic"; beyond it, debug level.
_MAX_REMEMBERED_TOPICS = 1024


@dataclass
class PumpCounters:
    """What the pump did with the messages it took from the store."""

    delivered: int = 0
    refused: int = 0
    lost: int = 0
    #: Messages the sink failed on unexpectedly twice (a bug met by that message): dropped, not retried.
    set_aside: int = 0
    #: Message ids whose send raised once (the pump task restarts; a second failure sets it aside).
    suspects: set[int] = field(default_factory=set)
    #: Sends the broker answered with a refusal that is not final (0x97 quota exceeded, ...): resent.
    retried: int = 0
    #: Messages moved to the store's dead letters after ``max_attempts`` sends.
    dead_lettered: int = 0


async def pump_forever(
    store: Store,
    sink: MessageSink,
    counters: PumpCounters,
    *,
    max_attempts: int = DEFAULT_LIMITS.max_attempts,
) -> None:
    """The store pump: oldest first into the sink; outcomes come back as acks or releases.

    A message that came back LOST or RETRY ``max_attempts`` times goes to the store's dead letters.
    It also tells the store whether the uplink delivers (sink-agnostic: from the outcomes, and from a
    send that has waited ``store.down_after`` seconds for room), which the store's ``outage`` mode uses.
    """

    #: Failed sends (LOST or RETRY) per message id still in the queue; at most the store's size.
    failures: dict[int, int] = {}
    logged_topics: set[str] = set()

    def move_aside(message_id: int, message: Message, result: PublishResult, attempts: int) -> None:
        counters.dead_lettered += 1
        code = f"0x{result.reason_code:02X} " if result.reason_code is not None else ""
        why = f"{code}{result.reason}".strip() or result.outcome.value
        store.dead_letter(message_id, f"{result.outcome.value} {attempts} times, last: {why}")
        level = logging.DEBUG if message.topic in logged_topics else logging.WARNING
        if len(logged_topics) < _MAX_REMEMBERED_TOPICS:
            logged_topics.add(message.topic)
        log.log(
            level,
            "message seq %d to %r moved to the store's dead letters after %d sends (last: %s);"
            " further ones for this topic: debug level",
            message.seq,
            message.topic,
            attempts,
            why,
        )

    def settle(message_id: int, message: Message, future: asyncio.Future[PublishResult]) -> None:
        if future.cancelled():
            store.release(message_id)
            return
        result = future.result()
        if result.outcome is PublishOutcome.DELIVERED:
            failures.pop(message_id, None)
            counters.delivered += 1
            store.link_up()
            store.ack(message_id)
            return
        if result.outcome is PublishOutcome.REFUSED:
            # Final: the sink has counted and logged it with its topic; resending cannot help.
            failures.pop(message_id, None)
            counters.refused += 1
            store.ack(message_id)
            return
        if result.outcome is PublishOutcome.LOST:
            counters.lost += 1
            store.link_down()
        else:
            # Refused for now (throttled): the link works, the sink has slowed down; send it again.
            counters.retried += 1
        attempts = failures.pop(message_id, 0) + 1
        if attempts >= max_attempts:
            move_aside(message_id, message, result, attempts)
        else:
            failures[message_id] = attempts
            store.release(message_id)

    loop = asyncio.get_running_loop()
    sending_since: float | None = None

    async def watch() -> None:
        while True:
            await asyncio.sleep(min(1.0, store.down_after / 2))
            if sending_since is not None and loop.time() - sending_since >= store.down_after:
                store.link_down()

    watcher = asyncio.create_task(watch(), name="store.link-watch")
    try:
        while True:
            message_id, message = await store.take()
            sending_since = loop.time()
            try:
                future = await sink.send(message)
            except asyncio.CancelledError:
                store.release(message_id)
                raise
            except Exception:
                if message_id not in counters.suspects:
                    # Perhaps not the message's fault: resend it once, after the supervisor's restart.
                    counters.suspects.add(message_id)
                    store.release(message_id)
                    raise
                counters.suspects.discard(message_id)
                counters.set_aside += 1
                # Kept, not dropped: the dead letters hold it for an operator to look at.
                store.dead_letter(message_id, "the uplink failed on it twice")
                log.exception(
                    "message seq %d to %r failed to send twice: set aside in the dead letters (%d so far)",
                    message.seq,
                    message.topic,
                    counters.set_aside,
                )
                continue
            finally:
                sending_since = None
            counters.suspects.discard(message_id)
            future.add_done_callback(lambda f, i=message_id, m=message: settle(i, m, f))  # type: ignore[misc]
    finally:
        watcher.cancel()


class DryRunSink:
    """Prints each message instead of publishing it (``fieldgate run --dry-run``, the offline demo)."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self._out = out if out is not None else sys.stdout
        self._quiet = quiet
        self.sent = 0

    async def run(self) -> None:
        await asyncio.Event().wait()

    @property
    def stats(self) -> UplinkStats | None:
        return None  # nothing is sent anywhere: ``sent`` is all there is to count

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        self.sent += 1
        if not self._quiet:
            self._out.write(f"{message.topic} {message.payload.decode()}\n")
            self._out.flush()
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult(PublishOutcome.DELIVERED))
        return future
