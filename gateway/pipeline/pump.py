"""The store pump: takes messages from the store and hands them to the sink (the uplink, or a dry run).

    drivers --emit--> ReadingQueue --router task--> store --pump task--> sink

The pump keeps a window of messages in flight and settles each by its outcome (ack, release, drop).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from typing import TextIO

from gateway.model import Message, MessageSink, PublishOutcome, PublishResult
from gateway.store import Store

log = logging.getLogger("fieldgate.pipeline")


@dataclass
class PumpCounters:
    delivered: int = 0
    refused: int = 0
    lost: int = 0
    #: Messages the sink failed on unexpectedly twice (a bug met by that message): dropped, not retried.
    set_aside: int = 0
    #: Message ids whose send raised once (the pump task restarts; a second failure sets it aside).
    suspects: set[int] = field(default_factory=set)


async def pump_forever(store: Store, sink: MessageSink, counters: PumpCounters) -> None:
    """The store pump: oldest first into the sink; outcomes come back as acks or releases.

    It also tells the store whether the uplink delivers (sink-agnostic: from the outcomes, and from a
    send that has waited ``store.down_after`` seconds for room), which the store's ``outage`` mode uses.
    """

    def settle(message_id: int, future: asyncio.Future[PublishResult]) -> None:
        if future.cancelled():
            store.release(message_id)
            return
        result = future.result()
        if result.outcome is PublishOutcome.DELIVERED:
            counters.delivered += 1
            store.link_up()
            store.ack(message_id)
        elif result.outcome is PublishOutcome.REFUSED:
            # Final: the sink has counted and logged it with its topic; resending cannot help.
            counters.refused += 1
            store.ack(message_id)
        else:
            counters.lost += 1
            store.link_down()
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
                store.ack(message_id)
                log.exception(
                    "message seq %d to %r failed to send twice: set aside (dropped, counted %d)",
                    message.seq,
                    message.topic,
                    counters.set_aside,
                )
                continue
            finally:
                sending_since = None
            counters.suspects.discard(message_id)
            future.add_done_callback(lambda f, i=message_id: settle(i, f))  # type: ignore[misc]
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

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        self.sent += 1
        if not self._quiet:
            self._out.write(f"{message.topic} {message.payload.decode()}\n")
            self._out.flush()
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(PublishResult(PublishOutcome.DELIVERED))
        return future
