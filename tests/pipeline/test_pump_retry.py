"""The pump never deletes a message the broker refused for now: it is resent, and after a bounded number of
sends it goes to the store's dead letters, so it cannot block the queue. Only final refusals are acked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest

from gateway.model import Message, PublishOutcome, PublishResult
from gateway.pipeline.pump import PumpCounters, pump_forever
from gateway.store.memory import MemoryStore


class ScriptedBroker:
    """A sink answering each message by a rule on its seq (a real uplink maps PUBACK codes the same way)."""

    #: No session figures: status shows a sink without a connection.
    stats = None

    def __init__(self, answer: dict[int, list[PublishResult]]) -> None:
        self.answer = answer
        self.sends: list[int] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def send(self, message: Message) -> asyncio.Future[PublishResult]:
        self.sends.append(message.seq)
        script = self.answer.get(message.seq)
        result = script.pop(0) if script else PublishResult(PublishOutcome.DELIVERED, 0)
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        future.set_result(result)
        return future


THROTTLED = PublishResult(PublishOutcome.RETRY, 0x97, "Quota exceeded")
NOT_AUTHORIZED = PublishResult(PublishOutcome.REFUSED, 0x87, "Not authorized")
LOST = PublishResult(PublishOutcome.LOST, None, "the broker sent DISCONNECT 0x97 Quota exceeded")


def message(seq: int) -> Message:
    return Message(topic=f"plants/lab/gw/dev-{seq % 2}", payload=b"{}", seq=seq, timestamp=time.time())


@contextlib.asynccontextmanager
async def pumping(store: MemoryStore, sink: ScriptedBroker, max_attempts: int) -> AsyncIterator[PumpCounters]:
    counters = PumpCounters()
    task = asyncio.create_task(pump_forever(store, sink, counters, max_attempts=max_attempts))
    try:
        yield counters
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_throttled_messages_are_resent_until_delivered_never_deleted() -> None:
    store = MemoryStore(100)
    sink = ScriptedBroker({2: [THROTTLED, THROTTLED], 3: [LOST]})
    for seq in range(1, 6):
        store.append(message(seq))
    async with pumping(store, sink, max_attempts=5) as counters:
        async with asyncio.timeout(10):
            await store.wait_empty()
    assert sorted(set(sink.sends)) == [1, 2, 3, 4, 5]
    assert sink.sends.count(2) == 3 and sink.sends.count(3) == 2
    assert (counters.delivered, counters.retried, counters.lost, counters.refused) == (5, 2, 1, 0)
    assert store.dead_lettered == 0


async def test_only_a_final_refusal_is_acked_without_delivery() -> None:
    store = MemoryStore(100)
    sink = ScriptedBroker({1: [NOT_AUTHORIZED]})
    store.append(message(1))
    async with pumping(store, sink, max_attempts=5) as counters:
        async with asyncio.timeout(10):
            await store.wait_empty()
    assert sink.sends == [1]
    assert (counters.refused, counters.retried, store.dead_lettered) == (1, 0, 0)


async def test_a_message_refused_again_and_again_goes_to_the_dead_letters_and_the_rest_flows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore(100)
    # Seq 2 is refused for ever, alternately by PUBACK and by ending the connection.
    sink = ScriptedBroker({2: [THROTTLED, LOST] * 10})
    for seq in range(1, 6):
        store.append(message(seq))
    async with pumping(store, sink, max_attempts=4) as counters:
        async with asyncio.timeout(10):
            await store.wait_empty()
    assert sink.sends.count(2) == 4
    assert counters.dead_lettered == 1 and counters.delivered == 4
    assert store.stats().dead_letters == 1
    (dead, reason, _) = store.dead[0]
    assert dead.seq == 2
    assert reason.startswith("lost 4 times") and "DISCONNECT 0x97" in reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "seq 2" in warnings[0] and "plants/lab/gw/dev-0" in warnings[0] and "0x97" in warnings[0]
